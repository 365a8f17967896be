"""Per-iteration diagnostics: the numbers the Meta-Rewarding paper reports, from plain lists.

Mean judge score and its histogram (the paper's Figure 5: mean ≈ 4.1 → > 4.7 after judge
training); the meta-judge's positional bias (slot-A share among equally scored battles) and score bias (Table 5:
score bias 63 % in iteration 1 → 97.7 % in iteration 2); pair counts and chosen/rejected lengths; the length–score correlation that length control
(ρ) is meant to keep in check (arXiv 2407.19594 §2.1, §3).

Every function returns ``None`` — never NaN — when its number is undefined (no data, nothing decided), so the
result serialises to JSON ``null``. Exercised by ``mrlite run`` (the stages' marker summaries), ``mrlite status``
and ``mrlite report``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "SCORE_BUCKETS",
    "decision_rate",
    "length_score_correlation",
    "mean_score",
    "meta_judge_bias",
    "positional_bias",
    "positional_bias_by_gap",
    "score_bias",
    "score_histogram",
    "slot_a_share",
]

#: Integer buckets of the 5-point additive rubric (0 is possible when no criterion is met).
SCORE_BUCKETS = (0, 1, 2, 3, 4, 5)
# Two scores closer than this count as equal (score bias) or as integer (histogram).
_TOL = 1e-9


def _is_missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _valid(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if not _is_missing(v)]


def decision_rate(winners: Sequence[int]) -> float | None:
    """Share of meta-judgments that named a winner (``parse_winner`` ≠ 0).

    Args:
        winners: ``parse_winner`` results (+1, -1, 0).

    Returns:
        The share in [0, 1], or ``None`` for an empty input.
    """
    if not winners:
        return None
    return sum(w != 0 for w in winners) / len(winners)


def mean_score(scores: Sequence[float | None]) -> float | None:
    """Mean of the valid scores.

    Args:
        scores: Judge scores; ``None``/NaN entries are skipped.

    Returns:
        The mean, or ``None`` when no score is valid.
    """
    valid = _valid(scores)
    if not valid:
        return None
    return math.fsum(valid) / len(valid)


def score_histogram(scores: Sequence[float | None], bins: Sequence[int] = SCORE_BUCKETS) -> dict[str, int]:
    """Count judge scores per integer bucket.

    Each valid score goes to the bucket of its nearest integer, rounding halves **up** (4.5 → "5"; Python's
    ``round`` would send 4.5 to 4 and 3.5 to 4). Because the paper notes that trained judges emit non-integer
    scores (4.5, 4.75 …), the histogram also counts how many scores were not integers. Keys are strings so the
    dict serialises to JSON unchanged.

    Args:
        scores: Judge scores (individual judgments or response means); ``None``/NaN count as ``"missing"``.
        bins: The integer buckets.

    Returns:
        ``{"0": c0, …, "5": c5, "non_integer": c, "out_of_range": c, "missing": c}``: per-bucket counts,
        how many valid scores were not integers (also counted in their bucket), how many rounded to no bucket,
        and how many were missing.
    """
    hist = {str(b): 0 for b in bins}
    non_integer = out_of_range = missing = 0
    for v in scores:
        if _is_missing(v):
            missing += 1
            continue
        x = float(v)  # type: ignore[arg-type]
        bucket = math.floor(x + 0.5)
        if abs(x - round(x)) > _TOL:
            non_integer += 1
        key = str(bucket)
        if key in hist:
            hist[key] += 1
        else:
            out_of_range += 1
    hist.update(non_integer=non_integer, out_of_range=out_of_range, missing=missing)
    return hist


def slot_a_share(winners: Sequence[int]) -> float | None:
    """Share of ALL decided meta-judge battles won by the first slot ("Judgment A").

    Context only: battles between differently scored judgments are mostly decided by the scores (score bias),
    which pulls this share towards 50 %; ``positional_bias`` is the paper's measure.

    Args:
        winners: ``parse_winner`` results (+1 = A, -1 = B, 0 = undecided, ignored).

    Returns:
        #(+1) / #(±1), or ``None`` if no battle was decided.
    """
    a = sum(w == 1 for w in winners)
    b = sum(w == -1 for w in winners)
    if a + b == 0:
        return None
    return a / (a + b)


def _gap(score_a: float | None, score_b: float | None) -> float | None:
    if _is_missing(score_a) or _is_missing(score_b):
        return None
    d = abs(float(score_a) - float(score_b))  # type: ignore[arg-type]
    return 0.0 if d <= _TOL else d


def positional_bias(battles: Sequence[tuple[float | None, float | None, int]]) -> float | None:
    """The paper's positional bias (Table 5): the share of "A" verdicts among decided battles whose two judgments
    carry the same score.

    With equal scores only the position is left to tell the judgments apart, so 0.5 is an unbiased meta-judge
    and 1.0 one that always picks the first slot (``slot_a_share`` over all battles dilutes this towards 0.5).

    Args:
        battles: ``(score_a, score_b, winner)`` per battle; battles with a missing score, different scores
            (beyond 1e-9) or no winner are left out.

    Returns:
        The share in [0, 1], or ``None`` if no battle qualifies.
    """
    return slot_a_share([w for a, b, w in battles if _gap(a, b) == 0.0])


#: Score-gap classes of ``positional_bias_by_gap`` (absolute difference of the two judgments' scores).
GAP_CLASSES = (("0", 0.0, 0.0), ("(0,1]", 0.0, 1.0), ("(1,2]", 1.0, 2.0), (">2", 2.0, math.inf))


def positional_bias_by_gap(battles: Sequence[tuple[float | None, float | None, int]]) -> dict[str, dict]:
    """Slot-A share of the decided battles per class of score gap ``|score_a - score_b|``.

    Returns:
        ``{"0": {"battles": n, "slot_a": share or None}, "(0,1]": ..., "(1,2]": ..., ">2": ...}``.
    """
    out = {}
    for name, lo, hi in GAP_CLASSES:
        ws = [w for a, b, w in battles if (g := _gap(a, b)) is not None and w != 0
              and (g == 0.0 if hi == 0.0 else lo < g <= hi)]
        out[name] = {"battles": len(ws), "slot_a": slot_a_share(ws)}
    return out


def meta_judge_bias(battles: Sequence[tuple[float | None, float | None, int]]) -> dict[str, object]:
    """Every bias number of one iteration's battles: ``positional_bias`` (equal scores, the paper's),
    ``slot_a_share`` (all decided battles), ``score_bias`` and ``positional_by_gap``."""
    return {"positional_bias": positional_bias(battles), "slot_a_share": slot_a_share([w for *_, w in battles]),
            "score_bias": score_bias(battles), "positional_by_gap": positional_bias_by_gap(battles)}


def score_bias(battles: Sequence[tuple[float | None, float | None, int]]) -> float | None:
    """Share of decided battles between differently scored judgments won by the higher-scored one.

    The paper's score bias (Table 5: 63.04 % in iteration 1 → 97.68 % in iteration 2): a meta-judge that just
    prefers the judgment with the higher score would reach 100 %.

    Args:
        battles: ``(score_a, score_b, winner)`` per battle: the scores of the judgments shown as A and B, and
            ``parse_winner``'s result. Battles with a missing score, equal scores (within 1e-9) or no winner
            are left out.

    Returns:
        The share in [0, 1], or ``None`` if no battle qualifies.
    """
    higher_won = counted = 0
    for score_a, score_b, winner in battles:
        if winner == 0 or _is_missing(score_a) or _is_missing(score_b):
            continue
        diff = float(score_a) - float(score_b)  # type: ignore[arg-type]
        if abs(diff) <= _TOL:
            continue
        counted += 1
        higher_won += (diff > 0) == (winner == 1)
    if counted == 0:
        return None
    return higher_won / counted


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing their average rank."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def length_score_correlation(lengths: Sequence[float], scores: Sequence[float | None]) -> float | None:
    """Spearman rank correlation between response length and score.

    Spearman rather than Pearson: lengths are heavy-tailed and scores sit on a coarse 5-point scale with many
    ties, so a rank correlation (ties given their average rank) is the robust choice. A positive value means
    the judge rewards length, the effect length control counters (arXiv 2407.19594 §2.1).

    Args:
        lengths: One length per response.
        scores: One score per response; pairs with a missing score are left out.

    Returns:
        ρ_s in [-1, 1], or ``None`` with fewer than two usable pairs or when either side is constant.

    Raises:
        ValueError: If ``lengths`` and ``scores`` differ in length.
    """
    if len(lengths) != len(scores):
        raise ValueError(f"lengths and scores differ in length: {len(lengths)} != {len(scores)}")
    pairs = [(float(n), float(s)) for n, s in zip(lengths, scores, strict=True) if not _is_missing(s)]  # type: ignore[arg-type]
    if len(pairs) < 2:
        return None
    rx = _average_ranks(np.array([p[0] for p in pairs]))
    ry = _average_ranks(np.array([p[1] for p in pairs]))
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if denom == 0.0:
        return None
    return max(-1.0, min(1.0, float((dx * dy).sum()) / denom))
