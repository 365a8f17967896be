"""The whole Meta-Rewarding loop, as one readable sequence (algorithm.md Part A).

    iteration 0:            prompts (the pool) → [eft_data →] eft (optional) → M_0  (eft_data: eft.data oasst:…)
    iteration t = 1..T:     sample → judge → meta_judge → pairs → train (+ merge) → M_t

The orchestrator never imports torch. Heavy stages run as ``python -m mrlite _worker`` subprocesses (one per
group: the three generation stages of an iteration share one engine; training is another), because vLLM
cannot give GPU memory back in-process. Every stage reads and writes files in the run directory and writes
its marker last, so a killed run resumes where it stopped. Exercised by: ``mrlite run recipes/smoke.yaml``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mrlite import __version__
from mrlite.errors import WORKER_USER_ERROR, MrliteError
from mrlite.log import add_file_log
from mrlite.recipe import Recipe, RecipeError
from mrlite.rundir import RunDir, RunDirError, atomic_write_json, atomic_write_text
from mrlite.stages import (
    GENERATION_STAGES,
    HEAVY_STAGES,
    STAGES,
    StageContext,
    StageError,
    run_stage,
    stage_iterations,
    state,
)
from mrlite.hub.track import log_stage

log = logging.getLogger(__name__)

PACKAGES = ("click", "pydantic", "numpy", "torch", "transformers", "peft", "trl", "datasets", "accelerate",
            "vllm", "unsloth", "bitsandbytes")


class StageFailed(MrliteError, RuntimeError):
    """A stage subprocess exited non-zero. ``quiet``: it printed its own one-line error already."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


@dataclass
class RunReport:
    run_dir: Path
    steps: list[tuple[int, str, str]] = field(default_factory=list)  # (iteration, stage, ran|cached|n/a)


def default_out(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


def plan(recipe: Recipe, only: str | None = None, iters: list[int] | None = None) -> list[tuple[int, str]]:
    """Ordered (iteration, stage) steps of the run, filtered by ``--only`` / ``--iter``."""
    steps = [(t, s) for t in range(recipe.loop.iterations + 1) for s in STAGES if t in stage_iterations(recipe, s)]
    if iters is not None:
        steps = [(t, s) for t, s in steps if t in iters]
    if only is not None:
        steps = [(t, s) for t, s in steps if s == only]
    return steps


def _groups(steps: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """Consecutive steps that share one process: the generation stages of one iteration."""
    groups: list[list[tuple[int, str]]] = []
    for t, s in steps:
        if groups and s in GENERATION_STAGES and groups[-1][-1][0] == t and groups[-1][-1][1] in GENERATION_STAGES:
            groups[-1].append((t, s))
        else:
            groups.append([(t, s)])
    return groups


def _isolate(recipe: Recipe, override: bool | None) -> bool:
    if override is not None:
        return override
    mode = recipe.loop.isolate
    return mode == "always" or (mode == "auto" and recipe.backends.generator != "fake")


def _versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def _git_sha() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _init_run_dir(recipe: Recipe, rd: RunDir) -> None:
    """Write recipe.yaml and run.json (first run) or check they belong to this recipe (resume)."""
    info_path = rd.root / "run.json"
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise RunDirError(f"{info_path}: unreadable run.json; use a new --out or delete the file") from None
        if info.get("recipe_name") not in (None, recipe.name):
            raise RunDirError(
                f"{rd.root} holds a run of recipe '{info.get('recipe_name')}', not '{recipe.name}'; "
                "pass a different --out (or delete that directory)"
            )
        info["last_resumed"] = now
    else:
        if rd.root.exists() and any(p.name.startswith("iter_") for p in rd.root.iterdir()):
            raise RunDirError(f"{rd.root} has iteration folders but no run.json; use a new --out")
        info = {"recipe_name": recipe.name, "mrlite_version": __version__, "started": now, "seed": recipe.loop.seed,
                "host": socket.gethostname(), "python": platform.python_version(), "packages": _versions(),
                "git_sha": _git_sha()}
    atomic_write_json(info_path, info)


def _save_recipe(recipe: Recipe, rd: RunDir) -> None:
    """recipe.yaml = the recipe as run (workers read it). Rewritten only when it changed."""
    text = recipe.to_yaml()
    p = rd.root / "recipe.yaml"
    if not p.exists() or p.read_text(encoding="utf-8") != text:
        atomic_write_text(p, text)


def _preflight(recipe: Recipe, rd: RunDir, steps: list[tuple[int, str]], force: bool) -> None:
    """Check what can be checked before anything is written, so a refused run changes no file: stale markers,
    missing backend packages, the prompt and EFT sources of stages that still have to run."""
    todo = []
    for t, s in steps:
        st, _ = state(StageContext(recipe, rd, t), s)
        if st == "stale" and not force:
            run_stage(StageContext(recipe, rd, t), s)  # raises the one-line stale error
        if st in ("stale", "missing"):
            todo.append(s)
    if not todo:
        return
    from mrlite.hub.track import check_trackers

    check_trackers(recipe)
    from mrlite.hardware import gpu

    # nvidia-smi only: the orchestrator never imports torch (and never creates a CUDA context).
    gpu.preflight(recipe, devices=gpu.gpus(use_torch=False) if gpu.uses_gpu(recipe) else None)
    from mrlite.backends import BackendError, missing_packages, NEEDS

    for kind, name in (("generator", recipe.backends.generator), ("trainer", recipe.backends.trainer)):
        missing = missing_packages(name)
        if missing:
            raise BackendError(f"backends.{kind} {name!r} needs {', '.join(missing)}: {NEEDS[name][1]}")
    if "prompts" in todo or "sample" in todo:
        from mrlite.stages import prompts as prompts_stage

        ctx0 = StageContext(recipe, rd, 0)
        g = recipe.data.growing()
        if "prompts" in todo and g is not None and prompts_stage.inputs(ctx0):
            from mrlite.data.sources import load_prompt_pool

            seeds = load_prompt_pool(g.seeds, g.seeds_column, g.seeds_split)
            if len(seeds.prompts) < g.shots:
                raise RecipeError(f"data.generate.seeds {g.seeds!r} has {len(seeds.prompts)} usable prompts, fewer "
                                  f"than data.generate.shots {g.shots}; use a larger seed set or fewer shots")
        size = prompts_stage.pool_size(ctx0)  # reads (and so validates) a local source; a Hub id is read once, later
        sample_iters = [t for t, s in steps if s == "sample"]
        d = recipe.data
        if size is not None and sample_iters and (max(sample_iters) - 1) * d.prompts_per_iteration >= size:
            last = max(sample_iters)
            what = f"data.generate.n is {size}" if g is not None and not ctx0.path("pool.jsonl").is_file() else \
                f"data.prompts has {size} usable prompts"
            raise RecipeError(
                f"{what}, but iteration {last} starts at prompt "
                f"{(last - 1) * d.prompts_per_iteration + 1} (data.prompts_per_iteration {d.prompts_per_iteration}); "
                "add prompts, or lower data.prompts_per_iteration or loop.iterations"
            )
    if "eft_data" in todo:
        from mrlite.stages.eft_data import load_source

        load_source(recipe)  # the Open Assistant source: reachable, English ranked prompts left
    if "eft" in todo and not recipe.eft.data.startswith("oasst:"):
        from mrlite.data.sources import load_eft_rows

        load_eft_rows(recipe.eft.data)


def _run_worker(run_dir: Path, t: int, stages: list[str], force: bool) -> None:
    cmd = [sys.executable, "-m", "mrlite", "_worker", str(run_dir), "--iter", str(t), "--stages", ",".join(stages)]
    if force:
        cmd.append("--force")
    log.debug("subprocess: %s", " ".join(cmd))
    from mrlite.log import VERBOSITY_ENV, console_verbosity

    env = dict(os.environ, PYTHONUNBUFFERED="1", **{VERBOSITY_ENV: str(console_verbosity())})
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        where = f"iter {t} {'+'.join(stages)}" if t else "+".join(stages)
        raise StageFailed(f"{where} failed in its subprocess (exit {rc}); see the message above and {run_dir}/log.txt",
                          quiet=rc == WORKER_USER_ERROR)


def run(recipe: Recipe, out: str | Path | None = None, *, only: str | None = None, from_stage: str | None = None,
        iters: list[int] | None = None, force: bool = False, isolate: bool | None = None) -> RunReport:
    """Run or resume the loop.

    Args:
        recipe: A validated recipe.
        out: Run directory (default ``runs/<recipe.name>``).
        only: Run just this stage (in every selected iteration).
        from_stage: Recompute from this stage on (in the first selected iteration) and everything after it.
        iters: Restrict to these iterations (0 = the prompt pool and EFT).
        force: Recompute stages whose inputs or settings changed instead of stopping.
        isolate: Override ``loop.isolate`` (True: heavy stages in subprocesses).

    Returns:
        RunReport with what ran and what was cached.

    Raises:
        RecipeError, RunDirError, StageError, StageFailed: user-fixable problems (one line each).
    """
    _check_args(recipe, only, from_stage, iters)
    rd = RunDir(Path(out) if out is not None else default_out(recipe))
    with _opened(rd) as opened:
        steps = _steps(recipe, rd, only, from_stage, iters)
        _preflight(recipe, rd, steps, force or from_stage is not None)
        _init_run_dir(recipe, rd)
        _save_recipe(recipe, rd)
        opened.log_to_file()
        log.info("mrlite run %s → %s (resolved recipe: %s; -v prints it)", recipe.name, rd.root, rd.root / "recipe.yaml")
        log.debug("mrlite %s: run %s in %s\n%s", __version__, recipe.name, rd.root, recipe.to_yaml())
        if from_stage is not None:
            _forget_from(rd, steps, from_stage)
        report = RunReport(rd.root)
        isolate_heavy = _isolate(recipe, isolate)
        # The algorithm: iteration 0 (prompts → [eft_data →] eft), then per iteration
        # sample → judge → meta_judge (one process) → pairs → train; `steps` lists them in that order.
        for group in _groups(steps):
            _run_group(recipe, rd, group, force, isolate_heavy, report)
        return report


def _check_args(recipe: Recipe, only: str | None, from_stage: str | None, iters: list[int] | None) -> None:
    if only is not None and from_stage is not None:
        raise RecipeError("--only and --from exclude each other; use one")
    for name, value in (("--only", only), ("--from", from_stage)):
        if value is not None and value not in STAGES:
            raise RecipeError(f"{name} {value!r}: unknown stage; choose one of {', '.join(STAGES)}")
    if iters:
        bad = [k for k in iters if not 0 <= k <= recipe.loop.iterations]
        if bad:
            raise RecipeError(f"--iter {bad[0]} is outside this recipe's iterations 0..{recipe.loop.iterations}")


class _opened:
    """The run directory held for one run: its lock, and log.txt once the run writes; on exit both are released
    and a directory refused before anything was written is removed again."""

    def __init__(self, rd: RunDir):
        self.rd, self.handler = rd, None

    def __enter__(self) -> _opened:
        self.created = not self.rd.root.exists()
        self.rd.acquire_lock()
        return self

    def log_to_file(self) -> None:
        self.handler = add_file_log(self.rd.root / "log.txt")

    def __exit__(self, *exc) -> None:
        if self.handler is not None:
            logging.getLogger("mrlite").removeHandler(self.handler)
            self.handler.close()
        self.rd.release_lock()
        if self.created and self.rd.root.is_dir() and not any(self.rd.root.iterdir()):
            self.rd.root.rmdir()  # refused before anything was written: leave nothing behind


def _steps(recipe: Recipe, rd: RunDir, only: str | None, from_stage: str | None,
           iters: list[int] | None) -> list[tuple[int, str]]:
    steps = plan(recipe, only, iters)
    if from_stage is not None:
        _check_from(steps, from_stage)
    if (any(s == "sample" for _, s in steps) and (0, "prompts") not in steps
            and state(StageContext(recipe, rd, 0), "prompts")[0] == "missing"):
        steps = [(0, "prompts"), *steps]  # --only/--iter on a fresh run: the pool comes first
    return steps


def _run_group(recipe: Recipe, rd: RunDir, group: list[tuple[int, str]], force: bool, isolate_heavy: bool,
               report: RunReport) -> None:
    """Run the stages of one group (one iteration's generation stages, or a single stage): in a stage
    subprocess when a heavy stage has work to do (vLLM frees its GPU memory only when its process ends)."""
    t = group[0][0]
    ctx = StageContext(recipe, rd, t, force)
    todo = [s for _, s in group if state(ctx, s)[0] in ("missing", "stale")]
    if isolate_heavy and todo and any(s in HEAVY_STAGES for s in todo):
        for _, s in group:
            if s not in todo and state(ctx, s)[0] == "done":
                run_stage(ctx, s)
                report.steps.append((t, s, "cached"))
        _run_worker(rd.root, t, todo, force)
        report.steps.extend((t, s, "ran") for s in todo)
    else:
        try:
            for _, s in group:
                report.steps.append((t, s, run_stage(ctx, s)))
        finally:
            ctx.close()
    for _, s in group:  # judge health of each stage that just ran → the recipe's trackers
        if s in todo:
            log_stage(recipe, rd.root, t, s)


def _check_from(steps: list[tuple[int, str]], stage: str) -> tuple[int, str]:
    start = next(((t, s) for t, s in steps if s == stage), None)
    if start is None:
        raise RecipeError(f"--from {stage}: that stage does not run in the selected iterations")
    return start


def _forget_from(rd: RunDir, steps: list[tuple[int, str]], stage: str) -> None:
    """``--from S``: drop the markers of S in the first selected iteration and of every later selected step.

    Iterations outside ``--iter`` keep their markers; if their inputs changed, the next run reports them stale.
    """
    start = _check_from(steps, stage)
    for t, s in steps[steps.index(start):]:
        rd.remove_marker(t, s)


def run_worker(run_dir: Path, t: int, stages: list[str], force: bool) -> None:
    """Body of ``python -m mrlite _worker``: run some stages of one iteration in this process."""
    from mrlite.recipe import load_recipe

    rd = RunDir(run_dir)
    recipe = load_recipe(rd.root / "recipe.yaml")
    handler = add_file_log(rd.root / "log.txt")
    ctx = StageContext(recipe, rd, t, force)
    try:
        for s in stages:
            run_stage(ctx, s)
    finally:
        ctx.close()
        logging.getLogger("mrlite").removeHandler(handler)
        handler.close()


__all__ = ["RunReport", "StageError", "StageFailed", "plan", "run", "run_worker"]
