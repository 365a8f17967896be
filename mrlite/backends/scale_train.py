"""Training past one LoRA on one device: full fine-tuning (``train.method: full``) and the multi-process ending.

**Full fine-tuning** trains every weight of M_{t-1}, as the paper did (Meta-Rewarding, arXiv 2407.19594 §3.1:
lr 5e-6, global batch 32). No peft config is given to TRL, so DPO's reference is a frozen copy of M_{t-1} that
TRL loads from the same directory (``DPOTrainer`` with ``ref_model=None``); ``train.trl_args:
{precompute_ref_log_probs: true}`` instead computes the reference log-probs once before training and keeps no
second model (less memory, one extra pass over the rows). The trained weights are saved directly as M_t: no
adapter, no merge; ``lineage.json`` records the step with ``method: full`` and the sha256 of the saved weights.

**Multi-process** (``train.num_processes > 1``, started by ``mrlite.scale.distributed``): every process trains its
share of each global batch; only the main process saves the adapter, merges and writes ``lineage.json``. With
FSDP or DeepSpeed ZeRO-3 the full weights are gathered by ``Trainer.save_model``, which every process must call.
Exercised by: ``tests/test_scale_train.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mrlite.backends import train_core as core
from mrlite.backends.base import TrainResult
from mrlite.rundir import atomic_write_text

if TYPE_CHECKING:
    from mrlite.recipe import Recipe

TRAINER_LEFTOVERS = ("training_args.bin",)
"""Files ``Trainer.save_model`` adds next to the weights that are not part of a model (and not reproducible)."""


def method(recipe: Recipe, kind: str) -> str:
    """``lora`` or ``full`` for a training call: ``train.method`` for DPO, ``eft.method`` (if any) for the EFT SFT."""
    return getattr(core.section_cfg(recipe, kind), "method", "lora")


def is_main_process(trainer) -> bool:
    """Whether this is the process that writes files (always true in a single-process run)."""
    acc = getattr(trainer, "accelerator", None)
    return True if acc is None else bool(acc.is_main_process)


def weights_sha256(model_dir: Path) -> str:
    """One hash over every ``*.safetensors`` file of a model directory (names and contents, sorted by name)."""
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def write_full_lineage(model_dir: Path, base: str, iteration: int, kind: str) -> dict:
    """``model_dir/lineage.json``: the parent's chain plus this full fine-tuning step (no adapter)."""
    lineage = core.read_lineage(base)
    lineage["adapters"].append({"iteration": iteration, "kind": kind, "method": "full",
                                "weights_sha256": weights_sha256(model_dir)})
    atomic_write_text(Path(model_dir) / "lineage.json", json.dumps(lineage, indent=2) + "\n")
    return lineage


def finish(trainer, full: bool, base: str, out: Path, tok, iteration: int, kind: str, *, rows: int, dropped: int,
           metrics: list[dict], t0: float, train_seconds: float, load_in_4bit: bool) -> TrainResult:
    """End a training call that does not end in a LoRA merge on this process.

    ``full``: every process takes part in saving (sharded weights are gathered); the main process then writes
    ``out/model`` with tokenizer and lineage. A non-main process of a LoRA run returns at once: the main process
    saves the adapter and merges.
    """
    main = is_main_process(trainer)
    if full:
        model_dir = Path(out) / "model"
        trainer.save_model(str(model_dir))
        if main:
            for name in TRAINER_LEFTOVERS:
                (model_dir / name).unlink(missing_ok=True)
            tok.save_pretrained(model_dir)
            write_full_lineage(model_dir, base, iteration, kind)
            shutil.rmtree(Path(out) / core.WORK_DIR, ignore_errors=True)
    s = core.summary(kind, iteration, rows=rows, dropped=dropped, metrics=metrics, train_seconds=train_seconds,
                     seconds=time.perf_counter() - t0, load_in_4bit=load_in_4bit)
    if full:
        s["method"] = "full"
    if main:
        core.log_summary(s)
    return TrainResult(n_rows=rows, n_dropped=dropped, metrics=metrics, summary=s)


__all__ = ["finish", "is_main_process", "method", "weights_sha256", "write_full_lineage"]
