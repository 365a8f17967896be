"""The data and eval commands on a real (tiny random) transformers model through the hf backend. Slow: loads torch."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from _models import model_home, tiny_model  # noqa: F401  (fixtures)
from click.testing import CliRunner
from eval_helpers import StubServer, chat_reply

from mrlite.cli import cli
from mrlite.eval.run import run_eval
from mrlite.rundir import RunDir, read_jsonl

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
MESSAGES = str(REPO / "tests" / "assets" / "oasst_messages.jsonl")


@pytest.fixture(scope="module", autouse=True)
def _needs_hf():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("sklearn")


def _longer_wins(body):
    """A stub external judge: the longer answer wins, equal lengths tie (always a verdict)."""
    text = body["messages"][0]["content"]
    a = re.search(r"Start of Answer A\]\n(.*)\n\[The End of Answer A", text, re.S).group(1)
    b = re.search(r"Start of Answer B\]\n(.*)\n\[The End of Answer B", text, re.S).group(1)
    return chat_reply("[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]")


def test_eval_real_answers_endpoint_verdicts_and_a_local_self_judge(tiny_model, tmp_path):
    # A run whose M_0 and M_1 are the tiny random Llama, answered through the hf backend; an external judge on a
    # stub endpoint gives every verdict; the self-judge (M_1, hf backend) judges the same pairs for agreement.
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: t\nmodel:\n  base: tiny-random\n")
    shutil.copytree(tiny_model, run / "iter_01" / "model")
    RunDir(run).write_marker(1, "train", {"stage": "train"})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(
        ["Name a fruit.", "Explain tides in one sentence.", "What is 2+2?"])))
    kw = dict(prompts=str(prompts), limit=3, n_boot=20, judge_max_tokens=8, max_new_tokens=12, api_key_env=None)
    with StubServer(_longer_wins) as stub:  # one server for both evals: its URL is part of the judge's identity
        s = run_eval(run, judge=f"openai:{stub.url}#stub", **kw)
        assert stub.hits == 3 * 2  # one comparison (M1 vs M0), three prompts, both orders
        # a second eval on a copy asks nobody anything
        again = run_eval(Path(shutil.copytree(run, tmp_path / "copy")), judge=f"openai:{stub.url}#stub", **kw)
        assert stub.hits == 6
    assert [m["answers"] for m in s["models"]] == [3, 3] and s["answer_calls"] == 6
    c = s["comparisons"][0]
    assert c["label"] == "M1_vs_M0" and (c["prompts"], c["scored"], c["failed_prompts"]) == (3, 3, 0)
    assert c["wins"] + c["ties"] + c["losses"] == 3 and c["lc_win_rate"] is not None
    ann = json.loads((run / "eval" / "alpaca_eval" / "annotations_M1_vs_M0.json").read_text())
    answers = {a["prompt"]: a["output"] for a in read_jsonl(run / "eval" / "answers" / "M1.jsonl")}
    assert len(ann) == 3 and all(r["output_2"] == answers[r["instruction"]] != "" for r in ann)
    assert {r["generator_2"] for r in ann} == {"t-M1"} and {r["annotator"] for r in ann} == {s["judge"]}
    a = s["judge_agreement"]
    assert a["judge"].startswith("self:M1@") and a["judge_calls"] == 6
    own = read_jsonl(run / "eval" / "self_judgments.jsonl")
    assert len(own) == 6 and all(r["text"] is not None for r in own)
    # a random model rarely names an answer: every order is either compared or counted failed, none lost
    assert a["all"]["pairs"] + a["all"]["failed"] == 6 == a["all"]["failed"] + sum(not r["failed"] for r in own)
    assert (again["answer_calls"], again["judge_calls"], again["judge_agreement"]["judge_calls"]) == (0, 0, 0)
    assert again["comparisons"] == s["comparisons"]


def test_data_commands_with_a_local_model(tmp_path):
    r = CliRunner().invoke(cli, ["data", "eft", MESSAGES, "--model", "tiny-random", "--limit", "2",
                                 "--max-new-tokens", "8", "--out", str(tmp_path / "eft.jsonl")])
    assert r.exit_code == 0, r.output
    assert '"prompts": 2, "replies": 6' in r.output and (tmp_path / "eft.jsonl").is_file()
    r = CliRunner().invoke(cli, ["data", "prompts", "--model", "tiny-random", "--n", "2", "--batch", "2",
                                 "--max-new-tokens", "16", "--out", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    assert '"kept": 2' in r.output and len(read_jsonl(tmp_path / "p.jsonl")) == 2
