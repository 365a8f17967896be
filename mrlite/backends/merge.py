"""Merge a LoRA adapter into 16-bit base weights tensor by tensor, shard by shard (W16 + scale · B @ A).

Loading an 8B model in fp32 on the CPU to merge (peft's ``merge_and_unload``) needs ~32 GB of host RAM and
minutes per iteration. Here each base shard is read tensor by tensor; a tensor with a LoRA delta is merged in fp32
(on the GPU when one is given) and cast back to its stored dtype; the merged shard is written, then the next one is
read. Host memory stays near one shard plus the adapter; nothing is ever merged into 4-bit weights.
The arithmetic is peft's (``delta = (B @ A) · lora_alpha / r``, ``/ sqrt(r)`` with rsLoRA, added in fp32).
Exercised by: the TRL trainer's merge (``mrlite run recipes/tiny.yaml``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."
COPY_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken", ".py")
"""Non-weight files of a model directory copied next to the merged shards (config, tokenizer, generation config)."""
NOT_COPIED = ("model.safetensors.index.json", "adapter_config.json", "lineage.json")


class StreamingMergeUnsupported(ValueError):
    """The adapter or base needs peft's full-model merge (DoRA, rank patterns, .bin weights...)."""


def base_shards(base_dir: Path) -> list[Path]:
    """The base's safetensors shards in index order (one file when unsharded)."""
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        names = dict.fromkeys(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        return [base_dir / n for n in names]
    single = base_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise StreamingMergeUnsupported(f"{base_dir}: no safetensors weights (model.safetensors or an index)")


def lora_deltas(adapter_dir: Path) -> tuple[dict[str, tuple], float]:
    """``{base tensor name: (A, B)}`` and the scale from a peft LoRA adapter directory (tensors on the CPU)."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
        raise StreamingMergeUnsupported("only plain LoRA adapters merge tensor by tensor (not DoRA)")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("modules_to_save"):
        raise StreamingMergeUnsupported("rank/alpha patterns and modules_to_save need peft's merge")
    if cfg.get("fan_in_fan_out"):
        raise StreamingMergeUnsupported("fan_in_fan_out adapters need peft's merge")
    r = int(cfg["r"])
    scale = float(cfg["lora_alpha"]) / (math.sqrt(r) if cfg.get("use_rslora") else r)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict] = {}
    for key, t in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if key.endswith(marker):
                module = key[: -len(marker)].removeprefix(PEFT_PREFIX)
                pairs.setdefault(module + ".weight", {})[part] = t
                break
        else:
            raise StreamingMergeUnsupported(f"adapter tensor {key} is not a LoRA A/B weight")
    out = {}
    for name, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise StreamingMergeUnsupported(f"adapter has only {sorted(ab)} for {name}")
        out[name] = (ab["lora_A"], ab["lora_B"])
    return out, scale


def merge_streaming(base_dir: Path, adapter_dir: Path, out_dir: Path, *, device: str = "cpu") -> dict:
    """Write ``base + adapter`` to ``out_dir`` with the base's shard layout, tensor names and dtypes.

    Args:
        base_dir: A local model directory with safetensors weights (16- or 32-bit).
        adapter_dir: A peft LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).
        out_dir: Created; receives the merged shards, the index, config and tokenizer files.
        device: Where the fp32 delta is computed (``"cuda"`` when a GPU is there).

    Returns:
        ``{"shards", "merged_tensors", "largest_shard_gib"}``.

    Raises:
        StreamingMergeUnsupported: the adapter or base needs peft's full-model merge; nothing is written.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    shards = base_shards(base_dir)
    deltas, scale = lora_deltas(adapter_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    for shard in shards:
        merged: dict[str, torch.Tensor] = {}
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            meta = f.metadata() or {"format": "pt"}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                w = f.get_tensor(name)
                if name in deltas:
                    a, b = deltas[name]
                    w32 = w.to(device=device, dtype=torch.float32)
                    delta = (b.to(device=device, dtype=torch.float32) @ a.to(device=device, dtype=torch.float32)) * scale
                    w = (w32 + delta).to(w.dtype).cpu()
                    done.add(name)
                merged[name] = w.contiguous()
        save_file(merged, str(out_dir / shard.name), metadata=meta)
        del merged
    missing = sorted(set(deltas) - done)
    if missing:
        raise StreamingMergeUnsupported(f"adapter modules not in the base weights: {', '.join(missing[:3])}")
    for p in sorted(base_dir.iterdir()):
        if p.is_file() and (p.name == "model.safetensors.index.json"
                            or (p.suffix in COPY_SUFFIXES and p.name not in NOT_COPIED)):
            shutil.copy2(p, out_dir / p.name)
    largest = max(s.stat().st_size for s in shards) / 1024**3
    log.info("merge: %d LoRA tensors into %d shard(s) of %s (largest %.2f GiB) on %s", len(done), len(shards),
             base_dir, largest, device)
    return {"shards": len(shards), "merged_tensors": len(done), "largest_shard_gib": largest}


MERGE_MARGIN_GIB = 1.0
"""Python, torch and one fp32 tensor on top of a shard (Llama-3-8B's largest tensor, lm_head, is 1.96 GiB fp32)."""


def host_ram_gib(shard_gib: float, adapter_gib: float) -> float:
    """Host RAM of the streaming merge: the merged tensors of one shard, the adapter and a margin."""
    return shard_gib + adapter_gib + MERGE_MARGIN_GIB


__all__ = ["StreamingMergeUnsupported", "base_shards", "host_ram_gib", "lora_deltas", "merge_streaming"]
