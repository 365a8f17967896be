"""Data commands: Open Assistant loading (both formats), the EFT agreement filter, few-shot prompt generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from eval_helpers import ScriptedGenerator

from mrlite.cli import cli
from mrlite.datagen import build_eft, extract_tasks, few_shot_prompt, generate_prompts
from mrlite.oasst import human_agreement, load_ranked, order_agrees
from mrlite.rundir import read_jsonl
from mrlite.sources import SourceError

ASSETS = Path(__file__).resolve().parent / "assets"
MESSAGES = str(ASSETS / "oasst_messages.jsonl")
TREES = str(ASSETS / "oasst_trees.jsonl")


def test_oasst_both_formats_agree():
    flat, st = load_ranked(MESSAGES)
    trees, st2 = load_ranked(TREES)
    assert flat == trees and st == st2
    assert st == {"roots": 7, "other_language": 1, "too_few_ranked": 1, "kept": 5}
    by_id = {p.prompt_id: p for p in flat}
    assert [r["message_id"] for r in by_id["m-t1-000"].responses] == ["m-t1-001", "m-t1-002", "m-t1-003"]
    assert [r["rank"] for r in by_id["m-t6-000"].responses] == [0, 2]  # the deleted reply is gone
    assert "m-t1-005" not in {r["message_id"] for p in flat for r in p.responses}  # second turns ignored
    assert len(load_ranked(MESSAGES, lang=None)[0]) == 6
    assert len(load_ranked(MESSAGES, limit=2)[0]) == 2


def test_oasst_wrong_format_names_columns(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(SourceError, match="no column message_id, parent_id, role, text; columns are prompt, chosen"):
        load_ranked(str(tmp_path / "x.jsonl"))


@pytest.mark.parametrize("scores,ranks,ok", [
    ([5, 3, 1], [0, 1, 2], True),
    ([2, 4, 1], [0, 1, 2], False),
    ([3, 3], [0, 1], False),            # a tie between differently ranked replies
    ([4, None], [0, 1], False),         # unparseable
    ([1, 4, 2], [2, 0, 1], True),       # order of the lists does not matter
    ([4, 4, 1], [0, 0, 1], True),       # equal human ranks impose nothing
])
def test_order_agrees(scores, ranks, ok):
    assert order_agrees(scores, ranks) is ok


def test_human_agreement_counts_ties_and_unscored():
    h = human_agreement([([5, 3, 1], [0, 1, 2]), ([3, 3], [0, 1]), ([2, None], [0, 1])])
    assert (h["pairs"], h["agree"], h["model_ties"], h["unscored_pairs"]) == (4, 3, 1, 1)
    assert h["agreement"] == 0.75 and h["agreement_no_ties"] == 1.0
    assert h["spearman"] == pytest.approx(1.0) and h["spearman_prompts"] == 1


# Scores per reply per round: T1 agrees in round 0, T2 only in round 1, T3 ties, T6 has an unparseable judgment.
SCRIPT = {
    "m-t1-001": [5, 5], "m-t1-002": [3, 3], "m-t1-003": [1, 1],
    "m-t2-001": [2, 4], "m-t2-002": [4, 3], "m-t2-003": [1, 2],
    "m-t3-001": [3, 3], "m-t3-002": [3, 3],
    "m-t6-001": [4, 4], "m-t6-003": [None, None],
    "m-t8-001": [5, 5], "m-t8-002": [4, 4], "m-t8-003": [3, 3],
}


def _judge(ranked):
    text_of = {r["text"]: r["message_id"] for p in ranked for r in p.responses}

    def fn(req, k):
        content = req.messages[0]["content"]
        mid = next(m for t, m in text_of.items() if t in content)
        s = SCRIPT[mid][k]
        return f"Judgment of {mid}." + ("" if s is None else f"\nScore: {s}")

    return ScriptedGenerator(fn)


@pytest.mark.parametrize("n,kept", [(1, {"m-t1-000", "m-t8-000"}), (2, {"m-t1-000", "m-t2-000", "m-t8-000"})])
def test_eft_keeps_only_prompts_whose_scores_follow_the_human_order(n, kept):
    ranked, _ = load_ranked(MESSAGES)
    rows, st = build_eft(ranked, _judge(ranked), n=n)
    assert {r["prompt_id"] for r in rows} == kept
    assert st["kept_prompts"] == len(kept) and st["disagree"] == 5 - len(kept)
    t2 = [r for r in rows if r["prompt_id"] == "m-t2-000"]
    assert [r["score"] for r in t2] == ([4, 3, 2] if n == 2 else [])  # the agreeing round's judgments
    assert all(r["judgment"].endswith(f"Score: {int(r['score'])}") for r in rows)
    assert all({"prompt", "response", "judgment"} <= r.keys() for r in rows)  # what eft.data reads


def test_few_shot_prompt_and_task_extraction():
    p = few_shot_prompt(["A?", "B?"])
    assert p.startswith("Come up with a series of tasks") and p.endswith("<task>A?</task>\n<task>B?</task>\n<task>")
    assert extract_tasks(" New one? </task>\n<task>Second?</task>\n<task>cut off") == ["New one?", "Second?", "cut off"]
    assert extract_tasks("Plain question?\n\nmore text") == ["Plain question?"]


def test_generate_prompts_dedups_and_filters():
    seeds = [f"Seed prompt number {i}?" for i in range(10)]

    def fn(req, k):
        i = req.id[1:]
        return (f"Brand new question {req.id}?</task>\n<task>seed PROMPT number 3?</task>\n<task>hi</task>\n"
                f"<task>Shared follow-up question {int(i) % 2}?</task>")

    gen = ScriptedGenerator(fn)
    rows, st = generate_prompts(seeds, gen, 12, batch=4, seed=1)
    prompts = [r["prompt"] for r in rows]
    assert len(rows) == 12 and len(set(prompts)) == 12
    assert st["duplicate"] >= 4 and st["too_short"] >= 4  # the seed copy and the shared follow-ups; "hi"
    assert all(len(r["shots"]) == 8 and len(set(r["shots"])) == 8 for r in rows)
    assert all(r.messages[0]["content"].count("<task>") == 9 for r in gen.requests)
    with pytest.raises(ValueError, match="at least 8 seed prompts"):
        generate_prompts(seeds[:3], gen, 1)


def test_data_commands_on_the_fake_backend(tmp_path):
    r = CliRunner().invoke(cli, ["data", "prompts", "--model", "fake", "--n", "5", "--out", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    assert len(read_jsonl(tmp_path / "p.jsonl")) == 5
    r = CliRunner().invoke(cli, ["data", "eft", MESSAGES, "--model", "fake", "--n", "3", "--out", str(tmp_path / "e.jsonl")])
    assert r.exit_code == 0, r.output
    assert "EFT rows from" in r.output and (tmp_path / "e.jsonl").is_file()
    r = CliRunner().invoke(cli, ["data", "check", "builtin"])
    assert r.exit_code == 0 and "prompts kept" in r.output
    r = CliRunner().invoke(cli, ["data", "eft", str(tmp_path / "missing.jsonl"), "--model", "fake", "--out", "x"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "not found: tried" in r.output
    rows = json.loads(json.dumps(read_jsonl(tmp_path / "p.jsonl")))
    assert all(row["source"] == "generated" for row in rows)
