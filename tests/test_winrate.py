"""Win-rate statistics: verdict parsing, both-order aggregation, and the length-controlled win rate on synthetic
preferences with a known length effect (the LC estimate must remove it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrlite.winrate import PromptResult, parse_verdict, summarize

pytest.importorskip("sklearn")


@pytest.mark.parametrize("text,verdict", [
    ("A is more detailed.\n[[A]]", 1),
    ("[[B]]", -1),
    ("Both are equally good. [[C]]", 0),
    ("My final verdict is [[A>>B]]", 1),
    ("[[B>A]]", -1),
    ("[[A=B]]", 0),
    ("Winner: Judgement A", 1),          # the fake backend's meta-judge phrasing
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
    assert s["lc_win_rate"] == 1.0 and s["length_coef"] is None  # one-sided: nothing to fit


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
