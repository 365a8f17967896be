"""Secrets never reach the run directory or logs; trust_remote_code stays off unless a recipe sets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mrlite

ROOT = Path(__file__).resolve().parents[1]
PLANTED = "hf_PLANTEDsecretTOKEN1234567890"


def test_planted_keys_are_not_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, HF_TOKEN=PLANTED, HUGGING_FACE_HUB_TOKEN=PLANTED, OPENAI_API_KEY=PLANTED,
               WANDB_API_KEY=PLANTED)
    r = subprocess.run([sys.executable, "-m", "mrlite", "run", str(ROOT / "recipes" / "smoke.yaml"), "--out",
                        str(out), "-v"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert PLANTED not in r.stdout + r.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 30
    for p in files:
        assert PLANTED.encode() not in p.read_bytes(), p


def test_trust_remote_code_defaults_off() -> None:
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        assert mrlite.load_recipe(recipe).model.trust_remote_code is False, recipe
