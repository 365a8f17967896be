"""The unsloth trainer against fake ``unsloth`` / ``trl`` / ``datasets`` modules: import order, what it loads,
the DPO/SFT configuration, the 16-bit merge (never 4-bit), the files it writes, and the disk check."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import mrlite
import mrlite.hardware.gpu
from mrlite.backends import BackendError
from mrlite.backends.unsloth import UnslothTrainer, import_unsloth
from mrlite.hardware.gpu import PreflightError
from mrlite.rundir import atomic_write_jsonl

REPO = Path(__file__).resolve().parents[1]


def recipe(*sets: str) -> mrlite.Recipe:
    return mrlite.load_recipe(REPO / "recipes" / "paper.yaml", list(sets))


# --------------------------------------------------------------------------------------------------------------
# import order


@pytest.mark.parametrize("present, blamed", [
    ({"transformers": object()}, "transformers"),
    ({"trl": object(), "peft": object()}, "trl, peft"),
])
def test_unsloth_must_come_first(present, blamed) -> None:
    with pytest.raises(BackendError, match=f"must be imported before {blamed}.*own process"):
        import_unsloth(present)


def test_already_imported_unsloth_is_reused() -> None:
    mod = object()
    assert import_unsloth({"unsloth": mod, "transformers": object()}) is mod


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def test_trainer_imports_unsloth_before_trl_transformers_peft(tmp_path: Path) -> None:
    # A stand-in `unsloth` package records which of trl/transformers/peft were loaded when it was imported.
    pkg = tmp_path / "unsloth"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import sys, json\n"
        "json.dump([m for m in ('trl', 'transformers', 'peft') if m in sys.modules], open('seen.json', 'w'))\n")
    # What a `python -m mrlite _worker` process imports before the train stage builds its trainer.
    r = _run(f"""
        import mrlite, mrlite.cli, mrlite.loop, mrlite.stages.train, mrlite.stages.eft
        from mrlite.backends.unsloth import UnslothTrainer
        UnslothTrainer(mrlite.load_recipe({str(REPO / 'recipes' / 'paper.yaml')!r}), 1)
        """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "seen.json").read_text()) == []


def test_trainer_refuses_after_transformers(tmp_path: Path) -> None:
    r = _run(f"""
        import sys, types, mrlite
        sys.modules["transformers"] = types.ModuleType("transformers")  # as if imported first
        from mrlite.backends.unsloth import UnslothTrainer
        try:
            UnslothTrainer(mrlite.load_recipe({str(REPO / 'recipes' / 'paper.yaml')!r}), 1)
        except Exception as e:
            print(type(e).__name__, e)
        """, tmp_path)
    assert "BackendError trainer 'unsloth' must be imported before transformers" in r.stdout, r.stderr


# --------------------------------------------------------------------------------------------------------------
# the trainer against fakes (row handling, trl_args, checkpoints, metrics and lineage come from the training core)


class CharTokenizer:
    pad_token = None
    eos_token = "</s>"
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize=True, return_dict=False, **kw):
        return list(range(sum(len(m["content"]) for m in messages) + 2 * len(messages)))

    def save_pretrained(self, d):
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / "tokenizer.json").write_text("{}")


def _dpo_row(i: int, answer_len: int = 10) -> dict:
    return {"pair_id": f"p{i}:actor", "prompt": [{"role": "user", "content": "q" * 10}],
            "chosen": [{"role": "assistant", "content": "c" * answer_len}],
            "rejected": [{"role": "assistant", "content": "r" * 5}]}


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def get(self, name: str) -> dict:
        return next(kw for n, kw in self.calls if n == name)


@pytest.fixture
def fakes(monkeypatch):
    rec = Recorder()

    class FakeModel:
        def save_pretrained(self, d, **kw):
            rec.calls.append(("save_pretrained", {"dir": d, **kw}))
            Path(d).mkdir(parents=True, exist_ok=True)
            (Path(d) / "adapter_config.json").write_text("{}")
            (Path(d) / "adapter_model.safetensors").write_bytes(b"adapter")

        def save_pretrained_merged(self, d, tokenizer, save_method="merged_16bit", **kw):
            rec.calls.append(("save_pretrained_merged", {"dir": d, "save_method": save_method, **kw}))
            Path(d).mkdir(parents=True, exist_ok=True)
            (Path(d) / "config.json").write_text("{}")
            (Path(d) / "model.safetensors").write_bytes(b"w")
            tokenizer.save_pretrained(d)

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kw):
            rec.calls.append(("from_pretrained", kw))
            return FakeModel(), CharTokenizer()

        @staticmethod
        def get_peft_model(model, **kw):
            rec.calls.append(("get_peft_model", kw))
            return model

    unsloth = types.ModuleType("unsloth")
    unsloth.FastLanguageModel = FastLanguageModel
    unsloth.is_bfloat16_supported = lambda: rec.bf16
    rec.bf16 = True

    fields = ["output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
              "gradient_accumulation_steps", "max_length", "bf16", "fp16", "logging_steps", "save_strategy",
              "save_steps", "save_total_limit", "report_to", "run_name", "disable_tqdm", "seed", "data_seed", "warmup_ratio"]

    def config_class(name: str, own: list[str]):
        cls = dataclasses.make_dataclass(name, [(f, object, dataclasses.field(default=None)) for f in fields + own])
        cls.kw = property(lambda self: {k: v for k, v in dataclasses.asdict(self).items() if v is not None})
        return cls

    class Trainer:
        def __init__(self, kind, **kw):
            rec.calls.append((kind, kw))
            self.state = types.SimpleNamespace(global_step=0, epoch=0.0, log_history=[])
            self.callbacks = kw.get("callbacks", [])

        def add_callback(self, cb):  # the training core adds its progress bar this way
            self.callbacks.append(cb)

        def train(self, resume_from_checkpoint=None):
            rec.calls.append(("train", {"resume_from_checkpoint": resume_from_checkpoint}))
            for step, logs in enumerate([{"loss": 0.6931, "rewards/margins": 0.0},
                                         {"loss": 0.6, "rewards/margins": 0.2}, {"train_runtime": 1.0}], 1):
                self.state.global_step, self.state.epoch = min(step, 2), step / 2
                for cb in self.callbacks:
                    cb.on_log(None, self.state, None, logs=logs)
                self.state.log_history.append({**logs, "step": self.state.global_step, "epoch": self.state.epoch})

    trl = types.ModuleType("trl")
    trl.DPOConfig = config_class("DPOConfig", ["beta", "precompute_ref_log_probs", "precompute_ref_batch_size",
                                               "loss_type"])
    trl.SFTConfig = config_class("SFTConfig", ["completion_only_loss"])
    trl.DPOTrainer = lambda **kw: Trainer("DPOTrainer", **kw)
    trl.SFTTrainer = lambda **kw: Trainer("SFTTrainer", **kw)
    datasets = types.ModuleType("datasets")
    datasets.Dataset = types.SimpleNamespace(from_list=lambda rows: list(rows))
    for name, mod in (("unsloth", unsloth), ("trl", trl), ("datasets", datasets)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(mrlite.hardware.gpu, "free_disk_gib", lambda p: 500.0)
    # mrlite.backends.trl binds trl's classes at import: import it afresh against the fakes, and afterwards put
    # back whatever was there so no later test sees fake-bound classes.
    import mrlite.backends as pkg

    prev = sys.modules.pop("mrlite.backends.trl", None)
    yield rec
    sys.modules.pop("mrlite.backends.trl", None)
    if prev is not None:
        sys.modules["mrlite.backends.trl"] = prev
        pkg.trl = prev
    elif hasattr(pkg, "trl"):
        del pkg.trl


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    d = tmp_path / "iter_00" / "model"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    (d / "model.safetensors").write_bytes(b"\0" * 1024)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    (d / "lineage.json").write_text(json.dumps({"base": "meta-llama/Meta-Llama-3-8B-Instruct", "adapters": [
        {"iteration": 0, "kind": "sft", "adapter_sha256": "x"}]}))
    return d


def test_dpo_qlora_on_24gb(fakes, base_dir: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0), _dpo_row(1, 5000), _dpo_row(2)])
    out = tmp_path / "train.tmp"
    out.mkdir()
    res = UnslothTrainer(recipe(), 1).train_dpo(rows, str(base_dir), out)

    assert fakes.names() == ["from_pretrained", "get_peft_model", "DPOTrainer", "train", "save_pretrained",
                             "save_pretrained_merged"]
    load = fakes.get("from_pretrained")
    assert load["model_name"] == str(base_dir)  # the local 16-bit master: no Hub download, no name remap
    assert load["load_in_4bit"] is True and load["load_in_16bit"] is False
    assert load["dtype"] is None and load["max_seq_length"] == 3072 and load["use_exact_model_name"] is True
    assert "trust_remote_code" not in load
    lora = fakes.get("get_peft_model")
    assert lora["r"] == 16 and lora["lora_alpha"] == 32 and lora["lora_dropout"] == 0.0
    assert lora["use_gradient_checkpointing"] == "unsloth" and lora["bias"] == "none"
    t = fakes.get("DPOTrainer")
    assert t["ref_model"] is None  # the reference is the same network with the adapter off
    cfg = t["args"].kw
    assert cfg["precompute_ref_log_probs"] is True and cfg["beta"] == 0.1
    assert cfg["per_device_train_batch_size"] == 1 and cfg["gradient_accumulation_steps"] == 32
    assert cfg["max_length"] == 3072 and cfg["bf16"] is True and cfg["fp16"] is False
    assert cfg["learning_rate"] == 2e-5 and cfg["report_to"] == "none" and cfg["seed"] == 1
    assert [set(r) for r in t["train_dataset"]] == [{"prompt", "chosen", "rejected"}] * 2  # long row dropped
    assert t["processing_class"].pad_token == "</s>"

    merge = fakes.get("save_pretrained_merged")
    assert merge["save_method"] == "merged_16bit" and merge["dir"] == str(out / "model")
    assert not any("4bit" in str(kw.get("save_method", "")) for _, kw in fakes.calls)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "model" / "generation_config.json").read_text())["eos_token_id"] == [128001, 128009]
    lineage = json.loads((out / "model" / "lineage.json").read_text())
    assert lineage["base"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert [a["iteration"] for a in lineage["adapters"]] == [0, 1]
    assert lineage["adapters"][1]["merge"] == "merged_16bit" and lineage["adapters"][1]["kind"] == "dpo"
    assert not (out / ".trainer").exists()
    assert res.n_rows == 2 and res.n_dropped == 1  # the TRL trainer's convention: rows used + rows dropped
    s = res.summary
    assert (s["steps"], s["first_loss"], s["last_loss"], s["last_margin"]) == (2, 0.6931, 0.6, 0.2)
    assert s["trainer"] == "unsloth" and s["load_in_4bit"] is True and s["kind"] == "dpo"
    assert [m["step"] for m in res.metrics] == [1, 2]


def test_16bit_lora_fp16_card_and_trl_args(fakes, base_dir: Path, tmp_path: Path) -> None:
    fakes.bf16 = False  # a T4
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    r = recipe("train.load_in_4bit=false", "train.trl_args={warmup_ratio: 0.1}", "model.trust_remote_code=true")
    UnslothTrainer(r, 2).train_dpo(rows, str(base_dir), tmp_path / "out")
    load = fakes.get("from_pretrained")
    assert load["load_in_4bit"] is False and load["load_in_16bit"] is True and load["trust_remote_code"] is True
    cfg = fakes.get("DPOTrainer")["args"].kw
    assert cfg["bf16"] is False and cfg["fp16"] is True and cfg["warmup_ratio"] == 0.1
    with pytest.raises(ValueError, match=r"train\.trl_args: DPOConfig has no field 'warmup_ration'; did you mean"):
        UnslothTrainer(recipe("train.trl_args={warmup_ration: 0.1}"), 2).train_dpo(rows, str(base_dir),
                                                                                  tmp_path / "out2")


def test_eft_sft_uses_eft_settings(fakes, base_dir: Path, tmp_path: Path) -> None:
    rows = tmp_path / "eft.jsonl"
    atomic_write_jsonl(rows, [{"id": "e0", "prompt": [{"role": "user", "content": "judge"}],
                               "completion": [{"role": "assistant", "content": "ok. Score: 3"}]}])
    res = UnslothTrainer(recipe(), 0).train_sft(rows, str(base_dir), tmp_path / "out")
    t = fakes.get("SFTTrainer")
    cfg = t["args"].kw
    assert cfg["learning_rate"] == 1e-4 and cfg["max_length"] == 2048
    assert "beta" not in cfg and "precompute_ref_log_probs" not in cfg
    assert [set(r) for r in t["train_dataset"]] == [{"prompt", "completion"}]
    assert fakes.get("save_pretrained_merged")["save_method"] == "merged_16bit"
    assert json.loads((tmp_path / "out" / "model" / "lineage.json").read_text())["adapters"][-1]["kind"] == "sft"
    assert res.n_rows == 1


def test_disk_checked_before_training(fakes, base_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mrlite.hardware.gpu, "free_disk_gib", lambda p: 0.5)
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    with pytest.raises(PreflightError, match=r"not enough disk for the merged model of iteration 1: needs ~1\.0 GiB "
                                             r"free in .*, only 0\.5 GiB free"):
        UnslothTrainer(recipe(), 1).train_dpo(rows, str(base_dir), tmp_path / "out")
    assert fakes.calls == []  # nothing loaded, nothing trained


def test_hub_base_is_snapshotted_locally(fakes, tmp_path: Path, monkeypatch, base_dir: Path) -> None:
    seen = {}

    def snapshot_download(repo, revision=None, allow_patterns=None, ignore_patterns=None):
        seen.update(repo=repo, revision=revision, allow=allow_patterns, ignore=ignore_patterns)
        return str(base_dir)

    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    UnslothTrainer(recipe("model.revision=main"), 1).train_dpo(rows, "meta-llama/Meta-Llama-3-8B-Instruct",
                                                                tmp_path / "out")
    assert seen["repo"] == "meta-llama/Meta-Llama-3-8B-Instruct" and seen["revision"] == "main"
    assert "*.safetensors" in seen["allow"] and seen["ignore"] == ["original/*"]  # not the 16 GB .pth copy
    assert fakes.get("from_pretrained")["model_name"] == str(base_dir)


def test_merge_is_16_bit_even_for_a_4_bit_model(fakes, base_dir: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    UnslothTrainer(recipe("train.load_in_4bit=true"), 1).train_dpo(rows, str(base_dir), tmp_path / "out")
    assert fakes.get("from_pretrained")["load_in_4bit"] is True
    assert fakes.get("save_pretrained_merged")["save_method"] == "merged_16bit"


def test_dpo_checkpoints_and_resumes_like_the_trl_trainer(fakes, base_dir: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    out = tmp_path / "train.tmp"
    (out / ".trainer" / "checkpoint-1").mkdir(parents=True)  # what a killed run left behind
    (out / ".trainer" / "checkpoint-10").mkdir()
    res = UnslothTrainer(recipe("train.save_steps=7"), 1).train_dpo(rows, str(base_dir), out)
    cfg = fakes.get("DPOTrainer")["args"].kw
    assert (cfg["save_strategy"], cfg["save_steps"], cfg["save_total_limit"]) == ("steps", 7, 1)
    assert cfg["output_dir"] == str(out / ".trainer")
    assert fakes.get("train")["resume_from_checkpoint"] == str(out / ".trainer" / "checkpoint-10")
    # after a resume the metrics come from the restored trainer state (no wall-clock seconds in them)
    assert [(m["step"], m["loss"]) for m in res.metrics] == [(1, 0.6931), (2, 0.6)]
    assert all("seconds" not in m for m in res.metrics)
    assert not (out / ".trainer").exists()


def test_no_checkpoints_when_save_steps_null(fakes, base_dir: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    out = tmp_path / "train.tmp"
    (out / ".trainer" / "checkpoint-3").mkdir(parents=True)
    UnslothTrainer(recipe("train.save_steps=null"), 1).train_dpo(rows, str(base_dir), out)
    assert fakes.get("DPOTrainer")["args"].kw["save_strategy"] == "no"
    assert fakes.get("train")["resume_from_checkpoint"] is None


def test_trl_args_reach_dpo_but_not_the_eft_sft(fakes, base_dir: Path, tmp_path: Path) -> None:
    # loss_type is a DPOConfig field SFTConfig lacks: passed on to EFT it would make SFTConfig refuse the run.
    r = recipe("train.trl_args={loss_type: ipo}")
    eft = tmp_path / "eft.jsonl"
    atomic_write_jsonl(eft, [{"prompt": [{"role": "user", "content": "judge"}],
                              "completion": [{"role": "assistant", "content": "ok. Score: 3"}]}])
    UnslothTrainer(r, 0).train_sft(eft, str(base_dir), tmp_path / "eft_out")
    sft = fakes.get("SFTTrainer")["args"].kw
    assert "loss_type" not in sft and sft["save_strategy"] == "no"  # EFT is short: no checkpoints
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    UnslothTrainer(r, 1).train_dpo(rows, str(base_dir), tmp_path / "dpo_out")
    assert fakes.get("DPOTrainer")["args"].kw["loss_type"] == "ipo"


def test_diverged_loss_stops_before_the_merge(fakes, base_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from mrlite.backends import train_core

    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    monkeypatch.setattr(train_core, "run_trainer", lambda *a: [{"step": 1, "loss": float("nan")}])
    with pytest.raises(ValueError, match=r"^dpo: the loss diverged \(nan\); lower train\.learning_rate$"):
        UnslothTrainer(recipe(), 1).train_dpo(rows, str(base_dir), tmp_path / "out")
    assert "save_pretrained_merged" not in fakes.names()


def test_only_the_trained_adapter_is_saved(fakes, base_dir: Path, tmp_path: Path) -> None:
    # TRL adds a frozen "ref" copy of the adapter when given a PeftModel and no reference model; peft would save
    # every adapter (~170 MB per iteration for 8B, with an absolute path inside)
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    UnslothTrainer(recipe(), 1).train_dpo(rows, str(base_dir), tmp_path / "out")
    assert fakes.get("save_pretrained")["selected_adapters"] == ["default"]


LLAMA3_8B_CONFIG = {"vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "num_key_value_heads": 8, "intermediate_size": 14336, "torch_dtype": "bfloat16"}


@pytest.mark.parametrize("card, sets, expected", [
    (mrlite.hardware.gpu.GPUInfo(0, "RTX 4090", 23.6, (8, 9)), [], 2),  # NF4, 3072 tokens: logits of 2 rows fit
    (mrlite.hardware.gpu.GPUInfo(0, "H100", 79.2, (9, 0)), ["train.load_in_4bit=false", "train.batch_size=4"], 10),
    (mrlite.hardware.gpu.GPUInfo(0, "H100", 79.2, (9, 0)), ["train.max_length=512"], 32),  # capped
])
def test_reference_log_probs_batched_from_the_memory_plan(fakes, base_dir: Path, tmp_path: Path, monkeypatch,
                                                           card, sets, expected) -> None:
    (base_dir / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    monkeypatch.setattr(mrlite.hardware.gpu, "gpus", lambda use_torch=True: [card])
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    UnslothTrainer(recipe(*sets), 1).train_dpo(rows, str(base_dir), tmp_path / "out")
    cfg = fakes.get("DPOTrainer")["args"].kw
    assert cfg["precompute_ref_log_probs"] is True and cfg["precompute_ref_batch_size"] == expected


def test_reference_batch_unknown_card_leaves_trl_default(fakes, base_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mrlite.hardware.gpu, "gpus", lambda use_torch=True: [])
    rows = tmp_path / "rows.jsonl"
    atomic_write_jsonl(rows, [_dpo_row(0)])
    UnslothTrainer(recipe(), 1).train_dpo(rows, str(base_dir), tmp_path / "out")
    assert "precompute_ref_batch_size" not in fakes.get("DPOTrainer")["args"].kw
