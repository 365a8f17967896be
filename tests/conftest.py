"""Shared fixtures: the smoke recipe and a fresh run directory. GPU-only test files are dropped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
from _models import cuda_available

import mrlite

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# Importing torch costs seconds, so only ask when a GPU test file exists.
collect_ignore_glob = ["*_gpu.py"] if any(TESTS.glob("*_gpu.py")) and not cuda_available() else []


@pytest.fixture
def smoke_recipe() -> mrlite.Recipe:
    """recipes/smoke.yaml, validated (fake backend, 2 iterations)."""
    return mrlite.load_recipe(REPO / "recipes" / "smoke.yaml")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory that does not exist yet."""
    return tmp_path / "run"
