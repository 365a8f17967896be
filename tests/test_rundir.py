"""Run directory: atomic writes, JSONL errors, fingerprints, seeds, markers and the run lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mrlite import rundir
from mrlite.rundir import (
    RunDir,
    RunDirError,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    derive_seed,
    fingerprint,
    read_jsonl,
)

# --------------------------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_leaves_no_tmp(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")  # replaces
    assert p.read_text() == "two"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.txt"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(rundir.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [{"b": 1, "a": "é"}, {"x": [1.5, None]}]
    p = tmp_path / "r.jsonl"
    assert atomic_write_jsonl(p, rows) == 2
    assert p.read_text(encoding="utf-8") == '{"b":1,"a":"é"}\n{"x":[1.5,null]}\n'  # key order kept, compact
    assert read_jsonl(p) == rows
    assert atomic_write_jsonl(tmp_path / "e.jsonl", []) == 0
    assert (tmp_path / "e.jsonl").read_bytes() == b""


def test_atomic_write_json_is_sorted_and_stable(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_read_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"a":1}\n\n  \n{"a":2}\n')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ('{"a":1}\n{"a":\n', 2, "not valid JSON"),
    ('{"a":1}\n\n[1,2]\n', 3, "expected a JSON object per line"),
    ('{"a":1}\n{"a":2}\n{"a":3}{\n', 3, "not valid JSON"),
])
def test_read_jsonl_corrupt_line_names_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text(text)
    with pytest.raises(RunDirError) as e:
        read_jsonl(p)
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_read_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------------------------------------------
# fingerprints and seeds


def test_fingerprint_file(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("hello")
    f1 = fingerprint(p)
    assert f1 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256("hello")
    p.write_text("hellp")
    assert fingerprint(p) != f1
    p.write_text("hello")
    assert fingerprint(p) == f1
    assert fingerprint(tmp_path / "missing") == "missing"


def test_fingerprint_dir(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "x.txt").write_text("1")
        (d / "sub" / "y.txt").write_text("2")
    f = fingerprint(a)
    assert fingerprint(b) == f  # same content elsewhere: same fingerprint
    (a / "sub" / "y.txt").write_text("3")  # same size, other content
    f2 = fingerprint(a)
    assert f2 != f
    (a / "sub" / "y.txt").rename(a / "sub" / "z.txt")  # renamed
    assert fingerprint(a) not in (f, f2)
    (a / "sub" / "z.txt").rename(a / "sub" / "y.txt")
    assert fingerprint(a) == f2
    (a / "new.txt").write_text("")
    assert fingerprint(a) != f2


def test_derive_seed_stable_and_distinct() -> None:
    s = derive_seed(0, 1, "sample", "p00001")
    assert s == 1517812590608136973  # pinned: every fake output and sampling seed derives from this function
    assert s == derive_seed(0, 1, "sample", "p00001")
    assert 0 <= s < 2**63
    others = {derive_seed(1, 1, "sample", "p00001"), derive_seed(0, 2, "sample", "p00001"),
              derive_seed(0, 1, "judge", "p00001"), derive_seed(0, 1, "sample", "p00002"),
              derive_seed(0, "sample", 1, "p00001")}
    assert len(others) == 5
    assert s not in others


def test_hash_parts_is_the_seed_source() -> None:
    assert rundir.hash_parts(0, 1, "sample").hex() == rundir.hashlib.sha256(b"0\x1f1\x1fsample").hexdigest()
    assert derive_seed(0, 1, "sample") == int.from_bytes(rundir.hash_parts(0, 1, "sample")[:8], "big") >> 1


def test_model_identity_is_the_lineage_when_present(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"w" * 10)
    by_content = rundir.model_identity(tmp_path)
    assert by_content == rundir.fingerprint(tmp_path)
    (tmp_path / "lineage.json").write_text('{"base": "b"}')
    assert rundir.model_identity(tmp_path) == rundir.sha256_file(tmp_path / "lineage.json") != by_content
    (tmp_path / "weights.bin").write_bytes(b"x" * 10)  # large weights are not re-read: the lineage names them
    assert rundir.model_identity(tmp_path) == rundir.sha256_file(tmp_path / "lineage.json")


def test_existing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"^runs/nope: not a run directory \(no recipe\.yaml\); pass the --out"):
        RunDir.existing("runs/nope")
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    rd = RunDir.existing(tmp_path)
    assert rd.root == tmp_path and rd.recipe_path == tmp_path / "recipe.yaml"


# --------------------------------------------------------------------------------------------------------------
# markers


def test_marker_round_trip_and_corrupt_marker(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    assert rd.read_marker(1, "judge") is None
    rd.write_marker(1, "judge", {"n_out": 3})
    assert rd.marker_path(1, "judge") == tmp_path / "iter_01" / ".done" / "judge.json"
    assert rd.read_marker(1, "judge") == {"n_out": 3}
    for bad in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        rd.marker_path(1, "judge").write_bytes(bad)
        assert rd.read_marker(1, "judge") is None  # treated as absent: the stage re-runs
    rd.remove_marker(1, "judge")
    rd.remove_marker(1, "judge")  # idempotent
    assert not rd.marker_path(1, "judge").exists()


def test_iterations_present(tmp_path: Path) -> None:
    for name in ("iter_02", "iter_00", "iter_10", "iter_xx", "other"):
        (tmp_path / name).mkdir()
    assert RunDir(tmp_path).iterations_present() == [0, 2, 10]


# --------------------------------------------------------------------------------------------------------------
# lock


def _write_lock(root: Path, content: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".lock").write_text(content)


def test_lock_acquire_release(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rd.acquire_lock()
    holder = json.loads((rd.root / ".lock").read_text())
    assert holder == {"pid": os.getpid(), "host": socket.gethostname()}
    rd.release_lock()
    assert not (rd.root / ".lock").exists()
    rd.acquire_lock()  # can be taken again
    rd.release_lock()


def test_lock_held_by_a_live_process_is_refused(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(rd.root, json.dumps({"pid": child.pid, "host": socket.gethostname()}))
        with pytest.raises(RunDirError) as e:
            rd.acquire_lock()
        msg = str(e.value)
        assert f"pid {child.pid}" in msg
        assert "--out" in msg
        assert "\n" not in msg
        assert json.loads((rd.root / ".lock").read_text())["pid"] == child.pid  # untouched
        rd.release_lock()  # not ours: must not remove it
        assert (rd.root / ".lock").exists()
    finally:
        child.kill()
        child.wait()


def test_second_acquire_in_the_same_live_process_is_refused(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rd.acquire_lock()
    try:
        with pytest.raises(RunDirError, match="--out"):
            RunDir(tmp_path / "run").acquire_lock()
    finally:
        rd.release_lock()


def test_lock_of_another_host_is_respected(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    _write_lock(rd.root, json.dumps({"pid": 1, "host": "some-other-host"}))
    with pytest.raises(RunDirError, match="some-other-host"):
        rd.acquire_lock()


def test_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid is dead
    rd = RunDir(tmp_path / "run")
    _write_lock(rd.root, json.dumps({"pid": child.pid, "host": socket.gethostname()}))
    rd.acquire_lock()
    assert json.loads((rd.root / ".lock").read_text())["pid"] == os.getpid()
    rd.release_lock()


@pytest.mark.parametrize("content", ["garbage", "", "12345", "[1, 2]", '"x"', '{"pid": "abc"}', '{"pid": -4}'])
def test_lock_with_garbage_is_taken_over(tmp_path: Path, content: str) -> None:
    rd = RunDir(tmp_path / "run")
    _write_lock(rd.root, content)
    rd.acquire_lock()
    assert json.loads((rd.root / ".lock").read_text())["pid"] == os.getpid()
    rd.release_lock()
    assert not (rd.root / ".lock").exists()


def test_marker_input_keys_do_not_name_the_checkout(tmp_path) -> None:
    """Shipped files are named by their place in the package, so one recipe writes the same markers from any
    checkout or install (the absolute path used to differ between two clones)."""
    from mrlite.data.sources import builtin_path
    from mrlite.stages import input_key

    run = tmp_path / "run"
    assert input_key(run, builtin_path("prompts.jsonl")) == "mrlite:data/prompts.jsonl"
    assert input_key(run, run / "iter_00" / "pool.jsonl") == "iter_00/pool.jsonl"
    assert input_key(run, tmp_path / "mine.jsonl") == str(tmp_path / "mine.jsonl")
