"""The import graph of ``mrlite/``: no cycles and no private names imported across modules.

Read from the source with ``ast`` (nothing is imported), counting every import statement, also those inside
functions: a lazy import still ties two modules together. Also checks that the shared training core imports no
torch/transformers/trl at import (the unsloth trainer must import unsloth before them).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "mrlite"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import in ``path`` that lands in mrlite."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                source = ".".join(here + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                if f"{source}.{a.name}" in mods:  # `from pkg import submodule`
                    found.append((f"{source}.{a.name}", None))
                elif source in mods:
                    found.append((source, a.name))
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, p in mods.items():
        for target, taken in _imports(m, p, mods):
            if target in (m, "mrlite"):  # the package root is the public facade
                continue
            edges[m].add(target)
            if taken and taken.startswith("_") and not taken.startswith("__"):
                private.append(f"{m} imports {target}.{taken}")
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle_and_no_false_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_walk_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from mrlite.rundir import _private, RunDir\n    from . import parsing\n")
    mods = {"mrlite.rundir": Path(), "mrlite.parsing": Path(), "mrlite.x": f}
    assert _imports("mrlite.x", f, mods) == [("mrlite.rundir", "_private"), ("mrlite.rundir", "RunDir"),
                                             ("mrlite.parsing", None)]


def test_no_import_cycles() -> None:
    edges, _ = _graph()
    assert len(edges) > 30  # the walk found the package
    assert _cycles(edges) == []


def test_no_private_names_imported_across_modules() -> None:
    _, private = _graph()
    assert private == []


def test_training_core_imports_no_torch() -> None:
    code = ("import sys, mrlite.backends.train_core\n"
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert r.stdout.strip() == "[]"
