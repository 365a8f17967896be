"""``mrlite plan RECIPE``: print the per-stage estimates of ``mrlite.tools.plan`` for a card, and warn about
stages that cannot fit (registered in cli/__init__.py). Exercised by: ``mrlite plan recipes/paper.yaml --gpu-mem 24``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import click

from mrlite.hardware.shapes import GIB, KNOWN_SHAPES, model_shape
from mrlite.tools.plan import (
    GEN_STAGES, GPU_CLASSES, Rates, disk_gib, estimate, gpu_class_for, machine_ram_gib, prompt_tokens_of,
    template_tokens,
)


def _fmt_n(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.1f}B"
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def _fmt_s(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"



def load_rates(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"{path}: cannot read a JSON object of throughputs ({e})") from None
    known = set(Rates.__dataclass_fields__)
    bad = sorted(set(data) - known - {"measured"}) if isinstance(data, dict) else ["(not an object)"]
    if bad:
        raise click.BadParameter(f"{path}: unknown keys {bad}; known: {sorted(known)}")
    return {k: v for k, v in data.items() if k != "measured"}  # `measured`: provenance (benchmarks/gpu_check.py)


@click.command("plan")
@click.argument("recipe")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe field (repeatable).")
@click.option("--gpu-mem", type=float, metavar="GiB", help="Card memory to plan for (default: this machine's GPU, "
              "else 24).")
@click.option("--gpu", "gpu_name", type=click.Choice(sorted(GPU_CLASSES)), help="GPU class for the throughput table.")
@click.option("--throughput", type=click.Path(exists=True, dir_okay=False),
              help="JSON of your measured figures for this model (keys: decode_tok_s, prefill_tok_s, train_tok_s, "
                   "engine_start_s, train_load_s, merge_gib_s); replaces the defaults.")
@click.option("--host-ram", type=float, metavar="GiB", help="Host RAM to plan for (default: this machine's).")
@click.option("--strict", is_flag=True, help="Exit 1 when a stage does not fit the card.")
@click.option("--gpus", "n_gpus", type=click.IntRange(min=1), help="GPUs to plan for (default: this machine's "
              "count): spreads generation over the vLLM/HF workers and training over train.num_processes.")
def plan_cmd(recipe, sets, gpu_mem, gpu_name, throughput, host_ram, strict, n_gpus):
    """Estimate memory, tokens, time and disk per stage of RECIPE, and warn about stages that cannot fit.

    Times come from a throughput table of estimates per GPU class (8B model, scaled by size); pass
    --throughput with figures measured on your machine for real numbers.

    \b
    Examples:
      mrlite plan recipes/paper.yaml --gpu-mem 24
      mrlite plan recipes/paper_80gb.yaml --gpu h100
      mrlite plan recipes/colab_t4.yaml --gpu t4 --host-ram 12 --strict
      mrlite plan recipes/paper_8gpu.yaml --gpus 8 --gpu h100
    """
    from mrlite.backends.vllm import default_quantization
    from mrlite.recipe import RecipeError, load_recipe

    try:
        r = load_recipe(recipe, sets)
    except RecipeError as e:
        raise click.ClickException(str(e)) from None
    if r.backends.generator == "fake":
        click.echo(f"{r.name}: fake backend, no model: nothing to plan (it runs in seconds).")
        return
    shape = model_shape(r.model.base)
    if shape is None:
        raise click.ClickException(
            f"unknown shape for model.base {r.model.base}; point it at a local model directory (config.json) "
            f"or use one of: {', '.join(k for k in KNOWN_SHAPES if '/' in k)}")
    key, card, detected = _card(gpu_mem, gpu_name)
    rates = Rates(**{**asdict(card.rates), **load_rates(throughput)}) if throughput else card.rates.scaled(shape.params)
    quant = default_quantization(r.backends.vllm.quantization, card.total_gib, shape.params * 2 / GIB)
    ptok, note = prompt_tokens_of(r)
    jt, mt = template_tokens()
    rows = estimate(r, shape, card, rates, prompt_tokens=ptok, judge_rubric_tokens=jt, meta_rubric_tokens=mt,
                    quantization=quant if r.backends.generator == "vllm" else None)
    from mrlite.hardware import topology  # more than one GPU: DP/TP/processes, NVLink or PCIe

    rows, topo_line, topo_warnings = topology.plan_for(r, rows, shape, card.total_gib, rates, n_gpus)
    src = "your measured figures" if throughput else f"default estimates for {key}, scaled to this model"
    click.echo(f"plan: {r.name} — {r.model.base} ({shape.params / 1e9:.2f}B params) on {card.name} "
               f"({card.total_gib:.0f} GiB{'' if gpu_mem or detected else ', assumed'}); vLLM weights: "
               f"{quant or ('bf16' if card.bf16 else 'fp16')}; throughput: {src}")
    if topo_line:
        click.echo(topo_line)
    click.echo(f"{'iter':>4}  {'stage':<10} {'requests':>9} {'seqs':>9} {'prompt tok':>10} {'prefill':>9} "
               f"{'new tok':>9} {'peak GiB':>8} {'host GiB':>8}  {'time':>8}  note")
    warnings = ([note] if note else []) + topo_warnings
    total = _print_rows(rows, host_ram, warnings)
    d = disk_gib(r, shape)
    click.echo(f"disk: {d['per_model']:.1f} GiB per merged model x {d['models']} = {d['merged_total']:.0f} GiB"
               + (f", + {d['base_download']:.0f} GiB base download" if d["base_download"] else "")
               + "; keep M_0 and the last 1-2 iterations to save space")
    from mrlite.hardware.gpu import free_disk_gib

    free = free_disk_gib(Path("runs"))
    if free < d["total"]:
        warnings.append(f"disk: the run needs ~{d['total']:.0f} GiB, {free:.0f} GiB are free here; delete old "
                        "iterations' model/ folders as you go, or run with --out on a larger disk")
    per_iter = sum(e.seconds for e in rows if e.t == 1)
    click.echo(f"time: ~{_fmt_s(per_iter)} for iteration 1, ~{_fmt_s(total)} in all (estimates; measure with a "
               "short run and pass --throughput)")
    misfit = [e for e in rows if not e.fits]
    for w in dict.fromkeys(warnings):
        click.echo(f"WARN {w}", err=True)
    if misfit and strict:
        raise click.ClickException(f"{len(misfit)} stages do not fit {card.total_gib:.0f} GiB (see WARN lines)")


def _card(gpu_mem: float | None, gpu_name: str | None):
    """(GPU class key, the card planned for, the detected GPU or None): --gpu/--gpu-mem, else this machine's."""
    detected = None
    if gpu_mem is None and gpu_name is None:
        from mrlite.hardware.gpu import gpus

        devs = gpus(use_torch=False)  # nvidia-smi only: planning never imports torch
        detected = devs[0] if devs else None
    key = gpu_name or gpu_class_for(detected.name if detected else None, gpu_mem or (detected and detected.total_gib))
    card = GPU_CLASSES[key]
    if gpu_mem is not None:
        card = replace(card, total_gib=gpu_mem)
    elif detected is not None:
        card = replace(card, name=detected.name, total_gib=detected.total_gib, capability=detected.capability)
    return key, card, detected


def _print_rows(rows: list, host_ram: float | None, warnings: list[str]) -> float:
    """Print one line per stage estimate, add its warnings; returns the total seconds."""
    total = 0.0
    ram = host_ram if host_ram is not None else machine_ram_gib()
    for e in rows:
        if e.stage == "pairs":
            continue
        total += e.seconds
        peak = "" if e.peak_gib is None else f"{e.peak_gib:.1f}" + ("" if e.fits else " !")
        host = "" if e.host_gib is None else f"{e.host_gib:.1f}" + (" !" if ram and e.host_gib > ram else "")
        click.echo(f"{e.t:>4}  {e.stage:<10} {_fmt_n(e.requests):>9} {_fmt_n(e.sequences):>9} "
                   f"{_fmt_n(e.prompt_tokens):>10} {_fmt_n(e.prefill_tokens):>9} {_fmt_n(e.new_tokens):>9} "
                   f"{peak:>8} {host:>8}  {_fmt_s(e.seconds):>8}  {e.detail}".rstrip())
        warnings += [f"iter {e.t} {w}" for w in e.notes if e.t == 1 or e.stage in ("eft",)]
        if ram and e.host_gib and e.host_gib > ram and e.t <= 1:
            warnings.append(f"iter {e.t} {e.stage}: needs ~{e.host_gib:.0f} GiB of host RAM, "
                            f"{'this machine has' if host_ram is None else 'planned for'} {ram:.0f} GiB; "
                            + ("use the vllm generator (backends.generator: vllm)" if e.stage in GEN_STAGES else
                               "train on a 4-bit view (train.load_in_4bit) or with the unsloth trainer"))
    return total
