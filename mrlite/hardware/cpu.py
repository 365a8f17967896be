"""Hardware facts the backends share: does this device run bf16 natively (no torch import at module level).

Kept apart from the HF generator module (which registers an attention kernel when imported) so that a trainer
can ask without loading the generator. Exercised by: ``mrlite run recipes/tiny.yaml`` (dtype 'auto').
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has native bf16 matmuls (AVX512-BF16 or AMX); ``False`` where ``cpuinfo`` is unreadable."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: Any) -> bool:
    """Whether bf16 matmuls run natively on ``device`` (a ``torch.device``): CUDA with bf16 support, or a CPU
    with AVX512-BF16 or AMX.

    stack.md measured bf16 ~2x faster than fp32 on an AVX512-BF16 CPU; on an AVX2-only CPU (the machine this was
    written on) bf16 linear layers are emulated and 2-5x *slower* than fp32, so 'auto' must not pick bf16 there.
    """
    if device.type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


__all__ = ["cpu_has_bf16", "native_bf16"]
