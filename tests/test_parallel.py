"""Generation across worker processes: the same chunk files and the same stage files as one process; the worker
and GPU assignment; recipes that do not use it stay byte-identical."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _models import cuda_available, model_home, tiny_model  # noqa: F401  (fixtures)

from mrlite.scale.parallel import assign, visible_gpu_ids, worker_devices, worker_env
from mrlite.recipe import load_recipe

SKIP = {"log.txt", "run.json", "timings.jsonl", "recipe.yaml"}  # recipe.yaml names the worker count


def hashes(root: Path, under: str = "") -> dict[str, str]:
    base = root / under
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file() and p.name not in SKIP}


def mrlite(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "mrlite", *args], capture_output=True, text=True, env=env,
                          timeout=1800)


def run_killed_then_resumed(recipe: str, out: Path, sets: list[str], stage: str) -> tuple[dict, dict]:
    """Run ``stage`` of iteration 1, killed right before its marker (chunks on disk), then resume it."""
    args = ["run", recipe, "--out", str(out), "--only", stage, "--iter", "1", "-q"]
    for s in sets:
        args += ["--set", s]
    killed = mrlite(args, {"MRLITE_FAULT": f"{stage}:before_marker"})
    assert killed.returncode != 0, killed.stderr
    chunks = {k: v for k, v in hashes(out, f"iter_01/.parts/{stage}").items() if not k.endswith("progress.json")}
    assert chunks and not any(".worker" in k for k in chunks), chunks  # the workers' scratch folders are gone
    done = mrlite(args)
    assert done.returncode == 0, done.stderr
    return chunks, hashes(out)


def test_two_workers_write_the_same_chunks_and_files_as_one_fake(tmp_path):
    sets = ["loop.chunk_size=3", "data.prompts_per_iteration=10"]
    one = run_killed_then_resumed("smoke", tmp_path / "one", sets, "sample")
    two = run_killed_then_resumed("smoke", tmp_path / "two", [*sets, "backends.hf.workers=2"], "sample")
    assert len(one[0]) == 1 + 4  # parts.json + 4 chunks (10 prompts, 3 per chunk)
    assert one == two
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "4 chunks on 2 worker processes" in log


def test_whole_smoke_run_with_workers_is_identical(tmp_path):
    from mrlite.loop import run

    run(load_recipe("smoke", ["loop.chunk_size=4"]), tmp_path / "a")
    run(load_recipe("smoke", ["loop.chunk_size=4", "backends.hf.workers=3"]), tmp_path / "b")
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b")


def test_a_failing_worker_stops_the_stage_with_one_line(tmp_path):
    out = tmp_path / "run"
    r = mrlite(["run", "smoke", "--out", str(out), "--only", "sample", "--iter", "1", "--set", "loop.chunk_size=2",
                "--set", "backends.hf.workers=2"], {"MRLITE_FAULT": "sample:chunk"})
    assert r.returncode != 0
    assert "generation worker" in r.stderr and "failed" in r.stderr
    assert not (out / "iter_01" / ".done" / "sample.json").exists()


def test_assignment_round_robin_and_devices():
    assert assign([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert assign([7], 3) == [[7]]
    fake = load_recipe("smoke", [])
    r = load_recipe("recipes/paper_8gpu.yaml", ["backends.vllm.data_parallel_size=4",
                                                 "backends.vllm.tensor_parallel_size=2"])
    assert worker_devices(r, 4, [str(i) for i in range(8)]) == ["0,1", "2,3", "4,5", "6,7"]
    with pytest.raises(ValueError, match="needs 8 GPUs, 4 are visible"):
        worker_devices(r, 4, ["0", "1", "2", "3"])
    hf = load_recipe("tiny", ["backends.hf.workers=3"])
    assert worker_devices(hf, 3, ["0", "1"]) == ["0", "1", "0"]
    assert worker_devices(fake, 2, []) == [None, None]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "3,5"}, 2) == ["3", "5"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "0"}, 0) == []
    assert visible_gpu_ids({}, 2) == ["0", "1"]
    env = worker_env({"PATH": "/bin"}, None, 2, 16)
    assert env["OMP_NUM_THREADS"] == "8" and "CUDA_VISIBLE_DEVICES" not in env
    assert worker_env({}, "2,3", 2, 16)["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_scale_out_fields_leave_one_gpu_recipes_unchanged():
    """Default values of the new fields are not dumped: recipe.yaml, markers and hashes stay as before."""
    r = load_recipe("tiny")
    y = r.to_yaml()
    for key in ("workers", "data_parallel_size", "method", "num_processes", "distributed"):
        assert f"{key}:" not in y
    w = load_recipe("tiny", ["backends.hf.workers=2", "train.num_processes=2", "train.method=full"])
    assert "workers: 2" in w.to_yaml() and "num_processes: 2" in w.to_yaml() and "method: full" in w.to_yaml()
    # the worker count never changes a row: not part of a stage's config hash
    assert w.backends.model_dump(mode="json") == r.backends.model_dump(mode="json")
    assert w.train.model_dump(mode="json") != r.train.model_dump(mode="json")
    assert load_recipe("recipes/paper_8gpu.yaml").train.method == "full"


@pytest.mark.slow
def test_two_workers_tiny_random_same_chunks_and_files(tmp_path, tiny_model):
    sets = ["model.base=tiny-random", "eft.enabled=false", "data.prompts_per_iteration=4", "actor.n=2",
            "actor.max_new_tokens=8", "loop.chunk_size=1", "loop.iterations=1"]
    one = run_killed_then_resumed("tiny", tmp_path / "one", sets, "sample")
    two = run_killed_then_resumed("tiny", tmp_path / "two", [*sets, "backends.hf.workers=2"], "sample")
    assert len(one[0]) == 1 + 4
    assert one == two


@pytest.mark.skipif(not cuda_available(), reason="vLLM data parallelism needs CUDA GPUs")
def test_vllm_data_parallel_same_chunks(tmp_path):  # pragma: no cover - GPU only
    pytest.importorskip("vllm")
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    sets = ["model.base=smollm2-135m", "data.prompts_per_iteration=8", "loop.chunk_size=2", "loop.iterations=1",
            "backends.generator=vllm", "backends.trainer=trl", "backends.vllm.gpu_memory_utilization=0.3"]
    one = run_killed_then_resumed("tiny", tmp_path / "one", sets, "sample")
    two = run_killed_then_resumed("tiny", tmp_path / "two", [*sets, "backends.vllm.data_parallel_size=2"], "sample")
    assert one[0].keys() == two[0].keys()
