"""The machine's GPU topology (count, per-GPU memory, NVLink or PCIe) and whether a recipe's TP/DP settings fit it.

Facts come from ``nvidia-smi`` (``--query-gpu`` via ``mrlite.hardware.gpu`` and ``topo -m`` here); parsing is pure so it is
tested on captured text. ``plan --gpus N`` uses ``scale_estimates`` to turn one-GPU stage estimates into estimates
for N GPUs: generation stages divide their work over the engines (data parallel; chunks are independent), the
train and EFT stages over the training processes; full fine-tuning memory is weights + gradients + Adam states
(16 bytes per parameter) and a bf16 reference copy, sharded over the processes with FSDP or ZeRO-3.
No torch. Exercised by: ``mrlite plan recipes/paper_8gpu.yaml --gpus 8`` and ``mrlite doctor``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mrlite.recipe import Recipe
    from mrlite.hardware.shapes import ModelShape

GIB = 1024**3
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GPU = re.compile(r"GPU(\d+)$")
FULL_BYTES_PER_PARAM = 16
"""Full fine-tuning with Adam in mixed precision: bf16 weight + bf16 grad + fp32 master weight, m and v."""
REF_BYTES_PER_PARAM = 2
"""DPO's frozen bf16 reference copy of M_{t-1}."""
COMM_OVERHEAD = {"nvlink": 1.05, "pcie": 1.3, "mixed": 1.2, "single": 1.0, "unknown": 1.15}
"""Slow-down of data-parallel training per interconnect (gradient all-reduce / ZeRO-3 gathers): estimates."""
GEN_STAGES = ("sample", "judge", "meta_judge")
TRAIN_STAGES = ("eft", "train")


@dataclass
class Topology:
    """GPU-to-GPU links from ``nvidia-smi topo -m``: ``links[(i, j)]`` is ``NV12``, ``PIX``, ``SYS`` ..."""

    gpus: int = 0
    links: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def interconnect(self) -> str:
        """``nvlink`` (every pair over NVLink), ``pcie`` (none), ``mixed``, ``single`` (one GPU) or ``unknown``."""
        if self.gpus <= 1:
            return "single" if self.gpus == 1 else "unknown"
        pairs = [v for (i, j), v in self.links.items() if i < j]
        if not pairs:
            return "unknown"
        nv = sum(v.startswith("NV") for v in pairs)
        return "nvlink" if nv == len(pairs) else "pcie" if nv == 0 else "mixed"


def parse_topo(text: str) -> Topology:
    """Parse the matrix of ``nvidia-smi topo -m`` (GPU rows and columns; NIC columns and the legend ignored).

    Args:
        text: Its stdout (tab-separated, or with spaces as when copied), with or without its terminal colour codes.

    Returns:
        The GPU count and the link of every ordered GPU pair (``X`` on the diagonal is left out).
    """
    rows_text = [_ANSI.sub("", ln).split() for ln in text.splitlines()]
    # Header: GPU0 GPU1 ... (then NIC and affinity columns); a GPU row: GPUi, then one cell per column, X on itself.
    header = next((r for r in rows_text if r and r[0] == "GPU0" and "X" not in r), None)
    if header is None:
        return Topology()
    gpu_cols = {k: int(m.group(1)) for k, c in enumerate(header) if (m := _GPU.match(c))}
    topo = Topology()
    rows = 0
    for cells in rows_text:
        m = _GPU.match(cells[0]) if cells else None
        if not m or "X" not in cells:
            continue
        i = int(m.group(1))
        rows += 1
        values = cells[1:]
        for k, j in gpu_cols.items():
            if k < len(values) and values[k] != "X":
                topo.links[(i, j)] = values[k]
    topo.gpus = rows
    return topo


def read_topology() -> Topology | None:
    """This machine's topology (None without ``nvidia-smi`` or when it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "topo", "-m"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_topo(r.stdout) if r.returncode == 0 else None


# --------------------------------------------------------------------------------------------------------------
# Fit of the recipe's parallel settings


def generation_engines(recipe: Recipe, gpus: int) -> int:
    """Engines that actually run in parallel on ``gpus`` GPUs (at least 1)."""
    b = recipe.backends
    if b.generator == "vllm":
        return max(1, min(b.vllm.data_parallel_size, gpus // b.vllm.tensor_parallel_size or 1))
    if b.generator == "hf":
        return max(1, min(b.hf.workers, gpus or b.hf.workers))
    return 1


def full_train_gib(shape: ModelShape, processes: int, sharded: bool, activations_gib: float) -> float:
    """Peak GiB per GPU of full fine-tuning: states (16 B/param) + reference (2 B/param), sharded or not."""
    states = shape.params * (FULL_BYTES_PER_PARAM + REF_BYTES_PER_PARAM) / GIB
    return states / (processes if sharded else 1) + activations_gib


def fit_warnings(recipe: Recipe, gpus: int, per_gpu_gib: float | None, interconnect: str = "unknown",
                 shape: ModelShape | None = None) -> list[str]:
    """One line per parallel setting of ``recipe`` that does not fit (or wastes) a machine of ``gpus`` GPUs."""
    out: list[str] = []
    b, t = recipe.backends, recipe.train
    if b.generator == "vllm":
        dp, tp = b.vllm.data_parallel_size, b.vllm.tensor_parallel_size
        if dp * tp > gpus:
            out.append(f"backends.vllm.data_parallel_size {dp} x tensor_parallel_size {tp} needs {dp * tp} GPUs, "
                       f"this machine has {gpus}; set data_parallel_size: {max(1, gpus // tp)}")
        elif dp * tp < gpus:
            out.append(f"generation uses {dp * tp} of {gpus} GPUs; set backends.vllm.data_parallel_size: "
                       f"{gpus // tp} to use them all")
        if tp > 1 and interconnect in ("pcie", "mixed"):
            out.append(f"tensor_parallel_size {tp} over {interconnect.upper()} links is slow; prefer "
                       "data_parallel_size (one engine per GPU) when the model fits one card")
        if shape is not None and per_gpu_gib and tp == 1 and shape.params * 2 / GIB > 0.8 * per_gpu_gib:
            out.append(f"the {shape.params * 2 / GIB:.0f} GiB of 16-bit weights do not fit one {per_gpu_gib:.0f} GiB "
                       "GPU with a KV cache; raise backends.vllm.tensor_parallel_size")
    if b.generator == "hf" and gpus and b.hf.workers > gpus:
        out.append(f"backends.hf.workers {b.hf.workers} > {gpus} GPUs: workers will share GPUs")
    if t.num_processes > max(gpus, 1) and gpus:
        out.append(f"train.num_processes {t.num_processes} > {gpus} GPUs; set train.num_processes: {gpus}")
    elif gpus > 1 and t.num_processes == 1:
        out.append(f"training uses 1 of {gpus} GPUs; set train.num_processes: {gpus} (batch_size is per GPU)")
    if t.method == "full" and t.num_processes > 1 and t.distributed == "ddp":
        out.append("train.method full with distributed: ddp keeps all weights, gradients and Adam states on every "
                   "GPU; use distributed: deepspeed (ZeRO-3) or fsdp")
    if t.num_processes > 1 and t.distributed != "ddp" and interconnect == "pcie":
        out.append(f"{t.distributed} over PCIe gathers the weights for every layer: expect slow steps")
    return out


def scale_estimates(rows: list, recipe: Recipe, shape: ModelShape, gpus: int,
                    interconnect: str = "unknown", engine_start_s: float = 120.0,
                    train_load_s: float = 90.0) -> list:
    """One-GPU stage estimates (``mrlite.tools.plan.StageEstimate`` rows) → estimates on ``gpus`` GPUs.

    Generation: the work after the engine start divides over the engines that run at once. Training: the
    step time divides over the processes (times a communication overhead per interconnect); with
    ``train.method: full`` the peak is the full fine-tuning memory per GPU (the LoRA estimate's activations kept).
    """
    engines = generation_engines(recipe, gpus)
    t = recipe.train
    procs = max(1, min(t.num_processes, gpus or 1))
    overhead = COMM_OVERHEAD.get(interconnect, COMM_OVERHEAD["unknown"]) if procs > 1 else 1.0
    out = []
    for e in rows:
        if e.stage in GEN_STAGES and engines > 1:
            start = engine_start_s if e.stage == "sample" else 0.0
            e = replace(e, seconds=start + (e.seconds - start) / engines,
                        detail=(e.detail + f" {engines} engines").strip())
        elif e.stage in TRAIN_STAGES:
            secs = train_load_s + (e.seconds - train_load_s) * overhead / procs
            e = replace(e, seconds=secs, detail=(e.detail + (f" {procs} processes" if procs > 1 else "")).strip())
            if e.stage == "train" and t.method == "full" and e.peak_gib is not None:
                lora_states = (shape.params * 2 + shape.lora_params(t.lora.r, t.lora.target_modules) * 16) / GIB
                activations = max(e.peak_gib - lora_states, 0.0)
                peak = full_train_gib(shape, procs, t.distributed != "ddp", activations)
                e = replace(e, peak_gib=peak, detail=(e.detail + " full").strip())
        out.append(e)
    return out


def describe(gpus: int, per_gpu_gib: float | None, topo: Topology | None) -> str:
    """``8 GPUs x 80 GiB, NVLink`` (the topology line of plan and doctor)."""
    link = topo.interconnect if topo is not None else "unknown"
    names = {"nvlink": "NVLink between every pair", "pcie": "PCIe only (no NVLink)", "mixed": "NVLink on some pairs",
             "single": "one GPU", "unknown": "links unknown"}
    mem = f" x {per_gpu_gib:.0f} GiB" if per_gpu_gib else ""
    return f"{gpus} GPU{'s' if gpus != 1 else ''}{mem}, {names[link]}"


def doctor_lines() -> list[str]:
    """Topology lines for ``mrlite doctor`` (empty without GPUs)."""
    from mrlite.hardware.gpu import gpus

    devs = gpus(use_torch=False)
    if not devs:
        return []
    topo = read_topology()
    lines = [f"✓ topology: {describe(len(devs), min(d.total_gib for d in devs), topo)}"]
    if len(devs) > 1:
        lines.append(f"  more than one GPU: backends.vllm.data_parallel_size: {len(devs)} (one engine per GPU), "
                     f"train.num_processes: {len(devs)}; see `mrlite plan RECIPE --gpus {len(devs)}`")
    return lines


__all__ = ["Topology", "describe", "doctor_lines", "fit_warnings", "full_train_gib", "generation_engines",
           "parse_topo", "read_topology", "scale_estimates"]


def plan_for(recipe: Recipe, rows: list, shape: ModelShape, per_gpu_gib: float, rates,
             gpus: int | None) -> tuple[list, str, list[str]]:
    """What ``mrlite plan`` adds for more than one GPU: scaled rows, a topology line and fit warnings.

    Args:
        gpus: ``--gpus`` (None: the GPUs ``nvidia-smi`` sees here, else 1). The links are read from this machine
            only when it has that many GPUs; otherwise they are unknown.
    """
    from mrlite.hardware.gpu import gpus as detect

    here = detect(use_torch=False) or []
    n = gpus or max(len(here), 1)
    if n == 1 and not _parallel(recipe) and recipe.train.method == "lora":
        return rows, "", []  # one GPU, no parallel settings: the plan as it always was
    topo = read_topology() if here and len(here) == n and n > 1 else None
    link = topo.interconnect if topo is not None else ("single" if n == 1 else "unknown")
    scaled = scale_estimates(rows, recipe, shape, n, link, rates.engine_start_s, rates.train_load_s)
    for e in scaled:
        if e.stage in TRAIN_STAGES and e.peak_gib is not None:
            e.fits = e.peak_gib <= 0.95 * per_gpu_gib
            e.notes = [w for w in e.notes if "GiB >" not in w]
            if not e.fits:
                e.notes.append(f"{e.stage}: ~{e.peak_gib:.1f} GiB per GPU > {per_gpu_gib:.0f} GiB; "
                               + ("use train.distributed: deepspeed or fsdp, or more GPUs" if recipe.train.method ==
                                  "full" else "lower train.max_length/batch_size, or set train.load_in_4bit: true"))
    return scaled, f"topology: {describe(n, per_gpu_gib, topo if topo else Topology(gpus=n))}", \
        fit_warnings(recipe, n, per_gpu_gib, link, shape) if n > 1 or _parallel(recipe) else []


def _parallel(recipe: Recipe) -> bool:
    b, t = recipe.backends, recipe.train
    return b.vllm.data_parallel_size > 1 or b.vllm.tensor_parallel_size > 1 or b.hf.workers > 1 or t.num_processes > 1
