"""The two interfaces every backend implements (Generator, Trainer) and the plain data they exchange.

Nothing here imports torch: the orchestrator and the fake backend use these types too.
Exercised by: ``mrlite run recipes/smoke.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

Message = dict[str, str]
"""One chat turn: ``{"role": "user" | "assistant" | "system", "content": "..."}``."""

Force = Literal["score", "winner"] | None
"""What a generator must guarantee parses: a judge ``Score:`` line, a meta-judge ``Winner:`` line, or nothing."""


@dataclass(frozen=True)
class Sampling:
    """Sampling settings shared by every request of one call."""

    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class GenRequest:
    """One chat to complete ``n`` times.

    Attributes:
        id: Row id (e.g. ``"p0003:2"``). Fake outputs and seeds derive from it, never from call order.
        messages: The chat; the generator applies the model's chat template exactly once.
        n: Number of completions wanted.
        seed: Per-request seed (derived from run seed, iteration, stage and ``id``), so the rows do not depend
            on batch composition.
        role: ``actor``, ``judge``, ``meta_judge``, ``eval`` or ``prompts`` (writing new tasks; the fake backend
            scripts its answer from it).
        force: When set and a completion does not parse, the generator appends the label (``Score: `` or
            ``Winner: Judgement ``) and picks the most likely allowed continuation (forced completion).
    """

    id: str
    messages: list[Message]
    n: int
    seed: int
    role: Literal["actor", "judge", "meta_judge", "eval", "prompts"] = "actor"
    force: Force = None


@dataclass(frozen=True)
class Completion:
    """One generated text. ``forced`` is True when the generator appended a forced label + value."""

    text: str
    forced: bool = False
    n_tokens: int | None = None


@dataclass
class TrainResult:
    """What a training call reports back. ``metrics`` rows go to ``train_metrics.jsonl``."""

    n_rows: int
    """Rows trained on, after the rows longer than max_length were dropped."""
    n_dropped: int = 0
    """Rows dropped as longer than max_length (not included in ``n_rows``)."""
    metrics: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


class Generator(Protocol):
    """Turns chats into completions. One instance serves every generation stage of one process."""

    def generate(self, requests: list[GenRequest], sampling: Sampling) -> list[list[Completion]]:
        """Return ``request.n`` completions for each request, in request order."""
        ...

    def prompt_lengths(self, requests: list[GenRequest]) -> list[int]:
        """Tokens of each request's templated prompt. Stages drop (and count) requests whose prompt leaves no
        room for an answer within ``max_model_len``; the generator caps ``max_new_tokens`` to the room left."""
        ...

    def close(self) -> None: ...


MIN_ANSWER_TOKENS = 16
"""Tokens a templated prompt must leave free within ``model.max_model_len`` for it to be worth generating."""


def fits(generator: Generator, requests: list[GenRequest], max_model_len: int,
         room: int = MIN_ANSWER_TOKENS) -> list[bool]:
    """Which requests leave at least ``room`` tokens for the answer (the others are dropped and counted)."""
    if not requests:
        return []
    return [n <= max_model_len - room for n in generator.prompt_lengths(requests)]


class Trainer(Protocol):
    """Trains a fresh adapter on ``base`` and merges it into a full model directory.

    Both methods read JSONL rows, write ``out/adapter/`` and ``out/model/`` (merged, loadable by the generator,
    with ``lineage.json``), and never touch anything outside ``out``. The caller makes ``out`` a temporary
    directory and renames it when the call returns.
    """

    def train_dpo(self, rows: Path, base: str, out: Path) -> TrainResult:
        """DPO on TRL conversational preference rows ``{"prompt": [...], "chosen": [...], "rejected": [...]}``."""
        ...

    def train_sft(self, rows: Path, base: str, out: Path) -> TrainResult:
        """SFT on prompt/completion rows ``{"prompt": [...], "completion": [...]}`` (loss on completion only)."""
        ...
