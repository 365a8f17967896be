"""The arithmetic behind ``mrlite plan``: per-stage token counts, peak GPU and host memory, time and disk of a recipe.

Everything here is arithmetic on the recipe, the model's shape and a throughput table (no torch, no GPU).
Memory follows stack.md Part 2 §4 (Llama-3-8B: 14.96 GiB bf16, ≈8.5 GiB online FP8, ≈5.3 GiB NF4, 128 KiB of
bf16 KV cache per token, DPO logits 2 × L × vocab). Throughputs are **estimates** for an 8B model per GPU class
(published figures and FLOP arithmetic, see ``GPU_CLASSES``), scaled by parameter count for other models;
replace them with figures measured on your machine via ``--throughput FILE.json`` (keys as in ``Rates``).
Exercised by: ``mrlite plan recipes/paper.yaml --gpu-mem 24``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from mrlite.recipe import Recipe
from mrlite.hardware.shapes import (
    GIB, KNOWN_SHAPES, NF4_BYTES, TRAIN_OVERHEAD_GIB, ModelShape, model_shape, weights_gib_16bit,
)

CHARS_PER_TOKEN = 4.0
"""English text with Llama-3/Qwen BPE tokenizers: about 4 characters per token."""
CHAT_OVERHEAD_TOKENS = 12
REF_PARAMS = 8.03e9
"""Throughput figures in GPU_CLASSES are for Llama-3-8B (8.03B parameters)."""
MEAN_NEW_TOKENS = {"actor": 480, "judge": 130, "meta_judge": 170}
"""Assumed mean generated tokens (capped by max_new_tokens): Llama-3-8B-Instruct answers run ~1.9k characters in
the paper's iteration 1; judgments are asked for <= 100 words + the score line."""
PAIR_YIELD = {"actor": 0.85, "judge": 0.6}
"""Assumed share of prompts that give an actor pair / a judge pair (ties and unparsed rows give none)."""
GEN_OVERHEAD_GIB = 2.0
"""vLLM runtime besides weights and KV cache: CUDA context, activations, CUDA graphs, sampler."""


# --------------------------------------------------------------------------------------------------------------
# GPU classes and throughput


@dataclass(frozen=True)
class Rates:
    """Throughput for the recipe's model (tokens/s aggregate at high concurrency) and fixed costs (seconds)."""

    decode_tok_s: float
    prefill_tok_s: float
    train_tok_s: float
    engine_start_s: float = 120.0
    train_load_s: float = 90.0
    merge_gib_s: float = 0.4

    def scaled(self, params: float) -> Rates:
        f = min(REF_PARAMS / max(params, 1.0), 8.0)  # memory/compute both scale ~1/params; small models saturate
        return replace(self, decode_tok_s=self.decode_tok_s * f, prefill_tok_s=self.prefill_tok_s * f,
                       train_tok_s=self.train_tok_s * f)


@dataclass(frozen=True)
class GPUClass:
    name: str
    total_gib: float
    capability: tuple[int, int]
    rates: Rates  # for an 8B model: decode from published vLLM figures, prefill/train from FLOPs at 35-50% MFU

    @property
    def bf16(self) -> bool:
        return self.capability >= (8, 0)


GPU_CLASSES: dict[str, GPUClass] = {
    # H100: ~12.5k output tok/s for Llama-3.1-8B bf16 (stack.md Part 2 §2.6); A100 ≈ H100 / 2 (Lambda).
    "h100": GPUClass("H100 80GB", 79.2, (9, 0), Rates(12500, 30000, 7000)),
    "h200": GPUClass("H200 141GB", 139.8, (9, 0), Rates(14000, 30000, 7000)),
    "a100-80": GPUClass("A100 80GB", 79.2, (8, 0), Rates(6000, 9500, 2200)),
    "a100-40": GPUClass("A100 40GB", 39.4, (8, 0), Rates(5000, 9500, 2200)),
    "l40s": GPUClass("L40S 48GB", 44.4, (8, 9), Rates(3500, 11000, 2500)),
    # RTX 4090, FP8: ~1.1k tok/s at batch 32 (vendor blog, stack.md §2.6); more at larger batches.
    "rtx4090": GPUClass("RTX 4090 24GB", 23.6, (8, 9), Rates(1500, 6000, 1100)),
    "rtx3090": GPUClass("RTX 3090 24GB", 23.6, (8, 6), Rates(1000, 2500, 500)),
    "a10": GPUClass("A10 24GB", 22.1, (8, 6), Rates(800, 4000, 850)),
    "l4": GPUClass("L4 24GB", 22.5, (8, 9), Rates(600, 3800, 800)),
    "t4": GPUClass("T4 16GB", 14.7, (7, 5), Rates(250, 1500, 350)),
}


def gpu_class_for(name: str | None, total_gib: float | None) -> str:
    """Table key for a detected GPU name, else the closest class by memory."""
    n = (name or "").lower().replace(" ", "")
    for key, needles in (("h200", ("h200",)), ("h100", ("h100", "h800")), ("a100-40", ("a100-sxm4-40", "a100-pcie-40")),
                         ("a100-80", ("a100",)), ("l40s", ("l40",)), ("rtx4090", ("4090",)),
                         ("rtx3090", ("3090",)), ("a10", ("a10",)), ("l4", ("l4",)), ("t4", ("t4",))):
        if any(s in n for s in needles):
            return key
    mem = total_gib or 24.0
    if mem >= 100:
        return "h200"
    if mem >= 70:
        return "a100-80"
    if mem >= 44:
        return "l40s"
    if mem >= 30:
        return "a100-40"
    return "rtx4090" if mem >= 20 else "t4"


# --------------------------------------------------------------------------------------------------------------
# Estimates


@dataclass
class StageEstimate:
    t: int
    stage: str
    requests: int = 0
    sequences: int = 0
    prompt_tokens: float = 0.0
    prefill_tokens: float = 0.0
    new_tokens: float = 0.0
    peak_gib: float | None = None
    host_gib: float | None = None  # host RAM the stage's process needs
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # warnings: why it does not fit, or will be slow
    fits: bool = True
    detail: str = ""


def gen_weights_gib(shape: ModelShape, quantization: str | None) -> float:
    if quantization and quantization.startswith("fp8"):
        return (shape.linear_params * 1 + shape.embed_params * 2) / GIB
    if quantization:  # other methods (awq, bnb...): assume ~4 bit
        return (shape.linear_params * NF4_BYTES + shape.embed_params * 2) / GIB
    return shape.params * 2 / GIB


def generation_memory(shape: ModelShape, card_gib: float, util: float, quantization: str | None,
                      kv_dtype: str, max_model_len: int) -> tuple[float, float, float]:
    """(peak GiB, weights GiB, KV-cache tokens) for a vLLM engine; vLLM reserves ``util`` of the card."""
    weights = gen_weights_gib(shape, quantization)
    kv_bytes = shape.kv_bytes_per_token(1 if kv_dtype.startswith("fp8") else 2)
    kv_gib = util * card_gib - weights - GEN_OVERHEAD_GIB
    return util * card_gib, weights, max(kv_gib, 0.0) * GIB / kv_bytes


def meta_concurrency(shape: ModelShape, card_gib: float, util: float, quantization: str | None, kv_dtype: str,
                     max_model_len: int, seq_tokens: float) -> str:
    """How many meta-judge sequences (prompt + judgment) the KV cache holds at once, and with an fp8 KV cache.

    Without prefix sharing (an upper bound on memory per sequence); vLLM runs at most this many at full speed,
    the rest wait. Judge prompts are the longest of an iteration, so this is where a 24 GB card is KV-bound.
    """
    _, _, kv = generation_memory(shape, card_gib, util, quantization, kv_dtype, max_model_len)
    text = f"KV cache holds ~{int(kv // max(seq_tokens, 1))} meta-judge seqs at once"
    if not kv_dtype.startswith("fp8"):
        _, _, kv8 = generation_memory(shape, card_gib, util, quantization, "fp8", max_model_len)
        text += f" (kv_cache_dtype fp8: ~{int(kv8 // max(seq_tokens, 1))})"
    return text


def train_memory(shape: ModelShape, four_bit: bool, r: int, targets: list[str], batch: int, length: int,
                 sequences_per_row: int) -> float:
    """Peak GiB of one LoRA step with gradient checkpointing: weights + LoRA/Adam + activations + logits."""
    weights = (shape.linear_params * NF4_BYTES + shape.embed_params * 2) if four_bit else shape.params * 2
    lora = shape.lora_params(r, targets) * 16  # bf16 weight + fp32 master/grad + Adam m, v
    seqs = batch * sequences_per_row
    checkpoints = shape.layers * seqs * length * shape.hidden * 2
    one_layer = seqs * length * (3 * shape.intermediate + 6 * shape.hidden) * 2
    logits = seqs * length * shape.vocab * 6  # bf16 logits + fp32 log-softmax
    return (weights + lora + checkpoints + one_layer + logits) / GIB + TRAIN_OVERHEAD_GIB


GEN_STAGES = ("sample", "judge", "meta_judge")
HOST_RUNTIME_GIB = 3.0
"""Python, torch/CUDA libraries, tokenizer and data of one stage process, besides model weights."""
SHARD_GIB = 4.66
"""Largest safetensors shard assumed for a Hub model (transformers' default max_shard_size, 5 GB)."""


def largest_shard_gib(model: str) -> float:
    """The largest safetensors file of a local model directory, else the Hub default shard size."""
    files = list(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []
    return max(f.stat().st_size for f in files) / GIB if files else SHARD_GIB


def host_memory(recipe: Recipe, shape: ModelShape, stage: str, shard_gib: float = SHARD_GIB) -> float:
    """Host RAM (GiB) of one stage's process on a GPU machine.

    - vLLM generation: the runtime only (weights stream to the GPU); HF generation: the 16-bit weights are loaded
      on the host before moving to the GPU.
    - Training: unsloth and 4-bit loads go straight to the GPU, a 16-bit TRL load passes through the host;
      unsloth's offloaded gradient checkpointing keeps one activation per layer in pinned host memory.
    - The merge that ends training streams shard by shard (``mrlite.backends.merge``): one shard, the adapter, a margin.
    """
    weights16 = shape.params * 2 / GIB
    if stage in GEN_STAGES:
        return HOST_RUNTIME_GIB + (weights16 if recipe.backends.generator == "hf" else 0.0)
    if stage not in ("train", "eft"):
        return 0.0
    cfg = recipe.train if stage == "train" else recipe.eft
    unsloth = recipe.backends.trainer == "unsloth"
    load = 0.0 if (unsloth or recipe.train.load_in_4bit) else weights16
    seqs = cfg.batch_size * (2 if stage == "train" else 1)
    offload = shape.layers * seqs * cfg.max_length * shape.hidden * 2 / GIB if unsloth else 0.0
    adapter = shape.lora_params(cfg.lora.r, cfg.lora.target_modules) * 4 / GIB
    from mrlite.backends.merge import host_ram_gib

    return HOST_RUNTIME_GIB + max(load + offload, host_ram_gib(shard_gib, adapter))


def machine_ram_gib() -> float | None:
    """Physical memory of this machine (None where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        return None


def _mean_new(role: str, max_new: int) -> float:
    return float(min(MEAN_NEW_TOKENS[role], max_new))


def estimate(recipe: Recipe, shape: ModelShape, card: GPUClass, rates: Rates, *, prompt_tokens: float = 100.0,
             judge_rubric_tokens: float = 430.0, meta_rubric_tokens: float = 440.0,
             quantization: str | None = None) -> list[StageEstimate]:
    """Per (iteration, stage) estimates for the whole run.

    Args:
        recipe: The recipe.
        shape: The model's shape.
        card: The GPU (memory, bf16).
        rates: Throughput for this model on this card.
        prompt_tokens: Mean prompt length in tokens.
        judge_rubric_tokens: Tokens of the judge template without prompt and response.
        meta_rubric_tokens: Tokens of the meta-judge template without its four fields.
        quantization: vLLM weight quantization in effect (see ``backends.vllm.default_quantization``).

    Returns:
        One StageEstimate per step, in run order.
    """
    r, v = recipe, recipe.backends.vllm
    p = r.data.prompts_per_iteration
    k, n = r.actor.n, r.judge.n
    la, lj = _mean_new("actor", r.actor.max_new_tokens), _mean_new("judge", r.judge.max_new_tokens)
    lm = _mean_new("meta_judge", r.meta_judge.max_new_tokens)
    lp = prompt_tokens + CHAT_OVERHEAD_TOKENS
    hf = r.backends.generator == "hf"
    decode = rates.decode_tok_s / (10 if hf else 1)  # HF generate: ~10x below vLLM (issue goal)
    peak, weights, kv_tokens = generation_memory(shape, card.total_gib, v.gpu_memory_utilization, quantization,
                                                 v.kv_cache_dtype, r.model.max_model_len)
    if hf:  # no reservation: weights + one batch of KV cache
        kv_tokens = r.backends.hf.batch_size * r.model.max_model_len
        peak = weights + GEN_OVERHEAD_GIB + kv_tokens * shape.kv_bytes_per_token() / GIB
        kv_tokens = math.inf if peak <= card.total_gib else 0.0
    gen_fits = kv_tokens >= r.model.max_model_len
    gen_notes = [] if gen_fits else [
        f"vLLM: {weights:.1f} GiB weights + {GEN_OVERHEAD_GIB:.0f} GiB runtime leave no KV cache for one "
        f"{r.model.max_model_len}-token sequence in {v.gpu_memory_utilization:.2f} x {card.total_gib:.0f} GiB"]
    if gen_fits and not hf and kv_tokens < 16 * r.model.max_model_len:
        gen_notes.append(f"KV cache holds only ~{kv_tokens / 1000:.0f}k tokens: low concurrency, slow generation")
    out: list[StageEstimate] = []
    four_bit = r.train.load_in_4bit

    def train_est(t: int, stage: str, rows: float, row_tokens: float, seqs_per_row: int, cfg) -> StageEstimate:
        mem = train_memory(shape, four_bit, cfg.lora.r, cfg.lora.target_modules, cfg.batch_size, cfg.max_length,
                           seqs_per_row)
        tokens = rows * row_tokens
        epochs = cfg.epochs if cfg.max_steps is None else cfg.max_steps * cfg.batch_size * cfg.grad_accum / max(rows, 1)
        rate = rates.train_tok_s * (0.75 if four_bit else 1.0)
        secs = rates.train_load_s + tokens * epochs / rate + (tokens / (3 * rate) if stage == "train" else 0)
        merged = shape.params * 2 / GIB
        secs += merged / rates.merge_gib_s
        e = StageEstimate(t, stage, requests=int(rows), sequences=int(rows * seqs_per_row), prompt_tokens=tokens,
                          peak_gib=mem, seconds=secs, fits=mem <= 0.95 * card.total_gib)
        if not e.fits:
            e.notes.append(f"{stage}: ~{mem:.1f} GiB > {card.total_gib:.0f} GiB; lower train.max_length/batch_size, "
                           "or set train.load_in_4bit: true")
        return e

    if r.eft.enabled:
        rows = 85 if r.eft.data == "builtin" else 1630  # the shipped set; the paper's EFT set has 1,630 rows
        out.append(train_est(0, "eft", rows, judge_rubric_tokens + lp + la + lj, 1, r.eft))
    for t in range(1, r.loop.iterations + 1):
        s = StageEstimate(t, "sample", requests=p, sequences=p * k, prompt_tokens=p * lp, prefill_tokens=p * lp,
                          new_tokens=p * k * la, peak_gib=peak, fits=gen_fits, notes=list(gen_notes))
        s.seconds = rates.engine_start_s + s.prefill_tokens / rates.prefill_tok_s + s.new_tokens / decode
        out.append(s)
        jp = judge_rubric_tokens + lp + la
        j = StageEstimate(t, "judge", requests=p * k, sequences=p * k * n, prompt_tokens=p * k * jp,
                          prefill_tokens=p * k * (jp - judge_rubric_tokens), new_tokens=p * k * n * lj,
                          peak_gib=peak, fits=gen_fits)  # the rubric prefix is cached (prefix caching is on)
        j.seconds = j.prefill_tokens / rates.prefill_tok_s + j.new_tokens / decode
        out.append(j)
        meta_on = r.meta_judge.enabled and t in r.meta_judge.iterations
        if meta_on:
            b = n * (n - 1) if r.meta_judge.budget == "all" else min(int(r.meta_judge.budget), n * (n - 1))
            mp = meta_rubric_tokens + lp + la + 2 * lj
            # Prefix caching: the rubric + prompt + response prefix is computed once per prompt.
            m = StageEstimate(t, "meta_judge", requests=p * b, sequences=p * b, prompt_tokens=p * b * mp,
                              prefill_tokens=p * (meta_rubric_tokens + lp + la) + p * b * 2 * lj,
                              new_tokens=p * b * lm, peak_gib=peak, fits=gen_fits)
            m.seconds = m.prefill_tokens / rates.prefill_tok_s + m.new_tokens / decode
            m.detail = f"{b} battles/prompt"
            if not hf:
                m.detail += "; " + meta_concurrency(shape, card.total_gib, v.gpu_memory_utilization, quantization,
                                                    v.kv_cache_dtype, r.model.max_model_len, mp + lm)
            out.append(m)
        out.append(StageEstimate(t, "pairs"))
        actor_rows = p * PAIR_YIELD["actor"]
        judge_rows = p * PAIR_YIELD["judge"] if meta_on else 0.0
        rows = actor_rows + judge_rows
        row_tokens = (actor_rows * (lp + 2 * la) + judge_rows * (jp + 2 * lj)) / max(rows, 1)
        out.append(train_est(t, "train", rows, row_tokens, 2, r.train))
    shard = largest_shard_gib(r.model.base)
    for e in out:
        e.host_gib = host_memory(r, shape, e.stage, shard) or None
    return out


def disk_gib(recipe: Recipe, shape: ModelShape) -> dict[str, float]:
    """Disk for merged 16-bit models (one per iteration, plus EFT) and the base download."""
    merged = shape.params * 2 / GIB
    adapter = shape.lora_params(recipe.train.lora.r, recipe.train.lora.target_modules) * 4 / GIB
    count = recipe.loop.iterations + (1 if recipe.eft.enabled else 0)
    base = 0.0 if Path(recipe.model.base).expanduser().is_dir() else merged
    return {"per_model": merged + adapter, "models": count, "merged_total": count * (merged + adapter),
            "base_download": base, "total": count * (merged + adapter) + base}


def prompt_tokens_of(recipe: Recipe) -> tuple[float, str | None]:
    """Mean prompt tokens of the recipe's pool (chars / 4), or 100 with a note when it cannot be read here."""
    src, column, split, max_chars = (recipe.data.prompts, recipe.data.column, recipe.data.split,
                                     recipe.data.max_prompt_chars)
    grow = recipe.data.growing()
    if grow is not None:  # grown prompts are assumed as long as the seed prompts they imitate
        src, column, split, max_chars = grow.seeds, grow.seeds_column, grow.seeds_split, grow.max_chars
    if src != "builtin" and not Path(src).is_file():
        return 100.0, f"data.prompts {src!r} is not a local file here; assuming 100-token prompts"
    from mrlite.data.sources import SourceError, load_prompt_pool

    try:
        pool = load_prompt_pool(src, column, split, max_chars)
    except SourceError as e:
        return 100.0, str(e)
    note = None
    need = recipe.data.prompts_per_iteration * recipe.loop.iterations
    have = grow.n if grow is not None else len(pool.prompts)
    if grow is not None and have < need:
        note = (f"data.generate.n is {have}, the recipe needs {need} prompts "
                f"({recipe.loop.iterations} x {recipe.data.prompts_per_iteration})")
    elif grow is None and have < need:
        note = (f"the prompt pool has {len(pool.prompts)} prompts, the recipe needs {need} "
                f"({recipe.loop.iterations} x {recipe.data.prompts_per_iteration})")
    return sum(len(x) for x in pool.prompts) / len(pool.prompts) / CHARS_PER_TOKEN, note


def template_tokens() -> tuple[float, float]:
    from mrlite.core.prompts import render_judge, render_meta_judge

    return len(render_judge("", "")) / CHARS_PER_TOKEN, len(render_meta_judge("", "", "", "")) / CHARS_PER_TOKEN


__all__ = [
    "GPU_CLASSES",
    "KNOWN_SHAPES",
    "GPUClass",
    "ModelShape",
    "Rates",
    "StageEstimate",
    "disk_gib",
    "estimate",
    "generation_memory",
    "gpu_class_for",
    "host_memory",
    "machine_ram_gib",
    "meta_concurrency",
    "model_shape",
    "prompt_tokens_of",
    "template_tokens",
    "train_memory",
    "weights_gib_16bit",
]
