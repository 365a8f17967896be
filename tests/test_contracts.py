"""Contract tests: every keyword mrlite passes to vLLM, TRL, peft and unsloth exists in the real package.

The GPU backends are otherwise tested against hand-made fakes, which cannot see API drift. Here the keywords
come from the same functions the backends call (``engine_kwargs``, ``sampling_kwargs``, ...), never copied into
the test, and are checked against the real signatures:

- TRL and peft: imported (they install on CPU; the CPU set has TRL 1.16, the GPU set pins 1.15).
- vLLM and unsloth: they pull CUDA torch and do not install here, so their signatures are read with ``ast``
  from the installed package's source if present, else from a wheel found in ``$MRLITE_WHEELS`` (directories,
  ``os.pathsep``-separated; default ``/tmp/wheels``), e.g. after
  ``pip download --no-deps -d /tmp/wheels vllm==0.33.0 unsloth==2026.10.9``. Without either the test is skipped
  with that reason (``-ra`` prints it).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import os
import zipfile
from functools import cache
from pathlib import Path

import pytest

import mrlite
from mrlite.backends.base import GenRequest, Sampling

REPO = Path(__file__).resolve().parents[1]
PINS = {"vllm": "0.33.0", "unsloth": "2026.10.9", "trl": "1.15.0"}


def recipe(name: str, *sets: str) -> mrlite.Recipe:
    return mrlite.load_recipe(REPO / "recipes" / f"{name}.yaml", list(sets))


# --------------------------------------------------------------------------------------------------------------
# reading a package's source without importing it


def wheel_dirs() -> list[Path]:
    spec = os.environ.get("MRLITE_WHEELS", "/tmp/wheels")
    return [Path(d) for d in spec.split(os.pathsep) if d]


class Source:
    """Source files of one package: an installed copy (never imported) or a wheel (read from the zip)."""

    def __init__(self, package: str):
        self.package, self.where = package, None
        self._dir: Path | None = None
        self._zip: zipfile.ZipFile | None = None
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            self._dir = Path(next(iter(spec.submodule_search_locations)))
            self.where = f"installed {self._dir}"
            return
        for d in wheel_dirs():
            wheels = sorted(d.glob(f"{package}-{PINS.get(package, '')}*.whl")) or sorted(d.glob(f"{package}-*.whl"))
            if wheels:
                self._zip = zipfile.ZipFile(wheels[-1])
                self.where = f"wheel {wheels[-1].name}"
                return

    def read(self, rel: str) -> str:
        if self._dir is not None:
            return (self._dir / rel).read_text(encoding="utf-8")
        assert self._zip is not None
        return self._zip.read(f"{self.package}/{rel}").decode("utf-8")

    @cache  # noqa: B019 - one parse per file per session
    def tree(self, rel: str) -> ast.Module:
        return ast.parse(self.read(rel))


@cache
def source(package: str) -> Source:
    src = Source(package)
    if src.where is None:
        pytest.skip(f"{package} is not installed and no {package} wheel in {os.pathsep.join(map(str, wheel_dirs()))}"
                    f" (pip download --no-deps -d /tmp/wheels {package}=={PINS.get(package, '')}); contract not checked")
    return src


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found")


def class_fields(tree: ast.Module, cls: str) -> set[str]:
    """Annotated fields of a dataclass / msgspec Struct (what its constructor accepts)."""
    return {n.target.id for n in _class(tree, cls).body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and not n.target.id.startswith("_")
            and "ClassVar" not in ast.unparse(n.annotation)}


def method_params(tree: ast.Module, cls: str, method: str) -> tuple[list[str], bool]:
    """(parameter names in order, without self; whether it takes **kwargs) of ``cls.method`` (first definition)."""
    for node in _class(tree, cls).body:
        if isinstance(node, ast.FunctionDef) and node.name == method:
            a = node.args
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
            return [n for n in names if n not in ("self", "cls")], a.kwarg is not None
    raise AssertionError(f"{cls}.{method} not found")


def top_level(tree: ast.Module) -> set[str]:
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}


def accepted(params: list[str], fields: set[str] = frozenset()) -> set[str]:
    return set(params) | set(fields)


# --------------------------------------------------------------------------------------------------------------
# vLLM 0.33


VLLM_CASES = [  # (recipe, card memory, bf16, cuda): every branch of engine_kwargs
    ("paper", 23.6, True, True), ("paper_80gb", 79.2, True, True), ("colab_t4", 15.0, False, True),
    ("paper", None, True, False), ("tiny", None, True, False),
]


@pytest.mark.parametrize("name, gib, bf16, cuda", VLLM_CASES)
def test_vllm_engine_kwargs_exist(name, gib, bf16, cuda) -> None:
    from mrlite.backends.vllm import engine_kwargs

    src = source("vllm")
    params, var_kw = method_params(src.tree("entrypoints/llm.py"), "LLM", "__init__")
    assert var_kw, "LLM(...) no longer forwards **kwargs to EngineArgs"
    engine_fields = class_fields(src.tree("engine/arg_utils.py"), "EngineArgs")
    r = recipe(name, "backends.generator=vllm", "model.dtype=auto")
    kw = engine_kwargs(r, "/models/m", gib, bf16=bf16, weights_gib=3.0, cuda=cuda, env={})
    unknown = set(kw) - accepted(params, engine_fields)
    assert not unknown, f"vllm {src.where}: LLM/EngineArgs take no {sorted(unknown)}"


def test_vllm_sampling_params_exist() -> None:
    from mrlite.backends.vllm import (
        STRUCTURED_FIELD, force_regex, force_sampling_kwargs, sampling_kwargs, split_structured,
    )

    src = source("vllm")
    tree = src.tree("sampling_params.py")
    sp_fields, so_fields = class_fields(tree, "SamplingParams"), class_fields(tree, "StructuredOutputsParams")
    req = GenRequest(id="p", messages=[{"role": "user", "content": "x"}], n=3, seed=7, force="score")
    kw = sampling_kwargs(req, Sampling(0.8, 0.95, 64), 64, [2, 9], regex=force_regex("score", (0.0, 5.0)))
    plain, structured = split_structured(kw)
    assert structured and set(structured) <= so_fields, sorted(set(structured) - so_fields)
    assert STRUCTURED_FIELD in sp_fields
    for k in (plain, force_sampling_kwargs([5, 6])):
        assert set(k) <= sp_fields, f"vllm {src.where}: SamplingParams has no {sorted(set(k) - sp_fields)}"


def test_vllm_chat_generate_and_outputs() -> None:
    from mrlite.backends.vllm import CHAT_KWARGS, GENERATE_KWARGS

    src = source("vllm")
    llm = src.tree("entrypoints/llm.py")
    chat, _ = method_params(llm, "LLM", "chat")
    gen, _ = method_params(llm, "LLM", "generate")
    assert chat[:2] == ["messages", "sampling_params"] and gen[:2] == ["prompts", "sampling_params"]
    assert set(CHAT_KWARGS) <= set(chat) and set(GENERATE_KWARGS) <= set(gen)
    method_params(llm, "LLM", "get_tokenizer")
    out = src.tree("outputs.py")
    assert {"index", "text", "token_ids"} <= class_fields(out, "CompletionOutput")
    req_params, _ = method_params(out, "RequestOutput", "__init__")
    assert {"prompt_token_ids", "outputs"} <= set(req_params)
    assert "cleanup_dist_env_and_memory" in top_level(src.tree("distributed/parallel_state.py"))


def test_vllm_environment_variables_exist() -> None:
    from mrlite.backends.vllm import BATCH_INVARIANT_ENV, engine_env

    src = source("vllm")
    envs = src.read("envs.py")
    names = set(engine_env(recipe("paper", "backends.vllm.batch_invariant=true"), cuda=False))
    names |= {BATCH_INVARIANT_ENV, "VLLM_CPU_KVCACHE_SPACE"}
    for name in names:
        assert f'"{name}": lambda' in envs, f"vllm {src.where}: no environment variable {name}"


# --------------------------------------------------------------------------------------------------------------
# keywords of calls written out in mrlite's own source (trainer constructors, LoraConfig, save_pretrained)


def call_keywords(module: str, name: str) -> set[str]:
    """Keyword names of every call to ``name`` (a function or an attribute) in ``mrlite/<module>`` (not ``**``)."""
    tree = ast.parse((REPO / "mrlite" / module).read_text(encoding="utf-8"))
    out: set[str] = set()
    found = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            callee = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if callee == name:
                found = True
                out |= {k.arg for k in node.keywords if k.arg is not None}
    assert found, f"no call to {name} in mrlite/{module}"
    return out


# --------------------------------------------------------------------------------------------------------------
# TRL (installed; and the GPU set's 1.15 from its wheel when present) and peft


RECIPES = ("tiny", "paper", "paper_80gb", "colab_t4")


def trl_config_keys(kind: str, tmp_path: Path, monkeypatch) -> set[str]:
    """Every DPOConfig/SFTConfig field either trainer backend sets, from their own builders."""
    import types

    import mrlite.hardware.gpu
    from mrlite.backends import train_core as core
    from mrlite.backends.trl import TRLTrainer
    from mrlite.backends.unsloth import UnslothTrainer
    from trl import DPOConfig, SFTConfig

    fake = types.ModuleType("unsloth")
    fake.is_bfloat16_supported = lambda: True
    monkeypatch.setitem(__import__("sys").modules, "unsloth", fake)
    monkeypatch.setattr(mrlite.hardware.gpu, "gpus", lambda use_torch=True: [mrlite.hardware.gpu.GPUInfo(0, "H100", 79.2, (9, 0))])
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text('{"vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32, '
                                      '"num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336}')
    keys: set[str] = set()
    cls = DPOConfig if kind == "dpo" else SFTConfig
    for name in RECIPES:
        r = recipe(name)
        keys |= set(core.recipe_args(r, kind, 1, tmp_path)) | set(core.trl_args(r, kind))
        keys |= set(TRLTrainer(r, 1)._backend_args(cls, kind, r.train.load_in_4bit))
        u = object.__new__(UnslothTrainer)
        u.recipe, u.iteration, u.cfg, u.seed = r, 1, core.section_cfg(r, kind), 1
        backend = u._backend_args(kind, base)
        if kind == "dpo":
            assert "precompute_ref_batch_size" in backend  # the memory-plan batch reaches the config
        keys |= set(backend)
    return keys


@pytest.mark.parametrize("kind", ["dpo", "sft"])
def test_trl_config_fields_exist(kind, tmp_path, monkeypatch) -> None:
    pytest.importorskip("trl")
    import trl

    keys = trl_config_keys(kind, tmp_path, monkeypatch)
    cls = trl.DPOConfig if kind == "dpo" else trl.SFTConfig
    fields = {f.name for f in dataclasses.fields(cls)}
    assert not keys - fields, f"trl {trl.__version__} {cls.__name__} has no {sorted(keys - fields)}"


@pytest.mark.parametrize("kind", ["dpo", "sft"])
def test_trl_config_fields_exist_in_the_gpu_pin(kind, tmp_path, monkeypatch) -> None:
    """TRL 1.15 (the GPU set; unsloth caps TRL there) from its wheel: its config fields + TrainingArguments'."""
    pytest.importorskip("trl")
    wheels = sorted(w for d in wheel_dirs() for w in d.glob("trl-1.15*.whl"))
    if not wheels:
        pytest.skip("no trl 1.15 wheel in MRLITE_WHEELS (pip download --no-deps -d /tmp/wheels trl==1.15.0)")
    src = Source.__new__(Source)  # the wheel, not the installed (CPU set) trl
    src.package, src._dir, src._zip, src.where = "trl", None, zipfile.ZipFile(wheels[-1]), f"wheel {wheels[-1].name}"
    from transformers import TrainingArguments

    name, rel = ("DPOConfig", "trainer/dpo_config.py") if kind == "dpo" else ("SFTConfig", "trainer/sft_config.py")
    fields = class_fields(src.tree(rel), name) | class_fields(src.tree("trainer/base_config.py"), "_BaseConfig")
    fields |= {f.name for f in dataclasses.fields(TrainingArguments)}
    keys = trl_config_keys(kind, tmp_path, monkeypatch)
    assert not keys - fields, f"trl 1.15 {name} has no {sorted(keys - fields)}"


def test_trl_trainer_constructor_keywords_exist() -> None:
    pytest.importorskip("trl")
    import trl

    # the TRL backend calls the class it picked (`trainer_cls(...)`); unsloth names each
    for cls in ("DPOTrainer", "SFTTrainer"):
        params = set(inspect.signature(getattr(trl, cls).__init__).parameters)
        for module, callee in (("backends/trl.py", "trainer_cls"), ("backends/unsloth.py", cls)):
            used = call_keywords(module, callee)
            assert used <= params, f"trl {trl.__version__} {cls} takes no {sorted(used - params)} ({module})"


def test_peft_keywords_exist() -> None:
    pytest.importorskip("peft")
    import peft

    lora_fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    used = call_keywords("backends/trl.py", "LoraConfig")
    assert used <= lora_fields, f"peft {peft.__version__} LoraConfig has no {sorted(used - lora_fields)}"
    save = set(inspect.signature(peft.PeftModel.save_pretrained).parameters)
    for module in ("backends/trl.py", "backends/unsloth.py"):
        used = call_keywords(module, "save_pretrained") - {"save_method"}  # unsloth's merged save is checked below
        assert used <= save, f"peft {peft.__version__} save_pretrained takes no {sorted(used - save)} ({module})"
    assert "selected_adapters" in save
    assert hasattr(peft.PeftModel, "from_pretrained") and hasattr(peft.LoraModel, "merge_and_unload")


# --------------------------------------------------------------------------------------------------------------
# unsloth 2026.10.9 (from its wheel)


def test_unsloth_keywords_exist(tmp_path) -> None:
    from mrlite.backends.unsloth import MERGE_METHOD, load_kwargs, lora_kwargs

    src = source("unsloth")
    loader = src.tree("models/loader.py")
    params, _ = method_params(loader, "FastLanguageModel", "from_pretrained")
    for name in RECIPES:
        r = recipe(name, "model.trust_remote_code=true")
        for cfg in (r.train, r.eft):
            used = set(load_kwargs(r, cfg, tmp_path))
            assert used <= set(params), f"unsloth {src.where}: from_pretrained takes no {sorted(used - set(params))}"
            lora = set(lora_kwargs(cfg, 3))
            peft_params, _ = method_params(src.tree("models/llama.py"), "FastLlamaModel", "get_peft_model")
            assert lora <= set(peft_params), f"unsloth get_peft_model takes no {sorted(lora - set(peft_params))}"
    save = src.read("save.py")
    merged = ast.parse(save)
    fn = next(n for n in merged.body if isinstance(n, ast.FunctionDef)
              and n.name == "unsloth_generic_save_pretrained_merged")
    assert "save_method" in {a.arg for a in (*fn.args.args, *fn.args.kwonlyargs)}
    assert f'"{MERGE_METHOD}"' in save
    init = src.read("__init__.py")
    assert "is_bfloat16_supported" in init and "FastLanguageModel" in init


def test_trl_fused_head_reads_the_compact_switch() -> None:
    """``train_core.compact_lm_head`` flips TRL's own "score labelled positions only" decision on CPU: the installed
    TRL must still take that decision from ``trl.trainer.utils._use_triton`` inside ``add_fused_lm_head``."""
    pytest.importorskip("trl")
    import trl
    from trl.trainer import utils as trl_utils

    src = inspect.getsource(trl_utils.add_fused_lm_head)
    assert callable(getattr(trl_utils, "_use_triton", None)), f"trl {trl.__version__}: no trl.trainer.utils._use_triton"
    assert "compact = _use_triton(" in src and "hidden_states[mask] if compact" in src, (
        f"trl {trl.__version__}: add_fused_lm_head no longer decides 'compact' with _use_triton; revisit "
        "mrlite.backends.train_core.compact_lm_head"
    )
