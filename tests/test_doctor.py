"""``mrlite doctor`` on this (CPU) machine and on a pretend GPU machine, the pin tables, and the GPU checks run
before a recipe starts (``mrlite.hardware.gpu``): no CUDA, gated model without a token, bf16 on a T4, disk."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import mrlite
import mrlite.hardware.cpu
import mrlite.hardware.gpu
from mrlite.cli import cli
from mrlite.tools.doctor import CPU_PINS, GPU_PINS, Facts, install_commands, report
from mrlite.hardware.gpu import GPUInfo, PreflightError, check_disk, is_gated, parse_nvidia_smi, preflight

REPO = Path(__file__).resolve().parents[1]
H100 = GPUInfo(0, "NVIDIA H100 80GB HBM3", 79.2, (9, 0))
T4 = GPUInfo(0, "Tesla T4", 15.0, (7, 5))


def recipe(name: str, *sets: str) -> mrlite.Recipe:
    return mrlite.load_recipe(REPO / "recipes" / f"{name}.yaml", list(sets))


# --------------------------------------------------------------------------------------------------------------
# doctor


def test_doctor_runs_here() -> None:
    r = CliRunner().invoke(cli, ["doctor"], prog_name="mrlite")
    assert r.exit_code == 0, r.output
    out = r.output
    assert re.search(r"python 3\.\d+\.\d+", out)
    assert "backends:" in out and "fake" in out and "vllm" in out and "unsloth" in out
    assert "install (" in out and "pip install" in out
    assert "HF_TOKEN" in out and "hf_" not in out  # never a token's value


def facts(**kw) -> Facts:
    base = dict(python=(3, 11, 7), versions={p: None for p in ("torch", "vllm")}, torch_cuda=None,
                cuda_available=False, gpus=[], hf_token=False, source_checkout=True)
    return Facts(**(base | kw))


def test_report_cpu_machine_without_torch() -> None:
    lines, _ = report(facts())
    text = "\n".join(lines)
    assert "✗ torch not installed" in text and "no CUDA GPU" in text
    assert "✗ vllm     (generator) needs a CUDA GPU" in text
    assert 'install (cpu): pip install torch==2.13.0 && pip install -e ".[hf]" -c constraints-cpu.txt' in text


def test_report_gpu_machine_flags_pins(monkeypatch) -> None:
    monkeypatch.setattr("mrlite.backends.missing_packages", lambda name: ["unsloth"] if name == "unsloth" else [])
    f = facts(versions={"torch": "2.14.0+cu130", "vllm": "0.32.0", "transformers": "5.17.0"}, torch_cuda="13.0",
              cuda_available=True, gpus=[H100], hf_token=True)
    lines, _ok = report(f)
    text = "\n".join(lines)
    assert "✓ GPU 0: NVIDIA H100 80GB HBM3, 79.2 GiB, compute 9.0, bf16 yes" in text
    assert "known-good gpu set" in text
    assert "✓ torch         2.14.0+cu130" in text  # local version suffix ignored
    assert "! vllm          0.32.0 (known-good: 0.33.0)" in text
    assert "✓ vllm     (generator)" in text
    assert "✗ unsloth  (trainer) missing unsloth: pip install -e \".[gpu]\"" in text
    assert "✓ HF_TOKEN set" in text and "install (gpu)" in text


def test_report_gpu_but_cpu_torch() -> None:
    lines, ok = report(facts(versions={"torch": "2.13.0+cpu"}, gpus=[T4]))
    assert not ok
    assert any("torch cannot use the GPU" in ln and "torch==2.14.0" in ln for ln in lines)
    assert any("bf16 no (use float16)" in ln for ln in lines)


def test_install_commands_from_pypi() -> None:
    cmds = install_commands(facts(source_checkout=False))
    assert cmds["gpu"] == "pip install 'mrlite[gpu]'"
    assert "-c constraints-cpu.txt" not in cmds["cpu"]


def test_pins_match_the_repository_files() -> None:
    cpu = {}
    for line in (REPO / "constraints-cpu.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            cpu[name] = version
    assert cpu == CPU_PINS
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    gpu = dict(x.split("==") for x in extra if "==" in x)
    assert gpu == GPU_PINS


# --------------------------------------------------------------------------------------------------------------
# GPU facts and preflight


def test_parse_nvidia_smi() -> None:
    text = "0, NVIDIA H100 80GB HBM3, 81559, 9.0\n1, Tesla T4, 15360, 7.5\ngarbage\n"
    a, b = parse_nvidia_smi(text)
    assert a == GPUInfo(0, "NVIDIA H100 80GB HBM3", 79.65, (9, 0)) and a.bf16 and a.fp8
    assert b.name == "Tesla T4" and b.total_gib == 15.0 and not b.bf16


def test_visible_devices(monkeypatch) -> None:
    gpus = parse_nvidia_smi("0, A, 1024, 8.0\n1, B, 2048, 8.0\n")
    assert [g.name for g in mrlite.hardware.gpu._visible(gpus, {"CUDA_VISIBLE_DEVICES": "1"})] == ["B"]
    assert mrlite.hardware.gpu._visible(gpus, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert mrlite.hardware.gpu._visible(gpus, {}) == gpus


def no_token(env) -> bool:
    return False


def not_cached(model: str) -> bool:
    return False


def test_gpu_recipe_without_cuda_is_one_line() -> None:
    with pytest.raises(PreflightError) as e:
        preflight(recipe("paper"), devices=[], env={"HF_TOKEN": "x"})
    msg = str(e.value)
    assert "\n" not in msg and "'vllm' and 'unsloth'" in msg
    assert "mrlite doctor" in msg and "recipes/tiny.yaml" in msg


def test_cpu_recipes_pass_without_a_gpu() -> None:
    probed: list[str] = []
    for name in ("tiny", "smoke"):
        r = recipe(name)
        assert not mrlite.hardware.gpu.uses_gpu(r)
        assert preflight(r, devices=[], env={}, has_token=lambda env: probed.append("token") or False,
                         cached=lambda m: probed.append(m) or False) is None
    assert probed == []  # neither model is gated: no token asked for


def test_gated_model_needs_hf_token() -> None:
    with pytest.raises(PreflightError, match=r"gated .* set the HF_TOKEN environment variable") as e:
        preflight(recipe("paper"), devices=[H100], env={}, has_token=no_token, cached=not_cached)
    assert "\n" not in str(e.value)
    preflight(recipe("paper"), devices=[H100], env={"HF_TOKEN": "secret"}, cached=not_cached)  # default probe
    preflight(recipe("paper"), devices=[H100], env={}, has_token=no_token, cached=lambda m: True)  # in the cache
    preflight(recipe("colab_t4"), devices=[T4], env={}, has_token=no_token, cached=not_cached)  # not gated


def test_is_gated(tmp_path: Path) -> None:
    assert is_gated("meta-llama/Meta-Llama-3-8B-Instruct") and not is_gated("Qwen/Qwen2.5-1.5B-Instruct")
    local = tmp_path / "meta-llama"
    local.mkdir()
    assert not is_gated(str(local))


def test_bf16_recipe_on_a_t4() -> None:
    with pytest.raises(PreflightError, match=r"model\.dtype bfloat16 needs compute capability >= 8\.0.*float16"):
        preflight(recipe("colab_t4", "model.dtype=bfloat16"), devices=[T4], env={})


def test_check_disk() -> None:
    check_disk(16.0, 20.0, "/runs/x")
    with pytest.raises(PreflightError, match=r"needs ~16\.0 GiB free in /runs/x, only 3\.5 GiB free"):
        check_disk(16.0, 3.5, "/runs/x")


def test_4bit_training_on_a_card_without_bf16() -> None:
    for trainer in ("unsloth", "trl"):
        with pytest.raises(PreflightError) as e:
            preflight(recipe("colab_t4", "train.load_in_4bit=true", f"backends.trainer={trainer}"), devices=[T4],
                      env={})
        msg = str(e.value)
        assert "\n" not in msg and "train.load_in_4bit on Tesla T4 (compute 7.5, no bf16)" in msg
        assert "--set train.load_in_4bit=false" in msg
    preflight(recipe("colab_t4"), devices=[T4], env={})  # the shipped T4 recipe trains a 16-bit LoRA
    preflight(recipe("colab_t4", "train.load_in_4bit=true"), devices=[H100], env={})  # bf16 card: fine
    preflight(recipe("tiny", "train.load_in_4bit=true"), devices=[], env={})  # CPU QLoRA computes in fp32


def test_cpu_has_bf16(tmp_path) -> None:
    for flags, native in (("fpu sse avx2 avx512f avx512_bf16 amx_tile", True), ("amx_bf16 avx2", True),
                          ("fpu sse avx2 avx512f", False)):
        (tmp_path / "cpuinfo").write_text(f"flags : {flags}\n")
        assert mrlite.hardware.cpu.cpu_has_bf16(tmp_path / "cpuinfo") is native


SMI_HEADER = ("| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |\n"
              "|-----------------------------------------+------------------------+----------------------+\n")


def test_driver_cuda_mismatch() -> None:
    assert mrlite.hardware.gpu.parse_driver(SMI_HEADER) == ("550.54.15", "12.4")
    assert mrlite.hardware.gpu.parse_driver("no header") == (None, None)
    msg = mrlite.hardware.gpu.driver_mismatch("550.54.15", "12.4", "13.0")
    assert msg == ("driver 550.54.15 supports CUDA up to 12.4, but this torch needs CUDA 13.0 (driver >= 580.65.06): "
                   "update the NVIDIA driver, or use the environment without vLLM for older drivers (README, "
                   "'GPU with an older driver')")
    assert mrlite.hardware.gpu.driver_mismatch("580.82.07", "13.0", "13.0") is None
    assert mrlite.hardware.gpu.driver_mismatch("550.54.15", "12.4", "12.4") is None  # torch built for the driver's CUDA
    assert mrlite.hardware.gpu.driver_mismatch("535.104.05", None, "13.0") is not None  # judged by the driver floor
    assert mrlite.hardware.gpu.driver_mismatch(None, None, "13.0") is None  # nothing known: no claim


def test_report_names_a_driver_too_old_for_the_pinned_torch() -> None:
    f = facts(versions={"torch": "2.14.0"}, torch_cuda="13.0", cuda_available=False, gpus=[T4],
              driver="550.54.15", driver_cuda="12.4")
    lines, ok = report(f)
    text = "\n".join(lines)
    assert not ok
    assert "✗ driver 550.54.15 supports CUDA up to 12.4, but this torch needs CUDA 13.0" in text
    assert "pip install torch==2.14.0" not in text  # reinstalling the same torch would not help
    # torch not installed yet: judged against the torch the GPU set pins
    text = "\n".join(report(facts(gpus=[T4], driver="550.54.15", driver_cuda="12.4"))[0])
    assert "this torch needs CUDA 13.0" in text
    # a torch built for the driver's CUDA (the environment for older drivers) passes
    lines, _ = report(facts(versions={"torch": "2.14.0+cu124"}, torch_cuda="12.4", cuda_available=True,
                            gpus=[T4], driver="550.54.15", driver_cuda="12.4"))
    assert "✓ NVIDIA driver 550.54.15 (CUDA up to 12.4)" in lines


@pytest.mark.parametrize("py, ok", [((3, 14, 0), True), ((3, 13, 1), True), ((3, 11, 0), True),
                                    ((3, 15, 0), False), ((3, 10, 12), False)])
def test_python_range_for_the_gpu_set(py, ok) -> None:
    lines, _ = report(facts(python=py, gpus=[H100]))
    assert lines[0].startswith("✓" if ok else "✗")
