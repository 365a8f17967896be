"""vLLM generator: one ``vllm.LLM`` per process, ``LLM.chat`` with per-request seeds, forced Score/Winner lines.

The sample, judge and meta_judge stages of an iteration share one engine in one subprocess; vLLM 0.33 cannot
give GPU memory back in-process (no ``LLM.shutdown()``), so the process exit does (stack.md Part 2 §2.5).
Traps handled here (stack.md Part 2 §0.8): ``max_tokens`` is always explicit (its default is 16), prompts go
through ``LLM.chat`` (``generate`` on a rendered string would add a second BOS), stop tokens are set from the
tokenizer, ``generation_config.json`` and the known end-of-turn tokens rather than trusted to each merged
directory. Exercised by: ``mrlite run recipes/paper.yaml`` (needs a CUDA GPU and ``pip install 'mrlite[gpu]'``).

Determinism: every request carries its own seed, but vLLM is not batch-invariant by default: a row's sample can
change with the other requests batched with it, and a chunk regenerated after a kill starts with a cold prefix
cache. ``backends.vllm.batch_invariant: true`` sets ``VLLM_BATCH_INVARIANT=1`` before the engine starts (vLLM's
batch-invariant kernels; compute capability >= 8.0); the generation stages' markers record it with the backend
section. Without CUDA (vLLM's CPU build) the engine gets settings that are safe there (``cpu_engine_kwargs``).

Forced completion (``GenRequest.force``), in two layers:

1. With ``backends.vllm.structured_outputs: true`` the request is regex-constrained
   (``StructuredOutputsParams(regex=...)``): free text that must end in ``Score: <s>`` (an integer or a decimal
   such as ``4.5`` inside ``judge.score_range``: what ``parse_score`` accepts) / ``Winner: Judgement <A|B>``.
   The model writes the label itself, so such rows count as parsed from text (``forced=False``).
2. Any completion that still does not parse (it hit ``max_tokens`` first, or structured outputs are off) is
   continued at the token level: prompt ids + its own generated ids (trailing stop tokens dropped) + the tokens
   of ``"\\n" + label``, one step restricted to the allowed value tokens (``allowed_token_ids``), sampled at the
   role's temperature with a per-row seed (argmax at temperature 0): the rule every backend follows
   (``forcing.pick_choice``), done on token ids so the generated text is never re-rendered through the chat
   template, and nothing is rendered to text and re-tokenised.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mrlite.backends import BackendError
from mrlite.backends.base import Completion, GenRequest, Message, Sampling
from mrlite.backends.forcing import Forcing, forcing_tokens, score_regex
from mrlite.core.parsing import SCORE_LABEL, has_score, has_winner
from mrlite.recipe import Recipe
from mrlite.rundir import derive_seed

log = logging.getLogger(__name__)

SMALL_CARD_GIB = 32.0
"""Cards with at most this much memory get ``fp8_per_tensor`` weights by default (24 GB class: 4090, 3090, L4)."""
FP8_DEFAULT = "fp8_per_tensor"
"""Online FP8 in vLLM 0.33; plain ``"fp8"`` now expects an FP8 checkpoint (stack.md Part 2 §0.3)."""
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<end_of_turn>", "<|endoftext|>")
SEED_MODULUS = 2**31 - 1
"""vLLM gives sample i of an ``n>1`` request the seed ``seed + i``; folding keeps that inside int32/int64."""
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
GIB = 1024**3
CPU_KV_CACHE_GIB = 2
"""KV cache reserved on vLLM's CPU backend (``kv_cache_memory_bytes``) unless ``VLLM_CPU_KVCACHE_SPACE`` says."""
CPU_MEMORY_UTILIZATION = 0.3
"""vLLM's CPU backend reads ``gpu_memory_utilization`` as a share of *system RAM*; the GPU default (0.88) refuses to
start on any machine with other processes (stack.md Part 1 §6a). With an explicit KV cache size it only names
the worker's reservation."""
BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"
"""vLLM 0.33's switch for batch-invariant kernels (``vllm/envs.py``), read when the engine starts."""


# --------------------------------------------------------------------------------------------------------------
# Pure helpers (table-tested)


def engine_kwargs(recipe: Recipe, model: str, gpu_mem_gib: float | None, *, bf16: bool = True,
                  weights_gib: float | None = None, cuda: bool = True, cpu_bf16: bool = False,
                  env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` from the recipe and the card.

    Args:
        recipe: Uses ``backends.vllm`` (+ ``engine_args``, applied last) and ``model`` (dtype, max_model_len,
            trust_remote_code, revision) and ``loop.seed``.
        model: Local directory or Hub id to load.
        gpu_mem_gib: Total memory of the card (None: unknown, no size-based default).
        bf16: Whether the card has bf16 (compute capability >= 8.0).
        weights_gib: Size of the model's 16-bit weights if known (a small model needs no FP8 on a small card).
        cuda: Whether a CUDA device is present. Without one (vLLM's CPU build, ``vllm-cpu``) the engine gets
            settings that are safe there, see ``cpu_engine_kwargs``.
        cpu_bf16: Without CUDA: whether the CPU runs bf16 natively (AVX512-BF16 or AMX).
        env: Environment to read ``VLLM_CPU_KVCACHE_SPACE`` from (default ``os.environ``).

    Returns:
        The kwargs. ``quantization`` unset in the recipe means: ``fp8_per_tensor`` on cards <= 32 GiB unless the
        16-bit weights take at most a third of the card, else none (bf16); ``"none"`` forces none.

    Raises:
        BackendError: bf16 asked for on a card without it; batch-invariant kernels asked for without a card that
            has them.
    """
    v = recipe.backends.vllm
    m = recipe.model
    if v.batch_invariant and not (cuda and bf16):
        raise BackendError("backends.vllm.batch_invariant needs a CUDA GPU with compute capability >= 8.0 "
                           f"({'this card has less' if cuda else 'none found'}); set backends.vllm.batch_invariant: "
                           "false")
    if not cuda:
        dtype = ("bfloat16" if cpu_bf16 else "float32") if m.dtype == "auto" else _DTYPES[m.dtype]
    elif m.dtype == "auto":
        dtype = "bfloat16" if bf16 else "float16"
    elif m.dtype == "bfloat16" and not bf16:
        raise BackendError("model.dtype bfloat16 needs a GPU with compute capability >= 8.0; set model.dtype: "
                           "float16 (or auto)")
    else:
        dtype = _DTYPES[m.dtype]
    kw: dict[str, Any] = {
        "model": model,
        "dtype": dtype,
        "seed": recipe.loop.seed,
        "max_model_len": m.max_model_len,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "enable_prefix_caching": True,  # the rubric + prompt + response prefix is shared by N judge / N(N-1) meta calls
        "tensor_parallel_size": v.tensor_parallel_size,
        "enforce_eager": v.enforce_eager,
        "kv_cache_dtype": v.kv_cache_dtype,
    }
    quant = default_quantization(v.quantization, gpu_mem_gib, weights_gib)
    if quant is not None:
        kw["quantization"] = quant
    if m.trust_remote_code:
        kw["trust_remote_code"] = True
    if m.revision and not Path(model).is_dir():
        kw["revision"] = m.revision
    if not cuda:
        kw.update(cpu_engine_kwargs(os.environ if env is None else env))
    kw.update(v.engine_args)
    return kw


def cpu_engine_kwargs(env: Mapping[str, str]) -> dict[str, Any]:
    """Engine settings for vLLM's CPU backend (no CUDA device), each avoiding a failure seen with ``vllm-cpu``.

    - ``enable_chunked_prefill=False``: with per-request seeds, a batch whose prompts exceed one scheduler step is
      split by chunked prefill and the seeded CPU sampler crashes the engine ("CPU Generator does not use offset",
      then ``EngineDeadError``).
    - ``kv_cache_memory_bytes``: an explicit KV cache (``VLLM_CPU_KVCACHE_SPACE`` GiB if set, else
      ``CPU_KV_CACHE_GIB``), so vLLM does not size it from ``gpu_memory_utilization`` read as a share of RAM.
    - ``gpu_memory_utilization``: ``CPU_MEMORY_UTILIZATION`` (the worker's share of system RAM on this backend).

    The dtype rule (``model.dtype: auto`` -> float32 unless the CPU has native bf16) is in ``engine_kwargs``.
    """
    try:
        kv_gib = float(env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB)
    except ValueError:
        kv_gib = float(CPU_KV_CACHE_GIB)
    return {"enable_chunked_prefill": False, "kv_cache_memory_bytes": int(kv_gib * GIB),
            "gpu_memory_utilization": CPU_MEMORY_UTILIZATION}


def engine_env(recipe: Recipe, *, cuda: bool = True) -> dict[str, str]:
    """Environment variables the engine must see before it starts (vLLM reads them in its engine process).

    ``VLLM_BATCH_INVARIANT=1`` when ``backends.vllm.batch_invariant``: without it vLLM is not batch-invariant
    (a row's sample can depend on what else was batched with it, and on a resumed chunk's cold prefix cache).
    Without CUDA, ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` lets the model use every core (vLLM otherwise keeps one for
    the engine process: ~40% slower on 2 cores, stack.md Part 1 §6a); an explicit setting in the environment wins.
    """
    out = {BATCH_INVARIANT_ENV: "1" if recipe.backends.vllm.batch_invariant else "0"}
    if not cuda:
        out["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return out


def default_quantization(setting: str | None, gpu_mem_gib: float | None, weights_gib: float | None) -> str | None:
    """``backends.vllm.quantization`` resolved: explicit wins (``"none"`` = off), else by card size (see above)."""
    if setting is not None:
        return None if setting.lower() in ("none", "off", "bf16", "bfloat16") else setting
    if gpu_mem_gib is None or gpu_mem_gib > SMALL_CARD_GIB:
        return None
    if weights_gib is not None and weights_gib <= gpu_mem_gib / 3:
        return None
    return FP8_DEFAULT


def sampling_kwargs(req: GenRequest, sampling: Sampling, max_tokens: int, stop_ids: list[int],
                    regex: str | None = None) -> dict[str, Any]:
    """``SamplingParams`` fields of one request (``structured_outputs`` is added by the caller from ``regex``)."""
    kw: dict[str, Any] = {
        "n": req.n,
        "seed": req.seed % SEED_MODULUS,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": max_tokens,
        "stop_token_ids": list(stop_ids),
    }
    if regex is not None:
        kw["regex"] = regex
    return kw


STRUCTURED_FIELD = "structured_outputs"
"""The ``SamplingParams`` field that takes a ``StructuredOutputsParams``."""


def split_structured(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``sampling_kwargs`` output split into ``SamplingParams`` fields and ``StructuredOutputsParams`` fields."""
    kw = dict(kw)
    regex = kw.pop("regex", None)
    return kw, (None if regex is None else {"regex": regex})


def force_sampling_kwargs(choices: list[int], temperature: float = 0.0, seed: int | None = None) -> dict[str, Any]:
    """``SamplingParams`` fields of one forced step: one token among the allowed value tokens, sampled at the role's
    temperature with the row's seed (argmax at T = 0), the rule every backend follows."""
    return {"n": 1, "temperature": temperature, "top_p": 1.0, "max_tokens": 1, "allowed_token_ids": list(choices),
            "seed": seed if temperature > 0 else None}


CHAT_KWARGS: dict[str, Any] = {"use_tqdm": True, "add_generation_prompt": True}
"""Keywords of every ``LLM.chat`` call (besides the messages and the SamplingParams list)."""
GENERATE_KWARGS: dict[str, Any] = {"use_tqdm": False}
"""Keywords of every ``LLM.generate`` call (the forced steps, on token ids)."""


def force_regex(force: str, score_range: tuple[float, float]) -> str:
    """Free text that must end with a parseable label: the structured-outputs pattern for a forced request."""
    if force == "score":
        return r"[\s\S]*" + _literal(SCORE_LABEL) + score_regex(score_range)
    if force == "winner":
        return r"[\s\S]*Winner: \[?Judge?ment [AB]\]?"
    raise ValueError(f"unknown force {force!r}; expected 'score' or 'winner'")


def _literal(text: str) -> str:
    """Regex for ``text`` as-is. Unlike ``re.escape`` it leaves spaces alone: xgrammar warns on ``\\ ``."""
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", text)


def stop_token_ids(eos_token_id, generation_config: dict | None, vocab: dict[str, int]) -> list[int]:
    """Stop ids: the tokenizer's EOS, ``generation_config.json``'s ``eos_token_id`` and known end-of-turn tokens.

    Llama-3 ends a turn with ``<|eot_id|>`` (128009) while its old tokenizer EOS is ``<|end_of_text|>``; a
    merged directory without ``generation_config.json`` would otherwise generate to ``max_tokens``.
    """
    ids: set[int] = set()
    for src in (eos_token_id, (generation_config or {}).get("eos_token_id")):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, list | tuple):
            ids.update(int(x) for x in src)
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(ids)


def read_generation_config(model: str) -> dict | None:
    p = Path(model) / "generation_config.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------------
# The backend


class VLLMGenerator:
    """Generator backend on ``vllm.LLM`` (one CUDA GPU, or ``tensor_parallel_size`` GPUs).

    Args:
        recipe: Uses ``backends.vllm``, ``model`` and ``judge.score_range`` (the digits a forced score may take).
        model: A resolved model: local directory (M_{t-1}) or Hub id.
    """

    def __init__(self, recipe: Recipe, model: str):
        from mrlite.hardware.gpu import gpus
        from mrlite.hardware.cpu import cpu_has_bf16
        from mrlite.models import check_chat_template
        from mrlite.hardware.shapes import weights_gib_16bit

        devs = gpus()
        card = devs[0] if devs else None
        kw = engine_kwargs(recipe, model, card.total_gib if card else None, bf16=card.bf16 if card else True,
                           weights_gib=weights_gib_16bit(model), cuda=card is not None, cpu_bf16=cpu_has_bf16())
        for k, val in engine_env(recipe, cuda=card is not None).items():  # before vLLM reads its environment
            if k == BATCH_INVARIANT_ENV:
                os.environ[k] = val
            else:
                os.environ.setdefault(k, val)
        try:
            import vllm
        except ImportError:
            raise BackendError("backend 'vllm' needs vllm: pip install 'mrlite[gpu]' (see `mrlite doctor`)") from None

        self._vllm = vllm
        self.recipe = recipe
        log.info("vllm engine: %s", ", ".join(f"{k}={v}" for k, v in kw.items()))
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kw)
        self.tokenizer = self.llm.get_tokenizer()
        check_chat_template(self.tokenizer, recipe.model.base)
        self.max_model_len = recipe.model.max_model_len
        self.stop_ids = stop_token_ids(getattr(self.tokenizer, "eos_token_id", None),
                                       read_generation_config(model), self.tokenizer.get_vocab())
        if not self.stop_ids:
            raise BackendError(f"model {recipe.model.base} defines no EOS token; generation could not stop")
        self._forcing: dict[str, Forcing] = {}
        self._lengths: dict[tuple, int] = {}
        log.info("vllm generator: %s ready in %.1f s (stop ids %s)", model, time.perf_counter() - t0, self.stop_ids)

    # ----------------------------------------------------------------------------------------------------------
    # Protocol

    def generate(self, requests: list[GenRequest], sampling: Sampling) -> list[list[Completion]]:
        """Return ``request.n`` completions per request, in request order (one ``LLM.chat`` call for all).

        Each request gets its own ``SamplingParams`` (its ``n`` and seed), so rows do not depend on batching.

        Raises:
            ValueError: a prompt leaves no room for an answer within ``model.max_model_len`` (callers drop
                those first, using ``prompt_lengths``).
        """
        if not requests:
            return []
        t0 = time.perf_counter()
        lengths = self.prompt_lengths(requests, keep_cache=True)
        structured = self.recipe.backends.vllm.structured_outputs
        params = []
        for r, n_prompt in zip(requests, lengths, strict=True):
            reserve = len(self._forcing_for(r.force).prefix) + 1 if r.force else 0
            room = self.max_model_len - n_prompt - reserve
            if room < 1:
                raise ValueError(
                    f"request {r.id}: prompt is {n_prompt} tokens, leaving no room for an answer within "
                    f"model.max_model_len={self.max_model_len}; drop such prompts first (prompt_lengths)"
                )
            regex = force_regex(r.force, self.recipe.judge.score_range) if (r.force and structured) else None
            params.append(self._sampling_params(
                sampling_kwargs(r, sampling, min(sampling.max_new_tokens, room), self.stop_ids, regex)))
        outs = self.llm.chat([r.messages for r in requests], params, **CHAT_KWARGS)
        texts: dict[tuple[int, int], str] = {}
        ids: dict[tuple[int, int], list[int]] = {}
        prompt_ids: dict[int, list[int]] = {}
        for i, (r, o) in enumerate(zip(requests, outs, strict=True)):
            prompt_ids[i] = list(o.prompt_token_ids or [])
            comps = sorted(o.outputs, key=lambda c: c.index)
            if len(comps) != r.n:
                raise RuntimeError(f"vllm returned {len(comps)} completions for request {r.id}, expected {r.n}")
            for j, c in enumerate(comps):
                texts[(i, j)] = c.text
                ids[(i, j)] = list(c.token_ids)
        stops = set(self.stop_ids)
        for seq in ids.values():  # the stop token ends the answer but is not part of it (as in the HF backend)
            while seq and seq[-1] in stops:
                seq.pop()
        forced = self._force(requests, prompt_ids, ids, texts, sampling)
        result, n_tokens = [], 0
        for i, r in enumerate(requests):
            row = []
            for j in range(r.n):
                text, extra = forced.get((i, j), (texts[(i, j)], 0))
                row.append(Completion(text=text, forced=(i, j) in forced, n_tokens=len(ids[(i, j)]) + extra))
                n_tokens += len(ids[(i, j)])
            result.append(row)
        dt = time.perf_counter() - t0
        log.info("vllm generate: %d requests, %d sequences, %d tokens, %d forced, %.1f s (%.0f tok/s)",
                 len(requests), len(texts), n_tokens, len(forced), dt, n_tokens / max(dt, 1e-9))
        return result

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(self.tokenizer.encode(t, add_special_tokens=False)) for t in texts]

    def prompt_lengths(self, requests: list[GenRequest], keep_cache: bool = False) -> list[int]:
        """Tokens of each request's templated prompt (the chat template applied once, as ``LLM.chat`` does)."""
        if not keep_cache and len(self._lengths) > 100_000:
            self._lengths.clear()
        out = []
        for r in requests:
            key = (r.id, tuple((m.get("role"), m.get("content")) for m in r.messages))
            if key not in self._lengths:
                self._lengths[key] = len(self._encode(r.messages))
            out.append(self._lengths[key])
        return out

    def close(self) -> None:
        """Drop the engine (its engine-core process shuts down on garbage collection); the caller's process
        exit is what reliably returns the GPU memory."""
        self.llm = None
        gc.collect()
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except Exception as e:  # best effort: the subprocess exits next anyway
            log.debug("vllm cleanup: %s", e)

    # ----------------------------------------------------------------------------------------------------------
    # Internals

    def _sampling_params(self, kw: dict[str, Any]):
        kw, structured = split_structured(kw)
        if structured is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kw[STRUCTURED_FIELD] = StructuredOutputsParams(**structured)
        return self._vllm.SamplingParams(**kw)

    def _encode(self, messages: list[Message]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding regardless
            ids = ids["input_ids"]
        return list(ids)

    def _forcing_for(self, force: str) -> Forcing:
        if force not in self._forcing:
            self._forcing[force] = forcing_tokens(
                lambda s: self.tokenizer.encode(s, add_special_tokens=False), force, self.recipe.judge.score_range)
        return self._forcing[force]

    def _force(self, requests, prompt_ids, ids, texts, sampling: Sampling) -> dict[tuple[int, int], tuple[str, int]]:
        """Forced label + value for completions that do not parse: one batched ``LLM.generate`` on token ids.

        The value is sampled among the allowed tokens at the role's temperature with a seed derived from the row
        (argmax at temperature 0): the rule of ``forcing.pick_choice``, as in the HF and fake backends."""
        lo, hi = self.recipe.judge.score_range
        todo = []
        for (i, j), text in sorted(texts.items()):
            force = requests[i].force
            if (force == "score" and not has_score(text, lo, hi)) or (force == "winner" and not has_winner(text)):
                todo.append((i, j))
        if not todo:
            return {}
        prompts, params, forcings = [], [], []
        for i, j in todo:
            f = self._forcing_for(requests[i].force)
            prompts.append({"prompt_token_ids": prompt_ids[i] + ids[(i, j)] + f.prefix})  # stop tokens dropped
            params.append(self._vllm.SamplingParams(**force_sampling_kwargs(
                f.choices, sampling.temperature, derive_seed(requests[i].seed, j, "forced"))))
            forcings.append(f)
        outs = self.llm.generate(prompts, params, **GENERATE_KWARGS)
        result = {}
        for (i, j), f, o in zip(todo, forcings, outs, strict=True):
            tok = list(o.outputs[0].token_ids)[:1]
            pick = f.choices.index(tok[0]) if tok and tok[0] in f.choices else 0
            result[(i, j)] = (texts[(i, j)] + "\n" + f.label + f.texts[pick], len(f.prefix) + 1)
        return result


__all__ = [
    "Forcing",
    "VLLMGenerator",
    "cpu_engine_kwargs",
    "default_quantization",
    "engine_env",
    "engine_kwargs",
    "force_regex",
    "force_sampling_kwargs",
    "forcing_tokens",
    "sampling_kwargs",
    "split_structured",
    "stop_token_ids",
]
