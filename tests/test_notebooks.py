"""The notebooks cannot drift from the code: valid, stripped nbformat v4; every recipe they name exists and
validates; every `mrlite ...` command they run parses with the real CLI; quickstart.ipynb runs top to bottom on
the smoke recipe (headless, nbclient)."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import mrlite
from mrlite.cli import cli

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
EXPECTED = {"quickstart.ipynb", "colab_t4.ipynb", "paper_8b.ipynb"}

RECIPE_RE = re.compile(r"recipes/[A-Za-z0-9_.-]+\.ya?ml")
# `mrlite ...` in code: sh("mrlite ...") / sh(f"mrlite ...") strings and IPython `!mrlite ...` lines.
CODE_CMD_RE = re.compile(r"""(?:f?["'](mrlite [^"']*)["'])|(?:^\s*!(mrlite .*)$)""", re.M)
# `mrlite ...` in markdown: inline code spans.
MD_CMD_RE = re.compile(r"`(mrlite [^`]*)`")
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
UNKNOWN = "PLACEHOLDER"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def literal_vars(nb: dict) -> dict[str, str]:
    """NAME -> value for `NAME = "literal"` and `NAME = os.environ.get("VAR", "literal")` in the code cells."""
    out: dict[str, str] = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse(source(cell))
        except SyntaxError:  # IPython syntax (!cmd, %magic): nothing to learn from this cell
            continue
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                continue
            v = node.value
            if isinstance(v, ast.Call) and getattr(v.func, "attr", "") == "get" and len(v.args) == 2:
                v = v.args[1]  # os.environ.get("VAR", default): the default
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                out[node.targets[0].id] = v.value
    return out


def commands(nb: dict) -> list[tuple[str, str]]:
    """(kind, command line) for every `mrlite ...` a notebook runs ("code") or shows ("md").

    `{NAME}` is filled with NAME's literal value; a NAME chosen between literals (`SETS = QUICK_SETS if QUICK else
    FULL_SETS`) gives one command line per `*_NAME` literal; anything else becomes PLACEHOLDER.
    """
    values = literal_vars(nb)
    found = []
    for cell in nb["cells"]:
        text = source(cell)
        if cell["cell_type"] == "code":
            found += [("code", a or b) for a, b in CODE_CMD_RE.findall(text)]
        elif cell["cell_type"] == "markdown":
            found += [("md", c) for c in MD_CMD_RE.findall(text)]
    out = []
    for kind, line in found:
        names = sorted(set(PLACEHOLDER_RE.findall(line)))
        choices = [
            [values[n]] if n in values else [v for k, v in values.items() if k.endswith("_" + n)] or [UNKNOWN]
            for n in names
        ]
        for combo in itertools.product(*choices):
            filled = dict(zip(names, combo, strict=True))
            out.append((kind, PLACEHOLDER_RE.sub(lambda m, f=filled: f[m.group(1)], line).strip()))
    return out


def resolve(argv: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """Walk `mrlite <group> <cmd> ...` down the real Click tree: (command, its name path, remaining args)."""
    cmd: click.Command = cli
    names: list[str] = []
    args = list(argv)
    while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        assert name in cmd.commands, (
            f"`mrlite {' '.join([*names, name])}`: no such command; have {sorted(cmd.commands)}"
        )
        cmd = cmd.commands[name]
        names.append(name)
    return cmd, names, args


def has_dotted_key(data: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request) -> tuple[Path, dict]:
    return request.param, load(request.param)


def test_the_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= EXPECTED, f"missing: {EXPECTED - {p.name for p in NOTEBOOKS}}"


def test_valid_nbformat_v4_with_outputs_stripped(notebook):
    path, nb = notebook
    assert nb.get("nbformat") == 4, f"{path.name}: not nbformat v4"
    if importlib.util.find_spec("nbformat"):
        import nbformat

        nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))
    for i, cell in enumerate(nb["cells"]):
        assert cell["cell_type"] in {"code", "markdown", "raw"}, f"{path.name} cell {i}: {cell['cell_type']}"
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i}: outputs not stripped"
            assert cell.get("execution_count") is None, f"{path.name} cell {i}: execution_count not stripped"
            compile_ipython(source(cell), f"{path.name} cell {i}")
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: widget state not stripped"


def compile_ipython(src: str, where: str) -> None:
    """Code cells must be Python once IPython's `!cmd` / `%magic` lines are blanked out."""
    py = re.sub(r"^(\s*)[!%].*$", r"\1pass", src, flags=re.M)
    try:
        compile(py, where, "exec")
    except SyntaxError as e:
        pytest.fail(f"{where}: {e}")


def test_recipes_named_exist_and_validate(notebook):
    path, nb = notebook
    named = sorted({m for cell in nb["cells"] for m in RECIPE_RE.findall(source(cell))})
    assert named, f"{path.name} names no recipe"
    for rel in named:
        assert (REPO / rel).is_file(), f"{path.name} names {rel}, which does not exist"
        mrlite.load_recipe(REPO / rel)


def test_mrlite_commands_parse(notebook):
    path, nb = notebook
    found = commands(nb)
    assert any(kind == "code" for kind, _ in found), f"{path.name} runs no mrlite command"
    for kind, line in found:
        argv = shlex.split(line)[1:]
        cmd, names, args = resolve(argv)
        where = f"{path.name}: `{line}`"
        assert names, f"{where}: no subcommand"
        try:  # full parse: arguments, option names, option types and choices
            ctx = cmd.make_context(" ".join(["mrlite", *names]), list(args))
        except click.MissingParameter:
            assert kind == "md", f"{where}: a required argument is missing"
            # Prose such as `mrlite eval` may omit arguments: the command and its option names must exist.
            res = CliRunner().invoke(cli, [*names, *args, "--help"], prog_name="mrlite")
            assert res.exit_code == 0, f"{where}: {res.output.strip().splitlines()[-1:]}"
            continue
        except click.ClickException as e:
            pytest.fail(f"{where}: {e.format_message()}")
        recipe = ctx.params.get("recipe")
        if recipe and UNKNOWN not in recipe:
            sets = list(ctx.params.get("sets") or ())
            literal = [s for s in sets if UNKNOWN not in s]
            try:
                r = mrlite.load_recipe(REPO / recipe if (REPO / recipe).exists() else recipe, literal)
            except mrlite.RecipeError as e:
                pytest.fail(f"{where}: {e}")
            dumped = r.model_dump()
            for s in sets:
                key = s.split("=", 1)[0]
                assert has_dotted_key(dumped, key), f"{where}: --set {key}: no such recipe field"


def test_command_check_catches_drift():
    """The extractor sees sh(f"mrlite ...") calls and markdown spans, and a renamed command or option fails."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "source": 'R = os.environ.get("X", "recipes/smoke.yaml")\nsh(f"mrlite runn {R}")',
            },
            {"cell_type": "markdown", "source": "then `mrlite status runs/smoke --bogus`"},
        ]
    }
    (k1, c1), (k2, c2) = commands(nb)
    assert (k1, c1) == ("code", "mrlite runn recipes/smoke.yaml") and k2 == "md"
    with pytest.raises(AssertionError, match="no such command"):
        resolve(shlex.split(c1)[1:])
    cmd, _, args = resolve(shlex.split(c2)[1:])
    with pytest.raises(click.NoSuchOption):
        cmd.make_context("mrlite status", args)


def test_quickstart_runs_headless_on_smoke(tmp_path, monkeypatch):
    missing = [m for m in ("nbformat", "nbclient", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"executing notebooks needs {', '.join(missing)} (pip install nbformat nbclient ipykernel)"
        )
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # The kernel finds the checkout through the installed package (it starts in an empty directory), so mrlite
    # must be importable there; otherwise the notebook's install cell would try to clone the repository.
    probe = subprocess.run(
        [sys.executable, "-c", "import mrlite"], cwd=tmp_path, capture_output=True, text=True
    )
    assert probe.returncode == 0, f"mrlite is not importable outside the checkout: {probe.stderr[-300:]}"

    monkeypatch.setenv("MRLITE_NB_RECIPE", "recipes/smoke.yaml")
    monkeypatch.setenv("MRLITE_NB_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("MRLITE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    nb = nbformat.read(NB_DIR / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"quickstart.ipynb failed on the smoke recipe:\n{str(e)[-3000:]}")
    run = tmp_path / "run"
    assert (run / "iter_02" / ".done" / "train.json").is_file(), "the loop did not finish"
    assert sorted(p.name for p in (run / "report").glob("*.png")), "no report plots"
    shown = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(shown) >= 5, f"expected the report's plots inline, got {len(shown)} images"
