"""The ``mrlite`` command line (Click). Thin: parse, call a module, echo. Imports no torch at start-up.

Exercised by: ``mrlite --help``, ``mrlite run recipes/smoke.yaml``.
"""

from __future__ import annotations

import sys

import click

from mrlite import __version__
from mrlite.errors import WORKER_USER_ERROR, MrliteError, setup_cli_logging, user_errors
from mrlite.stages import STAGES


_user_errors = user_errors("Run the same command again to resume where it stopped.")
_setup = setup_cli_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mrlite")
def cli():
    """mrlite — Meta-Rewarding Language Models (Wu et al. 2024) on one GPU or a CPU.

    One model plays actor, judge and meta-judge; each iteration trains it with DPO on answer pairs and
    judgment pairs, merges the LoRA adapter, and goes again.

    \b
    Getting started:
      mrlite run recipes/smoke.yaml        # fake backend, seconds, no torch
      mrlite run recipes/tiny.yaml         # SmolLM2-135M on CPU, minutes
      mrlite status runs/tiny
    """


@cli.command("run")
@click.argument("recipe")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe field (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<recipe name>).")
@click.option("--only", type=click.Choice(STAGES), help="Run only this stage.")
@click.option("--from", "from_stage", type=click.Choice(STAGES), help="Recompute from this stage on.")
@click.option("--iter", "iters", type=int, multiple=True, help="Restrict to iteration K (repeatable; 0 = the prompt pool and EFT).")
@click.option("--force", is_flag=True, help="Recompute stages whose inputs or settings changed.")
@click.option("-v", "--verbose", count=True, help="More output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@_user_errors
def run_cmd(recipe, sets, out, only, from_stage, iters, force, verbose, quiet):
    """Run (or resume) the Meta-Rewarding loop of RECIPE.

    Finished stages are skipped; a killed run resumes where it stopped when you run the same command again.

    \b
    Examples:
      mrlite run recipes/smoke.yaml
      mrlite run recipes/tiny.yaml --set loop.iterations=1 --set data.prompts_per_iteration=4
      mrlite run recipes/tiny.yaml --only judge --iter 2
      mrlite run recipes/tiny.yaml --from pairs --iter 1 --force
    """
    from mrlite.loop import default_out
    from mrlite.loop import run as run_loop
    from mrlite.recipe import load_recipe

    _setup(verbose, quiet)
    r = load_recipe(recipe, sets)
    out = out or str(default_out(r))
    if verbose:
        click.echo(r.to_yaml().rstrip(), err=True)
    report = run_loop(r, out, only=only, from_stage=from_stage, iters=list(iters) or None, force=force)
    ran = sum(1 for *_, s in report.steps if s == "ran")
    cached = sum(1 for *_, s in report.steps if s == "cached")
    click.echo(f"done: {ran} stages ran, {cached} cached → {report.run_dir}")


@cli.command()
@click.argument("recipe")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe field (repeatable).")
@_user_errors
def validate(recipe, sets):
    """Load and validate RECIPE and print it fully resolved. Imports no torch.

    \b
    Examples:
      mrlite validate recipes/paper.yaml
      mrlite validate recipes/tiny.yaml --set actor.n=2
    """
    from mrlite.recipe import load_recipe

    click.echo(load_recipe(recipe, sets).to_yaml().rstrip())


@cli.command()
@click.argument("run_dir", type=click.Path())
@_user_errors
def status(run_dir):
    """Show iterations × stages of RUN_DIR: done / stale / missing, rows, parse rates; a stage in progress shows
    "running" with prompts (or steps) done, tokens/s and its ETA from its last progress record.

    \b
    Examples:
      mrlite status runs/smoke
    """
    from mrlite.status import status_table

    rows = status_table(run_dir)
    click.echo(f"{'iter':>4}  {'stage':<10}  {'state':<7}  {'rows':>6}  detail")
    for r in rows:
        rows_s = "" if r["rows"] is None else str(r["rows"])
        click.echo(f"{r['iteration']:>4}  {r['stage']:<10}  {r['state']:<7}  {rows_s:>6}  {r['detail']}")


@cli.command()
@click.argument("name", required=False)
@_user_errors
def recipes(name):
    """List the bundled recipes, or print recipe NAME (copy it to start your own).

    \b
    Examples:
      mrlite recipes
      mrlite recipes tiny > my.yaml
    """
    from mrlite.recipe import RecipeError, bundled_recipes_dir

    d = bundled_recipes_dir()
    files = sorted(d.glob("*.yaml"))
    if name is None:
        for f in files:
            first = next((ln[1:].strip() for ln in f.read_text().splitlines() if ln.startswith("#")), "")
            click.echo(f"{f.stem:<22} {first}")
        return
    p = d / f"{name.removesuffix('.yaml')}.yaml"
    if not p.exists():
        raise RecipeError(f"no bundled recipe {name!r}; choose one of: {', '.join(f.stem for f in files)}")
    click.echo(p.read_text().rstrip())


@cli.command("_worker", hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--iter", "t", type=int, required=True)
@click.option("--stages", required=True)
@click.option("--force", is_flag=True)
def worker(run_dir, t, stages, force):
    """Internal: run some stages of one iteration in this process (started by `mrlite run`)."""
    import os
    import traceback
    from pathlib import Path

    from mrlite.log import VERBOSITY_ENV, console_stream, quiet_libraries, setup_logging
    from mrlite.loop import run_worker

    try:
        setup_logging(int(os.environ.get(VERBOSITY_ENV, "0")))
    except ValueError:
        setup_logging(0)
    redirected = quiet_libraries(Path(run_dir) / "log.txt")
    try:
        run_worker(Path(run_dir), t, stages.split(","), force)
    except MrliteError as e:
        click.echo(f"Error: {e}", file=console_stream())
        sys.exit(WORKER_USER_ERROR)
    except Exception as e:
        if not redirected:
            raise
        traceback.print_exc()  # into log.txt, with the libraries' output that led to it
        click.echo(f"Error: {type(e).__name__}: {' '.join(str(e).split())[:400]} (traceback in {run_dir}/log.txt)",
                   file=console_stream())
        sys.exit(1)


# Commands that live in their own modules (each module imports no torch at import time).
# One line per command: _register("mrlite.module", "click_command_object_name")
def _register(module: str, attr: str) -> None:
    import importlib

    cli.add_command(getattr(importlib.import_module(module), attr))


_register("mrlite.cli.plan", "plan_cmd")
_register("mrlite.tools.doctor", "doctor_cmd")
_register("mrlite.cli.data", "data_group")
_register("mrlite.cli.eval", "eval_cmd")
_register("mrlite.cli.eval", "report_cmd")
_register("mrlite.hub.push", "push_cmd")
_register("mrlite.tools.bench", "bench_group")
# (end of command registrations)


def main() -> None:
    cli(prog_name="mrlite")


if __name__ == "__main__":
    main()
