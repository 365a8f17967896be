"""Forced completion picks by one rule on every backend (``forcing.pick_choice``): sampled from the allowed values'
softmax at the role's temperature, the argmax at temperature 0. (HF: tests/test_hf_backend.py; vLLM:
tests/test_vllm_backend.py; here the rule itself and the fake backend.)"""

from __future__ import annotations

import math
from collections import Counter

import pytest

import mrlite
from mrlite.backends.base import GenRequest, Sampling
from mrlite.backends.fake import FakeGenerator
from mrlite.backends.forcing import pick_choice
from mrlite.core.parsing import parse_score


def test_argmax_at_temperature_zero() -> None:
    assert pick_choice([0.1, 2.0, 2.0, -1.0], 0.0, 0.999) == 1  # first of the tied maxima, u ignored


def test_sampling_follows_the_softmax_at_the_temperature() -> None:
    logits, t = [0.0, 1.0, 2.0], 0.5
    w = [math.exp(x / t) for x in logits]
    probs = [x / sum(w) for x in w]
    n = 20000
    counts = Counter(pick_choice(logits, t, (i + 0.5) / n) for i in range(n))  # a uniform grid of u
    assert [counts[i] / n for i in range(3)] == pytest.approx(probs, abs=1e-3)


def _forced_scores(temperature: float) -> list[float]:
    recipe = mrlite.load_recipe("smoke", ["backends.fake.unparseable_share=1.0"])  # every judgment needs forcing
    gen = FakeGenerator(recipe, "fake")
    req = GenRequest(id="r1", messages=[{"role": "user", "content": "judge"}], n=40, seed=0, role="judge",
                     force="score")
    (row,) = gen.generate([req], Sampling(temperature, 1.0, 64))
    assert all(c.forced for c in row)
    return [parse_score(c.text) for c in row]


def test_fake_backend_forces_by_the_same_rule() -> None:
    greedy = _forced_scores(0.0)
    assert len(set(greedy)) == 1  # argmax: the value nearest the response's latent quality, every time
    sampled = _forced_scores(1.0)
    assert len(set(sampled)) > 1 and Counter(sampled).most_common(1)[0][0] == greedy[0]
