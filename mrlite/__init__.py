"""mrlite: Meta-Rewarding Language Models (Wu et al. 2024, arXiv 2407.19594) on one GPU or a CPU.

Python API mirroring the CLI: ``mrlite.run(mrlite.load_recipe("recipes/smoke.yaml"))``.
Importing mrlite never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from mrlite.recipe import Recipe, RecipeError, load_recipe


def run(recipe: Recipe, out=None, **kwargs):
    """Run (or resume) the whole loop; see ``mrlite.loop.run`` for the options."""
    from mrlite.loop import run as _run

    return _run(recipe, out=out, **kwargs)


__all__ = ["Recipe", "RecipeError", "__version__", "load_recipe", "run"]
