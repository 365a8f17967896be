"""How long does the ``prompts`` stage take to grow the paper's 20,000-prompt pool? (Fake backend, so this times
mrlite's own work: building the 8-shot requests, extracting tasks, the length/tag filter and the exact +
near-duplicate removal, chunk files and the pool file; a real model's generation comes on top.)

Goal: <= 20 s and <= 1 GiB peak memory on a 2-core machine. Runs the real stage in a fresh run directory
(``recipes/paper.yaml`` with the fake backend), prints wall time, CPU time and peak RSS, and the pool's counts.

Run: ``python benchmarks/prompt_pool.py [--n 20000] [--similarity jaccard|exact]`` (check ``uptime`` first: on a
busy machine the wall time grows with the load, the CPU time does not).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mrlite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--similarity", default="jaccard", choices=["jaccard", "exact"])
    a = ap.parse_args()
    recipe = mrlite.load_recipe("paper", [
        "backends.generator=fake", "backends.trainer=fake", "model.base=fake", f"data.generate.n={a.n}",
        f"data.generate.similarity={a.similarity}"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cpu0, t0 = time.process_time(), time.perf_counter()
        mrlite.run(recipe, out=out, only="prompts")
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        prov = json.loads((out / "iter_00" / "pool.json").read_text())
        size = (out / "iter_00" / "pool.jsonl").stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    st = prov["stats"]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"grew {st['kept']} prompts ({st['requests']} requests, {st['candidates']} tasks; dropped "
          f"{st.get('duplicate', 0)} duplicate, {st.get('near_duplicate', 0)} near-duplicate, "
          f"{st.get('too_short', 0)} too short) -> pool.jsonl {size / 2**20:.1f} MiB")
    print(f"wall {wall:.1f} s (goal <= 20 s: {wall / 20:.2f} of it), CPU {cpu:.1f} s, peak RSS {peak:.2f} GiB "
          f"(goal <= 1 GiB: {peak:.2f} of it)")


if __name__ == "__main__":
    main()
