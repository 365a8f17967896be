"""Live training metrics: ``log.report_to`` for TRL's trainers, and judge-health scalars per iteration.

The training core asks :func:`trainer_args` for ``report_to``/``run_name`` (the tracker's run name carries the
recipe name and the iteration: ``tiny-iter01-dpo``) and points TensorBoard at ``<run>/tracker/<run name>``. The
orchestrator calls :func:`log_stage` when a stage finishes: the iteration's judge health read back from the
stage marker (parse and forced rates, mean score, meta-judge biases, pair counts) goes to every tracker as
scalars at step = iteration, under ``<run>/tracker/<recipe name>-health`` for TensorBoard. Tracker files hold
clock times, so they live in ``tracker/``, outside the byte-identical run files. Imports no torch.
Exercised by: ``mrlite run recipes/tiny.yaml --set log.report_to=tensorboard``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

from mrlite.recipe import Recipe, RecipeError

log = logging.getLogger(__name__)

TRACKER_DIR = "tracker"
PACKAGES = {
    # tracker → (import name, how to install)
    "tensorboard": ("tensorboard", "pip install 'mrlite[track]' (or pip install tensorboard)"),
    "wandb": ("wandb", "pip install wandb"),
    "trackio": ("trackio", "pip install trackio"),
}


def check_trackers(recipe: Recipe) -> None:
    """Raise RecipeError (one line naming the extra) when a tracker's package is not installed."""
    for name in recipe.log.trackers():
        module, how = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise RecipeError(f"log.report_to: {name} needs the {module} package, which is not installed; {how}, or "
                              "set log.report_to: none")


def run_name(recipe: Recipe, t: int, kind: str) -> str:
    return f"{recipe.name}-iter{t:02d}-{kind}"


def trainer_args(recipe: Recipe, run_root: Path, t: int, kind: str) -> dict:
    """``report_to`` and ``run_name`` for a TRL config (kind: ``dpo`` or ``eft``); sets the trackers' env."""
    trackers = recipe.log.trackers()
    name = run_name(recipe, t, kind)
    if not trackers:
        return {"report_to": "none", "run_name": name}
    if "tensorboard" in trackers:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(run_root) / TRACKER_DIR / name)
    os.environ.setdefault("WANDB_PROJECT", recipe.log.project)
    os.environ.setdefault("TRACKIO_PROJECT", recipe.log.project)
    return {"report_to": trackers, "run_name": name}


def health_scalars(run_root: Path, t: int, stage: str) -> dict[str, float]:
    """The scalars one finished stage contributes to iteration ``t``'s judge health."""
    from mrlite.hub.cards import judge_health
    from mrlite.rundir import RunDir

    h = judge_health(RunDir(run_root), t)
    out: dict[str, float | None] = {}
    if stage == "judge" and h["judge"]:
        j = h["judge"]
        out = {"judge/parse_rate": j["parse_rate"], "judge/forced_rate": j["forced_rate"],
               "judge/mean_score": j["mean_score"]}
        hist = {k: v for k, v in j["histogram"].items() if k not in ("missing", "non_integer", "out_of_range")}
        valid = sum(hist.values())
        if valid:
            out["judge/same_score_share"] = max(hist.values()) / valid
    elif stage == "meta_judge" and h["meta_judge"]:
        m = h["meta_judge"]
        out = {"meta_judge/decided_rate": m["decided_rate"], "meta_judge/forced_rate": m["forced_rate"],
               "meta_judge/positional_bias": m["positional_bias"], "meta_judge/slot_a_share": m.get("slot_a_share"),
               "meta_judge/score_bias": m["score_bias"]}
    elif stage == "pairs" and h["pairs"]:
        out = {"pairs/actor": h["pairs"]["actor"], "pairs/judge": h["pairs"]["judge"]}
    elif stage == "train" and h["train"]:
        out = {"train/last_loss": h["train"].get("last_loss"), "train/last_margin": h["train"].get("last_margin")}
    return {f"health/{k}": float(v) for k, v in out.items() if v is not None}


def log_stage(recipe: Recipe, run_root: Path, t: int, stage: str) -> None:
    """Send a finished stage's judge-health scalars to the recipe's trackers (never fails the run)."""
    trackers = recipe.log.trackers()
    if not trackers:
        return
    scalars = health_scalars(Path(run_root), t, stage)
    if not scalars:
        return
    for name in trackers:
        try:
            {"tensorboard": _tensorboard, "wandb": _wandb, "trackio": _trackio}[name](recipe, Path(run_root), t, scalars)
        except Exception as e:  # a tracker outage must not stop a four-day run
            log.warning("log.report_to %s: could not log iteration %d %s health (%s)", name, t, stage,
                        " ".join(str(e).split())[:200])


def _tensorboard(recipe: Recipe, run_root: Path, t: int, scalars: dict[str, float]) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(str(run_root / TRACKER_DIR / f"{recipe.name}-health"))
    try:
        w.add_event(Event(wall_time=time.time(), step=t,
                          summary=Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()])))
    finally:
        w.close()


def _wandb(recipe: Recipe, run_root: Path, t: int, scalars: dict[str, float]) -> None:
    import wandb

    run = wandb.init(project=recipe.log.project, name=f"{recipe.name}-health", id=_stable_id(recipe, run_root),
                     resume="allow", reinit="finish_previous")
    run.define_metric("health/*", step_metric="iteration")
    run.log({"iteration": t, **scalars})
    run.finish()


def _trackio(recipe: Recipe, run_root: Path, t: int, scalars: dict[str, float]) -> None:
    import trackio

    trackio.init(project=recipe.log.project, name=f"{recipe.name}-health", resume="allow")
    trackio.log({"iteration": t, **scalars})
    trackio.finish()


def _stable_id(recipe: Recipe, run_root: Path) -> str:
    import hashlib

    return f"{recipe.name}-health-" + hashlib.sha256(str(run_root.resolve()).encode()).hexdigest()[:8]
