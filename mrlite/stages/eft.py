"""Stage ``eft`` (iteration 0, optional): SFT the seed on judge demonstrations → M_0.

Algorithm.md Part A "Seed: EFT SFT": prompt = the judge prompt for (x, y), completion = a justification ending
in ``Score: s`` (loss on the completion only). Trains on the shipped EFT set, a JSONL of ready rows, or the rows
stage ``eft_data`` built in this run from Open Assistant (``eft.data: oasst:<source>``).
Writes ``iter_00/eft_rows.jsonl``, ``adapter/`` and ``model/``. Exercised by: ``mrlite run recipes/tiny.yaml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mrlite.core.prompts import render_judge
from mrlite.rundir import atomic_write_jsonl, replace_dir
from mrlite.data.sources import eft_source, load_eft_rows
from mrlite.stages import StageContext, resolve_base, untimed


def applies(ctx: StageContext) -> bool:
    return ctx.t == 0 and ctx.recipe.eft.enabled


def inputs(ctx: StageContext) -> list[Path]:
    kind, src = eft_source(ctx.recipe.eft.data)
    return [ctx.path("eft_data.jsonl") if kind == "oasst" else Path(src)]


def outputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("eft_rows.jsonl"), ctx.path("adapter"), ctx.path("model")]


def config(ctx: StageContext) -> dict:
    r = ctx.recipe
    # The trainers read train.load_in_4bit for EFT too (and unsloth passes train.trl_args to SFT as well).
    cfg = {"eft": r.eft.model_dump(mode="json"), "trainer": r.backends.trainer,
           "model": r.model.model_dump(mode="json"), "seed": r.loop.seed, "load_in_4bit": r.train.load_in_4bit}
    if r.backends.trainer == "unsloth":
        cfg["trl_args"] = r.train.trl_args
    return cfg


def run(ctx: StageContext) -> dict:
    from mrlite.scale.distributed import train_call

    kind, _ = eft_source(ctx.recipe.eft.data)
    rows, _ = load_eft_rows(str(ctx.path("eft_data.jsonl")) if kind == "oasst" else ctx.recipe.eft.data)
    sft = [{"id": r.get("id", f"e{i:05d}"),
            "prompt": [{"role": "user", "content": render_judge(r["prompt"], r["response"])}],
            "completion": [{"role": "assistant", "content": r["judgment"]}]} for i, r in enumerate(rows)]
    atomic_write_jsonl(ctx.path("eft_rows.jsonl"), sft)
    tmp = ctx.path("eft.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    result = train_call(ctx.recipe, 0, "sft", ctx.path("eft_rows.jsonl"), resolve_base(ctx.recipe), tmp)
    replace_dir(tmp / "adapter", ctx.path("adapter"))
    replace_dir(tmp / "model", ctx.path("model"))
    shutil.rmtree(tmp)
    return {"n_in": len(sft), "n_out": result.n_rows, "dropped_too_long": result.n_dropped,
            **untimed(result.summary)}


def summary_line(t: int, s: dict) -> str:
    loss = f", loss {s['first_loss']:.4f} → {s['last_loss']:.4f}" if s.get("first_loss") is not None else ""
    return (f"eft    : SFT on {s['n_in']} judge demonstrations ({s['dropped_too_long']} too long dropped), "
            f"{s.get('steps', '?')} steps{loss}; merged → iter_00/model")
