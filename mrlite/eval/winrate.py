"""Pairwise win rates from verdicts judged in both orders: ties, positional consistency, bootstrap intervals and
the length-controlled (LC) win rate as AlpacaEval 2 defines it.

Every prompt is judged twice, once with M_t's answer shown first and once second. A prompt's preference for
M_t is the share of the two orders M_t won (a tie counts one half), so a judge that always picks one slot
yields 0.5, not a win; the raw win rate is the mean of these preferences over the prompts.

The LC win rate follows AlpacaEval-LC (Dubois et al. 2024, arXiv 2404.04475) without its instruction-difficulty
term, which needs AlpacaEval's own 805 instructions: a logistic model of each prompt's preference on
``tanh(Δlen / std(Δlen))`` (Δlen = M_t's answer minus the baseline's, in characters; std with ddof 1, as pandas)
plus a model term, both weakly regularised, read out at Δlen = 0. Fitting the per-prompt preference is the
same as fitting both orders with no position feature, i.e. averaging over the two presentation orders, and it
is exactly what AlpacaEval's GLM (``length_controlled_minimal``) fits on the ``annotations_<label>.json`` files
``mrlite eval`` writes. Intervals: percentile bootstrap over prompts. Exercised by: ``mrlite eval runs/smoke``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mrlite.core.parsing import parse_pairwise

LC_NAME = "LC win rate (AlpacaEval-style, no instruction-difficulty term)"
"""The LC number's name wherever it is shown (summary, report, CLI)."""
LC_C = 100.0
"""Inverse L2 strength of the LC fit (both terms, as scikit-learn's ``C``): weak, only to keep the fit finite
when the preferences are (nearly) one-sided. AlpacaEval picks its (L1) strength by cross-validation."""
LC_SAME_SIGN = 0.9
"""LC is not identifiable when at least this share of the length differences has one sign."""
LC_MAX_GAP = 0.15
"""LC is suspect when it differs from the raw win rate by more than this (15 points)."""

parse_verdict = parse_pairwise
"""The pairwise verdict: +1 (first answer better), -1 (second), 0 (tie), ``None`` (see ``parsing.parse_pairwise``)."""


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

    @property
    def preference(self) -> float | None:
        """Share of the two orders M_t won (tie = ½); ``None`` unless both verdicts are present."""
        a, b = outcome(self.ab, True), outcome(self.ba, False)
        return None if a is None or b is None else (a + b) / 2


def length_features(len_t: Sequence[float], len_base: Sequence[float]) -> np.ndarray:
    """``tanh(Δlen / std(Δlen))`` per prompt, Δlen = ``len_t - len_base`` (std with ddof 1; no scaling when 0)."""
    d = np.asarray(len_t, dtype=float) - np.asarray(len_base, dtype=float)
    s = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return np.tanh(d / s if s > 0 else d)


def fit_lc(pref: np.ndarray, feat: np.ndarray, *, c: float = LC_C) -> tuple[float, float]:
    """Fit ``logit P(M_t wins) = θ + β·feat`` to per-prompt preferences; returns ``(LC win rate, β)``.

    Each prompt enters twice, as a win weighted by its preference and as a loss weighted by the rest (a
    continuous target, as AlpacaEval does). ``θ`` and ``β`` carry an L2 penalty of ``1 / (2c)``; the LC win
    rate is the model's prediction at Δlen = 0, ``σ(θ)``.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.column_stack([np.ones_like(feat), feat])
    # Zero-weight rows stay in: both labels are then always present, and a one-sided set is fitted like any other.
    m = LogisticRegression(C=c, fit_intercept=False, solver="newton-cholesky", max_iter=200, tol=1e-10)
    m.fit(np.vstack([x, x]), np.r_[np.ones(len(pref)), np.zeros(len(pref))], sample_weight=np.r_[pref, 1.0 - pref])
    theta, beta = (float(v) for v in m.coef_[0])
    return 1.0 / (1.0 + math.exp(-theta)), beta


def length_controlled(res: Sequence[PromptResult], *, n_boot: int = 0, seed: int = 0,
                      level: float = 0.95) -> tuple[float | None, float | None, list[float] | None]:
    """LC win rate, its length coefficient and (with ``n_boot``) a bootstrap interval over prompts.

    Args:
        res: Scored prompts (both verdicts present).
        n_boot: Bootstrap resamples; 0 = no interval.
        seed: Bootstrap seed.
        level: Interval coverage.

    Returns:
        ``(lc_win_rate, length_coef, ci)``; ``(None, None, None)`` without prompts. ``length_coef`` is β of
        ``tanh(Δlen / std)``: positive when the judge favours the longer answer. A bootstrap resample recomputes
        the std, as AlpacaEval would on that sample.
    """
    if not res:
        return None, None, None
    pref = np.array([r.preference for r in res], dtype=float)
    lt, lb = np.array([r.len_t for r in res], float), np.array([r.len_base for r in res], float)
    lc, coef = fit_lc(pref, length_features(lt, lb))
    ci = None
    if n_boot > 0 and len(res) > 1:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(n_boot):
            i = rng.integers(0, len(res), len(res))
            draws.append(fit_lc(pref[i], length_features(lt[i], lb[i]))[0])
        ci = [float(np.percentile(draws, (1 - level) / 2 * 100)), float(np.percentile(draws, (1 + level) / 2 * 100))]
    return lc, coef, ci


def lc_warnings(res: Sequence[PromptResult], win_rate: float | None, lc: float | None) -> list[str]:
    """Why the LC number may not mean much (AlpacaEval warns on large LC-vs-raw gaps too); ``[]`` when fine.

    * at least ``LC_SAME_SIGN`` of the length differences share a sign: length and quality cannot be told
      apart, so the read-out at Δlen = 0 is an extrapolation;
    * LC and the raw win rate differ by more than ``LC_MAX_GAP``.
    """
    out = []
    d = [r.len_t - r.len_base for r in res]
    if len(d) > 1:
        longer, shorter = sum(x > 0 for x in d), sum(x < 0 for x in d)
        share = max(longer, shorter) / len(d)
        if share >= LC_SAME_SIGN:
            who = "longer" if longer >= shorter else "shorter"
            out.append(f"not identifiable: M_t's answer is {who} in {100 * share:.0f}% of the prompts, so the "
                       "length term and the model term cannot be told apart (LC extrapolates to equal lengths)")
    if lc is not None and win_rate is not None and abs(lc - win_rate) > LC_MAX_GAP:
        out.append(f"LC differs from the raw win rate by {100 * abs(lc - win_rate):.1f} points (more than "
                   f"{100 * LC_MAX_GAP:.0f}): the length fit dominates; read it with care")
    return out


def summarize(results: Sequence[PromptResult], *, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Win rate of M_t over the baseline from both-order verdicts.

    Args:
        results: One entry per prompt; prompts with a missing verdict are counted as failed, never scored.
        n_boot: Bootstrap resamples (over prompts) for the intervals; 0 = no intervals.
        seed: Bootstrap seed.
        level: Interval coverage.

    Returns:
        A JSON-ready dict: ``prompts``, ``scored``, ``failed_prompts``, ``failed_verdicts``, ``wins``, ``ties``,
        ``losses`` (per prompt), ``win_rate`` and ``win_rate_ci``, ``lc_win_rate`` and ``lc_ci`` (``LC_NAME``),
        ``length_coef``, ``lc_warnings`` (``lc_warnings``), ``consistency`` (share of scored prompts whose two
        orders agree), ``first_slot`` (share of decisive verdicts for the answer shown first), mean lengths.
        Undefined numbers are ``None``.
    """
    scored = [r for r in results if r.ab is not None and r.ba is not None]
    failed_verdicts = sum((r.ab is None) + (r.ba is None) for r in results)
    prefs = np.array([r.preference for r in scored])
    decisive = [v for r in results for v in (r.ab, r.ba) if v]
    out = {
        "prompts": len(results), "scored": len(scored), "failed_prompts": len(results) - len(scored),
        "failed_verdicts": failed_verdicts,
        "wins": int((prefs > 0.5).sum()), "ties": int((prefs == 0.5).sum()), "losses": int((prefs < 0.5).sum()),
        "win_rate": float(prefs.mean()) if len(prefs) else None, "win_rate_ci": None,
        "lc_win_rate": None, "lc_ci": None, "length_coef": None, "lc_warnings": [],
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
    out["lc_warnings"] = lc_warnings(scored, out["win_rate"], out["lc_win_rate"])
    if n_boot > 0 and len(scored) > 1:
        draws = np.random.default_rng(seed).integers(0, len(scored), size=(n_boot, len(scored)))
        raw = prefs[draws].mean(axis=1)
        out["win_rate_ci"] = [float(np.percentile(raw, (1 - level) / 2 * 100)),
                              float(np.percentile(raw, (1 + level) / 2 * 100))]
    return out


def judge_agreement(own: Sequence[PromptResult], ref: Sequence[PromptResult], *, n_boot: int = 200, seed: int = 0,
                    level: float = 0.95) -> dict:
    """Pairwise accuracy of one judge's verdicts (``own``, e.g. the model as judge) against a reference judge's
    (``ref``, e.g. GPT-4) on the same answer pairs, each order counted on its own.

    Args:
        own: Per-prompt verdicts of the judge under test, aligned with ``ref`` (same prompts, same answers).
        ref: The reference judge's.
        n_boot: Bootstrap resamples over prompts (both orders of a prompt move together); 0 = no intervals.
        seed: Bootstrap seed.
        level: Interval coverage.

    Returns:
        ``pairs`` (ordered judgments where both judges gave a verdict), ``agreement`` (share with the same
        outcome for M_t: win, tie or loss) and ``agreement_ci``; ``decisive`` (pairs where neither judge called a
        tie), ``agreement_no_ties`` and its ``agreement_no_ties_ci``; ``failed`` (orders where a verdict is
        missing). Undefined numbers are ``None``.
    """
    rows = []  # (prompt index, same outcome, both decisive)
    failed = 0
    for i, (a, b) in enumerate(zip(own, ref, strict=True)):
        for first in (True, False):
            x, y = outcome(a.ab if first else a.ba, first), outcome(b.ab if first else b.ba, first)
            if x is None or y is None:
                failed += 1
                continue
            rows.append((i, x == y, x != 0.5 and y != 0.5))
    arr = np.array(rows, dtype=float).reshape(-1, 3)

    def shares(r: np.ndarray) -> tuple[float | None, float | None]:
        d = r[r[:, 2] > 0]
        return (float(r[:, 1].mean()) if len(r) else None), (float(d[:, 1].mean()) if len(d) else None)

    agree, agree_nt = shares(arr)
    out = {"pairs": len(arr), "agreement": agree, "agreement_ci": None, "decisive": int(arr[:, 2].sum()),
           "agreement_no_ties": agree_nt, "agreement_no_ties_ci": None, "failed": failed}
    units = np.unique(arr[:, 0]).astype(int)
    if n_boot > 0 and len(units) > 1:
        by_unit = {u: arr[arr[:, 0] == u] for u in units}
        rng = np.random.default_rng(seed)
        draws = [shares(np.vstack([by_unit[u] for u in rng.choice(units, len(units))])) for _ in range(n_boot)]
        for key, k in (("agreement_ci", 0), ("agreement_no_ties_ci", 1)):
            vals = [d[k] for d in draws if d[k] is not None]
            if out[key.removesuffix("_ci")] is not None and vals:
                out[key] = [float(np.percentile(vals, (1 - level) / 2 * 100)),
                            float(np.percentile(vals, (1 + level) / 2 * 100))]
    return out
