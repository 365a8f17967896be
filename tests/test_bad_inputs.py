"""The bad-input matrix: each bad input gives ONE line that names the problem and the fix, a non-zero exit, and
leaves no partial file behind (the run directory is absent, or unchanged apart from log.txt/run.json)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from mrlite.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "smoke.yaml")
VOLATILE = {"log.txt", "run.json", "timings.jsonl", ".lock"}


def _write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def _done_run(tmp: Path) -> Path:
    out = tmp / "run"
    r = CliRunner().invoke(cli, ["run", SMOKE, "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return out


# Each case: (id, build(tmp) -> argv, expected fragment of the one error line)
Case = tuple[str, Callable[[Path], list[str]], str]


def _run(*sets: str, out: str | None = None) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        argv = ["run", SMOKE, "--out", out or str(tmp / "run")]
        for s in sets:
            argv += ["--set", s.replace("{tmp}", str(tmp))]
        return argv
    return build


def _with_file(name: str, content: str | bytes, *sets: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        _write(tmp / name, content)
        return _run(*sets)(tmp)
    return build


def _recipe_file(content: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return ["run", _write(tmp / "r.yaml", content), "--out", str(tmp / "run")]
    return build


def _on_done(*extra: str, prepare: Callable[[Path], None] | None = None) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        out = _done_run(tmp)
        if prepare:
            prepare(out)
        return ["run", SMOKE, "--out", str(out), *extra]
    return build


def _other_recipe(out: Path) -> None:
    info = json.loads((out / "run.json").read_text())
    info["recipe_name"] = "someone-else"
    (out / "run.json").write_text(json.dumps(info))


CASES: list[Case] = [
    # recipe
    ("unknown key", _run("actor.temprature=0.5"), "did you mean 'temperature'"),
    ("unknown section", _run("actors.n=2"), "actors: unknown key"),
    ("wrong type", _run("actor.n=many"), "actor.n"),
    ("negative K", _run("actor.n=-1"), "actor.n"),
    ("N<2 with meta-judge", _run("judge.n=1"), "judge.n must be >= 2"),
    ("rho > 0.5", _run("pairs.rho=[0.6]"), "[0, 0.5]"),
    ("meta iterations below 1", _run("meta_judge.iterations=[0]"), "numbered from 1"),
    ("set without =", _run("actor.n"), "expected KEY=VALUE"),
    ("set with bad YAML", _run("pairs.rho=[0,"), "not valid YAML"),
    ("missing recipe file", lambda tmp: ["run", str(tmp / "nope.yaml")], "recipe file not found"),
    ("empty recipe file", _recipe_file(""), "the file is empty"),
    ("invalid YAML recipe", _recipe_file("name: [x\n"), "not valid YAML"),
    ("recipe is a list", _recipe_file("- a\n- b\n"), "top level must be a mapping"),
    ("missing model.base", _recipe_file("name: x\nmodel: {}\n"), "model.base: required field is missing"),
    ("fake/real mismatch", _run("backends.trainer=trl"), "both be 'fake'"),
    ("extends cycle", lambda tmp: (_write(tmp / "b.yaml", "extends: r.yaml\nname: b\n"),
                                   _recipe_file("extends: b.yaml\nname: r\n")(tmp))[1],
     "extends chain has a cycle"),
    ("extends unknown parent", _recipe_file("extends: papr\nname: r\n"), "extends 'papr': no such recipe"),
    ("prompt file and growing", _run("data.generate.n=100"), "names both a prompt source (prompts: builtin)"),
    ("growing target below the iterations", _run("data.prompts=generate", "data.generate.n=20"),
     "data.generate.n is 20, but iteration 2 starts at prompt 25"),
    # data
    ("prompt file missing", _run("data.prompts={tmp}/none.jsonl"), "not found"),
    ("empty JSONL", _with_file("p.jsonl", "", "data.prompts={tmp}/p.jsonl"), "no rows"),
    ("corrupt JSONL", _with_file("p.jsonl", '{"prompt": "a"}\n{"prompt": \n', "data.prompts={tmp}/p.jsonl"),
     "p.jsonl:2: not valid JSON"),
    ("JSONL of lists", _with_file("p.jsonl", "[1, 2]\n", "data.prompts={tmp}/p.jsonl"), "expected a JSON object"),
    ("missing column", _with_file("p.jsonl", '{"text": "hello"}\n', "data.prompts={tmp}/p.jsonl"),
     "no column 'prompt'; columns are text"),
    ("duplicate ids", _with_file("p.jsonl", '{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n',
                                 "data.prompts={tmp}/p.jsonl"), "duplicate id '1'"),
    ("only empty prompts", _with_file("p.jsonl", '{"prompt": " "}\n{"prompt": ""}\n', "data.prompts={tmp}/p.jsonl"),
     "no usable prompt"),
    ("non-UTF-8 file", _with_file("p.csv", b"prompt\n\xff\xfe bad\n", "data.prompts={tmp}/p.csv"), "not UTF-8"),
    ("unsupported type", _with_file("p.txt", "hello\n", "data.prompts={tmp}/p.txt"), "unsupported file type"),
    ("prompt is a number", _with_file("p.jsonl", '{"prompt": 3}\n', "data.prompts={tmp}/p.jsonl"), "expected text"),
    ("pool too small", _run("loop.iterations=12", "meta_judge.iterations=[1]"), "usable prompts, but iteration 12"),
    ("EFT rows missing fields", _with_file("e.jsonl", '{"prompt": "a", "response": "b"}\n', "eft.enabled=true",
                                           "eft.data={tmp}/e.jsonl"), "EFT rows need"),
    ("EFT source without English ranked prompts",
     _with_file("de.jsonl", "".join(json.dumps(t) + "\n" for t in [
         {"prompt": {"message_id": "g1", "role": "prompter", "lang": "de", "text": "Wie spät ist es?", "replies": [
             {"message_id": "g2", "role": "assistant", "text": "Acht Uhr.", "rank": 0},
             {"message_id": "g3", "role": "assistant", "text": "Spät.", "rank": 1}]}},
         {"prompt": {"message_id": "e1", "role": "prompter", "lang": "en", "text": "What time is it?", "replies": [
             {"message_id": "e2", "role": "assistant", "text": "Eight.", "rank": 0}]}}]),
                "eft.enabled=true", "eft.data=oasst:{tmp}/de.jsonl"),
     "no prompt with 2+ ranked replies in language 'en'"),
    ("EFT source that is not Open Assistant data", _with_file("x.jsonl", '{"prompt": "a"}\n', "eft.enabled=true",
                                                              "eft.data=oasst:{tmp}/x.jsonl"), "not Open Assistant data"),
    ("EFT row file and oasst: both", _run("eft.enabled=true", "eft.data=[{tmp}/e.jsonl, 'oasst:x/y']"),
     "eft.data: names both a row file and an oasst: source; choose one"),
    ("EFT oasst: without a source", _run("eft.enabled=true", "eft.data='oasst: '"), "oasst: needs a source"),
    ("EFT held-out share takes every prompt", _run("eft.enabled=true", "eft.heldout=0.99",
                                                   f"eft.data=oasst:{ROOT / 'tests' / 'assets' / 'oasst_trees.jsonl'}"),
     "holds out all 5 prompts"),
    # run directory
    ("run dir of another recipe", _on_done(prepare=_other_recipe), "holds a run of recipe 'someone-else'"),
    ("stale marker", _on_done("--set", "judge.n=4"), "--force"),
    ("garbage run.json", _on_done(prepare=lambda out: (out / "run.json").write_text("{oops")), "unreadable run.json"),
    ("iteration folders without run.json", _on_done(prepare=lambda out: (out / "run.json").unlink()), "no run.json"),
    # CLI
    ("iter out of range", _run(), ""),  # placeholder replaced below
    ("only with from", lambda tmp: ["run", SMOKE, "--out", str(tmp / "run"), "--only", "judge", "--from", "pairs"],
     "exclude each other"),
    ("status of a non-run dir", lambda tmp: ["status", str(tmp)], "not a run directory"),
    ("unknown bundled recipe", lambda tmp: ["recipes", "nope"], "no bundled recipe 'nope'"),
    # models and machines
    ("GPU recipe without a GPU", lambda tmp: ["run", str(ROOT / "recipes" / "paper.yaml"), "--out", str(tmp / "run")],
     "has no CUDA GPU; run `mrlite doctor`"),
]
CASES[CASES.index(next(c for c in CASES if c[0] == "iter out of range"))] = (
    "iter out of range", lambda tmp: ["run", SMOKE, "--out", str(tmp / "run"), "--iter", "9"], "--iter 9 is outside")


def _files(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and p.name not in VOLATILE}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(case: Case, tmp_path: Path) -> None:
    _, build, fragment = case
    argv = build(tmp_path)
    before = _files(tmp_path)
    r = CliRunner().invoke(cli, argv)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    assert len(lines) == 1, r.output
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]
    assert _files(tmp_path) == before  # nothing half-written, nothing changed


def test_held_lock_is_refused(tmp_path: Path) -> None:
    out = _done_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        before = _files(out)
        r = CliRunner().invoke(cli, ["run", SMOKE, "--out", str(out)])
        assert r.exit_code == 1
        assert r.output.strip().count("\n") == 0 and "is in use by another run" in r.output
        assert _files(out) == before
    finally:
        holder.kill()
        holder.wait()


def test_missing_extra_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mrlite.backends as backends

    monkeypatch.setattr(backends, "_available", lambda pkg: pkg not in ("torch", "trl"))
    r = CliRunner().invoke(cli, ["run", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1
    assert r.output.strip() == ("Error: backends.generator 'hf' needs torch: pip install 'mrlite[hf]'")
    assert not (tmp_path / "run").exists()


def test_unknown_stage_is_a_usage_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["run", SMOKE, "--only", "bogus"])
    assert r.exit_code == 2 and "Invalid value for '--only'" in r.output


def test_unreachable_hub_source_names_offline_mode(tmp_path: Path) -> None:
    # A subprocess: huggingface_hub and datasets read HF_HUB_OFFLINE when they are imported. Never the real Hub.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "MRLITE_FAULT")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "mrlite", "run", SMOKE, "--out", str(tmp_path / "run"), "--set",
                        "eft.enabled=true", "--set", "eft.data=oasst:OpenAssistant/oasst1"],
                       capture_output=True, text=True, env=env, timeout=120)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stdout + r.stderr
    assert lines[0].startswith("Error: cannot load dataset 'OpenAssistant/oasst1'") and "HF_HUB_OFFLINE" in lines[0]
    assert not (tmp_path / "run").exists()


def test_hub_hint_names_the_token_when_online(monkeypatch: pytest.MonkeyPatch) -> None:
    from mrlite.data.sources import hub_hint

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "HF_TOKEN" in hub_hint() and "HF_HUB_OFFLINE" not in hub_hint()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "unset HF_HUB_OFFLINE" in hub_hint()


def test_a_judge_that_never_agrees_stops_before_eft(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", SMOKE, "--out", str(out), "-q", "--set", "eft.enabled=true", "--set",
                                 f"eft.data=oasst:{ROOT / 'tests' / 'assets' / 'oasst_trees.jsonl'}",
                                 "--set", "backends.fake.unparseable_share=1.0", "--set", "eft.judgments=2"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith("Error: eft_data: the seed model 'fake' ordered no prompt's replies as the humans did")
    assert "0 of 5 prompts agree (5 disagree, 0 too long; 26 of 26 judgments unparseable; 2 round(s)" in lines[0]
    assert "EFT would train on nothing" in lines[0]
    it0 = out / "iter_00"
    assert not (it0 / "eft_data.jsonl").exists() and not (it0 / "model").exists() and not (it0 / ".parts").exists()
    assert sorted(p.name for p in (it0 / ".done").iterdir()) == ["prompts.json"]  # the pool is done; EFT is not
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))
