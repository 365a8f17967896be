"""Per-iteration numbers read back from a run directory's files, for ``mrlite report``, ``mrlite eval`` and status.

Reads each iteration's JSONL files (streamed, keeping only the small fields) and ``train_metrics.jsonl``; a
missing file gives empty numbers, never an error, so a partial run still reports. The arithmetic is
``mrlite.core.diagnostics``'. Exercised by: ``mrlite report runs/smoke``.
"""

from __future__ import annotations

from pathlib import Path

from mrlite.core import diagnostics as dg
from mrlite.rundir import RunDir, iter_jsonl


def _rows(path: Path, keys: tuple[str, ...]):
    if not path.is_file():
        return []
    return [tuple(r.get(k) for k in keys) for r in iter_jsonl(path)]


def meta_judge_biases(rd: RunDir, t: int) -> dict | None:
    """The meta-judge's positional and score bias in iteration ``t`` (paper Table 5), or None without battles.

    Returns:
        ``{"battles", "decided", "forced", "forced_share", "decision_rate", "positional_bias" (slot-A share among
        equally scored battles), "slot_a_share" (all decided battles), "score_bias", "positional_by_gap"}``.
    """
    rows = _rows(rd.path(t, "meta_judgments.jsonl"), ("winner", "a_score", "b_score", "parsed_from"))
    if not rows:
        return None
    winners = [w for w, *_ in rows]
    return {"battles": len(rows), "decided": sum(w != 0 for w in winners),
            "forced": sum(src == "forced" for *_, src in rows),
            "forced_share": sum(src == "forced" for *_, src in rows) / len(rows),
            "decision_rate": dg.decision_rate(winners),
            **dg.meta_judge_bias([(a, b, w) for w, a, b, _ in rows])}


def iteration_stats(rd: RunDir, t: int) -> dict:
    """Everything the report plots for iteration ``t``.

    Returns:
        ``{"t", "prompts", "response_chars": [...], "scores": [...], "histogram", "mean_score",
        "judge_parse": {"text", "forced", "null", "total"}, "meta": meta_judge_biases(...),
        "pairs": {"actor", "judge", "actor_chosen", "actor_rejected", "judge_chosen", "judge_rejected"},
        "train": [metric rows], "length_score_corr", "guardrail": {"reason", "action"} or None}``.
    """
    resp = _rows(rd.path(t, "responses.jsonl"), ("response_id", "chars"))
    judg = _rows(rd.path(t, "judgments.jsonl"), ("response_id", "score", "parsed_from"))
    scores = [s for _, s, _ in judg]
    per_resp: dict[str, list] = {}
    for rid, s, _ in judg:
        per_resp.setdefault(rid, []).append(s)
    means = [dg.mean_score(per_resp.get(rid, [])) for rid, _ in resp]
    scored = [(c, m) for (_, c), m in zip(resp, means, strict=True) if m is not None]
    pa = _rows(rd.path(t, "pairs_actor.jsonl"), ("chosen_chars", "rejected_chars"))
    pj = _rows(rd.path(t, "pairs_judge.jsonl"), ("chosen_chars", "rejected_chars"))
    train = [r for r in iter_jsonl(rd.path(t, "train_metrics.jsonl"))] if rd.path(t, "train_metrics.jsonl").is_file() \
        else []
    prompts = rd.path(t, "prompts.jsonl")
    return {
        "t": t,
        "prompts": sum(1 for _ in iter_jsonl(prompts)) if prompts.is_file() else 0,
        "response_chars": [c for _, c in resp],
        "scores": scores,
        "histogram": dg.score_histogram(scores),
        "mean_score": dg.mean_score(scores),
        "judge_parse": {"text": sum(src == "text" for *_, src in judg), "forced": sum(src == "forced" for *_, src in judg),
                        "null": sum(s is None for s in scores), "total": len(judg)},
        "meta": meta_judge_biases(rd, t),
        "pairs": {"actor": len(pa), "judge": len(pj), "actor_chosen": [c for c, _ in pa],
                  "actor_rejected": [r for _, r in pa], "judge_chosen": [c for c, _ in pj],
                  "judge_rejected": [r for _, r in pj]},
        "train": train,
        "length_score_corr": dg.length_score_correlation([c for c, _ in scored], [m for _, m in scored])
        if scored else None,
        "guardrail": _guardrail(rd, t),
    }


def _guardrail(rd: RunDir, t: int) -> dict | None:
    """``{"reason", "action"}`` when a guardrail tripped in iteration ``t`` (from its pairs marker), else None."""
    summary = (rd.read_marker(t, "pairs") or {}).get("summary", {})
    if not summary.get("guardrail"):
        return None
    return {"reason": summary["guardrail"], "action": summary.get("guardrail_action", "stop")}


def run_iterations(rd: RunDir) -> list[int]:
    """Loop iterations (>= 1) that have a folder."""
    return [t for t in rd.iterations_present() if t >= 1]
