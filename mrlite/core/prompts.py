"""Judge and meta-judge prompt templates: load, check and render them.

The judge prompt is Self-Rewarding's additive 5-point rubric (arXiv 2401.10020, Figure 2), which
Meta-Rewarding reuses unchanged for its judge (arXiv 2407.19594, §2.1); the meta-judge prompt is
Meta-Rewarding's Figure 2. Both ship verbatim as package data in ``mrlite/templates/`` (text and sources:
design/algorithm.md Part B §2.1 and §3.1).

Exercised by ``mrlite run`` (the ``judge`` and ``meta_judge`` stages) and ``mrlite validate`` (custom templates
are checked at recipe load).

Templates use :class:`string.Template` placeholders (``$prompt``, ``$response``, ``$judgment_a``,
``$judgment_b``) so that braces in user text or in a custom template need no escaping; a literal dollar in a
*template* is written ``$$``. Substitution is a single pass over the template: a ``$`` inside a substituted
prompt, response or judgment is copied literally and never re-interpreted. Lines starting with ``#`` at the very
top of a template file are comments (they cite the source) and are stripped on load.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from pathlib import Path
from string import Template

__all__ = [
    "BUILTIN_TEMPLATES",
    "JUDGE_VARIABLES",
    "META_JUDGE_VARIABLES",
    "check_template",
    "load_template",
    "render_judge",
    "render_meta_judge",
    "strip_score_line",
]

#: Names of the templates shipped in ``mrlite/templates/`` (file name without ``.txt``).
BUILTIN_TEMPLATES = ("judge", "meta_judge")
#: Variables a judge template must use.
JUDGE_VARIABLES = frozenset({"prompt", "response"})
#: Variables a meta-judge template must use.
META_JUDGE_VARIABLES = frozenset({"prompt", "response", "judgment_a", "judgment_b"})

# A Score label anywhere on a line, with the markdown emphasis / heading markers and the adjective
# ("Total score:") that may precede it.
_SCORE_LABEL_RE = re.compile(
    r"[#>*_\s]*(?<![a-z0-9])(?:(?:total|final|overall)[\s*_]+)?score[\s*_]*:", re.IGNORECASE
)
# What may follow a mid-line Score label for the line to count as a score statement: the value and trailers.
_SCORE_TAIL_RE = re.compile(
    r"[\s*_\[(<]*[0-9.]*[\s*_\])>]*(?:(?:/|out\s+of)\s*[0-9.]+)?\s*(?:points?)?[\s.!*_]*", re.IGNORECASE
)


def _strip_header(text: str) -> str:
    """Drop the leading ``#`` comment lines and trailing whitespace of a template file."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    return "".join(lines[i:]).rstrip()


@functools.cache
def _load_builtin(name: str) -> str:
    resource = importlib.resources.files("mrlite") / "templates" / f"{name}.txt"
    return _strip_header(resource.read_text(encoding="utf-8"))


def load_template(name_or_path: str | Path) -> str:
    """Load a prompt template by built-in name or from a file.

    Args:
        name_or_path: ``"judge"`` or ``"meta_judge"`` (package data, also accepted with a ``.txt`` suffix),
            or a path to a UTF-8 text file.

    Returns:
        The template text with its leading ``#`` comment lines and trailing whitespace removed.

    Raises:
        FileNotFoundError: If it is neither a built-in name nor an existing file.
    """
    name = str(name_or_path)
    stem = name[: -len(".txt")] if name.endswith(".txt") else name
    if stem in BUILTIN_TEMPLATES and not Path(name).is_file():
        return _load_builtin(stem)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"template {name!r} is neither a built-in template {list(BUILTIN_TEMPLATES)} nor a file"
        )
    return _strip_header(path.read_text(encoding="utf-8"))


def check_template(text: str, required: set[str] | frozenset[str]) -> None:
    """Check that a template uses exactly the variables its renderer fills.

    Every problem is reported in one error, so a user fixing a custom template sees them all at once.

    Args:
        text: Template text (``string.Template`` syntax).
        required: The variables the renderer supplies, e.g. ``JUDGE_VARIABLES``.

    Raises:
        ValueError: Listing all missing variables, any unknown variables (they could never be filled) and
            any invalid ``$`` placeholders (a literal dollar must be written ``$$``).
    """
    template = Template(text)
    problems: list[str] = []
    found = set(template.get_identifiers())
    missing = sorted(set(required) - found)
    unknown = sorted(found - set(required))
    if missing:
        problems.append("missing variables: " + ", ".join(f"${v}" for v in missing))
    if unknown:
        problems.append("unknown variables: " + ", ".join(f"${v}" for v in unknown))
    if not template.is_valid():
        bad = [m.group(0) for m in template.pattern.finditer(text) if m.group("invalid") is not None]
        problems.append(f"invalid placeholder(s) {bad!r}: write $$ for a literal dollar sign")
    if problems:
        raise ValueError("prompt template: " + "; ".join(problems))


def _render(template: str | None, builtin: str, values: dict[str, str]) -> str:
    text = _load_builtin(builtin) if template is None else template
    # substitute() walks the template once; the values are inserted as-is, so "$5" in a user's prompt
    # stays "$5". It raises KeyError for an unknown placeholder — check_template catches that at load.
    return Template(text).substitute(values)


def render_judge(prompt: str, response: str, *, template: str | None = None) -> str:
    """Fill the judge prompt for one (prompt, response) pair.

    Args:
        prompt: The user's instruction x.
        response: The actor's response y.
        template: Custom template text (already loaded and checked); ``None`` = the built-in Self-Rewarding
            judge prompt (arXiv 2401.10020, Figure 2; arXiv 2407.19594 §2.1).

    Returns:
        The judge prompt, to be sent as the user turn of the chat template.
    """
    return _render(template, "judge", {"prompt": prompt, "response": response})


def render_meta_judge(
    prompt: str,
    response: str,
    judgment_a: str,
    judgment_b: str,
    *,
    template: str | None = None,
) -> str:
    """Fill the meta-judge prompt for one ordered pair of judgments of the same response.

    Args:
        prompt: The user's instruction x.
        response: The response y* whose judgments are compared (arXiv 2407.19594 §2.2).
        judgment_a: The judgment shown first ("Judgment A").
        judgment_b: The judgment shown second ("Judgment B").
        template: Custom template text; ``None`` = the built-in meta-judge prompt (arXiv 2407.19594, Figure 2).

    Returns:
        The meta-judge prompt, to be sent as the user turn of the chat template.
    """
    values = {"prompt": prompt, "response": response, "judgment_a": judgment_a, "judgment_b": judgment_b}
    return _render(template, "meta_judge", values)


def strip_score_line(judgment: str) -> str:
    """Remove the trailing ``Score:`` statement(s) from a judgment.

    Used when a recipe hides the judge's numeric score from the meta-judge, as NeMo-Aligner does to reduce
    the score bias the paper reports (arXiv 2407.19594, Table 5). Working from the end, after dropping trailing
    whitespace: a last line that *starts* with a ``Score:`` label (markdown markers and "Total"/"Final"/
    "Overall" allowed before it) is removed whole, and this repeats; a last line whose ``Score:`` label comes
    after other text is cut at the label if only the score value follows it (``It earns 3 points. Score: 3``).
    A ``Score:`` mention followed by more prose ("The score: 4 is fair.") or by further lines is not a
    trailing statement and stays.

    Args:
        judgment: The judgment text.

    Returns:
        The judgment without its final score statement(s), trailing whitespace removed.
    """
    text = judgment.rstrip()
    while text:
        line_start = text.rfind("\n") + 1
        last = None
        for m in _SCORE_LABEL_RE.finditer(text, line_start):
            last = m
        if last is None:
            break
        if last.start() == line_start or _SCORE_TAIL_RE.fullmatch(text, last.end()):
            text = text[: last.start()].rstrip()
            if last.start() != line_start:
                break  # prose before the label on that line: the statement ended there
        else:
            break
    return text
