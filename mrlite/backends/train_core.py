"""What every trainer backend shares: rows in, TRL config from the recipe, checkpoints, metrics, lineage, summary.

A trainer backend (``trl``, ``unsloth``) keeps only what differs: how the model is loaded (and the LoRA added)
and how the adapter is merged. Everything else goes through here, so both trainers read rows, drop over-long
ones, apply ``train.trl_args``, checkpoint and resume, check the loss and report in one way.

Imports no torch, transformers or trl at module level (the unsloth trainer must import unsloth before them);
the few functions that need transformers import it when called.
Exercised by: ``mrlite run recipes/tiny.yaml`` (the TRL trainer) and ``tests/test_unsloth_backend.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrlite.backends.tokens import chat_ids
from mrlite.rundir import PARTS_DIR, atomic_write_text, fault_point, sha256_file

if TYPE_CHECKING:
    from mrlite.recipe import Recipe

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "learning_rate",
    "grad_norm",
    "mean_token_accuracy",
)
"""The trainer's log keys kept in the metrics rows (``train_metrics.jsonl``)."""
ROW_KEYS = {"dpo": ("prompt", "chosen", "rejected"), "sft": ("prompt", "completion")}
"""Keys of a training row per kind (TRL's conversational preference / prompt-completion formats)."""
SECTION = {"dpo": "train", "sft": "eft"}
"""The recipe section that configures each kind: DPO steps use ``train``, the EFT SFT (iteration 0) ``eft``."""
WORK_DIR = ".trainer"
"""The trainer's scratch directory inside ``out`` (checkpoints); removed once the adapter is saved."""
TRAINED_ADAPTER = "default"
"""peft's name for the LoRA being trained. The only adapter saved: TRL adds a frozen copy named "ref" when it is
given a PeftModel without a reference model (unsloth's case), and peft would save it too (with an absolute path)."""


# --------------------------------------------------------------------------------------------------------------
# Rows


def read_rows(path: Path, keys: tuple[str, ...]) -> list[dict]:
    """Training rows of a JSONL file, reduced to ``keys`` (other keys, e.g. provenance, are dropped).

    Raises:
        ValueError: a row lacks one of ``keys`` (names file and line).
    """
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in keys if k not in row]
            if missing:
                raise ValueError(f"{path}:{n}: training row lacks {', '.join(missing)} (needs {', '.join(keys)})")
            rows.append({k: row[k] for k in keys})
    return rows


def chat_len(tok, messages: list[dict]) -> int:
    """Tokens of ``messages`` with the tokenizer's chat template (as TRL tokenises a row)."""
    return len(chat_ids(tok, messages, add_generation_prompt=False))


def filter_long(rows: list[dict], tok, keys: tuple[str, ...], max_length: int) -> tuple[list[dict], int]:
    """Drop rows whose templated prompt + answer exceeds ``max_length`` tokens (as TRL tokenises them).

    TRL would otherwise truncate them silently (losing the end of the answer, and with it the EOS that DPO's
    length signal depends on) or drop them without telling.

    Returns:
        (rows kept, number dropped).
    """
    kept = []
    for row in rows:
        answers = [k for k in keys if k != "prompt"]
        if max(chat_len(tok, row["prompt"] + row[k]) for k in answers) <= max_length:
            kept.append(row)
    return kept, len(rows) - len(kept)


def fitting_rows(data: list[dict], tok, kind: str, max_length: int, source: Path) -> tuple[list[dict], int]:
    """``filter_long`` for one training call: warns about dropped rows, refuses when none is left.

    Raises:
        ValueError: no row of ``source`` fits ``max_length``.
    """
    section = SECTION[kind]
    kept, dropped = filter_long(data, tok, ROW_KEYS[kind], max_length)
    if not kept:
        raise ValueError(
            f"{kind}: no training rows left in {source} ({len(data)} read, {dropped} longer than "
            f"{section}.max_length={max_length} tokens); raise {section}.max_length or shorten the answers"
        )
    if dropped:
        log.warning("%s: dropped %d of %d rows longer than %s.max_length=%d tokens", kind, dropped, len(data),
                    section, max_length)
    return kept, dropped


# --------------------------------------------------------------------------------------------------------------
# TRL config from the recipe


def section_cfg(recipe: Recipe, kind: str):
    """``recipe.train`` for DPO, ``recipe.eft`` for the EFT SFT."""
    return recipe.train if kind == "dpo" else recipe.eft


def train_seed(recipe: Recipe, iteration: int) -> int:
    """The training seed of ``iteration``: ``loop.seed + iteration``."""
    return recipe.loop.seed + iteration


def trl_args(recipe: Recipe, kind: str) -> dict[str, Any]:
    """The user's pass-through TRL settings for ``kind``: ``train.trl_args`` apply to the DPO step only.

    ``train`` is the DPO section, so its pass-through is DPOConfig's; the EFT SFT gets none (a DPO-only key
    such as ``loss_type`` would make SFTConfig refuse the run).
    """
    return dict(recipe.train.trl_args) if kind == "dpo" else {}


def uses_checkpoints(recipe: Recipe, kind: str) -> bool:
    """DPO saves a checkpoint every ``train.save_steps`` (null: none); EFT is short and restarts."""
    return kind == "dpo" and bool(recipe.train.save_steps)


def checkpoint_args(recipe: Recipe, kind: str) -> dict[str, Any]:
    """The save settings of the trainer config (see ``uses_checkpoints``); only the last checkpoint is kept."""
    if uses_checkpoints(recipe, kind):
        return {"save_strategy": "steps", "save_steps": recipe.train.save_steps, "save_total_limit": 1}
    return {"save_strategy": "no"}


def recipe_args(recipe: Recipe, kind: str, iteration: int, out: Path) -> dict[str, Any]:
    """The DPOConfig/SFTConfig fields the recipe decides, the same for every trainer backend."""
    from mrlite.log import libraries_quiet
    from mrlite.hub.track import trainer_args

    cfg = section_cfg(recipe, kind)
    seed = train_seed(recipe, iteration)
    args: dict[str, Any] = {
        "output_dir": str(Path(out) / WORK_DIR), "logging_steps": 1, "seed": seed,
        # report_to + run_name (<recipe>-iterNN-<dpo|eft>); `out` is iter_NN/<stage>.tmp, so the run is two up
        **trainer_args(recipe, Path(out).resolve().parent.parent, iteration, "dpo" if kind == "dpo" else "eft"),
        # A quiet console shows mrlite's own training bar; the trainer's per-step dicts go to log.txt.
        "disable_tqdm": libraries_quiet(),
        "data_seed": seed, "max_length": cfg.max_length, "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs, "max_steps": cfg.max_steps or -1,
        "per_device_train_batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
        **checkpoint_args(recipe, kind),
    }
    if kind == "dpo":
        args["beta"] = recipe.train.beta
    else:
        args["completion_only_loss"] = None  # auto: prompt/completion rows train on the completion only
    return args


def make_config(cls, kwargs: dict):
    """``cls(**kwargs)`` for a TRL config class, with one actionable line for an unknown or rejected field.

    Raises:
        ValueError: ``train.trl_args: DPOConfig has no field 'x'; did you mean 'y'?`` or the config's own refusal.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    for k in kwargs:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"train.trl_args: {cls.__name__} has no field '{k}'{hint}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"train.trl_args: {cls.__name__} rejected the settings: {' '.join(str(e).split())}") from None


def trainer_config(cls, recipe: Recipe, kind: str, iteration: int, out: Path, backend: dict[str, Any]):
    """The TRL config of one training call: recipe fields, then the backend's own, then ``trl_args`` (wins).

    Args:
        cls: ``trl.DPOConfig`` or ``trl.SFTConfig`` (as the backend imported it).
        backend: What the backend decides (precision, device, reference log-probs, checkpointing of activations).
    """
    return make_config(cls, {**recipe_args(recipe, kind, iteration, out), **backend, **trl_args(recipe, kind)})


# --------------------------------------------------------------------------------------------------------------
# The LM head: score the labelled positions only


def compact_lm_head() -> bool:
    """Make TRL's fused LM head project only the positions that carry a label on CPUs too; True when it changed.

    TRL's DPO and SFT trainers score tokens with a fused LM head (``add_fused_lm_head``). TRL 1.15 projected only
    the labelled (completion) positions; 1.16 does so only on Triton devices and projects every position, prompt
    and padding included, elsewhere (so that Neuron compiles one tile shape). On a CPU that is most of a step: a
    judge-pair batch of SmolLM2-135M has ~2,100 positions of which ~300 are labelled, and the head's 49k-wide
    projection, its softmax statistics and their backward took 14 of 35 s (torch profiler, 2 cores). Scoring only
    the labelled positions gives the same per-token values (rows of one matmul) and halves the DPO step.

    The switch is TRL's own (``trl.trainer.utils._use_triton`` decides "compact"); its kernels keep their own copy
    of the function, so CPUs still fold the tiles with torch ops. GPUs are unchanged. Process-wide: a training stage
    runs in its own process. ``tests/test_contracts.py`` checks the TRL source still reads the switch this way.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None or getattr(decide, "mrlite_compact", False):
        return False

    def compact(device) -> bool:
        return device.type == "cpu" or decide(device)

    compact.mrlite_compact = True  # type: ignore[attr-defined]
    compact.mrlite_original = decide  # type: ignore[attr-defined]
    trl_utils._use_triton = compact
    return True


# --------------------------------------------------------------------------------------------------------------
# Training: metrics, checkpoints and resume


@functools.cache
def _callback_class():
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Keeps one metrics row per logging step (the trainer's own log dicts, filtered)."""

        def __init__(self) -> None:
            self.rows: list[dict] = []
            self.t0 = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            fault_point("train:checkpoint")  # kill/resume tests die here, right after a checkpoint is written

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:  # the final train_runtime/train_loss summary row
                return
            row = {k: float(logs[k]) for k in METRIC_KEYS if k in logs}
            row.update(step=state.global_step, epoch=float(state.epoch or 0.0),
                       seconds=round(time.perf_counter() - self.t0, 2))
            self.rows.append(row)

    return MetricsCallback


@functools.cache
def _progress_class():
    from transformers import TrainerCallback

    from mrlite.progress import StageProgress

    class ProgressCallback(TrainerCallback):
        """mrlite's one-line bar for a training stage (steps done/total, ETA) and its progress record, which
        ``mrlite status`` reads from ``iter_NN/.parts/<stage>/`` (removed when the stage finishes)."""

        def __init__(self, parts: Path, label: str, stage: str, t: int) -> None:
            self.parts, self.label, self.stage, self.t = parts, label, stage, t
            self.bar: StageProgress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.parts.mkdir(parents=True, exist_ok=True)
            self.bar = StageProgress(self.parts, self.label, int(state.max_steps or 0), done=int(state.global_step),
                                     unit="steps", stage=self.stage, t=self.t)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.advance(1)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ProgressCallback


def progress_callback(out: Path, kind: str, iteration: int):
    """A ``TrainerCallback`` drawing mrlite's training bar; ``out`` is ``iter_NN/<stage>.tmp``."""
    stage = "train" if kind == "dpo" else "eft"
    parts = Path(out).resolve().parent / PARTS_DIR / stage
    return _progress_class()(parts, f"iter {iteration} {stage}" if kind == "dpo" else "eft", stage, iteration)


def metrics_callback():
    """A ``transformers.TrainerCallback`` whose ``rows`` collects one metrics row per logging step."""
    return _callback_class()()


def rows_from_history(history: list[dict]) -> list[dict]:
    """Metrics rows (as ``metrics_callback`` makes them, minus wall-clock) from ``trainer.state.log_history``."""
    rows = []
    for logs in history:
        if "loss" not in logs:
            continue
        row = {k: float(logs[k]) for k in METRIC_KEYS if k in logs}
        row.update(step=int(logs.get("step", 0)), epoch=float(logs.get("epoch") or 0.0))
        rows.append(row)
    return rows


def last_checkpoint(out: Path) -> str | None:
    """The newest trainer checkpoint under ``out/.trainer`` (a killed stage's), or None."""
    work = Path(out) / WORK_DIR
    if not work.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(work))


def run_trainer(trainer, collect, recipe: Recipe, kind: str, iteration: int, out: Path) -> list[dict]:
    """``trainer.train()``, resumed from the last checkpoint when this kind checkpoints; returns the metrics rows.

    Rows logged before a checkpoint come back from the restored trainer state (without wall-clock seconds).
    """
    last = last_checkpoint(out) if uses_checkpoints(recipe, kind) else None
    if last:
        log.info("%s iter %d: resuming training from %s", kind, iteration, Path(last).name)
    trainer.add_callback(progress_callback(out, kind, iteration))
    trainer.train(resume_from_checkpoint=last)
    return rows_from_history(trainer.state.log_history) if last else collect.rows


def check_finite(metrics: list[dict], kind: str) -> None:
    """Refuse a diverged run (last logged loss inf/nan) before anything is merged.

    Raises:
        ValueError: one line naming the learning rate to lower.
    """
    if metrics and not math.isfinite(metrics[-1]["loss"]):
        raise ValueError(f"{kind}: the loss diverged ({metrics[-1]['loss']}); lower {SECTION[kind]}.learning_rate")


# --------------------------------------------------------------------------------------------------------------
# Outputs: adapter, lineage, summary


def portable_adapter(adapter_dir: Path, base: str, out: Path) -> None:
    """Keep run files free of absolute paths, so two runs of one recipe in different directories are identical.

    The stage moves ``out/adapter`` to ``out/../adapter``; the base is recorded relative to that final place when it
    is a local directory (M_{t-1} of this run), peft's generated model card (which repeats it) is dropped, and
    ``target_modules`` is sorted.
    """
    (adapter_dir / "README.md").unlink(missing_ok=True)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if Path(base).is_dir():
        cfg["base_model_name_or_path"] = os.path.relpath(Path(base).resolve(), (Path(out).parent / "adapter").resolve())
    if isinstance(cfg.get("target_modules"), list):  # peft writes a set: its order changes between processes
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_lineage(base: str) -> dict:
    """The parent's lineage (base/lineage.json) with its adapter list, or a fresh one rooted at ``base``."""
    path = Path(base) / "lineage.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"base": data.get("base", base), "adapters": list(data.get("adapters", []))}
    return {"base": base, "adapters": []}


def write_lineage(model_dir: Path, base: str, iteration: int, kind: str, adapter_dir: Path, **extra: Any) -> dict:
    """``model_dir/lineage.json``: the parent's chain plus this adapter (``extra``: e.g. trainer, merge method)."""
    lineage = read_lineage(base)
    lineage["adapters"].append({"iteration": iteration, "kind": kind, **extra,
                                "adapter_sha256": sha256_file(Path(adapter_dir) / "adapter_model.safetensors")})
    atomic_write_text(Path(model_dir) / "lineage.json", json.dumps(lineage, indent=2) + "\n")
    return lineage


def summary(kind: str, iteration: int, *, rows: int, dropped: int, metrics: list[dict], train_seconds: float,
            seconds: float, load_in_4bit: bool, **extra: Any) -> dict:
    """The trainer's summary dict (stage markers keep it minus the wall-clock keys); ``extra``: e.g. trainer."""
    return {
        "kind": kind,
        "iteration": iteration,
        **extra,
        "rows": rows,
        "dropped": dropped,
        "steps": metrics[-1]["step"] if metrics else 0,
        "first_loss": metrics[0]["loss"] if metrics else None,
        "last_loss": metrics[-1]["loss"] if metrics else None,
        "last_margin": metrics[-1].get("rewards/margins") if metrics else None,
        "last_accuracy": metrics[-1].get("rewards/accuracies") if metrics else None,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(seconds, 1),
        "load_in_4bit": load_in_4bit,
    }


def log_summary(s: dict, label: str = "") -> None:
    """One info line: rows, dropped, steps, loss first -> last, seconds."""
    log.info("%s%s iter %d: %d rows (%d dropped), %d steps, loss %s -> %s, %.0f s", label, s["kind"], s["iteration"],
             s["rows"], s["dropped"], s["steps"], _fmt(s["first_loss"]), _fmt(s["last_loss"]), s["seconds"])


def existing_targets(model, wanted: list[str], section: str) -> list[str]:
    """The LoRA ``target_modules`` this model has (others are skipped with an info line).

    Raises:
        ValueError: none of ``wanted`` is a module of the model (lists some that are).
    """
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in wanted if t in names]
    if not found:
        raise ValueError(
            f"{section}.lora.target_modules {wanted} match no module of this model; "
            f"e.g. {', '.join(sorted(n for n in names if n.endswith('proj'))[:8]) or 'see model.named_modules()'}"
        )
    missing = [t for t in wanted if t not in names]
    if missing:
        log.info("LoRA: %s not in this model; training %s", ", ".join(missing), ", ".join(found))
    return found


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


__all__ = [
    "METRIC_KEYS", "ROW_KEYS", "SECTION", "WORK_DIR", "chat_len", "check_finite", "checkpoint_args",
    "compact_lm_head", "existing_targets", "filter_long", "fitting_rows", "last_checkpoint", "log_summary", "make_config",
    "metrics_callback", "portable_adapter", "read_lineage", "read_rows", "recipe_args", "rows_from_history",
    "run_trainer", "section_cfg", "summary", "train_seed", "trainer_config", "trl_args", "uses_checkpoints",
    "write_lineage",
]
