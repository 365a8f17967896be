"""``mrlite status RUN_DIR``: iterations × stages (done / stale / missing), row counts and the key rates.

Reads only markers and the saved recipe; imports no torch. Exercised by: ``mrlite status runs/smoke``.
"""

from __future__ import annotations

from pathlib import Path

from mrlite.recipe import load_recipe
from mrlite.rundir import RunDir, RunDirError
from mrlite.stages import STAGES, StageContext, stage_iterations, state


def _detail(stage: str, s: dict) -> str:
    if stage == "judge" and s.get("judgments"):
        n = s["judgments"]
        mean = s.get("mean_score")
        return (f"parsed {100 * (n - s['unparsable']) / n:.0f}% (forced {100 * s['parsed_forced'] / n:.0f}%)"
                + (f", mean {mean:.2f}" if mean is not None else ""))
    if stage == "meta_judge" and s.get("battles"):
        pb = s.get("positional_bias")
        return f"undecided {100 * s['undecided'] / s['battles']:.0f}%" + (f", slot A {100 * pb:.0f}%" if pb is not None else "")
    if stage == "pairs":
        return f"{s.get('actor_pairs', 0)} actor + {s.get('judge_pairs', 0)} judge"
    if stage in ("train", "eft") and s.get("last_loss") is not None:
        return f"loss {s['last_loss']:.4f}"
    return ""


def status_table(run_dir: Path) -> list[dict]:
    """One dict per (iteration, stage): iteration, stage, state, rows, detail."""
    rd = RunDir(run_dir)
    if not (rd.root / "recipe.yaml").exists():
        raise RunDirError(f"{run_dir}: not a run directory (no recipe.yaml); pass the --out of a run, e.g. runs/smoke")
    recipe = load_recipe(rd.root / "recipe.yaml")
    out = []
    for t in range(0, recipe.loop.iterations + 1):
        ctx = StageContext(recipe, rd, t)
        for stage in STAGES:
            if t not in stage_iterations(recipe, stage):
                continue
            st, marker = state(ctx, stage)
            if st == "n/a":
                continue
            summary = (marker or {}).get("summary", {})
            out.append({"iteration": t, "stage": stage, "state": st,
                        "rows": (marker or {}).get("n_out"), "detail": _detail(stage, summary) if marker else ""})
    return out
