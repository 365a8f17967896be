"""The wheel carries the bundled recipes (one copy in the repository's recipes/), so an installed mrlite runs
``mrlite recipes`` and ``mrlite run smoke`` by name from a folder with no checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the sources (the checkout gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("mrlite", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True)
    (whl,) = out.glob("mrlite-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_ships_every_recipe_unchanged(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        shipped = {Path(n).name: z.read(n) for n in z.namelist() if n.startswith("mrlite/recipes/")}
    repo = {p.name: p.read_bytes() for p in (REPO / "recipes").glob("*.yaml")}
    assert shipped == repo


@pytest.mark.slow
def test_installed_wheel_runs_a_bundled_recipe_by_name(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    listing = subprocess.run([sys.executable, "-m", "mrlite", "recipes"], cwd=work, env=env, capture_output=True,
                             text=True, check=True).stdout
    names = {ln.split()[0] for ln in listing.splitlines() if ln.strip()}
    assert names == {p.stem for p in (REPO / "recipes").glob("*.yaml")}
    r = subprocess.run([sys.executable, "-m", "mrlite", "run", "smoke", "--set", "loop.iterations=1", "-q"],
                       cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (work / "runs" / "smoke" / "iter_01" / "model").is_dir()
    import_path = subprocess.run([sys.executable, "-c", "import mrlite; print(mrlite.__file__)"], cwd=work, env=env,
                                 capture_output=True, text=True, check=True).stdout
    assert import_path.startswith(str(target))
