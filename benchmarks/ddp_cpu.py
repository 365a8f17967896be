"""Two training processes vs one at the same global batch: the loss curves of LoRA DPO on the tiny random Llama.

One process with ``batch_size`` B·P, then ``--processes`` P processes with ``batch_size`` B each (``accelerate
launch``, gloo on CPU), same rows, seed and steps. Prints both loss curves, the largest relative difference per
step, and the wall-clock ratio (on a CPU, more processes share the same cores: the ratio shows the overhead of the
launcher and the all-reduce, not a speed-up).

Run: ``python benchmarks/ddp_cpu.py [--processes 2] [--per-process-batch 2] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrlite.scale.distributed import train_call
from mrlite.models import resolve_model
from mrlite.recipe import recipe_from_dict

PAIRS = [
    ("What is the capital of France?", "Paris.", "Berlin, which is famous for its pizza."),
    ("What is 2 + 2?", "4", "It is 5, obviously."),
    ("Name a colour.", "Blue.", "Seven hundred."),
    ("Say hello.", "Hello!", "No, I will not."),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--per-process-batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    base = resolve_model("tiny-random")
    train = {"learning_rate": 2e-2, "max_steps": a.steps, "grad_accum": 1, "max_length": 128,
             "lora": {"r": 8, "alpha": 16}}
    with tempfile.TemporaryDirectory() as d:
        rows = Path(d) / "pairs.jsonl"
        n = a.processes * a.per_process_batch
        with open(rows, "w") as fh:
            for i in range(n):
                p, c, r = PAIRS[i % len(PAIRS)]
                fh.write(json.dumps({"prompt": [{"role": "user", "content": p}],
                                     "chosen": [{"role": "assistant", "content": c}],
                                     "rejected": [{"role": "assistant", "content": r}]}) + "\n")
        runs = {}
        for label, procs, batch in (("1 process", 1, n), (f"{a.processes} processes", a.processes,
                                                           a.per_process_batch)):
            recipe = recipe_from_dict({"name": "ddp", "model": {"base": "tiny-random"},
                                       "train": {**train, "batch_size": batch, "num_processes": procs}})
            t0 = time.perf_counter()
            result = train_call(recipe, 1, "dpo", rows, base, Path(d) / label.replace(" ", "_"))
            runs[label] = ([m["loss"] for m in result.metrics], time.perf_counter() - t0)
    (one, t1), (two, t2) = runs.values()
    print(f"global batch {n}, {a.steps} steps")
    for label, (losses, secs) in runs.items():
        print(f"{label:>12}: loss {' '.join(f'{x:.6f}' for x in losses)}  ({secs:.0f} s)")
    rel = max(abs(x - y) / abs(x) for x, y in zip(one, two, strict=True))
    print(f"max relative loss difference: {rel:.2e}; wall-clock ratio {a.processes} processes / 1: {t2 / t1:.2f}")


if __name__ == "__main__":
    main()
