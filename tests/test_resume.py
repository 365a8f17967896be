"""Resume: cached stages, deleted markers, stale settings, --from, determinism, a killed stage, lock, wrong dir."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import mrlite
from mrlite.recipe import RecipeError
from mrlite.rundir import VOLATILE_FILES, RunDirError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
STAGES = ("sample", "judge", "meta_judge", "pairs", "train")
ALL_STEPS = [(0, "prompts")] + [(t, s) for t in (1, 2) for s in STAGES]
VOLATILE = set(VOLATILE_FILES)
# iter_02's adapter_config.json records the path of iter_01/model (and the train marker its fingerprint), so
# runs compared across directories use the same relative --out from different working directories.
PATH_DEPENDENT = {"iter_02/adapter/adapter_config.json", "iter_02/.done/train.json"}


def snapshot(root: Path, skip: set[str] = VOLATILE) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}


def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and p.name not in VOLATILE}


def ran(report) -> list[tuple[int, str]]:
    return [(t, s) for t, s, st in report.steps if st == "ran"]


def cached(report) -> list[tuple[int, str]]:
    return [(t, s) for t, s, st in report.steps if st == "cached"]


def run_cli(out: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MRLITE_FAULT"} | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "mrlite", "run", str(SMOKE), "--out", out, "-q"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def done(smoke_recipe: mrlite.Recipe, run_dir: Path) -> Path:
    """A finished smoke run in run_dir."""
    assert ran(mrlite.run(smoke_recipe, out=run_dir)) == ALL_STEPS
    return run_dir


# (a) ----------------------------------------------------------------------------------------------------------


def test_second_run_is_cached_and_changes_nothing(smoke_recipe: mrlite.Recipe, done: Path) -> None:
    before, times = snapshot(done), mtimes(done)
    report = mrlite.run(smoke_recipe, out=done)
    assert report.steps == [(t, s, "cached") for t, s in ALL_STEPS]
    assert snapshot(done) == before
    assert mtimes(done) == times  # not even rewritten
    assert not (done / ".lock").exists()
    assert "last_resumed" in json.loads((done / "run.json").read_text())


# (b) ----------------------------------------------------------------------------------------------------------


def test_deleted_marker_reruns_that_stage_only(smoke_recipe: mrlite.Recipe, done: Path) -> None:
    before = snapshot(done)
    (done / "iter_02" / ".done" / "judge.json").unlink()
    report = mrlite.run(smoke_recipe, out=done)
    assert ran(report) == [(2, "judge")]
    assert cached(report) == [x for x in ALL_STEPS if x != (2, "judge")]
    assert snapshot(done) == before


def test_deleted_output_reruns_the_stage(smoke_recipe: mrlite.Recipe, done: Path) -> None:
    before = snapshot(done)
    shutil.rmtree(done / "iter_01" / "adapter")
    report = mrlite.run(smoke_recipe, out=done, force=True)
    assert ran(report) == [(1, "train")]
    assert snapshot(done) == before


# (c) ----------------------------------------------------------------------------------------------------------


def test_changed_setting_is_stale_and_nothing_changes(done: Path) -> None:
    before, times = snapshot(done, VOLATILE | {"recipe.yaml"}), mtimes(done)
    recipe = mrlite.load_recipe(SMOKE, ["judge.n=4"])
    with pytest.raises(RunDirError) as e:
        mrlite.run(recipe, out=done)
    msg = str(e.value)
    assert "iter 1 judge" in msg and "recipe settings changed" in msg
    assert "--force" in msg and "--out" in msg
    assert "\n" not in msg
    assert snapshot(done, VOLATILE | {"recipe.yaml"}) == before
    assert {k: v for k, v in mtimes(done).items() if k != "recipe.yaml"} == {
        k: v for k, v in times.items() if k != "recipe.yaml"}
    assert not (done / ".lock").exists()



def test_refused_run_keeps_recipe_yaml(done: Path) -> None:
    before = (done / "recipe.yaml").read_bytes()
    with pytest.raises(RunDirError):
        mrlite.run(mrlite.load_recipe(SMOKE, ["judge.n=4"]), out=done)
    assert (done / "recipe.yaml").read_bytes() == before


def test_force_recomputes_the_stale_stage_and_what_follows(done: Path) -> None:
    recipe = mrlite.load_recipe(SMOKE, ["judge.n=4"])
    report = mrlite.run(recipe, out=done, force=True)
    assert cached(report) == [(0, "prompts"), (1, "sample")]
    assert ran(report) == ALL_STEPS[2:]  # iteration 2 too: M_1 changed
    n_resp = len((done / "iter_01" / "responses.jsonl").read_text().splitlines())
    assert len((done / "iter_01" / "judgments.jsonl").read_text().splitlines()) == 4 * n_resp
    assert mrlite.load_recipe(done / "recipe.yaml").judge.n == 4
    # and the recomputed run is now current
    assert mrlite.run(recipe, out=done).steps == [(t, s, "cached") for t, s in ALL_STEPS]


def test_changed_input_file_is_stale(smoke_recipe: mrlite.Recipe, done: Path) -> None:
    p = done / "iter_01" / "responses.jsonl"
    p.write_text(p.read_text().replace("Answer", "Answr", 1))
    with pytest.raises(RunDirError) as e:
        mrlite.run(smoke_recipe, out=done)
    assert "iter 1 judge" in str(e.value)
    assert "inputs changed (iter_01/responses.jsonl)" in str(e.value)


# (d) ----------------------------------------------------------------------------------------------------------


def test_from_pairs_iter_1(smoke_recipe: mrlite.Recipe, done: Path) -> None:
    """--from recomputes from that stage within the selected iterations; others keep their markers and, since
    the recomputed files are identical, stay cached on the next full run."""
    before = snapshot(done)
    report = mrlite.run(smoke_recipe, out=done, from_stage="pairs", iters=[1])
    assert ran(report) == [(1, "pairs"), (1, "train")]
    assert cached(report) == [(1, "sample"), (1, "judge"), (1, "meta_judge")]
    assert sorted(p.name for p in (done / "iter_02" / ".done").iterdir()) == sorted(f"{s}.json" for s in STAGES)
    report = mrlite.run(smoke_recipe, out=done)
    assert ran(report) == []
    assert snapshot(done) == before


def test_from_pairs_all_iterations(smoke_recipe: mrlite.Recipe, done: Path) -> None:
    report = mrlite.run(smoke_recipe, out=done, from_stage="pairs")
    assert ran(report) == [(1, "pairs"), (1, "train")] + [(2, s) for s in STAGES]


def test_from_unknown_stage(smoke_recipe: mrlite.Recipe, run_dir: Path) -> None:
    with pytest.raises(RecipeError, match="--from 'bogus': unknown stage"):
        mrlite.run(smoke_recipe, out=run_dir, from_stage="bogus")
    assert not run_dir.exists()


def test_only_without_inputs(smoke_recipe: mrlite.Recipe, run_dir: Path) -> None:
    with pytest.raises(mrlite.loop.StageError, match=r"needs iter_01/prompts\.jsonl, which is missing"):
        mrlite.run(smoke_recipe, out=run_dir, only="judge", iters=[1])
    assert not (run_dir / "iter_01" / ".done" / "judge.json").exists()


# (e) ----------------------------------------------------------------------------------------------------------


def test_two_fresh_runs_are_identical(smoke_recipe: mrlite.Recipe, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        monkeypatch.chdir(tmp_path / d)
        mrlite.run(smoke_recipe, out="run")
    assert snapshot(tmp_path / "a" / "run") == snapshot(tmp_path / "b" / "run")


@pytest.fixture(scope="module")
def two_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The smoke run in two directories whose paths differ."""
    base = tmp_path_factory.mktemp("two")
    for d in ("a", "bb"):
        mrlite.run(mrlite.load_recipe(SMOKE), out=base / d)
    return base / "a", base / "bb"


def test_runs_in_different_dirs_differ_only_by_path(two_dirs: tuple[Path, Path]) -> None:
    a, b = (snapshot(d) for d in two_dirs)
    assert set(a) == set(b)
    assert set(a) >= PATH_DEPENDENT
    assert {k: v for k, v in a.items() if k not in PATH_DEPENDENT} == {
        k: v for k, v in b.items() if k not in PATH_DEPENDENT}



def test_fresh_runs_in_different_dirs_are_identical(two_dirs: tuple[Path, Path]) -> None:
    assert snapshot(two_dirs[0]) == snapshot(two_dirs[1])


def test_other_seed_gives_other_responses(smoke_recipe: mrlite.Recipe, tmp_path: Path) -> None:
    mrlite.run(smoke_recipe, out=tmp_path / "s0")
    mrlite.run(mrlite.load_recipe(SMOKE, ["loop.seed=1"]), out=tmp_path / "s1")
    r0 = (tmp_path / "s0" / "iter_01" / "responses.jsonl").read_text()
    r1 = (tmp_path / "s1" / "iter_01" / "responses.jsonl").read_text()
    assert r0 != r1
    assert (tmp_path / "s0" / "iter_01" / "prompts.jsonl").read_text() != (
        tmp_path / "s1" / "iter_01" / "prompts.jsonl").read_text()  # the pool is shuffled with the seed


# (f) ----------------------------------------------------------------------------------------------------------


def test_killed_stage_resumes_from_its_chunks(tmp_path: Path) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir()
    clean.mkdir()
    p = run_cli("run", killed, {"MRLITE_FAULT": "judge:chunk@2"})
    assert p.returncode == 99, p.stderr
    d = killed / "run" / "iter_01"
    assert sorted(x.name for x in (d / ".parts" / "judge").iterdir()) == [
        "chunk_00000.json", "chunk_00001.json", "parts.json", "progress.json"]  # smoke: 24 prompts in chunks of 8
    assert sorted(x.name for x in (d / ".done").iterdir()) == ["sample.json"]
    assert not (d / "judgments.jsonl").exists()
    assert (killed / "run" / ".lock").exists()  # left by the killed process; taken over below

    p = run_cli("run", killed)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "done: 9 stages ran, 2 cached → run"
    assert "judge: resumed, 2 of 3 chunks were already written" in (killed / "run" / "log.txt").read_text()

    assert run_cli("run", clean).returncode == 0
    assert snapshot(killed / "run") == snapshot(clean / "run")
    assert not (killed / "run" / ".lock").exists()


# (g) (h) ------------------------------------------------------------------------------------------------------


def test_run_dir_of_another_recipe(done: Path) -> None:
    before = snapshot(done, set())
    other = mrlite.load_recipe(SMOKE, ["name=other"])
    with pytest.raises(RunDirError) as e:
        mrlite.run(other, out=done)
    assert "holds a run of recipe 'smoke', not 'other'" in str(e.value)
    assert "--out" in str(e.value)
    assert snapshot(done, set()) == before  # nothing touched, lock released


def test_iteration_folders_without_run_json(smoke_recipe: mrlite.Recipe, run_dir: Path) -> None:
    (run_dir / "iter_01").mkdir(parents=True)
    with pytest.raises(RunDirError, match=r"has iteration folders but no run\.json"):
        mrlite.run(smoke_recipe, out=run_dir)


def test_held_lock_refuses_the_run(smoke_recipe: mrlite.Recipe, run_dir: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir.mkdir()
        lock = json.dumps({"pid": child.pid, "host": socket.gethostname()})
        (run_dir / ".lock").write_text(lock)
        with pytest.raises(RunDirError) as e:
            mrlite.run(smoke_recipe, out=run_dir)
        assert f"pid {child.pid}" in str(e.value) and "--out" in str(e.value)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written
        assert (run_dir / ".lock").read_text() == lock
    finally:
        child.kill()
        child.wait()
