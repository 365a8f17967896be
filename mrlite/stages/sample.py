"""Stage ``sample`` (the actor): take this iteration's prompt slice and draw K responses per prompt.

Algorithm.md Part A steps 1–2: disjoint slices of the run's shuffled pool (``iter_00/pool.jsonl``, written by
the ``prompts`` stage), K seeded samples per prompt, exact
duplicates within a prompt (keep the first) and empty responses dropped and counted.
Writes ``prompts.jsonl`` and ``responses.jsonl``. Exercised by: ``mrlite run recipes/smoke.yaml --only sample``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrlite.backends.base import GenRequest
from mrlite.rundir import atomic_write_jsonl, derive_seed, read_jsonl
from mrlite.stages import StageContext, StageError
from mrlite.stages._gen import generate_in_chunks, sampling_of


def applies(ctx: StageContext) -> bool:
    return ctx.t >= 1


def inputs(ctx: StageContext) -> list[Path]:
    d = ctx.policy_dir()
    return [ctx.run.path(0, "pool.jsonl")] + ([d / "lineage.json"] if d is not None else [])


def outputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("prompts.jsonl"), ctx.path("responses.jsonl")]


def config(ctx: StageContext) -> dict:
    r = ctx.recipe
    return {
        "prompts_per_iteration": r.data.prompts_per_iteration, "shuffle": r.data.shuffle,
        "actor": r.actor.model_dump(mode="json"), "chunk_size": r.loop.chunk_size,
        "model": r.model.model_dump(mode="json"), "policy": ctx.policy_fingerprint(), "seed": r.loop.seed,
        "generator": r.backends.generator, "backend": r.backends.model_dump(mode="json")[r.backends.generator],
    }


def select_prompts(ctx: StageContext) -> tuple[list[dict], dict]:
    """This iteration's slice of the run's shuffled pool (``iter_00/pool.jsonl``; slices are disjoint across
    iterations)."""
    r = ctx.recipe
    pool = read_jsonl(ctx.run.path(0, "pool.jsonl"))
    order = np.arange(len(pool))
    if r.data.shuffle:
        order = np.random.default_rng(derive_seed(r.loop.seed, "pool")).permutation(len(pool))
    per = r.data.prompts_per_iteration
    lo, hi = (ctx.t - 1) * per, ctx.t * per
    if lo >= len(order):
        raise StageError(
            f"iter {ctx.t} sample: the prompt pool has {len(order)} prompts, all used by iterations 1..{ctx.t - 1} "
            f"({per} each); add prompts, lower data.prompts_per_iteration or loop.iterations"
        )
    idx = order[lo:hi]
    rows = [{"prompt_id": pool[i]["id"], "prompt": pool[i]["prompt"]} for i in idx]
    return rows, {"pool": len(order), "short_slice": max(0, hi - len(order))}


def run(ctx: StageContext) -> dict:
    r = ctx.recipe
    prompts, pool_stats = select_prompts(ctx)
    atomic_write_jsonl(ctx.path("prompts.jsonl"), prompts)

    def build(p: dict) -> list[GenRequest]:
        return [GenRequest(id=p["prompt_id"], messages=[{"role": "user", "content": p["prompt"]}], n=r.actor.n,
                           seed=derive_seed(r.loop.seed, ctx.t, "sample", p["prompt_id"]), role="actor")]

    def collect(p: dict, outs) -> tuple[list[dict], dict]:
        (_, comps), = outs
        rows, seen, st = [], set(), {"empty": 0, "duplicates": 0, "generated": 0}
        if comps is None:
            return rows, {"prompts_too_long": 1}
        for k, c in enumerate(comps):
            st["generated"] += 1
            if not c.text.strip():
                st["empty"] += 1
                continue
            if c.text in seen:
                st["duplicates"] += 1
                continue
            seen.add(c.text)
            rows.append({"response_id": f"{p['prompt_id']}:{k}", "prompt_id": p["prompt_id"], "k": k,
                         "text": c.text, "chars": len(c.text), "tokens": c.n_tokens})
        return rows, st

    rows, st = generate_in_chunks(ctx, "sample", prompts, build, collect, sampling_of(r.actor))
    atomic_write_jsonl(ctx.path("responses.jsonl"), rows)
    mean_chars = sum(x["chars"] for x in rows) / len(rows) if rows else 0.0
    return {"n_in": len(prompts), "n_out": len(rows), "prompts": len(prompts), "responses": len(rows),
            "generated": st.get("generated", 0), "empty": st.get("empty", 0),
            "duplicates": st.get("duplicates", 0), "prompts_too_long": st.get("too_long", 0),
            "mean_chars": round(mean_chars, 1), "pool": pool_stats}


def summary_line(t: int, s: dict) -> str:
    return (f"sample iter {t}: {s['prompts']} prompts → {s['responses']} responses "
            f"({s['duplicates']} duplicate, {s['empty']} empty dropped; {s['prompts_too_long']} prompts too long), "
            f"mean {s['mean_chars']:.0f} chars")
