"""TRL trainer on the tiny random Llama: DPO + LoRA learns the pairs, merges, chains lineage; SFT; 4-bit."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from _models import model_home, tiny_model, tiny_recipe  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("trl")

PAIRS = [
    ("What is the capital of France?", "Paris.", "Berlin, which is famous for its pizza."),
    ("What is 2 + 2?", "4", "It is 5, obviously."),
    ("Name a colour.", "Blue.", "Seven hundred."),
    ("Say hello.", "Hello!", "No, I will not."),
]
# A fast, clear DPO signal on a random model: full batch, high lr, a few steps.
TRAIN = {"learning_rate": 2e-2, "max_steps": 4, "batch_size": 4, "grad_accum": 1, "max_length": 128,
         "lora": {"r": 8, "alpha": 16}}


def msg(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def write_pairs(path: Path, pairs=PAIRS) -> Path:
    with open(path, "w") as fh:
        for p, c, r in pairs:
            fh.write(json.dumps({"prompt": msg("user", p), "chosen": msg("assistant", c),
                                 "rejected": msg("assistant", r), "kind": "actor", "prompt_id": "p1"}) + "\n")
    return path


def weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(model_dir) / "model.safetensors")


def pair_margin(model_dir, pairs=PAIRS) -> float:
    """Sum over pairs of log p(chosen | prompt) - log p(rejected | prompt), completion tokens only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def logprob(prompt, answer):
        p = tok.apply_chat_template(msg("user", prompt), add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tok.apply_chat_template(msg("user", prompt) + msg("assistant", answer), tokenize=True,
                                       return_dict=False)
        ids = torch.tensor([full])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        target = ids[0, 1:]
        return logp[torch.arange(len(p) - 1, len(full) - 1), target[len(p) - 1:]].sum().item()

    return sum(logprob(p, c) - logprob(p, r) for p, c, r in PAIRS)


@pytest.fixture(scope="module")
def dpo1(tiny_model, tmp_path_factory):
    from mrlite.backends.trl import TRLTrainer

    d = tmp_path_factory.mktemp("dpo1")
    rows = write_pairs(d / "pairs.jsonl")
    result = TRLTrainer(tiny_recipe(train=TRAIN), 1).train_dpo(rows, tiny_model, d / "out")
    return d / "out", result


def test_dpo_outputs(dpo1, tiny_model):
    out, _ = dpo1
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "lineage.json"):
        assert (out / "model" / name).exists(), name
    assert not (out / ".trainer").exists()
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert "quantization_config" not in cfg


def test_dpo_metrics(dpo1):
    _, result = dpo1
    assert result.n_rows == 4 and result.n_dropped == 0
    assert [m["step"] for m in result.metrics] == [1, 2, 3, 4]
    for m in result.metrics:
        assert math.isfinite(m["loss"])
        for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "learning_rate",
                  "epoch"):
            assert k in m, k
    s = result.summary
    assert s["steps"] == 4 and s["rows"] == 4 and s["dropped"] == 0
    assert s["first_loss"] == pytest.approx(math.log(2), abs=1e-3)  # reference = policy at step 1
    assert s["last_loss"] < s["first_loss"] and s["last_margin"] > 0
    assert s["seconds"] > 0


def test_lora_weights_changed(dpo1):
    from safetensors.torch import load_file

    out, _ = dpo1
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)  # peft initialises B to zero
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"} and cfg["r"] == 8


def test_merged_model_differs_and_prefers_chosen(dpo1, tiny_model):
    out, _ = dpo1
    base, merged = weights(tiny_model), weights(out / "model")
    assert base.keys() == merged.keys()
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert any("q_proj" in k for k in changed) and all(merged[k].dtype == torch.float32 for k in merged)
    before, after = pair_margin(tiny_model), pair_margin(out / "model")
    assert after > before + 1.0, (before, after)


def test_lineage_chains_across_rounds(dpo1, tiny_model, tmp_path):
    from mrlite.backends.trl import TRLTrainer
    from mrlite.rundir import sha256_file as _sha256

    out1, _ = dpo1
    lin1 = json.loads((out1 / "model" / "lineage.json").read_text())
    assert lin1 == {"base": tiny_model, "adapters": [
        {"iteration": 1, "kind": "dpo", "adapter_sha256": _sha256(out1 / "adapter" / "adapter_model.safetensors")}]}
    rows = write_pairs(tmp_path / "pairs.jsonl")
    res = TRLTrainer(tiny_recipe(train={**TRAIN, "max_steps": 1}), 2).train_dpo(rows, str(out1 / "model"),
                                                                               tmp_path / "out2")
    lin2 = json.loads((tmp_path / "out2" / "model" / "lineage.json").read_text())
    assert lin2["base"] == tiny_model
    assert [a["iteration"] for a in lin2["adapters"]] == [1, 2]
    assert lin2["adapters"][0] == lin1["adapters"][0]
    assert res.summary["first_loss"] == pytest.approx(math.log(2), abs=1e-3)  # reference = round-1 merged model
    w1, w2 = weights(out1 / "model"), weights(tmp_path / "out2" / "model")
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)


def test_overlong_rows_dropped_and_counted(tiny_model, tmp_path):
    from mrlite.backends.trl import TRLTrainer

    long = ("Tell me a story.", "Once. " * 60, "No. " * 60)
    rows = write_pairs(tmp_path / "pairs.jsonl", [*PAIRS[:2], long, long])
    trainer = TRLTrainer(tiny_recipe(train={**TRAIN, "max_length": 64, "max_steps": 1}), 1)
    res = trainer.train_dpo(rows, tiny_model, tmp_path / "out")
    assert (res.n_rows, res.n_dropped) == (2, 2) and res.summary["dropped"] == 2
    only_long = write_pairs(tmp_path / "long.jsonl", [long])
    with pytest.raises(ValueError, match=r"no training rows left .* 1 longer than train.max_length=64") as e:
        trainer.train_dpo(only_long, tiny_model, tmp_path / "out_long")
    assert "\n" not in str(e.value)


def test_unknown_trl_arg_is_one_line_error(tiny_model, tmp_path):
    from mrlite.backends.trl import TRLTrainer

    rows = write_pairs(tmp_path / "pairs.jsonl")
    trainer = TRLTrainer(tiny_recipe(train={**TRAIN, "trl_args": {"max_prompt_length": 32}}), 1)
    with pytest.raises(ValueError, match=r"^train.trl_args: DPOConfig has no field 'max_prompt_length'") as e:
        trainer.train_dpo(rows, tiny_model, tmp_path / "out")
    assert "\n" not in str(e.value)
    ok = TRLTrainer(tiny_recipe(train={**TRAIN, "max_steps": 1, "trl_args": {"loss_type": ["sigmoid"]}}), 1)
    assert ok.train_dpo(rows, tiny_model, tmp_path / "out_ok").n_rows == 4


def test_sft_trains_and_merges(tiny_model, tmp_path):
    from mrlite.backends.trl import TRLTrainer

    rows = tmp_path / "eft.jsonl"
    with open(rows, "w") as fh:
        for p, c, _ in PAIRS:
            fh.write(json.dumps({"prompt": msg("user", f"Judge: {p}"),
                                 "completion": msg("assistant", f"Fine answer: {c}\nScore: 4")}) + "\n")
    recipe = tiny_recipe(eft={"enabled": True, "learning_rate": 1e-2, "max_steps": 2, "batch_size": 2,
                              "max_length": 128, "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "nope"]}})
    res = TRLTrainer(recipe, 0).train_sft(rows, tiny_model, tmp_path / "out")
    assert res.n_rows == 4 and len(res.metrics) == 2 and all(math.isfinite(m["loss"]) for m in res.metrics)
    lin = json.loads((tmp_path / "out" / "model" / "lineage.json").read_text())
    assert lin["adapters"][0]["kind"] == "sft" and lin["adapters"][0]["iteration"] == 0
    cfg = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["q_proj"]  # filtered to modules that exist
    base, merged = weights(tiny_model), weights(tmp_path / "out" / "model")
    assert any(not torch.equal(base[k], merged[k]) for k in base)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_dpo_4bit_trains_and_merges_unquantised(tiny_model, tmp_path):
    from mrlite.backends.trl import TRLTrainer

    rows = write_pairs(tmp_path / "pairs.jsonl")
    res = TRLTrainer(tiny_recipe(train={**TRAIN, "max_steps": 2, "load_in_4bit": True}), 1).train_dpo(
        rows, tiny_model, tmp_path / "out")
    assert res.summary["load_in_4bit"] and all(math.isfinite(m["loss"]) for m in res.metrics)
    cfg = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert "quantization_config" not in cfg
    base, merged = weights(tiny_model), weights(tmp_path / "out" / "model")
    assert base.keys() == merged.keys() and all(v.dtype == torch.float32 for v in merged.values())
    # Merged into the unquantised base: the untouched tensors (embeddings, norms) are bit-identical to it.
    assert torch.equal(base["model.embed_tokens.weight"], merged["model.embed_tokens.weight"])
    assert any(not torch.equal(base[k], merged[k]) for k in base if "proj" in k)


def test_compact_lm_head_same_log_probs_fewer_positions(tiny_model, monkeypatch):
    """On CPU the fused LM head projects only labelled positions (TRL 1.16 projects all of them off Triton),
    with the same per-token log-probs: the DPO/SFT loss is unchanged, the step is about half."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    from mrlite.backends import train_core as core

    # TRL's own switch for this test (an earlier training in this process may have flipped it); restored after
    monkeypatch.setattr(trl_utils, "_use_triton", getattr(trl_utils._use_triton, "mrlite_original",
                                                          trl_utils._use_triton))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(0, model.config.vocab_size, (3, 24))
    labels = ids.masked_fill(torch.arange(24) < 17, -100)  # a 17-token prompt, 7 completion tokens
    rows: list[int] = []
    real_mm = torch.mm

    def counting_mm(a, b, *args, **kw):
        if "out" in kw:  # the head's projection of one tile of positions x one slice of the vocabulary
            rows.append(a.shape[0])
        return real_mm(a, b, *args, **kw)

    def run():
        rows.clear()
        with torch.no_grad(), monkeypatch.context() as m:
            m.setattr(torch, "mm", counting_mm)
            out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        return out, sum(rows)

    full, full_rows = run()
    assert core.compact_lm_head() is True
    assert core.compact_lm_head() is False  # once per process
    compact, compact_rows = run()
    slices = -(-model.config.vocab_size // trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE)
    assert full_rows == 3 * 23 * slices  # every position of the 3 rows
    assert compact_rows == 3 * 7 * slices  # only the 7 labelled positions per row
    torch.testing.assert_close(compact.log_probs, full.log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(compact.entropy * (labels[:, 1:] != -100), full.entropy * (labels[:, 1:] != -100),
                               rtol=0, atol=1e-5)
    assert torch.equal(compact.is_top1, full.is_top1)


def _dpo_trainer(cls, tiny_model, tmp_path, pairs):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    rows = [{"prompt": msg("user", p), "chosen": msg("assistant", c), "rejected": msg("assistant", r)}
            for p, c, r in pairs]
    cfg = DPOConfig(output_dir=str(tmp_path / cls.__name__), use_cpu=True, per_device_train_batch_size=len(rows),
                    max_length=256, beta=0.1, report_to=[], save_strategy="no", disable_tqdm=True,
                    gradient_checkpointing=False)
    trainer = cls(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                  peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                         task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(1)
    for name, p in trainer.model.named_parameters():  # a policy away from the reference: non-zero log-ratios
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return trainer


def test_shared_prompt_dpo_matches_trl(tiny_model, tmp_path):
    """Each pair's prompt computed once gives TRL's loss, gradient and metrics (up to float noise)."""
    from trl import DPOTrainer

    from mrlite.backends.dpo_shared import shared_prompt_trainer

    pairs = [*PAIRS, ("Explain why the sky is blue in one short paragraph, for a child of seven.", "Light bounces.",
                      "Because it is.")]
    results = {}
    for cls in (DPOTrainer, shared_prompt_trainer(DPOTrainer)):
        trainer = _dpo_trainer(cls, tiny_model, tmp_path, pairs)
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        results[cls.__name__] = (float(loss.detach()), grads, metrics, trainer)
    (l1, g1, m1, _), (l2, g2, m2, shared) = results.values()
    assert shared._share is True
    assert l1 != pytest.approx(math.log(2), abs=1e-3)  # the policy differs from the reference
    assert l2 == pytest.approx(l1, rel=1e-5)
    assert set(g2) == set(g1) and len(g1) > 0
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy", "num_tokens"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-5), key


def test_shared_prompt_split_refuses_what_it_cannot_share():
    from mrlite.backends.dpo_shared import split_batch

    # rows: [chosen_0, chosen_1, rejected_0, rejected_1]; prompt tokens then answer tokens, flush left, 0-padded
    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 9, 1, 0, 0], [5, 6, 7, 2, 3], [5, 9, 4, 4, 4]])
    attn = (ids != 0).long()
    comp = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])
    b = split_batch({"input_ids": ids, "attention_mask": attn, "completion_mask": comp}, pad_id=0)
    assert b.prompts.tolist() == [[5, 6], [5, 9]] and b.prompt_lens.tolist() == [2, 2]
    assert b.answers.tolist() == [[7, 8, 0], [7, 2, 3], [1, 0, 0], [4, 4, 4]]  # chosen/rejected interleaved
    assert b.answer_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]
    other = ids.clone()
    other[2, 1] = 11  # pair 0's rejected row has another prompt
    assert split_batch({"input_ids": other, "attention_mask": attn, "completion_mask": comp}, pad_id=0) is None
    extra = {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, "pixel_values": ids}
    assert split_batch(extra, pad_id=0) is None
