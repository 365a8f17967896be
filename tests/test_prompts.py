"""Tests for mrlite.core.prompts: the shipped templates, rendering, checking, score-line stripping.

Run: ``python -m pytest tests/test_prompts.py -q``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mrlite.core.parsing import parse_score
from mrlite.core.prompts import (
    JUDGE_VARIABLES,
    META_JUDGE_VARIABLES,
    check_template,
    load_template,
    render_judge,
    render_meta_judge,
    strip_score_line,
)

# Lines that must appear verbatim (design/algorithm.md Part B §2.1 and §3.1), curly quotes included.
JUDGE_LINES = [
    "Review the user’s question and the corresponding response using the additive 5-point",
    "- Add 1 point if the response is relevant and provides some information related to",
    "- Bestow a fifth point for a response that is impeccably tailored to the user’s question",
    "- Conclude with the score using the format: “Score: <total points>”",
    "systematically attribute points based on the outlined criteria.",
]
META_LINES = [
    "Review the user’s question and the corresponding response, along with two judgments. Determine which "
    "judgment is more accurate according to the rubric provided below. The rubric used for the initial "
    "judgments is as follows:",
    "After examining the original question, response, and both judgments:",
    "- Conclude with a clear statement of which judgment is better using the format: "
    "“Winner: [Judgement A | Judgement B]”",
]


def test_judge_template_verbatim() -> None:
    text = load_template("judge")
    lines = text.splitlines()
    assert lines[0] == JUDGE_LINES[0]
    assert lines[-1] == JUDGE_LINES[-1]
    for line in JUDGE_LINES:
        assert line in lines
    assert "User: $prompt" in lines
    assert "<response>$response</response>" in lines
    assert len(lines) == 24


def test_meta_judge_template_verbatim() -> None:
    text = load_template("meta_judge")
    lines = text.splitlines()
    assert lines[0] == META_LINES[0]
    assert lines[-1] == META_LINES[-1]
    for line in META_LINES:
        assert line in lines
    assert (
        "User: $prompt\n\nResponse: $response\n\nJudgment A: $judgment_a\n\nJudgment B: $judgment_b\n" in text
    )


@pytest.mark.parametrize(
    ("name", "variables"), [("judge", JUDGE_VARIABLES), ("meta_judge", META_JUDGE_VARIABLES)]
)
def test_builtin_templates_check(name: str, variables: frozenset[str]) -> None:
    text = load_template(name)
    check_template(text, set(variables))
    assert not text.startswith("#"), "header comments are stripped"
    assert text == text.rstrip()
    assert load_template(name + ".txt") == text


USER_TEXTS = [
    ("plain", "What is 2+2?"),
    ("dollars", "It costs $5, see $prompt and ${response} and $$"),
    ("braces", "Format {name} with {{escaped}} and {0}"),
    ("backslashes", r"C:\path\to\file \n \1"),
    ("unicode", "Ünïcødé — “quotes” 日本語"),
    ("empty", ""),
]


@pytest.mark.parametrize("user", [u for _, u in USER_TEXTS], ids=[i for i, _ in USER_TEXTS])
def test_render_judge_literal(user: str) -> None:
    out = render_judge(user, "RESP " + user)
    assert f"User: {user}\n" in out
    assert f"<response>RESP {user}</response>" in out
    assert "$response" not in out.replace(user, "")  # every placeholder filled
    assert "$prompt" not in out.replace(user, "")


@pytest.mark.parametrize("user", [u for _, u in USER_TEXTS], ids=[i for i, _ in USER_TEXTS])
def test_render_meta_judge_literal(user: str) -> None:
    out = render_meta_judge("P " + user, "R " + user, "JA " + user, "JB " + user)
    assert f"User: P {user}\n\nResponse: R {user}\n\nJudgment A: JA {user}\n\nJudgment B: JB {user}\n" in out
    assert out.endswith("“Winner: [Judgement A | Judgement B]”")


def test_substituted_text_is_not_reinterpreted() -> None:
    # A prompt containing "$response" must not be replaced by the response (single pass).
    out = render_judge("say $response", "THE RESPONSE")
    assert "User: say $response\n" in out
    assert out.count("THE RESPONSE") == 1


def test_render_custom_template() -> None:
    template = "Q: $prompt | A: $response | cost $$3 | {braces}"
    check_template(template, set(JUDGE_VARIABLES))
    assert render_judge("x", "y", template=template) == "Q: x | A: y | cost $3 | {braces}"
    meta = "$prompt/$response/$judgment_a/$judgment_b"
    assert render_meta_judge("p", "r", "a", "b", template=meta) == "p/r/a/b"


CHECK_CASES = [
    (
        "all missing",
        "no variables at all",
        META_JUDGE_VARIABLES,
        ["$judgment_a", "$judgment_b", "$prompt", "$response"],
    ),
    ("some missing", "$prompt and $response", META_JUDGE_VARIABLES, ["$judgment_a", "$judgment_b"]),
    ("braced form counts", "${prompt}${response}", JUDGE_VARIABLES, None),
    ("unknown variable", "$prompt $response $judgement", JUDGE_VARIABLES, ["unknown", "$judgement"]),
    (
        "jinja style is not a placeholder",
        "{{ prompt }} {{ response }}",
        JUDGE_VARIABLES,
        ["$prompt", "$response"],
    ),
    ("invalid placeholder", "$prompt $response costs $5", JUDGE_VARIABLES, ["invalid", "$$"]),
    (
        "everything at once",
        "$judgment_a $foo $ 5",
        META_JUDGE_VARIABLES,
        ["$judgment_b", "$prompt", "$response", "$foo", "invalid"],
    ),
]


@pytest.mark.parametrize(
    ("text", "required", "expected"), [c[1:] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES]
)
def test_check_template(text: str, required: frozenset[str], expected: list[str] | None) -> None:
    if expected is None:
        check_template(text, set(required))
        return
    with pytest.raises(ValueError) as info:
        check_template(text, set(required))
    message = str(info.value)
    for fragment in expected:
        assert fragment in message


def test_check_template_lists_missing_in_one_message() -> None:
    with pytest.raises(
        ValueError, match=r"missing variables: \$judgment_a, \$judgment_b, \$prompt, \$response"
    ):
        check_template("", set(META_JUDGE_VARIABLES))


def test_load_template_from_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text(
        "# my judge, after Yuan et al.\n# second comment\nRate $response to $prompt.\n\n", "utf-8"
    )
    assert load_template(path) == "Rate $response to $prompt."
    assert load_template(str(path)) == "Rate $response to $prompt."


def test_load_template_keeps_inner_hash_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("$prompt\n# not a header\n$response\n", "utf-8")
    assert load_template(path) == "$prompt\n# not a header\n$response"


def test_load_template_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a built-in"):
        load_template(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError):
        load_template("judgee")


STRIP_CASES = [
    ("plain", "Relevant and complete.\nScore: 4", "Relevant and complete."),
    ("trailing newline", "Relevant.\n\nScore: 4\n\n", "Relevant."),
    ("emphasis", "Good.\n\n**Score: 5**", "Good."),
    ("emphasis label only", "Good.\n**Score:** 5/5", "Good."),
    ("total score", "Fine.\nTotal score: 3", "Fine."),
    ("heading", "Fine.\n### Final Score: 3", "Fine."),
    ("same line", "It earns three points. Score: 3", "It earns three points."),
    ("two trailing lines", "Text.\nScore: 3\nScore: 4", "Text."),
    ("no score", "Only prose here.", "Only prose here."),
    ("not trailing", "Score: 4\nBecause it is clear.", "Score: 4\nBecause it is clear."),
    ("empty", "", ""),
    ("only score", "Score: 4", ""),
    ("keeps earlier score mention", "The score: 4 is fair.\nScore: 4", "The score: 4 is fair."),
    ("score line with prose after the value", "Text.\nScore: 4 because it is complete.", "Text."),
    ("mid-line then whole line", "Fine. Score: 3\nScore: 4", "Fine."),
    ("mid-line with prose after", "Fine, a score: 4 seems right", "Fine, a score: 4 seems right"),
]


@pytest.mark.parametrize(
    ("judgment", "expected"), [c[1:] for c in STRIP_CASES], ids=[c[0] for c in STRIP_CASES]
)
def test_strip_score_line(judgment: str, expected: str) -> None:
    out = strip_score_line(judgment)
    assert out == expected


def test_strip_score_line_hides_the_score() -> None:
    judgment = "The response answers the question well.\n\n**Score: 4**"
    assert parse_score(judgment) == 4.0
    assert parse_score(strip_score_line(judgment)) is None
