"""``mrlite bench train --compare-share`` on the tiny random Llama: both DPO variants run on the same rows and
reach the same loss (each pair's prompt computed once is TRL's loss, up to float noise); the JSON has the ratio."""

from __future__ import annotations

import json

import pytest
from _models import model_home, tiny_model  # noqa: F401  (fixtures)
from click.testing import CliRunner

pytestmark = pytest.mark.slow
pytest.importorskip("trl")


def test_bench_train_compare_share(tiny_model, tmp_path):
    from mrlite.cli import cli

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(cli, ["bench", "train", "tiny", "--steps", "1", "--compare-share", "--json", str(out),
                                   "--set", "model.base=tiny-random", "--set", "train.lora.r=4"], prog_name="mrlite")
    assert res.exit_code == 0, res.output
    rows = {r["phase"]: r for r in json.loads(out.read_text())["rows"]}
    shared, full = rows["train dpo shared prompt"], rows["train dpo TRL full sequences"]
    assert shared["steps"] == full["steps"] == 2 and shared["rows"] == full["rows"] == 4
    assert shared["last_loss"] == pytest.approx(full["last_loss"], rel=1e-4)
    assert rows["train dpo: TRL step time / shared-prompt step time"]["ratio"] > 0
    assert "row tokens/step" in res.output and "with each prompt once" in res.output
