"""Training across processes: the train and EFT stages under ``accelerate launch`` when ``train.num_processes > 1``.

The stage calls ``train_call``; with one process it is the trainer backend's own ``train_dpo``/``train_sft`` in
this process (today's path, unchanged). With ``N > 1`` it starts

    python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m mrlite.scale.distributed <args>

(``accelerate launch``'s multi-process launcher: torchrun underneath; on a machine without CUDA the trainer's
``use_cpu`` makes every process join a gloo group) and waits. Each process runs the same TRL trainer; TRL's
``Trainer`` shards every global batch over the processes (DDP), so ``train.batch_size`` is **per process** and
the global batch is ``batch_size × grad_accum × num_processes``. Only the main process saves the adapter, merges
and writes ``out/result.json``, which this side reads back. ``train.distributed: fsdp | deepspeed`` selects FSDP
(FULL_SHARD) or DeepSpeed ZeRO-3 for full fine-tuning on GPUs (weights, gradients and optimizer states sharded;
the 16-bit weights are gathered for saving).

This module imports no torch: the orchestrator and the stages stay torch-free.
Exercised by: ``tests/test_distributed.py`` (two CPU processes, gloo).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mrlite.errors import MrliteError

if TYPE_CHECKING:
    from mrlite.backends.base import TrainResult
    from mrlite.recipe import Recipe

log = logging.getLogger(__name__)

RESULT = "result.json"
"""What the main training process leaves in ``out``: the TrainResult as JSON."""
RECIPE = "recipe.yaml"


class DistributedError(MrliteError, RuntimeError):
    """The multi-process training run failed or cannot start here. One line with the fix."""


def train_call(recipe: Recipe, iteration: int, kind: str, rows: Path, base: str, out: Path) -> TrainResult:
    """Train ``kind`` ("dpo" or "sft") on ``rows`` from ``base`` into ``out``: in this process, or across
    ``train.num_processes`` processes under ``accelerate launch``. Outputs are the same files either way."""
    if recipe.train.num_processes <= 1 or recipe.backends.trainer == "fake":
        from mrlite.backends import load_trainer

        trainer = load_trainer(recipe, iteration)
        return trainer.train_dpo(rows, base, out) if kind == "dpo" else trainer.train_sft(rows, base, out)
    return launch(recipe, iteration, kind, rows, base, out)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the rendezvous port of the process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_args(recipe: Recipe, port: int) -> list[str]:
    """``accelerate launch`` flags for the recipe (checked against accelerate 1.15's ``accelerate launch --help``).

    ``--multi_gpu`` selects accelerate's multi-process launcher also on CPU (``--cpu`` would run one process; the
    trainer's ``use_cpu`` then makes the group gloo). Precision stays the trainer's own (``--mixed_precision no``:
    TRL's config sets bf16 itself).
    """
    t = recipe.train
    args = ["--num_processes", str(t.num_processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    if t.distributed == "deepspeed":
        return ["--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag", "true", "--zero3_save_16bit_model",
                "true", *args]
    if t.distributed == "fsdp":
        return ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_cpu_ram_efficient_loading", "true",
                "--fsdp_reshard_after_forward", "true", *args]
    return ["--multi_gpu", *args]


def launch_command(recipe_file: Path, recipe: Recipe, iteration: int, kind: str, rows: Path, base: str, out: Path,
                   port: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *launch_args(recipe, port), "-m", "mrlite.scale.distributed",
            "--recipe", str(recipe_file), "--iteration", str(iteration), "--kind", kind, str(rows), base, str(out)]


def launch(recipe: Recipe, iteration: int, kind: str, rows: Path, base: str, out: Path) -> TrainResult:
    """Run one training call across ``train.num_processes`` processes and return the main process's result.

    Raises:
        DistributedError: a process failed (exit code; the log above has the reason) or wrote no result.
    """
    from mrlite.backends.base import TrainResult
    from mrlite.rundir import atomic_write_text

    if recipe.backends.trainer != "trl":
        raise DistributedError(
            f"train.num_processes {recipe.train.num_processes} needs backends.trainer: trl (the "
            f"{recipe.backends.trainer} trainer runs on one GPU); set backends.trainer: trl or train.num_processes: 1"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe_file = out / RECIPE
    atomic_write_text(recipe_file, recipe.to_yaml())
    (out / RESULT).unlink(missing_ok=True)
    cmd = launch_command(recipe_file, recipe, iteration, kind, rows, base, out, free_port())
    log.info("%s iter %d: training on %d processes (accelerate launch, %s)", kind, iteration,
             recipe.train.num_processes, recipe.train.distributed)
    log.debug("subprocess: %s", " ".join(cmd))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // recipe.train.num_processes)))
    rc = subprocess.call(cmd, env=env)
    if rc != 0 or not (out / RESULT).is_file():
        raise DistributedError(
            f"{kind} iter {iteration}: `accelerate launch` with {recipe.train.num_processes} processes failed "
            f"(exit {rc}); see the messages above. Set train.num_processes: 1 to train in one process"
        )
    data = json.loads((out / RESULT).read_text(encoding="utf-8"))
    (out / RESULT).unlink()
    recipe_file.unlink(missing_ok=True)
    return TrainResult(n_rows=data["n_rows"], n_dropped=data["n_dropped"], metrics=data["metrics"],
                       summary=data["summary"])


def main(argv: list[str] | None = None) -> int:
    """One process of a multi-process training call (started by ``accelerate launch``)."""
    p = argparse.ArgumentParser(prog="python -m mrlite.scale.distributed")
    p.add_argument("--recipe", required=True)
    p.add_argument("--iteration", type=int, required=True)
    p.add_argument("--kind", choices=("dpo", "sft"), required=True)
    p.add_argument("rows")
    p.add_argument("base")
    p.add_argument("out")
    a = p.parse_args(argv)
    from mrlite.backends import load_trainer
    from mrlite.errors import setup_cli_logging
    from mrlite.recipe import load_recipe
    from mrlite.rundir import atomic_write_json

    rank = int(os.environ.get("RANK", "0"))
    setup_cli_logging(0, rank != 0)  # the other processes only print warnings and errors
    recipe = load_recipe(a.recipe)
    trainer = load_trainer(recipe, a.iteration)
    fn = trainer.train_dpo if a.kind == "dpo" else trainer.train_sft
    result = fn(Path(a.rows), a.base, Path(a.out))
    if rank == 0:
        atomic_write_json(Path(a.out) / RESULT, {"n_rows": result.n_rows, "n_dropped": result.n_dropped,
                                                 "metrics": result.metrics, "summary": result.summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
