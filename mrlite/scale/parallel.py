"""Generation across worker processes: each takes whole chunks of a stage and writes the chunk files one process would.

A generation stage cuts its prompts into chunks with fixed boundaries, seeds every row from (run seed, iteration,
stage, row id) and writes each chunk whole (``iter_NN/.parts/<stage>/chunk_NNNNN.json``). Chunks are therefore
independent of which process generates them, so data parallelism needs no protocol of its own: when a stage has
missing chunks and the recipe asks for several workers, ``fan_out`` starts ``python -m mrlite.scale.parallel`` once per
worker, worker ``w`` taking missing chunks ``w, w+W, w+2W, ...``, waits for all of them, and the stage then reads
every chunk from disk as it does on resume. Nothing else changes: resume, the chunk layout and the byte-identity
of the stage's files hold as with one process.

How many workers:
- ``backends.vllm.data_parallel_size`` for vLLM: one engine per worker, each on its own group of
  ``tensor_parallel_size`` GPUs (``CUDA_VISIBLE_DEVICES`` set per worker); needs ``dp × tp`` visible GPUs.
  (vLLM's own offline data parallelism also runs one engine per process and leaves splitting the prompts to the
  caller; mrlite's chunks are that split, so it starts the processes itself.)
- ``backends.hf.workers`` for the HF generator (and the fake one, which stands in for it in tests): one GPU per
  worker when there are GPUs (round robin), else CPU threads shared out (``OMP_NUM_THREADS``).

A worker runs the stage's own code with its outputs redirected to a scratch folder (only the chunks it was given
are generated; it stops before the stage would write its files), so the stage modules need no worker mode.
This module imports no torch. Exercised by: ``tests/test_parallel.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mrlite.rundir import RunDir

if TYPE_CHECKING:
    from mrlite.recipe import Recipe
    from mrlite.stages import StageContext

log = logging.getLogger(__name__)

_ASSIGNED: set[int] | None = None
"""In a worker process: the chunk indices it generates. None in every other process."""


class WorkerDone(Exception):  # a signal, not an error
    """Raised in a worker once its chunks are written, to stop the stage before it writes its own files."""


def worker_count(recipe: Recipe) -> int:
    """Generation workers the recipe asks for (1: generate in this process)."""
    if recipe.backends.generator == "vllm":
        return recipe.backends.vllm.data_parallel_size
    return recipe.backends.hf.workers


def chunk_file(parts: Path, ci: int) -> Path:
    return parts / f"chunk_{ci:05d}.json"


def assign(missing: list[int], workers: int) -> list[list[int]]:
    """Missing chunk indices per worker: round robin, so every worker gets about as many of them."""
    return [missing[w::workers] for w in range(workers) if missing[w::workers]]


def visible_gpu_ids(env: Mapping[str, str], count: int) -> list[str]:
    """The device ids this process may hand out: ``CUDA_VISIBLE_DEVICES`` when set, else ``0..count-1``.

    ``count`` is the number of visible GPUs (0: none, whatever the environment says)."""
    if count <= 0:
        return []
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is not None:
        return [x.strip() for x in spec.split(",") if x.strip() and x.strip() != "-1"]
    return [str(i) for i in range(count)]


def worker_devices(recipe: Recipe, workers: int, gpu_ids: list[str]) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` per worker (None: CPU, leave the environment as it is).

    Raises:
        ValueError: vLLM data parallelism needs ``data_parallel_size × tensor_parallel_size`` GPUs.
    """
    if not gpu_ids:
        return [None] * workers
    if recipe.backends.generator == "vllm":
        tp = recipe.backends.vllm.tensor_parallel_size
        if workers * tp > len(gpu_ids):
            raise ValueError(
                f"backends.vllm.data_parallel_size {workers} x tensor_parallel_size {tp} needs {workers * tp} GPUs, "
                f"{len(gpu_ids)} are visible; lower data_parallel_size (or tensor_parallel_size)"
            )
        return [",".join(gpu_ids[w * tp:(w + 1) * tp]) for w in range(workers)]
    return [gpu_ids[w % len(gpu_ids)] for w in range(workers)]


def worker_env(base: Mapping[str, str], device: str | None, workers: int, cpus: int) -> dict[str, str]:
    env = dict(base, PYTHONUNBUFFERED="1")
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    elif "OMP_NUM_THREADS" not in base:
        env["OMP_NUM_THREADS"] = str(max(1, cpus // workers))
    return env


def fan_out(ctx: StageContext, stage: str, parts: Path, n_chunks: int) -> set[int] | None:
    """Called by the chunk loop of a generation stage before it generates anything.

    Returns:
        In a worker: the chunks this worker generates. Elsewhere None, after the workers (if the recipe asks for
        more than one and at least two chunks are missing) have written every missing chunk.

    Raises:
        StageError: a worker failed (its own message is above), or the GPUs do not fit the workers.
    """
    if _ASSIGNED is not None:
        return _ASSIGNED
    workers = worker_count(ctx.recipe)
    missing = [ci for ci in range(n_chunks) if not chunk_file(parts, ci).exists()]
    if workers <= 1 or len(missing) < 2:
        return None
    from mrlite.stages import StageError

    shares = assign(missing, workers)
    devices = _devices(ctx.recipe, len(shares))
    ctx.close()  # free this process's engine (and its GPU memory) before the workers load theirs
    log.info("iter %d %s: %d chunks on %d worker processes", ctx.t, stage, len(missing), len(shares))
    procs: list[subprocess.Popen] = []
    try:
        for w, (mine, device) in enumerate(zip(shares, devices, strict=True)):
            cmd = [sys.executable, "-m", "mrlite.scale.parallel", str(ctx.run.root), "--iter", str(ctx.t), "--stage", stage,
                   "--worker", str(w), "--chunks", ",".join(map(str, mine))]
            log.debug("subprocess: %s", " ".join(cmd))
            procs.append(subprocess.Popen(cmd, env=worker_env(os.environ, device, len(shares), os.cpu_count() or 1)))
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    bad = [w for w, rc in enumerate(codes) if rc != 0]
    if bad:
        raise StageError(f"iter {ctx.t} {stage}: generation worker {bad[0]} failed (exit {codes[bad[0]]}); see the "
                         "message above. Run again to resume (written chunks are kept), or set backends.hf.workers / "
                         "backends.vllm.data_parallel_size to 1")
    return None


def _devices(recipe: Recipe, workers: int) -> list[str | None]:
    from mrlite.stages import StageError

    ids: list[str] = []
    if recipe.backends.generator != "fake":
        from mrlite.hardware.gpu import gpus

        ids = visible_gpu_ids(os.environ, len(gpus(use_torch=False) or []))  # nvidia-smi only: no CUDA context
    try:
        return worker_devices(recipe, workers, ids)
    except ValueError as e:
        raise StageError(str(e)) from None


def done() -> None:
    """Called by the chunk loop after its chunks: a worker stops here (raises WorkerDone)."""
    if _ASSIGNED is not None:
        raise WorkerDone


class _ScratchRun(RunDir):
    """The run directory as a worker sees it: the stage's output files go to a scratch folder, all else is shared."""

    def __init__(self, root: Path, t: int, names: set[str], scratch: Path):
        super().__init__(root)
        self._t, self._names, self._scratch = t, names, scratch

    def path(self, t: int, name: str) -> Path:
        if t == self._t and name in self._names:
            return self._scratch / name
        return super().path(t, name)


def run_worker(run_dir: Path, t: int, stage: str, worker: int, chunks: set[int]) -> None:
    """Body of ``python -m mrlite.scale.parallel``: generate ``chunks`` of one stage of one iteration."""
    global _ASSIGNED
    from mrlite.recipe import load_recipe
    from mrlite.stages import StageContext, module

    rd = RunDir(run_dir)
    recipe = load_recipe(rd.root / "recipe.yaml")
    mod = module(stage)
    names = {p.name for p in mod.outputs(StageContext(recipe, rd, t))}
    scratch = rd.parts_dir(t, stage) / f".worker{worker:02d}"
    ctx = StageContext(recipe, _ScratchRun(rd.root, t, names, scratch), t)
    _ASSIGNED = set(chunks)
    try:
        mod.run(ctx)
    except WorkerDone:
        pass
    finally:
        _ASSIGNED = None
        ctx.close()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mrlite.scale.parallel", description="One generation worker (internal).")
    p.add_argument("run_dir")
    p.add_argument("--iter", dest="t", type=int, required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--chunks", required=True)
    a = p.parse_args(argv)
    from mrlite.errors import MrliteError, setup_cli_logging

    setup_cli_logging(0, True)
    from mrlite.scale import parallel  # this file runs as __main__: the stage code reads the imported module's state

    try:
        parallel.run_worker(Path(a.run_dir), a.t, a.stage, a.worker, {int(x) for x in a.chunks.split(",") if x})
    except MrliteError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = ["WorkerDone", "assign", "done", "fan_out", "main", "run_worker", "visible_gpu_ids", "worker_count",
           "worker_devices", "worker_env"]


if __name__ == "__main__":
    sys.exit(main())
