"""The pairs stage's caps on the chosen side's length (paper: 2,500 characters for answers in iteration 1,
1,100 / 1,000 for judgments): a pair whose chosen side is longer is dropped and counted, never re-picked."""

from __future__ import annotations

import json
from pathlib import Path

import mrlite
from mrlite.rundir import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _pairs(run: Path, kind: str) -> list[dict]:
    return read_jsonl(run / "iter_01" / f"pairs_{kind}.jsonl")


def test_chosen_length_caps_drop_and_count(tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["loop.iterations=1", "pairs.max_chosen_chars=[null]", "pairs.judge_max_chosen_chars=[null]"]
    mrlite.run(mrlite.load_recipe(REPO / "recipes" / "smoke.yaml", base), run)
    free = {k: _pairs(run, k) for k in ("actor", "judge")}
    # a cap equal to one chosen length: that pair stays (the cap is inclusive), longer ones go
    caps = {k: sorted(p["chosen_chars"] for p in rows)[len(rows) // 2] for k, rows in free.items()}
    capped_recipe = mrlite.load_recipe(REPO / "recipes" / "smoke.yaml", [
        "loop.iterations=1", f"pairs.max_chosen_chars=[{caps['actor']}]",
        f"pairs.judge_max_chosen_chars=[{caps['judge']}]"])
    mrlite.run(capped_recipe, run, only="pairs", iters=[1], force=True)
    summary = json.loads((run / "iter_01" / ".done" / "pairs.json").read_text())["summary"]
    for kind in ("actor", "judge"):
        kept = [p for p in free[kind] if p["chosen_chars"] <= caps[kind]]
        assert 0 < len(kept) < len(free[kind])
        assert _pairs(run, kind) == kept  # the same pairs minus the long ones: nothing re-picked
        assert summary[kind]["too_long"] == len(free[kind]) - len(kept)
