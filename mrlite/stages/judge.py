"""Stage ``judge``: N judgments per response with the Self-Rewarding additive 5-point prompt.

Algorithm.md Part A step 3 (prompt: Part B §2.1). A judgment's score is ``parse_score(text)``; an unparseable
one is kept with ``score: null`` and counted — never coerced ("failure is data"). With ``judge.force_parse``
the generator appends ``Score: `` and lets the model pick the digit; such rows say ``parsed_from: forced``.
Writes ``judgments.jsonl``. Exercised by: ``mrlite run recipes/smoke.yaml --only judge --iter 1``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mrlite.backends.base import GenRequest
from mrlite.core.diagnostics import mean_score, score_histogram
from mrlite.core.parsing import parse_score
from mrlite.core.prompts import render_judge
from mrlite.rundir import atomic_write_jsonl, derive_seed, read_jsonl
from mrlite.stages import StageContext
from mrlite.stages._gen import generate_in_chunks, sampling_of


def applies(ctx: StageContext) -> bool:
    return ctx.t >= 1


def inputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("prompts.jsonl"), ctx.path("responses.jsonl")]


def outputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("judgments.jsonl")]


def config(ctx: StageContext) -> dict:
    r = ctx.recipe
    return {"judge": r.judge.model_dump(mode="json"), "policy": ctx.policy_fingerprint(), "seed": r.loop.seed,
            "chunk_size": r.loop.chunk_size, "model": r.model.model_dump(mode="json"), "generator": r.backends.generator,
            "backend": r.backends.model_dump(mode="json")[r.backends.generator]}


def run(ctx: StageContext) -> dict:
    r = ctx.recipe
    low, high = r.judge.score_range
    prompts = {p["prompt_id"]: p["prompt"] for p in read_jsonl(ctx.path("prompts.jsonl"))}
    responses = read_jsonl(ctx.path("responses.jsonl"))
    units: dict[str, list[dict]] = {}
    for resp in responses:
        units.setdefault(resp["prompt_id"], []).append(resp)
    unit_list = [(pid, units[pid]) for pid in prompts if pid in units]

    def build(unit) -> list[GenRequest]:
        pid, resps = unit
        return [GenRequest(id=x["response_id"],
                           messages=[{"role": "user", "content": render_judge(prompts[pid], x["text"])}],
                           n=r.judge.n, seed=derive_seed(r.loop.seed, ctx.t, "judge", x["response_id"]),
                           role="judge", force="score" if r.judge.force_parse else None) for x in resps]

    def collect(unit, outs) -> tuple[list[dict], dict]:
        pid, _ = unit
        rows, st = [], Counter()
        for req, comps in outs:
            if comps is None:
                st["responses_too_long"] += 1
                continue
            for j, c in enumerate(comps):
                score = parse_score(c.text, low=low, high=high)
                src = None if score is None else ("forced" if c.forced else "text")
                st[src or "null"] += 1
                rows.append({"judgment_id": f"{req.id}:j{j:02d}", "response_id": req.id, "prompt_id": pid,
                             "j": j, "text": c.text, "score": score, "parsed_from": src, "chars": len(c.text)})
        return rows, st

    rows, st = generate_in_chunks(ctx, "judge", unit_list, build, collect, sampling_of(r.judge))
    atomic_write_jsonl(ctx.path("judgments.jsonl"), rows)
    scores = [x["score"] for x in rows]
    n = len(rows)
    return {"n_in": len(responses), "n_out": n, "judgments": n, "parsed_text": st.get("text", 0),
            "parsed_forced": st.get("forced", 0), "forced_share": round(st.get("forced", 0) / n, 4) if n else None,
            "unparsable": st.get("null", 0),
            "responses_too_long": st.get("responses_too_long", 0),
            "mean_score": mean_score(scores), "histogram": score_histogram(scores)}


def summary_line(t: int, s: dict) -> str:
    n = max(1, s["judgments"])
    mean = "n/a" if s["mean_score"] is None else f"{s['mean_score']:.2f}"
    return (f"judge  iter {t}: {s['judgments']} judgments, {s['unparsable']} unparsable "
            f"({100 * s['unparsable'] / n:.1f}%), {s['parsed_forced']} forced ({100 * s['parsed_forced'] / n:.1f}%), "
            f"mean score {mean}")
