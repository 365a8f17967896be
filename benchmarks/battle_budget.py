"""How many meta-judge calls per prompt does the judge pair need? Budgeted schedules vs the paper's 110.

The paper runs the meta-judge on every ordered pair of the selected response's N = 11 judgments
(N·(N−1) = 110 calls per prompt, arXiv 2407.19594 §2.2), the dominant cost of an iteration.
``mrlite.core.battles.battle_schedule(n, budget, rng)`` schedules only ``budget // 2`` unordered pairs (both orders
each, balanced over players). This benchmark simulates Bradley-Terry players — latent judgment quality
θ ~ N(0, spread²) — and a meta-judge with positional bias, P(A wins) = σ(θ_A − θ_B + bias), that names no
winner 4 % of the time. For each simulated prompt it draws all 110 outcomes once; the full design uses all of
them, a budgeted design the scheduled subset of the *same* outcomes. It reports how often the budgeted design
picks the same chosen AND the same rejected judgment as the full design, and (for context) how often each
design's chosen/rejected are the truly best/worst judgment and the mean latent-quality gap θ_chosen − θ_rejected
of the pairs it does make (what a DPO pair's margin depends on; the ideal is θ_max − θ_min).

Run: ``python benchmarks/battle_budget.py [--prompts 2000] [--spread 1.0] [--bias 0.6] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrlite.core.battles import battle_schedule
from mrlite.core.selection import select_judge_pairs

N_PLAYERS = 11
BUDGETS: list[int | str] = [10, 20, 30, 40, 60, 80, "all"]
NO_VERDICT = 0.04


def simulate(rng: np.random.Generator, n_prompts: int, spread: float, bias: float) -> tuple[list, np.ndarray]:
    """Full result matrices r (one per prompt) and the latent strengths."""
    theta = rng.normal(0.0, spread, (n_prompts, N_PLAYERS))
    logit = theta[:, :, None] - theta[:, None, :] + bias
    a_wins = rng.random(logit.shape) < 1.0 / (1.0 + np.exp(-logit))
    r = np.where(a_wins, 1, -1).astype(np.int8)
    r[rng.random(r.shape) < NO_VERDICT] = 0
    r[:, np.arange(N_PLAYERS), np.arange(N_PLAYERS)] = 0
    return list(r), theta


def run(n_prompts: int, spread: float, bias: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    full_rs, theta = simulate(rng, n_prompts, spread, bias)
    best, worst = theta.argmax(axis=1), theta.argmin(axis=1)
    full = select_judge_pairs(full_rs)
    has_full = np.array([p is not None for p in full])
    won_by_a = sum(int((r == 1).sum()) for r in full_rs) / sum(int((r != 0).sum()) for r in full_rs)
    print(
        f"\n{n_prompts} prompts, N = {N_PLAYERS} judgments, θ spread {spread}, positional bias {bias} "
        f"(slot A wins {won_by_a:.1%} of decided battles), seed {seed}; "
        f"ideal θ gap {float((theta.max(axis=1) - theta.min(axis=1)).mean()):.2f}"
    )
    print(
        f"{'budget':>7} {'calls':>6} {'same chosen':>12} {'same rejected':>14} {'same both':>10} "
        f"{'no pair':>8} {'chosen=best':>12} {'rejected=worst':>15} {'θ gap':>6}"
    )
    for budget in BUDGETS:
        t = time.perf_counter()
        rs, calls = [], 0
        for r in full_rs:
            schedule = battle_schedule(N_PLAYERS, budget, rng)  # type: ignore[arg-type]
            calls += len(schedule)
            masked = np.zeros_like(r)
            if schedule:
                m, k = np.array(schedule).T
                masked[m, k] = r[m, k]
            rs.append(masked)
        pairs = select_judge_pairs(rs)
        same_c = same_r = same_both = no_pair = true_c = true_r = 0
        gap = 0.0
        for p, (pair, ref) in enumerate(zip(pairs, full, strict=True)):
            if pair is None:
                no_pair += 1
                continue
            true_c += pair[0] == best[p]
            true_r += pair[1] == worst[p]
            gap += theta[p, pair[0]] - theta[p, pair[1]]
            if ref is None:
                continue
            same_c += pair[0] == ref[0]
            same_r += pair[1] == ref[1]
            same_both += pair == ref
        denom = max(int(has_full.sum()), 1)
        print(
            f"{budget!s:>7} {calls / n_prompts:6.0f} {same_c / denom:12.1%} {same_r / denom:14.1%} "
            f"{same_both / denom:10.1%} {no_pair / n_prompts:8.1%} {true_c / n_prompts:12.1%} "
            f"{true_r / n_prompts:15.1%} {gap / max(n_prompts - no_pair, 1):6.2f}   "
            f"({time.perf_counter() - t:.1f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=None, help="θ std; default: run 1.0 and 0.5")
    parser.add_argument("--bias", type=float, default=0.6, help="positional bias (logit) towards slot A")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for spread in [args.spread] if args.spread is not None else [1.0, 0.5]:
        run(args.prompts, spread, args.bias, args.seed)


if __name__ == "__main__":
    main()
