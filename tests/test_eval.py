"""``mrlite eval`` on a smoke (fake) run: leaderboard exports, AlpacaEval annotation files, both-order win rates,
judge quality, caching (a second eval asks nothing), the OpenAI-compatible judge against a local stub with the
self-judge's agreement, and one-line errors (including a missing eval extra)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from eval_helpers import StubServer, alpacaeval_reference, chat_reply, run, smoke_run  # noqa: F401  (fixtures)

import mrlite
from mrlite.backends.base import GenRequest, Sampling
from mrlite.backends.fake import FakeGenerator
from mrlite.eval.judge import render_pairwise
from mrlite.cli import cli
from mrlite.eval.run import run_eval
from mrlite.core.parsing import parse_pairwise
from mrlite.rundir import read_jsonl
from mrlite.eval.winrate import LC_NAME

pytest.importorskip("sklearn")
REPO = Path(__file__).resolve().parents[1]
HUMAN = str(REPO / "tests" / "assets" / "oasst_messages.jsonl")


@pytest.fixture
def generate_calls(monkeypatch) -> list:
    calls: list = []
    real = FakeGenerator.generate

    def counting(self, requests, sampling):
        calls.extend(r.role for r in requests)
        return real(self, requests, sampling)

    monkeypatch.setattr(FakeGenerator, "generate", counting)
    return calls


def test_eval_self_judge_exports_and_cache(run, generate_calls):
    s = run_eval(run, limit=8, n_boot=20, human=HUMAN, human_split="train")
    ev = run / "eval"
    assert [c["label"] for c in s["comparisons"]] == ["M1_vs_M0", "M2_vs_M0", "M2_vs_M1"]
    assert [c["kind"] for c in s["comparisons"]] == ["vs_seed", "vs_seed", "vs_prev"]
    # held-out prompts: none was trained on
    trained = {p["prompt"] for t in (1, 2) for p in read_jsonl(run / f"iter_{t:02d}" / "prompts.jsonl")}
    prompts = read_jsonl(ev / "prompts.jsonl")
    assert len(prompts) == 8 and not trained & {p["prompt"] for p in prompts}
    # exports in the leaderboards' formats
    for t in (0, 1, 2):
        alpaca = json.loads((ev / "alpaca_eval" / f"smoke-M{t}.json").read_text())
        assert alpaca and all(set(r) == {"instruction", "output", "generator", "dataset"} for r in alpaca)
        assert {r["generator"] for r in alpaca} == {f"smoke-M{t}"}
        arena = read_jsonl(ev / "arena_hard" / "model_answer" / f"smoke-M{t}.jsonl")
        assert arena[0]["model_id"] == f"smoke-M{t}" and arena[0]["choices"][0]["turns"][0]["content"] is not None
        assert {r["question_id"] for r in arena} <= {p["prompt_id"] for p in prompts}
    # every pair judged in both orders
    rows = read_jsonl(ev / "judgments.jsonl")
    assert len(rows) == 3 * 8 * 2
    assert sum(r["t_first"] for r in rows) == 3 * 8
    for c in s["comparisons"]:
        assert c["scored"] + c["failed_prompts"] == 8
        assert c["win_rate"] is None or c["win_rate_ci"][0] <= c["win_rate"] <= c["win_rate_ci"][1]
        assert c["failed_verdicts"] == sum(r["failed"] for r in rows if r["comparison"] == c["label"])
    assert [q["t"] for q in s["human"]["models"]] == [0, 1, 2] and s["human"]["prompts"] == 5
    assert [m["t"] for m in s["meta_judge"]] == [1, 2] and 0.5 < s["meta_judge"][0]["positional_bias"] < 0.8
    # 24 answers (3 models x 8 prompts) and 48 verdicts, all asked as eval requests: no meta-judge script involved
    # (identical answer pairs — the fake actor repeats a canonical answer — are judged once, then cached)
    assert s["judge_calls"] + s["judge_cached"] == 48
    assert generate_calls.count("eval") == 24 + s["judge_calls"] and "meta_judge" not in generate_calls
    verdicts = [r for r in rows if not r["failed"]]
    assert len(verdicts) > 30 and all(parse_pairwise(r["text"]) == r["verdict"] for r in verdicts)
    assert {r["text"].rsplit("\n", 1)[-1] for r in verdicts} <= {"[[A]]", "[[B]]", "[[C]]"}
    # AlpacaEval annotation files: one per comparison, one row per scored prompt; AlpacaEval's formula applied to
    # them gives the summary's numbers
    assert s["lc_definition"]["name"] == LC_NAME
    for c in s["comparisons"]:
        ann = json.loads((ev / "alpaca_eval" / f"annotations_{c['label']}.json").read_text())
        assert len(ann) == c["scored"] > 0
        assert {r["generator_1"] for r in ann} == {f"smoke-M{c['base']}"}
        assert {r["generator_2"] for r in ann} == {f"smoke-M{c['t']}"}
        assert {r["annotator"] for r in ann} == {s["judge"]} and all(1 <= r["preference"] <= 2 for r in ann)
        mine = {a["prompt"]: a["output"] for a in read_jsonl(ev / "answers" / f"M{c['t']}.jsonl")}
        assert all(mine[r["instruction"]] == r["output_2"] for r in ann)
        raw, lc = alpacaeval_reference(ann)
        assert raw == pytest.approx(c["win_rate"], abs=1e-12) and lc == pytest.approx(c["lc_win_rate"], abs=0.02)
        assert isinstance(c["lc_warnings"], list)
    # Second eval: every answer, verdict and human judgment comes from the cache; no model is asked anything.
    generate_calls.clear()
    s2 = run_eval(run, limit=8, n_boot=20, human=HUMAN, human_split="train")
    assert generate_calls == []
    assert (s2["judge_calls"], s2["answer_calls"], s2["judge_cached"], s2["answer_cached"]) == (0, 0, 48, 24)
    assert s2["comparisons"] == s["comparisons"] and s2["human"] == s["human"]


def _longer_wins(body):
    """A stub judge that prefers the longer answer, refuses on one question, and is consistent otherwise."""
    text = body["messages"][0]["content"]
    a = re.search(r"Start of Answer A\]\n(.*)\n\[The End of Answer A", text, re.S).group(1)
    b = re.search(r"Start of Answer B\]\n(.*)\n\[The End of Answer B", text, re.S).group(1)
    if "REFUSE" in text:
        return chat_reply("I will not pick one.")
    return chat_reply("Longer is better. " + ("[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"))


def test_endpoint_judge_both_orders_failed_rows_and_cache(run, monkeypatch, tmp_path):
    monkeypatch.setenv("MRLITE_TEST_KEY", "sk-test")
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(
        ["Name a fruit.", "Explain tides briefly.", "REFUSE: pick nothing.", "What is 2+2?", "Say hello."])))
    with StubServer(_longer_wins) as s:
        args = ["eval", str(run), "--judge", f"openai:{s.url}#stub-judge", "--api-key-env", "MRLITE_TEST_KEY",
                "--prompts", str(prompts), "--bootstrap", "20", "--iters", "2"]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert s.hits == 2 * 5 * 2  # M2 vs M0 and M2 vs M1, five prompts, both orders
        assert set(s.auth) == {"Bearer sk-test"}
        summary = json.loads((run / "eval" / "summary.json").read_text())
        assert summary["judge"] == f"openai:{s.url}#stub-judge"
        for c in summary["comparisons"]:
            assert c["failed_prompts"] == 1 and c["failed_verdicts"] == 2 and c["scored"] == 4
            assert c["consistency"] == 1.0  # a length-only judge never flips with the order
        # the self-judge (M2, the newest model) judged the same 2 x 4 scored pairs in both orders
        a = summary["judge_agreement"]
        assert a["reference"] == summary["judge"] and a["judge"].startswith("self:M2@")
        assert [c["label"] for c in a["comparisons"]] == ["M2_vs_M0", "M2_vs_M1"]
        own = read_jsonl(run / "eval" / "self_judgments.jsonl")
        assert len(own) == 2 * 5 * 2 and a["judge_calls"] == 20
        assert a["all"]["pairs"] + a["all"]["failed"] == 2 * 5 * 2 and a["all"]["pairs"] >= 12
        assert a["all"]["agreement"] == pytest.approx(
            sum(c["agreement"] * c["pairs"] for c in a["comparisons"]) / a["all"]["pairs"])
        assert a["all"]["agreement_ci"][0] <= a["all"]["agreement"] <= a["all"]["agreement_ci"][1]
        assert "self-judge self:M2@" in r.output and "ordered pairs" in r.output
        r2 = CliRunner().invoke(cli, args)
        assert r2.exit_code == 0 and s.hits == 20  # the second eval sent nothing
        assert json.loads((run / "eval" / "summary.json").read_text())["judge_agreement"]["judge_cached"] == 20
        assert "0 verdicts asked, 20 cached" in r2.output
    assert "sk-test" not in "".join(p.read_text() for p in (run / "eval").rglob("*") if p.is_file())


def test_endpoint_errors_are_counted_and_retried_by_the_next_eval(run, monkeypatch):
    monkeypatch.setenv("MRLITE_TEST_KEY", "sk-test")
    monkeypatch.setattr("mrlite.eval.endpoint.time.sleep", lambda s: None)
    with StubServer(lambda body: (200, "{not json")) as s:
        summary = run_eval(run, iters=[1], judge=f"openai:{s.url}#j", api_key_env="MRLITE_TEST_KEY", limit=3,
                           n_boot=0, retries=1)
        assert s.hits == 3 * 2 * 2  # 3 prompts x 2 orders x (1 try + 1 retry)
    c = summary["comparisons"][0]
    assert (c["scored"], c["failed_prompts"], c["win_rate"]) == (0, 3, None)
    assert summary["endpoint_errors"] == 6
    rows = read_jsonl(run / "eval" / "judgments.jsonl")
    assert all(r["failed"] and r["error"].startswith("malformed answer") for r in rows)
    with StubServer(lambda body: chat_reply("[[C]]")) as s:
        summary = run_eval(run, iters=[1], judge=f"openai:{s.url}#j", api_key_env="MRLITE_TEST_KEY", limit=3, n_boot=0)
        assert s.hits == 6 and summary["comparisons"][0]["win_rate"] == 0.5  # failures were not cached


def _one_line_error(r, needle: str) -> None:
    assert r.exit_code == 1, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("Error: ") and needle in r.output, r.output


def test_eval_user_errors(run, smoke_run, monkeypatch, tmp_path):
    monkeypatch.delenv("MRLITE_NOPE_KEY", raising=False)
    r = CliRunner().invoke(cli, ["eval", str(run), "--judge", "openai:http://127.0.0.1:9/v1#m",
                                 "--api-key-env", "MRLITE_NOPE_KEY"])
    _one_line_error(r, "MRLITE_NOPE_KEY")
    assert not (run / "eval" / "answers").exists()  # nothing was generated before the key check
    _one_line_error(CliRunner().invoke(cli, ["eval", str(run), "--iters", "5"]), "iteration(s) [5] have no trained model")
    _one_line_error(CliRunner().invoke(cli, ["eval", str(tmp_path)]), "not a run directory")
    _one_line_error(CliRunner().invoke(cli, ["eval", str(run), "--judge", "openai:nohash"]), "expected openai:")
    _one_line_error(CliRunner().invoke(cli, ["eval", str(run), "--prompts", str(tmp_path / "x.jsonl")]), "not found")


def test_eval_before_any_training_exports_the_seed(tmp_path):
    out = tmp_path / "run"
    mrlite.run(mrlite.load_recipe(REPO / "recipes" / "smoke.yaml"), out, only="sample", iters=[1])
    r = CliRunner().invoke(cli, ["eval", str(out), "--limit", "4"])
    assert r.exit_code == 0, r.output
    assert "no trained iteration yet" in r.output
    assert (out / "eval" / "alpaca_eval" / "smoke-M0.json").is_file()
    assert json.loads((out / "eval" / "summary.json").read_text())["comparisons"] == []


def test_fake_backend_answers_the_eval_template_honestly(tmp_path):
    # The fake model is told nothing but the prompt: it recognises eval's pairwise template by its structure.
    gen = FakeGenerator(mrlite.load_recipe(REPO / "recipes" / "smoke.yaml"), "fake")
    sampling = Sampling(0.0, 1.0, 64)
    reqs = [GenRequest(id=f"r{i}", messages=[{"role": "user", "content": render_pairwise(
        "Name a fruit.", f"An apple, number {i}.", "A pear.")}], n=1, seed=0, role="eval") for i in range(40)]
    texts = [c[0].text for c in gen.generate(reqs, sampling)]
    verdicts = [parse_pairwise(t) for t in texts]
    assert {1, -1} <= set(verdicts) and verdicts.count(None) < 12
    plain = gen.generate([GenRequest(id="eval:q1", messages=[{"role": "user", "content": "Name a fruit."}], n=1,
                                     seed=0, role="eval")], sampling)[0][0].text
    assert plain.startswith("Answer (") and parse_pairwise(plain) is None


@pytest.mark.parametrize("command,module,package", [("eval", "sklearn", "scikit-learn"),
                                                    ("report", "matplotlib", "matplotlib")])
def test_missing_eval_extra_is_one_line_before_any_work(run, monkeypatch, command, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # the import fails, as without the extra
    r = CliRunner().invoke(cli, [command, str(run)])
    _one_line_error(r, 'pip install -e ".[eval]"')
    assert f"mrlite {command} needs the eval extra ({package} is not installed)" in r.output
    assert not (run / "eval").exists() and not (run / "report.md").exists()
