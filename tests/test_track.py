"""Live training metrics: ``log.report_to`` validation, the missing-package line, and the orchestrator's
per-iteration judge-health scalars in TensorBoard event files (offline)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mrlite
from mrlite.cli import cli
from mrlite.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"


def test_report_to_accepts_names_and_lists():
    assert load_recipe(SMOKE).log.trackers() == []
    assert load_recipe(SMOKE, ["log.report_to=tensorboard"]).log.trackers() == ["tensorboard"]
    assert load_recipe(SMOKE, ["log.report_to=[wandb, tensorboard]"]).log.trackers() == ["wandb", "tensorboard"]
    with pytest.raises(RecipeError, match=r"log\.report_to: unknown tracker 'tensorbord'; did you mean 'tensorboard'"):
        load_recipe(SMOKE, ["log.report_to=tensorbord"])


def test_missing_tracker_package_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", str(SMOKE), "--out", str(out), "--set", "log.report_to=wandb"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "log.report_to: wandb needs the wandb package" in lines[0] and "pip install" in lines[0]
    assert not out.exists()


def test_judge_health_scalars_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    mrlite.run(load_recipe(SMOKE, ["log.report_to=tensorboard"]), out)
    ea = EventAccumulator(str(out / "tracker" / "smoke-health"))
    ea.Reload()
    for t in (1, 2):
        m = json.loads((out / f"iter_0{t}" / ".done" / "meta_judge.json").read_text())["summary"]
        j = json.loads((out / f"iter_0{t}" / ".done" / "judge.json").read_text())["summary"]
        got = {s.step: s.value for s in ea.Scalars("health/meta_judge/positional_bias")}
        assert got[t] == pytest.approx(m["positional_bias"], rel=1e-6)
        got = {s.step: s.value for s in ea.Scalars("health/judge/parse_rate")}
        assert got[t] == pytest.approx((j["judgments"] - j["unparsable"]) / j["judgments"], rel=1e-6)
    assert {"health/pairs/actor", "health/train/last_loss"} <= set(ea.Tags()["scalars"])


def test_no_tracker_files_without_report_to(tmp_path):
    out = tmp_path / "run"
    mrlite.run(load_recipe(SMOKE), out)
    assert not (out / "tracker").exists()
