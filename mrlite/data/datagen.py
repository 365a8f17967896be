"""Making training data with a model: new prompts (Self-Rewarding few-shot) and EFT rows from human rankings.

* ``generate_prompts``: the Self-Rewarding way of growing the prompt pool (arXiv 2401.10020 §3; algorithm.md
  Part B §10): show the model 8 random seed prompts as ``<task>…</task>`` examples and let it write more,
  sampled at T = 0.6, p = 0.9; keep new, non-empty, length-bounded, de-duplicated tasks.
* ``build_eft``: EFT rows from Open Assistant ranked replies: the model judges each reply with the judge
  prompt, and a prompt's judgments are kept only when their scores order the replies as the humans ranked
  them (``oasst.order_agrees``).

Both talk to any ``Generator`` (fake, hf, vllm). Exercised by: ``mrlite data prompts --model fake --n 20
--out /tmp/p.jsonl`` and ``mrlite data eft tests/assets/oasst_messages.jsonl --model fake --out /tmp/e.jsonl``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mrlite.backends.base import GenRequest, Generator, Sampling, fits
from mrlite.data.dedup import NearDuplicateIndex
from mrlite.data.oasst import RankedPrompt, order_agrees
from mrlite.core.parsing import parse_score
from mrlite.core.prompts import render_judge
from mrlite.recipe import Recipe, recipe_from_dict
from mrlite.rundir import derive_seed, fingerprint

log = logging.getLogger(__name__)

FEW_SHOT_INSTRUCTION = (
    "Come up with a series of tasks and questions. Only the task/question, no further text/explanation, no "
    "additional information. The task or question should be something a person would ask a chatbot."
)
"""The few-shot instruction as reproduced by Oxen-AI/Self-Rewarding-Language-Models (scripts/01_gen_prompts.py);
its match to the paper's figure is unconfirmed (algorithm.md Part B §10)."""
PROMPT_SAMPLING = Sampling(temperature=0.6, top_p=0.9, max_new_tokens=256)
"""Self-Rewarding prompt generation: T = 0.6, p = 0.9."""
EFT_SAMPLING = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=256)
"""Judge sampling for EFT rows (the recipe's judge defaults)."""
_TASK_RE = re.compile(r"<task>(.*?)(?:</task>|<task>|\Z)", re.DOTALL | re.IGNORECASE)


def open_generator(model: str, *, backend: str | None = None, recipe: Recipe | None = None) -> tuple[Generator, str]:
    """Load a generator for a model the user names (not one of a run's iteration models).

    Args:
        model: ``fake``, an alias (``tiny-random``, ``smollm2-135m``), a local model folder or a Hub id.
        backend: ``fake``, ``hf`` or ``vllm``; default ``fake`` for ``model == "fake"``, else ``hf``.
        recipe: Takes model/backend settings (dtype, batch size, context length) from it when given.

    Returns:
        The generator and the model's identity (a content fingerprint for folders; used in cache keys).
    """
    from mrlite.backends import load_generator

    backend = backend or ("fake" if model == "fake" else "hf")
    data = recipe.model_dump(mode="json") if recipe is not None else {"name": "mrlite-tool", "model": {}}
    data["model"]["base"] = model
    backends = data.setdefault("backends", {})
    backends["generator"] = backend
    backends["trainer"] = "fake" if backend == "fake" else ("trl" if backends.get("trainer") in (None, "fake")
                                                           else backends["trainer"])
    r = recipe_from_dict(data, f"--model {model}")
    if model == "fake":
        return load_generator(r, "fake"), "fake"
    from mrlite.models import resolve_model

    path = resolve_model(model, revision=r.model.revision)
    ident = f"{model}@{fingerprint(Path(path))[:16]}" if Path(path).is_dir() else f"{model}@{r.model.revision or ''}"
    return load_generator(r, path), ident


# --------------------------------------------------------------------------------------------------------------
# prompt generation (Self-Rewarding)


def few_shot_prompt(examples: Sequence[str]) -> str:
    """The few-shot prompt: the instruction, then one ``<task>…</task>`` per example, then an open ``<task>``."""
    return FEW_SHOT_INSTRUCTION + "\n\n" + "".join(f"<task>{e}</task>\n" for e in examples) + "<task>"


def extract_tasks(text: str) -> list[str]:
    """Tasks in a completion: the text up to the first ``</task>`` (the prompt left ``<task>`` open), then every
    further ``<task>…</task>`` block. A completion without tags counts as one task (its first paragraph)."""
    head, sep, rest = text.partition("</task>")
    if not sep:
        return [text.strip().split("\n\n")[0].strip()] if "<task>" not in text else []
    tasks = [head.replace("<task>", "").strip()]
    tasks += [m.strip() for m in _TASK_RE.findall(rest)]
    return [t for t in tasks if t]


def prompt_requests(seeds: Sequence[str], first: int, count: int, *, shots: int = 8,
                    seed: int = 0) -> list[tuple[GenRequest, list[int]]]:
    """Requests ``first .. first + count - 1`` of a growing run, each with the seed indices it shows.

    Request ``k``'s examples and sampling seed derive from ``(seed, k)`` alone, so a resumed run (or another
    chunking) asks exactly the same questions.
    """
    out = []
    for k in range(first, first + count):
        rng = np.random.default_rng(derive_seed(seed, "prompt_shots", k))
        pick = rng.choice(len(seeds), size=shots, replace=False).tolist()
        req = GenRequest(id=f"r{k:06d}", messages=[{"role": "user", "content": few_shot_prompt([seeds[i] for i in pick])}],
                         n=1, seed=derive_seed(seed, "prompt_gen", k), role="prompts")
        out.append((req, pick))
    return out


class TaskFilter:
    """Which written tasks join the pool: length-bounded, no leftover tag, not an exact or near duplicate of a
    seed prompt or of a task kept before (``mrlite.data.dedup``). ``stats`` counts each reason."""

    def __init__(self, seeds: Sequence[str], *, min_chars: int = 10, max_chars: int = 2000, similarity: str = "exact",
                 threshold: float = 0.8, shingle_chars: int = 5):
        self.min_chars, self.max_chars = min_chars, max_chars
        self.index = NearDuplicateIndex(similarity, threshold, shingle_chars)
        self.index.add_many(list(seeds))
        self.stats: Counter = Counter()

    def offer(self, tasks: Sequence[str]) -> list[str | None]:
        """One reason per task (``too_short``, ``too_long``, ``has_tag``, ``duplicate``, ``near_duplicate``) or
        None for a task that is kept (and from now on counts as seen)."""
        why: list[str | None] = []
        ok = []
        for t in tasks:
            self.stats["candidates"] += 1
            w = ("too_short" if len(t) < self.min_chars else "too_long" if len(t) > self.max_chars
                 else "has_tag" if "<task" in t.lower() or "</task" in t.lower() else None)
            why.append(w)
            if w is None:
                ok.append(len(why) - 1)
        dup = self.index.add_many([tasks[i] for i in ok])
        for i, d in zip(ok, dup, strict=True):
            why[i] = {"exact": "duplicate", "near": "near_duplicate", None: None}[d]
        for w in why:
            if w is not None:
                self.stats[w] += 1
        return why


def generate_prompts(seeds: Sequence[str], generator: Generator, n: int, *, shots: int = 8, seed: int = 0,
                     sampling: Sampling = PROMPT_SAMPLING, batch: int = 16, min_chars: int = 10,
                     max_chars: int = 2000, max_rounds: int = 50, similarity: str = "exact",
                     threshold: float = 0.8) -> tuple[list[dict], dict]:
    """Generate ``n`` new prompts few-shot from ``seeds`` (Self-Rewarding, 8-shot).

    Each request shows ``shots`` seed prompts drawn at random; every task the model writes is kept unless it is
    shorter than ``min_chars`` or longer than ``max_chars``, still contains a tag, or duplicates (after case and
    whitespace normalisation; with ``similarity="jaccard"`` also near-duplicates) a seed or an earlier task.
    Rounds of ``batch`` requests run until ``n`` prompts are kept or ``max_rounds`` rounds have run. (A run's
    ``prompts`` stage does the same in resumable chunks.)

    Args:
        seeds: The seed prompt set (at least ``shots`` prompts).
        generator: Any Generator.
        n: Prompts wanted.
        shots: Examples per request (paper: 8).
        seed: Seed for the example draws and the per-request sampling seeds.
        sampling: Sampling settings (paper: T = 0.6, p = 0.9).
        batch: Requests per round.
        min_chars: Shortest task kept.
        max_chars: Longest task kept.
        max_rounds: Give up after this many rounds.
        similarity: ``"exact"`` or ``"jaccard"`` (``mrlite.data.dedup``).
        threshold: Jaccard threshold for ``"jaccard"``.

    Returns:
        Rows ``{"id", "prompt", "source": "generated", "shots": [...]}`` and counts of what was dropped.

    Raises:
        ValueError: fewer seed prompts than ``shots``.
    """
    if len(seeds) < shots:
        raise ValueError(f"need at least {shots} seed prompts for {shots}-shot generation, got {len(seeds)}")
    filt = TaskFilter(seeds, min_chars=min_chars, max_chars=max_chars, similarity=similarity, threshold=threshold)
    rows: list[dict] = []
    st: Counter = Counter()
    for rnd in range(max_rounds):
        if len(rows) >= n:
            break
        reqs = prompt_requests(seeds, rnd * batch, batch, shots=shots, seed=seed)
        st["requests"] += len(reqs)
        written = [(pick, task) for (_, pick), comps in zip(reqs, generator.generate([r for r, _ in reqs], sampling),
                                                            strict=True) for task in extract_tasks(comps[0].text)
                   or [None]]
        st["no_task"] += sum(t is None for _, t in written)
        written = [(p, t) for p, t in written if t is not None]
        for (pick, task), why in zip(written, filt.offer([t for _, t in written]), strict=True):
            if why is None and len(rows) >= n:
                st["surplus"] += 1
            elif why is None:
                rows.append({"id": f"g{len(rows):05d}", "prompt": task, "source": "generated", "shots": pick})
    st.update(filt.stats)
    st["kept"] = len(rows)
    return rows, dict(st)


# --------------------------------------------------------------------------------------------------------------
# judging with the judge prompt (EFT and judge quality)


def judge_scores(generator: Generator, items: Sequence[tuple[str, str, str]], *, n: int, sampling: Sampling,
                 seed: int, score_range: tuple[float, float] = (0.0, 5.0), max_model_len: int = 2048,
                 force: bool = False) -> tuple[dict[str, list[tuple[str, float | None]]], dict]:
    """Judge ``(id, prompt, response)`` items ``n`` times each with the Self-Rewarding judge prompt.

    Returns:
        ``{id: [(judgment text, score or None), ...]}`` (ids whose prompt is too long are absent) and counts.
    """
    reqs = [GenRequest(id=i, messages=[{"role": "user", "content": render_judge(p, r)}], n=n,
                       seed=derive_seed(seed, "judge_scores", i), role="judge", force="score" if force else None)
            for i, p, r in items]
    ok = fits(generator, reqs, max_model_len)
    keep = [r for r, k in zip(reqs, ok, strict=True) if k]
    out: dict[str, list[tuple[str, float | None]]] = {}
    lo, hi = score_range
    for req, comps in zip(keep, generator.generate(keep, sampling) if keep else [], strict=True):
        out[req.id] = [(c.text, parse_score(c.text, low=lo, high=hi)) for c in comps]
    texts = [s for v in out.values() for _, s in v]
    return out, {"too_long": len(reqs) - len(keep), "judgments": len(texts),
                 "unparsable": sum(s is None for s in texts)}


def build_eft(prompts: Sequence[RankedPrompt], generator: Generator, *, n: int = 1, seed: int = 0,
              sampling: Sampling = EFT_SAMPLING, score_range: tuple[float, float] = (0.0, 5.0),
              max_model_len: int = 2048) -> tuple[list[dict], dict]:
    """EFT rows: the model's judgments of human-ranked replies, kept where their scores follow the human order.

    The j-th judgment of every reply forms round j; a prompt keeps the first round whose scores order its
    replies exactly as the humans ranked them (Self-Rewarding EFT, algorithm.md Part B §10). Prompts with a
    reply too long for the model are skipped and counted.

    Args:
        prompts: Ranked prompts (``oasst.load_ranked``).
        generator: Any Generator.
        n: Judgments (rounds) per reply.
        seed: Seed of the sampling.
        sampling: Judge sampling.
        score_range: Valid score range.
        max_model_len: Context length; longer judge prompts are skipped.

    Returns:
        Rows ``{"id", "prompt", "response", "judgment", "score", "human_rank", "prompt_id", "message_id"}`` (the
        EFT format ``eft.data`` reads) and counts.
    """
    items = [(r["message_id"], p.prompt, r["text"]) for p in prompts for r in p.responses]
    judged, jst = judge_scores(generator, items, n=n, sampling=sampling, seed=seed, score_range=score_range,
                               max_model_len=max_model_len)
    rows: list[dict] = []
    st = Counter(prompts=len(prompts), replies=len(items), unparsable_judgments=jst["unparsable"])
    for p in prompts:
        if any(r["message_id"] not in judged for r in p.responses):
            st["skipped_too_long"] += 1
            continue
        kept = agreeing_rows(p, [judged[r["message_id"]] for r in p.responses], n)
        rows.extend(kept)
        st["kept_prompts" if kept else "disagree"] += 1
    st["rows"] = len(rows)
    return rows, dict(st)


def agreeing_rows(p: RankedPrompt, judgments: Sequence[Sequence[tuple[str, float | None]]], n: int) -> list[dict]:
    """EFT rows of one prompt: the replies' judgments of the first round (of ``n``) whose scores order the
    replies as the humans ranked them, or ``[]`` when no round agrees (``oasst.order_agrees``).

    Args:
        p: The prompt and its ranked replies.
        judgments: Per reply (aligned with ``p.responses``), its ``(text, score)`` judgments in round order.
        n: Rounds to try.

    Returns:
        Rows ``{"id", "prompt", "response", "judgment", "score", "human_rank", "prompt_id", "message_id",
        "round"}``.
    """
    ranks = [r["rank"] for r in p.responses]
    for j in range(n):
        if all(len(js) > j for js in judgments) and order_agrees([js[j][1] for js in judgments], ranks):
            return [{"id": f"eft:{r['message_id']}", "prompt": p.prompt, "response": r["text"], "judgment": js[j][0],
                     "score": js[j][1], "human_rank": r["rank"], "prompt_id": p.prompt_id,
                     "message_id": r["message_id"], "round": j} for r, js in zip(p.responses, judgments, strict=True)]
    return []


# --------------------------------------------------------------------------------------------------------------
# the EFT set of a run: held-out split and score-4 down-sampling (pure)


def _unit(*parts: object) -> float:
    """Uniform [0, 1) from a hash of the parts (independent of order, chunking and process)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def is_heldout(prompt_id: str, share: float) -> bool:
    """Whether a prompt belongs to the held-out split: a hash of its id alone, so the split of a source is the
    same in every run and every seed (judge-human agreement stays comparable across runs)."""
    return share > 0 and _unit("eft_heldout", prompt_id) < share


def heldout_split(prompts: Sequence[RankedPrompt], share: float) -> tuple[list[RankedPrompt], list[RankedPrompt]]:
    """``(train, heldout)``: the prompts ``is_heldout`` picks are kept out of EFT (source order kept)."""
    held = [is_heldout(p.prompt_id, share) for p in prompts]
    return [p for p, h in zip(prompts, held, strict=True) if not h], [p for p, h in zip(prompts, held, strict=True) if h]


def downsample_score(rows: Sequence[dict], share: float | None, *, seed: int, score: float = 4.0) -> tuple[list[dict], int]:
    """Drop rows scoring ``score`` until they make at most ``share`` of the rows (Self-Rewarding down-samples
    the over-represented score 4; algorithm.md Part B §10). Which rows stay is decided by a hash of (seed, row
    id), so the result does not depend on row order or chunking.

    Args:
        rows: EFT rows with ``id`` and ``score``.
        share: Largest share of ``score`` rows among the rows kept; ``None`` keeps everything.
        seed: Run seed.
        score: The score to thin out.

    Returns:
        The kept rows (input order) and how many were dropped.
    """
    hit = [i for i, r in enumerate(rows) if r.get("score") == score]
    if share is None or not hit:
        return list(rows), 0
    others = len(rows) - len(hit)
    cap = int(share * others / (1.0 - share) + 1e-9)
    if len(hit) <= cap:
        return list(rows), 0
    keep = set(sorted(hit, key=lambda i: (_unit(seed, "eft_score4", rows[i]["id"]), rows[i]["id"]))[:cap])
    out = [r for i, r in enumerate(rows) if r.get("score") != score or i in keep]
    return out, len(rows) - len(out)


def ranked_tree(p: RankedPrompt, lang: str | None = "en") -> dict:
    """One prompt in the Open Assistant message-tree format (what ``oasst.load_ranked`` reads back)."""
    return {"message_tree_id": p.prompt_id,
            "prompt": {"message_id": p.prompt_id, "role": "prompter", "text": p.prompt, "lang": lang,
                       "replies": [{"message_id": r["message_id"], "role": "assistant", "text": r["text"],
                                    "rank": r["rank"], "lang": lang} for r in p.responses]}}
