"""Chunked generation shared by the sample, judge and meta_judge stages (in-stage resume).

Work units (one per prompt) are cut into chunks with fixed boundaries (``loop.chunk_size`` units each). Each
chunk is generated and written whole (tmp + rename) under ``iter_NN/.parts/<stage>/``; a chunk cut by a kill is
regenerated whole on resume, so its batch composition — and with per-row seeds, its rows — match an
uninterrupted run (clarifications.md, "Determinism").
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mrlite.scale import parallel
from mrlite.backends.base import Completion, GenRequest, Sampling
from mrlite.progress import StageProgress
from mrlite.rundir import atomic_write_text, config_hash
from mrlite.stages import StageContext, StageError, expected_marker_keys, fault_point

log = logging.getLogger(__name__)

MIN_ANSWER_TOKENS = 16
"""A request whose templated prompt leaves fewer tokens than this for the answer is dropped and counted."""

Build = Callable[[Any], list[GenRequest]]
Collect = Callable[[Any, list[tuple[GenRequest, list[Completion] | None]]], tuple[list[dict], dict]]


def sampling_of(cfg) -> Sampling:
    return Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)


def chunk_folder(ctx: StageContext, stage: str) -> Path:
    """A stage's chunk folder (``.parts/<stage>``), emptied first when it holds chunks of other inputs or
    settings (its ``parts.json`` records the key they were made with)."""
    parts = ctx.run.parts_dir(ctx.t, stage)
    key = config_hash(expected_marker_keys(ctx, stage))
    meta = parts / "parts.json"
    if parts.exists():
        try:
            ok = json.loads(meta.read_text())["key"] == key
        except (OSError, ValueError, KeyError):
            ok = False
        if not ok:
            log.info("iter %d %s: discarding partial chunks from different inputs/settings", ctx.t, stage)
            shutil.rmtree(parts)
    if not parts.exists():
        parts.mkdir(parents=True)
        atomic_write_text(meta, json.dumps({"key": key}) + "\n")
    return parts


def generate_in_chunks(ctx: StageContext, stage: str, units: Sequence, build: Build, collect: Collect,
                       sampling: Sampling) -> tuple[list[dict], dict]:
    """Generate every unit's requests chunk by chunk; returns all rows and the summed stats."""
    parts = chunk_folder(ctx, stage)

    size = ctx.recipe.loop.chunk_size
    rows: list[dict] = []
    stats: Counter = Counter()
    n_chunks = (len(units) + size - 1) // size
    reused = 0
    only = parallel.fan_out(ctx, stage, parts, n_chunks)  # worker processes (More than one GPU); None: all here
    written = [len(units[ci * size:(ci + 1) * size]) for ci in range(n_chunks) if (parts / f"chunk_{ci:05d}.json").exists()]
    progress = StageProgress(parts, f"iter {ctx.t} {stage}", len(units), done=sum(written), stage=stage, t=ctx.t)
    for ci in range(n_chunks):
        path = parts / f"chunk_{ci:05d}.json"
        if only is not None and ci not in only:
            continue
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            rows.extend(data["rows"])
            stats.update(data["stats"])
            reused += 1
            continue
        chunk_units = units[ci * size:(ci + 1) * size]
        requests = [(u, r) for u in chunk_units for r in build(u)]
        gen = ctx.generator()
        lengths = gen.prompt_lengths([r for _, r in requests]) if requests else []
        limit = ctx.recipe.model.max_model_len - MIN_ANSWER_TOKENS
        keep = [i for i, n in enumerate(lengths) if n <= limit]
        chunk_stats: Counter = Counter({"too_long": len(requests) - len(keep), "requests": len(requests)})
        outs = gen.generate([requests[i][1] for i in keep], sampling) if keep else []
        by_index = dict(zip(keep, outs, strict=True))
        chunk_rows: list[dict] = []
        for u in chunk_units:
            pairs = [(r, by_index.get(i)) for i, (uu, r) in enumerate(requests) if uu is u]
            new_rows, s = collect(u, pairs)
            chunk_rows.extend(new_rows)
            chunk_stats.update(s)
        atomic_write_text(path, json.dumps({"rows": chunk_rows, "stats": dict(chunk_stats)}, ensure_ascii=False))
        rows.extend(chunk_rows)
        stats.update(chunk_stats)
        log.debug("iter %d %s: chunk %d/%d written (%d rows)", ctx.t, stage, ci + 1, n_chunks, len(chunk_rows))
        progress.advance(len(chunk_units), tokens=sum(c.n_tokens or 0 for out in outs for c in out or []))
        fault_point(f"{stage}:chunk")
    progress.close()
    parallel.done()  # a worker process stops here, before the stage writes its files
    if reused:
        log.info("iter %d %s: resumed, %d of %d chunks were already written", ctx.t, stage, reused, n_chunks)
    if stats["requests"] and stats["too_long"] == stats["requests"]:
        raise StageError(
            f"iter {ctx.t} {stage}: every prompt is longer than model.max_model_len "
            f"({ctx.recipe.model.max_model_len} tokens) minus {MIN_ANSWER_TOKENS}; raise model.max_model_len or "
            "use shorter prompts (data.max_prompt_chars)"
        )
    return rows, dict(stats)
