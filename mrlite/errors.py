"""One mechanism for every CLI command: errors a user can fix become one ``Error: …`` line and exit code 1.

Used by ``cli.py`` and ``cli_eval.py``. Exception classes are imported when a command fails or runs, never at
start-up, so ``mrlite --help`` stays light.
"""

from __future__ import annotations

import functools
import sys

import click


def user_error_types() -> tuple[type[Exception], ...]:
    """Every exception class whose message is a one-line, user-fixable problem."""
    from mrlite.backends import BackendError
    from mrlite.endpoint import EndpointError
    from mrlite.evaluate import EvalError
    from mrlite.loop import StageFailed
    from mrlite.models import ModelError
    from mrlite.push import PushError
    from mrlite.recipe import RecipeError
    from mrlite.report import ReportError
    from mrlite.rundir import RunDirError
    from mrlite.sources import SourceError
    from mrlite.stages import StageError

    return (RecipeError, RunDirError, StageError, StageFailed, BackendError, SourceError, ModelError,
            EndpointError, EvalError, ReportError, PushError)


def user_errors(interrupted: str):
    """Decorator for a Click command; ``interrupted`` is what to tell the user after Ctrl-C."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from mrlite.loop import StageFailed

            try:
                return fn(*args, **kwargs)
            except StageFailed as e:
                if e.quiet:  # the stage subprocess printed its one line already
                    sys.exit(1)
                raise click.ClickException(str(e)) from None
            except user_error_types() as e:
                raise click.ClickException(str(e)) from None
            except KeyboardInterrupt:
                click.echo(f"\nInterrupted. {interrupted}", err=True)
                sys.exit(130)

        return wrapper

    return decorate


def setup_cli_logging(verbose: int, quiet: bool) -> None:
    """-q: warnings only; default: info; -v: debug."""
    from mrlite.log import setup_logging

    setup_logging(-1 if quiet else verbose)
