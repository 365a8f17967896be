"""User-facing errors, and the one mechanism every CLI command uses to report them.

``MrliteError`` is the base of every error a user can fix (recipe, run directory, stage input, backend, model,
data source, endpoint, evaluation, report): its message is one line saying what is wrong, where, and how to fix
it. The CLI turns any of them into one ``Error: …`` line and exit code 1. This module imports no other mrlite
module (and no click) at import time, so every layer can import it. Used by ``cli/__init__.py``, ``cli/data.py`` and ``cli/eval.py``.
"""

from __future__ import annotations

import functools
import sys

WORKER_USER_ERROR = 3
"""Exit code of a stage subprocess that already printed a one-line user error (the parent adds nothing)."""


class MrliteError(Exception):
    """A problem the user can fix; the message is one line (what, where, how to fix).

    A subclass instance with a true ``quiet`` attribute has been reported already (a stage subprocess printed
    it): the CLI then only exits non-zero.
    """


def user_errors(interrupted: str):
    """Decorator for a Click command; ``interrupted`` is what to tell the user after Ctrl-C."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            import click

            try:
                return fn(*args, **kwargs)
            except MrliteError as e:
                if getattr(e, "quiet", False):  # the stage subprocess printed its one line already
                    sys.exit(1)
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


__all__ = ["WORKER_USER_ERROR", "MrliteError", "setup_cli_logging", "user_errors"]
