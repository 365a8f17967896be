"""HF generator on the tiny random Llama: n samples, seeds, batch independence, forced labels, length caps."""

from __future__ import annotations

import json
import shutil

import pytest
from _models import model_home, tiny_model, tiny_recipe  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

from mrlite.backends.base import GenRequest, Sampling  # noqa: E402
from mrlite.core.parsing import has_score, has_winner, parse_score  # noqa: E402

SAMPLE = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=8)
GREEDY = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=8)


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


REQS = [GenRequest(id=f"r{i}", messages=chat("Tell me something. " * (i + 1)), n=2, seed=100 + i) for i in range(5)]


@pytest.fixture(scope="module")
def gen(tiny_model):
    from mrlite.backends.hf import HFGenerator

    g = HFGenerator(tiny_recipe(backends={"hf": {"batch_size": 16}}), tiny_model)
    yield g
    g.close()


@pytest.fixture(scope="module")
def gen_bf16(tiny_model):
    from mrlite.backends.hf import HFGenerator

    g = HFGenerator(tiny_recipe(backends={"hf": {"batch_size": 16, "dtype": "bfloat16"}}), tiny_model)
    yield g
    g.close()


def texts(out):
    return [[c.text for c in row] for row in out]


def test_n_completions_in_request_order(gen):
    reqs = [GenRequest(id="a", messages=chat("hi"), n=3, seed=1), GenRequest(id="b", messages=chat("yo"), n=0, seed=2),
            GenRequest(id="c", messages=chat("hey there"), n=1, seed=3)]
    out = gen.generate(reqs, SAMPLE)
    assert [len(row) for row in out] == [3, 0, 1]
    for c in out[0] + out[2]:
        assert isinstance(c.text, str) and not c.forced and 1 <= c.n_tokens <= SAMPLE.max_new_tokens
    assert len({c.text for c in out[0]}) == 3  # samples of one request differ (own seeds)


def test_same_seed_same_text(gen):
    a, b = gen.generate(REQS, SAMPLE), gen.generate(REQS, SAMPLE)
    assert texts(a) == texts(b)
    other = [GenRequest(id=r.id, messages=r.messages, n=r.n, seed=r.seed + 1) for r in REQS]
    assert texts(gen.generate(other, SAMPLE)) != texts(a)


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLE], ids=["greedy", "sampled"])
@pytest.mark.parametrize("which", ["gen", "gen_bf16"])
def test_rows_independent_of_batch(which, sampling, request):
    """A request's rows do not depend on batch size or on the other requests in the call.

    Exact on CPU: fp32 uses batched SDPA (padding noise ~1e-5 never flipped a token here), bf16 uses row-wise
    attention (bit-identical rows). benchmarks/hf_generate.py --determinism measures SmolLM2.
    """
    g = request.getfixturevalue(which)
    full = texts(g.generate(REQS, sampling))
    try:
        for bs in (1, 3):
            g.batch_size = bs
            assert texts(g.generate(REQS, sampling)) == full
    finally:
        g.batch_size = 16
    alone = texts(g.generate([REQS[3]], sampling))
    mixed = texts(g.generate([REQS[3], *REQS[:2]], sampling))
    assert alone[0] == mixed[0] == full[3]


def test_forced_score_and_winner(gen):
    from mrlite.backends.hf import row_seed  # noqa: F401  (public helper exists)

    reqs = [GenRequest(id="j", messages=chat("Judge this."), n=3, seed=5, role="judge", force="score"),
            GenRequest(id="m", messages=chat("Which is better?"), n=2, seed=6, role="meta_judge", force="winner"),
            GenRequest(id="a", messages=chat("Answer."), n=1, seed=7)]
    out = gen.generate(reqs, SAMPLE)
    for c in out[0]:  # a random model never writes "Score: k" itself
        assert c.forced and has_score(c.text, 0, 5)
        assert c.text.rsplit("\n", 1)[1] in {f"Score: {k}" for k in range(6)}
        assert 0 <= parse_score(c.text) <= 5
    for c in out[1]:
        assert c.forced and has_winner(c.text) and c.text.rsplit("\n", 1)[1] in {"Winner: Judgement A",
                                                                                  "Winner: Judgement B"}
    assert not out[2][0].forced
    # deterministic: the pick is sampled with the row's own seeded generator
    assert texts(gen.generate(reqs, SAMPLE)) == texts(out)


def test_forced_respects_score_range(tiny_model):
    from mrlite.backends.hf import HFGenerator

    g = HFGenerator(tiny_recipe(judge={"score_range": [1, 3]}), tiny_model)
    f = g._forcing_for("score")
    assert f.texts == ["1", "2", "3"] and len(f.choices) == 3
    out = g.generate([GenRequest(id="j", messages=chat("x"), n=4, seed=1, force="score")], GREEDY)
    assert all(c.forced and parse_score(c.text, low=1, high=3) in (1, 2, 3) for c in out[0])
    g2 = HFGenerator(tiny_recipe(judge={"score_range": [0, 10]}), tiny_model)
    with pytest.raises(ValueError, match=r"not single distinct tokens"):
        g2._forcing_for("score")


def test_text_already_parseable_is_not_forced(gen, monkeypatch):
    import mrlite.backends.hf as hf

    monkeypatch.setattr(hf, "has_score", lambda text, lo, hi: True)
    out = gen.generate([GenRequest(id="j", messages=chat("x"), n=2, seed=1, force="score")], SAMPLE)
    assert not any(c.forced for c in out[0])


def test_max_new_tokens_capped_by_model_len(tiny_model):
    from mrlite.backends.hf import HFGenerator

    g = HFGenerator(tiny_recipe(model={"max_model_len": 64}), tiny_model)
    req = GenRequest(id="r", messages=chat("hello"), n=2, seed=1)
    (plen,) = g.prompt_lengths([req])
    room = 64 - plen
    assert 0 < room < 100
    out = g.generate([req], Sampling(0.8, 1.0, 100))
    assert all(c.n_tokens <= room for c in out[0])
    assert max(c.n_tokens for c in out[0]) == room  # a random model rarely says EOS: it runs to the cap
    forced = g.generate([GenRequest(id="j", messages=chat("hello"), n=1, seed=1, force="score")], Sampling(0.8, 1.0, 100))
    assert forced[0][0].forced and plen + forced[0][0].n_tokens <= 64
    long = GenRequest(id="long", messages=chat("word " * 100), n=1, seed=1)
    with pytest.raises(ValueError, match=r"request long: prompt is .* tokens, leaving no room"):
        g.generate([long], SAMPLE)


def test_prompt_lengths_and_single_bos(gen):
    tok = gen.tokenizer
    ids = tok.apply_chat_template(REQS[0].messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert gen.prompt_lengths(REQS[:1]) == [len(ids)]
    enc = gen._encode(REQS[0].messages)
    assert enc == list(ids) and enc[0] == tok.bos_token_id and enc.count(tok.bos_token_id) == enc.count(
        tok.convert_tokens_to_ids("<|im_start|>"))
    assert tok.decode(enc).count("<|im_start|>assistant") == 1  # generation prompt added once
    assert gen.count_tokens(["hello world", ""]) == [2, 0]


def test_stops_at_eos(gen, monkeypatch):
    import mrlite.backends.hf as hf

    eos = min(gen.eos_ids)
    calls = {"n": 0}

    def fake_sample(logits, gens, temperature, top_p):
        calls["n"] += 1
        tok = torch.full((logits.shape[0],), 42)
        if calls["n"] == 3:
            tok[:] = eos
        return tok

    monkeypatch.setattr(hf, "sample_next", fake_sample)
    out = gen.generate([GenRequest(id="r", messages=chat("x"), n=2, seed=1)], SAMPLE)
    assert [c.n_tokens for c in out[0]] == [2, 2]


def test_no_chat_template_is_refused(tiny_model, tmp_path):
    from mrlite.backends.hf import HFGenerator
    from mrlite.models import ModelError

    base = shutil.copytree(tiny_model, tmp_path / "base")
    (base / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="has no chat template"):
        HFGenerator(tiny_recipe(), str(base))


def test_forced_pick_matches_full_forward(gen):
    """At temperature 0 the in-cache forced pick equals the argmax over the allowed tokens of a fresh forward."""
    f = gen._forcing_for("score")
    prompt = gen._encode(chat("Judge this answer."))
    rows = gen._generate_batch(prompts=[prompt] * 4, seeds=[1, 2, 3, 4], budgets=[8] * 4, keys=[0] * 4,
                               forces=["score"] * 4, sampling=GREEDY)
    for row in rows:
        assert row.forced is not None and row.text.endswith("\nScore: " + row.forced)
        with torch.inference_mode():
            logits = gen.model(input_ids=torch.tensor([prompt + row.ids + f.prefix])).logits[0, -1].float()
        assert f.texts[int(torch.argmax(logits[f.choices]))] == row.forced


def test_prefix_tree_shares_long_prefixes_only():
    from mrlite.backends.hf import prefix_tree

    rubric = list(range(100, 140))  # 40 shared tokens
    prompts = {0: [*rubric, 1, 2, 3], 1: [*rubric, 1, 2, 4], 2: [*rubric, 5], 3: [7] * 50, 4: [*rubric, 1, 2, 3]}
    tree = prefix_tree(prompts, min_shared=32, layers=2)
    root = tree[2]
    assert (root.start, root.end, root.parent) == (0, 40, None) and root.tokens == rubric
    assert tree[0] is tree[1] is tree[4] is root  # [1, 2] past the rubric is too short for its own node
    assert tree[3] is None  # shares nothing
    # every prompt keeps its last token out of the shared nodes; identical prompts too
    same = prefix_tree({0: rubric, 1: list(rubric)}, min_shared=32, layers=2)
    assert same[0] is same[1] and same[0].end == len(rubric) - 1
    # order of the prompts does not matter; nested sharing gives a chain
    answer = list(range(500, 540))
    nested = {i: rubric + answer + [900 + i] for i in range(3)} | {9: rubric + [1] * 40}
    t1 = prefix_tree(nested, min_shared=32, layers=2)
    t2 = prefix_tree(dict(reversed(list(nested.items()))), min_shared=32, layers=2)
    for t in (t1, t2):
        assert [(n.start, n.end) for n in t[0].path] == [(0, 40)] and (t[0].start, t[0].end) == (40, 80)
        assert t[9].end == 40 and t[0].parent is t[9]


def judge_like(i: int) -> list[dict]:
    rubric = "Review the user's question and the corresponding response using the additive 5-point scoring " * 3
    return chat(f"{rubric}\nQuestion {i}: what is {i} + {i}?\nAnswer: {2 * i + (i % 2)}")


@pytest.mark.parametrize("which", ["gen", "gen_bf16"])
def test_shared_prefix_matches_unshared_and_is_deterministic(which, request):
    """Shared-prefix KV gives the logits of a plain full forward (to float noise) and the same texts as without
    sharing; with sharing on, same requests + settings give identical texts at any batch size."""
    g = request.getfixturevalue(which)
    reqs = [GenRequest(id=f"j{i}", messages=judge_like(i), n=2, seed=i, force="score") for i in range(4)]
    prompts = [g._encode(r.messages) for r in reqs]
    from mrlite.backends.hf import prefix_tree

    tree = prefix_tree(dict(enumerate(prompts)), g.min_shared_tokens, g.n_layers)
    assert tree[0] is not None and tree[0] is tree[3] and tree[0].end >= 32  # the rubric is one shared node
    with torch.inference_mode():
        logits, _ = g._start_shared(prompts, [0, 1, 2, 3], 4, tree)
        for i, p in enumerate(prompts):
            full = g.model(input_ids=torch.tensor([p])).logits[0, -1]
            tol = 1e-4 if g.dtype == torch.float32 else 0.1
            torch.testing.assert_close(logits[i].float(), full.float(), atol=tol, rtol=0)
    shared = texts(g.generate(reqs, SAMPLE))
    assert shared == texts(g.generate(reqs, SAMPLE))
    try:
        for bs in (1, 3):
            g.batch_size = bs
            assert texts(g.generate(reqs, SAMPLE)) == shared
        g.batch_size = 16
        for segment_tokens in (0, 10**9):  # every shared node read as a segment in decode / copied into the rows
            g.decode_segment_tokens = segment_tokens
            assert texts(g.generate(reqs, SAMPLE)) == shared
        g.decode_segment_tokens = 1024
        g.min_shared_tokens = 10**9
        unshared = texts(g.generate(reqs, SAMPLE))
    finally:
        g.batch_size, g.min_shared_tokens, g.decode_segment_tokens = 16, 32, 1024
    assert unshared == shared


def test_decode_layout_copies_small_shared_nodes(gen):
    """Decode reads a shared node as one segment for all its rows only when rows x tokens is large; smaller
    nodes (and everything below them) are copied into each row's private buffer, outermost first."""
    from mrlite.backends.hf import _Node

    root = _Node(0, list(range(300)), None, 1)  # a rubric: 300 tokens under 6 rows
    group = _Node(300, list(range(100)), root, 1)  # a question + answer: 100 tokens under 4 rows
    judgment = _Node(400, list(range(40)), group, 1)  # a judgment: 40 tokens under 2 rows
    other = _Node(300, list(range(50)), root, 1)
    paths = [[root, group, judgment]] * 2 + [[root, group]] * 2 + [[root, other]] * 2
    leaves = [_Node(0, [1], None, 1) for _ in paths]
    old = gen.decode_segment_tokens
    try:
        gen.decode_segment_tokens = 400
        shared, private = gen._decode_layout(paths, leaves)
        assert shared == [[root, group]] * 4 + [[root]] * 2  # group: 4 x 100 >= 400 stays; judgment 2 x 40 copied
        assert private == [[judgment, leaves[0]], [judgment, leaves[1]], [leaves[2]], [leaves[3]],
                           [other, leaves[4]], [other, leaves[5]]]
        gen.decode_segment_tokens = 10**9
        shared, private = gen._decode_layout(paths, leaves)
        assert shared == [[]] * 6 and private[0] == [root, group, judgment, leaves[0]]
    finally:
        gen.decode_segment_tokens = old


def test_packed_linears_match_plain_model(gen, tiny_model):
    """On CPU fp32 every nn.Linear runs with oneDNN's pre-packed weight (faster skinny matmuls): same logits as
    the plain model to float noise, for a decode-sized and a prefill-sized batch."""
    from transformers import AutoModelForCausalLM

    from mrlite.backends.hf import PackedLinear

    if not PackedLinear.available():
        pytest.skip("this torch build has no oneDNN linear ops")
    assert gen.packed == 7 * gen.n_layers + 1  # q k v o gate up down per layer + the LM head
    assert not any(type(m) is torch.nn.Linear for m in gen.model.modules())
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    torch.manual_seed(0)
    for shape in ((32, 1), (2, 70)):
        ids = torch.randint(0, plain.config.vocab_size, shape)
        with torch.inference_mode():
            torch.testing.assert_close(gen.model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=1e-4)
