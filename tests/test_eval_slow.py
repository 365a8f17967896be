"""The data and eval commands on a real (tiny random) transformers model through the hf backend. Slow: loads torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import mrlite
from mrlite.cli import cli
from mrlite.evaluate import run_eval
from mrlite.rundir import read_jsonl

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
MESSAGES = str(REPO / "tests" / "assets" / "oasst_messages.jsonl")


@pytest.fixture(scope="module", autouse=True)
def _needs_hf():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("sklearn")


def test_eval_with_a_local_model_as_judge(tmp_path):
    run = tmp_path / "run"
    mrlite.run(mrlite.load_recipe(REPO / "recipes" / "smoke.yaml"), run)
    s = run_eval(run, iters=[1], judge="tiny-random", limit=2, judge_max_tokens=8, n_boot=0)
    assert s["judge"].startswith("tiny-random@") and s["judge_calls"] == 4
    rows = read_jsonl(run / "eval" / "judgments.jsonl")
    assert len(rows) == 4 and all(r["text"] is not None for r in rows)  # a random model: verdicts may fail
    c = s["comparisons"][0]
    assert c["scored"] + c["failed_prompts"] == 2
    again = run_eval(Path(shutil.copytree(run, tmp_path / "copy")), iters=[1], judge="tiny-random", limit=2,
                     judge_max_tokens=8, n_boot=0)
    assert again["judge_calls"] == 0 and again["comparisons"] == s["comparisons"]


def test_data_commands_with_a_local_model(tmp_path):
    r = CliRunner().invoke(cli, ["data", "eft", MESSAGES, "--model", "tiny-random", "--limit", "2",
                                 "--max-new-tokens", "8", "--out", str(tmp_path / "eft.jsonl")])
    assert r.exit_code == 0, r.output
    assert '"replies": 6' in r.output and (tmp_path / "eft.jsonl").is_file()
    r = CliRunner().invoke(cli, ["data", "prompts", "--model", "tiny-random", "--n", "2", "--batch", "2",
                                 "--max-new-tokens", "16", "--out", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    assert len(read_jsonl(tmp_path / "p.jsonl")) <= 2
