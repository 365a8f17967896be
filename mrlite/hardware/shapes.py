"""Model shapes and weight sizes, read from a model's ``config.json`` or a table of known models (no torch).

Shared by the estimator (``mrlite plan``) and the backends that size things before loading a model (the vLLM
engine's memory split, the unsloth trainer's disk check). Exercised by: ``mrlite plan recipes/paper.yaml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need from a decoder-only transformer's config."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool = False

    @property
    def linear_params(self) -> int:
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        return self.layers * (attn + 3 * self.hidden * self.intermediate)

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.linear_params + self.embed_params + self.hidden * (2 * self.layers + 1)

    def kv_bytes_per_token(self, dtype_bytes: float = 2) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def lora_params(self, r: int, targets: list[str]) -> int:
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return self.layers * sum(r * sum(dims[t]) for t in targets if t in dims)


def shape_from_config(cfg: dict) -> ModelShape:
    heads = cfg["num_attention_heads"]
    return ModelShape(
        vocab=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"], heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, intermediate=cfg["intermediate_size"],
        tied=bool(cfg.get("tie_word_embeddings", False)),
    )


_LLAMA3_8B = ModelShape(128256, 4096, 32, 32, 8, 128, 14336)
KNOWN_SHAPES: dict[str, ModelShape] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA3_8B,
    "unsloth/llama-3-8b-Instruct": _LLAMA3_8B,
    "meta-llama/Llama-3.2-1B-Instruct": ModelShape(128256, 2048, 16, 32, 8, 64, 8192, True),
    "meta-llama/Llama-3.2-3B-Instruct": ModelShape(128256, 3072, 28, 24, 8, 128, 8192, True),
    "Qwen/Qwen2.5-0.5B-Instruct": ModelShape(151936, 896, 24, 14, 2, 64, 4864, True),
    "Qwen/Qwen2.5-1.5B-Instruct": ModelShape(151936, 1536, 28, 12, 2, 128, 8960, True),
    "Qwen/Qwen2.5-3B-Instruct": ModelShape(151936, 2048, 36, 16, 2, 128, 11008, True),
    "Qwen/Qwen2.5-7B-Instruct": ModelShape(152064, 3584, 28, 28, 4, 128, 18944, False),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": ModelShape(49152, 2048, 24, 32, 32, 64, 8192, True),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ModelShape(49152, 576, 30, 9, 3, 64, 1536, True),
    "smollm2-135m": ModelShape(49152, 576, 30, 9, 3, 64, 1536, True),
    "tiny-random": ModelShape(49152, 64, 2, 4, 2, 16, 128, True),
}


def model_shape(spec: str) -> ModelShape | None:
    """Shape of a local model directory (its config.json) or of a known Hub id/alias; None if unknown."""
    p = Path(spec).expanduser()
    if (p / "config.json").is_file():
        try:
            return shape_from_config(json.loads((p / "config.json").read_text()))
        except (KeyError, ValueError, TypeError):
            return None
    return KNOWN_SHAPES.get(spec)


def weights_gib_16bit(model: str) -> float | None:
    """Size of a local model's weights once stored in 16 bit (fp32 checkpoints count half); None if unknown."""
    p = Path(model)
    files = list(p.glob("*.safetensors")) if p.is_dir() else []
    if not files:
        shape = model_shape(model)
        return None if shape is None else shape.params * 2 / GIB
    size = sum(f.stat().st_size for f in files)
    try:
        cfg = json.loads((p / "config.json").read_text())
        if (cfg.get("torch_dtype") or cfg.get("dtype")) == "float32":
            size /= 2
    except (OSError, ValueError):
        pass
    return size / GIB


NF4_BYTES = 0.53
"""NF4 bytes per linear weight: 4 bits + fp32 absmax per 64 (double-quantised)."""
TRAIN_OVERHEAD_GIB = 1.5
"""CUDA context, allocator slack and kernels of a training process."""
REF_BATCH_CAP = 32


def ref_batch_size(shape: ModelShape, card_gib: float, *, four_bit: bool, max_length: int, train_batch: int,
                   lora_params: int = 0, cap: int = REF_BATCH_CAP) -> int:
    """Rows per forward pass when DPO precomputes the reference log-probs (``precompute_ref_batch_size``).

    The pass is forward-only (no gradients, no optimizer yet) over both answers of each row at up to
    ``max_length`` tokens: per row, the bf16 logits and their fp32 log-softmax (2 x L x vocab x 6 bytes) plus one
    layer's activations; the budget is 90 % of the card less the weights, the LoRA and the runtime. Without it
    TRL uses the train batch size, often 1: thousands of one-row passes before the first step.

    Returns:
        At least ``train_batch``, at most ``cap``.
    """
    weights = (shape.linear_params * NF4_BYTES + shape.embed_params * 2) if four_bit else shape.params * 2
    budget = 0.9 * card_gib * GIB - weights - lora_params * 4 - TRAIN_OVERHEAD_GIB * GIB
    per_row = 2 * max_length * (shape.vocab * 6 + (3 * shape.intermediate + 6 * shape.hidden) * 2)
    return max(train_batch, min(cap, int(budget // per_row)))


__all__ = ["GIB", "KNOWN_SHAPES", "NF4_BYTES", "TRAIN_OVERHEAD_GIB", "ModelShape", "model_shape", "ref_batch_size",
           "shape_from_config", "weights_gib_16bit"]
