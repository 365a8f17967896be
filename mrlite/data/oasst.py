"""Human-ranked data in the Open Assistant message-tree format, and agreement of judge scores with the rankings.

Open Assistant (oasst1 / oasst2 on the Hub) ranks the assistant replies to a prompter message: ``rank`` 0 is
the best. Self-Rewarding (arXiv 2401.10020 §3) builds its EFT set from these rankings, keeping a prompt's
judgments only when the judge's scores order the replies as the humans did, and measures judge quality on a
held-out split by pairwise agreement and Spearman correlation; Meta-Rewarding (arXiv 2407.19594, appendix
Table 7) reports the same three numbers (algorithm.md Part B §7.6, §10). Both formats are read:

* flat message rows (the Hub parquet / ``*.messages.jsonl``): ``message_id``, ``parent_id``, ``role``
  (``prompter`` / ``assistant``), ``text``, ``lang``, ``rank``, and optionally ``deleted``, ``review_result``;
* trees (``*.trees.jsonl``): ``{"message_tree_id", "prompt": {message, "replies": [...]}}``.

Only first turns are used (a root prompt and its direct assistant replies). Exercised by:
``mrlite data eft tests/assets/oasst_messages.jsonl --model fake --out /tmp/eft.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mrlite.core.diagnostics import length_score_correlation
from mrlite.data.sources import SourceError, read_rows

FLAT_COLUMNS = ("message_id", "parent_id", "role", "text")


@dataclass
class RankedPrompt:
    """One root prompt and its human-ranked assistant replies (best first)."""

    prompt_id: str
    prompt: str
    responses: list[dict] = field(default_factory=list)  # {"message_id", "text", "rank"}


def _usable(msg: dict) -> bool:
    return not msg.get("deleted") and msg.get("review_result") is not False and isinstance(msg.get("text"), str)


def _ranked_replies(replies: list[dict], drops: dict | None = None) -> list[dict]:
    out, seen = [], set()
    drops = {} if drops is None else drops
    for r in replies:
        if r.get("role") != "assistant":
            continue
        why = ("reply_unranked" if r.get("rank") is None else "reply_deleted_or_failed_review" if not _usable(r)
               else "reply_empty" if not r["text"].strip() else "reply_duplicate" if r["text"] in seen else None)
        if why:
            drops[why] = drops.get(why, 0) + 1
            continue
        seen.add(r["text"])
        out.append({"message_id": str(r["message_id"]), "text": r["text"], "rank": int(r["rank"])})
    return sorted(out, key=lambda r: (r["rank"], r["message_id"]))


def _roots(rows: list[dict], spec: str) -> list[tuple[dict, list[dict]]]:
    """(root prompter message, its direct replies) for either format."""
    if rows and isinstance(rows[0].get("prompt"), dict):  # trees
        return [(t["prompt"], t["prompt"].get("replies") or []) for t in rows if isinstance(t.get("prompt"), dict)]
    missing = [c for c in FLAT_COLUMNS if c not in rows[0]]
    if missing:
        raise SourceError(
            f"{spec}: not Open Assistant data: no column {', '.join(missing)}; columns are "
            f"{', '.join(map(str, rows[0]))}; expected oasst message rows or message trees"
        )
    children: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("parent_id"):
            children.setdefault(str(r["parent_id"]), []).append(r)
    return [(r, children.get(str(r["message_id"]), [])) for r in rows if not r.get("parent_id")]


def load_ranked(spec: str, *, split: str = "train", lang: str | None = "en", min_responses: int = 2,
                limit: int | None = None, revision: str | None = None,
                fix: str = "check --lang and --split") -> tuple[list[RankedPrompt], dict]:
    """Read root prompts with at least ``min_responses`` human-ranked replies.

    Args:
        spec: A local file or folder, or a Hub dataset id (e.g. ``OpenAssistant/oasst1``).
        split: Split to read (oasst1: ``train`` / ``validation``; use the held-out one for judge quality).
        lang: Keep trees whose root prompt has this language code; ``None`` keeps every language.
        min_responses: Fewest usable ranked replies for a prompt to be kept.
        limit: Keep at most this many prompts (in file order).
        revision: Hub revision of a dataset id.
        fix: The end of the error when no prompt is left (what the user should change).

    Returns:
        The prompts (replies sorted best first) and counts: ``roots``, ``root_unusable`` (deleted, failed
        review or empty), ``other_language``, ``too_few_ranked``, ``kept``, and the replies of the language's
        roots dropped per reason (``reply_unranked``, ``reply_deleted_or_failed_review``, ``reply_empty``,
        ``reply_duplicate``; only reasons that occurred).

    Raises:
        SourceError: the source is missing, empty, or not in an Open Assistant format.
    """
    rows, _ = read_rows(spec, split, revision)
    if not rows:
        raise SourceError(f"{spec}: no rows")
    stats = {"roots": 0, "root_unusable": 0, "other_language": 0, "too_few_ranked": 0, "kept": 0}
    drops: dict[str, int] = {}
    out: list[RankedPrompt] = []
    for root, replies in _roots(rows, spec):
        if root.get("role", "prompter") != "prompter":
            continue
        if not _usable(root) or not root["text"].strip():
            stats["root_unusable"] += 1
            continue
        stats["roots"] += 1
        if lang is not None and root.get("lang") not in (None, lang):
            stats["other_language"] += 1
            continue
        ranked = _ranked_replies(replies, drops)
        if len(ranked) < min_responses:
            stats["too_few_ranked"] += 1
            continue
        if limit is not None and len(out) >= limit:
            break
        out.append(RankedPrompt(str(root["message_id"]), root["text"], ranked))
    stats["kept"] = len(out)
    stats |= dict(sorted(drops.items()))
    if not out:
        raise SourceError(f"{spec} (split {split!r}): no prompt with {min_responses}+ ranked replies in language "
                          f"{lang!r} ({stats}); {fix}")
    return out, stats


# --------------------------------------------------------------------------------------------------------------
# agreement of judge scores with human rankings (pure)


def order_agrees(scores: Sequence[float | None], ranks: Sequence[int]) -> bool:
    """Whether the scores order the replies exactly as the humans ranked them (the EFT filter).

    Every pair with different human ranks must have a strictly higher score for the better-ranked reply
    (rank 0 is best); a missing score or a tied score between differently ranked replies fails.

    Args:
        scores: One judge score per reply (``None`` = unparseable).
        ranks: Human rank per reply.

    Returns:
        True when the orders agree.
    """
    if any(s is None for s in scores):
        return False
    n = len(scores)
    return all(
        (scores[i] > scores[j]) if ranks[i] < ranks[j] else (scores[i] < scores[j])
        for i in range(n) for j in range(i + 1, n) if ranks[i] != ranks[j]
    )


def human_agreement(items: Sequence[tuple[Sequence[float | None], Sequence[int]]]) -> dict:
    """Pairwise agreement (with and without model ties) and mean per-prompt Spearman with human ranks.

    The Self-Rewarding / Meta-Rewarding Open Assistant protocol (algorithm.md Part B §7.6): over every pair of
    replies to one prompt with different human ranks, *agreement* is the share where the judge scores the
    better-ranked reply strictly higher (a judge tie counts as a disagreement); *w/o ties* leaves out the pairs
    the judge tied. Pairs with an unparseable score are left out of both and counted.

    Args:
        items: ``(scores, ranks)`` per prompt.

    Returns:
        ``{"prompts", "pairs", "agree", "model_ties", "unscored_pairs", "agreement", "agreement_no_ties",
        "spearman", "spearman_prompts"}``; rates are ``None`` when undefined.
    """
    agree = ties = pairs = unscored = 0
    rhos = []
    for scores, ranks in items:
        for i in range(len(scores)):
            for j in range(i + 1, len(scores)):
                if ranks[i] == ranks[j]:
                    continue
                if scores[i] is None or scores[j] is None:
                    unscored += 1
                    continue
                pairs += 1
                if scores[i] == scores[j]:
                    ties += 1
                elif (scores[i] > scores[j]) == (ranks[i] < ranks[j]):
                    agree += 1
        valid = [(s, -r) for s, r in zip(scores, ranks, strict=True) if s is not None]
        rho = length_score_correlation([v for _, v in valid], [s for s, _ in valid]) if len(valid) >= 2 else None
        if rho is not None:
            rhos.append(rho)
    return {
        "prompts": len(items), "pairs": pairs, "agree": agree, "model_ties": ties, "unscored_pairs": unscored,
        "agreement": agree / pairs if pairs else None,
        "agreement_no_ties": agree / (pairs - ties) if pairs - ties else None,
        "spearman": sum(rhos) / len(rhos) if rhos else None, "spearman_prompts": len(rhos),
    }
