"""The ``prompts`` stage: every run writes its pool into iter_00 (ids + provenance); ``data.prompts: generate``
grows it the Self-Rewarding way in resumable chunks, drops exact and near duplicates, and gives up with one line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mrlite
from mrlite.cli import cli
from mrlite.data.dedup import NearDuplicateIndex, batch_shingles, jaccard, normalize, shingles
from mrlite.rundir import RunDirError, read_jsonl
from mrlite.data.sources import load_prompt_pool

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
GROW = ["data.prompts=generate", "data.generate.n=300", "loop.iterations=1"]
VOLATILE = {"log.txt", "run.json", "timings.jsonl", ".lock"}


def _cli(out: Path, *sets: str, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "mrlite", "run", str(SMOKE), "--out", str(out), "-q"]
    for s in sets:
        argv += ["--set", s]
    e = {k: v for k, v in os.environ.items() if k != "MRLITE_FAULT"} | (env or {})
    return subprocess.run(argv, capture_output=True, text=True, env=e, timeout=300)


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in VOLATILE}


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grown") / "run"
    r = _cli(out, *GROW)
    assert r.returncode == 0, r.stderr
    return out


def test_grown_pool_has_ids_and_provenance(grown: Path) -> None:
    rows = read_jsonl(grown / "iter_00" / "pool.jsonl")
    seeds = load_prompt_pool("builtin")
    assert [r["id"] for r in rows] == [f"g{i:05d}" for i in range(300)]
    assert len({normalize(r["prompt"]) for r in rows}) == 300
    assert not {normalize(r["prompt"]) for r in rows} & {normalize(s) for s in seeds.prompts}
    assert all(len(r["shots"]) == 8 and set(r["shots"]) <= set(seeds.ids) for r in rows)
    prov = json.loads((grown / "iter_00" / "pool.json").read_text())
    assert (prov["mode"], prov["n"], prov["model"], prov["shots"]) == ("generate", 300, "fake", 8)
    assert prov["seeds"] == {"source": "builtin", "identity": seeds.identity, "prompts": len(seeds.prompts)}
    assert prov["similarity"] == {"measure": "jaccard", "threshold": 0.8, "shingle_chars": 5}
    assert prov["sampling"] == {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 256}
    st = prov["stats"]
    assert st["kept"] == 300 and st["duplicate"] > 0 and st["near_duplicate"] > 0 and st["too_short"] > 0
    assert st["candidates"] == 300 + st["surplus"] + sum(st[k] for k in ("duplicate", "near_duplicate", "too_short",
                                                                         "too_long", "has_tag") if k in st)
    marker = json.loads((grown / "iter_00" / ".done" / "prompts.json").read_text())
    assert marker["summary"]["stats"] == st
    # the iteration's slice comes from the pool file
    sample = read_jsonl(grown / "iter_01" / "prompts.jsonl")
    by_id = {r["id"]: r["prompt"] for r in rows}
    assert sample and all(by_id[p["prompt_id"]] == p["prompt"] for p in sample)
    assert "iter_00/pool.jsonl" in json.loads((grown / "iter_01" / ".done" / "sample.json").read_text())["inputs"]


def test_killed_growth_resumes_to_identical_files(grown: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _cli(out, *GROW, env={"MRLITE_FAULT": "prompts:chunk@3"}).returncode == 99
    assert sorted(p.name for p in (out / "iter_00" / ".parts" / "prompts").iterdir()) == [
        "chunk_00000.json", "chunk_00001.json", "chunk_00002.json", "parts.json"]
    assert not (out / "iter_00" / "pool.jsonl").exists()
    r = _cli(out, *GROW)
    assert r.returncode == 0, r.stderr
    assert _snapshot(out) == _snapshot(grown)
    assert "prompts: resumed, 3 chunks were already written" in (out / "log.txt").read_text()


def test_changed_pool_makes_sample_stale(grown: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(grown, out)
    pool = out / "iter_00" / "pool.jsonl"
    pool.write_text(pool.read_text().replace("?", "!", 1))
    with pytest.raises(RunDirError) as e:
        mrlite.run(mrlite.load_recipe(SMOKE, GROW), out=out)
    assert "iter 1 sample" in str(e.value) and "inputs changed (iter_00/pool.jsonl)" in str(e.value)


def test_source_pool_is_materialised(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"Question number {i}?"}) + "\n" for i in range(30))
                   + json.dumps({"id": "dup", "prompt": "question NUMBER 3?"}) + "\n")
    out = tmp_path / "run"
    mrlite.run(mrlite.load_recipe(SMOKE, [f"data.prompts={src}", "data.prompts_per_iteration=10"]), out=out)
    rows = read_jsonl(out / "iter_00" / "pool.jsonl")
    assert [r["id"] for r in rows] == [f"x{i}" for i in range(30)]
    prov = json.loads((out / "iter_00" / "pool.json").read_text())
    assert (prov["mode"], prov["source"], prov["stats"]["duplicates"]) == ("source", str(src), 1)


def _one_line_failure(out: Path, *sets: str) -> str:
    r = CliRunner().invoke(cli, ["run", str(SMOKE), "--out", str(out), "-q", *[x for s in sets for x in ("--set", s)]])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code != 0 and len(lines) == 1, r.output
    assert not (out / "iter_00" / "pool.jsonl").exists() and not (out / "iter_00" / ".done").exists()
    assert not (out / "iter_01").exists()
    return lines[0]


def test_a_model_that_never_writes_a_usable_task_stops_early(tmp_path: Path) -> None:
    msg = _one_line_failure(tmp_path / "run", *GROW, "data.generate.min_chars=1500")
    assert msg.startswith("Error: prompts: the model never wrote a usable task: 32 requests gave ")
    assert "0 kept of data.generate.n 300 (dropped: " in msg and " too short" in msg
    assert "use a stronger data.generate.model" in msg


def test_an_unreachable_target_stops_and_resumes_with_a_larger_bound(tmp_path: Path, grown: Path) -> None:
    out = tmp_path / "run"
    msg = _one_line_failure(out, *GROW, "data.generate.max_requests=20")
    assert "the target is out of reach within data.generate.max_requests 20: 20 requests gave" in msg
    assert "raise data.generate.max_requests" in msg
    # the whole chunks written so far are reused once the bound is raised (it is not part of the pool's
    # fingerprint); the one the old bound cut short (requests 16-19 of 16-23) is asked again in full
    r = CliRunner().invoke(cli, ["run", str(SMOKE), "--out", str(out), *[x for s in GROW for x in ("--set", s)]])
    assert r.exit_code == 0, r.output
    assert "prompts: resumed, 2 chunks were already written" in (out / "log.txt").read_text()
    assert (out / "iter_00" / "pool.jsonl").read_bytes() == (grown / "iter_00" / "pool.jsonl").read_bytes()


# ---------------------------------------------------------------------------------------------------- dedup


def test_near_duplicates_are_found_and_verified() -> None:
    ix = NearDuplicateIndex("jaccard", 0.8, 5)
    base = "How do I bake a loaf of sourdough bread at home without a stand mixer?"
    assert ix.add_many([base, base.upper(), base + " please", "What is the capital of France?"]) == [
        None, "exact", "near", None]
    far = "How do I bake a loaf of rye bread in a small oven?"
    assert jaccard(shingles(normalize(base), 5), shingles(normalize(far), 5)) < 0.8
    assert ix.add(far) is None  # similar words, below the threshold: kept
    exact = NearDuplicateIndex("exact")
    assert exact.add_many([base, base + " please", " " + base.lower()]) == [None, None, "exact"]


def test_batch_shingles_match_one_by_one() -> None:
    texts = ["short", "ab", "", "a longer text with some words", "ünïcödé text"]
    for a, t in zip(batch_shingles(texts, 5), texts, strict=True):
        assert np.array_equal(a, shingles(t, 5))
