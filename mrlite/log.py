"""Logging set-up: console (INFO, plain lines) and the run's ``log.txt`` (DEBUG, timestamped).

Library modules log through ``logging.getLogger(__name__)``; only ``cli/__init__.py`` talks to the terminal directly.

A quiet console: the console shows mrlite's own stage lines and progress bars. In a stage subprocess,
:func:`quiet_libraries` sends everything else the process writes — TRL's per-step metric dicts, "Loading
weights" and dataset-map bars, FutureWarnings, tokenizer notices, C-level prints — to ``log.txt`` by pointing
file descriptors 1 and 2 there, while mrlite's console handler keeps a private copy of the terminal. ``-v``
(verbosity >= 1) leaves the libraries on the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

_CONSOLE = "mrlite-console"
VERBOSITY_ENV = "MRLITE_VERBOSITY"
"""Set by the orchestrator for its stage subprocesses, so they keep the console settings of ``mrlite run``."""

_state: dict = {"stream": None, "verbosity": 0, "redirected": False}


def console_stream():
    """Where mrlite's console lines and progress bars go (the terminal, even when fd 2 goes to log.txt)."""
    return _state["stream"] or sys.stderr


def libraries_quiet() -> bool:
    """True in a stage subprocess whose library output goes to log.txt (:func:`quiet_libraries`)."""
    return bool(_state["redirected"])


def console_verbosity() -> int:
    """-1 quiet, 0 default, 1+ verbose (as set by the last :func:`setup_logging`)."""
    return _state["verbosity"]


GENERATOR_LOGGERS = ("mrlite.backends.hf", "mrlite.backends.vllm")


class _BackendChatter(logging.Filter):
    """The generators' per-call lines ("hf generate: 16 sequences ...") go to log.txt only; the stage's progress
    bar shows the rate. Their warnings and errors always reach the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(GENERATOR_LOGGERS)


def setup_logging(verbosity: int = 0) -> None:
    """Console handler on the ``mrlite`` logger: -1 quiet (warnings), 0 info, 1+ debug."""
    _state["verbosity"] = verbosity
    root = logging.getLogger("mrlite")
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        if h.get_name() == _CONSOLE:
            root.removeHandler(h)
    h = logging.StreamHandler(console_stream())
    h.set_name(_CONSOLE)
    h.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    h.setFormatter(logging.Formatter("%(message)s"))
    if verbosity <= 0:
        h.addFilter(_BackendChatter())
    root.addHandler(h)
    root.propagate = False


def quiet_libraries(log_path: Path) -> bool:
    """In a stage subprocess: send fd 1 and 2 to ``log_path`` and keep mrlite's console on the terminal.

    Does nothing with ``-v``. Returns True when it redirected. Call before the libraries are imported, so their
    progress bars are switched off too (they would only fill log.txt with carriage returns).
    """
    if console_verbosity() > 0:
        return False
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        os.environ.setdefault(var, "1")
    sys.stdout.flush()
    sys.stderr.flush()
    term = os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                     errors="replace")
    _state["stream"] = term
    for h in logging.getLogger("mrlite").handlers:
        if h.get_name() == _CONSOLE and isinstance(h, logging.StreamHandler):
            h.setStream(term)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _state["redirected"] = True
    return True


def add_file_log(path: Path) -> logging.Handler:
    """Append everything (DEBUG) to ``path``; returns the handler so the caller can remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(path, encoding="utf-8")
    h.setLevel(logging.DEBUG)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("mrlite").addHandler(h)
    if logging.getLogger("mrlite").level > logging.DEBUG or logging.getLogger("mrlite").level == 0:
        logging.getLogger("mrlite").setLevel(logging.DEBUG)
    return h
