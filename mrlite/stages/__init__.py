"""Stage registry, the shared stage context, and the runner that skips, checks and marks stages.

A stage is a module of this package that provides the ``Stage`` interface: ``applies(ctx)``, ``inputs(ctx)``,
``outputs(ctx)``, ``config(ctx)``, ``run(ctx)`` and ``summary_line(t, summary)``. The runner decides cached / stale / missing from the marker, runs the stage,
then writes the marker LAST (conventions.md §4.6). Exercised by: ``mrlite run recipes/smoke.yaml``.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from mrlite import __version__
from mrlite.errors import MrliteError
from mrlite.recipe import Recipe
from mrlite.rundir import RunDir, RunDirError, config_hash, fault_point, fingerprint, model_identity

log = logging.getLogger(__name__)

STAGES = ("prompts", "eft_data", "eft", "sample", "judge", "meta_judge", "pairs", "train")
"""Every stage, in order. ``prompts`` (always), ``eft_data`` and ``eft`` (optional) run once, as iteration 0; the
others run in every iteration."""
SETUP_STAGES = ("prompts", "eft_data", "eft")
"""The iteration-0 stages."""
GENERATION_STAGES = ("sample", "judge", "meta_judge")
HEAVY_STAGES = ("prompts", "eft_data", "eft", "sample", "judge", "meta_judge", "train")


class StageError(MrliteError, RuntimeError):
    """A stage cannot proceed for a reason the user can act on. One line."""


@dataclass
class StageContext:
    recipe: Recipe
    run: RunDir
    t: int
    force: bool = False
    _generators: dict = field(default_factory=dict)

    def dir(self) -> Path:
        return self.run.iter_dir(self.t)

    def path(self, name: str) -> Path:
        return self.run.path(self.t, name)

    # -- models -------------------------------------------------------------------------------------------
    def policy_dir(self) -> Path | None:
        """Merged model directory of M_{t-1}, or None when M_{t-1} is the (un-fine-tuned) base."""
        prev = self.t - 1
        if prev < 0 or (prev == 0 and not self.recipe.eft.enabled):
            return None
        return self.run.path(prev, "model")

    def policy_fingerprint(self) -> str:
        d = self.policy_dir()
        if d is None:
            m = self.recipe.model
            return f"{m.base}@{m.revision or ''}"
        return model_identity(d)

    def policy_model(self) -> str:
        """A loadable model for M_{t-1} (resolves aliases such as smollm2-135m; may convert once)."""
        d = self.policy_dir()
        if d is not None:
            if not d.is_dir():
                raise StageError(f"iteration {self.t} needs the model of iteration {self.t - 1} at {d}; "
                                 f"run iteration {self.t - 1} first")
            return str(d)
        return resolve_base(self.recipe)

    def generator(self):
        """One generator per process and model: actor, judge and meta-judge of an iteration share it."""
        model = self.policy_model()
        if model not in self._generators:
            from mrlite.backends import load_generator

            for g in self._generators.values():
                g.close()
            self._generators.clear()
            self._generators[model] = load_generator(self.recipe, model)
        return self._generators[model]

    def close(self) -> None:
        for g in self._generators.values():
            g.close()
        self._generators.clear()


def resolve_base(recipe: Recipe) -> str:
    if recipe.model.base == "fake":
        return "fake"
    from mrlite.models import resolve_model

    return resolve_model(recipe.model.base, revision=recipe.model.revision)


def untimed(d: dict) -> dict:
    """Drop wall-clock keys: run files must be identical across runs; seconds live in timings.jsonl."""
    return {k: v for k, v in d.items() if not any(w in k for w in ("second", "runtime", "time", "seconds"))}


class Stage(Protocol):
    """What every stage module provides; the runner and ``mrlite status`` use nothing else."""

    def applies(self, ctx: StageContext) -> bool:
        """Whether the stage runs in iteration ``ctx.t`` under this recipe."""
        ...

    def inputs(self, ctx: StageContext) -> list[Path]:
        """Files it reads (fingerprinted into its marker: a change makes it stale)."""
        ...

    def outputs(self, ctx: StageContext) -> list[Path]:
        """Files it writes (all present, or the stage is stale)."""
        ...

    def config(self, ctx: StageContext) -> dict:
        """The recipe values its outputs depend on (hashed into its marker)."""
        ...

    def run(self, ctx: StageContext) -> dict:
        """Compute and write the outputs; returns the marker's summary (``n_in``, ``n_out``, ...)."""
        ...

    def summary_line(self, t: int, summary: dict) -> str:
        """The one log line of a finished stage."""
        ...


STAGE_MEMBERS = ("applies", "inputs", "outputs", "config", "run", "summary_line")
"""The members of ``Stage``, checked once per stage module at first use."""
_checked: set[str] = set()


def module(stage: str) -> Stage:
    """The module of stage ``stage``, checked to provide every member of ``Stage``.

    Raises:
        TypeError: the module lacks a member (a programming error, named with what is missing).
    """
    mod = importlib.import_module(f"mrlite.stages.{stage}")
    if stage not in _checked:
        missing = [m for m in STAGE_MEMBERS if not callable(getattr(mod, m, None))]
        if missing:
            raise TypeError(f"stage module {mod.__name__} does not provide {', '.join(missing)} "
                            f"(every stage defines {', '.join(STAGE_MEMBERS)})")
        _checked.add(stage)
    return cast(Stage, mod)


def stage_iterations(recipe: Recipe, stage: str) -> list[int]:
    if stage == "prompts":
        return [0]
    if stage == "eft":
        return [0] if recipe.eft.enabled else []
    if stage == "eft_data":
        return [0] if recipe.eft.enabled and recipe.eft.data.startswith("oasst:") else []
    return list(range(1, recipe.loop.iterations + 1))


# --------------------------------------------------------------------------------------------------------------
# state of one stage


PACKAGE_DIR = Path(__file__).resolve().parent.parent


def input_key(run_root: Path, p: Path) -> str:
    """A stage input's name in its marker: relative to the run directory, ``mrlite:<path>`` for files shipped in
    the package (so the same recipe run from two checkouts or installs writes the same markers), else the path."""
    if p.is_relative_to(run_root):
        return p.relative_to(run_root).as_posix()
    if p.resolve().is_relative_to(PACKAGE_DIR):
        return "mrlite:" + p.resolve().relative_to(PACKAGE_DIR).as_posix()
    return str(p)


def _input_fingerprints(ctx: StageContext, mod: Stage) -> dict[str, str]:
    return {input_key(ctx.run.root, p): fingerprint(p) for p in mod.inputs(ctx)}


def expected_marker_keys(ctx: StageContext, stage: str) -> dict:
    mod = module(stage)
    cfg = mod.config(ctx)
    return {"inputs": _input_fingerprints(ctx, mod), "config_hash": config_hash(cfg)}


def state(ctx: StageContext, stage: str) -> tuple[str, dict | None]:
    """``("done" | "stale" | "missing" | "n/a", marker)`` for one stage of one iteration."""
    mod = module(stage)
    if not mod.applies(ctx):
        return "n/a", None
    marker = ctx.run.read_marker(ctx.t, stage)
    if marker is None:
        return "missing", None
    exp = expected_marker_keys(ctx, stage)
    if marker.get("inputs") != exp["inputs"] or marker.get("config_hash") != exp["config_hash"]:
        return "stale", marker
    if any(not p.exists() for p in mod.outputs(ctx)):
        return "stale", marker
    return "done", marker


def _why_stale(ctx: StageContext, stage: str, marker: dict) -> str:
    exp = expected_marker_keys(ctx, stage)
    if marker.get("config_hash") != exp["config_hash"]:
        return "its recipe settings changed"
    changed = [k for k, v in exp["inputs"].items() if marker.get("inputs", {}).get(k) != v]
    if changed:
        return f"its inputs changed ({', '.join(changed)})"
    return "an output file is missing"


def run_stage(ctx: StageContext, stage: str) -> str:
    """Run one stage of one iteration unless its marker is current. Returns the status it ended in."""
    mod = module(stage)
    st, marker = state(ctx, stage)
    if st == "n/a":
        return st
    label = f"iter {ctx.t} {stage}" if ctx.t else stage
    if st == "done":
        drop_parts(ctx, stage)  # left over when a kill fell between the marker and this cleanup
        log.info("✓ %s (cached, %s rows)", label, marker.get("n_out"))
        return "cached"
    if st == "stale":
        if not ctx.force:
            raise RunDirError(
                f"{ctx.run.marker_path(ctx.t, stage)}: {label} was computed before but {_why_stale(ctx, stage, marker)}; "
                "re-run with --force to recompute it (and what follows), or use a new --out"
            )
        log.info("↻ %s is stale (%s): recomputing", label, _why_stale(ctx, stage, marker))
        ctx.run.remove_marker(ctx.t, stage)
    for p in mod.inputs(ctx):
        if not p.exists() and p.is_relative_to(ctx.run.root):
            raise StageError(f"{label} needs {p.relative_to(ctx.run.root)}, which is missing; "
                             "run the earlier stages first (drop --only, or use --from)")
    ctx.dir().mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    summary = mod.run(ctx)
    seconds = time.monotonic() - t0
    exp = expected_marker_keys(ctx, stage)
    new_marker = {
        "stage": stage,
        "iter": ctx.t,
        "n_in": summary.get("n_in"),
        "n_out": summary.get("n_out"),
        "inputs": exp["inputs"],
        "outputs": [p.relative_to(ctx.run.root).as_posix() for p in mod.outputs(ctx)],
        "config": mod.config(ctx),
        "config_hash": exp["config_hash"],
        "summary": summary,
        "mrlite_version": __version__,
    }
    fault_point(f"{stage}:before_marker")
    ctx.run.write_marker(ctx.t, stage, new_marker)
    fault_point(f"{stage}:after_marker")
    drop_parts(ctx, stage)
    ctx.run.append_timing({"iter": ctx.t, "stage": stage, "seconds": round(seconds, 3)})
    log.info("%s, %.1fs", mod.summary_line(ctx.t, summary), seconds)
    return "ran"


def drop_parts(ctx: StageContext, stage: str) -> None:
    """Remove a finished stage's partial chunks (and the ``.parts`` folder once empty)."""
    parts = ctx.run.parts_dir(ctx.t, stage)
    if parts.exists():
        shutil.rmtree(parts)
    if parts.parent.exists() and not any(parts.parent.iterdir()):
        parts.parent.rmdir()
