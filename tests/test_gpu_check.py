"""``benchmarks/gpu_check.py`` here (no CUDA): one line and a non-zero exit; its JSON is what `mrlite plan
--throughput` reads. The GPU phases themselves run only on a CUDA machine (README, "A first GPU check")."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mrlite.cli import cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_exits_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "gc")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1
    assert r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("gpu_check: ") and ("no CUDA device" in line or "torch is not installed" in line)
    assert not (tmp_path / "gc").exists()  # nothing written


def test_rates_json_is_accepted_by_plan(tmp_path: Path) -> None:
    gc = load_script()
    phases = {
        "vllm": gc.Phase("vllm", seconds=10.0, tokens=50_000, extra={"engine_start_s": 42.0}),
        "dpo": gc.Phase("dpo", extra={"train_tok_s": 900.0, "train_load_s": 12.5}),
        "merge": gc.Phase("merge", extra={"merge_gib_s": 1.25}),
        "unsloth": gc.Phase("unsloth", "skipped", note="unsloth not installed"),
    }
    rates = gc.rates(phases)
    assert rates == {"decode_tok_s": 5000.0, "engine_start_s": 42.0, "train_tok_s": 900.0, "train_load_s": 12.5,
                     "merge_gib_s": 1.25}
    phases["vllm"].status = "failed"
    assert "decode_tok_s" not in gc.rates(phases)  # only what was measured
    f = tmp_path / "gpu_check.json"
    f.write_text(json.dumps({**rates, "measured": {"device": "NVIDIA H100", "phases": []}}))
    r = CliRunner().invoke(cli, ["plan", str(REPO / "recipes" / "paper_80gb.yaml"), "--gpu", "h100", "--throughput",
                                 str(f)], prog_name="mrlite")
    assert r.exit_code == 0, r.output
    assert "throughput: your measured figures" in r.output


def test_phase_lines() -> None:
    gc = load_script()
    assert gc.Phase("dpo", seconds=2.0, tokens=1000, peak_gib=1.5, note="4 steps").line() == (
        "  dpo                        2.0 s       500 tok/s  peak   1.50 GiB  4 steps")
    assert gc.Phase("vllm", "skipped", note="vllm not installed").line() == (
        "  vllm                   SKIPPED: vllm not installed")


@pytest.mark.slow
def test_self_test_on_cpu_builds_a_chat_model(tmp_path: Path) -> None:
    """The random model + tokenizer the check builds (no download) has a working chat template."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoTokenizer

    gc = load_script()
    path, params = gc.build_model(tmp_path / "m", "tiny", torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert 0 < params < 2e6 and (path / "generation_config.json").is_file()
