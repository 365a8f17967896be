"""Past one LoRA on one process: full fine-tuning writes M_t without an adapter; two CPU processes (accelerate
launch, gloo) follow the one-process loss curve at the same global batch and merge once."""

from __future__ import annotations

import json
import math

import pytest
from _models import model_home, tiny_model, tiny_recipe  # noqa: F401  (fixtures)
from test_trl_backend import PAIRS, pair_margin, weights, write_pairs

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("accelerate")

FULL = {"method": "full", "learning_rate": 1e-3, "max_steps": 3, "batch_size": 4, "grad_accum": 1,
        "max_length": 128}
LOSS_TOLERANCE = 1e-3
"""Two processes vs one at the same global batch: the same rows per step, gradients averaged by DDP instead of one
mean over the batch, so the losses agree up to float32 summation order; 1e-3 relative leaves room for that."""


@pytest.fixture(scope="module")
def full1(tiny_model, tmp_path_factory):
    from mrlite.scale.distributed import train_call

    d = tmp_path_factory.mktemp("full1")
    rows = write_pairs(d / "pairs.jsonl")
    result = train_call(tiny_recipe(train=FULL), 1, "dpo", rows, tiny_model, d / "out")
    return d / "out", result


def test_full_writes_model_without_adapter(full1, tiny_model):
    out, result = full1
    assert not (out / "adapter").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "lineage.json"):
        assert (out / "model" / name).exists(), name
    assert not (out / "model" / "training_args.bin").exists() and not (out / ".trainer").exists()
    lineage = json.loads((out / "model" / "lineage.json").read_text())
    step = lineage["adapters"][-1]
    assert step["method"] == "full" and step["kind"] == "dpo" and step["iteration"] == 1
    from mrlite.backends.scale_train import weights_sha256

    assert step["weights_sha256"] == weights_sha256(out / "model")
    assert result.summary["method"] == "full"


def test_full_changes_every_kind_of_weight_and_learns(full1, tiny_model):
    out, result = full1
    assert [m["step"] for m in result.metrics] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) for m in result.metrics)
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # reference = M_{t-1} at step 1
    base, trained = weights(tiny_model), weights(out / "model")
    assert base.keys() == trained.keys()
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    # LoRA never touches norms or embeddings; full fine-tuning does.
    assert any("norm" in k for k in changed) and any("embed_tokens" in k for k in changed)
    assert pair_margin(out / "model") > pair_margin(tiny_model)


def test_train_stage_outputs_adapt_to_full(tmp_path):
    """The fake backend: a full-fine-tuning run has no adapter/ and its marker lists model/ and metrics only."""
    from mrlite.loop import run
    from mrlite.recipe import load_recipe

    r = load_recipe("smoke", ["train.method=full", "loop.iterations=1"])
    run(r, tmp_path / "run")
    it = tmp_path / "run" / "iter_01"
    assert not (it / "adapter").exists() and (it / "model" / "lineage.json").is_file()
    marker = json.loads((it / ".done" / "train.json").read_text())
    assert marker["outputs"] == ["iter_01/model", "iter_01/train_metrics.jsonl"]
    assert "adapter" not in marker["summary"]
    assert json.loads((it / "model" / "lineage.json").read_text())["adapters"][-1]["method"] == "full"


LORA = {"learning_rate": 2e-2, "max_steps": 3, "grad_accum": 1, "max_length": 128, "lora": {"r": 8, "alpha": 16}}


@pytest.fixture(scope="module")
def one_vs_two(tiny_model, tmp_path_factory):
    """The same 4 pairs: one process with batch 4 vs two processes with batch 2 each (global batch 4 both)."""
    from mrlite.scale.distributed import train_call

    d = tmp_path_factory.mktemp("ddp")
    rows = write_pairs(d / "pairs.jsonl")
    one = train_call(tiny_recipe(train={**LORA, "batch_size": 4}), 1, "dpo", rows, tiny_model, d / "one")
    two = train_call(tiny_recipe(train={**LORA, "batch_size": 2, "num_processes": 2}), 1, "dpo", rows, tiny_model,
                     d / "two")
    return d, one, two


def test_two_processes_follow_the_one_process_loss_curve(one_vs_two):
    _, one, two = one_vs_two
    assert [m["step"] for m in two.metrics] == [m["step"] for m in one.metrics] == [1, 2, 3]
    for a, b in zip(one.metrics, two.metrics, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_TOLERANCE), (one.metrics, two.metrics)
    assert two.summary["rows"] == 4 and two.metrics[-1]["loss"] < two.metrics[0]["loss"]


def test_two_processes_merge_once(one_vs_two, tiny_model):
    d, _, _ = one_vs_two
    out = d / "two"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    lineage = json.loads((out / "model" / "lineage.json").read_text())
    assert len(lineage["adapters"]) == 1  # one merge, by the main process
    assert not (out / "result.json").exists() and not (out / "recipe.yaml").exists()
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "model"]
    assert pair_margin(out / "model") > pair_margin(tiny_model)
    assert len(PAIRS) == 4


def test_full_fine_tuning_on_two_processes_writes_one_model(tiny_model, tmp_path, full1):
    """DDP with full weights: every process takes part in saving, the main one writes model/ and lineage once;
    the weights match the one-process run at the same global batch up to float rounding."""
    from mrlite.scale.distributed import train_call

    rows = write_pairs(tmp_path / "pairs.jsonl")
    result = train_call(tiny_recipe(train={**FULL, "batch_size": 2, "num_processes": 2}), 1, "dpo", rows,
                        tiny_model, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["model"]
    lineage = json.loads((out / "model" / "lineage.json").read_text())
    assert [a["method"] for a in lineage["adapters"]] == ["full"]
    one_out, one = full1
    for a, b in zip(one.metrics, result.metrics, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_TOLERANCE)
    w1, w2 = weights(one_out / "model"), weights(out / "model")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_cuda_devices() < 2, reason="sharded full fine-tuning needs two CUDA GPUs")
@pytest.mark.parametrize("mode", ["deepspeed", "fsdp"])
def test_sharded_full_fine_tuning_on_two_gpus(tiny_model, tmp_path, mode):  # pragma: no cover - GPU only
    if mode == "deepspeed":
        pytest.importorskip("deepspeed")
    from mrlite.scale.distributed import train_call

    rows = write_pairs(tmp_path / "pairs.jsonl")
    result = train_call(tiny_recipe(train={**FULL, "batch_size": 2, "num_processes": 2, "distributed": mode}), 1,
                        "dpo", rows, tiny_model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]
    assert all(math.isfinite(m["loss"]) for m in result.metrics)
    base, trained = weights(tiny_model), weights(tmp_path / "out" / "model")
    assert base.keys() == trained.keys() and any(not torch.equal(base[k], trained[k]) for k in base)
