"""GPU topology from `nvidia-smi topo -m` text, the fit of TP/DP/process settings, and `plan --gpus N`."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from mrlite.cli.plan import plan_cmd
from mrlite.recipe import load_recipe
from mrlite.hardware.shapes import model_shape
from mrlite.hardware.topology import Topology, fit_warnings, full_train_gib, generation_engines, parse_topo

ASSETS = Path(__file__).parent / "assets"


def test_parse_topo_nvlink_node_with_nics_and_colour_codes():
    t = parse_topo((ASSETS / "topo_dgx_h100.txt").read_text())
    assert t.gpus == 8
    assert len(t.links) == 8 * 7 and t.links[(0, 7)] == "NV18" and t.links[(7, 0)] == "NV18"
    assert (0, 0) not in t.links
    assert t.interconnect == "nvlink"


def test_parse_topo_pcie_pair_and_spaces_instead_of_tabs():
    text = (ASSETS / "topo_2x4090_pcie.txt").read_text()
    for variant in (text, text.replace("\t", "   ")):
        t = parse_topo(variant)
        assert t.gpus == 2 and t.links == {(0, 1): "PHB", (1, 0): "PHB"}
        assert t.interconnect == "pcie"


def test_parse_topo_mixed_single_and_garbage():
    mixed = "\tGPU0\tGPU1\tGPU2\tCPU Affinity\nGPU0\t X \tNV4\tSYS\t0-7\nGPU1\tNV4\t X \tSYS\t0-7\nGPU2\tSYS\tSYS\t X \t0-7\n"
    assert parse_topo(mixed).interconnect == "mixed"
    single = "\tGPU0\tCPU Affinity\tNUMA Affinity\nGPU0\t X \t0-15\t0\n"
    assert parse_topo(single).gpus == 1 and parse_topo(single).interconnect == "single"
    assert parse_topo("No devices were found") == Topology()


def test_fit_warnings_name_the_setting_and_the_fix():
    r = load_recipe("recipes/paper_8gpu.yaml")
    assert fit_warnings(r, 8, 80.0, "nvlink", model_shape(r.model.base)) == []
    four = fit_warnings(r, 4, 80.0, "pcie")
    assert any("needs 8 GPUs, this machine has 4; set data_parallel_size: 4" in w for w in four)
    assert any("train.num_processes 8 > 4 GPUs; set train.num_processes: 4" in w for w in four)
    tp = load_recipe("recipes/paper_8gpu.yaml", ["backends.vllm.data_parallel_size=4",
                                                  "backends.vllm.tensor_parallel_size=2"])
    assert any("over PCIE links is slow" in w for w in fit_warnings(tp, 8, 80.0, "pcie"))
    ddp = load_recipe("recipes/paper_8gpu.yaml", ["train.distributed=ddp"])
    assert any("use distributed: deepspeed (ZeRO-3) or fsdp" in w for w in fit_warnings(ddp, 8, 80.0, "nvlink"))
    idle = load_recipe("recipes/paper_80gb.yaml")
    assert any("generation uses 1 of 8 GPUs" in w for w in fit_warnings(idle, 8, 80.0))
    assert generation_engines(tp, 8) == 4 and generation_engines(tp, 2) == 1


def test_full_fine_tuning_memory_shards_over_processes():
    shape = model_shape("meta-llama/Meta-Llama-3-8B-Instruct")
    one = full_train_gib(shape, 1, False, 10.0)
    eight = full_train_gib(shape, 8, True, 10.0)
    assert one > 130  # 18 bytes per parameter of an 8B model do not fit one 80 GB card
    assert eight - 10.0 == (one - 10.0) / 8


def test_plan_paper_8gpu_on_8_gpus_prints_per_stage_time_and_memory():
    res = CliRunner().invoke(plan_cmd, ["recipes/paper_8gpu.yaml", "--gpus", "8", "--gpu", "h100",
                                        "--set", "data.prompts=builtin"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "topology: 8 GPUs x 79 GiB" in out
    train = [ln for ln in out.splitlines() if ln.split()[1:2] == ["train"]]
    assert len(train) == 4 and all("8 processes full" in ln for ln in train)
    assert all("!" not in ln for ln in train)  # full fine-tuning fits 8 x 80 GB with ZeRO-3
    sample = next(ln for ln in out.splitlines() if ln.split()[1:2] == ["sample"])
    assert "8 engines" in sample
    one = CliRunner().invoke(plan_cmd, ["recipes/paper_8gpu.yaml", "--gpus", "1", "--gpu", "h100",
                                        "--set", "data.prompts=builtin"])
    assert "WARN" in one.output and "needs 8 GPUs, this machine has 1" in one.output
    assert "train: ~" in one.output and "per GPU > 79 GiB" in one.output  # full fine-tune of 8B on one card


def test_plan_of_a_one_gpu_recipe_is_unchanged():
    res = CliRunner().invoke(plan_cmd, ["recipes/paper_80gb.yaml", "--gpu", "h100", "--set", "data.prompts=builtin"])
    assert res.exit_code == 0 and "topology:" not in res.output
