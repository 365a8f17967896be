"""The `accelerate launch` command of multi-process training: flags the installed accelerate knows, per mode."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mrlite.scale.distributed import DistributedError, launch, launch_args, launch_command, train_call
from mrlite.recipe import RecipeError, load_recipe


def recipe(*sets: str):
    return load_recipe("tiny", ["train.num_processes=2", *sets])


def test_ddp_uses_the_multi_process_launcher_with_a_fixed_port():
    args = launch_args(recipe(), 29123)
    assert args[0] == "--multi_gpu"
    assert args[args.index("--num_processes") + 1] == "2"
    assert args[args.index("--main_process_port") + 1] == "29123"
    cmd = launch_command(Path("r.yaml"), recipe(), 1, "dpo", Path("rows.jsonl"), "base", Path("out"), 29123)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("-m", 3):cmd.index("-m", 3) + 2] == ["-m", "mrlite.scale.distributed"]
    assert cmd[-3:] == ["rows.jsonl", "base", "out"]


def test_sharded_modes():
    ds = launch_args(recipe("train.distributed=deepspeed", "train.method=full"), 1)
    assert ds[:3] == ["--use_deepspeed", "--zero_stage", "3"] and "--multi_gpu" not in ds
    fsdp = launch_args(recipe("train.distributed=fsdp"), 1)
    assert fsdp[0] == "--use_fsdp" and "FULL_STATE_DICT" in fsdp


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="needs accelerate")
def test_every_flag_exists_in_the_installed_accelerate():
    help_text = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    known = set(re.findall(r"--[a-z0-9_]+", help_text))
    for mode in ("ddp", "fsdp", "deepspeed"):
        flags = [a for a in launch_args(recipe(f"train.distributed={mode}"), 1) if a.startswith("--")]
        assert set(flags) <= known, set(flags) - known


def test_only_the_trl_trainer_runs_multi_process_or_full(tmp_path):
    for extra in ("train.num_processes=2", "train.method=full"):
        with pytest.raises(RecipeError, match=r"need backends\.trainer: trl"):
            load_recipe("paper", [extra])  # the unsloth trainer
    r = load_recipe("paper", ["backends.trainer=trl"]).model_copy(deep=True)
    r.train.num_processes = 2
    r.backends.trainer = "unsloth"  # validate_assignment checks one field at a time
    with pytest.raises(DistributedError, match=r"needs backends\.trainer: trl"):
        launch(r, 1, "dpo", tmp_path / "rows.jsonl", "base", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_process_and_fake_train_in_this_process(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": [], "chosen": [], "rejected": []}\n')
    result = train_call(load_recipe("smoke", ["train.num_processes=4"]), 1, "dpo", rows, "fake", tmp_path / "out")
    assert result.n_rows == 1 and (tmp_path / "out" / "model" / "lineage.json").is_file()
