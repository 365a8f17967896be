"""Win-rate statistics: verdict parsing, both-order aggregation, the length-controlled win rate on synthetic
preferences with a known length effect (the LC estimate must remove it) and against a direct implementation of
AlpacaEval's formula, the LC warnings, and judge-vs-judge agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval_helpers import alpacaeval_reference

from mrlite.eval.run import alpaca_annotations
from mrlite.eval.winrate import PromptResult, judge_agreement, lc_warnings, parse_verdict, summarize

pytest.importorskip("sklearn")


@pytest.mark.parametrize("text,verdict", [
    ("A is more detailed.\n[[A]]", 1),
    ("[[B]]", -1),
    ("Both are equally good. [[C]]", 0),
    ("My final verdict is [[A>>B]]", 1),
    ("[[B>A]]", -1),
    ("[[A=B]]", 0),
    ("Winner: Judgement A", None),       # the meta-judge's phrasing is no answer verdict
    ("**Winner:** Answer B", -1),
    ("Winner: tie", 0),
    ('Output "[[A]]" if A is better, "[[B]]" if B is better', None),  # an echoed format line
    ("I cannot decide.", None),
    ("[[D]]", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_both_orders_cancel_a_slot_bias():
    # A judge that always picks the first slot: every prompt is a tie, never a win.
    s = summarize([PromptResult(str(i), 1, 1, 100, 100) for i in range(20)], n_boot=0)
    assert s["win_rate"] == 0.5 and s["ties"] == 20 and s["consistency"] == 0.0 and s["first_slot"] == 1.0
    # A consistent judge preferring M_t: ab = +1 (t first wins), ba = -1 (t second wins).
    s = summarize([PromptResult(str(i), 1, -1, 100, 100) for i in range(20)], n_boot=0)
    assert s["win_rate"] == 1.0 and s["wins"] == 20 and s["consistency"] == 1.0 and s["first_slot"] == 0.5
    assert s["lc_win_rate"] > 0.99 and s["length_coef"] == 0.0  # one-sided: the weak penalty keeps it finite


def test_failed_verdicts_are_counted_never_scored():
    res = [PromptResult("a", 1, -1, 10, 10), PromptResult("b", None, -1, 10, 10), PromptResult("c", None, None, 1, 1)]
    s = summarize(res, n_boot=0)
    assert (s["prompts"], s["scored"], s["failed_prompts"], s["failed_verdicts"]) == (3, 1, 2, 3)
    assert s["win_rate"] == 1.0
    assert summarize([PromptResult("c", None, None, 1, 1)], n_boot=0)["win_rate"] is None


def _synthetic(beta0: float, beta_len: float, n: int = 400, shift: float = 1.0, slot: float = 0.6, seed: int = 0):
    """Prompts whose outcome follows logit P(M_t wins) = beta0 + beta_len * tanh(Δlen / 150) ± slot bias."""
    rng = np.random.default_rng(seed)
    base = rng.integers(200, 800, n)
    d = rng.normal(shift, 1.0, n) * 150
    res = []
    for i in range(n):
        f = math.tanh(d[i] / 150)
        vs = []
        for first in (True, False):
            p = 1 / (1 + math.exp(-(beta0 + beta_len * f + (slot if first else -slot))))
            win = rng.random() < p
            vs.append((1 if win else -1) if first else (-1 if win else 1))
        res.append(PromptResult(str(i), vs[0], vs[1], int(base[i] + d[i]), int(base[i])))
    return res


def test_lc_removes_a_known_length_effect():
    # Equal quality (beta0 = 0), but M_t writes longer answers and the judge likes length.
    s = summarize(_synthetic(0.0, 2.5), n_boot=60, seed=1)
    assert s["win_rate"] > 0.68                     # the raw number is inflated by length
    assert abs(s["lc_win_rate"] - 0.5) < 0.07       # LC recovers "no better"
    assert s["lc_ci"][0] < 0.5 < s["lc_ci"][1]
    assert s["win_rate_ci"][0] > 0.6
    assert s["length_coef"] > 1.5
    # Real quality (beta0 = 1 → 73 %) plus the same length effect: LC recovers 73 %, not the raw number.
    s = summarize(_synthetic(1.0, 2.5, seed=2), n_boot=0)
    assert abs(s["lc_win_rate"] - 1 / (1 + math.exp(-1))) < 0.07 and s["win_rate"] > 0.8


def test_lc_equals_raw_without_length_differences():
    s = summarize(_synthetic(0.8, 0.0, shift=0.0, seed=3), n_boot=0)
    assert abs(s["lc_win_rate"] - s["win_rate"]) < 0.04


def _mirrored(theta: float, slot: float, n: int = 400, seed: int = 0):
    """Verdicts from logit P(M_t wins) = theta ± slot (no length term); every verdict pattern appears once with
    M_t longer and once with M_t shorter by the same amount, so the sample itself carries no length effect."""
    rng = np.random.default_rng(seed)
    res = []
    for i in range(n):
        vs = []
        for first in (True, False):
            win = rng.random() < 1 / (1 + math.exp(-(theta + (slot if first else -slot))))
            vs.append((1 if win else -1) if first else (-1 if win else 1))
        base, d = int(rng.integers(200, 800)), int(rng.integers(1, 400))
        res += [PromptResult(f"{i}+", vs[0], vs[1], base + d, base), PromptResult(f"{i}-", vs[0], vs[1], base, base + d)]
    return res


def test_lc_equals_raw_under_a_strong_slot_bias_without_length_effect():
    # The judge picks the first slot ~90 % of the time; M_t is genuinely better (theta = 1). Reading a fit with a
    # position feature at its midpoint would report ~σ(1) = 73 %; averaged over both orders LC must equal raw.
    s = summarize(_mirrored(1.0, 2.5), n_boot=0)
    assert s["first_slot"] > 0.85 and 0.53 < s["win_rate"] < 0.65
    assert abs(s["lc_win_rate"] - s["win_rate"]) < 0.01
    assert abs(s["length_coef"]) < 1e-6 and s["lc_warnings"] == []


def _answers(res):
    t = [{"prompt": f"q{r.prompt_id}", "output": "t" * r.len_t, "generator": "M2"} for r in res]
    b = [{"prompt": f"q{r.prompt_id}", "output": "b" * r.len_base, "generator": "M0"} for r in res]
    return t, b


@pytest.mark.parametrize("beta0,beta_len,shift,slot,seed", [
    (0.0, 2.5, 1.0, 0.6, 0), (1.0, 2.5, 1.0, 0.6, 1), (0.5, 1.5, 0.5, 2.0, 2), (-0.5, 3.0, -0.8, 0.0, 3),
    (0.8, 2.0, 0.3, 1.0, 4),
])
def test_lc_agrees_with_a_direct_implementation_of_alpacaeval(beta0, beta_len, shift, slot, seed):
    res = _synthetic(beta0, beta_len, n=300, shift=shift, slot=slot, seed=seed)
    s = summarize(res, n_boot=0)
    rows = alpaca_annotations(*_answers(res), res, "judge")
    assert len(rows) == 300 and {r["preference"] for r in rows} <= {1.0, 1.5, 2.0}
    raw, lc = alpacaeval_reference(rows)
    assert abs(s["win_rate"] - raw) < 1e-12
    assert abs(s["lc_win_rate"] - lc) < 0.003  # well under one point: only the weak penalty differs
    assert abs(s["lc_win_rate"] - s["win_rate"]) > 0.02 or beta_len == 0  # the sets are length-biased


def test_annotation_rows_follow_alpacaeval():
    res = [PromptResult("a", 1, -1, 30, 10), PromptResult("b", 0, -1, 5, 10), PromptResult("c", 1, 1, 8, 9),
           PromptResult("d", -1, 1, 8, 9), PromptResult("e", None, 1, 8, 9)]
    rows = alpaca_annotations(*_answers(res), res, "judge-x")
    assert [r["preference"] for r in rows] == [2.0, 1.75, 1.5, 1.0]  # model won both / 1.5 of 2 / split / lost both
    assert rows[0] == {"instruction": "qa", "output_1": "b" * 10, "output_2": "t" * 30, "generator_1": "M0",
                       "generator_2": "M2", "annotator": "judge-x", "preference": 2.0}


def test_lc_warnings():
    longer = [PromptResult(str(i), 1, -1 if i % 3 else 1, 100 + i, 50) for i in range(20)]
    w = lc_warnings(longer, 0.8, 0.82)
    assert len(w) == 1 and w[0].startswith("not identifiable: M_t's answer is longer in 100% of the prompts")
    mixed = [PromptResult(str(i), 1, -1, 100 + (i % 2) * 100, 150) for i in range(20)]
    assert lc_warnings(mixed, 0.6, 0.7) == []
    gap = lc_warnings(mixed, 0.6, 0.8)
    assert len(gap) == 1 and "by 20.0 points" in gap[0]
    # summarize carries them
    s = summarize(_synthetic(0.0, 2.5, shift=3.0), n_boot=0)
    assert any(x.startswith("not identifiable") for x in s["lc_warnings"])


def test_judge_agreement():
    ref = [PromptResult(str(i), 1, -1, 10, 10) for i in range(10)]  # M_t wins in both orders
    own = ([PromptResult(str(i), 1, 1, 10, 10) for i in range(4)]  # slot-A judge: agrees in the first order only
           + [PromptResult(str(i), 1, -1, 10, 10) for i in range(4, 8)]  # agrees twice
           + [PromptResult("8", 0, -1, 10, 10), PromptResult("9", None, -1, 10, 10)])  # a tie; a failed verdict
    a = judge_agreement(own, ref, n_boot=100, seed=0)
    assert (a["pairs"], a["failed"], a["decisive"]) == (19, 1, 18)
    assert a["agreement"] == pytest.approx(14 / 19) and a["agreement_no_ties"] == pytest.approx(14 / 18)
    assert a["agreement_ci"][0] < 14 / 19 < a["agreement_ci"][1] <= 1.0
    assert judge_agreement(ref, ref, n_boot=0)["agreement"] == 1.0
