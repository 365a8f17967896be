"""The paper recipe runs as shipped (with the fake backend and smaller sizes): no prompt file, no network; its
pool is grown in iteration 0, and warn-only guardrails let the judge train in iterations 1 and 2 even when the
meta-judge is heavily position-biased, while the report shows that bias in numbers and words."""

from __future__ import annotations

from pathlib import Path

import pytest

import mrlite
from mrlite.rundir import read_jsonl

OASST = Path(__file__).parent / "assets" / "oasst_trees.jsonl"
# The shipped recipe builds EFT from the Hub's oasst1; offline, the same build runs on the test trees.
SIZES = ["backends.generator=fake", "backends.trainer=fake", "model.base=fake", "data.generate.n=60",
         "data.prompts_per_iteration=12", "loop.chunk_size=16", f"eft.data=oasst:{OASST}"]


@pytest.fixture(scope="module")
def biased(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paper") / "run"
    recipe = mrlite.load_recipe("paper", [*SIZES, "backends.fake.first_position_bias=0.99"])
    assert recipe.data.prompts == "generate" and recipe.guardrails.mode == "warn"
    report = mrlite.run(recipe, out=out)
    assert [(t, s) for t, s, st in report.steps if st == "ran"][:3] == [(0, "prompts"), (0, "eft_data"), (0, "eft")]
    return out


def test_paper_grows_its_pool_and_runs_every_iteration(biased: Path) -> None:
    assert len(read_jsonl(biased / "iter_00" / "pool.jsonl")) == 60
    for t in (1, 2, 3, 4):
        assert (biased / f"iter_{t:02d}" / "model").is_dir()
    assert not (biased / "iter_03" / "meta_judgments.jsonl").exists()  # judge pairs in iterations 1-2 (paper)


def test_biased_meta_judge_still_trains_the_judge_and_the_report_says_so(biased: Path) -> None:
    for t in (1, 2):
        marker = mrlite.rundir.RunDir(biased).read_marker(t, "pairs")["summary"]
        assert marker["judge_pairs"] > 0
        assert marker["guardrail"].startswith("meta-judge positional bias: slot A won")
        assert marker["guardrail_action"] == "warn"
        meta = mrlite.rundir.RunDir(biased).read_marker(t, "meta_judge")["summary"]
        assert meta["positional_bias"] > 0.9 and meta["forced_share"] is not None
    from mrlite.report import write_report

    md, _ = write_report(biased)
    text = md.read_text()
    assert "Guardrail warning in iteration 1: meta-judge positional bias" in text
    assert "guardrails.mode is 'warn', so judge training went on" in text
    assert "Prompt pool: 60 prompts grown with `fake`" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| 1 | ") and "%" in ln and "/ >2" not in ln
               and ln.count("|") == 9)
    assert float(row.split("|")[5].strip().rstrip("%")) > 90  # positional bias column


def test_stop_mode_acts_from_the_next_iteration_only(tmp_path: Path) -> None:
    recipe = mrlite.load_recipe("paper", [*SIZES, "backends.fake.first_position_bias=0.99", "guardrails.mode=stop",
                                          "loop.iterations=2", "eft.enabled=false"])
    mrlite.run(recipe, out=tmp_path / "run")
    rd = mrlite.rundir.RunDir(tmp_path / "run")
    first = rd.read_marker(1, "pairs")["summary"]
    assert first["guardrail_action"] == "stop" and first["judge_pairs"] > 0  # the measuring iteration keeps its pairs
    assert rd.read_marker(2, "meta_judge") is None  # no meta-judge from iteration 2 on
    assert rd.read_marker(2, "pairs")["summary"]["judge_pairs"] == 0
    from mrlite.report import write_report

    md, _ = write_report(tmp_path / "run")
    assert ("Judge training stopped from iteration 2 on; the judge pairs of iteration 1, which measured the bias, "
            "were still trained on.") in md.read_text()
