"""Transformers generator: batched, left-padded sampling with per-row seeds and forced Score/Winner completion.

Each request's prompt is templated and prefilled once; its KV cache is then copied to the ``n`` sample rows.
Every row draws its randomness from its own ``torch.Generator`` seeded from ``(request.seed, sample index)``
(Gumbel-max sampling), so a row's text does not depend on which other rows share the batch or on the batch size.
Batched matmuls can still differ from unbatched ones in the last bits: on CPU, bf16 rows are made bit-identical by
row-wise attention, and fp32 rows differed in 0 of 32 SmolLM2 rows between batch size 1 and 16, greedy and sampled
(``benchmarks/hf_generate.py --determinism``); GPUs are unmeasured. A judge/meta-judge row whose text has no
parseable label gets ``"\n" + label`` fed through its own KV cache, then a value drawn among the allowed tokens
with the row's generator (argmax at temperature 0) is appended (``forced=True``). Exercised by:
``mrlite run recipes/tiny.yaml``.
"""

from __future__ import annotations

import contextvars
import gc
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from mrlite.backends.forcing import WINNER_CHOICES, Forcing, forcing_tokens  # noqa: F401
from mrlite.backends.base import Completion, GenRequest, Message, Sampling
from mrlite.hw import native_bf16  # re-exported: hardware facts live in mrlite.hw
from mrlite.models import check_chat_template
from mrlite.parsing import SCORE_LABEL, WINNER_LABEL, has_score, has_winner
from mrlite.recipe import Recipe

log = logging.getLogger(__name__)

ROWWISE_ATTENTION = "mrlite_rowwise"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    """``backends.hf.dtype`` wins over ``model.dtype``; 'auto' is bf16 where it runs natively, else fp16 on a GPU
    and fp32 on a CPU."""
    name = recipe.backends.hf.dtype if recipe.backends.hf.dtype != "auto" else recipe.model.dtype
    if name != "auto":
        return _DTYPES[name]
    if native_bf16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


def row_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` of a request: a hash, so neighbouring seeds give unrelated streams."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") & (2**63 - 1)


# Left padding of each row of the batch being run, read by the row-wise attention below.
_ROW_PADS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("mrlite_row_pads", default=None)


def rowwise_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention on each row's unpadded keys, exactly as if the row ran alone (rows with equal padding together).

    Why: with a padding mask, SDPA takes another kernel and sums over a longer row, so a left-padded prompt's
    bf16 logits differ from the unpadded ones by a few ulps (0.375 on SmolLM2's logits), and 12 of 16 greedy
    rows then diverged between batch sizes 1 and 16. bf16 linear layers on CPU are row-independent, so with this
    the rows of a batch are bit-identical to batch size 1 (``benchmarks/hf_generate.py --determinism``). The
    padded queries get zeros; nothing reads them. Registered as ``attn_implementation="mrlite_rowwise"``; the
    model then builds no 4-D mask and passes ``attention_mask=None``.
    """
    pads = _ROW_PADS.get()
    n_rep = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, dim = query.shape
    k_len = key.shape[2]
    pads = pads if pads is not None else [0] * batch
    out = query.new_zeros(batch, q_len, heads, dim)
    b0 = 0
    while b0 < batch:  # one SDPA call per run of rows with the same padding (the n samples of a request)
        p = pads[b0]
        b1 = b0 + 1
        while b1 < batch and pads[b1] == p:
            b1 += 1
        q0 = max(p - (k_len - q_len), 0)
        q = query[b0:b1, :, q0:]
        k = key[b0:b1, :, p:]
        v = value[b0:b1, :, p:]
        if n_rep > 1:
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        lq, lk = q.shape[2], k.shape[2]
        mask = None
        if 1 < lq < lk:  # queries at the end of a longer key row: bottom-right aligned causal mask
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scaling, is_causal=mask is None and lq > 1 and lq == lk
        )
        out[b0:b1, q0:] = o.transpose(1, 2)
        b0 = b1
    return out, None


AttentionInterface.register(ROWWISE_ATTENTION, rowwise_attention)


@dataclass
class _Row:
    """One sampled sequence: generated token ids (no EOS), decoded text, and the forced value if any."""

    ids: list[int] = field(default_factory=list)
    hit_eos: bool = False
    text: str = ""
    forced: str | None = None
    forced_tokens: int = 0

    @property
    def completion(self) -> Completion:
        return Completion(text=self.text, forced=self.forced is not None, n_tokens=len(self.ids) + self.forced_tokens)


@dataclass
class HFGenerator:
    """Generator backend on a transformers causal LM (CPU or one GPU).

    Args:
        recipe: Uses ``model.trust_remote_code/revision/dtype/max_model_len``, ``backends.hf.batch_size/dtype``
            and ``judge.score_range`` (the digits a forced score may take).
        model: A resolved model: local directory or Hub id (see ``mrlite.models.resolve_model``).
    """

    def __init__(self, recipe: Recipe, model: str):
        self.recipe = recipe
        self.device = pick_device()
        self.dtype = resolve_dtype(recipe, self.device)
        self.batch_size = recipe.backends.hf.batch_size
        kw: dict = {"trust_remote_code": recipe.model.trust_remote_code}
        if recipe.model.revision and not Path(model).is_dir():
            kw["revision"] = recipe.model.revision
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model, **kw)
        check_chat_template(self.tokenizer, recipe.model.base)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype, **kw).to(self.device).eval()
        self.rowwise = False
        # Row-wise attention only where padding noise matters and the loop is cheap: CPU, 16-bit weights. In fp32
        # batched SDPA's padding noise (~4e-5 on logits) changed 0 of 32 rows; on a GPU the loop costs launches.
        if self.device.type == "cpu" and self.dtype != torch.float32:
            try:
                self.model.set_attn_implementation(ROWWISE_ATTENTION)
                self.rowwise = self.model.config._attn_implementation == ROWWISE_ATTENTION
            except (ValueError, KeyError, NotImplementedError) as e:
                log.info("row-wise attention unavailable for %s (%s); batch rows may differ in the last bits", model, e)
        limit = getattr(self.model.config, "max_position_embeddings", None) or recipe.model.max_model_len
        self.max_model_len = min(recipe.model.max_model_len, limit)
        self.eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self._forcing: dict[str, Forcing] = {}
        log.info("hf generator: %s (%s, %s) loaded in %.1f s", model, self.device, str(self.dtype).removeprefix(
            "torch."), time.perf_counter() - t0)

    # ----------------------------------------------------------------------------------------------------------
    # Protocol

    def generate(self, requests: list[GenRequest], sampling: Sampling) -> list[list[Completion]]:
        """Return ``request.n`` completions per request, in request order.

        Raises:
            ValueError: a prompt leaves no room for an answer within ``model.max_model_len`` (callers drop
                those first, using ``prompt_lengths``), or a forced label's values are not single tokens.
        """
        t0 = time.perf_counter()
        prompts = [self._encode(r.messages) for r in requests]
        budget = []
        for r, ids in zip(requests, prompts, strict=True):
            reserve = len(self._forcing_for(r.force).prefix) + 1 if r.force else 0
            room = self.max_model_len - len(ids) - reserve
            if room < 1 and r.n > 0:
                raise ValueError(
                    f"request {r.id}: prompt is {len(ids)} tokens, leaving no room for an answer within "
                    f"model.max_model_len={self.max_model_len}; drop such prompts first (prompt_lengths)"
                )
            budget.append(min(sampling.max_new_tokens, room))
        # Longest prompts first, a request's samples adjacent: little padding and one prefill per request.
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
        rows = [(i, j) for i in order for j in range(requests[i].n)]
        out: dict[tuple[int, int], _Row] = {}
        with tqdm(total=len(rows), unit="seq", desc="generate", disable=None, leave=False) as bar:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                done = self._generate_batch(
                    prompts=[prompts[i] for i, _ in batch],
                    seeds=[row_seed(requests[i].seed, j) for i, j in batch],
                    budgets=[budget[i] for i, _ in batch],
                    keys=[i for i, _ in batch],
                    forces=[requests[i].force for i, _ in batch],
                    sampling=sampling,
                )
                out.update(zip(batch, done, strict=True))
                bar.update(len(batch))
        result = []
        for i, r in enumerate(requests):
            result.append([out[(i, j)].completion for j in range(r.n)])
        n_tokens = sum(len(row.ids) for row in out.values())
        n_forced = sum(row.completion.forced for row in out.values())
        dt = time.perf_counter() - t0
        log.info("hf generate: %d sequences, %d tokens, %d forced, %.1f s (%.1f tok/s)", len(rows), n_tokens,
                 n_forced, dt, n_tokens / max(dt, 1e-9))
        return result

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def prompt_lengths(self, requests: list[GenRequest]) -> list[int]:
        return [len(self._encode(r.messages)) for r in requests]

    def close(self) -> None:
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ----------------------------------------------------------------------------------------------------------
    # Internals

    def _eos_ids(self) -> set[int]:
        ids = set()
        for src in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif src:
                ids.update(int(x) for x in src)
        if not ids:
            raise ValueError(f"model {self.recipe.model.base} defines no EOS token; generation could not stop")
        return ids

    def _encode(self, messages: list[Message]) -> list[int]:
        """The chat template applied once; it carries BOS itself, so nothing else is added."""
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding regardless
            ids = ids["input_ids"]
        return list(ids)

    def _forward(self, pads: list[int], **kw):
        token = _ROW_PADS.set(pads)
        try:
            return self.model(**kw)
        finally:
            _ROW_PADS.reset(token)

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), pos.to(self.device), [width - len(s) for s in seqs]

    @torch.inference_mode()
    def _generate_batch(
        self, *, prompts: list[list[int]], seeds: list[int], budgets: list[int], keys: list[int],
        forces: list[str | None], sampling: Sampling,
    ) -> list[_Row]:
        """Sample one continuation per row; rows sharing a key (= request) share one prefill.

        Forced completion happens in the same loop: a finished row whose text lacks its label is fed
        ``"\n" + label`` token by token through its own KV cache (no second prefill), and the logits after the
        last label token pick the value: sampled among the allowed tokens with the row's generator (argmax at
        temperature 0), so the pick is as reproducible as the text.
        """
        uniq: dict[int, int] = {}
        for k in keys:
            uniq.setdefault(k, len(uniq))
        first = {k: r for r, k in reversed(list(enumerate(keys)))}
        ids, mask, pos, upads = self._left_pad([prompts[first[k]] for k in uniq])
        cache = DynamicCache()
        logits = self._forward(
            upads, input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        # Expand the prefilled prompts to one row per sample (the prompt is not re-encoded n times).
        sel = torch.tensor([uniq[k] for k in keys], device=self.device)
        cache.batch_select_indices(sel)
        logits, mask, next_pos = logits[sel], mask[sel], pos[sel, -1] + 1
        pads = [upads[uniq[k]] for k in keys]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        rows = [_Row() for _ in prompts]
        queue: list[list[int] | None] = [None] * len(prompts)  # label tokens still to feed (forcing mode)
        live = list(range(len(prompts)))  # batch position -> row
        while True:
            sampled = sample_next(logits, [gens[r] for r in live], sampling.temperature, sampling.top_p).tolist()
            feed, keep = [], []
            for b, r in enumerate(live):
                row = rows[r]
                if queue[r] is None:
                    t = sampled[b]
                    if t in self.eos_ids:
                        row.hit_eos, pending = True, []
                    else:
                        row.ids.append(t)
                        if len(row.ids) < budgets[r]:
                            feed.append(t)
                            keep.append(b)
                            continue
                        pending = [t]  # sampled but not yet in the cache
                    row.text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
                    if not self._needs_force(forces[r], row.text):
                        continue
                    queue[r] = pending + self._forcing_for(forces[r]).prefix
                if queue[r]:
                    feed.append(queue[r].pop(0))
                    keep.append(b)
                else:  # the whole label is in the cache: pick the value
                    # Sampled among the allowed tokens with the row's own generator (stack.md §3, method 1), so
                    # scores keep the model's uncertainty; temperature 0 takes the argmax.
                    f = self._forcing_for(forces[r])
                    allowed = logits[b, f.choices].float()
                    if sampling.temperature > 0:
                        probs = torch.softmax(allowed / sampling.temperature, -1)
                        pick = int(torch.multinomial(probs, 1, generator=gens[r]))
                    else:
                        pick = int(torch.argmax(allowed))
                    row.forced = f.texts[pick]
                    row.forced_tokens = len(f.prefix) + 1
            if not keep:
                break
            if len(keep) < len(live):  # drop finished rows so they cost nothing
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                mask, next_pos = mask[idx], next_pos[idx]
                live = [live[b] for b in keep]
                pads = [pads[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            tok = torch.tensor(feed, device=self.device)
            logits = self._forward(
                pads, input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                past_key_values=cache, use_cache=True,
            ).logits[:, -1]
            next_pos = next_pos + 1
        for row, force in zip(rows, forces, strict=True):
            if row.forced is not None:
                label = SCORE_LABEL if force == "score" else WINNER_LABEL
                row.text = f"{row.text}\n{label}{row.forced}"
        return rows

    def _needs_force(self, force: str | None, text: str) -> bool:
        if force == "score":
            lo, hi = self.recipe.judge.score_range
            return not has_score(text, lo, hi)
        if force == "winner":
            return not has_winner(text)
        return False

    def _forcing_for(self, force: str | None) -> Forcing:
        """Label prefix + one token per allowed value, cached per kind (see mrlite.backends.forcing)."""
        if force not in self._forcing:
            def encode(text: str) -> list[int]:
                return self.tokenizer(text, add_special_tokens=False)["input_ids"]

            self._forcing[force] = forcing_tokens(encode, force, self.recipe.judge.score_range)
        return self._forcing[force]


def sample_next(logits: torch.Tensor, gens: list[torch.Generator], temperature: float, top_p: float) -> torch.Tensor:
    """Next token per row: greedy at temperature 0, else temperature + nucleus sampling by the Gumbel-max trick.

    Each row draws one uniform per vocabulary entry per step from its own generator, so its draws do not depend
    on the other rows of the batch. Gumbel-max (argmax of logits/T + noise, the noise indexed by token id) is used
    rather than an inverse CDF over sorted probabilities because a last-bit change in the logits (batched matmuls
    differ from unbatched ones) then flips the pick only when the two best perturbed scores nearly tie, instead of
    whenever the sort order or the cumulative sums shift.

    Top-p without sorting the vocabulary (a sort costs ~4 ms per row on CPU): walk the tokens in order of
    perturbed score and take the first inside the nucleus, i.e. whose more likely tokens hold less than
    ``top_p`` of the mass. That equals the argmax over the nucleus, and the first candidate is inside it with
    probability >= ``top_p``.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    vocab = scores.shape[-1]
    u = torch.stack([torch.rand(vocab, generator=g) for g in gens]).to(scores.device)
    perturbed = scores + _gumbel(u)
    if top_p >= 1.0:
        return perturbed.argmax(-1)
    probs = torch.softmax(scores, dim=-1)
    cand = perturbed.topk(min(8, vocab), dim=-1).indices  # best first
    choice = probs.argmax(-1)  # inside every nucleus; kept only if 8 candidates all fall outside (< 0.05**8)
    found = torch.zeros_like(choice, dtype=torch.bool)
    for j in range(cand.shape[1]):
        c = cand[:, j]
        pc = probs.gather(-1, c[:, None])
        inside = (probs * (probs > pc)).sum(-1) < top_p
        take = inside & ~found
        choice = torch.where(take, c, choice)
        found |= take
        if bool(found.all()):
            break
    return choice


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u.clamp_min(1e-20)))
