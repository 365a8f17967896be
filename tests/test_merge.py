"""The streaming LoRA merge (``mrlite.backends.merge``): the same tensors as peft's ``merge_and_unload`` on an fp32 reload,
shard by shard, with the base's layout, names and dtypes; unsupported adapters refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from mrlite.backends.merge import StreamingMergeUnsupported, base_shards, merge_streaming  # noqa: E402


def tiny_base(path: Path, dtype, shard: str | None = None) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    (path / "tokenizer_config.json").write_text("{}")
    return path


def lora_adapter(base: Path, path: Path, **cfg) -> Path:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            **cfg))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft.save_pretrained(path)
    return path


def peft_reference(base: Path, adapter: Path, stored) -> dict:
    full = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(full, str(adapter)).merge_and_unload().to(stored)
    return {k: v for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("dtype, shard", [(torch.bfloat16, None), (torch.float32, "40KB")])
def test_same_tensors_as_peft(tmp_path: Path, dtype, shard) -> None:
    base = tiny_base(tmp_path / "base", dtype, shard)
    adapter = lora_adapter(base, tmp_path / "adapter")
    info = merge_streaming(base, adapter, tmp_path / "out")
    assert info["merged_tensors"] == 2 * 3 and info["shards"] == len(base_shards(base))
    if shard:
        assert info["shards"] > 1 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == sorted(
        p.name for p in base.glob("*.safetensors"))
    assert (tmp_path / "out" / "config.json").read_text() == (base / "config.json").read_text()
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    ours = {}
    for f in (tmp_path / "out").glob("*.safetensors"):
        ours |= load_file(str(f))
    ref = peft_reference(base, adapter, dtype)
    base_w = {}
    for f in base.glob("*.safetensors"):
        base_w |= load_file(str(f))
    for name, t in ours.items():
        assert t.dtype == dtype, name
        assert torch.equal(t, ref[name]), name  # bit-identical to peft's fp32 merge
    changed = [n for n in ours if not torch.equal(ours[n], base_w[n])]
    assert sorted(changed) == sorted(f"model.layers.{i}.{m}.weight" for i in range(2)
                                     for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))


def test_rslora_scale(tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "base", torch.float32)
    adapter = lora_adapter(base, tmp_path / "adapter", use_rslora=True)
    merge_streaming(base, adapter, tmp_path / "out")
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    ref = peft_reference(base, adapter, torch.float32)
    assert all(torch.equal(t, ref[n]) for n, t in ours.items())


def test_unsupported_adapters_write_nothing(tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "base", torch.float32)
    adapter = lora_adapter(base, tmp_path / "adapter", use_dora=True)
    with pytest.raises(StreamingMergeUnsupported, match="DoRA"):
        merge_streaming(base, adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (base / "model.safetensors").rename(base / "weights.bin")
    with pytest.raises(StreamingMergeUnsupported, match="no safetensors weights"):
        merge_streaming(base, tmp_path / "adapter", tmp_path / "out2")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True


class _Tok:
    def save_pretrained(self, d) -> None:
        (Path(d) / "tokenizer_config.json").write_text('{"saved": true}')


def test_trl_trainer_merges_by_streaming(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("trl")
    import mrlite
    from mrlite.backends.trl import TRLTrainer

    base = tiny_base(tmp_path / "base", torch.bfloat16)
    adapter = lora_adapter(base, tmp_path / "adapter")
    trainer = TRLTrainer(mrlite.load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"), 1)
    fp32 = []

    def fake_fp32(self, base_, adapter_, model_dir):
        fp32.append((base_, adapter_))
        model_dir.mkdir(parents=True)

    monkeypatch.setattr(TRLTrainer, "_merge_fp32", fake_fp32)
    trainer._merge(str(base), adapter, tmp_path / "model", _Tok(), "dpo")
    assert fp32 == []  # no fp32 copy of the model on the host
    ours = load_file(str(tmp_path / "model" / "model.safetensors"))
    ref = peft_reference(base, adapter, torch.bfloat16)
    assert all(torch.equal(t, ref[n]) for n, t in ours.items())
    assert json.loads((tmp_path / "model" / "tokenizer_config.json").read_text()) == {"saved": True}
    assert json.loads((tmp_path / "model" / "lineage.json").read_text())["adapters"][-1]["kind"] == "dpo"
    # what the stream cannot merge falls back to peft's fp32 merge
    dora = lora_adapter(base, tmp_path / "dora", use_dora=True)
    trainer._merge(str(base), dora, tmp_path / "model2", _Tok(), "dpo")
    assert len(fp32) == 1 and fp32[0][1] == dora
