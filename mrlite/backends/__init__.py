"""Backend registry: names → ``module:Class``, imported only when selected, with one actionable error.

No module outside ``backends/`` imports torch, transformers, trl, peft, vllm or unsloth at module level.
Exercised by: ``mrlite run recipes/smoke.yaml`` (fake) and ``mrlite run recipes/tiny.yaml`` (hf + trl).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from mrlite.backends.base import Completion, Generator, GenRequest, Sampling, Trainer, TrainResult
from mrlite.errors import MrliteError

if TYPE_CHECKING:
    from mrlite.recipe import Recipe

__all__ = [
    "BackendError",
    "Completion",
    "GenRequest",
    "Generator",
    "Sampling",
    "TrainResult",
    "Trainer",
    "load_generator",
    "load_trainer",
    "missing_packages",
]

GENERATORS = {
    "fake": "mrlite.backends.fake:FakeGenerator",
    "hf": "mrlite.backends.hf:HFGenerator",
    "vllm": "mrlite.backends.vllm:VLLMGenerator",
}
TRAINERS = {
    "fake": "mrlite.backends.fake:FakeTrainer",
    "trl": "mrlite.backends.trl:TRLTrainer",
    "unsloth": "mrlite.backends.unsloth:UnslothTrainer",
}
NEEDS = {
    "fake": ([], ""),
    "hf": (["torch", "transformers"], "pip install 'mrlite[hf]'"),
    "trl": (["torch", "transformers", "peft", "trl", "datasets"], "pip install 'mrlite[hf]'"),
    "vllm": (["torch", "transformers", "vllm"], "pip install 'mrlite[gpu]'"),
    "unsloth": (["torch", "unsloth", "trl", "peft", "bitsandbytes"], "pip install 'mrlite[gpu]'"),
}


class BackendError(MrliteError, RuntimeError):
    """A backend cannot be used here (missing extra, no GPU). One line with the fix."""


def _available(pkg: str) -> bool:
    try:
        return importlib.util.find_spec(pkg) is not None
    except (ImportError, ValueError):
        return False


def missing_packages(name: str) -> list[str]:
    pkgs, _ = NEEDS.get(name, ([], ""))
    return [p for p in pkgs if not _available(p)]


def _load(table: dict[str, str], name: str):
    if name not in table:
        raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(table)}")
    missing = missing_packages(name)
    if missing:
        raise BackendError(f"backend {name!r} needs {', '.join(missing)}: {NEEDS[name][1]}")
    mod, cls = table[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def load_generator(recipe: Recipe, model: str) -> Generator:
    """Build the recipe's generator for ``model`` (a resolved path or Hub id)."""
    return _load(GENERATORS, recipe.backends.generator)(recipe, model)


def load_trainer(recipe: Recipe, iteration: int) -> Trainer:
    """Build the recipe's trainer for ``iteration`` (0 = EFT SFT)."""
    return _load(TRAINERS, recipe.backends.trainer)(recipe, iteration)
