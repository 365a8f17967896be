"""``mrlite status RUN_DIR``: iterations × stages (done / stale / missing), row counts and the key rates.

Reads only markers and the saved recipe; imports no torch. Exercised by: ``mrlite status runs/smoke``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mrlite.recipe import load_recipe
from mrlite.progress import describe, read_progress
from mrlite.rundir import RunDir, RunDirError
from mrlite.stages import STAGES, StageContext, stage_iterations, state


def _detail(stage: str, s: dict) -> str:
    if stage == "prompts" and s.get("stats") is not None:
        st = s["stats"]
        if s.get("mode") == "generate":
            return (f"grown with {s['model']} ({st.get('requests', 0)} requests; {st.get('duplicate', 0)} duplicate, "
                    f"{st.get('near_duplicate', 0)} near-duplicate dropped)")
        return f"from {s.get('source')}"
    if stage == "judge" and s.get("judgments"):
        n = s["judgments"]
        mean = s.get("mean_score")
        return (f"parsed {100 * (n - s['unparsable']) / n:.0f}% (forced {100 * s['parsed_forced'] / n:.0f}%)"
                + (f", mean {mean:.2f}" if mean is not None else ""))
    if stage == "meta_judge" and s.get("battles"):
        pb, sb = s.get("positional_bias"), s.get("score_bias")
        return (f"undecided {100 * s['undecided'] / s['battles']:.0f}%, forced "
                f"{100 * s.get('parsed_forced', 0) / s['battles']:.0f}%"
                + (f", positional bias {100 * pb:.0f}%" if pb is not None else "")
                + (f", score bias {100 * sb:.0f}%" if sb is not None else ""))
    if stage == "pairs":
        g = s.get("guardrail")
        note = "" if not g else (f"; guardrail {'stops judge training from the next iteration' if s.get('guardrail_action') == 'stop' else 'warned'}")
        return f"{s.get('actor_pairs', 0)} actor + {s.get('judge_pairs', 0)} judge{note}"
    if stage in ("train", "eft") and s.get("last_loss") is not None:
        return f"loss {s['last_loss']:.4f}"
    return ""


def _in_progress(rd: RunDir, t: int, stage: str, live: bool) -> dict | None:
    """State and detail of a stage that has written part of its chunks: running (the run holds its lock) with
    the ETA from its last progress record, or stopped (resume with the same ``mrlite run``)."""
    rec = read_progress(rd.parts_dir(t, stage))
    if rec is None:
        return None
    detail = describe(rec)
    if not live:
        detail = detail.split(", ETA")[0] + "; stopped, run the same command to resume"
    return {"state": "running" if live else "partial", "rows": None, "detail": detail}


def status_table(run_dir: Path) -> list[dict]:
    """One dict per (iteration, stage): iteration, stage, state, rows, detail."""
    rd = RunDir(run_dir)
    if not (rd.root / "recipe.yaml").exists():
        raise RunDirError(f"{run_dir}: not a run directory (no recipe.yaml); pass the --out of a run, e.g. runs/smoke")
    recipe = load_recipe(rd.root / "recipe.yaml")
    live = rd.is_locked()
    out = []
    for t in range(recipe.loop.iterations + 1):
        ctx = StageContext(recipe, rd, t)
        for stage in STAGES:
            if t not in stage_iterations(recipe, stage):
                continue
            st, marker = state(ctx, stage)
            if st == "n/a":
                continue
            summary = (marker or {}).get("summary", {})
            row = {"iteration": t, "stage": stage, "state": st,
                   "rows": (marker or {}).get("n_out"), "detail": _detail(stage, summary) if marker else ""}
            if st != "done":
                row.update(_in_progress(rd, t, stage, live) or {})
            out.append(row)
    return out + eval_rows(rd)


def _pc(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def eval_rows(rd: RunDir) -> list[dict]:
    """Rows for ``mrlite eval`` results (win rates, judge quality) and the report, when they exist."""
    out = []
    ev = rd.root / "eval" / "summary.json"
    if ev.is_file():
        try:
            s = json.loads(ev.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            s = {}
        for c in s.get("comparisons", []):
            ci = c.get("win_rate_ci") or [None, None]
            out.append({"iteration": c["t"], "stage": "eval", "state": "done", "rows": c["scored"],
                        "detail": f"vs M{c['base']}: win {_pc(c['win_rate'])} [{_pc(ci[0])}-{_pc(ci[1])}], "
                                  f"LC {_pc(c['lc_win_rate'])}, consistent {_pc(c['consistency'])}, "
                                  f"{c['failed_prompts']} failed"})
        for q in (s.get("human") or {}).get("models", []):
            rho = "n/a" if q["spearman"] is None else f"{q['spearman']:.2f}"
            out.append({"iteration": q["t"], "stage": "vs_human", "state": "done", "rows": q["pairs"],
                        "detail": f"agree {_pc(q['agreement'])} (w/o ties {_pc(q['agreement_no_ties'])}), "
                                  f"Spearman {rho}"})
    rep = rd.root / "report.md"
    if rep.is_file():
        newest = max((p.stat().st_mtime for p in [ev, *rd.root.glob("iter_*/.done/*.json")] if p.is_file()),
                     default=0.0)
        figs = sorted(p.stem for p in (rd.root / "report").glob("*.png"))
        out.append({"iteration": "-", "stage": "report", "state": "done" if rep.stat().st_mtime >= newest else "stale",
                    "rows": len(figs), "detail": "report.md; " + ", ".join(figs)})
    return out
