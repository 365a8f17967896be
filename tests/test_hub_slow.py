"""On a real (tiny random) run: a DPO step with ``log.report_to: tensorboard`` leaves event files holding the loss,
the console stays quiet (library output in log.txt), and ``mrlite push --dry-run`` writes a model card that
passes huggingface_hub's metadata checks and a dataset whose pairs feed TRL's DPOTrainer as loaded.
Marked slow: a few minutes on a 2-core CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _models import model_home  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
pytest.importorskip("trl")
pytest.importorskip("tensorboard")

ROOT = Path(__file__).resolve().parents[1]
SETS = [
    "model.base=tiny-random", "loop.iterations=1", "data.prompts_per_iteration=3", "loop.chunk_size=2", "actor.n=2",
    "judge.n=2", "actor.max_new_tokens=12", "judge.max_new_tokens=12", "meta_judge.max_new_tokens=8",
    "eft.enabled=false", "train.max_length=512", "train.max_steps=2", "backends.hf.batch_size=8",
    "guardrails.max_positional_bias=null", "guardrails.max_same_score_share=null", "log.report_to=tensorboard",
]
NOISE = ("'loss':", "Loading weights", "FutureWarning", "Dropping fully truncated", "Tokenizing")


@pytest.fixture(scope="module")
def tb_run(model_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    argv = [sys.executable, "-m", "mrlite", "run", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(out)]
    for s in SETS:
        argv += ["--set", s]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_tensorboard_event_files_hold_the_dpo_loss(tb_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = tb_run
    ea = EventAccumulator(str(out / "tracker" / "tiny-iter01-dpo"))
    ea.Reload()
    losses = {s.step: s.value for s in ea.Scalars("train/loss")}
    metrics = [json.loads(x) for x in (out / "iter_01" / "train_metrics.jsonl").read_text().splitlines()]
    assert sorted(losses) == [m["step"] for m in metrics] == [1, 2]
    assert [losses[m["step"]] for m in metrics] == pytest.approx([m["loss"] for m in metrics], rel=1e-5)
    health = EventAccumulator(str(out / "tracker" / "tiny-health"))
    health.Reload()
    # positional bias counts only battles between equally scored judgments (a tiny run may have none);
    # the all-battles slot-A share is always there
    assert {"health/judge/parse_rate", "health/meta_judge/slot_a_share", "health/train/last_loss"} <= \
        set(health.Tags()["scalars"])


def test_console_is_quiet_and_log_txt_has_the_library_output(tb_run):
    out, r = tb_run
    console = r.stdout + r.stderr
    for noise in NOISE:
        assert noise not in console, noise
    assert "train  iter 1: DPO on" in console and "judge  iter 1:" in console
    log_txt = (out / "log.txt").read_text()
    assert "'loss':" in log_txt


def test_push_dry_run_on_a_real_run(tb_run, tmp_path):
    datasets = pytest.importorskip("datasets")
    from mrlite.hub.cards import validate_card

    out, _ = tb_run
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    card_dir, data_dir = tmp_path / "card", tmp_path / "data"
    for args in (["--iter", "1", "--repo", "me/tiny-mr", "--dry-run", str(card_dir)],
                 ["--data", "--repo", "me/tiny-mr-data", "--dry-run", str(data_dir)]):
        r = subprocess.run([sys.executable, "-m", "mrlite", "push", str(out), *args], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "lineage.json", "README.md"} <= \
        {p.name for p in card_dir.iterdir()}
    meta = validate_card((card_dir / "README.md").read_text(), "model")
    assert meta["library_name"] == "transformers" and "dpo" in meta["tags"]
    validate_card((data_dir / "README.md").read_text(), "dataset")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    pairs = datasets.load_dataset(str(data_dir), "pairs_actor", split="iter_01",
                                  cache_dir=str(data_dir.parent / "hf_datasets"))  # not another run's cache
    model_dir = str(card_dir)  # the pushed model itself
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir),
                         args=DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, report_to="none",
                                        per_device_train_batch_size=2, use_cpu=True, disable_tqdm=True),
                         train_dataset=pairs, processing_class=AutoTokenizer.from_pretrained(model_dir))
    result = trainer.train()
    assert trainer.state.global_step == 1 and result.training_loss > 0
