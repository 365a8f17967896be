"""Stage ``pairs`` (pure, no model): actor pairs from judge scores, judge pairs from meta-judge battles.

Algorithm.md Part A step 4 (length-controlled actor pairs, ρ per iteration) and step 5c–g (positional
weights, battle matrix, Bradley–Terry, length cap on the chosen judgment). Rows are TRL conversational
preference rows plus provenance ids, so TRL's DPOTrainer reads them as they are.
Writes ``pairs_actor.jsonl`` and ``pairs_judge.jsonl``. Exercised by: ``mrlite run recipes/smoke.yaml``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from mrlite.core import diagnostics
from mrlite.core.selection import position_weights_from_counts, select_actor_pair, select_judge_pairs, winner_matrix
from mrlite.core.prompts import render_judge
from mrlite.recipe import per_iter
from mrlite.rundir import atomic_write_jsonl, derive_seed, read_jsonl
from mrlite.stages import StageContext, module

log = logging.getLogger(__name__)


def applies(ctx: StageContext) -> bool:
    return ctx.t >= 1


def _meta_on(ctx: StageContext) -> bool:
    return module("meta_judge").applies(ctx)


def inputs(ctx: StageContext) -> list[Path]:
    names = ["prompts.jsonl", "responses.jsonl", "judgments.jsonl"]
    return [ctx.path(n) for n in names + (["meta_judgments.jsonl"] if _meta_on(ctx) else [])]


def outputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("pairs_actor.jsonl"), ctx.path("pairs_judge.jsonl")]


def config(ctx: StageContext) -> dict:
    p, t = ctx.recipe.pairs, ctx.t
    return {"guardrails": ctx.recipe.guardrails.model_dump(mode="json"), "rho": per_iter(p.rho, t),
            "length_unit": p.length_unit,
            "max_chosen_chars": per_iter(p.max_chosen_chars, t),
            "judge_max_chosen_chars": per_iter(p.judge_max_chosen_chars, t), "judge_share_cap": p.judge_share_cap,
            "position_weights": ctx.recipe.meta_judge.position_weights, "meta": _meta_on(ctx),
            "seed": ctx.recipe.loop.seed}


def actor_pairs(ctx: StageContext, prompts, responses, judgments) -> tuple[list[dict], dict]:
    cfg = config(ctx)
    scores: dict[str, list] = {}
    for j in judgments:
        scores.setdefault(j["response_id"], []).append(j["score"])
    by_prompt: dict[str, list[dict]] = {}
    for x in responses:
        by_prompt.setdefault(x["prompt_id"], []).append(x)
    rows, st = [], {"no_pair": 0, "too_long": 0, "unscored_responses": 0}
    for p in prompts:
        resps = by_prompt.get(p["prompt_id"], [])
        s = [diagnostics.mean_score(scores.get(x["response_id"], [])) for x in resps]
        st["unscored_responses"] += sum(1 for v in s if v is None)
        unit = "tokens" if cfg["length_unit"] == "tokens" else "chars"
        lengths = [x[unit] if x.get(unit) is not None else x["chars"] for x in resps]
        pick = select_actor_pair(s, lengths, cfg["rho"]) if resps else None
        if pick is None:
            st["no_pair"] += 1
            continue
        c, r = pick
        cap = cfg["max_chosen_chars"]
        if cap is not None and resps[c]["chars"] > cap:
            st["too_long"] += 1
            continue
        rows.append({
            "pair_id": f"{p['prompt_id']}:actor", "kind": "actor", "prompt_id": p["prompt_id"],
            "chosen_id": resps[c]["response_id"], "rejected_id": resps[r]["response_id"],
            "chosen_score": s[c], "rejected_score": s[r],
            "chosen_chars": resps[c]["chars"], "rejected_chars": resps[r]["chars"],
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": resps[c]["text"]}],
            "rejected": [{"role": "assistant", "content": resps[r]["text"]}],
        })
    return rows, st


def judge_pairs(ctx: StageContext, prompts, responses, judgments, metas, n_actor: int) -> tuple[list[dict], dict]:
    cfg = config(ctx)
    ptext = {p["prompt_id"]: p["prompt"] for p in prompts}
    rtext = {x["response_id"]: x["text"] for x in responses}
    jrow = {j["judgment_id"]: j for j in judgments}
    battles: dict[str, list[dict]] = {}
    for m in metas:
        battles.setdefault(m["response_id"], []).append(m)
    pooled = None
    if cfg["position_weights"] == "pooled":
        w = [m["winner"] for m in metas]
        pooled = position_weights_from_counts(w.count(1), w.count(-1))
    rows, st = [], {"no_pair": 0, "too_long": 0}
    fields: list[tuple[str, list[str], list[int]]] = []
    rs = []
    for rid, ms in battles.items():
        ids = sorted({(m["a_idx"], m["a"]) for m in ms} | {(m["b_idx"], m["b"]) for m in ms})
        players = [jid for _, jid in ids]
        idx = {jid: i for i, jid in enumerate(players)}
        rs.append(winner_matrix(len(players), [(idx[m["a"]], idx[m["b"]], m["winner"]) for m in ms]))
        fields.append((rid, players, [jrow[j]["chars"] for j in players]))
    if pooled is None and cfg["position_weights"] == "pooled":
        picks: list = [None] * len(rs)  # no decided battle in the whole iteration: no pooled weights, no pairs
    else:
        picks = select_judge_pairs(rs, weights=pooled)
    for (rid, players, lengths), pick in zip(fields, picks, strict=True):
        if pick is None:
            st["no_pair"] += 1
            continue
        c, rej = pick
        cap = cfg["judge_max_chosen_chars"]
        if cap is not None and lengths[c] > cap:
            st["too_long"] += 1
            continue
        jc, jr = jrow[players[c]], jrow[players[rej]]
        pid = jc["prompt_id"]
        rows.append({
            "pair_id": f"{pid}:judge", "kind": "judge", "prompt_id": pid, "response_id": rid,
            "chosen_id": jc["judgment_id"], "rejected_id": jr["judgment_id"],
            "chosen_score": jc["score"], "rejected_score": jr["score"],
            "chosen_chars": jc["chars"], "rejected_chars": jr["chars"],
            "prompt": [{"role": "user", "content": render_judge(ptext[pid], rtext[rid])}],
            "chosen": [{"role": "assistant", "content": jc["text"]}],
            "rejected": [{"role": "assistant", "content": jr["text"]}],
        })
    share = cfg["judge_share_cap"]
    st["capped"] = 0
    if share is not None and rows:
        keep = int(np.floor(share * n_actor / (1 - share))) if share < 1 else len(rows)
        if keep < len(rows):
            rng = np.random.default_rng(derive_seed(ctx.recipe.loop.seed, ctx.t, "judge_share"))
            chosen = sorted(rng.choice(len(rows), size=keep, replace=False).tolist())
            st["capped"] = len(rows) - keep
            rows = [rows[i] for i in chosen]
    return rows, st


def guardrail(ctx: StageContext, judgments: list[dict], metas: list[dict]) -> str | None:
    """Which check of ``guardrails`` this iteration's meta-judge and judge trip (the first one), or None."""
    g = ctx.recipe.guardrails
    battles = [(m["a_score"], m["b_score"], m["winner"]) for m in metas]
    pb = diagnostics.positional_bias(battles)
    if g.max_positional_bias is not None and pb is not None and max(pb, 1 - pb) > g.max_positional_bias:
        return (f"meta-judge positional bias: slot {'A' if pb >= 0.5 else 'B'} won {100 * max(pb, 1 - pb):.0f}% "
                f"of decided battles between equally scored judgments "
                f"(> guardrails.max_positional_bias {g.max_positional_bias})")
    sb = diagnostics.score_bias(battles)
    if g.max_score_bias is not None and sb is not None and sb > g.max_score_bias:
        return (f"meta-judge score bias: the higher-scored judgment won {100 * sb:.0f}% of decided battles "
                f"(> guardrails.max_score_bias {g.max_score_bias})")
    valid = [j["score"] for j in judgments if j["score"] is not None]
    if g.max_same_score_share is not None and valid:
        top, count = Counter(valid).most_common(1)[0]
        if count / len(valid) > g.max_same_score_share:
            return (f"judge collapse: {100 * count / len(valid):.0f}% of judgments give score {top} "
                    f"(> guardrails.max_same_score_share {g.max_same_score_share})")
    return None


def run(ctx: StageContext) -> dict:
    prompts = read_jsonl(ctx.path("prompts.jsonl"))
    responses = read_jsonl(ctx.path("responses.jsonl"))
    judgments = read_jsonl(ctx.path("judgments.jsonl"))
    actor, ast = actor_pairs(ctx, prompts, responses, judgments)
    atomic_write_jsonl(ctx.path("pairs_actor.jsonl"), actor)
    judge, jst = ([], {"no_pair": 0, "too_long": 0, "capped": 0})
    guard = action = None
    if _meta_on(ctx):
        metas = read_jsonl(ctx.path("meta_judgments.jsonl"))
        # The check never changes this iteration's pairs (the iteration that measured the bias): with
        # guardrails.mode 'stop' it ends judge training from the NEXT iteration on (meta_judge.applies).
        guard = guardrail(ctx, judgments, metas)
        judge, jst = judge_pairs(ctx, prompts, responses, judgments, metas, len(actor))
    if guard is not None:
        action = ctx.recipe.guardrails.mode
        then = (f"judge training stops from iteration {ctx.t + 1} on; this iteration's judge pairs are kept"
                if action == "stop" else "guardrails.mode is 'warn', judge training goes on")
        log.warning("iter %d: guardrail tripped: %s; %s", ctx.t, guard, then)
    atomic_write_jsonl(ctx.path("pairs_judge.jsonl"), judge)
    warn = ctx.recipe.guardrails.warn_judge_share
    total = len(actor) + len(judge)
    if warn is not None and total and len(judge) / total > warn:
        log.warning("iter %d: judge pairs are %.0f%% of the DPO set (> %.0f%%); NeMo-Aligner reports judges "
                    "collapsing to 'always 5' above ~15%%: consider pairs.judge_share_cap", ctx.t,
                    100 * len(judge) / total, 100 * warn)
    per_resp: dict[str, list] = {}
    for j in judgments:
        per_resp.setdefault(j["response_id"], []).append(j["score"])
    scored = [(x["chars"], diagnostics.mean_score(per_resp.get(x["response_id"], []))) for x in responses]

    def _avg(rows, key):
        return round(sum(x[key] for x in rows) / len(rows), 1) if rows else None

    return {
        "n_in": len(prompts), "n_out": len(actor) + len(judge), "actor_pairs": len(actor),
        "judge_pairs": len(judge), "guardrail": guard, "guardrail_action": action, "actor": ast, "judge": jst,
        "rho": config(ctx)["rho"],
        "chosen_chars": _avg(actor, "chosen_chars"), "rejected_chars": _avg(actor, "rejected_chars"),
        "judge_chosen_chars": _avg(judge, "chosen_chars"),
        "length_score_corr": diagnostics.length_score_correlation(
            [a for a, b in scored if b is not None], [b for a, b in scored if b is not None]),
    }


def summary_line(t: int, s: dict) -> str:
    a, j = s["actor"], s["judge"]
    stop = ""
    if s.get("guardrail"):
        stop = (f"; GUARDRAIL: {s['guardrail']} → judge training stops from iteration {t + 1}"
                if s.get("guardrail_action") == "stop" else f"; guardrail warning: {s['guardrail']}")
    return (f"pairs  iter {t}: {s['actor_pairs']} actor pairs (rho {s['rho']}, {a['no_pair']} prompts without a "
            f"pair, {a['too_long']} over the length cap; chosen {s['chosen_chars']} vs rejected "
            f"{s['rejected_chars']} chars), {s['judge_pairs']} judge pairs ({j['no_pair']} without, "
            f"{j['too_long']} over the cap, {j['capped']} over the share cap){stop}")
