"""Logging set-up: console (INFO, plain lines) and the run's ``log.txt`` (DEBUG, timestamped).

Library modules log through ``logging.getLogger(__name__)``; only ``cli.py`` talks to the terminal directly.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_CONSOLE = "mrlite-console"


def setup_logging(verbosity: int = 0) -> None:
    """Console handler on the ``mrlite`` logger: -1 quiet (warnings), 0 info, 1+ debug."""
    root = logging.getLogger("mrlite")
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        if h.get_name() == _CONSOLE:
            root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.set_name(_CONSOLE)
    h.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    h.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(h)
    root.propagate = False


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
