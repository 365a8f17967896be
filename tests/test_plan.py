"""``mrlite plan``: model arithmetic (stack.md Part 2 §4), per-stage token counts, fit checks and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mrlite
from mrlite.cli import cli
from mrlite.tools.plan import (
    GPU_CLASSES, Rates, disk_gib, estimate, gen_weights_gib, generation_memory, gpu_class_for, train_memory,
)
from mrlite.hardware.shapes import GIB, KNOWN_SHAPES, model_shape, shape_from_config, weights_gib_16bit

REPO = Path(__file__).resolve().parents[1]
LLAMA3_8B = KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B-Instruct"]
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def recipe(name: str = "paper", *sets: str) -> mrlite.Recipe:
    return mrlite.load_recipe(REPO / "recipes" / f"{name}.yaml", list(sets))


# --------------------------------------------------------------------------------------------------------------
# Llama-3-8B figures of stack.md Part 2 §4


@pytest.mark.parametrize("value, expected, tol", [
    (LLAMA3_8B.params / 1e9, 8.03, 0.01),
    (gen_weights_gib(LLAMA3_8B, None), 14.96, 0.02),               # bf16
    (gen_weights_gib(LLAMA3_8B, "fp8_per_tensor"), 8.5, 0.1),      # online FP8, embeddings/lm_head bf16
    (LLAMA3_8B.kv_bytes_per_token(2) / 1024, 128, 0),             # KiB per token, bf16
    (LLAMA3_8B.kv_bytes_per_token(1) / 1024, 64, 0),
    (LLAMA3_8B.lora_params(16, ALL7) / 1e6, 41.9, 0.05),
])
def test_llama3_8b_arithmetic(value, expected, tol) -> None:
    assert value == pytest.approx(expected, abs=tol)


def test_nf4_training_weights_and_peak() -> None:
    assert gen_weights_gib(LLAMA3_8B, "bitsandbytes") == pytest.approx(5.3, abs=0.2)  # NF4 + bf16 embeddings
    no_rows = train_memory(LLAMA3_8B, True, 16, ALL7, 1, 2048, 0)
    assert no_rows == pytest.approx(5.4 + 41.9e6 * 16 / GIB + 1.5, abs=0.2)  # weights + LoRA/Adam + runtime
    peak_24 = train_memory(LLAMA3_8B, True, 16, ALL7, 1, 3072, 2)
    assert 10 < peak_24 < 18  # stack.md: 12-18 GiB at batch 1-2, length 2-3k
    assert train_memory(LLAMA3_8B, False, 16, ALL7, 4, 3072, 2) > 40  # 16-bit LoRA: an 80 GB card


def test_shape_from_local_config(tmp_path: Path) -> None:
    cfg = {"vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "tie_word_embeddings": False, "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert model_shape(str(tmp_path)) == LLAMA3_8B == shape_from_config(cfg)
    assert model_shape("someone/unknown-model") is None
    (tmp_path / "model.safetensors").write_bytes(b"\0" * (4 * 1024))
    assert weights_gib_16bit(str(tmp_path)) == pytest.approx(2 * 1024 / GIB)  # fp32 file, counted as 16 bit
    assert weights_gib_16bit("meta-llama/Meta-Llama-3-8B-Instruct") == pytest.approx(14.96, abs=0.02)


@pytest.mark.parametrize("name, gib, key", [
    ("NVIDIA H100 80GB HBM3", 79.2, "h100"), ("NVIDIA A100-SXM4-80GB", 79.2, "a100-80"),
    ("NVIDIA A100-SXM4-40GB", 39.4, "a100-40"), ("NVIDIA GeForce RTX 4090", 23.6, "rtx4090"),
    ("NVIDIA GeForce RTX 3090", 23.6, "rtx3090"), ("NVIDIA L4", 22.5, "l4"), ("NVIDIA A10G", 22.1, "a10"),
    ("Tesla T4", 15.0, "t4"), ("NVIDIA L40S", 44.4, "l40s"), (None, 80, "a100-80"), (None, 24, "rtx4090"),
    (None, 16, "t4"), (None, None, "rtx4090"),
])
def test_gpu_class_for(name, gib, key) -> None:
    assert gpu_class_for(name, gib) == key


# --------------------------------------------------------------------------------------------------------------
# token counts and fit


def steps(est, t: int) -> dict:
    return {e.stage: e for e in est if e.t == t}


def test_paper_scale_counts() -> None:
    card = GPU_CLASSES["rtx4090"]
    est = estimate(recipe(), LLAMA3_8B, card, card.rates, prompt_tokens=100, quantization="fp8_per_tensor")
    assert [e.stage for e in est if e.t == 0] == ["eft"]
    it1, it3 = steps(est, 1), steps(est, 3)
    assert it1["sample"].requests == 5000 and it1["sample"].sequences == 35_000
    assert it1["judge"].requests == 35_000 and it1["judge"].sequences == 385_000
    assert it1["meta_judge"].requests == 5000 * 110 and it1["meta_judge"].detail.startswith("110 battles/prompt; ")
    assert "meta_judge" not in it3  # judge pairs in iterations 1-2 only
    assert it1["judge"].new_tokens == 385_000 * 130  # assumed mean judgment length
    # judge prompt = rubric + prompt + answer
    assert it1["judge"].prompt_tokens == pytest.approx(35_000 * (430 + 112 + 480))
    # prefix caching: the meta-judge computes the shared prefix once per prompt
    assert it1["meta_judge"].prefill_tokens < it1["meta_judge"].prompt_tokens / 4
    assert all(e.fits for e in est)
    assert it1["train"].requests > it3["train"].requests  # judge pairs only in iterations 1-2


def test_bf16_8b_does_not_fit_a_t4() -> None:
    t4 = GPU_CLASSES["t4"]
    est = estimate(recipe("paper", "backends.vllm.quantization=none", "model.dtype=float16"), LLAMA3_8B, t4,
                   t4.rates, quantization=None)
    sample = steps(est, 1)["sample"]
    assert not sample.fits and "no KV cache" in sample.notes[0]
    peak, _weights, kv_tokens = generation_memory(LLAMA3_8B, 23.6, 0.88, "fp8_per_tensor", "auto", 4096)
    assert peak == pytest.approx(0.88 * 23.6) and kv_tokens > 60_000  # stack.md: ~80K tokens with FP8 weights


def test_rates_scale_with_model_size() -> None:
    r = Rates(1000, 2000, 100).scaled(KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"].params)
    assert 5 < r.decode_tok_s / 1000 < 5.5 and r.engine_start_s == 120.0
    assert Rates(1000, 2000, 100).scaled(1e6).decode_tok_s == 8000  # capped


def test_disk() -> None:
    d = disk_gib(recipe(), LLAMA3_8B)
    assert d["models"] == 5 and d["per_model"] == pytest.approx(15.1, abs=0.1)
    assert d["base_download"] == pytest.approx(14.96, abs=0.02)
    assert disk_gib(recipe("self_rewarding_lc", "eft.enabled=false"), LLAMA3_8B)["models"] == 4


# --------------------------------------------------------------------------------------------------------------
# CLI


def invoke(*args: str):
    return CliRunner().invoke(cli, ["plan", *args], prog_name="mrlite")


def test_cli_paper_24gb() -> None:
    r = invoke(str(REPO / "recipes" / "paper.yaml"), "--gpu-mem", "24")
    assert r.exit_code == 0, r.output
    assert "vLLM weights: fp8_per_tensor" in r.output
    assert "110 battles/prompt" in r.output and "disk: 15.1 GiB per merged model x 5" in r.output
    assert "WARN data.prompts" not in r.output  # the pool is grown from the shipped seed prompts


def test_cli_strict_fails_when_a_stage_does_not_fit() -> None:
    args = [str(REPO / "recipes" / "paper_80gb.yaml"), "--gpu", "t4"]
    assert invoke(*args).exit_code == 0  # warns only
    r = invoke(*args, "--strict")
    assert r.exit_code == 1 and "do not fit 15 GiB" in r.output


def test_cli_measured_throughput(tmp_path: Path) -> None:
    f = tmp_path / "rates.json"
    f.write_text(json.dumps({"decode_tok_s": 1e9, "prefill_tok_s": 1e9, "train_tok_s": 1e9}))
    r = invoke(str(REPO / "recipes" / "colab_t4.yaml"), "--gpu", "t4", "--throughput", str(f))
    assert r.exit_code == 0 and "your measured figures" in r.output
    f.write_text(json.dumps({"tokens_per_second": 5}))
    r = invoke(str(REPO / "recipes" / "colab_t4.yaml"), "--throughput", str(f))
    assert r.exit_code == 2 and "unknown keys ['tokens_per_second']" in r.output


def test_cli_edge_cases() -> None:
    r = invoke(str(REPO / "recipes" / "smoke.yaml"))
    assert r.exit_code == 0 and "nothing to plan" in r.output
    r = invoke(str(REPO / "recipes" / "paper.yaml"), "--set", "model.base=someone/unknown", "--gpu-mem", "24")
    assert r.exit_code == 1 and "unknown shape for model.base someone/unknown" in r.output
    r = invoke(str(REPO / "recipes" / "paper.yaml"), "--set", "actor.n=x")
    assert r.exit_code == 1 and "actor.n" in r.output


def test_meta_judge_sequences_in_the_kv_cache() -> None:
    card = GPU_CLASSES["rtx4090"]
    r = recipe("paper", "backends.vllm.kv_cache_dtype=auto")
    est = estimate(r, LLAMA3_8B, card, card.rates, prompt_tokens=100, quantization="fp8_per_tensor")
    detail = steps(est, 1)["meta_judge"].detail
    _, _, kv = generation_memory(LLAMA3_8B, card.total_gib, 0.88, "fp8_per_tensor", "auto", 4096)
    seq = 440 + 112 + 480 + 2 * 130 + 170  # rubric + prompt + answer + 2 judgments + the verdict
    n = int(kv // seq)
    assert f"KV cache holds ~{n} meta-judge seqs at once (kv_cache_dtype fp8: ~" in detail
    fp8 = int(detail.split("fp8: ~")[1].rstrip(")"))
    assert fp8 in (2 * n, 2 * n + 1)  # 64 instead of 128 KiB per token
    r8 = recipe("paper", "backends.vllm.kv_cache_dtype=fp8")
    d8 = steps(estimate(r8, LLAMA3_8B, card, card.rates, prompt_tokens=100, quantization="fp8_per_tensor"), 1)
    assert "kv_cache_dtype fp8" not in d8["meta_judge"].detail  # already fp8: nothing to suggest


def test_host_memory_per_stage() -> None:
    from mrlite.tools.plan import HOST_RUNTIME_GIB, SHARD_GIB, host_memory

    w16 = LLAMA3_8B.params * 2 / GIB
    paper = recipe("paper")  # vLLM + unsloth, NF4 training
    assert host_memory(paper, LLAMA3_8B, "judge") == HOST_RUNTIME_GIB  # vLLM streams weights to the GPU
    assert host_memory(recipe("paper", "backends.generator=hf"), LLAMA3_8B, "judge") == pytest.approx(
        HOST_RUNTIME_GIB + w16)
    # the merge streams shard by shard: far below an fp32 copy of the model (32 GB for 8B)
    trl16 = recipe("paper", "backends.trainer=trl", "train.load_in_4bit=false")
    assert host_memory(trl16, LLAMA3_8B, "train") == pytest.approx(HOST_RUNTIME_GIB + w16)  # 16-bit load via host
    trl4 = recipe("paper", "backends.trainer=trl")
    merge = host_memory(trl4, LLAMA3_8B, "train")
    assert SHARD_GIB + HOST_RUNTIME_GIB < merge < SHARD_GIB + HOST_RUNTIME_GIB + 2 < 32
    # unsloth's offloaded gradient checkpointing: one bf16 activation per layer and sequence in host memory
    offload = 32 * 2 * 3072 * 4096 * 2 / GIB
    assert host_memory(paper, LLAMA3_8B, "train") == pytest.approx(HOST_RUNTIME_GIB + max(offload, merge - 3.0))
    assert host_memory(paper, LLAMA3_8B, "pairs") == 0.0


def test_cli_warns_about_host_ram() -> None:
    r = invoke(str(REPO / "recipes" / "paper.yaml"), "--gpu-mem", "24", "--host-ram", "12",
               "--set", "backends.generator=hf")
    assert r.exit_code == 0, r.output
    assert "host GiB" in r.output
    assert ("WARN iter 1 sample: needs ~18 GiB of host RAM, planned for 12 GiB; use the vllm generator"
            in r.output)
    r = invoke(str(REPO / "recipes" / "paper.yaml"), "--gpu-mem", "24", "--host-ram", "64")
    assert "of host RAM" not in r.output
