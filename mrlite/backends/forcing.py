"""Forced completion shared by the generators: which tokens spell ``"\\n" + label`` and which one each allowed value is.

When a judge/meta-judge output has no parseable ``Score:``/``Winner:`` line, a generator appends the label and lets
the model pick the value among ``choices`` (HF: from the row's KV cache; vLLM: one constrained step; fake: scripted
logits). Every backend picks by ONE rule (``pick_choice``): sampled from the softmax of the allowed values' logits
at the role's temperature with the row's own randomness, the argmax at temperature 0. A forced value is one token,
so it is an integer; the model's own text may carry decimals (``Score: 4.5``), and ``score_regex`` lets
constrained decoding write whatever ``parse_score`` accepts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mrlite.core.parsing import SCORE_LABEL, WINNER_LABEL

WINNER_CHOICES = ("A", "B")


def score_values(score_range: tuple[float, float]) -> list[str]:
    """The integer values a forced score may take (one token each)."""
    lo, hi = score_range
    return [str(v) for v in range(math.ceil(lo), math.floor(hi) + 1)]


def score_regex(score_range: tuple[float, float], decimals: int = 2) -> str:
    """A score inside ``score_range``: an integer, or a decimal with up to ``decimals`` digits (``4.5``, ``3.75``);
    the top value only as ``5``/``5.0``/``5.00``. Everything it matches, ``parse_score`` reads as that number."""
    lo, hi = score_range
    parts = []
    for v in range(math.ceil(lo), math.floor(hi) + 1):
        frac = f"(\\.[0-9]{{1,{decimals}}})?" if v < hi else f"(\\.0{{1,{decimals}}})?"
        parts.append(f"{v}{frac}")
    return "(" + "|".join(parts) + ")"


def pick_choice(logits: Sequence[float], temperature: float, u: float) -> int:
    """The forced value every backend picks: index sampled from softmax(logits / T) by inverse CDF at the uniform
    ``u`` in [0, 1), or the argmax (first on ties) at T = 0."""
    if temperature <= 0:
        return max(range(len(logits)), key=lambda i: (logits[i], -i))
    top = max(logits)
    w = [math.exp((x - top) / temperature) for x in logits]
    total, acc = sum(w), 0.0
    for i, x in enumerate(w):
        acc += x / total
        if u < acc:
            return i
    return len(w) - 1


@dataclass(frozen=True)
class Forcing:
    """Tokens to append after the generated ids (``"\\n" + label`` minus the value), then one of ``choices``."""

    prefix: list[int]
    choices: list[int]
    texts: list[str]
    label: str


def forcing_tokens(encode, force: str, score_range: tuple[float, float]) -> Forcing:
    """Split ``"\\n" + label + value`` into a shared prefix and one distinct token per allowed value.

    Args:
        encode: ``text -> token ids`` without special tokens.
        force: ``"score"`` or ``"winner"``.
        score_range: Allowed judge scores (integers inside it are the values).

    Raises:
        ValueError: the values are not single distinct tokens after the label for this tokenizer.
    """
    if force == "score":
        values, label = score_values(score_range), SCORE_LABEL
    elif force == "winner":
        values, label = list(WINNER_CHOICES), WINNER_LABEL
    else:
        raise ValueError(f"unknown force {force!r}; expected 'score' or 'winner'")
    # "Score: 3" may split as "Score", ":", " ", "3" or as "Score", ":", " 3": tokenise each full line.
    full = [list(encode("\n" + label + v)) for v in values]
    n = 0
    while full and all(len(f) > n + 1 for f in full) and len({f[n] for f in full}) == 1:
        n += 1
    tails = [f[n:] for f in full]
    if not values or any(len(t) != 1 for t in tails) or len({t[0] for t in tails}) != len(tails):
        raise ValueError(
            f"forced {force}: the values {values} are not single distinct tokens after {label!r} for this "
            "tokenizer; narrow judge.score_range to single digits or set force_parse: false"
        )
    return Forcing(prefix=full[0][:n], choices=[t[0] for t in tails], texts=values, label=label)


