"""Data commands: Open Assistant loading (both formats), the EFT agreement filter, few-shot prompt generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from eval_helpers import ScriptedGenerator

from mrlite.cli import cli
from mrlite.data.datagen import (
    agreeing_rows,
    build_eft,
    downsample_score,
    extract_tasks,
    few_shot_prompt,
    generate_prompts,
    heldout_split,
    is_heldout,
    ranked_tree,
)
from mrlite.data.oasst import RankedPrompt, human_agreement, load_ranked, order_agrees
from mrlite.rundir import read_jsonl
from mrlite.data.sources import SourceError

ASSETS = Path(__file__).resolve().parent / "assets"
MESSAGES = str(ASSETS / "oasst_messages.jsonl")
TREES = str(ASSETS / "oasst_trees.jsonl")


def test_oasst_both_formats_agree():
    flat, st = load_ranked(MESSAGES)
    trees, st2 = load_ranked(TREES)
    assert flat == trees and st == st2
    assert st == {"roots": 7, "root_unusable": 1, "other_language": 1, "too_few_ranked": 1, "kept": 5,
                  "reply_deleted_or_failed_review": 1, "reply_unranked": 1}
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


def test_agreeing_rows_takes_the_first_round_that_follows_the_humans():
    p = RankedPrompt("p1", "Q?", [{"message_id": "a", "text": "A", "rank": 0}, {"message_id": "b", "text": "B", "rank": 1}])
    judged = [[("a0", 2.0), ("a1", 5.0), ("a2", 4.0)], [("b0", 3.0), ("b1", 1.0), ("b2", 2.0)]]
    rows = agreeing_rows(p, judged, 3)
    assert [(r["judgment"], r["score"], r["round"], r["id"]) for r in rows] == [("a1", 5.0, 1, "eft:a"), ("b1", 1.0, 1, "eft:b")]
    assert agreeing_rows(p, judged, 1) == []  # round 0 disagrees and is the only one tried
    assert agreeing_rows(p, [[("a", None)], [("b", 1.0)]], 1) == []  # unparseable never agrees


def test_score4_downsampling_caps_the_share_and_is_order_free():
    rows = [{"id": f"r{i}", "score": 4.0 if i % 4 else 2.0} for i in range(40)]  # 30 fours, 10 others
    kept, dropped = downsample_score(rows, 0.5, seed=0)
    assert dropped == 20 and sum(r["score"] == 4.0 for r in kept) == 10 and len(kept) == 20
    assert [r["id"] for r in kept] == [r["id"] for r in rows if r in kept]  # input order kept
    again, _ = downsample_score(list(reversed(rows)), 0.5, seed=0)
    assert {r["id"] for r in again} == {r["id"] for r in kept}  # which rows stay does not depend on order
    other, _ = downsample_score(rows, 0.5, seed=1)
    assert {r["id"] for r in other} != {r["id"] for r in kept}  # ... but on the seed
    assert downsample_score(rows, None, seed=0) == (rows, 0)
    assert downsample_score(rows, 0.8, seed=0)[1] == 0  # 30/40 = 0.75 is under the cap already
    assert sum(r["score"] == 4.0 for r in downsample_score(rows, 0.25, seed=0)[0]) == 3  # 3 / 13 <= 0.25


def test_heldout_split_is_a_property_of_the_prompt_id():
    ps = [RankedPrompt(f"id{i}", f"q{i}", []) for i in range(400)]
    train, held = heldout_split(ps, 0.25)
    assert len(train) + len(held) == 400 and 60 < len(held) < 140
    assert {p.prompt_id for p in held} == {p.prompt_id for p in ps if is_heldout(p.prompt_id, 0.25)}
    assert heldout_split(list(reversed(ps)), 0.25)[1] == list(reversed(held))
    assert heldout_split(ps, 0.0) == (ps, [])
    assert set(p.prompt_id for p in held) <= set(p.prompt_id for p in heldout_split(ps, 0.5)[1])  # nested shares


def test_heldout_trees_read_back_as_ranked_prompts(tmp_path):
    ranked, _ = load_ranked(MESSAGES)
    (tmp_path / "h.jsonl").write_text("".join(json.dumps(ranked_tree(p)) + "\n" for p in ranked))
    again, st = load_ranked(str(tmp_path / "h.jsonl"))
    assert again == ranked and st["kept"] == 5
