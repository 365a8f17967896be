"""GPU facts (name, memory, compute capability, bf16) and the checks run before a GPU recipe starts.

Facts come from ``nvidia-smi`` when it is on PATH (no CUDA context is created, so a later vLLM engine in the
same process can still fork), else from ``torch.cuda`` imported lazily. Nothing here imports torch at module
level. Exercised by: ``mrlite doctor`` and ``mrlite run recipes/paper.yaml`` (``preflight``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mrlite.errors import MrliteError

if TYPE_CHECKING:
    from mrlite.recipe import Recipe

log = logging.getLogger(__name__)

GPU_GENERATORS = ("vllm",)
GPU_TRAINERS = ("unsloth",)
GATED_PREFIXES = ("meta-llama/", "google/gemma")
"""Hub organisations/families whose weights need an accepted licence and a token to download."""
CPU_RECIPE = "recipes/tiny.yaml"
GIB = 1024**3


class PreflightError(MrliteError, RuntimeError):
    """A GPU recipe cannot start on this machine. One line: what is wrong and what to run."""


@dataclass(frozen=True)
class GPUInfo:
    """One CUDA device as mrlite needs to know it."""

    index: int
    name: str
    total_gib: float
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        """bf16 kernels need compute capability >= 8.0 (Ampere); a T4 (7.5) or V100 (7.0) has none."""
        return self.capability >= (8, 0)

    @property
    def fp8(self) -> bool:
        """Native FP8 matmuls need Ada/Hopper (>= 8.9); vLLM falls back to Marlin W8A16 from 7.5 up."""
        return self.capability >= (8, 9)


def parse_nvidia_smi(text: str) -> list[GPUInfo]:
    """Parse ``nvidia-smi --query-gpu=index,name,memory.total,compute_cap --format=csv,noheader,nounits``.

    Args:
        text: Its stdout: one ``0, NVIDIA H100 80GB HBM3, 81559, 9.0`` line per device (memory in MiB).

    Returns:
        One GPUInfo per parseable line (lines that do not parse are skipped).
    """
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            index, mib = int(parts[0]), float(parts[-2])
            major, _, minor = parts[-1].partition(".")
            cap = (int(major), int(minor or 0))
        except ValueError:
            continue
        out.append(GPUInfo(index, ",".join(parts[1:-2]), round(mib / 1024, 2), cap))
    return out


def _visible(gpus: list[GPUInfo], env: Mapping[str, str]) -> list[GPUInfo]:
    """Apply ``CUDA_VISIBLE_DEVICES`` (integer indices only; UUIDs are left unfiltered)."""
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return gpus
    spec = spec.strip()
    if spec in ("", "-1", "none", "NoDevFiles"):
        return []
    try:
        wanted = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        return gpus
    by_index = {g.index: g for g in gpus}
    return [GPUInfo(i, by_index[w].name, by_index[w].total_gib, by_index[w].capability)
            for i, w in enumerate(wanted) if w in by_index]


def _from_nvidia_smi() -> list[GPUInfo] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "--query-gpu=index,name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return _visible(parse_nvidia_smi(r.stdout), os.environ)


def _from_torch() -> list[GPUInfo]:
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(GPUInfo(i, p.name, round(p.total_memory / GIB, 2), (p.major, p.minor)))
    return out


def gpus(use_torch: bool = True) -> list[GPUInfo]:
    """The CUDA devices this process can use (``[]`` on a CPU-only machine or without a driver).

    Args:
        use_torch: Fall back to ``torch.cuda`` (imported here) when ``nvidia-smi`` is missing or fails.
    """
    found = _from_nvidia_smi()
    return found if found or not use_torch else _from_torch()


# --------------------------------------------------------------------------------------------------------------
# Driver vs the CUDA version torch is built for

TORCH_CUDA_NEEDED = {"2.14.0": "13.0", "2.14.1": "13.0", "2.13.0": "12.8"}
"""CUDA version of the default PyPI wheel of each torch the GPU path pins or meets (vLLM 0.33 pins 2.14.0, built
for CUDA 13.0; unsloth 2026.10.9 resolves 2.14.1). A driver must support at least this CUDA version."""
MIN_DRIVER = {"13.0": "580.65.06", "12.9": "575.51.03", "12.8": "570.26", "12.6": "560.28.03", "12.4": "550.54.14",
              "12.1": "530.30.02", "11.8": "520.61.05"}
"""Minimum Linux driver per CUDA toolkit version (NVIDIA's CUDA release notes, table 3)."""


def parse_driver(text: str) -> tuple[str | None, str | None]:
    """(driver version, highest CUDA version the driver supports) from plain ``nvidia-smi`` output.

    Its header reads ``| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |``;
    (None, None) when absent.
    """
    import re

    drv = re.search(r"Driver Version:\s*([0-9.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", text)
    return (drv.group(1) if drv else None, cuda.group(1) if cuda else None)


def _vtuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def driver_mismatch(driver: str | None, driver_cuda: str | None, torch_cuda: str | None) -> str | None:
    """One line when the driver is too old for the CUDA version torch needs, else None.

    Args:
        driver: Driver version (``nvidia-smi``), e.g. ``550.54.15``.
        driver_cuda: Highest CUDA version that driver supports (``nvidia-smi``'s "CUDA Version").
        torch_cuda: CUDA version torch is (or, not installed yet, will be) built for, e.g. ``13.0``.
    """
    if not torch_cuda or not (driver or driver_cuda):
        return None
    need = _vtuple(torch_cuda)[:2]
    if driver_cuda:
        too_old = _vtuple(driver_cuda)[:2] < need
    else:
        floor = MIN_DRIVER.get(f"{need[0]}.{need[1] if len(need) > 1 else 0}")
        too_old = floor is not None and _vtuple(driver) < _vtuple(floor)
    if not too_old:
        return None
    floor = MIN_DRIVER.get(torch_cuda)
    return (f"driver {driver or '?'} supports CUDA up to {driver_cuda or '?'}, but this torch needs CUDA {torch_cuda}"
            + (f" (driver >= {floor})" if floor else "") + ": update the NVIDIA driver, or use the environment "
            "without vLLM for older drivers (README, 'GPU with an older driver')")


def driver_info() -> tuple[str | None, str | None]:
    """(driver version, driver's CUDA version) from ``nvidia-smi``; (None, None) without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    try:
        r = subprocess.run([exe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return parse_driver(r.stdout) if r.returncode == 0 else (None, None)


def gpu_summary(devs: list[GPUInfo]) -> str:
    if not devs:
        return "no CUDA GPU"
    g = devs[0]
    more = f" (+{len(devs) - 1} more)" if len(devs) > 1 else ""
    return f"{g.name}, {g.total_gib:.1f} GiB, compute {g.capability[0]}.{g.capability[1]}{more}"


# --------------------------------------------------------------------------------------------------------------
# Checks before a GPU recipe runs


def uses_gpu(recipe: Recipe) -> bool:
    """Whether the recipe selects a backend that only runs on CUDA."""
    return recipe.backends.generator in GPU_GENERATORS or recipe.backends.trainer in GPU_TRAINERS


def is_gated(model: str) -> bool:
    """Whether ``model`` is a Hub id of a family that needs a token (not a local directory or an alias)."""
    return not Path(model).expanduser().exists() and model.startswith(GATED_PREFIXES)


def _default_has_token(env: Mapping[str, str]) -> bool:
    """A token in ``HF_TOKEN`` or from ``hf auth login`` (asked through huggingface_hub; never read here)."""
    if env.get("HF_TOKEN"):
        return True
    if importlib.util.find_spec("huggingface_hub") is None:
        return False
    from huggingface_hub import get_token

    return get_token() is not None


def _in_hub_cache(model: str) -> bool:
    """Whether the Hub model's config is already in the local cache (then no token is needed to run)."""
    if importlib.util.find_spec("huggingface_hub") is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "config.json"), str)


def preflight(recipe: Recipe, *, devices: list[GPUInfo] | None = None, env: Mapping[str, str] | None = None,
              has_token: Callable[[Mapping[str, str]], bool] | None = None,
              cached: Callable[[str], bool] | None = None) -> None:
    """Check that a recipe can start here; call it once before the first stage.

    Checks, in order: 4-bit training needs a card with bf16 (TRL casts a quantised model's LoRA weights to
    bf16); a GPU backend needs a CUDA device; a gated Hub model (``meta-llama/...``) needs a token
    (``HF_TOKEN`` or ``hf auth login``) unless it is already in the Hub cache; bf16 asked on a card without it.
    The token itself is never read, printed or stored here.

    Args:
        recipe: The validated recipe.
        devices: GPUs to assume (default: ``gpus()``); tests pass a list.
        env: Environment to read (default ``os.environ``).
        has_token: Token probe (default: ``HF_TOKEN`` set, or huggingface_hub's ``get_token()`` finds one).
        cached: Hub-cache probe (default: huggingface_hub's ``try_to_load_from_cache``).

    Raises:
        PreflightError: one line naming the fix (``mrlite doctor``, the CPU recipe, the env var).
    """
    env = os.environ if env is None else env
    if recipe.backends.generator == "fake":
        return
    devs = None
    if uses_gpu(recipe) or (recipe.train.load_in_4bit and recipe.backends.trainer != "fake"):
        # nvidia-smi only for a CPU-backend recipe: the orchestrator does not import torch for it
        devs = gpus(use_torch=uses_gpu(recipe)) if devices is None else devices
    if devs and recipe.train.load_in_4bit and recipe.backends.trainer != "fake" and not devs[0].bf16:
        raise PreflightError(
            f"train.load_in_4bit on {devs[0].name} (compute {devs[0].capability[0]}.{devs[0].capability[1]}, no "
            "bf16): TRL casts the LoRA weights of a 4-bit model to bf16, which this card lacks; train a 16-bit LoRA "
            "instead: --set train.load_in_4bit=false (as recipes/colab_t4.yaml does)"
        )
    if devs is not None and uses_gpu(recipe):
        which = [b for b in (recipe.backends.generator, recipe.backends.trainer) if b in GPU_GENERATORS + GPU_TRAINERS]
        if not devs:
            raise PreflightError(
                f"recipe '{recipe.name}' uses the GPU backend {' and '.join(repr(w) for w in which)}, but this "
                f"machine has no CUDA GPU; run `mrlite doctor` to see what is missing, or run the CPU recipe: "
                f"mrlite run {CPU_RECIPE}"
            )
        if recipe.model.dtype == "bfloat16" and not devs[0].bf16:
            raise PreflightError(
                f"model.dtype bfloat16 needs compute capability >= 8.0, but {devs[0].name} has "
                f"{devs[0].capability[0]}.{devs[0].capability[1]}; set model.dtype: float16 (or auto)"
            )
    base = recipe.model.base
    if is_gated(base):
        probe = has_token or _default_has_token
        in_cache = cached or _in_hub_cache
        if not probe(env) and not in_cache(base):
            raise PreflightError(
                f"model.base {base} is gated on the Hugging Face Hub: accept its licence on the model page, then "
                "set the HF_TOKEN environment variable to a read token (or run `hf auth login`)"
            )


def free_disk_gib(path: Path) -> float:
    """Free space (GiB) on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free / GIB


def check_disk(needed_gib: float, free_gib: float, where: Path | str, what: str = "the merged model") -> None:
    """Raise PreflightError (one line: needed vs free GiB) when ``free_gib < needed_gib``.

    Args:
        needed_gib: Space the write needs.
        free_gib: Space available.
        where: The directory that will be written (named in the message).
        what: What is written.
    """
    if free_gib < needed_gib:
        raise PreflightError(
            f"not enough disk for {what}: needs ~{needed_gib:.1f} GiB free in {where}, only {free_gib:.1f} GiB "
            "free; free some space, or put the run (--out) on a larger disk"
        )


__all__ = ["GPUInfo", "PreflightError", "check_disk", "driver_info", "driver_mismatch",
           "free_disk_gib", "gpu_summary", "gpus", "is_gated", "parse_driver", "parse_nvidia_smi", "preflight",
           "uses_gpu"]
