"""TRL trainer: DPO (iterations >= 1) or EFT SFT (iteration 0) with a fresh LoRA, then merge into a full model.

Each call trains a new peft LoRA on ``base`` (the previous iteration's merged model), so DPO's reference model is
``base`` itself (TRL computes it with the adapter disabled; no second copy is loaded), which is the paper's
M_t -> M_{t+1} step (Meta-Rewarding, arXiv 2407.19594 §2.3; Self-Rewarding, arXiv 2401.10020 §2.3). The adapter is
then merged into an unquantised copy of ``base`` and saved with a ``lineage.json``.
Exercised by: ``mrlite run recipes/tiny.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import math
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from mrlite.backends.base import TrainResult
from mrlite.backends.hf import native_bf16
from mrlite.models import check_chat_template
from mrlite.recipe import LoraCfg, Recipe
from mrlite.rundir import fault_point, sha256_file

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
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Collect(TrainerCallback):
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


def _portable_adapter(adapter_dir: Path, base: str, out: Path) -> None:
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


def _rows_from_history(history: list[dict]) -> list[dict]:
    """Metrics rows (as _Collect makes them, minus wall-clock) rebuilt from ``trainer.state.log_history``."""
    rows = []
    for logs in history:
        if "loss" not in logs:
            continue
        row = {k: float(logs[k]) for k in METRIC_KEYS if k in logs}
        row.update(step=int(logs.get("step", 0)), epoch=float(logs.get("epoch") or 0.0))
        rows.append(row)
    return rows


class TRLTrainer:
    """Trainer backend on TRL + peft (CPU or one GPU).

    Args:
        recipe: ``train`` (DPO), ``eft`` (SFT), ``model.dtype/trust_remote_code/revision`` and ``loop.seed``.
        iteration: 0 trains EFT SFT with ``recipe.eft``; k >= 1 trains DPO with ``recipe.train``. The training
            seed is ``loop.seed + iteration``.
    """

    def __init__(self, recipe: Recipe, iteration: int):
        self.recipe = recipe
        self.iteration = iteration
        self.cuda = torch.cuda.is_available()

    # ----------------------------------------------------------------------------------------------------------
    # Protocol

    def train_dpo(self, rows: Path, base: str, out: Path) -> TrainResult:
        """DPO with a fresh LoRA on ``base``; writes ``out/adapter/`` and the merged ``out/model/``.

        Args:
            rows: JSONL of TRL conversational preference rows ``{"prompt", "chosen", "rejected"}`` (message
                lists); any other keys (provenance) are dropped.
            base: The model to train: the previous iteration's merged directory, a resolved alias path or a Hub id.
            out: Output directory (created).

        Returns:
            TrainResult with the rows used, the rows dropped as longer than ``train.max_length``, one metrics row
            per logging step and a summary.

        Raises:
            ValueError: no row fits ``train.max_length``, or ``train.trl_args`` names a field DPOConfig lacks.
        """
        cfg = self.recipe.train
        return self._train(
            kind="dpo", rows=rows, base=base, out=out, keys=("prompt", "chosen", "rejected"),
            lora=cfg.lora, max_length=cfg.max_length,
            args=dict(
                beta=cfg.beta, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
                max_steps=cfg.max_steps or -1, per_device_train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=cfg.grad_accum, precompute_ref_log_probs=False,
            ),
        )

    def train_sft(self, rows: Path, base: str, out: Path) -> TrainResult:
        """EFT SFT with a fresh LoRA on ``base`` (loss on the completion only); same outputs as ``train_dpo``.

        Args:
            rows: JSONL of ``{"prompt": [...], "completion": [...]}`` message lists.
            base: The seed model (resolved path or Hub id).
            out: Output directory (created).

        Returns:
            TrainResult as for ``train_dpo`` (``eft.max_length`` bounds the rows).

        Raises:
            ValueError: no row fits ``eft.max_length``.
        """
        cfg = self.recipe.eft
        return self._train(
            kind="sft", rows=rows, base=base, out=out, keys=("prompt", "completion"),
            lora=cfg.lora, max_length=cfg.max_length,
            args=dict(
                learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
                per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
                completion_only_loss=None,  # auto: prompt/completion rows train on the completion only
            ),
        )

    # ----------------------------------------------------------------------------------------------------------
    # Internals

    def _train(self, *, kind: str, rows: Path, base: str, out: Path, keys: tuple[str, ...], lora: LoraCfg,
               max_length: int, args: dict) -> TrainResult:
        t0 = time.perf_counter()
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        load_kw = self._load_kwargs(base)
        tok = AutoTokenizer.from_pretrained(base, **load_kw)
        check_chat_template(tok, self.recipe.model.base)
        data = _read_rows(rows, keys)
        kept, dropped = _filter_long(data, tok, keys, max_length)
        section = "train" if kind == "dpo" else "eft"
        if not kept:
            raise ValueError(
                f"{kind}: no training rows left in {rows} ({len(data)} read, {dropped} longer than "
                f"{section}.max_length={max_length} tokens); raise {section}.max_length or shorten the answers"
            )
        if dropped:
            log.warning("%s: dropped %d of %d rows longer than %s.max_length=%d tokens", kind, dropped, len(data),
                        section, max_length)

        seed = self.recipe.loop.seed + self.iteration
        quantized = self.recipe.train.load_in_4bit
        work = out / ".trainer"
        common = dict(
            output_dir=str(work), logging_steps=1, report_to="none", seed=seed,
            data_seed=seed, max_length=max_length, use_cpu=not self.cuda, bf16=self._bf16(quantized),
            dataloader_num_workers=0, remove_unused_columns=True,
        )
        # Checkpoints let a killed DPO stage resume (the train stage keeps `out` across restarts when its inputs
        # and settings are unchanged); EFT is short and restarts.
        save_steps = self.recipe.train.save_steps if kind == "dpo" else None
        common.update(save_strategy="steps", save_steps=save_steps, save_total_limit=1) if save_steps else \
            common.update(save_strategy="no")
        config_cls, trainer_cls = (DPOConfig, DPOTrainer) if kind == "dpo" else (SFTConfig, SFTTrainer)
        # Checkpointing saves GPU memory; on CPU it only costs time (stack.md §4). transformers 5.23 renamed it.
        fields = {f.name for f in dataclasses.fields(config_cls)}
        common["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = (
            self.cuda
        )
        # train.trl_args belong to the DPO section; EFT has no pass-through (a DPO-only key would break SFTConfig).
        extra = self.recipe.train.trl_args if kind == "dpo" else {}
        config = _make_config(config_cls, {**common, **args, **extra})
        set_seed(seed)
        model = self._load_model(base, quantized)
        peft_config = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=_existing_targets(model, lora.target_modules, section), task_type="CAUSAL_LM",
        )
        collect = _Collect()
        trainer = trainer_cls(
            model=model, args=config, train_dataset=Dataset.from_list(kept), processing_class=tok,
            peft_config=peft_config, callbacks=[collect],
        )
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(work)) if save_steps and work.is_dir() else None
        if last:
            log.info("%s iter %d: resuming training from %s", kind, self.iteration, Path(last).name)
        trainer.train(resume_from_checkpoint=last)
        if last:  # rows logged before the checkpoint come back from the restored trainer state
            collect.rows = _rows_from_history(trainer.state.log_history)
        train_seconds = time.perf_counter() - t0

        adapter_dir = out / "adapter"
        trainer.model.save_pretrained(adapter_dir)
        _portable_adapter(adapter_dir, base, out)
        del trainer, model
        shutil.rmtree(work, ignore_errors=True)
        self._merge(base, adapter_dir, out / "model", tok, kind)

        metrics = collect.rows
        summary = {
            "kind": kind,
            "iteration": self.iteration,
            "rows": len(kept),
            "dropped": dropped,
            "steps": metrics[-1]["step"] if metrics else 0,
            "first_loss": metrics[0]["loss"] if metrics else None,
            "last_loss": metrics[-1]["loss"] if metrics else None,
            "last_margin": metrics[-1].get("rewards/margins") if metrics else None,
            "last_accuracy": metrics[-1].get("rewards/accuracies") if metrics else None,
            "train_seconds": round(train_seconds, 1),
            "seconds": round(time.perf_counter() - t0, 1),
            "load_in_4bit": quantized,
        }
        if summary["first_loss"] is not None and not math.isfinite(summary["last_loss"]):
            raise ValueError(f"{kind}: the loss diverged ({summary['last_loss']}); lower {section}.learning_rate")
        log.info("%s iter %d: %d rows (%d dropped), %d steps, loss %s -> %s, %.0f s", kind, self.iteration,
                 len(kept), dropped, summary["steps"], _fmt(summary["first_loss"]), _fmt(summary["last_loss"]),
                 summary["seconds"])
        return TrainResult(n_rows=len(kept), n_dropped=dropped, metrics=metrics, summary=summary)

    def _load_kwargs(self, base: str) -> dict:
        kw: dict = {"trust_remote_code": self.recipe.model.trust_remote_code}
        if self.recipe.model.revision and not Path(base).is_dir():
            kw["revision"] = self.recipe.model.revision
        return kw

    def _train_dtype(self) -> torch.dtype:
        """Weights dtype while training: fp32 on CPU (bf16 autocast does the speed-up), bf16 on a GPU."""
        name = self.recipe.model.dtype
        if name != "auto":
            return _DTYPES[name]
        if self.cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    def _bf16(self, quantized: bool) -> bool:
        # CPU: bf16 autocast is ~2x faster than fp32 for DPO on an AVX512-BF16 CPU (stack.md §4) but emulated and
        # slower on AVX2-only ones. With 4-bit weights on CPU keep fp32 compute: bf16 compute hits an unregistered
        # bitsandbytes autograd kernel (stack.md §5).
        device = torch.device("cuda" if self.cuda else "cpu")
        return native_bf16(device) and (self.cuda or not quantized)

    def _load_model(self, base: str, quantized: bool):
        kw = self._load_kwargs(base)
        if quantized:
            from transformers import BitsAndBytesConfig

            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise ValueError("train.load_in_4bit needs bitsandbytes: pip install bitsandbytes") from None
            compute = torch.bfloat16 if self.cuda else torch.float32
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                bnb_4bit_use_double_quant=True,
            )
            kw["device_map"] = {"": 0} if self.cuda else "cpu"
            kw["dtype"] = compute
        else:
            kw["dtype"] = self._train_dtype()
        return AutoModelForCausalLM.from_pretrained(base, **kw)

    def _merge(self, base: str, adapter_dir: Path, model_dir: Path, tok, kind: str) -> None:
        """Merge the adapter into an unquantised fp32 reload of ``base``; save it in base's own dtype.

        Never merge into 4-bit weights (rounding, stack.md §4 "QLoRA merge"); fp32 arithmetic keeps the small
        LoRA delta, and saving in the dtype ``base`` was stored in keeps a bf16 Hub model's files bf16.
        """
        kw = self._load_kwargs(base)
        stored = getattr(AutoConfig.from_pretrained(base, **kw), "dtype", None)
        full = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, **kw)
        merged = PeftModel.from_pretrained(full, str(adapter_dir)).merge_and_unload()
        if isinstance(stored, str):
            stored = _DTYPES.get(stored)
        if isinstance(stored, torch.dtype) and stored != torch.float32:
            merged = merged.to(stored)
        model_dir.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        lineage = _read_lineage(base)
        lineage["adapters"].append({
            "iteration": self.iteration,
            "kind": kind,
            "adapter_sha256": sha256_file(adapter_dir / "adapter_model.safetensors"),
        })
        (model_dir / "lineage.json").write_text(json.dumps(lineage, indent=2) + "\n", encoding="utf-8")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _read_rows(path: Path, keys: tuple[str, ...]) -> list[dict]:
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


def _chat_len(tok, messages: list[dict]) -> int:
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def _filter_long(rows: list[dict], tok, keys: tuple[str, ...], max_length: int) -> tuple[list[dict], int]:
    """Drop rows whose templated prompt + answer exceeds ``max_length`` tokens (as TRL tokenises them).

    TRL would otherwise truncate them silently (losing the end of the answer, and with it the EOS that DPO's
    length signal depends on) or drop them without telling.
    """
    kept = []
    for row in rows:
        answers = [k for k in keys if k != "prompt"]
        if max(_chat_len(tok, row["prompt"] + row[k]) for k in answers) <= max_length:
            kept.append(row)
    return kept, len(rows) - len(kept)


def _existing_targets(model, wanted: list[str], section: str) -> list[str]:
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


def _make_config(cls, kwargs: dict):
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


def _read_lineage(base: str) -> dict:
    """The parent's lineage (base/lineage.json) with its adapter list, or a fresh one rooted at ``base``."""
    path = Path(base) / "lineage.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"base": data.get("base", base), "adapters": list(data.get("adapters", []))}
    return {"base": base, "adapters": []}
