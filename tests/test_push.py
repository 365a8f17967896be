"""``mrlite push``: cards that pass huggingface_hub's metadata checks, data that loads with ``load_dataset``, and
uploads against a local Hub stub on 127.0.0.1 (requests recorded; no real Hub)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import smoke_run  # noqa: F401  (fixture)
from hub_stub import HubStub

pytest.importorskip("huggingface_hub")

from mrlite.hub.cards import CardError, validate_card

TOKEN = "hf_stubtoken_do_not_log_0123456789"


def _mrlite(args: list[str], *, endpoint: str | None = None, token: str | None = TOKEN, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home / "hf"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "mrlite", "push", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_dry_run_model_card_passes_hub_validation(smoke_run, tmp_path):
    smoke_run = Path(shutil.copytree(smoke_run, tmp_path / "run"))  # a private copy: it gets a plot
    (smoke_run / "report").mkdir()
    (smoke_run / "report" / "scores.png").write_bytes(b"\x89PNG fake")
    out = tmp_path / "card"
    r = _mrlite([str(smoke_run), "--iter", "2", "--repo", "me/smoke-mr", "--dry-run", str(out)], home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["README.md", "fake_model.txt", "lineage.json", "plots/scores.png"]
    text = (out / "README.md").read_text()
    meta = validate_card(text, "model")
    assert meta["tags"] == ["meta-rewarding", "dpo", "mrlite"]
    assert "base_model" not in meta  # the fake base is no Hub model
    marker = json.loads((smoke_run / "iter_02" / ".done" / "judge.json").read_text())["summary"]
    n = marker["judgments"]
    assert f"| parsed | {100 * (n - marker['unparsable']) / n:.1f}% |" in text
    assert "positional bias" in text and "![scores](plots/scores.png)" in text
    assert "DPO LoRA of iteration 1" in text and "DPO LoRA of iteration 2" in text
    assert "name: smoke" in text  # resolved recipe
    # the adapter alone
    out2 = tmp_path / "adapter"
    r = _mrlite([str(smoke_run), "--iter", "1", "--repo", "me/smoke-lora", "--adapter", "--dry-run", str(out2)],
                home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "lineage.json"} <= \
        {p.name for p in out2.iterdir()}
    assert validate_card((out2 / "README.md").read_text(), "model")["tags"][-2:] == ["lora", "peft"]


def test_card_for_a_hub_base_names_it_and_its_license(smoke_run, tmp_path):
    from mrlite.hub.cards import model_card
    from mrlite.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    rec = (run / "recipe.yaml").read_text().replace("base: fake", "base: smollm2-135m")
    (run / "recipe.yaml").write_text(rec)
    (run / "iter_01" / "model" / "config.json").write_text("{}")
    meta = validate_card(model_card(RunDir(run), 1, "me/x", adapter=False, plots=[], datasets=["me/prompts"]), "model")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert meta["base_model_relation"] == "finetune" and meta["datasets"] == ["me/prompts"]


def test_validate_card_rejects_what_the_hub_rejects():
    with pytest.raises(CardError, match="license"):
        validate_card("---\nlicense: my-own\n---\n# x\n", "model")
    with pytest.raises(CardError, match="base_model"):
        validate_card("---\nbase_model: not a repo id!\n---\n# x\n", "model")
    with pytest.raises(CardError, match="front matter"):
        validate_card("# no metadata\n", "model")


def test_dry_run_data_loads_with_load_dataset(smoke_run, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "data"
    r = _mrlite([str(smoke_run), "--data", "--repo", "me/smoke-data", "--dry-run", str(out)], home=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = validate_card((out / "README.md").read_text(), "dataset")
    assert [c["config_name"] for c in meta["configs"]] == \
        ["prompts", "responses", "judgments", "meta_judgments", "pairs_actor", "pairs_judge"]
    n_pairs = sum(1 for _ in open(smoke_run / "iter_02" / "pairs_actor.jsonl"))
    # a private cache: datasets keys a local folder's cache by its name, so another run's "data" folder would be reused
    cache = str(tmp_path / "hf_datasets")
    ds = datasets.load_dataset(str(out), "pairs_actor", cache_dir=cache)
    assert sorted(ds) == ["iter_01", "iter_02"] and ds["iter_02"].num_rows == n_pairs
    row = ds["iter_01"][0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"  # TRL preference format
    # the documented local form on the run directory gives the same rows
    local = datasets.load_dataset("json", data_files={"iter_01": str(smoke_run / "iter_01" / "pairs_actor.jsonl")},
                                  cache_dir=cache)
    assert local["iter_01"].to_list() == ds["iter_01"].to_list()


def test_bad_input_one_line_each(smoke_run, tmp_path):
    cases = [
        (["--iter", "1", "--repo", "no-slash"], TOKEN, "expected OWNER/NAME"),
        (["--iter", "1", "--repo", "a/b/c"], TOKEN, "expected OWNER/NAME"),
        (["--iter", "7", "--repo", "me/x"], TOKEN, "iteration 7 has no merged model"),
        (["--iter", "1", "--repo", "me/x"], None, "hf auth login"),
        (["--repo", "me/x"], TOKEN, "--iter T"),
    ]
    for args, token, msg in cases:
        r = _mrlite([str(smoke_run), *args], token=token, home=tmp_path, endpoint="http://127.0.0.1:9")
        assert r.returncode == 1, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and msg in lines[0], (args, r.stderr)
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("x")
    r = _mrlite([str(smoke_run), "--iter", "1", "--repo", "me/x", "--dry-run", str(out)], home=tmp_path)
    assert r.returncode == 1 and "not empty" in r.stderr and (out / "x").read_text() == "x"


def test_upload_against_stub_retries_and_second_push_skips_unchanged(smoke_run, tmp_path):
    with HubStub() as hub:
        hub.fail["commit"] = 1  # the first commit dies with a server error mid-upload
        r = _mrlite([str(smoke_run), "--iter", "2", "--repo", "me/smoke-mr", "--private"], endpoint=hub.url,
                    home=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "attempt 1 of 3 failed" in r.stderr and TOKEN not in r.stdout + r.stderr
        repo = hub.repos["model:me/smoke-mr"]
        assert repo["private"] is True and repo["commits"] == 1
        assert sorted(repo["files"]) == ["README.md", "fake_model.txt", "lineage.json"]
        assert repo["files"]["lineage.json"] == (smoke_run / "iter_02" / "model" / "lineage.json").read_bytes()
        assert "Judge health in iteration 2" in repo["files"]["README.md"].decode()
        assert all(req["auth"] == f"Bearer {TOKEN}" for req in hub.requests)
        assert hub.routes()[:2] == ["POST create", "POST validate-yaml"]
        assert hub.routes().count("POST commit") == 2
        # a second push: every file is already there with the same content → no new commit, nothing re-sent
        n = len(hub.requests)
        r = _mrlite([str(smoke_run), "--iter", "2", "--repo", "me/smoke-mr"], endpoint=hub.url, home=tmp_path)
        assert r.returncode == 0, r.stderr
        assert repo["commits"] == 1 and "POST commit" not in hub.routes()[n:]
        # the data repo
        r = _mrlite([str(smoke_run), "--data", "--repo", "me/smoke-data"], endpoint=hub.url, home=tmp_path)
        assert r.returncode == 0, r.stderr
        data = hub.repos["dataset:me/smoke-data"]
        assert "iter_01/pairs_actor.jsonl" in data["files"] and "README.md" in data["files"]


def test_upload_gives_up_after_retries_with_one_line(smoke_run, tmp_path):
    with HubStub() as hub:
        hub.fail["commit"] = 3
        r = _mrlite([str(smoke_run), "--iter", "1", "--repo", "me/x"], endpoint=hub.url, home=tmp_path)
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "failed after 3 tries" in err[0] and "again" in err[0]


def test_card_has_the_eval_numbers_of_its_iteration(smoke_run, tmp_path):
    from mrlite.hub.cards import model_card
    from mrlite.rundir import RunDir

    run = Path(shutil.copytree(smoke_run, tmp_path / "run"))
    (run / "eval").mkdir()
    comps = [{"t": 2, "base": 0, "win_rate": 0.625, "win_rate_ci": [0.5, 0.75], "lc_win_rate": 0.6, "consistency": 0.8,
              "scored": 16}, {"t": 1, "base": 0, "win_rate": 0.1, "win_rate_ci": [0, 0.2], "lc_win_rate": 0.1,
                              "consistency": 0.5, "scored": 16}]
    (run / "eval" / "summary.json").write_text(json.dumps({"comparisons": comps}))
    text = model_card(RunDir(run), 2, "me/x", adapter=False, plots=[], datasets=[])
    assert "| M0 | 62.5% | 50.0%–75.0% | 60.0% | 80.0% | 16 |" in text and "10.0%" not in text
    validate_card(text, "model")
