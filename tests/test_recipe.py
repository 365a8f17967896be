"""Recipe loading: every bundled recipe validates, ``--set`` overrides, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mrlite.recipe import (
    Recipe, RecipeError, apply_overrides, bundled_recipes_dir, load_recipe, per_iter, recipe_from_dict,
    resolve_recipe_path,
)

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
BUNDLED = sorted((REPO / "recipes").rglob("*.yaml"))


def test_bundled_recipes_found() -> None:
    # the package locates the recipes shipped next to it, and a bare name resolves to one of them
    assert bundled_recipes_dir().resolve() == (REPO / "recipes").resolve()
    for name in ("smoke", "tiny", "paper"):
        assert resolve_recipe_path(name).resolve() == (REPO / "recipes" / f"{name}.yaml").resolve()


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_bundled_recipe_validates(path: Path) -> None:
    r = load_recipe(path)
    assert isinstance(r, Recipe)
    # the printed form is itself a valid recipe that loads back to the same values
    assert recipe_from_dict(yaml.safe_load(r.to_yaml())) == r


def test_smoke_values() -> None:
    r = load_recipe(SMOKE)
    assert (r.name, r.model.base, r.loop.iterations, r.actor.n, r.judge.n) == ("smoke", "fake", 2, 4, 5)
    assert (r.backends.generator, r.backends.trainer) == ("fake", "fake")
    assert r.pairs.rho == [0.0, 0.32]


def test_bundled_name_resolves() -> None:
    assert load_recipe("smoke") == load_recipe(SMOKE)


def get(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


GOOD = [
    (["actor.n=2"], "actor.n", 2),
    (["actor.temperature=0.5"], "actor.temperature", 0.5),
    (["train.learning_rate=1e-5"], "train.learning_rate", 1e-5),
    (["pairs.rho=[0,0.1]"], "pairs.rho", [0.0, 0.1]),
    (["pairs.max_chosen_chars=[null]"], "pairs.max_chosen_chars", [None]),
    (["data.max_prompt_chars=null"], "data.max_prompt_chars", None),
    (["data.max_prompt_chars="], "data.max_prompt_chars", None),
    (["meta_judge.enabled=false"], "meta_judge.enabled", False),
    (["data.shuffle=no"], "data.shuffle", False),
    (["meta_judge.budget=6"], "meta_judge.budget", 6),
    (["meta_judge.budget=all"], "meta_judge.budget", "all"),
    (["backends.fake.first_position_bias=0.5"], "backends.fake.first_position_bias", 0.5),
    (["train.lora.r=8"], "train.lora.r", 8),  # section absent from smoke.yaml: created
    (["train.trl_args.warmup_ratio=0.1"], "train.trl_args", {"warmup_ratio": 0.1}),
    (["actor.n=2", "actor.n=3"], "actor.n", 3),  # the last one wins
    (["name=my-run"], "name", "my-run"),
    (["model.revision= main "], "model.revision", "main"),
    (["data.prompts=a=b.jsonl"], "data.prompts", "a=b.jsonl"),  # split at the first '='
    (["judge.n=1", "meta_judge.enabled=false"], "judge.n", 1),
    (["loop.iterations=3", "meta_judge.iterations=[1,3]"], "meta_judge.iterations", [1, 3]),
]


@pytest.mark.parametrize(("sets", "field", "expected"), GOOD, ids=[" ".join(s) for s, _, _ in GOOD])
def test_good_overrides(sets: list[str], field: str, expected: object) -> None:
    value = get(load_recipe(SMOKE, sets), field)
    assert value == expected
    assert type(value) is type(expected)


def test_override_leaves_other_fields() -> None:
    base, r = load_recipe(SMOKE), load_recipe(SMOKE, ["actor.n=2"])
    assert r.model_dump() | {"actor": None} == base.model_dump() | {"actor": None}
    assert r.actor.temperature == base.actor.temperature


def test_apply_overrides_does_not_need_the_section() -> None:
    assert apply_overrides({"name": "x"}, ["a.b.c=1"]) == {"name": "x", "a": {"b": {"c": 1}}}


def test_per_iter_last_value_repeats() -> None:
    assert [per_iter([0.0, 0.32], t) for t in (1, 2, 3, 4)] == [0.0, 0.32, 0.32, 0.32]
    assert per_iter([], 1) is None


BAD_SETS = [
    (["actor.temprature=1"], "actor.temprature: unknown key; did you mean 'temperature'?"),
    (["train.lora.rr=3"], "train.lora.rr: unknown key; did you mean 'r'?"),
    (["modle.base=x"], "modle: unknown key; did you mean 'model'?"),
    (["bogus.x=1"], "bogus: unknown key; known keys: name, model"),
    (["actor.n=abc"], "actor.n: Input should be a valid integer"),
    (["actor.n=1.5"], "actor.n: Input should be a valid integer"),
    (["actor=3"], "actor: Input should be a valid dictionary"),
    (["actor.n=-1"], "actor.n: Input should be greater than or equal to 1 (got -1)"),
    (["actor.n=0"], "actor.n: Input should be greater than or equal to 1"),
    (["judge.n=1"], "judge.n must be >= 2 when meta_judge.enabled"),
    (["pairs.rho=[0.6]"], "pairs.rho: every rho must lie in [0, 0.5], got 0.6"),
    (["pairs.rho=[0, 0.51]"], "every rho must lie in [0, 0.5], got 0.51"),
    (["pairs.rho=[-0.1]"], "every rho must lie in [0, 0.5]"),
    (["pairs.rho=[]"], "pairs.rho: needs at least one value"),
    (["meta_judge.iterations=[0, 1]"], "meta_judge.iterations [0]: iterations are numbered from 1"),
    (["meta_judge.budget=1"], "meta_judge.budget: must be 'all' or an integer >= 2"),
    (["meta_judge.budget=abc"], "meta_judge.budget: Input should be 'all'"),
    (["model.base=null"], "model.base: Input should be a valid string"),
    (["loop.iterations=0"], "loop.iterations: Input should be greater than or equal to 1"),
    (["judge.score_range=[5, 0]"], "judge.score_range must be (low, high) with low < high"),
    (["backends.fake.first_position_bias=2"], "backends.fake.first_position_bias: Input should be less than"),
    (["backends.generator=hf"], "backends.generator and backends.trainer must both be 'fake' or both be real"),
    (["backends.generator=hf", "backends.trainer=trl"], "model.base: fake goes with backends.generator: fake"),
    (["model.base=some/model"], "model.base: fake goes with backends.generator: fake"),
    (["backends.generator=tpu"], "backends.generator: Input should be 'fake', 'hf' or 'vllm'"),
    (["name=a b"], "name: must be a non-empty name without slashes"),
    (["actor.n"], "--set 'actor.n': expected KEY=VALUE"),
    (["=3"], "--set '=3': empty key"),
    (["actor..n=3"], "--set 'actor..n=3': empty key"),
    (["actor.n=[1"], "--set 'actor.n=[1': value is not valid YAML"),
    (["name.x=1"], "--set 'name.x=1': name is not a section"),
    (["pairs.rho.x=1"], "--set 'pairs.rho.x=1': pairs.rho is not a section"),
]


@pytest.mark.parametrize(("sets", "fragment"), BAD_SETS, ids=[" ".join(s) for s, _ in BAD_SETS])
def test_bad_overrides(sets: list[str], fragment: str) -> None:
    with pytest.raises(RecipeError) as e:
        load_recipe(SMOKE, sets)
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg


def test_type_tags_are_not_part_of_the_field_path() -> None:
    with pytest.raises(RecipeError) as e:
        load_recipe(SMOKE, ["meta_judge.budget=abc"])
    assert "budget.int" not in str(e.value)
    assert "literal" not in str(e.value)


def test_every_problem_is_listed_in_one_line() -> None:
    with pytest.raises(RecipeError) as e:
        load_recipe(SMOKE, ["actor.n=-1", "judge.temprature=1"])
    msg = str(e.value)
    assert msg.startswith(f"{SMOKE}: ")
    assert "actor.n: Input should be greater than or equal to 1" in msg
    assert "judge.temprature: unknown key; did you mean 'temperature'?" in msg
    assert "\n" not in msg


BAD_FILES = [
    ("missing_base.yaml", "name: x\nmodel: {}\n", "model.base: required field is missing"),
    ("missing_model.yaml", "name: x\n", "model: required field is missing"),
    ("no_name.yaml", "model: {base: fake}\nbackends: {generator: fake, trainer: fake}\n",
     "name: required field is missing"),
    ("empty.yaml", "", "the file is empty; see `mrlite recipes smoke`"),
    ("comments.yaml", "# nothing but a comment\n", "the file is empty"),
    ("flow.yaml", "name: [\n", "not valid YAML"),
    ("mapping.yaml", "a: b: c\n", "not valid YAML: mapping values are not allowed here"),
    ("list.yaml", "- name: x\n- model: y\n", "the top level must be a mapping of sections"),
    ("scalar.yaml", "42\n", "the top level must be a mapping of sections"),
    ("unknown_section.yaml", "name: x\nmodel: {base: fake}\nbackends: {generator: fake, trainer: fake}\nfoo: 1\n",
     "foo: unknown key; known keys: name, model"),
    ("tabs.yaml", "name: x\n\tmodel: y\n", "not valid YAML"),
]


@pytest.mark.parametrize(("fname", "text", "fragment"), BAD_FILES, ids=[f for f, _, _ in BAD_FILES])
def test_bad_files(tmp_path: Path, fname: str, text: str, fragment: str) -> None:
    p = tmp_path / fname
    p.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert fragment in msg
    assert msg.startswith(str(p))  # names the file
    assert "\n" not in msg


def test_set_cannot_rescue_a_list_file(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- a\n")
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(p, ["name=x"])


@pytest.mark.parametrize(("path", "fragment"), [
    ("recipes/smok.yaml", "recipe file not found: recipes/smok.yaml; did you mean smoke (recipes/smoke.yaml)?"),
    ("smok", "recipe file not found: smok; did you mean smoke (recipes/smoke.yaml)?"),
    ("zzzzqqq.yaml", "recipe file not found: zzzzqqq.yaml; bundled: "),
])
def test_missing_file(path: str, fragment: str) -> None:
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_directory_is_not_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path)


def test_short_loop_ignores_later_judge_iterations() -> None:
    r = load_recipe(REPO / "recipes" / "tiny.yaml", ["loop.iterations=1"])
    assert r.loop.iterations == 1 and r.meta_judge.iterations == [1, 2]


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.joinpath("recipes").rglob("*.yaml")),
                         ids=lambda p: p.stem)
def test_recipe_yaml_round_trip_keeps_every_value(path, tmp_path):
    """recipe.yaml (what workers and `mrlite status` read) must reload to the same values, types included:
    a default [2500, null] dumped as 2500.0 once made `status` call finished pairs stages stale."""
    from mrlite.recipe import load_recipe

    r = load_recipe(path)
    p = tmp_path / "recipe.yaml"
    p.write_text(r.to_yaml(), encoding="utf-8")
    again = load_recipe(p)
    assert json.dumps(again.model_dump(mode="json"), sort_keys=True) == json.dumps(r.model_dump(mode="json"), sort_keys=True)


# ---------------------------------------------------------------------------------------------------- extends


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_ablations_are_overlays_of_paper() -> None:
    paper = load_recipe("paper").model_dump()
    for name, changed in (("self_rewarding_lc", {("meta_judge", "enabled"): False}),
                          ("no_length_control", {("pairs", "rho"): [0.0]})):
        child = load_recipe(name).model_dump()
        assert child["name"] == name
        for (sec, key), value in changed.items():
            assert child[sec][key] == value
            child[sec][key] = paper[sec][key]
        child["name"] = "paper"
        assert child == paper
        assert len((REPO / "recipes" / f"{name}.yaml").read_text().split("\nextends:")[1].splitlines()) <= 5


def test_extends_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", {"name": "base", "model": {"base": "fake", "max_model_len": 1024},
                                    "pairs": {"rho": [0.0, 0.3]}, "backends": {"generator": "fake", "trainer": "fake"}})
    child = _write(tmp_path / "child.yaml", {"extends": "base.yaml", "name": "child", "model": {"max_model_len": 512},
                                             "pairs": {"rho": [0.1]}})
    r = load_recipe(child, ["actor.n=3"])
    assert (r.name, r.model.base, r.model.max_model_len, r.pairs.rho, r.actor.n) == ("child", "fake", 512, [0.1], 3)
    assert "extends" not in r.to_yaml()


def test_extends_does_not_inherit_the_name(tmp_path: Path) -> None:
    child = _write(tmp_path / "child.yaml", {"extends": "smoke", "actor": {"n": 3}})
    with pytest.raises(RecipeError, match=r"child.yaml: name: required field is missing"):
        load_recipe(child)


def test_extends_cycle_is_one_line(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", {"extends": "b.yaml", "name": "a"})
    _write(tmp_path / "b.yaml", {"extends": "a.yaml", "name": "b"})
    with pytest.raises(RecipeError) as e:
        load_recipe(tmp_path / "a.yaml")
    msg = str(e.value)
    assert "\n" not in msg and "extends chain has a cycle" in msg and "remove one extends line" in msg


def test_extends_unknown_parent_is_one_line(tmp_path: Path) -> None:
    child = _write(tmp_path / "c.yaml", {"extends": "papr", "name": "c"})
    with pytest.raises(RecipeError) as e:
        load_recipe(child)
    assert str(e.value) == f"{child}: extends 'papr': no such recipe file or bundled recipe; did you mean paper?"


def test_extends_depth_is_bounded(tmp_path: Path) -> None:
    _write(tmp_path / "r0.yaml", {"name": "r0", "model": {"base": "fake"}})
    for i in range(1, 12):
        _write(tmp_path / f"r{i}.yaml", {"extends": f"r{i - 1}.yaml", "name": f"r{i}"})
    with pytest.raises(RecipeError, match="extends chain is deeper than 8 recipes; flatten it"):
        load_recipe(tmp_path / "r11.yaml")


def test_prompt_source_and_growing_exclude_each_other() -> None:
    with pytest.raises(RecipeError) as e:
        load_recipe("paper", ["data.prompts=my.jsonl", "data.generate.n=100"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "data: names both a prompt source (prompts: my.jsonl) and the growing method (generate)" in msg
    # a paper-family recipe takes a file instead of growing with one override
    assert load_recipe("paper", ["data.prompts=my.jsonl"]).data.growing() is None
    assert load_recipe("paper").data.growing().n == 20000
