"""Checks on the data shipped inside the package: mrlite/data/prompts.jsonl and mrlite/data/eft.jsonl."""

from __future__ import annotations

import json
import re
from collections import Counter
from importlib.resources import files

import pytest

PROMPT_KEYS = {"id", "prompt", "category"}
EFT_KEYS = {"id", "prompt", "response", "judgment", "score"}
MIN_PROMPTS = 220
MIN_EFT = 80
MIN_PER_SCORE = 12


def _load(name: str) -> list[dict]:
    text = (files("mrlite") / "data" / name).read_text(encoding="utf-8")
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        assert line.strip(), f"{name}:{lineno}: blank line"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:  # pragma: no cover - failure path
            pytest.fail(f"{name}:{lineno}: invalid JSON ({exc})")
        assert isinstance(row, dict), f"{name}:{lineno}: not a JSON object"
        rows.append(row)
    return rows


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().casefold()


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return _load("prompts.jsonl")


@pytest.fixture(scope="module")
def eft() -> list[dict]:
    return _load("eft.jsonl")


def _check_ids(rows: list[dict], prefix: str) -> None:
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), "duplicate ids"
    pat = re.compile(rf"^{prefix}\d{{4}}$")
    assert all(isinstance(i, str) and pat.match(i) for i in ids), "bad id format"
    # numbered 0001, 0002, ... in file order
    assert ids == [f"{prefix}{n:04d}" for n in range(1, len(ids) + 1)]


def _check_strings(rows: list[dict], keys: set[str]) -> None:
    for r in rows:
        for k in keys:
            v = r[k]
            assert isinstance(v, str) and v.strip(), f"{r['id']}: empty or non-string {k!r}"


def test_prompts_schema(prompts):
    assert len(prompts) >= MIN_PROMPTS
    for r in prompts:
        assert set(r) == PROMPT_KEYS, f"{r.get('id')}: keys {sorted(r)}"
    _check_ids(prompts, "b")
    _check_strings(prompts, PROMPT_KEYS)


def test_prompts_unique(prompts):
    counts = Counter(_norm(r["prompt"]) for r in prompts)
    dups = [p for p, n in counts.items() if n > 1]
    assert not dups, f"duplicate prompts: {dups[:3]}"


def test_prompt_categories_varied(prompts):
    cats = Counter(r["category"] for r in prompts)
    for core in ("writing", "reasoning", "coding", "advice", "facts", "maths"):
        assert cats[core] >= 15, f"too few {core!r} prompts: {cats[core]}"


def test_eft_schema(eft):
    assert len(eft) >= MIN_EFT
    for r in eft:
        assert set(r) == EFT_KEYS, f"{r.get('id')}: keys {sorted(r)}"
    _check_ids(eft, "e")
    _check_strings(eft, EFT_KEYS - {"score"})


def test_eft_prompts_unique(eft):
    counts = Counter(_norm(r["prompt"]) for r in eft)
    assert all(n == 1 for n in counts.values())


def test_eft_prompts_not_in_prompt_pool(prompts, eft):
    pool = {_norm(r["prompt"]) for r in prompts}
    overlap = [r["id"] for r in eft if _norm(r["prompt"]) in pool]
    assert not overlap, f"EFT prompts also in prompts.jsonl: {overlap}"


def test_eft_scores_and_judgments(eft):
    for r in eft:
        s = r["score"]
        assert type(s) is int and 1 <= s <= 5, f"{r['id']}: bad score {s!r}"
        lines = r["judgment"].rstrip("\n").split("\n")
        assert len(lines) >= 2, f"{r['id']}: judgment has no justification before the score line"
        assert lines[-1] == f"Score: {s}", f"{r['id']}: last line {lines[-1]!r} != 'Score: {s}'"
        justification = "\n".join(lines[:-1])
        assert justification.strip()
        assert len(justification.split()) <= 100, f"{r['id']}: justification over 100 words"


def test_eft_score_balance(eft):
    counts = Counter(r["score"] for r in eft)
    for s in range(1, 6):
        assert counts[s] >= MIN_PER_SCORE, f"score {s}: only {counts[s]} rows"
