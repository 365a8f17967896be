"""Benchmark the pure algorithm core on one synthetic paper-scale iteration.

Paper scale (Meta-Rewarding, arXiv 2407.19594 §3.1; design/algorithm.md Part A "Cost per iteration"):
5,000 prompts × 7 responses × 11 judgments = 385,000 judge texts (≈5 % unparseable) → actor pairs with
ρ = 0.32 → highest-variance response per prompt → 110 meta-judge battles per prompt = 550,000 meta-judge
texts → judge pairs (positional weights + Bradley-Terry). Only the mrlite calls are timed; building the
synthetic texts is reported separately. Goal: ≤ 15 s and ≤ 1.5 GB peak RSS on a 2-core machine.

The meta-judge part uses all 11 judgment slots of the selected response as players (the paper's upper bound
of 110 battles per prompt), whether or not each of them parsed, so that the workload is exactly 550,000 texts.

Run: ``python benchmarks/core_paper_scale.py [--prompts 5000] [--seed 0] [--chunk 250]``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrlite.core.diagnostics import mean_score
from mrlite.core.battles import battle_schedule
from mrlite.core.selection import (
    highest_variance,
    select_actor_pair,
    select_judge_pair,
    select_judge_pairs,
    winner_matrix,
)
from mrlite.core.parsing import parse_score, parse_winner

K_RESPONSES = 7
N_JUDGMENTS = 11
RHO = 0.32
MAX_CHOSEN_JUDGMENT = 1100  # paper, iteration 1 (chars)
CHUNK = 250  # prompts whose texts exist at once; keeps RSS independent of the prompt count

_SENTENCES = [
    "The response is relevant and provides information related to the user's inquiry.",
    "It addresses a substantial portion of the question, although a few details are missing.",
    "The answer covers the basic elements of the question in a useful way.",
    "It is clearly written from an AI Assistant's perspective and is well organised.",
    "There is slight room for improvement in clarity and conciseness.",
    "Some of the content reads like a blog post rather than a direct answer.",
    "The explanation reflects expert knowledge and is engaging and insightful.",
    "However, the response includes extraneous information that distracts from the main point.",
    "The example given is correct and illustrates the concept well.",
    "The response does not completely resolve the query or provide a direct answer.",
]
_SCORE_FORMATS = [
    "Score: {s}",
    "Score: {s}",
    "Score: {s}",
    "**Score: {s}**",
    "**Score:** {s}",
    "Score: {s}/5",
    "Score: {s} points",
    "Total score: {s}",
]
_BAD_SCORE_LINES = ["I would rate this response highly.", "Score: N/A", "Score: 7", "Score: <total points>"]
_META_SENTENCES = [
    "Judgment A applies the rubric more faithfully than Judgment B.",
    "Judgment B overlooks that the response addresses most of the question.",
    "Both judgments recognise the relevance of the response, but one of them over-rewards it.",
    "The score given by one judgment is inconsistent with its own justification.",
    "Considering adherence to the rubric, accuracy and consistency, one judgment is more convincing.",
    "Judgment A awards the fourth point without justification.",
    "Judgment B correctly notes the extraneous information in the response.",
]
_WINNER_FORMATS = {
    1: ["Winner: Judgement A", "Winner: [Judgement A]", "**Winner:** Judgment A", "Winner: Judgment A."],
    -1: ["Winner: Judgement B", "Winner: [Judgement B]", "**Winner:** Judgment B", "Winner: Judgment B."],
    0: ["Winner: [Judgement A | Judgement B]", "Both judgments are equally accurate.", "Winner: Tie"],
}


def _body_pool(
    rng: np.random.Generator, sentences: list[str], lo: int, hi: int, size: int = 2048
) -> list[str]:
    """Distinct justification paragraphs of lo..hi-1 sentences, drawn once and reused."""
    pool = []
    for _ in range(size):
        picks = rng.integers(0, len(sentences), int(rng.integers(lo, hi)))
        pool.append(" ".join(sentences[i] for i in picks))
    return pool


def synth_judge_texts(
    rng: np.random.Generator, n_prompts: int, bodies: list[str]
) -> tuple[list[str], np.ndarray]:
    """Judge texts for n_prompts × K × N judgments (row-major) and each prompt's response lengths."""
    quality = rng.normal(3.8, 0.6, (n_prompts, K_RESPONSES, 1))
    noise = rng.normal(0, 0.7, (n_prompts, K_RESPONSES, N_JUDGMENTS))
    raw = np.clip(quality + noise, 0, 5)
    decimal = rng.random(raw.shape) < 0.15  # trained judges emit 4.5, 4.75 …
    values = np.where(decimal, np.round(raw * 4) / 4, np.round(raw)).ravel()
    bad = (rng.random(values.shape) < 0.05).tolist()
    body = rng.integers(0, len(bodies), values.shape).tolist()
    fmt = rng.integers(0, len(_SCORE_FORMATS), values.shape).tolist()
    bad_line = rng.integers(0, len(_BAD_SCORE_LINES), values.shape).tolist()
    tails = {v: [f.format(s=f"{v:g}") for f in _SCORE_FORMATS] for v in np.unique(values).tolist()}
    texts = [
        bodies[b] + "\n\n" + (_BAD_SCORE_LINES[x] if is_bad else tails[v][f])
        for v, is_bad, b, f, x in zip(values.tolist(), bad, body, fmt, bad_line, strict=True)
    ]
    lengths = rng.lognormal(np.log(1900), 0.35, (n_prompts, K_RESPONSES)).astype(int)
    return texts, lengths


def synth_meta_texts(rng: np.random.Generator, n_prompts: int, bodies: list[str]) -> list[str]:
    """110 meta-judge texts per prompt, battles in `battle_schedule(11, "all")` order."""
    strength = rng.normal(0, 1.0, (n_prompts, N_JUDGMENTS))
    schedule = battle_schedule(N_JUDGMENTS, "all", rng)
    m_idx = np.array([m for m, _ in schedule])
    k_idx = np.array([k for _, k in schedule])
    logit = strength[:, m_idx] - strength[:, k_idx] + 0.6  # + positional bias towards slot A
    a_wins = rng.random(logit.shape) < 1 / (1 + np.exp(-logit))
    winner = np.where(a_wins, 1, -1)
    winner[rng.random(logit.shape) < 0.04] = 0
    winner = winner.ravel()
    body = rng.integers(0, len(bodies), winner.shape).tolist()
    fmt = rng.integers(0, 12, winner.shape).tolist()
    return [
        bodies[b] + "\n\n" + _WINNER_FORMATS[w][f % len(_WINNER_FORMATS[w])]
        for w, b, f in zip(winner.tolist(), body, fmt, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunk", type=int, default=CHUNK, help="prompts whose texts are in memory at once (5000 = all)"
    )
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    judge_bodies = _body_pool(rng, _SENTENCES, 3, 15)
    meta_bodies = _body_pool(rng, _META_SENTENCES, 3, 9)
    timing = {
        k: 0.0
        for k in (
            "parse_score",
            "actor_pairs",
            "highest_variance",
            "parse_winner",
            "winner_matrix",
            "judge_pairs",
        )
    }
    synth = 0.0
    n_judge_texts = n_meta_texts = n_score_none = n_winner_zero = 0
    actor_pairs = 0
    rs: list[np.ndarray] = []
    judgment_lengths: list[list[int]] = []

    for start in range(0, args.prompts, args.chunk):
        n = min(args.chunk, args.prompts - start)
        t = time.perf_counter()
        judge_texts, resp_lengths = synth_judge_texts(rng, n, judge_bodies)
        meta_texts = synth_meta_texts(rng, n, meta_bodies)
        synth += time.perf_counter() - t

        # Step 3: parse every judgment.
        t = time.perf_counter()
        scores = [parse_score(text) for text in judge_texts]
        timing["parse_score"] += time.perf_counter() - t
        n_judge_texts += len(scores)
        n_score_none += scores.count(None)

        # Step 4: response scores and actor pairs.
        t = time.perf_counter()
        per_response = [scores[i : i + N_JUDGMENTS] for i in range(0, len(scores), N_JUDGMENTS)]
        for p in range(n):
            resp = per_response[p * K_RESPONSES : (p + 1) * K_RESPONSES]
            pair = select_actor_pair([mean_score(s) for s in resp], list(resp_lengths[p]), RHO)
            actor_pairs += pair is not None
        timing["actor_pairs"] += time.perf_counter() - t

        # Step 5a: the response whose judgments the meta-judge compares.
        t = time.perf_counter()
        selected = [
            highest_variance(per_response[p * K_RESPONSES : (p + 1) * K_RESPONSES], rng) for p in range(n)
        ]
        timing["highest_variance"] += time.perf_counter() - t

        # Step 5b: parse every meta-judgment and build r per prompt.
        t = time.perf_counter()
        winners = [parse_winner(text) for text in meta_texts]
        timing["parse_winner"] += time.perf_counter() - t
        n_meta_texts += len(winners)
        n_winner_zero += winners.count(0)

        t = time.perf_counter()
        schedule = battle_schedule(N_JUDGMENTS, "all", rng)
        per_prompt = len(schedule)
        for p in range(n):
            w = winners[p * per_prompt : (p + 1) * per_prompt]
            rs.append(winner_matrix(N_JUDGMENTS, [(m, k, x) for (m, k), x in zip(schedule, w, strict=True)]))
        timing["winner_matrix"] += time.perf_counter() - t
        for p in range(n):
            sel = selected[p] if selected[p] is not None else 0
            base = (p * K_RESPONSES + sel) * N_JUDGMENTS
            judgment_lengths.append([len(judge_texts[base + j]) for j in range(N_JUDGMENTS)])
        del judge_texts, meta_texts

    # Steps 5c-5g, batched over all prompts; then the pairs stage's cap on the chosen judgment's length.
    def capped(pairs: list) -> list:
        return [None if p is None or n[p[0]] > MAX_CHOSEN_JUDGMENT else p
                for p, n in zip(pairs, judgment_lengths, strict=True)]

    t = time.perf_counter()
    judge_pairs = capped(select_judge_pairs(rs))
    timing["judge_pairs"] = time.perf_counter() - t
    t = time.perf_counter()
    single = capped([select_judge_pair(r) for r in rs])
    per_prompt_time = time.perf_counter() - t
    assert single == judge_pairs

    total = sum(timing.values())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"prompts {args.prompts}: {n_judge_texts:,} judge texts ({n_score_none:,} unparseable), "
        f"{n_meta_texts:,} meta-judge texts ({n_winner_zero:,} without a winner)"
    )
    print(f"actor pairs {actor_pairs:,}, judge pairs {sum(p is not None for p in judge_pairs):,}")
    print(f"synthesising texts (not timed): {synth:6.2f} s")
    for name, sec in timing.items():
        print(f"  {name:<18} {sec:6.2f} s")
    print(f"  {'TOTAL':<18} {total:6.2f} s   (goal <= 15 s)")
    print(f"judge pairs via per-prompt select_judge_pair instead of the batch: {per_prompt_time:.2f} s")
    print(f"peak RSS {peak_mb:,.0f} MiB   (goal <= 1,536 MiB)")


if __name__ == "__main__":
    main()
