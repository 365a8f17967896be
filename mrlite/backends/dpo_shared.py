"""DPO with each pair's prompt computed once: chosen and rejected answers share their prompt's forward (CPU).

TRL's ``DPOTrainer`` scores a batch as 2B whole sequences (prompt + chosen, prompt + rejected), so every prompt
token goes through the policy forward, its backward and the reference forward twice. A tiny-recipe judge pair is
a ~450-token judge prompt and ~50-token judgments: ~45 % of a step recomputes prompts. Here a batch runs its B
prompts once (keeping their key/value cache, with gradient), then the 2B answers against that cache, and projects
only answer positions through the LM head. The loss, the gradient and the logged metrics are TRL's up to
floating-point noise (``tests/test_trl_backend.py`` compares one step with TRL's own).

Only the setup mrlite trains is shared: the sigmoid (standard DPO) loss, reverse KL, a fresh LoRA adapter as the
policy with the reference = the adapter switched off, one process, no activation checkpointing, no precomputed
reference log-probs, a text model whose logits are ``lm_head(h)`` unscaled. Anything else, and any batch whose
chosen and rejected prompts differ, goes through TRL's own ``_compute_loss``.
Exercised by: ``mrlite run recipes/tiny.yaml`` (the TRL trainer on CPU) and ``mrlite bench train``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_SCALING_FIELDS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                   "logits_scaling")
"""Config fields that make a model's logits something other than ``lm_head(h)`` (TRL's fused head applies them)."""


@dataclass
class SharedBatch:
    """A DPO batch split at the prompt: B prompts (right-padded) and 2B answers, chosen/rejected interleaved."""

    prompts: torch.Tensor  # [B, Lp]
    prompt_mask: torch.Tensor  # [B, Lp]
    prompt_lens: torch.Tensor  # [B]
    answers: torch.Tensor  # [2B, La]: row 2i = chosen of pair i, 2i + 1 = its rejected
    answer_mask: torch.Tensor  # [2B, La]


def split_batch(inputs: dict, pad_id: int) -> SharedBatch | None:
    """TRL's collated DPO batch (rows ``[chosen_0..chosen_B-1, rejected_0..]``, each prompt then answer, flush
    left) as prompts + answers; None when a pair's two prompts differ or a row is not prompt-then-answer."""
    ids, attn, comp = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
    n = ids.shape[0]
    if n % 2 or set(inputs) - {"input_ids", "attention_mask", "completion_mask"}:
        return None
    b = n // 2
    rows = []
    for r in range(n):
        length = int(attn[r].sum())
        where = comp[r, :length].nonzero().flatten().tolist()
        if not where or int(attn[r, :length].sum()) != length or where != list(range(where[0], length)):
            return None  # not flush-left prompt + one contiguous answer (e.g. a truncated answer)
        rows.append((ids[r, : where[0]].tolist(), ids[r, where[0] : length].tolist()))
    prompts, answers = [], []
    for i in range(b):
        (pc, ac), (pr, ar) = rows[i], rows[b + i]
        if pc != pr or not pc:
            return None
        prompts.append(pc)
        answers += [ac, ar]

    def pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        t = torch.full((len(seqs), width), pad_id, dtype=ids.dtype)
        m = torch.zeros((len(seqs), width), dtype=attn.dtype)
        for k, s in enumerate(seqs):
            t[k, : len(s)] = torch.tensor(s, dtype=ids.dtype)
            m[k, : len(s)] = 1
        return t.to(ids.device), m.to(ids.device)

    p, pm = pad(prompts)
    a, am = pad(answers)
    return SharedBatch(p, pm, torch.tensor([len(x) for x in prompts], device=ids.device), a, am)


def answer_logits(lm, batch: SharedBatch) -> torch.Tensor:
    """Logits (fp32) at each answer position of ``batch``, flattened over the answer mask: ``[answer tokens, V]``.

    The prompts run once with a key/value cache (gradient flows through it), the cache is repeated for the pair's
    two answers, and the answers run against it. The logits that predict answer token j come from answer position
    j - 1, or for j = 0 from the prompt's last position (shared by the pair).
    """
    from transformers import DynamicCache

    backbone, head = lm.base_model, lm.get_output_embeddings()
    b, lp = batch.prompts.shape
    la = batch.answers.shape[1]
    cache = DynamicCache(config=lm.config)
    pos_p = torch.arange(lp, device=batch.prompts.device).expand(b, lp)
    hp = backbone(input_ids=batch.prompts, attention_mask=batch.prompt_mask, position_ids=pos_p,
                  past_key_values=cache, use_cache=True).last_hidden_state
    last = hp[torch.arange(b, device=hp.device), batch.prompt_lens - 1]  # [B, H]
    cache.batch_repeat_interleave(2)
    lens = batch.prompt_lens.repeat_interleave(2)
    pos_a = lens[:, None] + torch.arange(la, device=lens.device)[None, :]
    mask = torch.cat([batch.prompt_mask.repeat_interleave(2, dim=0), batch.answer_mask], dim=1)
    ha = backbone(input_ids=batch.answers, attention_mask=mask, position_ids=pos_a, past_key_values=cache,
                  use_cache=True).last_hidden_state  # [2B, La, H]
    h = torch.cat([last.repeat_interleave(2, dim=0)[:, None], ha[:, :-1]], dim=1)
    return head(h[batch.answer_mask.bool()]).float()


def sequence_logps(logp: torch.Tensor, batch: SharedBatch) -> torch.Tensor:
    """Per-answer summed log-probs ``[2B]`` from the log-softmax of ``answer_logits``' output."""
    sel = batch.answer_mask.bool()
    tok = logp.gather(-1, batch.answers[sel][:, None]).squeeze(-1)
    return torch.zeros(batch.answers.shape, dtype=tok.dtype, device=tok.device).masked_scatter(sel, tok).sum(1)


@functools.cache
def shared_prompt_trainer(base_cls: type) -> type:
    """A subclass of TRL's ``DPOTrainer`` (``base_cls``) whose loss runs each pair's prompt once (module doc)."""

    class SharedPromptDPOTrainer(base_cls):
        _share: bool | None = None

        def _can_share(self, model) -> bool:
            if self._share is None:
                from peft import PeftModel

                unwrapped = self.accelerator.unwrap_model(model)
                cfg = unwrapped.config.get_text_config() if hasattr(unwrapped, "config") else None
                checks = {
                    "loss": list(self.loss_types) == ["sigmoid"] and self.f_divergence_type == "reverse_kl",
                    "plain": self.ld_alpha is None and not self.use_weighting and not self.aux_loss_enabled,
                    "reference": not self.precompute_ref_logps and self.ref_model is None
                    and isinstance(unwrapped, PeftModel) and "ref" not in unwrapped.peft_config,
                    "process": self.accelerator.num_processes == 1 and not self.args.gradient_checkpointing,
                    "data": not self._is_vision_dataset and not self.padding_free,
                    "logits": cfg is not None and all(getattr(cfg, f, None) is None for f in _SCALING_FIELDS),
                }
                self._share = all(checks.values())
                log.info("dpo: %s", "each pair's prompt is computed once" if self._share else
                         f"TRL's full-sequence loss ({', '.join(k for k, v in checks.items() if not v)})")
            return self._share

        def _compute_loss(self, model, inputs, return_outputs):
            batch = None
            if not return_outputs and self._can_share(model):
                batch = split_batch(inputs, self.processing_class.pad_token_id or 0)
            if batch is None:
                return super()._compute_loss(model, inputs, return_outputs)
            return self._shared_loss(model, inputs, batch)

        def _shared_loss(self, model, inputs, batch: SharedBatch):
            from trl.trainer.utils import use_adapter

            mode = "train" if self.model.training else "eval"
            peft_model = self.accelerator.unwrap_model(model)
            lm = peft_model.get_base_model()
            logits = answer_logits(lm, batch)
            logp = logits.log_softmax(-1)  # once: the loss and the logged entropy both read it
            logps = sequence_logps(logp, batch)
            with torch.no_grad(), use_adapter(peft_model, adapter_name=None):
                ref_logps = sequence_logps(answer_logits(lm, batch).log_softmax(-1), batch)
            chosen, rejected = logps[0::2], logps[1::2]
            chosen_ratio, rejected_ratio = chosen - ref_logps[0::2], rejected - ref_logps[1::2]
            loss = -F.logsigmoid(self.beta * (chosen_ratio - rejected_ratio)).mean() * self.loss_weights[0]
            self._log_shared(mode, inputs, batch, logits.detach(), logp.detach(), chosen.detach(), rejected.detach(),
                             chosen_ratio.detach(), rejected_ratio.detach())
            return loss

        def _log_shared(self, mode, inputs, batch, logits, logp, chosen, rejected, chosen_ratio, rejected_ratio
                        ) -> None:
            """The metrics TRL's ``_compute_loss`` logs, under the same names."""
            gather, m = self.accelerator.gather_for_metrics, self._metrics[mode]
            sel = batch.answer_mask.bool()
            m["entropy"].append(float(-(logp.exp() * logp).sum(-1).mean()))
            if mode == "train":
                self._total_train_tokens += int(gather(inputs["attention_mask"].sum()).sum()) // self._tp_size
            m["num_tokens"] = [self._total_train_tokens]
            is_chosen = (torch.arange(batch.answers.shape[0], device=sel.device) % 2 == 0)[:, None].expand_as(sel)[sel]
            mean_logits = logits.mean(-1)
            m["logits/chosen"].append(float(mean_logits[is_chosen].mean()))
            m["logits/rejected"].append(float(mean_logits[~is_chosen].mean()))
            top1 = logits.argmax(-1) == batch.answers[sel]
            m["mean_token_accuracy"].append(float(top1[is_chosen].float().mean()))
            chosen_rewards, rejected_rewards = self.beta * chosen_ratio, self.beta * rejected_ratio
            m["rewards/chosen"].append(float(gather(chosen_rewards).mean()))
            m["rewards/rejected"].append(float(gather(rejected_rewards).mean()))
            m["rewards/accuracies"].append(float(gather((chosen_rewards > rejected_rewards).float()).mean()))
            m["rewards/margins"].append(float(gather(chosen_rewards - rejected_rewards).mean()))
            m["logps/chosen"].append(float(gather(chosen).mean()))
            m["logps/rejected"].append(float(gather(rejected).mean()))

    SharedPromptDPOTrainer.__name__ = SharedPromptDPOTrainer.__qualname__ = f"SharedPrompt{base_cls.__name__}"
    return SharedPromptDPOTrainer


__all__ = ["SharedBatch", "answer_logits", "sequence_logps", "shared_prompt_trainer", "split_batch"]
