"""Table tests for mrlite.core.parsing: score and winner extraction (Part A steps 3 and 5b).

Run: ``python -m pytest tests/test_parsing.py -q``.
"""

from __future__ import annotations

import pytest

from mrlite.core.parsing import (
    SCORE_LABEL,
    WINNER_LABEL,
    has_score,
    has_winner,
    parse_score,
    parse_winner,
)

SCORE_CASES = [
    # plain integers and decimals
    ("The response is relevant.\nScore: 4", 4.0),
    ("Score: 0", 0.0),
    ("Score: 5", 5.0),
    ("Score: 4.5", 4.5),
    ("Score: 4.75", 4.75),
    ("Score: 4.", 4.0),  # trailing dot = sentence end
    ("Score: .5", 0.5),
    ("Score: 3.0", 3.0),
    ("Score:4", 4.0),
    ("Score :  3", 3.0),
    # case-insensitive
    ("score: 2", 2.0),
    ("SCORE: 2", 2.0),
    ("Total score: 3", 3.0),
    # markdown emphasis
    ("**Score:** 4", 4.0),
    ("**Score: 4**", 4.0),
    ("Score: **4**", 4.0),
    ("*Score*: 4", 4.0),
    ("__Score:__ 3", 3.0),
    ("### Score: 2", 2.0),
    ("Score: [4]", 4.0),
    ("Score: <3>", 3.0),
    # trailers
    ("Score: 4/5", 4.0),
    ("Score: 4 / 5", 4.0),
    ("Score: 4.5/5", 4.5),
    ("Score: **4**/5", 4.0),
    ("Score: 4 out of 5", 4.0),
    ("Score: 4 points", 4.0),
    ("Score: 1 point", 1.0),
    ("Score: 3 points out of 5", 3.0),
    ("Score: 4, since it is helpful.", 4.0),
    ("Score: 4 - a solid answer", 4.0),
    # last label wins
    ("Score: 2\nOn reflection, more is deserved.\nScore: 4", 4.0),
    ("Score: 5 at first; Score: 3 after all", 3.0),
    ("**Score: 1**\n\nScore: 5", 5.0),
    # last label without a number: no fallback to the earlier one
    ("Score: 4\nI will now state the Score: ", None),
    ("Score: 4\nScore: four", None),
    ("Score: 3\nScore: <total points>", None),
    # out of range / other scales
    ("Score: 6", None),
    ("Score: 5.5", None),
    ("Score: 10", None),
    ("Score: 45", None),
    ("Score: -1", None),
    ("Score: 3/10", None),
    ("Score: 8/10", None),
    # ambiguous
    ("Score: 4-5", None),
    ("Score: 4 – 5", None),
    ("Score: 3 to 4", None),
    ("Score: 3 or 4", None),
    ("Score: 4,5", None),
    # nothing to parse
    ("", None),
    ("The response deserves four points.", None),
    ("Scores: 4", None),
    ("subscore: 4", None),
    ("Score: ", None),
    ("Score: N/A", None),
    ("Score: ４", None),  # full-width digit: ASCII only
]


@pytest.mark.parametrize(("text", "expected"), SCORE_CASES)
def test_parse_score(text: str, expected: float | None) -> None:
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    ("text", "low", "high", "expected"),
    [
        ("Score: 7", 0.0, 10.0, 7.0),
        ("Score: 7/10", 0.0, 10.0, 7.0),
        ("Score: 7/5", 0.0, 10.0, None),
        ("Score: 0", 1.0, 5.0, None),
        ("Score: 1", 1.0, 5.0, 1.0),
    ],
)
def test_parse_score_range(text: str, low: float, high: float, expected: float | None) -> None:
    assert parse_score(text, low=low, high=high) == expected
    assert has_score(text, low, high) is (expected is not None)


WINNER_CASES = [
    ("Winner: Judgement A", 1),
    ("Winner: Judgement B", -1),
    ("Winner: Judgment A", 1),
    ("Winner: Judgment B", -1),
    ("Winner: [Judgement A]", 1),
    ("Winner: [Judgment B]", -1),
    ("winner: judgement a", 1),
    ("WINNER: JUDGMENT B", -1),
    ("**Winner:** Judgement A", 1),
    ("**Winner: Judgement B**", -1),
    ("Winner: **[Judgment A]**", 1),
    ("Winner: Judgement A.", 1),
    ("Winner: Judgement B, as it applies the rubric.", -1),
    ("Winner: Judgement B, a clear winner", -1),
    ("Winner:Judgement A", 1),
    # last one wins
    ("Winner: Judgement A\nOn second thought...\nWinner: Judgement B", -1),
    ("Winner: Judgment B then Winner: Judgement A", 1),
    # both / template echo / none
    ("Winner: [Judgement A | Judgement B]", 0),
    ("Winner: Judgement A | Judgement B", 0),
    ("Winner: Judgement A or Judgement B", 0),
    ("Winner: Judgement A/B", 0),
    ("Winner: Judgement A or B", 0),
    ("Winner: Judgement A\nWinner: [Judgement A | Judgement B]", 0),
    ("Winner: Judgement A\nWinner: tie", 0),  # no fallback to the earlier label
    ("Winner: Tie", 0),
    ("Winner: Neither", 0),
    ("Winner: A", 0),  # the word Judgement is required
    ("Winner: Judgement C", 0),
    ("Winner: Judgement AB", 0),
    ("Judgement A is better.", 0),
    ("", 0),
]


@pytest.mark.parametrize(("text", "expected"), WINNER_CASES)
def test_parse_winner(text: str, expected: int) -> None:
    assert parse_winner(text) == expected
    assert has_winner(text) is (expected != 0)


def test_forced_completion_labels_parse() -> None:
    # A backend appends the label and lets the model write the value: the result must parse.
    assert SCORE_LABEL == "Score: "
    assert WINNER_LABEL == "Winner: Judgement "
    assert parse_score("Some justification.\n" + SCORE_LABEL + "3") == 3.0
    assert parse_winner("Some reasoning.\n" + WINNER_LABEL + "B") == -1
    assert not has_score("Some justification.\n" + SCORE_LABEL)
    assert not has_winner("Some reasoning.\n" + WINNER_LABEL)


def test_one_argument_call() -> None:
    assert parse_score("Score: 4") == 4.0
    assert has_score("Score: 4")


# Pairwise answer verdicts (mrlite eval's judge, templates/eval_pairwise.txt).
PAIRWISE_CASES = [
    ("A is more detailed.\n[[A]]", 1),
    ("[[B]]", -1),
    ("Both are equally good. [[C]]", 0),
    ("My final verdict is [[A>>B]]", 1),  # Arena-Hard's scale
    ("[[B>A]]", -1),
    ("[[A=B]]", 0),
    ("Verdict: [[ b ]]", -1),
    ("**Winner:** Answer B", -1),
    ("Better answer: A", 1),
    ("Winner: tie", 0),
    ("A is clearer. [[A]]\nSo: [[A]]", 1),  # repeated, consistent
    ('Output "[[A]]" if A is better, "[[B]]" if B is better', None),  # an echoed format line names both
    ("[[A]] ... on reflection [[B]]", None),  # conflicting verdicts: none
    ("Winner: Judgement A", None),  # the meta-judge's wording is no answer verdict
    ("Winner: Answer A | Answer B", None),
    ("Verdict: A or B", None),
    ("Winner: A tie", None),
    ("I cannot decide.", None),
    ("[[D]]", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), PAIRWISE_CASES)
def test_parse_pairwise(text: str, expected: int | None) -> None:
    from mrlite.core.parsing import parse_pairwise

    assert parse_pairwise(text) == expected


def test_eval_template_verdict_format_parses() -> None:
    # The verdict format the eval template asks for is exactly what parse_pairwise reads.
    from mrlite.eval.judge import render_pairwise
    from mrlite.core.parsing import parse_pairwise

    text = render_pairwise("Q?", "first", "second")
    assert "[[A]] if answer A is better, [[B]] if answer B is better, and [[C]] for a tie" in text
    assert parse_pairwise(text) is None  # the prompt itself names every verdict: no verdict
    assert [parse_pairwise(f"Reasoning.\n[[{v}]]") for v in "ABC"] == [1, -1, 0]
