"""Unsloth trainer (CUDA only): a fresh LoRA on M_{t-1} (NF4 or 16-bit view), TRL DPO/SFT, 16-bit merge → M_t.

Per iteration (stack.md Part 2 §7.1): ``import unsloth`` first (it rewrites TRL's trainers at import, so it
must precede trl/transformers/peft), load the **local 16-bit directory** of M_{t-1} with
``FastLanguageModel.from_pretrained`` (NF4 on the fly when ``train.load_in_4bit``; a local directory also stops
unsloth from swapping in its pre-quantised Hub twin), add a LoRA, run TRL's ``DPOTrainer`` with
``ref_model=None`` (the reference is the same network with the adapter off) and precomputed reference
log-probs, save the adapter, then ``save_pretrained_merged(..., save_method="merged_16bit")``: the LoRA delta
is merged into the pristine 16-bit weights read shard by shard from that local directory, so nothing is
downloaded and nothing is ever merged into 4-bit (an NF4 requantisation can round a DPO delta away, §1.5).
The reference log-probs are precomputed in batches sized from the card's memory (``shapes.ref_batch_size``), and
only the trained adapter is saved (TRL adds a frozen "ref" copy next to it when given a PeftModel).
Writes ``out/adapter/``, ``out/model/`` (weights, tokenizer, generation_config.json, lineage.json).
Exercised by: ``mrlite run recipes/paper.yaml --only train --iter 1`` (needs ``pip install 'mrlite[gpu]'``).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from mrlite.backends import BackendError
from mrlite.backends import train_core as core
from mrlite.backends.base import TrainResult
from mrlite.recipe import Recipe

log = logging.getLogger(__name__)

MERGE_METHOD = "merged_16bit"
"""The only merge mrlite uses: W16 + delta. Never ``merged_4bit``/``merged_4bit_forced`` (stack.md §1.5, §5)."""
PATCHED_BY_UNSLOTH = ("trl", "transformers", "peft")
DISK_MARGIN_GIB = 1.0
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


def import_unsloth(modules: dict | None = None):
    """Import unsloth, refusing when trl/transformers/peft were imported first in this process.

    Unsloth patches TRL's DPO/SFT trainers and transformers' model classes *at import*
    (``PatchFastRL`` rewrites every ``trl.trainer.*_trainer``; stack.md Part 2 §0.5). Imported after them,
    the already-bound classes stay unpatched: training would run without unsloth's kernels and memory savings,
    and on a 24 GB card OOM, with no error naming the cause. So this fails loudly instead.

    Raises:
        BackendError: one line naming the modules that came first and the fix.
    """
    modules = sys.modules if modules is None else modules
    if "unsloth" in modules:
        return modules["unsloth"]
    early = [m for m in PATCHED_BY_UNSLOTH if m in modules]
    if early:
        raise BackendError(
            f"trainer 'unsloth' must be imported before {', '.join(early)}, which this process already imported "
            "(unsloth patches them at import); run training in its own process (loop.isolate: auto or always)"
        )
    try:
        import unsloth
    except ImportError:
        raise BackendError("trainer 'unsloth' needs unsloth: pip install 'mrlite[gpu]' (see `mrlite doctor`)") from None
    return unsloth


def local_base(base: str, revision: str | None = None) -> Path:
    """A local directory of ``base``: itself, or a snapshot of the Hub repo (weights, configs, tokenizer).

    unsloth's 16-bit merge reads the base weights from where the model was loaded; a local directory keeps it
    from downloading (and ``use_exact_model_name`` from swapping in a pre-quantised repo).
    """
    p = Path(base).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    log.info("downloading %s (weights, config, tokenizer) into the Hub cache", base)
    return Path(snapshot_download(base, revision=revision, allow_patterns=HUB_PATTERNS, ignore_patterns=["original/*"]))


def merged_size_gib(base_dir: Path) -> float:
    from mrlite.hardware.shapes import weights_gib_16bit

    return weights_gib_16bit(str(base_dir)) or 0.0


def write_lineage(model_dir: Path, base: str, iteration: int, kind: str, adapter: Path) -> dict:
    """``lineage.json`` in the shared trainers' format (parent chain + this adapter), plus how it was merged."""
    return core.write_lineage(model_dir, base, iteration, kind, adapter, trainer="unsloth", merge=MERGE_METHOD)


def load_kwargs(recipe: Recipe, cfg, base_dir: Path) -> dict[str, Any]:
    """``FastLanguageModel.from_pretrained`` keywords: the local 16-bit directory, NF4 or 16-bit, exact name."""
    four_bit = recipe.train.load_in_4bit
    kw: dict[str, Any] = {
        "model_name": str(base_dir),
        "max_seq_length": cfg.max_length,
        "dtype": None,  # bf16 where the GPU has it, else fp16 (T4)
        "load_in_4bit": four_bit,
        "load_in_16bit": not four_bit,
        "use_exact_model_name": True,
    }
    if recipe.model.trust_remote_code:
        kw["trust_remote_code"] = True
    return kw


def lora_kwargs(cfg, seed: int) -> dict[str, Any]:
    """``FastLanguageModel.get_peft_model`` keywords (besides the model) for ``cfg.lora``."""
    lora = cfg.lora
    return {"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
            "target_modules": list(lora.target_modules), "bias": "none", "use_gradient_checkpointing": "unsloth",
            "random_state": seed}


class UnslothTrainer:
    """Trainer backend on unsloth + TRL (one CUDA GPU).

    Row reading and validation, the max_length filter, the TRL config from the recipe (``trl_args`` included),
    checkpoints and resume, the metrics rows, the loss check and the lineage format are the shared training core's
    (``mrlite.backends.train_core``); only loading, LoRA and the merge differ.

    Args:
        recipe: Uses ``train`` (DPO) or ``eft`` (iteration 0: SFT), ``train.load_in_4bit``, ``model``, ``loop.seed``.
        iteration: 0 = EFT SFT, t >= 1 = the DPO step of iteration t. The training seed is ``loop.seed + t``
            (as the TRL trainer's).
    """

    def __init__(self, recipe: Recipe, iteration: int):
        self.unsloth = import_unsloth()
        self.recipe = recipe
        self.iteration = iteration
        self.cfg = recipe.eft if iteration == 0 else recipe.train
        self.seed = core.train_seed(recipe, iteration)

    def train_dpo(self, rows: Path, base: str, out: Path) -> TrainResult:
        """DPO on conversational preference rows; returns rows used, rows dropped (too long), step metrics.

        Raises:
            PreflightError: not enough free disk for the merged model (checked before loading anything).
            ValueError: no row fits ``train.max_length``, or ``train.trl_args`` names a field DPOConfig lacks.
        """
        return self._train(rows, base, out, "dpo")

    def train_sft(self, rows: Path, base: str, out: Path) -> TrainResult:
        """SFT on prompt/completion rows (loss on the completion only: the EFT judgments)."""
        return self._train(rows, base, out, "sft")

    # ----------------------------------------------------------------------------------------------------------

    def _train(self, rows_path: Path, base: str, out: Path, kind: str) -> TrainResult:
        from mrlite.hardware.gpu import check_disk, free_disk_gib

        t0 = time.perf_counter()
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        data = core.read_rows(rows_path, core.ROW_KEYS[kind])
        base_dir = local_base(base, self.recipe.model.revision)
        need = merged_size_gib(base_dir) + DISK_MARGIN_GIB
        check_disk(need, free_disk_gib(out), out, f"the merged model of iteration {self.iteration}")
        model, tokenizer = self._load(base_dir)
        kept, dropped = core.fitting_rows(data, tokenizer, kind, self.cfg.max_length, rows_path)
        model = self._lora(model)
        collect = core.metrics_callback()
        trainer = self._trainer(model, tokenizer, kept, out, kind, collect, base_dir)
        metrics = core.run_trainer(trainer, collect, self.recipe, kind, self.iteration, out)
        train_seconds = time.perf_counter() - t0
        core.check_finite(metrics, kind)
        self._save(model, tokenizer, base, base_dir, out, kind)
        summary = core.summary(kind, self.iteration, trainer="unsloth", rows=len(kept), dropped=dropped,
                               metrics=metrics, train_seconds=train_seconds, seconds=time.perf_counter() - t0,
                               load_in_4bit=self.recipe.train.load_in_4bit)
        core.log_summary(summary, "unsloth ")
        return TrainResult(n_rows=len(kept), n_dropped=dropped, metrics=metrics, summary=summary)

    def _load(self, base_dir: Path):
        from unsloth import FastLanguageModel

        from mrlite.models import check_chat_template

        model, tokenizer = FastLanguageModel.from_pretrained(**load_kwargs(self.recipe, self.cfg, base_dir))
        check_chat_template(tokenizer, self.recipe.model.base)
        if tokenizer.pad_token is None:  # Llama-3 has none
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def _lora(self, model):
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(model, **lora_kwargs(self.cfg, self.seed))

    def _backend_args(self, kind: str, base_dir: Path | None = None) -> dict[str, Any]:
        """What unsloth adds to the recipe's config fields: the GPU's 16-bit type, precomputed reference log-probs.

        The reference pass is batched as the card allows (``precompute_ref_batch_size`` from the model's shape and
        the card's memory, ``mrlite.hardware.shapes.ref_batch_size``); TRL would otherwise use the train batch size.
        """
        from unsloth import is_bfloat16_supported

        bf16 = bool(is_bfloat16_supported())
        args: dict[str, Any] = {"bf16": bf16, "fp16": not bf16}
        if kind == "dpo":
            args["precompute_ref_log_probs"] = True
            ref = self._ref_batch_size(base_dir) if base_dir is not None else None
            if ref is not None:
                args["precompute_ref_batch_size"] = ref
        return args

    def _ref_batch_size(self, base_dir: Path) -> int | None:
        from mrlite.hardware.gpu import gpus
        from mrlite.hardware.shapes import model_shape, ref_batch_size

        devs, shape = gpus(), model_shape(str(base_dir))
        if not devs or shape is None:
            return None
        c = self.recipe.train
        return ref_batch_size(shape, devs[0].total_gib, four_bit=c.load_in_4bit, max_length=c.max_length,
                              train_batch=c.batch_size, lora_params=shape.lora_params(c.lora.r, c.lora.target_modules))

    def _trainer(self, model, tokenizer, rows: list[dict], out: Path, kind: str, collect, base_dir: Path | None = None):
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

        config_cls = DPOConfig if kind == "dpo" else SFTConfig
        args = core.trainer_config(config_cls, self.recipe, kind, self.iteration, out,
                                   self._backend_args(kind, base_dir))
        if kind == "dpo":
            return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, callbacks=[collect])
        return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          callbacks=[collect])

    def _save(self, model, tokenizer, base: str, base_dir: Path, out: Path, kind: str) -> None:
        adapter, merged = out / "adapter", out / "model"
        model.save_pretrained(str(adapter), selected_adapters=[core.TRAINED_ADAPTER])  # not TRL's frozen "ref" copy
        model.save_pretrained_merged(str(merged), tokenizer, save_method=MERGE_METHOD)
        core.portable_adapter(adapter, str(base_dir), out)  # no absolute paths in run files (after the merge read it)
        gen = base_dir / "generation_config.json"
        if gen.is_file() and not (merged / "generation_config.json").exists():
            shutil.copy2(gen, merged / "generation_config.json")  # the generator's stop ids need it
        write_lineage(merged, base, self.iteration, kind, adapter)
        shutil.rmtree(out / core.WORK_DIR, ignore_errors=True)


__all__ = ["MERGE_METHOD", "UnslothTrainer", "import_unsloth", "load_kwargs", "local_base", "lora_kwargs",
           "write_lineage"]
