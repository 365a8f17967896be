"""Stage ``meta_judge``: the model compares pairs of its own judgments of one response per prompt.

Algorithm.md Part A step 5a–b (prompt: Part B §3.1): per prompt, the response whose valid judge scores have
the highest variance (seeded tie-break); every ordered pair of its valid judgments is a battle, with j_m as
"Judgment A" and j_n as "Judgment B" (both orders), unless ``meta_judge.budget`` schedules fewer. Each verdict
is ``parse_winner(text)`` ∈ {+1, −1, 0}. Runs only in ``meta_judge.iterations`` (paper: 1 and 2).
Writes ``meta_judgments.jsonl``. Exercised by: ``mrlite run recipes/smoke.yaml --only meta_judge --iter 1``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from mrlite.backends.base import GenRequest
from mrlite.core.battles import battle_schedule
from mrlite.core.diagnostics import meta_judge_bias
from mrlite.core.fmt import pct
from mrlite.core.selection import highest_variance
from mrlite.core.parsing import parse_winner
from mrlite.core.prompts import render_meta_judge, strip_score_line
from mrlite.rundir import atomic_write_jsonl, derive_seed, read_jsonl
from mrlite.stages import StageContext
from mrlite.stages._gen import generate_in_chunks, sampling_of


def applies(ctx: StageContext) -> bool:
    mj = ctx.recipe.meta_judge
    return ctx.t >= 1 and mj.enabled and ctx.t in mj.iterations and judge_training_stopped(ctx) is None


def judge_training_stopped(ctx: StageContext) -> str | None:
    """The guardrail that stopped judge training in an earlier iteration (from its pairs marker), if any.

    Only ``guardrails.mode: stop`` stops, and only from the iteration after the one that measured the bias."""
    for s in range(1, ctx.t):
        m = ctx.run.read_marker(s, "pairs")
        summary = (m or {}).get("summary", {})
        if summary.get("guardrail") and summary.get("guardrail_action", "stop") == "stop":
            return f"iteration {s}: {summary['guardrail']}"
    return None


def inputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("prompts.jsonl"), ctx.path("responses.jsonl"), ctx.path("judgments.jsonl")]


def outputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("meta_judgments.jsonl")]


def config(ctx: StageContext) -> dict:
    r = ctx.recipe
    return {"meta_judge": r.meta_judge.model_dump(mode="json"), "policy": ctx.policy_fingerprint(),
            "seed": r.loop.seed, "chunk_size": r.loop.chunk_size, "model": r.model.model_dump(mode="json"),
            "generator": r.backends.generator,
            "backend": r.backends.model_dump(mode="json")[r.backends.generator]}


def select_players(ctx: StageContext) -> tuple[list[dict], int]:
    """Per prompt: the highest-variance response and its valid judgments (the players)."""
    r = ctx.recipe
    prompts = read_jsonl(ctx.path("prompts.jsonl"))
    responses = {x["response_id"]: x for x in read_jsonl(ctx.path("responses.jsonl"))}
    by_prompt: dict[str, dict[str, list[dict]]] = {}
    for j in read_jsonl(ctx.path("judgments.jsonl")):
        by_prompt.setdefault(j["prompt_id"], {}).setdefault(j["response_id"], []).append(j)
    units, none = [], 0
    for p in prompts:
        resp_js = by_prompt.get(p["prompt_id"])
        if not resp_js:
            continue
        rids = list(resp_js)
        rng = np.random.default_rng(derive_seed(r.loop.seed, ctx.t, "meta_select", p["prompt_id"]))
        pick = highest_variance([[j["score"] for j in resp_js[rid]] for rid in rids], rng)
        if pick is None:
            none += 1
            continue
        players = [j for j in resp_js[rids[pick]] if j["score"] is not None]
        battles = battle_schedule(len(players), r.meta_judge.budget,
                                  np.random.default_rng(derive_seed(r.loop.seed, ctx.t, "schedule", p["prompt_id"])))
        units.append({"prompt": p, "response": responses[rids[pick]], "players": players, "battles": battles})
    return units, none


def run(ctx: StageContext) -> dict:
    r = ctx.recipe
    mj = r.meta_judge
    units, no_selection = select_players(ctx)

    def shown(j: dict) -> str:
        return j["text"] if mj.show_scores else strip_score_line(j["text"])

    def build(u: dict) -> list[GenRequest]:
        pl = u["players"]
        reqs = []
        for m, n in u["battles"]:
            a, b = pl[m], pl[n]
            rid = f"{a['judgment_id']}|{b['judgment_id']}"
            text = render_meta_judge(u["prompt"]["prompt"], u["response"]["text"], shown(a), shown(b))
            reqs.append(GenRequest(id=rid, messages=[{"role": "user", "content": text}], n=1,
                                   seed=derive_seed(r.loop.seed, ctx.t, "meta_judge", rid), role="meta_judge",
                                   force="winner" if mj.force_parse else None))
        return reqs

    def collect(u: dict, outs) -> tuple[list[dict], dict]:
        pl, rows, st = u["players"], [], Counter()
        for (m, n), (req, comps) in zip(u["battles"], outs, strict=True):
            if comps is None:
                st["too_long"] += 1
                continue
            c = comps[0]
            w = parse_winner(c.text)
            src = None if w == 0 and not c.forced else ("forced" if c.forced else "text")
            st[src or "none"] += 1
            rows.append({"meta_id": req.id, "prompt_id": u["prompt"]["prompt_id"],
                         "response_id": u["response"]["response_id"], "a": pl[m]["judgment_id"],
                         "b": pl[n]["judgment_id"], "a_idx": m, "b_idx": n, "a_score": pl[m]["score"],
                         "b_score": pl[n]["score"], "text": c.text, "winner": w, "parsed_from": src})
        return rows, st

    rows, st = generate_in_chunks(ctx, "meta_judge", units, build, collect, sampling_of(mj))
    atomic_write_jsonl(ctx.path("meta_judgments.jsonl"), rows)
    winners = [x["winner"] for x in rows]
    return {"n_in": len(units), "n_out": len(rows), "prompts": len(units), "no_selection": no_selection,
            "battles": len(rows), "undecided": sum(1 for w in winners if w == 0),
            "parsed_forced": st.get("forced", 0), "forced_share": round(st.get("forced", 0) / len(rows), 4) if rows
            else None, "battles_too_long": st.get("too_long", 0),
            **meta_judge_bias([(x["a_score"], x["b_score"], x["winner"]) for x in rows])}


def summary_line(t: int, s: dict) -> str:
    n = max(1, s["battles"])
    return (f"meta_judge iter {t}: {s['prompts']} prompts, {s['battles']} battles, {s['undecided']} undecided "
            f"({100 * s['undecided'] / n:.1f}%), {s['parsed_forced']} forced ({100 * s['parsed_forced'] / n:.1f}%), "
            f"positional bias {pct(s['positional_bias'])} (slot A among equal scores; all battles "
            f"{pct(s.get('slot_a_share'))}), higher-score wins {pct(s['score_bias'])}, "
            f"{s['no_selection']} prompts without a judge-pair candidate")
