"""Which battles the meta-judge runs for one response's judgments (Part A step 5b): every ordered pair, as in
the paper, or a budgeted, balanced subset in both orders (beyond the paper).

Pure (numpy only), deterministic given the ``rng`` passed in. Used by the meta-judge stage; exercised by
``mrlite run recipes/smoke.yaml`` and ``python benchmarks/battle_budget.py``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["battle_schedule"]


def _balanced_pairs(n: int, k: int) -> list[tuple[int, int]]:
    """k unordered pairs of range(n) whose degrees differ by at most one (circulant construction)."""
    # Distance class j = the pairs {v, v+j mod n}. For 2 <= j < n/2 a class has n pairs and adds 2 to every
    # degree; for even n, j = n/2 is a perfect matching (adds 1); j = 1 is the Hamiltonian cycle, which can be
    # cut anywhere in balance by taking alternate edges first. Whole classes first, the cycle last.
    pairs: list[tuple[int, int]] = []
    remaining = k
    reserve = n + (n // 2 if n % 2 == 0 else 0) if n > 2 else 1  # what the matching + cycle can absorb
    for j in range((n - 1) // 2, 1, -1):
        if remaining <= reserve:
            break
        pairs += [(v, (v + j) % n) for v in range(n)]
        remaining -= n
    if n % 2 == 0 and n > 2 and remaining > n:
        pairs += [(v, v + n // 2) for v in range(n // 2)]
        remaining -= n // 2
    if n == 2:
        cycle = [0]
    elif n % 2 == 0:
        cycle = [*range(0, n, 2), *range(1, n, 2)]
    else:  # odd n: the even edges leave v_{n-1} uncovered; the edge (v_{n-1}, v_0) covers it next
        cycle = [*range(0, n - 1, 2), n - 1, *range(1, n - 1, 2)]
    pairs += [(i, (i + 1) % n) for i in cycle[:remaining]]
    return pairs


def battle_schedule(n: int, budget: int | Literal["all"], rng: np.random.Generator) -> list[tuple[int, int]]:
    """Which ordered pairs of judgments the meta-judge compares (Part A step 5b; budgets are beyond the paper).

    ``"all"`` is the paper's design: every ordered pair (m, k), m ≠ k — n·(n−1) calls, 110 for n = 11.
    An integer budget schedules ``budget // 2`` unordered pairs and returns both orders of each, so positional
    bias still cancels pair by pair. The unordered pairs form an almost-regular graph — every player takes part
    in ⌊2q/n⌋ or ⌈2q/n⌉ of the q pairs — built from circulant distance classes on the player circle, with the
    players placed on that circle in the order ``rng.permutation(n)`` (one draw). A budget of at least n·(n−1)
    is the full design.

    Args:
        n: Number of players (valid judgments).
        budget: ``"all"`` or the maximum number of meta-judge calls for this prompt (≥ 2).
        rng: Generator for the player placement (not used for ``"all"``, a budget covering all pairs, or n < 2).

    Returns:
        Ordered pairs ``(m, k)`` (m shown as "Judgment A"), sorted row-major; empty for n < 2.

    Raises:
        ValueError: For an integer budget below 2 or a string other than ``"all"``.
    """
    if isinstance(budget, str):
        if budget != "all":
            raise ValueError(f"budget must be 'all' or an integer >= 2, got {budget!r}")
    elif isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 2:
        raise ValueError(f"budget must be 'all' or an integer >= 2, got {budget!r}")
    if n < 2:
        return []
    full = [(m, k) for m in range(n) for k in range(n) if m != k]
    if budget == "all" or int(budget) >= n * (n - 1):
        return full
    place = rng.permutation(n)
    unordered = [(int(place[a]), int(place[b])) for a, b in _balanced_pairs(n, int(budget) // 2)]
    return sorted(unordered + [(b, a) for a, b in unordered])
