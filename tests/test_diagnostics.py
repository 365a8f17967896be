"""Table tests for mrlite.core.diagnostics (the per-iteration numbers the paper reports).

Run: ``python -m pytest tests/test_diagnostics.py -q``.
"""

from __future__ import annotations

import json
import math

import pytest

from mrlite.core.diagnostics import (
    decision_rate,
    length_score_correlation,
    mean_score,
    meta_judge_bias,
    positional_bias,
    positional_bias_by_gap,
    score_bias,
    slot_a_share,
    score_histogram,
)

NAN = float("nan")


@pytest.mark.parametrize(
    ("winners", "expected"),
    [([1, -1, 0, 0], 0.5), ([0], 0.0), ([1, 1], 1.0), ([], None)],
)
def test_decision_rate(winners: list[int], expected: float | None) -> None:
    assert decision_rate(winners) == expected


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([4, 5, None], 4.5), ([None], None), ([], None), ([NAN, 2.0], 2.0), ([0.1] * 10, 0.1)],
)
def test_mean_score(scores: list[float | None], expected: float | None) -> None:
    assert mean_score(scores) == expected


def _hist(counts: dict[str, int], non_integer: int = 0, out_of_range: int = 0, missing: int = 0) -> dict:
    base = {str(b): 0 for b in range(6)}
    base.update(counts)
    base.update(non_integer=non_integer, out_of_range=out_of_range, missing=missing)
    return base


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([4, 4, 5, 0, None], _hist({"4": 2, "5": 1, "0": 1}, missing=1)),
        # halves round up: 4.5 → 5, 3.5 → 4, 0.5 → 1; 4.25 → 4; 4.75 → 5
        ([4.5, 3.5, 0.5, 4.25, 4.75], _hist({"5": 2, "4": 2, "1": 1}, non_integer=5)),
        ([4.0, 3.0000000000001], _hist({"4": 1, "3": 1})),  # within 1e-9 of an integer
        ([6.0, -1.0, NAN], _hist({}, out_of_range=2, missing=1)),
        ([], _hist({})),
    ],
)
def test_score_histogram(scores: list[float | None], expected: dict) -> None:
    assert score_histogram(scores) == expected


def test_score_histogram_custom_bins_and_json() -> None:
    hist = score_histogram([1, 2, 2, 10], bins=(1, 2, 3))
    assert hist == {"1": 1, "2": 2, "3": 0, "non_integer": 0, "out_of_range": 1, "missing": 0}
    json.dumps(hist)


@pytest.mark.parametrize(
    ("winners", "expected"),
    [([1, 1, 1, -1], 0.75), ([1, 0, 0, -1], 0.5), ([-1, -1], 0.0), ([0, 0], None), ([], None)],
)
def test_slot_a_share(winners: list[int], expected: float | None) -> None:
    assert slot_a_share(winners) == expected


@pytest.mark.parametrize(
    ("battles", "expected"),
    [
        # only equally scored, decided battles count: 2 A wins of 3
        ([(4, 4, 1), (4.5, 4.5, 1), (3, 3, -1), (5, 3, -1), (2, 4, -1), (4, 4, 0), (None, 4, 1)], 2 / 3),
        ([(4, 4.0000000001, 1)], 1.0),  # within 1e-9: equal
        ([(5, 3, 1), (3, 5, 1)], None),  # no equally scored battle: undefined, not 100 %
        ([], None),
    ],
)
def test_positional_bias_is_the_slot_a_share_among_equal_scores(battles, expected) -> None:
    assert positional_bias(battles) == expected


def test_positional_bias_by_gap_and_all_numbers() -> None:
    battles = [(4, 4, 1), (4, 4, -1), (4.5, 4, 1), (5, 4, 1), (3, 5, -1), (5, 2, 1), (1, 5, 1), (4, 3, 0)]
    assert positional_bias_by_gap(battles) == {
        "0": {"battles": 2, "slot_a": 0.5}, "(0,1]": {"battles": 2, "slot_a": 1.0},
        "(1,2]": {"battles": 1, "slot_a": 0.0}, ">2": {"battles": 2, "slot_a": 1.0}}
    out = meta_judge_bias(battles)
    assert (out["positional_bias"], out["slot_a_share"]) == (0.5, 5 / 7)
    assert out["score_bias"] == 4 / 5  # the higher-scored judgment won 4 of the 5 decided unequal battles


@pytest.mark.parametrize(
    ("battles", "expected"),
    [
        # A higher & A wins; B higher & B wins; A higher & B wins → 2 of 3
        ([(5, 3, 1), (2, 4, -1), (4, 3, -1)], 2 / 3),
        # equal scores, no winner, missing scores are left out
        ([(4, 4, 1), (5, 3, 0), (None, 3, 1), (NAN, 1, -1), (5, 3, -1)], 0.0),
        ([(4.5, 4.25, 1)], 1.0),
        ([(4, 4.0000000001, 1)], None),  # within 1e-9: equal
        ([], None),
    ],
)
def test_score_bias(battles: list[tuple], expected: float | None) -> None:
    assert score_bias(battles) == expected


@pytest.mark.parametrize(
    ("lengths", "scores", "expected"),
    [
        ([100, 200, 300], [1, 2, 3], 1.0),
        ([100, 200, 300], [3, 2, 1], -1.0),
        # monotone but non-linear: Spearman is exactly 1 (Pearson would not be)
        ([1, 10, 1000, 100000], [1.0, 2.0, 2.5, 5.0], 1.0),
        # ties: ranks x = (1, 2, 3, 4), y = (1.5, 1.5, 3, 4) → ρ = 4.5 / sqrt(5 · 4.5) = 0.9486832981
        ([10, 20, 30, 40], [2, 2, 3, 4], 4.5 / math.sqrt(5 * 4.5)),
        ([10, 20, 30], [4, None, 5], 1.0),  # missing score skipped
        ([10, 20, 30], [4, 4, 4], None),  # constant scores
        ([10, 10, 10], [1, 2, 3], None),  # constant lengths
        ([10], [4], None),
        ([], [], None),
    ],
)
def test_length_score_correlation(
    lengths: list[int], scores: list[float | None], expected: float | None
) -> None:
    got = length_score_correlation(lengths, scores)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_length_score_correlation_mismatch() -> None:
    with pytest.raises(ValueError):
        length_score_correlation([1, 2], [1])
