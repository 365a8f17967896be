"""The EFT set built by the run (stage ``eft_data``): the paper recipe on the fake backend with an Open Assistant
file as ``eft.data``, what it writes, what ``eft`` trains on, fingerprints, and the eval's held-out default."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from mrlite.cli import cli
from mrlite.eval.run import run_eval
from mrlite.data.oasst import load_ranked
from mrlite.rundir import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "recipes" / "paper.yaml")
ASSETS = ROOT / "tests" / "assets"
TREES = str(ASSETS / "oasst_trees.jsonl")
MESSAGES = str(ASSETS / "oasst_messages.jsonl")
FAKE = ["backends.generator=fake", "backends.trainer=fake", "model.base=fake", "data.prompts=builtin",
        "data.prompts_per_iteration=8", "loop.iterations=1", "actor.n=3", "judge.n=3", "loop.chunk_size=2"]


def paper_argv(out: Path, source: str = TREES, *sets: str) -> list[str]:
    argv = ["run", PAPER, "--out", str(out), "-q"]
    for s in [*FAKE, f"eft.data=oasst:{source}", *sets]:
        argv += ["--set", s]
    return argv


def _run(argv: list[str]) -> str:
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 0, r.output
    return r.output


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("log.txt", "run.json", "timings.jsonl")}


def test_paper_recipe_builds_its_eft_set_inside_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(paper_argv(out, TREES, "eft.heldout=0.4"))
    it0 = out / "iter_00"
    rows, held = read_jsonl(it0 / "eft_data.jsonl"), read_jsonl(it0 / "eft_heldout.jsonl")
    info = json.loads((it0 / "eft_data_info.json").read_text())
    ranked = {p.prompt_id: p for p in load_ranked(TREES)[0]}
    held_ids = {h["prompt"]["message_id"] for h in held}
    kept_ids = {r["prompt_id"] for r in rows}
    # The paper's knobs from recipes/paper.yaml: 3 rounds per reply, score-4 down-sampling on.
    assert (info["judgments_per_reply"], info["score4_share"], info["heldout_share"]) == (3, 0.3, 0.4)
    assert held_ids and kept_ids and not held_ids & kept_ids  # held-out prompts are never trained on
    assert info["train_prompts"] + info["heldout_prompts"] == 5 == info["source_counts"]["kept"]
    assert info["source_counts"] == {"roots": 7, "root_unusable": 1, "other_language": 1, "too_few_ranked": 1,
                                   "kept": 5, "reply_deleted_or_failed_review": 1, "reply_unranked": 1}
    j = info["judging"]
    assert j["agree"] + j["disagree"] + j["prompts_too_long"] == info["train_prompts"]
    assert j["judgments"] == 3 * j["replies"] and info["kept_prompts"] == len(kept_ids) == j["agree"]
    assert info["rows"] == len(rows) == info["rows_agreeing"] - info["score4_dropped"]
    assert sum(info["score_histogram"].values()) == len(rows)
    assert info["identity"] == hashlib.sha256(Path(TREES).read_bytes()).hexdigest()
    assert (info["source"], info["model"], info["split"]) == (f"oasst:{TREES}", "fake@", "train")
    for r in rows:  # every kept row is a real reply of its prompt, with the judgment whose score it carries
        reply = next(x for x in ranked[r["prompt_id"]].responses if x["message_id"] == r["message_id"])
        assert (r["response"], r["human_rank"]) == (reply["text"], reply["rank"])
        assert r["judgment"].rstrip().endswith(f"Score: {r['score']:g}")
    # eft trains on exactly these rows, and its marker fingerprints them
    sft = read_jsonl(it0 / "eft_rows.jsonl")
    assert [s["id"] for s in sft] == [r["id"] for r in rows]
    marker = json.loads((it0 / ".done" / "eft.json").read_text())
    assert "iter_00/eft_data.jsonl" in marker["inputs"] and marker["n_in"] == len(rows)
    data_marker = json.loads((it0 / ".done" / "eft_data.json").read_text())
    assert TREES in data_marker["inputs"] and data_marker["n_out"] == len(rows)
    assert (it0 / "model").is_dir() and not (it0 / ".parts").exists()
    # a second run changes nothing
    before = _hashes(out)
    CliRunner().invoke(cli, paper_argv(out, TREES, "eft.heldout=0.4"))
    assert _hashes(out) == before


def test_both_oasst_formats_build_the_same_rows(tmp_path: Path) -> None:
    _run(paper_argv(tmp_path / "a", TREES))
    _run(paper_argv(tmp_path / "b", MESSAGES))
    a, b = (tmp_path / x / "iter_00" / "eft_data.jsonl" for x in "ab")
    assert a.read_bytes() == b.read_bytes() and read_jsonl(a)
    assert read_jsonl(tmp_path / "a" / "iter_00" / "eft_heldout.jsonl") == []  # eft.heldout 0.1 of 5 prompts


def test_more_rounds_keep_more_prompts_and_chunking_does_not_change_rows(tmp_path: Path) -> None:
    _run(paper_argv(tmp_path / "one", TREES, "eft.judgments=1", "eft.score4_share=null"))
    _run(paper_argv(tmp_path / "six", TREES, "eft.judgments=6", "eft.score4_share=null"))
    _run(paper_argv(tmp_path / "big", TREES, "eft.judgments=6", "eft.score4_share=null", "loop.chunk_size=64"))
    one, six = (json.loads((tmp_path / x / "iter_00" / "eft_data_info.json").read_text()) for x in ("one", "six"))
    assert one["kept_prompts"] <= six["kept_prompts"] and one["judging"]["judgments"] * 6 == six["judging"]["judgments"]
    assert ((tmp_path / "six" / "iter_00" / "eft_data.jsonl").read_bytes()
            == (tmp_path / "big" / "iter_00" / "eft_data.jsonl").read_bytes())


def test_a_changed_source_makes_the_build_stale(tmp_path: Path) -> None:
    src = tmp_path / "trees.jsonl"
    shutil.copy(TREES, src)
    out = tmp_path / "run"
    _run(paper_argv(out, str(src)))
    src.write_text(src.read_text().replace("boil an egg", "poach an egg"))
    r = CliRunner().invoke(cli, paper_argv(out, str(src)))
    assert r.exit_code != 0 and "eft_data was computed before but its inputs changed" in r.output
    assert "--force" in r.output
    _run([*paper_argv(out, str(src)), "--force"])
    info = json.loads((out / "iter_00" / "eft_data_info.json").read_text())
    assert info["identity"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_builtin_and_row_files_skip_the_build(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, paper_argv(out, TREES, "eft.data=builtin"))
    assert r.exit_code == 0, r.output
    assert not (out / "iter_00" / "eft_data.jsonl").exists() and not (out / "iter_00" / ".done" / "eft_data.json").exists()
    assert len(read_jsonl(out / "iter_00" / "eft_rows.jsonl")) == 85


def test_eval_human_defaults_to_the_runs_heldout_prompts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(paper_argv(out, TREES, "eft.heldout=0.4"))
    held = read_jsonl(out / "iter_00" / "eft_heldout.jsonl")
    s = run_eval(out, limit=4, n_boot=10)
    assert s["human"]["source"] == str(out / "iter_00" / "eft_heldout.jsonl")
    assert s["human"]["prompts"] == len(held) and [q["t"] for q in s["human"]["models"]] == [0, 1]
    assert run_eval(out, limit=4, n_boot=10, human="")["human"] is None  # '' turns it off
