"""The command line: help texts, one-line errors with the right exit codes, and no torch at start-up."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import mrlite
from mrlite.cli import cli

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
COMMANDS = sorted(name for name, cmd in cli.commands.items() if not cmd.hidden)


@pytest.fixture(autouse=True)
def _restore_mrlite_logger():
    """`mrlite run` installs a console handler bound to CliRunner's stream; undo it after each test."""
    lg = logging.getLogger("mrlite")
    saved = (list(lg.handlers), lg.level, lg.propagate)
    yield
    lg.handlers[:] = saved[0]
    lg.setLevel(saved[1])
    lg.propagate = saved[2]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), prog_name="mrlite")


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def assert_one_line_error(result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    out = lines(result.output)
    assert len(out) == 1, result.output
    assert out[0].startswith("Error: ")
    return out[0]


# --------------------------------------------------------------------------------------------------------------
# help


def test_expected_commands() -> None:
    # the commands README documents, read from what `mrlite --help` prints (not from the group object)
    listed = set(re.findall(r"^  ([a-z][\w-]*)\s", invoke("--help").output.split("Commands:")[1], re.M))
    assert listed >= {"run", "validate", "status", "recipes", "plan", "doctor", "data", "eval", "report"}
    assert "_worker" not in listed


def test_group_help() -> None:
    r = invoke("--help")
    assert r.exit_code == 0
    assert "mrlite run recipes/smoke.yaml" in r.output
    for name in COMMANDS:
        assert name in r.output
    assert "_worker" not in r.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_examples(name: str) -> None:
    r = invoke(name, "--help")
    assert r.exit_code == 0, r.output
    assert f"Usage: mrlite {name}" in r.output
    assert "Examples:" in r.output
    assert f"mrlite {name}" in r.output.split("Examples:")[1]


def test_help_and_validate_import_no_torch() -> None:
    code = (
        "import sys\n"
        "from mrlite.cli import cli\n"
        f"cmds = [['--help']] + [[c, '--help'] for c in {COMMANDS!r}] + [['validate', {SMOKE!r}], ['recipes']]\n"
        "for args in cmds:\n"
        "    try:\n"
        "        cli.main(args, prog_name='mrlite', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'vllm', 'datasets') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "name: smoke" in p.stdout  # validate really ran
    assert p.stdout.strip().splitlines()[-1] == "HEAVY="


def test_python_m_version() -> None:
    p = subprocess.run([sys.executable, "-m", "mrlite", "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"mrlite, version {mrlite.__version__}"


# --------------------------------------------------------------------------------------------------------------
# validate / recipes


def test_validate_prints_resolved_yaml() -> None:
    r = invoke("validate", SMOKE, "--set", "actor.n=2")
    assert r.exit_code == 0, r.output
    assert "name: smoke" in r.output
    data = yaml.safe_load(r.output)
    assert data["actor"]["n"] == 2
    assert data["judge"]["n"] == 5
    assert mrlite.Recipe.model_validate(data) == mrlite.load_recipe(SMOKE, ["actor.n=2"])


def test_validate_bad_key() -> None:
    msg = assert_one_line_error(invoke("validate", SMOKE, "--set", "actor.temprature=1"))
    assert "did you mean 'temperature'" in msg


def test_validate_set_without_equals() -> None:
    msg = assert_one_line_error(invoke("validate", SMOKE, "--set", "actor.n"))
    assert "expected KEY=VALUE" in msg


def test_recipes_lists_smoke() -> None:
    r = invoke("recipes")
    assert r.exit_code == 0
    names = [ln.split()[0] for ln in lines(r.output)]
    assert "smoke" in names
    assert names == sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))


def test_recipes_prints_one() -> None:
    r = invoke("recipes", "smoke")
    assert r.exit_code == 0
    assert r.output == Path(SMOKE).read_text().rstrip() + "\n"


def test_recipes_unknown() -> None:
    msg = assert_one_line_error(invoke("recipes", "nope"))
    assert "no bundled recipe 'nope'" in msg
    assert "smoke" in msg


# --------------------------------------------------------------------------------------------------------------
# run / status


def test_run_bad_key_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    msg = assert_one_line_error(invoke("run", SMOKE, "--set", "actor.temprature=1", "--out", str(out)))
    assert "actor.temprature: unknown key; did you mean 'temperature'?" in msg
    assert not out.exists()


def test_run_missing_recipe(tmp_path: Path) -> None:
    msg = assert_one_line_error(invoke("run", "recipes/smok.yaml", "--out", str(tmp_path / "run")))
    assert "did you mean smoke (recipes/smoke.yaml)?" in msg


def test_run_iter_out_of_range(tmp_path: Path) -> None:
    out = tmp_path / "run"
    msg = assert_one_line_error(invoke("run", SMOKE, "--iter", "7", "--out", str(out), "-q"))
    assert "--iter 7 is outside this recipe's iterations 0..2" in msg
    assert not out.exists()
    # without -q the resolved recipe is echoed first, but the error is still one line, and the last one
    r = invoke("run", SMOKE, "--iter", "7", "--out", str(out))
    assert r.exit_code == 1
    assert lines(r.output)[-1] == msg
    assert sum(ln.startswith("Error:") for ln in lines(r.output)) == 1


def test_run_only_and_from_exclude_each_other(tmp_path: Path) -> None:
    msg = assert_one_line_error(invoke("run", SMOKE, "--only", "judge", "--from", "pairs", "--out",
                                       str(tmp_path / "run"), "-q"))
    assert "--only and --from exclude each other" in msg


def test_run_unknown_stage_is_a_usage_error(tmp_path: Path) -> None:
    r = invoke("run", SMOKE, "--only", "bogus", "--out", str(tmp_path / "run"))
    assert r.exit_code == 2
    assert "Invalid value for '--only': 'bogus' is not one of" in r.output
    assert not (tmp_path / "run").exists()


def test_run_then_status(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = invoke("run", SMOKE, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "judge  iter 1:" in r.stderr
    assert "unparsable" in r.stderr
    assert "train  iter 2:" in r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"done: 11 stages ran, 0 cached → {out}"

    r = invoke("run", SMOKE, "--out", str(out), "-q")
    assert r.exit_code == 0
    assert r.output.strip() == f"done: 0 stages ran, 11 cached → {out}"  # -q: nothing else

    r = invoke("status", str(out))
    assert r.exit_code == 0
    rows = [ln.split() for ln in lines(r.output)[1:]]
    assert [(x[0], x[1], x[2]) for x in rows] == [("0", "prompts", "done")] + [
        (str(t), s, "done") for t in (1, 2) for s in ("sample", "judge", "meta_judge", "pairs", "train")]
    judge1 = next(x for x in rows if x[:2] == ["1", "judge"])
    n_judgments = sum(1 for _ in (out / "iter_01" / "judgments.jsonl").open())
    assert judge1[3] == str(n_judgments)
    assert "parsed" in " ".join(judge1)


def test_run_stale_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert invoke("run", SMOKE, "--out", str(out), "-q").exit_code == 0
    msg = assert_one_line_error(invoke("run", SMOKE, "--set", "judge.n=4", "--out", str(out), "-q"))
    assert "--force" in msg
    assert "iter 1 judge" in msg


def test_status_not_a_run_dir(tmp_path: Path) -> None:
    msg = assert_one_line_error(invoke("status", str(tmp_path)))
    assert "not a run directory" in msg
    msg = assert_one_line_error(invoke("status", str(tmp_path / "nope")))
    assert "not a run directory" in msg


def test_every_user_error_is_one_mrlite_error_the_cli_reports_as_one_line() -> None:
    import click

    from mrlite.backends import BackendError
    from mrlite.eval.endpoint import EndpointError
    from mrlite.errors import MrliteError, user_errors
    from mrlite.eval.run import EvalError
    from mrlite.hardware.gpu import PreflightError
    from mrlite.loop import StageFailed
    from mrlite.models import ModelError
    from mrlite.recipe import RecipeError
    from mrlite.report import ReportError
    from mrlite.rundir import RunDirError
    from mrlite.data.sources import SourceError
    from mrlite.stages import StageError

    kinds = (RecipeError, RunDirError, StageError, StageFailed, BackendError, PreflightError, SourceError,
             ModelError, EndpointError, EvalError, ReportError)
    assert all(issubclass(k, MrliteError) for k in kinds)
    # the old bases stay, so `except ValueError` / `except RuntimeError` callers keep working
    assert issubclass(RecipeError, ValueError) and issubclass(RunDirError, RuntimeError)

    def fails(exc):
        @user_errors("Run it again.")
        def cmd():
            raise exc
        return cmd

    with pytest.raises(click.ClickException) as e:
        fails(ModelError("model.base 'x' not found; pass a Hub id or a local directory"))()
    assert e.value.message == "model.base 'x' not found; pass a Hub id or a local directory"
    with pytest.raises(SystemExit) as quiet:  # a stage subprocess printed its line already: only the exit code
        fails(StageFailed("iter 1 train failed in its subprocess (exit 3)", quiet=True))()
    assert quiet.value.code == 1
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: it keeps its traceback
        fails(ZeroDivisionError("bug"))()
