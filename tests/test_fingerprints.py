"""Every setting a stage reads is part of its fingerprint: change each recipe field in turn (found by walking the
recipe's pydantic model, so a new field is covered the day it is added) and check exactly which stages become
stale. A stage counts as affected when its marker keys (input fingerprints, config hash) or whether it applies
change. Four base recipes make every field matter somewhere: fake backend with a source pool or a grown one,
HF generation + TRL training, vLLM generation + unsloth training."""

from __future__ import annotations

import copy
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

import mrlite
from mrlite.loop import plan
from mrlite.recipe import Recipe, RecipeError, recipe_from_dict
from mrlite.rundir import RunDir
from mrlite.stages import StageContext, expected_marker_keys, module

REPO = Path(__file__).resolve().parents[1]
GEN = {"sample", "judge", "meta_judge"}
COMMON = ["eft.enabled=true", "loop.iterations=2"]
BASES = {
    "fake": [*COMMON],
    "fake-grow": [*COMMON, "data.prompts=generate"],
    "hf": [*COMMON, "model.base=org/model", "backends.generator=hf", "backends.trainer=trl"],
    "vllm-grow": [*COMMON, "data.prompts=generate", "model.base=org/model", "backends.generator=vllm",
                  "backends.trainer=unsloth"],
}


def expected(path: str, base: str) -> set[str]:
    """The stages a change of ``path`` must make stale on ``base``. Rules go from specific to general; a new
    field falls under its section's rule."""
    grow = base.endswith("grow")
    gen = GEN | ({"prompts"} if grow else set())  # the stages that generate (the grown pool's writer too)
    active_gen = {"fake": "fake", "fake-grow": "fake", "hf": "hf", "vllm-grow": "vllm"}[base]
    rules: list[tuple[str, set[str]]] = [
        ("name", set()),  # the run's identity: run.json refuses another recipe's directory
        ("loop.iterations", set()),  # adds or removes iterations; existing stages stay
        ("loop.isolate", set()),  # where a stage runs, not what it computes
        ("loop.seed", {"eft", "sample", "judge", "meta_judge", "pairs", "train"} | ({"prompts"} if grow else set())),
        ("loop.chunk_size", gen),  # batch composition of every generation stage
        ("data.prompts", {"prompts"}),
        ("data.column", set() if grow else {"prompts"}),
        ("data.split", set() if grow else {"prompts"}),
        ("data.max_prompt_chars", {"prompts"}),
        ("data.generate.max_requests", set()),  # only when to give up; a finished pool does not depend on it
        ("data.generate.", {"prompts"}),
        ("data.", {"sample"}),  # prompts_per_iteration, shuffle: the slices
        ("model.", {"eft", "train"} | gen),
        ("eft.enabled", {"eft", "sample", "judge", "meta_judge", "train"}),  # iteration 1 starts from another model
        ("eft.", {"eft"}),
        ("actor.", {"sample"}),
        ("judge.", {"judge"}),
        ("meta_judge.enabled", {"meta_judge", "pairs"}),
        ("meta_judge.iterations", {"meta_judge", "pairs"}),
        ("meta_judge.position_weights", {"meta_judge", "pairs"}),
        ("meta_judge.", {"meta_judge"}),
        ("pairs.", {"pairs"}),
        ("guardrails.", {"pairs"}),
        ("train.load_in_4bit", {"eft", "train"}),  # the bug this table was written for: EFT trains on 4-bit too
        ("train.trl_args", {"train"} | ({"eft"} if base == "vllm-grow" else set())),  # unsloth passes them to SFT
        ("train.", {"train"}),
        ("backends.generator", gen),
        ("backends.trainer", {"eft", "train"}),
        ("backends.hf.workers", set()),  # how many processes share the chunks: rows are seeded per row, not per worker
        ("backends.vllm.data_parallel_size", set()),  # the same for vLLM engines
        (f"backends.{active_gen}.", gen),
        ("backends.", set()),  # an inactive backend's settings
        ("log.", set()),  # trackers and their project name: where metrics go, not what a stage computes
    ]
    for prefix, stages in rules:
        if path == prefix or (prefix.endswith(".") and path.startswith(prefix)):
            return stages
    raise AssertionError(f"no fingerprint rule covers recipe field {path}; add one to expected()")


def _model_of(annotation) -> type[BaseModel] | None:
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def leaves(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, typing.Any]]:
    out = []
    for name, f in model.model_fields.items():
        sub = _model_of(f.annotation)
        if sub is not None:
            out += leaves(sub, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", f.annotation))
    return out


def _get(data: dict, path: str):
    for p in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(p)
    return data


def _candidates(value, annotation) -> list:
    """Other values for a field, most plausible first (``mutate`` keeps the first that validates)."""
    lits = [x for t in (annotation, *typing.get_args(annotation)) if typing.get_origin(t) is typing.Literal
            for x in typing.get_args(t)]
    if isinstance(value, bool):
        out = [not value]
    elif isinstance(value, int):
        out = [value + 1, value - 1]
    elif isinstance(value, float):
        out = [value * 0.9, value + 0.05, value * 2, value + 1]
    elif isinstance(value, str):
        out = [*lits, value + "-changed", 10]
    elif isinstance(value, list) and len(value) == 2 and all(isinstance(x, int | float) for x in value):
        out = [[value[0], value[1] + 5], value[:1]]  # a (low, high) pair, or a per-iteration list
    elif isinstance(value, list):
        out = [value[:1]] if len(value) > 1 else [value + value, [1]]
    elif isinstance(value, dict):
        out = [{**value, "changed": 1}]
    elif value is None:
        out = [*lits, 100, 0.5, "changed", 2]
    else:
        raise AssertionError(f"no candidate values for {value!r} ({annotation})")
    return [c for c in out if c != value]


EXTRA_CANDIDATES = {"log.report_to": ["tensorboard"]}
"""Fields whose valid values no generic rule guesses (a tracker name)."""


def _default(path: str):
    model: type[BaseModel] = Recipe
    *head, last = path.split(".")
    for p in head:
        model = _model_of(model.model_fields[p].annotation)
    return model.model_fields[last].get_default(call_default_factory=True)


def mutate(base: dict, path: str, annotation) -> Recipe | None:
    """``base`` with ``path`` changed to the first candidate value that validates (None if none does)."""
    parts = path.split(".")
    value = _get(base, path)
    if value is None:  # a field left out of dumps while it holds its default (e.g. train.method): use the default
        value = _default(path)
    for cand in [*EXTRA_CANDIDATES.get(path, []), *_candidates(value, annotation)]:
        data = copy.deepcopy(base)
        node = data
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        node[parts[-1]] = cand
        try:
            return recipe_from_dict(data)
        except RecipeError:
            continue
    return None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished fake run (EFT on, 2 iterations): the model lineages the policy fingerprints read."""
    out = tmp_path_factory.mktemp("fp") / "run"
    mrlite.run(mrlite.load_recipe("smoke", BASES["fake"]), out=out)
    return out


def _keys(recipe: Recipe, rd: RunDir) -> dict[tuple[int, str], tuple]:
    out = {}
    for t, s in plan(recipe):
        ctx = StageContext(recipe, rd, t)
        applies = module(s).applies(ctx)
        k = expected_marker_keys(ctx, s) if applies else None
        out[(t, s)] = (applies, k and k["config_hash"], k and k["inputs"])
    return out


def affected(base: Recipe, changed: Recipe, rd: RunDir) -> set[str]:
    a, b = _keys(base, rd), _keys(changed, rd)
    return {s for (t, s), v in a.items() if b.get((t, s)) != v}


def test_every_recipe_field_is_in_the_fingerprint_of_exactly_the_stages_that_read_it(run_dir: Path) -> None:
    rd = RunDir(run_dir)
    covered, wrong = set(), []
    fields = leaves()
    for base_name, sets in BASES.items():
        base = mrlite.load_recipe("smoke", sets)
        data = base.model_dump(mode="json")
        for path, annotation in fields:
            if path.startswith("data.generate.") and base.data.growing() is None:
                continue  # only read when the pool is grown (the -grow bases)
            changed = mutate(data, path, annotation)
            if changed is None or changed == base:
                continue
            covered.add(path)
            got, want = affected(base, changed, rd), expected(path, base_name)
            if got != want:
                wrong.append(f"{base_name}: {path} -> stale {sorted(got)}, expected {sorted(want)}")
    assert wrong == []
    assert covered == {p for p, _ in fields}, f"never exercised: {sorted({p for p, _ in fields} - covered)}"


def test_load_in_4bit_makes_eft_stale(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    with pytest.raises(mrlite.rundir.RunDirError, match=r"eft was computed before but its recipe settings changed"):
        mrlite.run(mrlite.load_recipe("smoke", [*BASES["fake"], "train.load_in_4bit=true"]), out=out)


def test_leaves_walks_optional_sections() -> None:
    paths = {p for p, _ in leaves()}
    assert {"data.generate.n", "data.generate.similarity_threshold", "train.lora.r", "backends.vllm.quantization",
            "guardrails.mode"} <= paths
