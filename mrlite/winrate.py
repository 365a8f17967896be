"""Pairwise win rates from verdicts judged in both orders: ties, positional consistency, bootstrap intervals and
a length-controlled (LC) win rate.

Every prompt is judged twice, once with M_t's answer shown first and once second. A prompt's preference for
M_t is the mean of its two outcomes (win 1, tie 0.5, loss 0), so a judge that always picks one slot yields
0.5, not a win. The LC win rate follows AlpacaEval-LC (Dubois et al. 2024, arXiv 2404.04475): a logistic
model of the outcome on ``tanh(length difference / its std)`` (plus the slot shown), reported at zero length
difference, here fitted with scikit-learn (without AlpacaEval's per-instruction difficulty term, which needs
its 805-prompt Hub data). Intervals: percentile bootstrap over prompts. Exercised by: ``mrlite eval runs/smoke``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A final verdict: MT-Bench "[[A]]"/"[[B]]"/"[[C]]", Arena-Hard "[[A>B]]"..., or "Winner: (Answer|Judgement) A".
_BRACKET_RE = re.compile(r"\[\[\s*(A>>B|A>B|A=B|B>A|B>>A|A|B|C|tie)\s*\]\]", re.IGNORECASE)
_WINNER_RE = re.compile(
    r"winner\s*[:：]\s*[*_\[]*\s*(?:(?:judge?ment|answer|response|assistant|output|model)\s+)?(A|B|tie)\b",
    re.IGNORECASE,
)
_VALUE = {"a>>b": 1, "a>b": 1, "a": 1, "a=b": 0, "c": 0, "tie": 0, "b>a": -1, "b>>a": -1, "b": -1}
LC_C = 100.0
"""Inverse L2 strength of the LC fit: weak, only to keep the fit finite when outcomes are (nearly) separable."""


def parse_verdict(text: str) -> int | None:
    """The pairwise verdict: +1 (first answer better), -1 (second), 0 (tie), ``None`` (missing or conflicting).

    Every verdict in the text must agree (Arena-Hard's rule): an echoed format line such as
    ``"[[A]]" if ..., "[[B]]" if ...`` names several and is no verdict.
    """
    found = {_VALUE[m.group(1).lower()] for m in _BRACKET_RE.finditer(text)}
    found |= {_VALUE[m.group(1).lower()] for m in _WINNER_RE.finditer(text)}
    return found.pop() if len(found) == 1 else None


def outcome(verdict: int | None, t_first: bool) -> float | None:
    """M_t's outcome from one verdict: 1 win, 0.5 tie, 0 loss (``None`` when the verdict is missing)."""
    if verdict is None:
        return None
    v = verdict if t_first else -verdict
    return 0.5 if v == 0 else float(v > 0)


@dataclass
class PromptResult:
    """One prompt of a comparison: the verdicts with M_t first (``ab``) and second (``ba``), answer lengths."""

    prompt_id: str
    ab: int | None
    ba: int | None
    len_t: int
    len_base: int


def _fit_lc(y: np.ndarray, w: np.ndarray, x: np.ndarray) -> tuple[float, float] | None:
    """(P(win) at zero length difference and averaged slot, length coefficient), or None if one-sided."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y[w > 0])) < 2:
        return None
    # newton-cholesky: exact for 2 features and fast enough for a bootstrap; the intercept is not penalised.
    m = LogisticRegression(C=LC_C, solver="newton-cholesky", max_iter=200).fit(x, y, sample_weight=w)
    return 1.0 / (1.0 + math.exp(-float(m.intercept_[0]))), float(m.coef_[0][0])


def _design(res: Sequence[PromptResult], scale: float):
    """Rows (prompt, order) → prompt index, label, weight and features [tanh(Δlen/scale), slot shown].

    A tie becomes two half-weight rows (a win and a loss)."""
    rows = []
    for i, r in enumerate(res):
        f = math.tanh((r.len_t - r.len_base) / scale)
        for verdict, first in ((r.ab, True), (r.ba, False)):
            o = outcome(verdict, first)
            for label, weight in ((1.0, o), (0.0, 1.0 - o)):
                if weight > 0:
                    rows.append((i, label, weight, f, 1.0 if first else -1.0))
    a = np.array(rows, dtype=float).reshape(-1, 5)
    return a[:, 0].astype(int), a[:, 1], a[:, 2], a[:, 3:]


def _scale(res: Sequence[PromptResult]) -> float:
    d = np.array([r.len_t - r.len_base for r in res], dtype=float)
    s = float(d.std()) if len(d) > 1 else 0.0
    return s if s > 0 else 1.0


def length_controlled(res: Sequence[PromptResult], *, n_boot: int = 0, seed: int = 0,
                      level: float = 0.95) -> tuple[float | None, float | None, list[float] | None]:
    """LC win rate, its length coefficient and (with ``n_boot``) a bootstrap interval over prompts.

    Args:
        res: Scored prompts (both verdicts present).
        n_boot: Bootstrap resamples; 0 = no interval.
        seed: Bootstrap seed.
        level: Interval coverage.

    Returns:
        ``(lc_win_rate, length_coef, ci)``. The length difference is scaled by its std over ``res``. When every
        outcome is on one side the model cannot be fitted and the raw win rate stands in, with coefficient
        ``None``; ``(None, None, None)`` without prompts.
    """
    if not res:
        return None, None, None
    pid, y, w, x = _design(res, _scale(res))

    def fit(rows: np.ndarray) -> tuple[float, float | None]:
        got = _fit_lc(y[rows], w[rows], x[rows])
        return got if got is not None else (float(np.average(y[rows], weights=w[rows])), None)

    lc, coef = fit(np.arange(len(y)))
    ci = None
    if n_boot > 0 and len(res) > 1:
        by_prompt = [np.flatnonzero(pid == i) for i in range(len(res))]
        rng = np.random.default_rng(seed)
        draws = [fit(np.concatenate([by_prompt[i] for i in rng.integers(0, len(res), len(res))]))[0]
                 for _ in range(n_boot)]
        ci = [float(np.percentile(draws, (1 - level) / 2 * 100)), float(np.percentile(draws, (1 + level) / 2 * 100))]
    return lc, coef, ci


def summarize(results: Sequence[PromptResult], *, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Win rate of M_t over the baseline from both-order verdicts.

    Args:
        results: One entry per prompt; prompts with a missing verdict are counted as failed, never scored.
        n_boot: Bootstrap resamples (over prompts) for the intervals; 0 = no intervals.
        seed: Bootstrap seed.
        level: Interval coverage.

    Returns:
        A JSON-ready dict: ``prompts``, ``scored``, ``failed_prompts``, ``failed_verdicts``, ``wins``, ``ties``,
        ``losses`` (per prompt), ``win_rate`` and ``win_rate_ci``, ``lc_win_rate`` and ``lc_ci``,
        ``length_coef``, ``consistency`` (share of scored prompts whose two orders agree), ``first_slot``
        (share of decisive verdicts for the answer shown first), mean lengths. Undefined numbers are ``None``.
    """
    scored = [r for r in results if r.ab is not None and r.ba is not None]
    failed_verdicts = sum((r.ab is None) + (r.ba is None) for r in results)
    prefs = np.array([(outcome(r.ab, True) + outcome(r.ba, False)) / 2 for r in scored])
    decisive = [v for r in results for v in (r.ab, r.ba) if v]
    out = {
        "prompts": len(results), "scored": len(scored), "failed_prompts": len(results) - len(scored),
        "failed_verdicts": failed_verdicts,
        "wins": int((prefs > 0.5).sum()), "ties": int((prefs == 0.5).sum()), "losses": int((prefs < 0.5).sum()),
        "win_rate": float(prefs.mean()) if len(prefs) else None, "win_rate_ci": None,
        "lc_win_rate": None, "lc_ci": None, "length_coef": None,
        "consistency": (sum(outcome(r.ab, True) == outcome(r.ba, False) for r in scored) / len(scored)
                        if scored else None),
        "first_slot": sum(v > 0 for v in decisive) / len(decisive) if decisive else None,
        "mean_len_t": float(np.mean([r.len_t for r in scored])) if scored else None,
        "mean_len_base": float(np.mean([r.len_base for r in scored])) if scored else None,
    }
    if not scored:
        return out
    out["lc_win_rate"], out["length_coef"], out["lc_ci"] = length_controlled(scored, n_boot=n_boot, seed=seed,
                                                                              level=level)
    if n_boot > 0 and len(scored) > 1:
        draws = np.random.default_rng(seed).integers(0, len(scored), size=(n_boot, len(scored)))
        raw = prefs[draws].mean(axis=1)
        out["win_rate_ci"] = [float(np.percentile(raw, (1 - level) / 2 * 100)),
                              float(np.percentile(raw, (1 + level) / 2 * 100))]
    return out
