"""Kill a fake-backend run at many points, run the same command again, and compare with an uninterrupted run.

Each kill point is an ``MRLITE_FAULT`` fault (``os._exit(99)``: no cleanup, like SIGKILL) at a chunk boundary, just
before a marker, between the moves of a training output, or between writing a ``.tmp`` file and renaming it. A few
cases also send a real SIGKILL at a moment in the run. The resumed run must leave byte-identical files
(``log.txt``, ``run.json`` and ``timings.jsonl`` excepted) and no ``.tmp``/``.parts`` leftovers.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"
VOLATILE = {"log.txt", "run.json", "timings.jsonl", ".lock"}

# smoke: 24 prompts per iteration in chunks of 8 → 3 chunks per generation stage and iteration.
KILL_POINTS = [
    "sample:chunk@1", "sample:chunk@3", "sample:chunk@5",
    "judge:chunk@1", "judge:chunk@2", "judge:chunk@4",
    "meta_judge:chunk@1", "meta_judge:chunk@3", "meta_judge:chunk@6",
    "sample:before_marker", "judge:before_marker", "meta_judge:before_marker@2", "pairs:before_marker",
    "train:before_marker", "train:before_move", "train:between_moves@2",
    "write:prompts.jsonl", "write:responses.jsonl@2", "write:judgments.jsonl", "write:meta_judgments.jsonl",
    "write:pairs_actor.jsonl", "write:pairs_judge.jsonl@2", "write:train_metrics.jsonl",
    "write:sample.json", "write:train.json@2", "write:lineage.json", "write:recipe.yaml", "write:run.json",
    "write:chunk_00001.json", "sample:after_marker", "judge:after_marker@2", "meta_judge:after_marker",
    "write:pool.jsonl", "write:pool.json", "prompts:before_marker",
]


def _run(out: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MRLITE_FAULT"} | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "mrlite", "run", str(SMOKE), "--out", str(out), "-q"],
                          capture_output=True, text=True, env=env, timeout=120)


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in VOLATILE}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("ref") / "run"
    r = _run(out)
    assert r.returncode == 0, r.stderr
    return snapshot(out)


def _leftovers(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.name.endswith((".tmp", ".old")) or p.name == ".parts"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_then_resume_is_identical(point: str, tmp_path: Path, reference: dict[str, str]) -> None:
    out = tmp_path / "run"
    killed = _run(out, {"MRLITE_FAULT": point})
    assert killed.returncode == 99, f"fault {point} was never reached: {killed.stderr[-500:]}"
    resumed = _run(out)
    assert resumed.returncode == 0, resumed.stderr
    assert snapshot(out) == reference
    assert _leftovers(out) == []
    if KILL_POINTS.index(point) % 4 == 0:  # (sampled, to keep CI short) a third run changes nothing
        again = _run(out)
        assert "11 cached" in again.stdout
        assert snapshot(out) == reference


@pytest.mark.parametrize("delay", [0.15, 0.45, 0.8])
def test_sigkill_at_a_moment_then_resume(delay: float, tmp_path: Path, reference: dict[str, str]) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mrlite", "run", str(SMOKE), "--out", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = _run(out)
    assert resumed.returncode == 0, resumed.stderr
    assert snapshot(out) == reference
    assert _leftovers(out) == []


def test_resume_after_kill_reports_reused_chunks(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _run(out, {"MRLITE_FAULT": "judge:chunk@2"}).returncode == 99
    assert sorted(p.name for p in (out / "iter_01" / ".parts" / "judge").iterdir()) == [
        "chunk_00000.json", "chunk_00001.json", "parts.json", "progress.json"]
    r = subprocess.run([sys.executable, "-m", "mrlite", "run", str(SMOKE), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert "iter 1 judge: resumed, 2 of 3 chunks were already written" in r.stderr
    assert "✓ iter 1 sample (cached, " in r.stderr


# The EFT set built inside the run (stage eft_data): the paper recipe on the fake backend with an Open Assistant
# file; 5 English ranked prompts in chunks of 2 → 3 chunks.
PAPER_EFT = [str(ROOT / "recipes" / "paper.yaml"), "--set", "backends.generator=fake", "--set", "backends.trainer=fake",
             "--set", "model.base=fake", "--set", f"eft.data=oasst:{ROOT / 'tests' / 'assets' / 'oasst_trees.jsonl'}",
             "--set", "eft.heldout=0.4", "--set", "data.prompts=builtin", "--set", "data.prompts_per_iteration=8",
             "--set", "loop.iterations=1", "--set", "actor.n=3", "--set", "judge.n=3", "--set", "loop.chunk_size=2"]
EFT_KILL_POINTS = ["eft_data:chunk@1", "eft_data:chunk@2", "eft_data:before_marker", "write:eft_data.jsonl",
                   "write:eft_heldout.jsonl", "write:eft_data_info.json", "eft_data:after_marker", "eft:before_marker"]


def _run_eft(out: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MRLITE_FAULT"} | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "mrlite", "run", *PAPER_EFT, "--out", str(out), "-q"],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def eft_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("eftref") / "run"
    r = _run_eft(out)
    assert r.returncode == 0, r.stderr
    return snapshot(out)


@pytest.mark.parametrize("point", EFT_KILL_POINTS)
def test_kill_during_the_eft_build_then_resume_is_identical(point: str, tmp_path: Path,
                                                            eft_reference: dict[str, str]) -> None:
    out = tmp_path / "run"
    killed = _run_eft(out, {"MRLITE_FAULT": point})
    assert killed.returncode == 99, f"fault {point} was never reached: {killed.stderr[-500:]}"
    if point == "eft_data:chunk@2":
        assert sorted(p.name for p in (out / "iter_00" / ".parts" / "eft_data").iterdir()) == [
            "chunk_00000.json", "chunk_00001.json", "parts.json", "progress.json"]
    resumed = _run_eft(out)
    assert resumed.returncode == 0, resumed.stderr
    assert snapshot(out) == eft_reference
    assert "iter_00/eft_data.jsonl" in eft_reference and "iter_00/.done/eft_data.json" in eft_reference
    assert _leftovers(out) == []
