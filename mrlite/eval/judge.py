"""Pairwise judging for ``mrlite eval``: the judge prompt, local and endpoint judges, and the content cache.

Every prompt of a comparison is judged twice, M_t's answer first and then second; each verdict is cached under
a key of (judge, prompt template, prompt, first answer, second answer), so a pair is never judged twice. An
answer without a verdict is cached and counted failed; an endpoint error is counted failed and not cached, so
the next eval asks again. Exercised by: ``mrlite eval runs/smoke``.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from string import Template

from mrlite.backends.base import GenRequest, Sampling, fits
from mrlite.rundir import atomic_write_jsonl, derive_seed, hash_parts, read_jsonl
from mrlite.core.parsing import parse_pairwise
from mrlite.eval.winrate import PromptResult

PAIRWISE_TEMPLATE = "eval_pairwise.txt"
"""Eval's pairwise-answer judge prompt in ``mrlite/templates/`` (MT-Bench's verdict format); its answer is read
by ``mrlite.core.parsing.parse_pairwise``."""
PROMPT_VERSION = "mrlite-pairwise-v1"
"""Part of every verdict's cache key: change it when the prompt changes."""


@functools.cache
def pairwise_template() -> Template:
    """The pairwise judge template (``$prompt``, ``$answer_a``, ``$answer_b``)."""
    from mrlite.core.prompts import load_template

    return Template(load_template(str(importlib.resources.files("mrlite") / "templates" / PAIRWISE_TEMPLATE)))


def render_pairwise(prompt: str, answer_a: str, answer_b: str) -> str:
    """The judge prompt for one ordered pair: ``answer_a`` is shown first."""
    return pairwise_template().substitute(prompt=prompt, answer_a=answer_a, answer_b=answer_b)


def key_of(*parts: object) -> str:
    """A content key (32 hex digits) of the parts, in order."""
    return hash_parts(*parts).hex()[:32]


class JsonlCache:
    """Rows keyed by ``row["key"]`` in one JSONL file; ``save`` rewrites it atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = {r["key"]: r for r in read_jsonl(path)} if path.is_file() else {}

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, row: dict) -> None:
        self.rows[row["key"]] = row

    def save(self) -> None:
        atomic_write_jsonl(self.path, self.rows.values())


class LocalJudge:
    """A judge on a local Generator (the run's own model, or another model)."""

    def __init__(self, gen, identity: str, max_model_len: int, max_tokens: int):
        self.gen, self.identity, self.max_model_len = gen, identity, max_model_len
        self.sampling = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=max_tokens)

    def judge(self, items: list[tuple[str, str]]) -> list[tuple[str | None, str | None]]:
        reqs = [GenRequest(id=i, messages=[{"role": "user", "content": text}], n=1, seed=derive_seed("judge", i),
                           role="eval") for i, text in items]
        ok = fits(self.gen, reqs, self.max_model_len)
        send = [r for r, k in zip(reqs, ok, strict=True) if k]
        outs = iter(self.gen.generate(send, self.sampling) if send else [])
        return [(next(outs)[0].text, None) if k else (None, "prompt too long for the judge") for k in ok]

    def close(self) -> None:
        self.gen.close()


class EndpointJudge:
    """A judge behind an OpenAI-compatible endpoint (``mrlite.eval.endpoint``)."""

    def __init__(self, client, max_tokens: int):
        self.client, self.identity, self.max_tokens = client, client.identity, max_tokens

    def judge(self, items: list[tuple[str, str]]) -> list[tuple[str | None, str | None]]:
        res = self.client.complete_many([[{"role": "user", "content": text}] for _, text in items],
                                        temperature=0.0, top_p=1.0, max_tokens=self.max_tokens)
        return [(r.text, r.error) for r in res]

    def close(self) -> None:
        pass


def judge_comparison(judge, cache: JsonlCache, label: str, ans_t: list[dict], ans_b: list[dict],
                     batch: int = 64) -> tuple[list[dict], list[PromptResult], dict]:
    """Judge M_t vs the baseline on every prompt in both orders; cached verdicts are reused, never re-asked.

    Args:
        judge: A ``LocalJudge`` or ``EndpointJudge``.
        cache: The verdict cache (saved after every batch, so a killed eval keeps what it paid for).
        label: The comparison's name in the rows, e.g. ``M2_vs_M0``.
        ans_t: M_t's answer rows, aligned with ``ans_b`` (the baseline's).
        batch: Verdicts per judge call.

    Returns:
        Per-verdict rows, per-prompt results for ``winrate.summarize`` and call counts.
    """
    jobs = []  # (prompt index, t_first, key, judge prompt)
    for i, (a, b) in enumerate(zip(ans_t, ans_b, strict=True)):
        if a["output"] is None or b["output"] is None:
            continue
        for t_first in (True, False):
            first, second = (a, b) if t_first else (b, a)
            key = key_of(judge.identity, PROMPT_VERSION, a["prompt"], first["output"], second["output"])
            text = render_pairwise(a["prompt"], first["output"], second["output"])
            jobs.append((i, t_first, key, text, f"{first['generator']}:{a['prompt_id']}|{second['generator']}:"
                                                f"{a['prompt_id']}"))
    todo = [j for j in jobs if cache.get(j[2]) is None]
    errors: dict[str, str] = {}
    for s in range(0, len(todo), batch):
        chunk = todo[s:s + batch]
        for (_, _, key, _, _), (text, err) in zip(chunk, judge.judge([(j[4], j[3]) for j in chunk]), strict=True):
            if text is None:
                errors[key] = err or "no answer"  # not cached: a later eval retries it
            else:
                cache.put({"key": key, "judge": judge.identity, "text": text, "verdict": parse_pairwise(text)})
        cache.save()
    verdicts: dict[tuple[int, bool], int | None] = {}
    rows = []
    for i, t_first, key, _, _ in jobs:
        c = cache.get(key)
        v = None if c is None else c["verdict"]
        verdicts[(i, t_first)] = v
        rows.append({"comparison": label, "prompt_id": ans_t[i]["prompt_id"], "t_first": t_first,
                     "verdict": v, "failed": v is None,
                     "error": errors.get(key) or (None if v is not None else "no verdict in the judge's answer"),
                     "text": None if c is None else c["text"]})
    results = [PromptResult(a["prompt_id"], verdicts.get((i, True)), verdicts.get((i, False)), a["chars"] or 0,
                            b["chars"] or 0) for i, (a, b) in enumerate(zip(ans_t, ans_b, strict=True))]
    return rows, results, {"judge_calls": len(todo), "judge_cached": len(jobs) - len(todo),
                           "endpoint_errors": len(errors)}
