"""Progress a person can read (bar on a terminal, silent otherwise, a record `mrlite status` reads) and a quiet
console (library output goes to log.txt in a stage subprocess; -v brings it back)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mrlite.cli import cli
from mrlite.progress import StageProgress, describe, read_progress

ROOT = Path(__file__).resolve().parents[1]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _with_console(stream, fn):
    from mrlite import log

    old = dict(log._state)
    log._state.update(stream=stream, verbosity=0)
    try:
        return fn()
    finally:
        log._state.update(old)


def test_bar_on_a_terminal_and_record_on_disk(tmp_path):
    tty = _Tty()

    def go():
        p = StageProgress(tmp_path, "iter 1 judge", 80, done=16, stage="judge", t=1)
        p.t0 -= 10  # ten seconds ago: 16 more prompts in 10 s → 48 left take 30 s
        p.advance(16, tokens=400)
        rec = read_progress(tmp_path)
        p.close()
        return rec

    rec = _with_console(tty, go)
    out = tty.getvalue()
    assert "iter 1 judge" in out and "32/80 prompts" in out and "tok/s" in out
    assert rec["done"] == 32 and rec["total"] == 80 and rec["stage"] == "judge" and rec["iter"] == 1
    assert abs(rec["eta_s"] - 30.0) < 1.0 and abs(rec["tokens_per_s"] - 40.0) < 1.0
    text = describe({**rec, "tokens_per_s": 40.0, "eta_s": 30.0}, now=rec["updated"] + 10)
    assert text.startswith("32/80 prompts (40%), 40.0 tok/s, ETA 20s")


def test_no_bar_when_not_a_terminal(tmp_path):
    plain = io.StringIO()
    _with_console(plain, lambda: StageProgress(tmp_path, "iter 1 sample", 8).advance(8))
    assert plain.getvalue() == "" and read_progress(tmp_path)["done"] == 8


def test_status_shows_the_stage_in_progress(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, MRLITE_FAULT="judge:chunk@2")  # dies after the 2nd of 3 judge chunks
    r = subprocess.run([sys.executable, "-m", "mrlite", "run", str(ROOT / "recipes" / "smoke.yaml"), "--out", str(out),
                        "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 99, r.stderr
    rec = read_progress(out / "iter_01" / ".parts" / "judge")
    assert rec["done"] == 16 and rec["total"] == 24
    res = CliRunner().invoke(cli, ["status", str(out)])
    line = next(ln for ln in res.output.splitlines() if " judge " in ln and ln.strip().startswith("1"))
    assert "partial" in line and "16/24 prompts (67%)" in line and "resume" in line
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))  # a live run
    res = CliRunner().invoke(cli, ["status", str(out)])
    line = next(ln for ln in res.output.splitlines() if " judge " in ln and ln.strip().startswith("1"))
    assert "running" in line and "ETA" in line
    # the resumed stage finishes and its record goes with its parts
    (out / ".lock").unlink()
    r = subprocess.run([sys.executable, "-m", "mrlite", "run", str(ROOT / "recipes" / "smoke.yaml"), "--out", str(out),
                        "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (out / "iter_01" / ".parts").exists()


NOISY = """
import logging, os, sys, warnings
from pathlib import Path
from mrlite.log import quiet_libraries, setup_logging
setup_logging(int(os.environ.get("MRLITE_VERBOSITY", "0")))
quiet_libraries(Path(sys.argv[1]))
print("{'loss': 0.69, 'grad_norm': 1.0}")
warnings.warn("deprecated thing", FutureWarning)
os.write(2, b"Loading weights: 100%\\n")
logging.getLogger("transformers.tokenization").warning("tokenizer notice")
logging.getLogger("mrlite.backends.hf").info("hf generate: 4 sequences")
logging.getLogger("mrlite.stages").info("judge  iter 1: 12 judgments")
"""


def _noisy(tmp_path: Path, verbosity: str) -> tuple[str, str]:
    log_txt = tmp_path / f"log{verbosity}.txt"
    env = dict(os.environ, MRLITE_VERBOSITY=verbosity, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", NOISY, str(log_txt)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr, log_txt.read_text() if log_txt.exists() else ""


def test_library_output_goes_to_log_txt_and_v_brings_it_back(tmp_path):
    console, log_txt = _noisy(tmp_path, "0")
    assert console.strip() == "judge  iter 1: 12 judgments"
    for noise in ("'loss': 0.69", "FutureWarning", "Loading weights", "tokenizer notice"):
        assert noise in log_txt and noise not in console
    console, _ = _noisy(tmp_path, "1")
    for line in ("'loss': 0.69", "FutureWarning", "Loading weights", "tokenizer notice", "hf generate", "judge  iter 1"):
        assert line in console
