"""Progress a person can read: one bar per running stage on the terminal, and a progress record on disk.

A chunked stage calls :class:`StageProgress` once per chunk. It draws a tqdm bar (prompts done/total, tokens/s,
ETA) on mrlite's console stream — the terminal even inside a stage subprocess whose library output goes to
``log.txt`` — and only when that stream is a terminal. It also writes ``iter_NN/.parts/<stage>/progress.json``
atomically, so ``mrlite status RUN_DIR`` (another process) can show the stage in progress and its ETA. The
record lives in the stage's ``.parts`` folder, which is removed when the stage finishes, so finished run
directories stay byte-identical. Exercised by: ``mrlite run recipes/tiny.yaml`` then ``mrlite status runs/tiny``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PROGRESS_FILE = "progress.json"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = round(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class StageProgress:
    """Bar + progress record of one stage of one iteration.

    Args:
        parts: The stage's ``.parts`` folder (the record is written there).
        label: ``"iter 1 judge"``.
        total: Work units (prompts) of the stage; ``done``: units already written before this process started.
        unit: What a unit is, for the bar.
    """

    def __init__(self, parts: Path, label: str, total: int, done: int = 0, unit: str = "prompts",
                 stage: str = "", t: int = 0):
        from mrlite.log import console_stream, console_verbosity

        self.parts, self.label, self.total, self.unit = parts, label, total, unit
        self.stage, self.t = stage, t
        self.done = self.first = done
        self.tokens = 0
        self.t0 = time.time()
        stream = console_stream()
        show = console_verbosity() >= 0 and _isatty(stream) and total > 0
        self.bar = None
        if show:
            import shutil

            from tqdm.auto import tqdm

            # A terminal that reports no size (some ptys, e.g. `script`) would make tqdm hide the bar (0 rows).
            size = shutil.get_terminal_size(fallback=(100, 24))
            self.bar = tqdm(total=total, initial=done, file=stream, desc=label, unit=unit[:-1] or unit,
                            leave=False, ncols=min(size.columns or 100, 120), nrows=max(size.lines, 2), mininterval=0,
                            bar_format="{desc} {bar} {n_fmt}/{total_fmt} " + unit + " [{elapsed}<{remaining}{postfix}]")
        self._write()

    def advance(self, units: int, tokens: int = 0) -> None:
        self.done += units
        self.tokens += tokens
        if self.bar is not None:
            rate = self.tokens_per_s()
            if rate is not None:
                self.bar.set_postfix_str(f"{rate:.1f} tok/s", refresh=False)
            self.bar.update(units)
        self._write()

    def tokens_per_s(self) -> float | None:
        dt = time.time() - self.t0
        return self.tokens / dt if dt > 0 and self.tokens else None

    def eta_s(self) -> float | None:
        dt, made = time.time() - self.t0, self.done - self.first
        if made <= 0 or dt <= 0:
            return None
        return (self.total - self.done) * dt / made

    def record(self) -> dict:
        return {"stage": self.stage, "iter": self.t, "label": self.label, "unit": self.unit, "done": self.done,
                "total": self.total, "tokens": self.tokens, "tokens_per_s": self.tokens_per_s(),
                "started": round(self.t0, 3), "updated": round(time.time(), 3), "eta_s": self.eta_s()}

    def _write(self) -> None:
        if not self.parts.is_dir():
            return
        # tmp + rename, with a tmp name of this process's own: generation workers of one stage share the folder,
        # and a common tmp name would let one worker rename another's file away mid-write.
        tmp = self.parts / f"{PROGRESS_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.record()) + "\n", encoding="utf-8")
        os.replace(tmp, self.parts / PROGRESS_FILE)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def read_progress(parts: Path) -> dict | None:
    """The last progress record of a stage (None when absent or unreadable)."""
    try:
        rec = json.loads((parts / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def describe(rec: dict, now: float | None = None) -> str:
    """``"24/80 prompts (30%), 38.2 tok/s, ETA 1m12s (as of 5s ago)"``."""
    now = time.time() if now is None else now
    done, total = rec.get("done", 0), rec.get("total", 0) or 0
    pc = f" ({100 * done / total:.0f}%)" if total else ""
    parts = [f"{done}/{total} {rec.get('unit', 'prompts')}{pc}"]
    if rec.get("tokens_per_s"):
        parts.append(f"{rec['tokens_per_s']:.1f} tok/s")
    age = max(0.0, now - float(rec.get("updated", now)))
    eta = rec.get("eta_s")
    parts.append(f"ETA {fmt_seconds(max(0.0, eta - age)) if eta is not None else '?'}")
    return ", ".join(parts) + f" (as of {fmt_seconds(age)} ago)"
