"""The first thing to run on a CUDA machine: every GPU phase of mrlite on a small random model, in minutes.

    python benchmarks/gpu_check.py                  # writes gpu_check/gpu_check.json; <= 8 min on one GPU
    mrlite plan recipes/paper.yaml --throughput gpu_check/gpu_check.json

Needs torch (a CUDA build), transformers, peft and accelerate; nothing is downloaded. It builds a random Llama
from a config and a byte-level BPE tokenizer trained on mrlite's shipped prompts, then runs, each timed with its
peak GPU memory:

1. ``hf_generate``: mrlite's HF generator (sampled answers + forced-score judgments) on CUDA;
2. ``dpo``: one short DPO run with a fresh LoRA through mrlite's TRL trainer (needs trl + datasets), which also
   ``merge``s the adapter into the 16-bit weights (without TRL: a plain peft merge of a fresh LoRA);
3. ``merged_generate``: the HF generator on the merged model;
4. ``dpo_4bit``: the same DPO on an NF4 view (needs bitsandbytes; skipped on cards without bf16, which the
   preflight refuses);
5. ``vllm`` and ``vllm_batch_invariant``: mrlite's vLLM generator on the merged model in a child process, and
   how many rows change when the same requests are batched differently, without and with
   ``backends.vllm.batch_invariant`` (needs vllm);
6. ``unsloth``: mrlite's unsloth trainer (DPO + 16-bit merge) in a child process (needs unsloth).

A part whose package is missing is skipped with a line saying so. The JSON holds the figures ``mrlite plan
--throughput`` reads (for *this* small model unless ``--model`` names a real one) plus every phase under
``measured``. Without a CUDA device it exits with one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

GIB = 1024**3
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SIZES = {  # hidden, layers, heads, kv heads, intermediate: "small" ~ 0.1B params, "tiny" for CPU self-tests
    "small": (1024, 8, 16, 4, 2816),
    "tiny": (64, 2, 4, 2, 128),
}
CHILD_TIMEOUT_S = 300


@dataclass
class Phase:
    name: str
    status: str = "ok"  # ok | skipped | failed
    seconds: float = 0.0
    tokens: int = 0
    peak_gib: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def tok_s(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds else None

    def line(self) -> str:
        if self.status != "ok":
            return f"  {self.name:<22} {self.status.upper()}: {self.note}"
        rate = f"{self.tok_s:>9.0f} tok/s" if self.tok_s else " " * 15
        peak = f"peak {self.peak_gib:6.2f} GiB" if self.peak_gib is not None else ""
        return f"  {self.name:<22} {self.seconds:7.1f} s {rate}  {peak}  {self.note}".rstrip()


def have(*packages: str) -> list[str]:
    """The packages of ``packages`` that are missing."""
    return [p for p in packages if importlib.util.find_spec(p) is None]


def cuda_problem() -> str | None:
    """Why this machine cannot run the check (one line), or None."""
    if have("torch"):
        return "torch is not installed; install a CUDA build of torch (see `mrlite doctor`)"
    import torch

    if not torch.cuda.is_available():
        return (f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False); run this on a "
                "machine with an NVIDIA GPU (`mrlite doctor` says why torch cannot use one)")
    return None


# --------------------------------------------------------------------------------------------------------------
# the model


def corpus() -> list[str]:
    texts = []
    for f in sorted((REPO / "mrlite" / "data").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            texts += [v for v in row.values() if isinstance(v, str)]
    texts += [p.read_text(encoding="utf-8") for p in sorted((REPO / "mrlite" / "templates").glob("*.txt"))]
    return texts


def build_model(out: Path, size: str, dtype) -> tuple[Path, int]:
    """A random Llama + a BPE tokenizer with a ChatML template, saved to ``out``; returns (dir, params)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=4096 if size == "tiny" else 8192, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    hidden, layers, heads, kv, inter = SIZES[size]
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def check_recipe(model: str, **sections):
    from mrlite.recipe import recipe_from_dict

    data = {
        "name": "gpu_check", "model": {"base": model, "max_model_len": 1024, "dtype": "auto"},
        "loop": {"seed": 0},
        "train": {"max_steps": 4, "batch_size": 4, "grad_accum": 1, "max_length": 512, "learning_rate": 1e-4,
                  "lora": {"r": 16, "alpha": 32}},
        "backends": {"generator": "hf", "trainer": "trl", "hf": {"batch_size": 32},
                     "vllm": {"gpu_memory_utilization": 0.5, "enforce_eager": True, "quantization": "none"}},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return recipe_from_dict(data)


def requests(n_prompts: int, n: int, force: str | None = None):
    from mrlite.backends.base import GenRequest
    from mrlite.core.prompts import render_judge

    prompts = [t for t in corpus() if 10 < len(t) < 400][:n_prompts]
    if force == "score":
        prompts = [render_judge(p, "A short answer.") for p in prompts]
    return [GenRequest(id=f"q{i}", messages=[{"role": "user", "content": p}], n=n, seed=i, force=force)
            for i, p in enumerate(prompts)]


# --------------------------------------------------------------------------------------------------------------
# phases (in this process)


class Meter:
    """Times a phase and reads its peak CUDA memory (this process)."""

    def __init__(self, phase: Phase, cuda: bool):
        self.phase, self.cuda = phase, cuda

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self.phase

    def __exit__(self, typ, exc, tb):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.phase.peak_gib = round(torch.cuda.max_memory_allocated() / GIB, 3)
        self.phase.seconds = round(time.perf_counter() - self.t0, 2)
        if exc is not None:
            self.phase.status = "failed"
            self.phase.note = f"{typ.__name__}: {' '.join(str(exc).split())[:300]}"
            traceback.print_exception(typ, exc, tb, file=sys.stderr)
        return True  # a failed phase is reported, the check goes on


def generate_phase(name: str, model: str, cuda: bool, rows_out: Path | None = None) -> Phase:
    from mrlite.backends import load_generator
    from mrlite.backends.base import Sampling

    p = Phase(name)
    with Meter(p, cuda):
        r = check_recipe(model)
        gen = load_generator(r, model)
        p.extra["device"] = str(getattr(gen, "device", "?"))
        answers = gen.generate(requests(32, 2), Sampling(0.8, 0.95, 64))
        judged = gen.generate(requests(8, 2, "score"), Sampling(0.8, 0.95, 48))
        p.tokens = sum(c.n_tokens or 0 for row in answers + judged for c in row)
        p.extra["forced"] = sum(c.forced for row in judged for c in row)
        if rows_out is not None:
            write_pairs(rows_out, requests(32, 2), answers)
        gen.close()
        p.note = f"{sum(len(r) for r in answers + judged)} sequences, {p.extra['forced']} forced scores"
    return p


def write_pairs(path: Path, reqs, answers) -> None:
    rows = [{"prompt": r.messages, "chosen": [{"role": "assistant", "content": a[0].text or "yes"}],
             "rejected": [{"role": "assistant", "content": a[1].text or "no"}]}
            for r, a in zip(reqs, answers, strict=True) if a[0].text != a[1].text]
    path.write_text("".join(json.dumps(x) + "\n" for x in rows[:16]), encoding="utf-8")


def dpo_tokens(rows: Path, model: str) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    n = 0
    for line in rows.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for k in ("chosen", "rejected"):
            n += len(tok.apply_chat_template(row["prompt"] + row[k], tokenize=True, return_dict=False))
    return n


def dpo_phase(name: str, model: str, rows: Path, out: Path, cuda: bool, **train) -> tuple[Phase, Phase]:
    """DPO through mrlite's trainer, and the merge it ends with (timed apart from the trainer's summary)."""
    from mrlite.backends import load_trainer

    p, m = Phase(name), Phase(name.replace("dpo", "merge"))
    with Meter(p, cuda):
        r = check_recipe(model, train=train)
        res = load_trainer(r, 1).train_dpo(rows, model, out)
        s = res.summary
        steps = max(int(s.get("steps") or 0), 1)
        p.tokens = dpo_tokens(rows, model) * r.train.max_steps * r.train.batch_size // max(res.n_rows, 1)
        secs = [row.get("seconds") for row in res.metrics if row.get("seconds") is not None]
        step_s = (secs[-1] - secs[0]) / (len(secs) - 1) if len(secs) > 1 else None
        p.extra |= {"steps": steps, "rows": res.n_rows, "first_loss": s.get("first_loss"),
                    "last_loss": s.get("last_loss"), "last_margin": s.get("last_margin"), "step_seconds": step_s,
                    "train_seconds": s.get("train_seconds")}
        if step_s:
            p.extra["train_tok_s"] = p.tokens / steps / step_s
            p.extra["train_load_s"] = max(float(s.get("train_seconds") or 0) - steps * step_s, 0.0)
        p.note = f"{steps} steps on {res.n_rows} pairs, loss {s.get('first_loss')} -> {s.get('last_loss')}"
        total, train_s = s.get("seconds"), s.get("train_seconds")
        merged = out / "model"
        size = sum(f.stat().st_size for f in merged.glob("*.safetensors")) / GIB
        if total is not None and train_s is not None:
            m.seconds = round(float(total) - float(train_s), 2)
            m.extra = {"merged_gib": round(size, 4), "merge_gib_s": size / max(m.seconds, 1e-6)}
            m.note = f"{size:.2f} GiB merged model"
        else:
            m.status, m.note = "skipped", "the trainer's summary has no train/total seconds"
    if p.status == "failed":
        m.status, m.note = "skipped", f"{name} failed"
    return p, m


def peft_merge_phase(model: str, out: Path, cuda: bool) -> Phase:
    """Without TRL: a fresh LoRA (B made non-zero) merged into the 16-bit weights with plain peft, on the GPU."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    p = Phase("merge")
    with Meter(p, cuda):
        dev = "cuda" if cuda else "cpu"
        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if cuda else torch.float32).to(dev)
        lora = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, w in lora.named_parameters():
                if "lora_B" in name:
                    w.normal_(0, 1e-3)
        lora.save_pretrained(out / "adapter")
        del lora, base
        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if cuda else torch.float32).to(dev)
        merged = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
        merged.save_pretrained(out / "model")
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(model).save_pretrained(out / "model")
        size = sum(f.stat().st_size for f in (out / "model").glob("*.safetensors")) / GIB
        p.extra = {"merged_gib": round(size, 4)}
        p.note = f"peft merge of a fresh LoRA (no TRL), {size:.2f} GiB"
    if p.status == "ok":
        p.extra["merge_gib_s"] = p.extra["merged_gib"] / max(p.seconds, 1e-6)
    return p


# --------------------------------------------------------------------------------------------------------------
# phases in a child process (vLLM and unsloth own the GPU and their import order)


def child(phase: str, args: list[str], out: Path, env: dict | None = None) -> Phase:
    result = out / f"{phase}.result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--result", str(result), *args]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, env={**os.environ, **(env or {})}, timeout=CHILD_TIMEOUT_S, capture_output=True,
                           text=True)
    except subprocess.TimeoutExpired:
        return Phase(phase, "failed", round(time.perf_counter() - t0, 1), note=f"timed out after {CHILD_TIMEOUT_S} s")
    if result.is_file():
        return Phase(**json.loads(result.read_text()))
    tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
    return Phase(phase, "failed", round(time.perf_counter() - t0, 1), note=f"exit {r.returncode}: {tail[-400:]}")


def child_vllm(model: str, batch_invariant: bool) -> Phase:
    import torch

    from mrlite.backends import load_generator
    from mrlite.backends.base import Sampling

    p = Phase("vllm_batch_invariant" if batch_invariant else "vllm")
    t0 = time.perf_counter()
    r = check_recipe(model, backends={"generator": "vllm", "vllm": {
        "gpu_memory_utilization": 0.5, "enforce_eager": True, "quantization": "none",
        "batch_invariant": batch_invariant}})
    gen = load_generator(r, model)
    p.extra["engine_start_s"] = round(time.perf_counter() - t0, 2)
    big = requests(64, 4)
    sampling = Sampling(0.8, 0.95, 128)
    t1 = time.perf_counter()
    full = gen.generate(big, sampling)
    judged = gen.generate(requests(16, 3, "score"), Sampling(0.8, 0.95, 64))
    p.seconds = round(time.perf_counter() - t1, 2)
    p.tokens = sum(c.n_tokens or 0 for row in full + judged for c in row)
    # the same 16 requests alone: rows that change with the batch around them
    alone = gen.generate(big[:16], sampling)
    differ = sum(a.text != b.text for ra, rb in zip(full[:16], alone, strict=True) for a, b in zip(ra, rb, strict=True))
    free, total = torch.cuda.mem_get_info()
    p.peak_gib = round((total - free) / GIB, 3)  # device-wide: vLLM reserves its share up front
    p.extra |= {"rows_differ_by_batch": differ, "rows_compared": 64,
                "forced": sum(c.forced for row in judged for c in row)}
    p.note = (f"engine start {p.extra['engine_start_s']:.0f} s; {differ}/64 rows differ when batched differently; "
              f"{p.extra['forced']} forced scores; memory = device-wide use")
    gen.close()
    return p


def child_unsloth(model: str, rows: str, out: str) -> Phase:
    import unsloth  # noqa: F401  - first, before trl/transformers/peft

    import torch

    p = Phase("unsloth")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    from mrlite.backends import load_trainer

    res = load_trainer(check_recipe(model, backends={"trainer": "unsloth"}), 1).train_dpo(Path(rows), model, Path(out))
    p.seconds = round(time.perf_counter() - t0, 2)
    p.peak_gib = round(torch.cuda.max_memory_allocated() / GIB, 3)
    s = res.summary
    p.extra = {k: s.get(k) for k in ("steps", "first_loss", "last_loss", "last_margin", "train_seconds")}
    adapters = sorted(x.name for x in (Path(out) / "adapter").iterdir())
    p.note = (f"DPO {s.get('steps')} steps + merged_16bit, loss {s.get('first_loss')} -> {s.get('last_loss')}; "
              f"adapter files: {', '.join(adapters)}")
    return p


def run_child(args) -> int:
    try:
        if args.child in ("vllm", "vllm_batch_invariant"):
            p = child_vllm(args.model, args.child == "vllm_batch_invariant")
        else:
            p = child_unsloth(args.model, args.rows, args.work)
    except Exception as e:  # reported by the parent as a failed phase
        traceback.print_exc()
        p = Phase(args.child, "failed", note=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    Path(args.result).write_text(json.dumps(asdict(p)), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------------------------


def rates(phases: dict[str, Phase]) -> dict:
    """The ``mrlite plan --throughput`` keys this run measured (others keep plan's defaults)."""
    out: dict = {}
    v = phases.get("vllm")
    if v and v.status == "ok":
        out["decode_tok_s"] = round(v.tok_s or 0, 1)
        out["engine_start_s"] = v.extra.get("engine_start_s")
    d = phases.get("dpo")
    if d and d.status == "ok" and d.extra.get("train_tok_s"):
        out["train_tok_s"] = round(d.extra["train_tok_s"], 1)
        out["train_load_s"] = round(d.extra["train_load_s"], 1)
    m = phases.get("merge")
    if m and m.status == "ok" and m.extra.get("merge_gib_s"):
        out["merge_gib_s"] = round(m.extra["merge_gib_s"], 3)
    return {k: val for k, val in out.items() if val}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "vllm", "unsloth"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check", help="work directory; the JSON goes to OUT/gpu_check.json")
    ap.add_argument("--model", help="a local model directory to use instead of the random model")
    ap.add_argument("--size", choices=sorted(SIZES), default="small", help="the random model's size")
    ap.add_argument("--skip", action="append", default=[], metavar="PHASE", help="skip a phase (repeatable)")
    ap.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)  # self-test of this script on a CPU
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args)

    problem = None if args.cpu else cuda_problem()
    if problem is None and (missing := have("torch", "transformers", "peft", "accelerate")):
        problem = f"missing {', '.join(missing)}: pip install torch transformers peft accelerate"
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 1
    import torch

    cuda = not args.cpu
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dev = torch.cuda.get_device_properties(0) if cuda else None
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    print(f"gpu_check: {dev.name if dev else 'CPU (self-test)'}"
          + (f", {dev.total_memory / GIB:.1f} GiB, compute {dev.major}.{dev.minor}" if dev else "")
          + f"; torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)
    phases: dict[str, Phase] = {}

    def add(p: Phase) -> None:
        phases[p.name] = p
        print(p.line(), flush=True)

    def skip(name: str, why: str) -> None:
        add(Phase(name, "skipped", note=why))

    p = Phase("build")
    with Meter(p, cuda):
        if args.model:
            model = str(Path(args.model).resolve())
            p.note = f"using {model}"
        else:
            dtype = torch.bfloat16 if bf16 else (torch.float16 if cuda else torch.float32)
            path, params = build_model(out / "base", args.size, dtype)
            model = str(path)
            p.note = f"random Llama, {params / 1e6:.0f}M params, {str(dtype).removeprefix('torch.')}"
    add(p)
    if p.status != "ok":
        return 1
    rows = out / "pairs.jsonl"
    add(generate_phase("hf_generate", model, cuda, rows_out=rows))
    merged = None
    if "dpo" in args.skip:
        skip("dpo", "--skip dpo")
    elif missing := have("trl", "datasets"):
        skip("dpo", f"{', '.join(missing)} not installed (pip install trl==1.15.0 datasets)")
    elif not rows.is_file():
        skip("dpo", "no preference rows (hf_generate failed)")
    else:
        d, m = dpo_phase("dpo", model, rows, out / "dpo", cuda)
        add(d)
        add(m)
        merged = out / "dpo" / "model" if m.status == "ok" else None
    if "merge" not in phases:
        add(peft_merge_phase(model, out / "peft_merge", cuda))
        merged = out / "peft_merge" / "model" if phases["merge"].status == "ok" else None
    if merged is not None:
        add(generate_phase("merged_generate", str(merged), cuda))
    else:
        skip("merged_generate", "no merged model")
    if missing := have("bitsandbytes", "trl", "datasets"):
        skip("dpo_4bit", f"{', '.join(missing)} not installed")
    elif not cuda or not bf16:
        skip("dpo_4bit", "needs a CUDA card with bf16 (TRL casts a 4-bit model's LoRA weights to bf16)")
    elif rows.is_file():
        d4, _ = dpo_phase("dpo_4bit", model, rows, out / "dpo_4bit", cuda, load_in_4bit=True)
        add(d4)
    target = str(merged or model)
    for name in ("vllm", "vllm_batch_invariant"):
        if missing := have("vllm"):
            skip(name, "vllm not installed (pip install vllm==0.33.0)")
        elif not cuda:
            skip(name, "needs CUDA")
        elif name == "vllm_batch_invariant" and dev.major < 8:
            skip(name, "batch-invariant kernels need compute capability >= 8.0")
        else:
            add(child(name, ["--model", target], out))
    if missing := have("unsloth"):
        skip("unsloth", "unsloth not installed (pip install unsloth==2026.10.9)")
    elif not cuda or not rows.is_file():
        skip("unsloth", "needs CUDA and the preference rows")
    else:
        add(child("unsloth", ["--model", model, "--rows", str(rows), "--work", str(out / "unsloth")], out))

    result = {**rates(phases), "measured": {
        "device": dev.name if dev else "cpu", "total_gib": round(dev.total_memory / GIB, 2) if dev else None,
        "capability": f"{dev.major}.{dev.minor}" if dev else None, "model": model, "versions": versions(),
        "seconds": round(time.perf_counter() - t_start, 1), "phases": [asdict(x) | {"tok_s": x.tok_s}
                                                                       for x in phases.values()]}}
    path = out / "gpu_check.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    failed = [n for n, x in phases.items() if x.status == "failed"]
    print(f"gpu_check: {len(phases) - len(failed)} of {len(phases)} phases ok or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + f"; {time.perf_counter() - t_start:.0f} s; wrote {path} (mrlite plan RECIPE --throughput {path})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
