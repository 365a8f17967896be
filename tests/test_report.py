"""``mrlite report``: report.md sections and non-trivial PNGs, with and without an eval, plus tracker logging and
the status rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from eval_helpers import run, smoke_run  # noqa: F401  (fixtures)
from click.testing import CliRunner

from mrlite.cli import cli
from mrlite.status import status_table
from mrlite.eval.winrate import LC_NAME, PromptResult, judge_agreement

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
REPO = Path(__file__).resolve().parents[1]
HUMAN = str(REPO / "tests" / "assets" / "oasst_messages.jsonl")
TRAINING_FIGS = {"scores", "lengths", "parse_rates", "pairs", "training", "meta_bias"}
SECTIONS = ["# mrlite report: smoke", "## Iterations", "## Judge scores", "## Response length", "## Parse rates",
            "## Preference pairs", "## DPO training", "## Meta-judge biases", "## Evaluation: win rates",
            "## Judge quality vs human rankings"]


def _assert_real_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000, path
    with Image.open(path) as im:
        assert im.width >= 600 and im.height >= 300
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20, f"{path.name} looks blank"


def test_report_without_eval_degrades_gracefully(run):
    r = CliRunner().invoke(cli, ["report", str(run)])
    assert r.exit_code == 0, r.output
    md = (run / "report.md").read_text()
    for s in SECTIONS[:-1]:
        assert s in md
    assert "`mrlite eval` has not run on this directory yet" in md
    figs = {p.stem for p in (run / "report").glob("*.png")}
    assert figs == TRAINING_FIGS
    for p in (run / "report").glob("*.png"):
        _assert_real_png(p)
        assert f"(report/{p.name})" in md
    assert "| 1 | 24 | " in md and "| 2 | 24 | " in md  # one table row per iteration


def test_report_with_eval_and_status(run):
    r = CliRunner().invoke(cli, ["eval", str(run), "--limit", "6", "--bootstrap", "20", "--human", HUMAN,
                                 "--human-split", "train"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["report", str(run)])
    assert r.exit_code == 0, r.output
    md = (run / "report.md").read_text()
    for s in SECTIONS:
        assert s in md
    assert "| M1 vs M0 |" in md and "| M2 vs M1 |" in md and "| M2 | " in md
    assert LC_NAME in md and "annotations_<comparison>.json" in md
    assert "## Judge agreement with the external judge" not in md  # self-judged: nothing to agree with
    figs = {p.stem for p in (run / "report").glob("*.png")}
    assert figs == TRAINING_FIGS | {"winrates", "judge_quality"}
    for name in ("winrates", "judge_quality"):
        _assert_real_png(run / "report" / f"{name}.png")
    rows = status_table(run)
    assert [r["stage"] for r in rows if r["stage"] == "eval"] == ["eval"] * 3
    assert any(r["stage"] == "vs_human" for r in rows)
    rep = [r for r in rows if r["stage"] == "report"]
    assert rep and rep[0]["state"] == "done" and rep[0]["rows"] == 8


def test_report_logs_to_a_tracker(run, monkeypatch):
    logged = []
    fake = SimpleNamespace(init=lambda **kw: SimpleNamespace(finish=lambda: logged.append("finish")),
                           log=lambda row, step: logged.append((step, row)), finish=lambda: None)
    monkeypatch.setitem(sys.modules, "trackio", fake)
    monkeypatch.setattr("mrlite.report.make_figures", lambda its, ev, out: {})  # figures are tested above
    r = CliRunner().invoke(cli, ["report", str(run), "--log", "trackio", "--project", "p"])
    assert r.exit_code == 0, r.output
    assert [x[0] for x in logged[:-1]] == [1, 2] and logged[-1] == "finish"
    assert logged[0][1]["pairs/actor"] == 24.0 and "judge/mean_score" in logged[0][1]


def test_report_errors_are_one_line(tmp_path, run, monkeypatch):
    r = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "not a run directory" in r.output
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    r = CliRunner().invoke(cli, ["report", str(run), "--log", "wandb"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "pip install wandb" in r.output


def test_report_shows_lc_warnings_and_the_judge_agreement_table(run):
    r = CliRunner().invoke(cli, ["eval", str(run), "--limit", "6", "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    path = run / "eval" / "summary.json"
    ev = json.loads(path.read_text())
    ev["comparisons"][0]["lc_warnings"] = ["not identifiable: M_t's answer is longer in 95% of the prompts"]
    ref = [PromptResult(str(i), 1, -1, 10, 10) for i in range(10)]
    own = [PromptResult(str(i), 1, 1 if i < 4 else -1, 10, 10) for i in range(10)]
    agree = judge_agreement(own, ref, n_boot=50)
    ev["judge_agreement"] = {"judge": "self:M2@abc", "reference": "openai:http://x/v1#gpt", "judge_calls": 40,
                             "judge_cached": 0, "comparisons": [{"label": "M2_vs_M0", "t": 2, "base": 0, **agree}],
                             "all": agree}
    path.write_text(json.dumps(ev))
    r = CliRunner().invoke(cli, ["report", str(run)])
    assert r.exit_code == 0, r.output
    md = (run / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| M1 vs M0 |"))
    assert "⚠" in row and "- ⚠ M1 vs M0: LC not identifiable: M_t's answer is longer in 95% of the prompts." in md
    assert "## Judge agreement with the external judge" in md and "`self:M2@abc`" in md
    assert "| M2 vs M0 | 20 | 80.0% [" in md and "| all | 20 | 80.0% [" in md
    assert md.index("## Judge quality vs human rankings") < md.index("## Judge agreement with the external judge")
