"""Stage ``prompts`` (iteration 0, every run): the run's prompt pool, written once into ``iter_00/``.

Either the recipe names a source (``data.prompts``: ``builtin``, a local file or a Hub dataset id), which is
read, validated and copied in, or ``data.prompts: generate``, which grows the pool the Self-Rewarding way
(arXiv 2401.10020 §3; algorithm.md Part B §10): a model (default: the seed model) is shown ``shots`` random seed
prompts and writes new tasks at T 0.6, p 0.9; short, overlong, tagged, exactly or nearly duplicated tasks are
dropped and counted (``mrlite.data.datagen.TaskFilter``, ``mrlite.data.dedup``). Requests come in fixed chunks of
``loop.chunk_size``; each chunk's raw tasks are written whole under ``iter_00/.parts/prompts/`` and the filter
replays them in order, so a killed stage resumes to byte-identical files. Growing stops when ``n`` tasks are
kept or after ``max_requests`` requests (then a one-line error says how many were kept and why the rest were
dropped). Every later stage slices this pool: ``iter_00/pool.jsonl`` is an input of each iteration's
``sample`` stage, so the pool is loaded once and fingerprinted whatever its source.
Writes ``pool.jsonl`` (``id``, ``prompt`` and, when grown, ``request`` and ``shots``) and ``pool.json``
(provenance). Exercised by: ``mrlite run recipes/smoke.yaml`` and ``mrlite run paper --set ...`` (see README).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from mrlite.backends.base import Sampling
from mrlite.rundir import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from mrlite.data.sources import builtin_path, is_hub_id, load_prompt_pool
from mrlite.stages import StageContext, StageError, fault_point
from mrlite.stages._gen import chunk_folder

log = logging.getLogger(__name__)

GIVE_UP_EMPTY_CHUNKS = 4
"""Stop early when this many chunks have run and not one task was kept (the model never writes usable tasks)."""
MIN_ANSWER_TOKENS = 16


def applies(ctx: StageContext) -> bool:
    return ctx.t == 0


def _local(spec: str) -> list[Path]:
    if spec == "builtin":
        return [builtin_path("prompts.jsonl")]
    p = Path(spec)
    return [p] if p.is_file() else []


def inputs(ctx: StageContext) -> list[Path]:
    g = ctx.recipe.data.growing()
    return _local(g.seeds) if g is not None else _local(ctx.recipe.data.prompts)


def outputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("pool.jsonl"), ctx.path("pool.json")]


def config(ctx: StageContext) -> dict:
    r = ctx.recipe
    d = r.data
    g = d.growing()
    if g is None:
        return {"source": d.prompts, "column": d.column, "split": d.split, "max_prompt_chars": d.max_prompt_chars}
    grow = g.model_dump(mode="json")
    grow.pop("max_requests")  # only decides when to give up: a finished pool does not depend on it
    cfg = {"generate": grow, "max_prompt_chars": d.max_prompt_chars, "seed": r.loop.seed,
           "chunk_size": r.loop.chunk_size, "generator": r.backends.generator,
           "backend": r.backends.model_dump(mode="json")[r.backends.generator],
           "model": r.model.model_dump(mode="json")}  # the writer (g.model or model.base) loads with these
    return cfg


def pool_size(ctx: StageContext) -> int | None:
    """Prompts in the pool: counted when written, else the growing target; None when only the stage can tell."""
    if ctx.path("pool.jsonl").is_file():
        return sum(1 for _ in ctx.path("pool.jsonl").open(encoding="utf-8"))
    g = ctx.recipe.data.growing()
    if g is not None:
        return g.n
    d = ctx.recipe.data
    if is_hub_id(d.prompts) and not Path(d.prompts).exists():
        return None  # read once, by the stage
    return len(load_prompt_pool(d.prompts, d.column, d.split, d.max_prompt_chars).prompts)


def run(ctx: StageContext) -> dict:
    d = ctx.recipe.data
    g = d.growing()
    rows, prov = _grow(ctx, g) if g is not None else _read(ctx)
    atomic_write_jsonl(ctx.path("pool.jsonl"), rows)
    atomic_write_json(ctx.path("pool.json"), prov)
    return {"n_in": prov["stats"].get("rows", prov["stats"].get("candidates", 0)), "n_out": len(rows), **prov}


def _read(ctx: StageContext) -> tuple[list[dict], dict]:
    d = ctx.recipe.data
    pool = load_prompt_pool(d.prompts, d.column, d.split, d.max_prompt_chars)
    rows = [{"id": i, "prompt": p} for i, p in zip(pool.ids, pool.prompts, strict=True)]
    return rows, {"mode": "source", "source": d.prompts, "identity": pool.identity, "column": d.column,
                  "split": d.split, "max_prompt_chars": d.max_prompt_chars, "stats": pool.stats}


def _grow(ctx: StageContext, g) -> tuple[list[dict], dict]:
    from mrlite.data.datagen import TaskFilter, extract_tasks, prompt_requests

    r = ctx.recipe
    seeds = load_prompt_pool(g.seeds, g.seeds_column, g.seeds_split)
    if len(seeds.prompts) < g.shots:
        raise StageError(f"prompts: data.generate.seeds {g.seeds!r} has {len(seeds.prompts)} usable prompts, fewer "
                         f"than data.generate.shots {g.shots}; use a larger seed set or fewer shots")
    max_chars = min(g.max_chars, d) if (d := r.data.max_prompt_chars) is not None else g.max_chars
    filt = TaskFilter(seeds.prompts, min_chars=g.min_chars, max_chars=max_chars, similarity=g.similarity,
                      threshold=g.similarity_threshold, shingle_chars=g.shingle_chars)
    sampling = Sampling(temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens)
    size = r.loop.chunk_size
    max_requests = g.max_requests or 2 * g.n
    parts = chunk_folder(ctx, "prompts")
    rows: list[dict] = []
    st: Counter = Counter()
    gen, own = None, False
    ci = reused = 0
    try:
        while len(rows) < g.n and ci * size < max_requests:
            if ci >= GIVE_UP_EMPTY_CHUNKS and not rows:
                break
            path = parts / f"chunk_{ci:05d}.json"
            count = min(size, max_requests - ci * size)
            chunk = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
            if chunk is not None and len(chunk["requests"]) == count:
                reused += 1
            else:  # missing, or cut short by an earlier, lower max_requests: (re)generate the whole chunk
                if gen is None:
                    gen, own = _generator(ctx, g)
                reqs = prompt_requests(seeds.prompts, ci * size, count, shots=g.shots, seed=r.loop.seed)
                lengths = gen.prompt_lengths([q for q, _ in reqs])
                fit = [i for i, n in enumerate(lengths) if n <= r.model.max_model_len - MIN_ANSWER_TOKENS]
                outs = dict(zip(fit, gen.generate([reqs[i][0] for i in fit], sampling), strict=True)) if fit else {}
                chunk = {"requests": [[q.id, pick, extract_tasks(outs[i][0].text) if i in outs else None]
                                      for i, (q, pick) in enumerate(reqs)]}
                atomic_write_text(path, json.dumps(chunk, ensure_ascii=False))
                fault_point("prompts:chunk")
            written = []
            for rid, pick, tasks in chunk["requests"]:
                st["requests"] += 1
                if tasks is None:
                    st["requests_too_long"] += 1
                elif not tasks:
                    st["no_task"] += 1
                written += [(rid, pick, t) for t in tasks or ()]
            for (rid, pick, task), why in zip(written, filt.offer([t for *_, t in written]), strict=True):
                if why is None and len(rows) < g.n:
                    rows.append({"id": f"g{len(rows):05d}", "prompt": task, "request": rid,
                                 "shots": [seeds.ids[i] for i in pick]})
                elif why is None:
                    st["surplus"] += 1
            ci += 1
    finally:
        if own and gen is not None:
            gen.close()
    if reused:
        log.info("prompts: resumed, %d chunks were already written", reused)
    st.update(filt.stats)
    st["kept"] = len(rows)
    if len(rows) < g.n:
        dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(filt.stats.items()) if k != "candidates")
        why = ("the model never wrote a usable task" if not rows else
               f"the target is out of reach within data.generate.max_requests {max_requests}")
        raise StageError(
            f"prompts: {why}: {st['requests']} requests gave {filt.stats['candidates']} tasks, {len(rows)} kept of "
            f"data.generate.n {g.n} (dropped: {dropped or 'none'}; {st['no_task']} answers without a task); use a "
            "stronger data.generate.model, raise data.generate.max_requests, lower data.generate.n, or name a prompt "
            "file (data.prompts)"
        )
    model = g.model or r.model.base
    return rows, {
        "mode": "generate", "n": g.n, "model": model, "model_revision": None if g.model else r.model.revision,
        "generator": r.backends.generator,
        "seeds": {"source": g.seeds, "identity": seeds.identity, "prompts": len(seeds.prompts)},
        "shots": g.shots, "sampling": {"temperature": g.temperature, "top_p": g.top_p,
                                      "max_new_tokens": g.max_new_tokens},
        "length": {"min_chars": g.min_chars, "max_chars": max_chars},
        "similarity": {"measure": g.similarity, "threshold": g.similarity_threshold, "shingle_chars": g.shingle_chars},
        "seed": r.loop.seed, "stats": dict(sorted(st.items())),
    }


def _generator(ctx: StageContext, g):
    """(generator, owned): the seed model's shared generator, or one opened for ``data.generate.model``."""
    if g.model is None:
        return ctx.generator(), False
    from mrlite.data.datagen import open_generator

    gen, _ = open_generator(g.model, backend=ctx.recipe.backends.generator, recipe=ctx.recipe)
    return gen, True


def summary_line(t: int, s: dict) -> str:
    st = s["stats"]
    if s["mode"] == "source":
        return (f"prompts: {s['n_out']} prompts from {s['source']} ({st.get('empty', 0)} empty, "
                f"{st.get('duplicates', 0)} duplicate, {st.get('too_long', 0)} too long dropped) → iter_00/pool.jsonl")
    return (f"prompts: grew {s['n_out']} prompts with {s['model']} from {s['seeds']['prompts']} seed prompts "
            f"({st.get('requests', 0)} requests, {st.get('candidates', 0)} tasks; dropped {st.get('duplicate', 0)} "
            f"duplicate, {st.get('near_duplicate', 0)} near-duplicate, {st.get('too_short', 0)} too short, "
            f"{st.get('too_long', 0)} too long) → iter_00/pool.jsonl")


def load(ctx: StageContext) -> list[dict]:
    return read_jsonl(ctx.run.path(0, "pool.jsonl"))
