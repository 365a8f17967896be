"""Table tests for mrlite.core.selection (actor pairs, highest variance, positional weights, Elo, judge pairs) and
mrlite.core.battles (the battle schedule).

Expectations are worked out by hand from design/algorithm.md Part A steps 3-5 (comments show the arithmetic).
Run: ``python -m pytest tests/test_pairs.py -q``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrlite.core.battles import battle_schedule
from mrlite.core.selection import (
    battle_matrix,
    bradley_terry,
    highest_variance,
    position_weights,
    position_weights_from_counts,
    position_win_counts,
    select_actor_pair,
    select_judge_pair,
    select_judge_pairs,
    winner_matrix,
)

# ---------------------------------------------------------------------------------------------------------
# Step 4: actor pairs with length control
# ---------------------------------------------------------------------------------------------------------

# Part B §5.2 worked example: (score, length) per response.
WORKED = [(5.0, 1900), (4.2, 1500), (3.5, 1200), (2.5, 2400), (2.0, 1800)]
W_SCORES = [s for s, _ in WORKED]
W_LENGTHS = [n for _, n in WORKED]

ACTOR_CASES = [
    # ρ = 0.32: top tier ≥ 0.68·5 + 0.32·2 = 4.04 → {5.0, 4.2}, shortest = 4.2 (1500);
    # bottom tier ≤ 0.68·2 + 0.32·5 = 2.96 → {2.5, 2.0}, longest = 2.5 (2400).
    ("worked example rho=0.32", W_SCORES, W_LENGTHS, 0.32, (1, 3)),
    # ρ = 0: plain best vs worst.
    ("worked example rho=0", W_SCORES, W_LENGTHS, 0.0, (0, 4)),
    # ρ = 0.5: tiers ≥ 3.5 and ≤ 3.5 → top {5.0, 4.2, 3.5} shortest 3.5 (1200); bottom {3.5, 2.5, 2.0}
    # longest 2.5 (2400).
    ("worked example rho=0.5", W_SCORES, W_LENGTHS, 0.5, (2, 3)),
    # A score equal to the top boundary in decimal (4.04) must be in the tier despite binary rounding.
    ("boundary score in top tier", [5.0, 4.04, 2.0], [100, 10, 50], 0.32, (1, 2)),
    ("boundary score in bottom tier", [5.0, 2.96, 2.0], [10, 500, 50], 0.32, (0, 1)),
    # Boundaries that binary arithmetic puts a hair on the wrong side: 0.68·3 + 0.32·0.75 evaluates to
    # 2.2800000000000002 > 2.28, and 0.6·1.5 + 0.4·2.25 to 1.7999999999999998 < 1.8. SCORE_TOL keeps them in.
    ("float boundary top", [3.0, 2.28, 0.75], [100, 10, 50], 0.32, (1, 2)),
    ("float boundary bottom", [2.25, 1.8, 1.5], [10, 500, 50], 0.4, (0, 1)),
    # None / NaN scores take no part.
    ("None scores ignored", [None, 5.0, None, 1.0], [1, 100, 1, 50], 0.0, (1, 3)),
    ("NaN scores ignored", [float("nan"), 5.0, 1.0], [1, 100, 50], 0.0, (1, 2)),
    # No pair: fewer than two scored, all equal.
    ("one scored", [None, 4.0, None], [1, 2, 3], 0.0, None),
    ("none scored", [None, None], [1, 2], 0.0, None),
    ("empty", [], [], 0.32, None),
    ("all equal", [4.0, 4.0, 4.0], [10, 20, 30], 0.32, None),
    ("equal up to float noise", [0.1 + 0.2, 0.3], [10, 20], 0.0, None),
    # Chosen ties: same length → higher score → lower index.
    # top ≥ 0.68·5 + 0.32·1 = 3.72 → {0, 1, 2}; shortest 50 → {1, 2} equal score → index 1.
    ("chosen tie: lower index", [5.0, 4.5, 4.5, 1.0], [100, 50, 50, 10], 0.32, (1, 3)),
    ("chosen tie: higher score", [4.5, 5.0, 1.0], [50, 50, 10], 0.32, (1, 2)),
    # Rejected ties: bottom ≤ 0.6·1 + 0.4·5 = 2.6 → {1, 2, 3} all 80 → lowest score 1.0 → index 2.
    ("rejected tie: lower score", [5.0, 2.0, 1.0, 1.5], [10, 80, 80, 80], 0.4, (0, 2)),
    ("rejected tie: lower index", [5.0, 1.0, 1.0], [10, 80, 80], 0.0, (0, 1)),
    # ρ = 0.5: the tiers meet at 3; the same response is shortest-top and longest-bottom → no pair.
    ("rho=0.5 same response", [5.0, 3.0, 1.0], [100, 10, 5], 0.5, None),
    # ρ = 0.5: chosen and rejected different but equal scores → not strictly better → no pair.
    ("rho=0.5 equal scores", [5.0, 3.0, 3.0, 1.0], [100, 10, 50, 5], 0.5, None),
    # Length control can pick a chosen that is longer than the rejected: allowed.
    ("chosen longer than rejected", [5.0, 1.0], [300, 100], 0.32, (0, 1)),
]


@pytest.mark.parametrize(
    ("scores", "lengths", "rho", "expected"),
    [case[1:] for case in ACTOR_CASES],
    ids=[case[0] for case in ACTOR_CASES],
)
def test_select_actor_pair(
    scores: list[float | None],
    lengths: list[int],
    rho: float,
    expected: tuple[int, int] | None,
) -> None:
    assert select_actor_pair(scores, lengths, rho) == expected


@pytest.mark.parametrize("rho", [-0.01, 0.51, 1.0, float("nan")])
def test_select_actor_pair_bad_rho(rho: float) -> None:
    with pytest.raises(ValueError, match="rho"):
        select_actor_pair(W_SCORES, W_LENGTHS, rho)


def test_select_actor_pair_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        select_actor_pair([5.0, 1.0], [10], 0.0)


def test_select_actor_pair_positional_call() -> None:
    assert select_actor_pair(W_SCORES, W_LENGTHS, 0.32) == (1, 3)  # the pairs stage's call
    with pytest.raises(TypeError):  # the chosen-length cap is the stage's (it counts what it drops), not a 4th argument
        select_actor_pair(W_SCORES, W_LENGTHS, 0.32, 2000)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------------------
# Step 5a: highest variance
# ---------------------------------------------------------------------------------------------------------

HV_CASES = [
    # sample variances: 0, 8, 0.5 → index 1
    ("clear maximum", [[4, 4, 4], [1, 5], [3, 4]], 1),
    # first response has one valid score only → ignored
    ("None ignored", [[None, 5, None], [2, 3]], 1),
    ("NaN ignored", [[float("nan"), 1, 5], [2, 3]], 0),
    ("all zero variance", [[4, 4], [5, 5, 5], [3]], None),
    ("nobody has two", [[4], [None, 5], []], None),
    ("empty", [], None),
    # Sample (ddof=1), not population variance: [4, 5] → 0.5 (pop 0.25);
    # [3,3,4×5... ] = [3,3,4,4,4,4,4,4,4,5,5] → ss = 4 → 0.4 (pop 0.364). Population would pick index 1.
    ("sample variance", [[4, 5], [3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5]], 0),
    # order of the judgments does not matter, bit for bit
    ("order independent tie", [[4.1, 4.7, 3.3], [3.3, 4.1, 4.7], [4, 4]], "tie01"),
]


@pytest.mark.parametrize(("scores", "expected"), [c[1:] for c in HV_CASES], ids=[c[0] for c in HV_CASES])
def test_highest_variance(scores: list[list[float | None]], expected: int | str | None) -> None:
    got = highest_variance(scores, np.random.default_rng(0))
    if expected == "tie01":
        assert got in (0, 1)
    else:
        assert got == expected


def test_highest_variance_tie_rule() -> None:
    # [1, 5] and [5, 1] tie (variance 8); [0, 0] has none. The documented rule: tied indices ascending,
    # pick tied[rng.integers(len(tied))].
    scores = [[1, 5], [5, 1], [0, 0], [2, 6]]  # 0, 1 and 3 tie
    for seed in range(20):
        expected = [0, 1, 3][int(np.random.default_rng(seed).integers(3))]
        assert highest_variance(scores, np.random.default_rng(seed)) == expected
    picks = {highest_variance(scores, np.random.default_rng(seed)) for seed in range(50)}
    assert picks == {0, 1, 3}


def test_highest_variance_no_draw_without_tie() -> None:
    rng = np.random.default_rng(7)
    state = rng.bit_generator.state
    assert highest_variance([[1, 5], [4, 4]], rng) == 0
    assert rng.bit_generator.state == state


# ---------------------------------------------------------------------------------------------------------
# Steps 5b-5d: result matrix, positional weights, battle matrix
# ---------------------------------------------------------------------------------------------------------


def test_winner_matrix() -> None:
    r = winner_matrix(3, [(0, 1, 1), (1, 0, -1), (2, 0, 0), (1, 2, 1)])
    assert r.tolist() == [[0, 1, 0], [-1, 0, 1], [0, 0, 0]]
    assert r.dtype == np.int8


@pytest.mark.parametrize(
    "battles",
    [[(0, 0, 1)], [(0, 3, 1)], [(-1, 0, 1)], [(0, 1, 2)], [(0, 1, 1), (0, 1, -1)]],
    ids=["diagonal", "out of range", "negative", "bad winner", "duplicate"],
)
def test_winner_matrix_errors(battles: list[tuple[int, int, int]]) -> None:
    with pytest.raises(ValueError):
        winner_matrix(3, battles)


WEIGHT_CASES = [
    # 3 first-slot wins, 1 second-slot win: ω1 = 1/4, ω2 = 3/4
    ("biased to A", [[0, 1, 1], [1, 0, 0], [0, -1, 0]], (3, 1), (0.25, 0.75)),
    ("balanced", [[0, 1], [1, 0]], (2, 0), (0.0, 1.0)),
    ("one each", [[0, 1], [-1, 0]], (1, 1), (0.5, 0.5)),
    ("diagonal ignored", [[1, 0], [0, -1]], (0, 0), None),
    ("no winner", [[0, 0, 0], [0, 0, 0], [0, 0, 0]], (0, 0), None),
    ("empty", np.zeros((0, 0), dtype=int), (0, 0), None),
]


@pytest.mark.parametrize(
    ("r", "counts", "expected"), [c[1:] for c in WEIGHT_CASES], ids=[c[0] for c in WEIGHT_CASES]
)
def test_position_weights(r: list[list[int]], counts: tuple[int, int], expected: tuple | None) -> None:
    assert position_win_counts(r) == counts
    assert position_weights(r) == expected
    assert position_weights_from_counts(*counts) == expected


def test_position_weights_from_counts_errors() -> None:
    with pytest.raises(ValueError):
        position_weights_from_counts(-1, 2)


@pytest.mark.parametrize("r", [[[0, 2], [0, 0]], [[0, 0.5], [0, 0]], [[0, 1, 0]], [0, 1]])
def test_bad_r(r: object) -> None:
    with pytest.raises(ValueError):
        position_weights(r)  # type: ignore[arg-type]


def test_battle_matrix_by_hand() -> None:
    # r[0][1] = +1: 0 wins from slot A → B[0][1] += ω1.  r[1][0] = -1: 0 wins from slot B → B[0][1] += ω2.
    # r[1][2] = +1: B[1][2] += ω1.  r[2][1] = +1: 2 wins from slot A → B[2][1] += ω1.
    # r[0][2] = 0, r[2][0] = -1: 0 wins from slot B → B[0][2] += ω2.
    r = [[1, 1, 0], [-1, 0, 1], [-1, 1, 0]]  # r[0][0] = 1: the diagonal is ignored
    w1, w2 = 0.3, 0.7
    expected = [[0.0, 1.0, 0.7], [0.0, 0.0, 0.3], [0.0, 0.3, 0.0]]
    np.testing.assert_allclose(battle_matrix(r, w1, w2), expected, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------------------
# Step 5e: Bradley-Terry
# ---------------------------------------------------------------------------------------------------------


def _bt_gradient(b: np.ndarray, eps: np.ndarray, l2: float = 1e-4) -> np.ndarray:
    """Independent gradient of Σ B_mn log σ(ε_m − ε_n) − l2/2·|ε|², written out term by term."""
    n = len(eps)
    g = np.zeros(n)
    for m in range(n):
        for k in range(n):
            if m == k:
                continue
            p_mk = 1.0 / (1.0 + math.exp(-(eps[m] - eps[k])))
            g[m] += b[m, k] * (1.0 - p_mk) - b[k, m] * p_mk
    return g - l2 * eps


def test_bt_zero_matrix() -> None:
    np.testing.assert_array_equal(bradley_terry(np.zeros((4, 4))), np.zeros(4))


def test_bt_symmetric_results_equal_scores() -> None:
    eps = bradley_terry(np.ones((3, 3)))
    assert np.ptp(eps) < 1e-12


def test_bt_cycle_is_degenerate() -> None:
    # rock-paper-scissors: 0 > 1 > 2 > 0, once each → all equal
    b = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    assert np.ptp(bradley_terry(b)) < 1e-9


def test_bt_two_players_log_odds() -> None:
    # Unregularised MLE: ε0 − ε1 = log(3/1); the 1e-4 L2 term shifts it by ~1e-4 relative.
    eps = bradley_terry(np.array([[0.0, 3.0], [1.0, 0.0]]))
    assert eps[0] - eps[1] == pytest.approx(math.log(3), rel=1e-3)
    assert eps.sum() == pytest.approx(0.0, abs=1e-12)


def test_bt_strict_ranking_ordered() -> None:
    # 0 beats 1 and 2, 1 beats 2 (once each): ε0 > ε1 > ε2, and by symmetry ε1 = 0, ε0 = −ε2.
    b = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=float)
    eps = bradley_terry(b)
    assert eps[0] > eps[1] > eps[2]
    assert eps[1] == pytest.approx(0.0, abs=1e-9)
    assert eps[0] == pytest.approx(-eps[2], abs=1e-9)
    np.testing.assert_allclose(_bt_gradient(b, eps), 0.0, atol=1e-8)


def test_bt_one_player_wins_everything_is_finite() -> None:
    b = np.zeros((11, 11))
    b[0, 1:] = 1.0
    eps = bradley_terry(b)
    assert np.isfinite(eps).all()
    assert int(np.argmax(eps)) == 0
    assert np.ptp(eps[1:]) < 1e-9  # the losers are interchangeable
    assert abs(eps.mean()) < 1e-12
    np.testing.assert_allclose(_bt_gradient(b, eps), 0.0, atol=1e-8)


def test_bt_total_order_is_finite_and_ordered() -> None:
    b = np.triu(np.ones((11, 11)), 1)  # i beats j for every i < j
    eps = bradley_terry(b)
    assert np.isfinite(eps).all()
    assert (np.diff(eps) < 0).all()


@pytest.mark.parametrize("seed", range(5))
def test_bt_stationary_point(seed: int) -> None:
    rng = np.random.default_rng(seed)
    b = rng.uniform(0, 2, (7, 7)) * (rng.uniform(size=(7, 7)) < 0.6)
    eps = bradley_terry(b)
    np.testing.assert_allclose(_bt_gradient(b, eps), 0.0, atol=1e-8)
    assert abs(eps.mean()) < 1e-12


def test_bt_stack_equals_single() -> None:
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 2, (20, 6, 6)).astype(float)
    together = bradley_terry(stack)
    for i in range(20):
        np.testing.assert_array_equal(together[i], bradley_terry(stack[i]))


def test_bt_ignores_diagonal_and_does_not_mutate() -> None:
    b = np.array([[9.0, 1.0], [0.0, 9.0]])
    before = b.copy()
    eps = bradley_terry(b)
    np.testing.assert_array_equal(b, before)
    np.testing.assert_array_equal(eps, bradley_terry(np.array([[0.0, 1.0], [0.0, 0.0]])))


@pytest.mark.parametrize(
    "b", [[[0, -1], [0, 0]], [[0, float("inf")], [0, 0]], [[0, 1, 2]], np.zeros((2, 2, 3))]
)
def test_bt_errors(b: object) -> None:
    with pytest.raises(ValueError):
        bradley_terry(b)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Steps 5c-5g: judge pairs
# ---------------------------------------------------------------------------------------------------------


def _ranked_r(order: list[int], n: int) -> np.ndarray:
    """r for a consistent meta-judge: the player earlier in `order` wins in both orders."""
    pos = {p: i for i, p in enumerate(order)}
    r = np.zeros((n, n), dtype=int)
    for m in range(n):
        for k in range(n):
            if m != k:
                r[m, k] = 1 if pos[m] < pos[k] else -1
    return r


def _always(n: int, value: int) -> np.ndarray:
    r = np.full((n, n), value, dtype=int)
    np.fill_diagonal(r, 0)
    return r


def _wins_both_orders(n: int, star: int, seed: int) -> np.ndarray:
    """Random results, except that `star` wins every battle in both orders."""
    r = np.random.default_rng(seed).choice([-1, 0, 1], (n, n))
    r[star, :] = 1
    r[:, star] = -1
    np.fill_diagonal(r, 0)
    return r


JUDGE_CASES = [
    # Pure positional bias carries no signal: always "A" → ω1 = 0 → B = 0 → degenerate.
    ("always A", _always(11, 1), None, None),
    ("always B", _always(11, -1), None, None),
    ("no winners", np.zeros((5, 5), dtype=int), None, None),
    ("all ties but one", winner_matrix(3, [(0, 1, 1)]), None, None),  # ω1 = 0 kills it
    # Consistent ranking 2 > 0 > 3 > 1 in both orders.
    ("consistent ranking", _ranked_r([2, 0, 3, 1], 4), None, (2, 1)),
    ("winner in both orders (seed 0)", _wins_both_orders(11, 4, 0), None, (4, "any")),
    ("winner in both orders (seed 1)", _wins_both_orders(7, 0, 1), None, (0, "any")),
    ("winner in both orders (seed 2)", _wins_both_orders(5, 2, 2), None, (2, "any")),
    # Ties in ε go to the lowest index: 0 and 1 both beat 2 in both orders and tie each other.
    (
        "chosen tie → lowest index",
        winner_matrix(3, [(0, 2, 1), (2, 0, -1), (1, 2, 1), (2, 1, -1)]),
        None,
        (0, 2),
    ),
    (
        "rejected tie → lowest index",
        winner_matrix(3, [(0, 1, 1), (1, 0, -1), (0, 2, 1), (2, 0, -1)]),
        None,
        (0, 1),
    ),
    # Pooled weights override the response's own: own ω1 = 0 would zero the only win.
    ("pooled weights", winner_matrix(2, [(0, 1, 1)]), (0.5, 0.5), (0, 1)),
    ("pooled weights, always A", _always(4, 1), (0.5, 0.5), None),
]


@pytest.mark.parametrize(
    ("r", "weights", "expected"),
    [c[1:] for c in JUDGE_CASES],
    ids=[c[0] for c in JUDGE_CASES],
)
def test_select_judge_pair(
    r: np.ndarray,
    weights: tuple[float, float] | None,
    expected: tuple | None,
) -> None:
    got = select_judge_pair(r, weights=weights)
    if expected is not None and expected[1] == "any":
        assert got is not None and got[0] == expected[0] and got[1] != expected[0]
    else:
        assert got == expected
    # The batched path gives the same answer.
    assert select_judge_pairs([r], weights=weights) == [got]


def test_positional_bias_does_not_change_the_ranking() -> None:
    # True order 3 > 1 > 0 > 2, but the meta-judge also answers "A" whenever the stronger player is
    # in slot B and the gap is one rank (a positional flip). Wins in both orders still decide.
    order = [3, 1, 0, 2]
    r = _ranked_r(order, 4)
    pos = {p: i for i, p in enumerate(order)}
    for m in range(4):
        for k in range(4):
            if m != k and pos[k] == pos[m] - 1:
                r[m, k] = 1  # biased answer
    assert select_judge_pair(r) == (3, 2)


def test_select_judge_pairs_matches_single() -> None:
    rng = np.random.default_rng(11)
    rs = []
    for _ in range(200):
        n = int(rng.integers(2, 12))
        r = rng.choice([-1, 0, 1], (n, n), p=[0.35, 0.1, 0.55])
        np.fill_diagonal(r, 0)
        rs.append(r)
    single = [select_judge_pair(r) for r in rs]
    assert select_judge_pairs(rs) == single
    assert any(p is not None for p in single) and any(p is None for p in single)


# ---------------------------------------------------------------------------------------------------------
# Battle schedule (beyond the paper)
# ---------------------------------------------------------------------------------------------------------


def test_schedule_all_row_major() -> None:
    s = battle_schedule(11, "all", np.random.default_rng(0))
    assert len(s) == 110
    assert s[:3] == [(0, 1), (0, 2), (0, 3)]
    assert s[-1] == (10, 9)
    assert s == sorted(s) and len(set(s)) == 110
    assert all(m != k for m, k in s)
    assert battle_schedule(3, "all", np.random.default_rng(0)) == [
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 2),
        (2, 0),
        (2, 1),
    ]


@pytest.mark.parametrize(
    ("n", "budget", "calls"),
    [
        (11, 10, 10),
        (11, 11, 10),
        (11, 20, 20),
        (11, 60, 60),
        (11, 109, 108),
        (11, 110, 110),
        (11, 500, 110),
        (4, 2, 2),
        (4, 12, 12),
        (2, 2, 2),
        (2, 7, 2),
        (1, 10, 0),
        (0, "all", 0),
    ],
)
def test_schedule_counts(n: int, budget: int | str, calls: int) -> None:
    assert len(battle_schedule(n, budget, np.random.default_rng(0))) == calls  # type: ignore[arg-type]


@pytest.mark.parametrize("n", range(2, 12))
def test_schedule_both_orders_and_balance(n: int) -> None:
    for budget in range(2, n * (n - 1) + 1):
        for seed in range(3):
            s = battle_schedule(n, budget, np.random.default_rng(seed))
            pairs = set(s)
            assert len(pairs) == len(s), "no battle twice"
            assert all((k, m) in pairs for m, k in s), "both orders of every pair"
            assert all(m != k and 0 <= m < n and 0 <= k < n for m, k in s)
            appearances = np.zeros(n, dtype=int)
            for m, _ in s:
                appearances[m] += 1
            assert appearances.max() - appearances.min() <= 1, (n, budget, seed, appearances)


def test_schedule_deterministic_and_seeded() -> None:
    a = battle_schedule(11, 30, np.random.default_rng(5))
    b = battle_schedule(11, 30, np.random.default_rng(5))
    assert a == b
    others = {tuple(battle_schedule(11, 30, np.random.default_rng(seed))) for seed in range(10)}
    assert len(others) > 1


@pytest.mark.parametrize("budget", [0, 1, -4, "some", True, 2.5])
def test_schedule_bad_budget(budget: object) -> None:
    with pytest.raises(ValueError):
        battle_schedule(5, budget, np.random.default_rng(0))  # type: ignore[arg-type]


def test_schedule_with_judge_pair() -> None:
    # A consistent meta-judge on a budgeted schedule: the best and worst still play, so they are found
    # whenever both are scheduled against others (here: every player appears at least twice).
    n = 11
    full = _ranked_r(list(range(n)), n)
    s = battle_schedule(n, 40, np.random.default_rng(1))
    r = winner_matrix(n, [(m, k, int(full[m, k])) for m, k in s])
    assert select_judge_pair(r) == (0, n - 1)  # the true best and worst
