"""Stage ``train``: one DPO step per iteration on actor pairs ∪ judge pairs, then merge → M_t.

Algorithm.md Part A step 6: a fresh LoRA on M_{t-1} (reference = M_{t-1}, i.e. the adapter disabled), β from
the recipe, plain concatenation of both pair sets; the adapter is merged into a full-precision copy of
M_{t-1} (never into 4-bit). An iteration without pairs stops the run with a clear message rather than start
the next iteration on an untrained model. Writes ``adapter/``, ``model/`` and ``train_metrics.jsonl``
(``train.method: full``: every weight is trained, ``model/`` is the trained model and there is no ``adapter/``).
Exercised by: ``mrlite run recipes/smoke.yaml --only train --iter 1``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mrlite.rundir import atomic_write_jsonl, atomic_write_text, config_hash, fingerprint, iter_jsonl, replace_dir
from mrlite.stages import StageContext, StageError, expected_marker_keys, fault_point, untimed

TRAIN_KEYS = ("prompt", "chosen", "rejected")


def applies(ctx: StageContext) -> bool:
    return ctx.t >= 1


def inputs(ctx: StageContext) -> list[Path]:
    return [ctx.path("pairs_actor.jsonl"), ctx.path("pairs_judge.jsonl")]


def outputs(ctx: StageContext) -> list[Path]:
    adapter = [] if ctx.recipe.train.method == "full" else [ctx.path("adapter")]  # full fine-tuning: no adapter
    return [*adapter, ctx.path("model"), ctx.path("train_metrics.jsonl")]


def config(ctx: StageContext) -> dict:
    r = ctx.recipe
    return {"train": r.train.model_dump(mode="json"), "trainer": r.backends.trainer,
            "policy": ctx.policy_fingerprint(), "seed": r.loop.seed, "model": r.model.model_dump(mode="json")}


def run(ctx: StageContext) -> dict:
    from mrlite.scale.distributed import train_call

    rows = [{k: row[k] for k in TRAIN_KEYS} | {"pair_id": row["pair_id"]}
            for name in ("pairs_actor.jsonl", "pairs_judge.jsonl") for row in iter_jsonl(ctx.path(name))]
    n_actor = sum(1 for r in rows if r["pair_id"].endswith(":actor"))
    if not rows:
        raise StageError(
            f"iter {ctx.t} train: no preference pairs (every prompt's responses tied or lacked scores); not "
            "starting the next iteration on an untrained model. Raise data.prompts_per_iteration, actor.n or "
            "judge.n, or check the judge's parse rate (mrlite status)"
        )
    # train.tmp survives a kill: with the same inputs and settings its trainer checkpoints are resumed.
    tmp = ctx.path("train.tmp")
    key = config_hash(expected_marker_keys(ctx, "train"))
    key_file = tmp / "key.json"
    if tmp.exists() and not (key_file.is_file() and json.loads(key_file.read_text()).get("key") == key):
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    atomic_write_text(key_file, json.dumps({"key": key}) + "\n")
    data = tmp / "rows.jsonl"
    atomic_write_jsonl(data, rows)
    base = ctx.policy_model()
    result = train_call(ctx.recipe, ctx.t, "dpo", data, base, tmp)
    fault_point("train:before_move")
    atomic_write_jsonl(ctx.path("train_metrics.jsonl"), [untimed(m) for m in result.metrics])
    if (tmp / "adapter").exists():
        replace_dir(tmp / "adapter", ctx.path("adapter"))
    elif ctx.path("adapter").exists():  # full fine-tuning after a LoRA run of this iteration
        shutil.rmtree(ctx.path("adapter"))
    fault_point("train:between_moves")
    replace_dir(tmp / "model", ctx.path("model"))
    shutil.rmtree(tmp)
    return {"n_in": len(rows), "n_out": result.n_rows, "actor_pairs": n_actor,
            "judge_pairs": len(rows) - n_actor, "dropped_too_long": result.n_dropped,
            **({"adapter": fingerprint(ctx.path("adapter"))[:16]} if ctx.path("adapter").exists() else {}), **untimed(result.summary)}


def summary_line(t: int, s: dict) -> str:
    loss = ""
    if s.get("first_loss") is not None:
        loss = f", loss {s['first_loss']:.4f} → {s['last_loss']:.4f}"
    margin = f", reward margin {s['last_margin']:.3f}" if s.get("last_margin") is not None else ""
    return (f"train  iter {t}: DPO on {s['n_in']} pairs ({s['actor_pairs']} actor + {s['judge_pairs']} judge; "
            f"{s['dropped_too_long']} over max_length dropped), {s.get('steps', '?')} steps{loss}{margin}; "
            f"{'full fine-tune' if s.get('method') == 'full' else 'merged'} → iter_{t:02d}/model")
