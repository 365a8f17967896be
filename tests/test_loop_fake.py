"""The whole loop on the fake backend (recipes/smoke.yaml, 2 iterations): exact files, consistent rows, summaries."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import mrlite
from mrlite.backends.base import GenRequest, Sampling
from mrlite.backends.fake import FakeGenerator
from mrlite.core.prompts import render_judge
from mrlite.rundir import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
STAGES = ("sample", "judge", "meta_judge", "pairs", "train")
SETUP = [(0, "prompts")]  # every run writes its prompt pool into iter_00 first

ITER_FILES = {
    ".done/sample.json", ".done/judge.json", ".done/meta_judge.json", ".done/pairs.json", ".done/train.json",
    "prompts.jsonl", "responses.jsonl", "judgments.jsonl", "meta_judgments.jsonl",
    "pairs_actor.jsonl", "pairs_judge.jsonl", "train_metrics.jsonl",
    "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
    "model/lineage.json", "model/fake_model.txt",
}
TOP_FILES = {"recipe.yaml", "run.json", "log.txt", "timings.jsonl"}
POOL_FILES = {".done/prompts.json", "pool.jsonl", "pool.json"}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_logged(recipe: mrlite.Recipe, out: Path, **kw) -> tuple[mrlite.loop.RunReport, list[str]]:
    """Run the loop and return its report and the messages logged on 'mrlite' (works whatever propagate is)."""
    h = _Records()
    lg = logging.getLogger("mrlite")
    lg.addHandler(h)
    old = lg.level
    lg.setLevel(logging.DEBUG)
    try:
        return mrlite.run(recipe, out=out, **kw), h.lines
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)


def files_under(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


def nrows(p: Path) -> int:
    return len(read_jsonl(p))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    recipe = mrlite.load_recipe(SMOKE)
    out = tmp_path_factory.mktemp("smoke") / "run"
    report, logs = run_logged(recipe, out)
    return recipe, out, report, logs


# --------------------------------------------------------------------------------------------------------------
# files


def test_report_every_stage_ran(smoke) -> None:
    _, out, report, _ = smoke
    assert report.run_dir == out
    assert report.steps == [(0, "prompts", "ran")] + [(t, s, "ran") for t in (1, 2) for s in STAGES]


def test_exact_files(smoke) -> None:
    _, out, _, _ = smoke
    assert {p.name for p in out.iterdir()} == TOP_FILES | {"iter_00", "iter_01", "iter_02"}  # no .lock
    assert files_under(out / "iter_00") == POOL_FILES  # EFT off: the prompt pool only
    for t in (1, 2):
        assert files_under(out / f"iter_{t:02d}") == ITER_FILES


def test_no_partial_leftovers(smoke) -> None:
    _, out, _, _ = smoke
    leftovers = [p for p in out.rglob("*") if p.is_file() and (p.name.endswith((".tmp", ".old")) or ".parts" in p.parts)]
    assert leftovers == []



def test_no_empty_parts_dir(smoke) -> None:
    _, out, _, _ = smoke
    assert [p for p in out.rglob(".parts")] == []


def test_run_files(smoke) -> None:
    recipe, out, _, _ = smoke
    assert mrlite.load_recipe(out / "recipe.yaml") == recipe
    info = json.loads((out / "run.json").read_text())
    assert (info["recipe_name"], info["seed"], info["mrlite_version"]) == ("smoke", 0, mrlite.__version__)
    timings = read_jsonl(out / "timings.jsonl")
    assert [(x["iter"], x["stage"]) for x in timings] == SETUP + [(t, s) for t in (1, 2) for s in STAGES]
    assert all(x["seconds"] >= 0 for x in timings)
    log_txt = (out / "log.txt").read_text()
    assert "judge  iter 1:" in log_txt and "train  iter 2:" in log_txt


# --------------------------------------------------------------------------------------------------------------
# rows


def test_prompts_are_disjoint_slices(smoke) -> None:
    recipe, out, _, _ = smoke
    p1, p2 = (read_jsonl(out / f"iter_{t:02d}" / "prompts.jsonl") for t in (1, 2))
    assert len(p1) == len(p2) == recipe.data.prompts_per_iteration == 24
    ids1, ids2 = {p["prompt_id"] for p in p1}, {p["prompt_id"] for p in p2}
    assert len(ids1) == len(ids2) == 24
    assert not ids1 & ids2


@pytest.mark.parametrize("t", [1, 2])
def test_rows_are_consistent(smoke, t: int) -> None:
    recipe, out, _, _ = smoke
    d = out / f"iter_{t:02d}"
    prompts = {p["prompt_id"]: p for p in read_jsonl(d / "prompts.jsonl")}
    responses = {r["response_id"]: r for r in read_jsonl(d / "responses.jsonl")}
    judgments = {j["judgment_id"]: j for j in read_jsonl(d / "judgments.jsonl")}
    metas = read_jsonl(d / "meta_judgments.jsonl")
    actor, judge = read_jsonl(d / "pairs_actor.jsonl"), read_jsonl(d / "pairs_judge.jsonl")

    # responses: K per prompt at most, ids unique, no empty answer, no duplicate within a prompt
    assert len(responses) == nrows(d / "responses.jsonl")
    per_prompt = Counter(r["prompt_id"] for r in responses.values())
    assert set(per_prompt) <= set(prompts)
    assert max(per_prompt.values()) <= recipe.actor.n
    for r in responses.values():
        assert r["response_id"] == f"{r['prompt_id']}:{r['k']}"
        assert r["text"].strip() and r["chars"] == len(r["text"])
    texts = Counter((r["prompt_id"], r["text"]) for r in responses.values())
    assert max(texts.values()) == 1

    # judgments: N per response, each pointing at an existing response
    assert len(judgments) == nrows(d / "judgments.jsonl")
    assert Counter(j["response_id"] for j in judgments.values()) == {rid: recipe.judge.n for rid in responses}
    for j in judgments.values():
        assert j["prompt_id"] == responses[j["response_id"]]["prompt_id"]
        if j["score"] is None:  # failure is data: kept, never coerced
            assert j["parsed_from"] is None
            assert "Score:" not in j["text"]
        else:
            assert j["parsed_from"] == "text"  # smoke: judge.force_parse false
            assert 0.0 <= j["score"] <= 5.0
            assert j["text"].endswith(f"Score: {int(j['score'])}")
    assert any(j["score"] is None for j in judgments.values())

    # meta-judgments: battles between two valid judgments of one response
    assert metas
    for m in metas:
        a, b = judgments[m["a"]], judgments[m["b"]]
        assert m["a"] != m["b"]
        assert a["response_id"] == b["response_id"] == m["response_id"]
        assert a["score"] is not None and b["score"] is not None
        assert (m["a_score"], m["b_score"]) == (a["score"], b["score"])
        assert m["winner"] in (1, -1, 0)
    by_resp = Counter(m["response_id"] for m in metas)
    assert len({responses[r]["prompt_id"] for r in by_resp}) == len(by_resp)  # one response per prompt
    for rid, n in by_resp.items():  # budget 'all': every ordered pair of valid judgments
        v = sum(1 for j in judgments.values() if j["response_id"] == rid and j["score"] is not None)
        assert n == v * (v - 1)

    # actor pairs
    assert actor
    for p in actor:
        c, r = responses[p["chosen_id"]], responses[p["rejected_id"]]
        assert c["prompt_id"] == r["prompt_id"] == p["prompt_id"] and c is not r
        assert p["prompt"] == [{"role": "user", "content": prompts[p["prompt_id"]]["prompt"]}]
        assert p["chosen"] == [{"role": "assistant", "content": c["text"]}]
        assert p["rejected"] == [{"role": "assistant", "content": r["text"]}]
        assert p["chosen_score"] > p["rejected_score"]

    # judge pairs: two judgments of one response, prompted with the judge rubric
    assert judge
    for p in judge:
        c, r = judgments[p["chosen_id"]], judgments[p["rejected_id"]]
        assert c["response_id"] == r["response_id"] == p["response_id"] and c is not r
        content = p["prompt"][0]["content"]
        assert content == render_judge(prompts[p["prompt_id"]]["prompt"], responses[p["response_id"]]["text"])
        assert "additive 5-point" in content
        assert p["chosen"] == [{"role": "assistant", "content": c["text"]}]


@pytest.mark.parametrize("t", [1, 2])
def test_markers_match_files(smoke, t: int) -> None:
    _, out, _, _ = smoke
    d = out / f"iter_{t:02d}"

    def marker(stage: str) -> dict:
        return json.loads((d / ".done" / f"{stage}.json").read_text())

    n_pairs = nrows(d / "pairs_actor.jsonl") + nrows(d / "pairs_judge.jsonl")
    assert marker("sample")["n_out"] == nrows(d / "responses.jsonl")
    assert marker("sample")["n_in"] == nrows(d / "prompts.jsonl")
    assert marker("judge")["n_out"] == nrows(d / "judgments.jsonl")
    assert marker("judge")["summary"]["unparsable"] == sum(
        1 for j in read_jsonl(d / "judgments.jsonl") if j["score"] is None)
    assert marker("meta_judge")["n_out"] == nrows(d / "meta_judgments.jsonl")
    assert marker("pairs")["n_out"] == n_pairs
    assert marker("train")["n_out"] == n_pairs
    assert marker("train")["summary"]["steps"] == nrows(d / "train_metrics.jsonl")
    for s in STAGES:
        m = marker(s)
        assert (m["stage"], m["iter"]) == (s, t)
        assert all((out / o).exists() for o in m["outputs"])
    assert set(marker("judge")["inputs"]) == {f"iter_{t:02d}/prompts.jsonl", f"iter_{t:02d}/responses.jsonl"}


def test_adapter_and_lineage(smoke) -> None:
    _, out, _, _ = smoke
    shas = []
    for t in (1, 2):
        d = out / f"iter_{t:02d}"
        cfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
        assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", 16, 32)
        raw = (d / "adapter" / "adapter_model.safetensors").read_bytes()
        (hlen,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + hlen])
        assert header["lora_B"]["dtype"] == "F32"
        assert len(raw) == 8 + hlen + 4 * header["lora_B"]["shape"][0]
        shas.append(hashlib.sha256(raw).hexdigest())
        lineage = json.loads((d / "model" / "lineage.json").read_text())
        assert lineage["base"] == "fake"
        assert [a["iteration"] for a in lineage["adapters"]] == list(range(1, t + 1))
        assert [a["adapter_sha256"] for a in lineage["adapters"]] == shas
        assert all(a["kind"] == "dpo" for a in lineage["adapters"])
    assert shas[0] != shas[1]


def test_iteration_2_samples_from_model_1(smoke) -> None:
    recipe, out, _, _ = smoke
    prompts = read_jsonl(out / "iter_02" / "prompts.jsonl")
    responses = read_jsonl(out / "iter_02" / "responses.jsonl")
    reqs = [GenRequest(id=p["prompt_id"], messages=[{"role": "user", "content": p["prompt"]}], n=recipe.actor.n,
                       seed=0, role="actor") for p in prompts]
    sampling = Sampling(0.8, 0.95, 64)

    def texts(model: str) -> dict[str, str]:
        outs = FakeGenerator(recipe, model).generate(reqs, sampling)
        return {f"{q.id}:{k}": c.text for q, comps in zip(reqs, outs, strict=True) for k, c in enumerate(comps)}

    m1, m0 = texts(str(out / "iter_01" / "model")), texts("fake")
    assert all(r["text"] == m1[r["response_id"]] for r in responses)
    assert sum(r["text"] != m0[r["response_id"]] for r in responses) > len(responses) // 2
    it1 = {r["text"] for r in read_jsonl(out / "iter_01" / "responses.jsonl")}
    assert not it1 & {r["text"] for r in responses}


# --------------------------------------------------------------------------------------------------------------
# summary lines


def test_summary_lines(smoke) -> None:
    _, out, _, logs = smoke
    for t in (1, 2):
        d = out / f"iter_{t:02d}"
        js = read_jsonl(d / "judgments.jsonl")
        nulls = sum(1 for j in js if j["score"] is None)
        [judge] = [ln for ln in logs if ln.startswith(f"judge  iter {t}:")]
        assert f"{len(js)} judgments, {nulls} unparsable ({100 * nulls / len(js):.1f}%)" in judge
        [sample] = [ln for ln in logs if ln.startswith(f"sample iter {t}:")]
        assert f"24 prompts → {nrows(d / 'responses.jsonl')} responses" in sample
        [pairs] = [ln for ln in logs if ln.startswith(f"pairs  iter {t}:")]
        assert f"{nrows(d / 'pairs_actor.jsonl')} actor pairs" in pairs
        assert f"{nrows(d / 'pairs_judge.jsonl')} judge pairs" in pairs
        [meta] = [ln for ln in logs if ln.startswith(f"meta_judge iter {t}:")]
        assert f"{nrows(d / 'meta_judgments.jsonl')} battles" in meta
        [train] = [ln for ln in logs if ln.startswith(f"train  iter {t}:")]
        assert f"DPO on {nrows(d / 'pairs_actor.jsonl') + nrows(d / 'pairs_judge.jsonl')} pairs" in train


def test_fake_loop_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys, mrlite\n"
        f"mrlite.run(mrlite.load_recipe({str(SMOKE)!r}), out={str(tmp_path / 'run')!r})\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'transformers', 'trl', 'vllm') if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "HEAVY="
    assert (tmp_path / "run" / "iter_02" / ".done" / "train.json").exists()


# --------------------------------------------------------------------------------------------------------------
# meta-judge switches


def test_meta_judge_off(run_dir: Path) -> None:
    recipe = mrlite.load_recipe(SMOKE, ["meta_judge.enabled=false"])
    report, _ = run_logged(recipe, run_dir)
    assert [(t, s) for t, s, st in report.steps if st == "ran"] == SETUP + [
        (t, s) for t in (1, 2) for s in STAGES if s != "meta_judge"]
    for t in (1, 2):
        d = run_dir / f"iter_{t:02d}"
        assert files_under(d) == ITER_FILES - {"meta_judgments.jsonl", ".done/meta_judge.json"}
        assert (d / "pairs_judge.jsonl").read_bytes() == b""
        assert nrows(d / "pairs_actor.jsonl") > 0
        train = json.loads((d / ".done" / "train.json").read_text())["summary"]
        assert train["judge_pairs"] == 0


def test_meta_judge_first_iteration_only(run_dir: Path) -> None:
    recipe = mrlite.load_recipe(SMOKE, ["meta_judge.iterations=[1]"])
    run_logged(recipe, run_dir)
    assert files_under(run_dir / "iter_01") == ITER_FILES
    assert nrows(run_dir / "iter_01" / "pairs_judge.jsonl") > 0
    assert files_under(run_dir / "iter_02") == ITER_FILES - {"meta_judgments.jsonl", ".done/meta_judge.json"}
    assert nrows(run_dir / "iter_02" / "pairs_judge.jsonl") == 0


def test_train_summary_counts_dropped_rows_once(run_dir: Path, monkeypatch) -> None:
    """``TrainResult.n_rows`` already excludes the rows dropped as too long: the marker's n_out is n_rows."""
    from mrlite.backends.base import TrainResult
    from mrlite.backends.fake import FakeTrainer

    real = FakeTrainer._train

    def dropping(self, rows, base, out, kind):
        res = real(self, rows, base, out, kind)
        return TrainResult(n_rows=res.n_rows - 1, n_dropped=1, metrics=res.metrics, summary=res.summary)

    monkeypatch.setattr(FakeTrainer, "_train", dropping)
    run_logged(mrlite.load_recipe(SMOKE, ["loop.iterations=1"]), run_dir)
    marker = json.loads((run_dir / "iter_01" / ".done" / "train.json").read_text())
    s = marker["summary"]
    assert s["dropped_too_long"] == 1
    assert s["n_out"] == s["n_in"] - 1 == marker["n_out"]
