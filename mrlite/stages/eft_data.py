"""Stage ``eft_data`` (iteration 0, when ``eft.data`` is ``oasst:<source>``): build the EFT set inside the run.

The Self-Rewarding way (arXiv 2401.10020 §3; algorithm.md Part A "Seed: EFT SFT", Part B §10): English root
prompts of Open Assistant with at least two human-ranked replies; the seed model judges every reply
``eft.judgments`` times with the judge prompt; a prompt's judgments are kept only when one round's scores order
its replies exactly as the humans ranked them (``oasst.order_agrees``); rows scoring 4 are down-sampled
(``eft.score4_share``). With ``judge.force_parse`` a judgment without a ``Score:`` line gets a forced one
(the model still picks the score; counted), as in the judge stage. A share of the prompts (``eft.heldout``, chosen by a hash of the prompt id) is never
judged here: it is written out for ``mrlite eval``'s judge–human agreement table.

Chunked like the generation stages (``_gen.generate_in_chunks``: fixed boundaries, every request seeded from
(run seed, iteration, stage, reply id), chunks written whole), so a killed build resumes to identical files.
Writes ``iter_00/eft_data.jsonl`` (the rows ``eft`` trains on), ``eft_heldout.jsonl`` (Open Assistant trees)
and ``eft_data_info.json`` (provenance: source and its identity, model, every drop counted).
Exercised by: ``mrlite run recipes/smoke.yaml --set eft.enabled=true --set eft.data=oasst:tests/assets/oasst_trees.jsonl``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mrlite.backends.base import GenRequest
from mrlite.data.datagen import agreeing_rows, downsample_score, heldout_split, ranked_tree
from mrlite.data.oasst import RankedPrompt, load_ranked
from mrlite.core.parsing import parse_score
from mrlite.core.prompts import render_judge
from mrlite.recipe import Recipe
from mrlite.rundir import atomic_write_json, atomic_write_jsonl, derive_seed, fingerprint
from mrlite.data.sources import SourceError, eft_source
from mrlite.stages import StageContext, StageError, drop_parts
from mrlite.stages._gen import generate_in_chunks, sampling_of

LANG = "en"
"""Self-Rewarding builds EFT from English first turns."""


def source_of(recipe: Recipe) -> str | None:
    """The Open Assistant source ``eft.data`` names (``oasst:<source>``), or None."""
    kind, src = eft_source(recipe.eft.data)
    return src if kind == "oasst" else None


def applies(ctx: StageContext) -> bool:
    return ctx.t == 0 and ctx.recipe.eft.enabled and source_of(ctx.recipe) is not None


def _local(ctx: StageContext) -> Path | None:
    p = Path(source_of(ctx.recipe) or "")
    return p if source_of(ctx.recipe) and p.exists() else None


def inputs(ctx: StageContext) -> list[Path]:
    p = _local(ctx)
    return [p] if p is not None else []  # a Hub source is identified by id + revision in config()


def outputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("eft_data.jsonl"), ctx.path("eft_heldout.jsonl"), ctx.path("eft_data_info.json")]


def config(ctx: StageContext) -> dict:
    r, e, j = ctx.recipe, ctx.recipe.eft, ctx.recipe.judge
    return {
        "source": e.data, "split": e.split, "revision": e.revision, "max_prompts": e.max_prompts, "lang": LANG,
        "judgments": e.judgments, "score4_share": e.score4_share, "heldout": e.heldout,
        "judge": {"temperature": j.temperature, "top_p": j.top_p, "max_new_tokens": j.max_new_tokens,
                  "score_range": list(j.score_range), "force_parse": j.force_parse},
        "model": r.model.model_dump(mode="json"), "policy": ctx.policy_fingerprint(), "seed": r.loop.seed,
        "generator": r.backends.generator, "backend": r.backends.model_dump(mode="json")[r.backends.generator],
    }


def load_source(recipe: Recipe) -> tuple[list[RankedPrompt], list[RankedPrompt], dict]:
    """``(train, heldout, counts)`` of the recipe's Open Assistant source; the orchestrator's preflight calls
    this too, so a bad source stops the run before anything is written.

    Raises:
        SourceError: missing/unreachable source, not Open Assistant data, no English ranked prompt, or a
            held-out share that leaves nothing to train on.
    """
    e = recipe.eft
    src = source_of(recipe)
    ranked, counts = load_ranked(
        src, split=e.split, lang=LANG, limit=e.max_prompts, revision=e.revision,
        fix=f"eft.data {e.data!r} must hold Open Assistant data (oasst1/oasst2 messages or trees) with English "
            "first turns; check eft.split, or use a JSONL of ready rows or builtin")
    train, held = heldout_split(ranked, e.heldout)
    if not train:
        raise SourceError(f"eft.heldout {e.heldout} holds out all {len(ranked)} prompts of {e.data!r}; "
                          "lower eft.heldout")
    return train, held, dict(counts, heldout_prompts=len(held), train_prompts=len(train))


def identity(ctx: StageContext) -> str:
    """The source's identity: a content fingerprint for a file/folder, id + split + revision for the Hub."""
    p = _local(ctx)
    e = ctx.recipe.eft
    return fingerprint(p) if p is not None else f"hub:{source_of(ctx.recipe)}:{e.split}@{e.revision or 'default'}"


def run(ctx: StageContext) -> dict:
    r, e = ctx.recipe, ctx.recipe.eft
    train, held, counts = load_source(r)
    n = e.judgments
    lo, hi = r.judge.score_range
    force = "score" if r.judge.force_parse else None  # as the judge stage: the model still picks the score

    def build(p: RankedPrompt) -> list[GenRequest]:
        return [GenRequest(id=x["message_id"], messages=[{"role": "user", "content": render_judge(p.prompt, x["text"])}],
                           n=n, seed=derive_seed(r.loop.seed, ctx.t, "eft_data", x["message_id"]), role="judge",
                           force=force)
                for x in p.responses]

    def collect(p: RankedPrompt, outs) -> tuple[list[dict], dict]:
        if any(comps is None for _, comps in outs):
            return [], {"prompts_too_long": 1}
        judged = [[(c.text, parse_score(c.text, low=lo, high=hi)) for c in comps] for _, comps in outs]
        rows = agreeing_rows(p, judged, n)
        texts = [s for js in judged for _, s in js]
        return rows, {"judged_prompts": 1, "judgments": len(texts), "unparsable_judgments": sum(s is None for s in texts),
                      "forced_judgments": sum(c.forced for _, comps in outs for c in comps),
                      "agree" if rows else "disagree": 1}

    rows, st = generate_in_chunks(ctx, "eft_data", train, build, collect, sampling_of(r.judge))
    st = Counter(st)
    if not rows:
        drop_parts(ctx, "eft_data")  # nothing to resume: a rerun needs another model or settings anyway
        raise StageError(
            f"eft_data: the seed model {r.model.base!r} ordered no prompt's replies as the humans did: 0 of "
            f"{len(train)} prompts agree ({st['disagree']} disagree, {st['prompts_too_long']} too long; "
            f"{st['unparsable_judgments']} of {st['judgments']} judgments unparseable; {n} round(s) per reply); "
            "EFT would train on nothing: raise eft.judgments, use a stronger model.base, or set eft.data to a "
            "JSONL of ready rows or builtin"
        )
    agreeing = len(rows)
    rows, dropped4 = downsample_score(rows, e.score4_share, seed=r.loop.seed)
    hist = Counter(f"{x['score']:g}" for x in rows)
    summary = {
        "n_in": len(train), "n_out": len(rows), "rows": len(rows), "kept_prompts": st["agree"],
        "train_prompts": len(train), "heldout_prompts": len(held),
        "source_counts": {k: v for k, v in counts.items() if k not in ("heldout_prompts", "train_prompts")},
        "judging": {"replies": st["requests"], "judgments": st["judgments"],
                    "unparsable_judgments": st["unparsable_judgments"], "forced_judgments": st["forced_judgments"],
                    "replies_too_long": st["too_long"],
                    "prompts_too_long": st["prompts_too_long"], "disagree": st["disagree"],
                    "agree": st["agree"]},
        "rows_agreeing": agreeing, "score4_dropped": dropped4,
        "score_histogram": dict(sorted(hist.items(), key=lambda kv: float(kv[0]))),
    }
    info = {"source": e.data, "identity": identity(ctx), "split": e.split, "revision": e.revision, "lang": LANG,
            "model": ctx.policy_fingerprint(), "generator": r.backends.generator, "judgments_per_reply": n,
            "score4_share": e.score4_share, "heldout_share": e.heldout, "seed": r.loop.seed, **summary}
    info.pop("n_in"), info.pop("n_out")
    atomic_write_jsonl(ctx.path("eft_heldout.jsonl"), [ranked_tree(p, LANG) for p in held])
    atomic_write_jsonl(ctx.path("eft_data.jsonl"), rows)
    atomic_write_json(ctx.path("eft_data_info.json"), info)
    return summary


def summary_line(t: int, s: dict) -> str:
    j = s["judging"]
    return (f"eft_data: {s['rows']} EFT rows from {s['kept_prompts']} of {s['train_prompts']} prompts whose judgments "
            f"follow the human order ({j['disagree']} disagree, {j['prompts_too_long']} too long, "
            f"{s['score4_dropped']} score-4 rows down-sampled); {s['heldout_prompts']} prompts held out")
