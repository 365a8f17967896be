"""The vLLM generator against a fake ``vllm`` module: what it sends (engine args, chat messages, SamplingParams,
structured outputs, forced completions) and what it returns. No GPU, no vllm install."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest

import mrlite
import mrlite.hardware.cpu
import mrlite.hardware.gpu
from mrlite.backends import BackendError
from mrlite.backends.base import GenRequest, Sampling
from mrlite.backends.vllm import (
    VLLMGenerator, default_quantization, engine_env, engine_kwargs, force_regex, forcing_tokens, stop_token_ids,
)
from mrlite.hardware.gpu import GPUInfo
from mrlite.core.parsing import parse_score, parse_winner

REPO = Path(__file__).resolve().parents[1]
RTX4090 = GPUInfo(0, "NVIDIA GeForce RTX 4090", 23.6, (8, 9))
H100 = GPUInfo(0, "NVIDIA H100 80GB HBM3", 79.2, (9, 0))
T4 = GPUInfo(0, "Tesla T4", 15.0, (7, 5))
BOS, EOS, EOT = 1, 2, 9


def recipe(*sets: str) -> mrlite.Recipe:
    return mrlite.load_recipe(REPO / "recipes" / "paper.yaml", list(sets))


# --------------------------------------------------------------------------------------------------------------
# engine arguments per card


@pytest.mark.parametrize("setting, gib, weights, expected", [
    (None, 23.6, 14.96, "fp8_per_tensor"),   # 8B on a 24 GB card: FP8 weights leave room for KV cache
    (None, 23.6, None, "fp8_per_tensor"),    # unknown size on a small card: FP8
    (None, 23.6, 2.9, None),                 # a 1.5B model fits in 16 bit
    (None, 15.0, 2.9, None),
    (None, 79.2, 14.96, None),               # 80 GB: bf16
    (None, None, 14.96, None),               # card unknown: no guess
    ("none", 23.6, 14.96, None),             # explicit off
    ("fp8_per_tensor", 79.2, 14.96, "fp8_per_tensor"),
    ("awq", 23.6, None, "awq"),
])
def test_default_quantization(setting, gib, weights, expected) -> None:
    assert default_quantization(setting, gib, weights) == expected


@pytest.mark.parametrize("card, sets, expect", [
    (RTX4090, ["backends.vllm.quantization=null"], {"quantization": "fp8_per_tensor", "dtype": "bfloat16"}),
    (H100, ["backends.vllm.quantization=null"], {"dtype": "bfloat16"}),
    (H100, [], {"quantization": "fp8_per_tensor"}),  # paper.yaml asks for FP8 explicitly
    (T4, ["backends.vllm.quantization=none"], {"dtype": "float16"}),
    (T4, ["model.dtype=float16", "backends.vllm.quantization=none"], {"dtype": "float16"}),
    (H100, ["model.dtype=float32", "backends.vllm.quantization=none"], {"dtype": "float32"}),
])
def test_engine_kwargs_per_card(card, sets, expect) -> None:
    kw = engine_kwargs(recipe(*sets), "/models/m", card.total_gib, bf16=card.bf16, weights_gib=14.96)
    for k, v in expect.items():
        assert kw[k] == v
    if "quantization" not in expect:
        assert "quantization" not in kw
    assert kw["model"] == "/models/m"
    assert kw["enable_prefix_caching"] is True
    assert kw["max_model_len"] == 4096 and kw["seed"] == 0
    assert kw["gpu_memory_utilization"] == 0.88 and kw["tensor_parallel_size"] == 1


def test_engine_kwargs_bf16_on_t4_is_an_error() -> None:
    with pytest.raises(BackendError, match=r"model\.dtype bfloat16 needs .* compute capability >= 8\.0"):
        engine_kwargs(recipe("model.dtype=bfloat16"), "m", 15.0, bf16=False)


def test_engine_kwargs_trust_revision_and_pass_through(tmp_path: Path) -> None:
    kw = engine_kwargs(recipe(), "meta-llama/Meta-Llama-3-8B-Instruct", 80, weights_gib=15)
    assert "trust_remote_code" not in kw and "revision" not in kw
    r = recipe("model.trust_remote_code=true", "model.revision=abc123",
               "backends.vllm.engine_args={max_num_seqs: 64, enforce_eager: true}",
               "backends.vllm.tensor_parallel_size=2")
    kw = engine_kwargs(r, "meta-llama/Meta-Llama-3-8B-Instruct", 80, weights_gib=15)
    assert kw["trust_remote_code"] is True and kw["revision"] == "abc123"
    assert kw["max_num_seqs"] == 64 and kw["enforce_eager"] is True and kw["tensor_parallel_size"] == 2
    # a local directory (a merged M_t) is not a Hub repo: no revision
    assert "revision" not in engine_kwargs(r, str(tmp_path), 80, weights_gib=15)


# --------------------------------------------------------------------------------------------------------------
# pure helpers


def test_stop_token_ids_llama3() -> None:
    vocab = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|eot_id|>": 128009, "hello": 5}
    assert stop_token_ids(128001, None, vocab) == [128001, 128009]
    assert stop_token_ids(128009, {"eos_token_id": [128001, 128009]}, {}) == [128001, 128009]
    assert stop_token_ids(None, {"eos_token_id": 7}, {"<|im_end|>": 8}) == [7, 8]


@pytest.mark.parametrize("force, text, parsed", [
    ("score", "Relevant and clear.\nScore: 4", 4.0),
    ("score", "Score: 2 at first... on reflection\nScore: 5", 5.0),
    ("winner", "A is closer to the rubric.\nWinner: Judgement A", 1),
    ("winner", "B.\nWinner: [Judgement B]", -1),
    ("winner", "B.\nWinner: Judgment B", -1),
])
def test_force_regex_accepts_only_parseable_endings(force, text, parsed) -> None:
    rx = re.compile(force_regex(force, (0.0, 5.0)))
    assert rx.fullmatch(text)
    assert (parse_score(text) if force == "score" else parse_winner(text)) == parsed
    assert not rx.fullmatch(text + " and more")
    assert not rx.fullmatch("no label at all")


def test_force_regex_score_range() -> None:
    assert "\\ " not in force_regex("score", (0.0, 5.0))  # xgrammar warns on an escaped space
    rx = re.compile(force_regex("score", (1.0, 3.0)))
    assert rx.fullmatch("x Score: 3") and not rx.fullmatch("x Score: 4") and not rx.fullmatch("x Score: 0")


@pytest.mark.parametrize("value", ["4.5", "3.75", "0.5", "5.0", "4", "5", "2.25"])
def test_force_regex_allows_decimal_scores_the_parser_reads(value) -> None:
    text = f"Good answer.\nScore: {value}"
    assert re.compile(force_regex("score", (0.0, 5.0))).fullmatch(text)
    assert parse_score(text) == float(value)


@pytest.mark.parametrize("value", ["5.5", "6", "4.125", "4.", "-1"])
def test_force_regex_rejects_out_of_range_and_odd_forms(value) -> None:
    assert not re.compile(force_regex("score", (0.0, 5.0))).fullmatch(f"x\nScore: {value}")


def char_encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_forcing_tokens_char_level() -> None:
    f = forcing_tokens(char_encode, "score", (0.0, 5.0))
    assert f.prefix == char_encode("\nScore: ") and f.choices == [ord(str(d)) for d in range(6)]
    w = forcing_tokens(char_encode, "winner", (0.0, 5.0))
    assert w.prefix == char_encode("\nWinner: Judgement ") and w.choices == [ord("A"), ord("B")]


def test_forcing_tokens_merged_space_token() -> None:
    # BPE that glues the space to the digit (" 3"): the prefix stops before the space
    vocab = {"\n": 10, "Score": 11, ":": 12}

    def enc(t: str) -> list[int]:
        assert t.startswith("\nScore: ")
        return [vocab["\n"], vocab["Score"], vocab[":"], 100 + int(t[-1])]

    f = forcing_tokens(enc, "score", (0.0, 5.0))
    assert f.prefix == [10, 11, 12] and f.choices == [100 + d for d in range(6)]


def test_forcing_tokens_rejects_multi_token_values() -> None:
    with pytest.raises(ValueError, match="not single distinct tokens"):
        forcing_tokens(char_encode, "score", (0.0, 10.0))  # "10" is two characters


# --------------------------------------------------------------------------------------------------------------
# the generator against a fake vllm


class FakeTokenizer:
    eos_token_id = EOS
    chat_template = "{{ messages }}"

    def get_vocab(self) -> dict[str, int]:
        return {"<|eot_id|>": EOT}

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, return_dict=False):
        assert tokenize and add_generation_prompt and return_dict is False
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return [BOS, *char_encode(text)]

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return char_encode(text)


class SamplingParams:
    def __init__(self, **kw):
        self.kw = kw
        self.__dict__.update(kw)


class StructuredOutputsParams:
    def __init__(self, regex=None, **kw):
        self.regex = regex


def _out(index: int, text: str, stop: bool = True):
    ids = char_encode(text) + ([EOT] if stop else [])
    return types.SimpleNamespace(index=index, text=text, token_ids=ids)


class FakeLLM:
    instances: ClassVar[list[FakeLLM]] = []
    script = None  # (messages, params, j) -> text

    def __init__(self, **kw):
        self.kw = kw
        self.chat_calls: list[tuple] = []
        self.generate_calls: list[tuple] = []
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return FakeTokenizer()

    def chat(self, messages, sampling_params, **kw):
        self.chat_calls.append((messages, sampling_params, kw))
        outs = []
        for msgs, sp in zip(messages, sampling_params, strict=True):
            prompt = FakeTokenizer().apply_chat_template(msgs)
            comps = [_out(j, FakeLLM.script(msgs, sp, j)) for j in reversed(range(sp.n))]  # unordered on purpose
            outs.append(types.SimpleNamespace(prompt_token_ids=prompt, outputs=comps))
        return outs

    def generate(self, prompts, sampling_params, **kw):
        self.generate_calls.append((prompts, sampling_params, kw))
        # the model "prefers" the last allowed token (score 5 / Judgement B)
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[sp.allowed_token_ids[-1]], text="")])
                for sp in sampling_params]


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = FakeLLM, SamplingParams
    sp_mod = types.ModuleType("vllm.sampling_params")
    sp_mod.StructuredOutputsParams = StructuredOutputsParams
    mod.sampling_params = sp_mod
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp_mod)
    monkeypatch.setattr(mrlite.hardware.gpu, "gpus", lambda use_torch=True: [RTX4090])
    for var in ("VLLM_BATCH_INVARIANT", "VLLM_CPU_NUM_OF_RESERVED_CPU"):  # the generator sets them; undo after
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    FakeLLM.instances.clear()
    FakeLLM.script = staticmethod(lambda msgs, sp, j: f"answer {j} to {msgs[-1]['content'][:10]}")
    return mod


def gen(*sets: str) -> VLLMGenerator:
    return VLLMGenerator(recipe(*sets), "/models/m0")


SAMPLING = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=512)


def test_engine_built_once_with_card_defaults(fake_vllm) -> None:
    g = gen("backends.vllm.quantization=null")
    (llm,) = FakeLLM.instances
    assert llm.kw["quantization"] == "fp8_per_tensor" and llm.kw["dtype"] == "bfloat16"
    assert llm.kw["enable_prefix_caching"] is True
    assert g.stop_ids == [EOS, EOT]


def test_chat_with_messages_and_per_request_params(fake_vllm) -> None:
    g = gen()
    reqs = [GenRequest(id="p1", messages=[{"role": "user", "content": "Hello there"}], n=3, seed=2**62 + 5),
            GenRequest(id="p2", messages=[{"role": "user", "content": "Second"}], n=1, seed=11),
            GenRequest(id="p3", messages=[{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "Third"}], n=2, seed=12)]
    out = g.generate(reqs, SAMPLING)
    llm = FakeLLM.instances[0]
    assert len(llm.chat_calls) == 1 and not llm.generate_calls  # one call for all requests; no text prompts
    messages, params, kw = llm.chat_calls[0]
    assert messages == [r.messages for r in reqs]
    assert kw["add_generation_prompt"] is True
    assert [p.n for p in params] == [3, 1, 2]
    assert [p.seed for p in params] == [(2**62 + 5) % (2**31 - 1), 11, 12]
    for p in params:
        assert p.max_tokens == 512 and p.temperature == 0.8 and p.top_p == 0.95
        assert p.stop_token_ids == [EOS, EOT]
        assert "structured_outputs" not in p.kw  # actor requests are never constrained
    assert [len(c) for c in out] == [3, 1, 2]
    assert [c.text for c in out[0]] == ["answer 0 to Hello ther", "answer 1 to Hello ther", "answer 2 to Hello ther"]
    assert out[1][0].n_tokens == len("answer 0 to Second") and not out[1][0].forced  # stop token not counted


def test_max_tokens_capped_to_room_left(fake_vllm) -> None:
    g = gen("model.max_model_len=64")
    req = GenRequest(id="p", messages=[{"role": "user", "content": "x" * 20}], n=1, seed=0)
    n_prompt = g.prompt_lengths([req])[0]
    assert n_prompt == len(FakeTokenizer().apply_chat_template(req.messages))
    g.generate([req], SAMPLING)
    (p,) = FakeLLM.instances[0].chat_calls[0][1]
    assert p.max_tokens == 64 - n_prompt
    too_long = GenRequest(id="q", messages=[{"role": "user", "content": "x" * 80}], n=1, seed=0)
    with pytest.raises(ValueError, match="leaving no room"):
        g.generate([too_long], SAMPLING)


def test_judge_requests_are_regex_constrained(fake_vllm) -> None:
    FakeLLM.script = staticmethod(lambda msgs, sp, j: "Fine.\nScore: 3" if "judge" in msgs[0]["content"]
                                  else "Winner: Judgement A")
    g = gen()
    reqs = [GenRequest(id="r", messages=[{"role": "user", "content": "judge this"}], n=2, seed=1, role="judge",
                       force="score"),
            GenRequest(id="m", messages=[{"role": "user", "content": "meta"}], n=1, seed=1, role="meta_judge",
                       force="winner"),
            GenRequest(id="x", messages=[{"role": "user", "content": "judge raw"}], n=1, seed=1, role="judge")]
    out = g.generate(reqs, SAMPLING)
    params = FakeLLM.instances[0].chat_calls[0][1]
    assert params[0].structured_outputs.regex == force_regex("score", (0.0, 5.0))
    assert params[1].structured_outputs.regex == force_regex("winner", (0.0, 5.0))
    assert "structured_outputs" not in params[2].kw  # force=None: the raw parse rate is measured
    assert not FakeLLM.instances[0].generate_calls
    assert [c.forced for row in out for c in row] == [False] * 4
    # room is kept for a forced label: prompt + answer + "\nScore: " + 1 digit must fit
    g2 = gen("backends.vllm.structured_outputs=false")
    g2.generate(reqs[:1], Sampling(0.8, 0.95, 10_000))
    p = FakeLLM.instances[1].chat_calls[0][1][0]
    assert "structured_outputs" not in p.kw
    assert p.max_tokens == 4096 - g2.prompt_lengths(reqs[:1])[0] - len("\nScore: ") - 1


def test_forced_completion_on_token_ids(fake_vllm) -> None:
    FakeLLM.script = staticmethod(lambda msgs, sp, j: "ok\nScore: 2" if j == 0 else "I like it a lot")
    g = gen()
    req = GenRequest(id="r", messages=[{"role": "user", "content": "judge"}], n=2, seed=1, role="judge",
                     force="score")
    (row,) = g.generate([req], SAMPLING)
    assert row[0].text == "ok\nScore: 2" and not row[0].forced
    assert row[1].text == "I like it a lot\nScore: 5" and row[1].forced
    assert row[1].n_tokens == len("I like it a lot") + len("\nScore: ") + 1
    (prompts, params, _), = FakeLLM.instances[0].generate_calls
    prompt = FakeTokenizer().apply_chat_template(req.messages)
    # prompt ids + the completion's own ids (its stop token dropped) + the label's tokens; never a text prompt
    assert prompts == [{"prompt_token_ids": prompt + char_encode("I like it a lot") + char_encode("\nScore: ")}]
    (p,) = params
    # the shared rule: sampled at the role's temperature with a per-row seed (argmax only at temperature 0)
    assert p.max_tokens == 1 and p.temperature == SAMPLING.temperature and p.top_p == 1.0 and p.n == 1
    assert isinstance(p.seed, int)
    assert p.allowed_token_ids == [ord(str(d)) for d in range(6)]
    g.generate([req], Sampling(0.0, 1.0, 64))
    greedy = FakeLLM.instances[0].generate_calls[-1][1][0]
    assert greedy.temperature == 0.0 and greedy.seed is None
    assert parse_score(row[1].text) == 5.0


def test_forced_winner(fake_vllm) -> None:
    FakeLLM.script = staticmethod(lambda msgs, sp, j: "Both are fine.")
    (row,) = gen().generate([GenRequest(id="m", messages=[{"role": "user", "content": "meta"}], n=1, seed=1,
                                        role="meta_judge", force="winner")], SAMPLING)
    assert row[0].text == "Both are fine.\nWinner: Judgement B" and row[0].forced
    assert parse_winner(row[0].text) == -1


def test_count_tokens_and_close(fake_vllm) -> None:
    g = gen()
    assert g.count_tokens(["abc", ""]) == [3, 0]
    assert g.generate([], SAMPLING) == []
    g.close()
    assert g.llm is None


def test_missing_vllm_is_one_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(BackendError, match=r"pip install 'mrlite\[gpu\]'"):
        VLLMGenerator(recipe(), "m")


def test_recipe_backend_name_builds_this_generator(fake_vllm, monkeypatch) -> None:
    from mrlite.backends import load_generator

    monkeypatch.setattr(mrlite.backends, "missing_packages", lambda name: [])  # torch/vllm not installed here
    g = load_generator(recipe("backends.generator=vllm"), "/models/m0")
    assert type(g) is VLLMGenerator and FakeLLM.instances[-1].kw["model"] == "/models/m0"


# --------------------------------------------------------------------------------------------------------------
# no CUDA device (vLLM's CPU build) and batch-invariant kernels


@pytest.mark.parametrize("sets, cpu_bf16, dtype", [
    ([], False, "float32"),                        # auto on an AVX2-only CPU: no emulated bf16
    ([], True, "bfloat16"),                        # AVX512-BF16 / AMX: native bf16
    (["model.dtype=bfloat16"], False, "bfloat16"),  # explicit wins (no compute-capability error on a CPU)
    (["model.dtype=float16"], True, "float16"),
])
def test_engine_kwargs_without_cuda(sets, cpu_bf16, dtype) -> None:
    kw = engine_kwargs(recipe("model.dtype=auto", "backends.vllm.quantization=null", *sets), "/models/m", None,
                       cuda=False, cpu_bf16=cpu_bf16, env={})
    assert kw["dtype"] == dtype
    assert kw["enable_chunked_prefill"] is False  # seeded requests + chunked prefill crash vLLM's CPU sampler
    assert kw["kv_cache_memory_bytes"] == 2 * 1024**3  # explicit KV cache, not a share of system RAM
    assert kw["gpu_memory_utilization"] == 0.3  # read as a share of RAM there; 0.88 would refuse to start
    assert "quantization" not in kw


def test_engine_kwargs_without_cuda_env_and_overrides() -> None:
    kw = engine_kwargs(recipe(), "/m", None, cuda=False, env={"VLLM_CPU_KVCACHE_SPACE": "6"})
    assert kw["kv_cache_memory_bytes"] == 6 * 1024**3
    kw = engine_kwargs(recipe("backends.vllm.engine_args={enable_chunked_prefill: true}"), "/m", None, cuda=False,
                       env={})
    assert kw["enable_chunked_prefill"] is True  # engine_args still win
    gpu = engine_kwargs(recipe(), "/m", 79.2, weights_gib=15)
    assert not {"enable_chunked_prefill", "kv_cache_memory_bytes"} & set(gpu)  # a GPU keeps vLLM's defaults


def test_batch_invariant_env_and_refusals() -> None:
    assert engine_env(recipe()) == {"VLLM_BATCH_INVARIANT": "0"}
    assert engine_env(recipe("backends.vllm.batch_invariant=true")) == {"VLLM_BATCH_INVARIANT": "1"}
    assert engine_env(recipe(), cuda=False)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    on = recipe("backends.vllm.batch_invariant=true")
    assert engine_kwargs(on, "/m", H100.total_gib, bf16=True)["model"] == "/m"
    with pytest.raises(BackendError, match=r"backends\.vllm\.batch_invariant needs a CUDA GPU .*none found"):
        engine_kwargs(on, "/m", None, cuda=False)
    with pytest.raises(BackendError, match=r"compute capability >= 8\.0 \(this card has less\)"):
        engine_kwargs(on, "/m", T4.total_gib, bf16=False)


def test_generator_sets_batch_invariant_before_the_engine(fake_vllm, monkeypatch) -> None:
    seen = {}

    class Spy(FakeLLM):
        def __init__(self, **kw):
            import os

            seen["env"] = os.environ.get("VLLM_BATCH_INVARIANT")
            super().__init__(**kw)

    fake_vllm.LLM = Spy
    gen("backends.vllm.batch_invariant=true")
    assert seen["env"] == "1"


def test_generator_without_cuda_uses_cpu_settings(fake_vllm, monkeypatch) -> None:
    monkeypatch.setattr(mrlite.hardware.gpu, "gpus", lambda use_torch=True: [])
    monkeypatch.setattr(mrlite.hardware.cpu, "cpu_has_bf16", lambda cpuinfo=None: False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    gen("model.dtype=auto", "backends.vllm.quantization=null")
    (llm,) = FakeLLM.instances
    assert llm.kw["dtype"] == "float32" and llm.kw["enable_chunked_prefill"] is False
    assert "quantization" not in llm.kw
