"""Deterministic fake backend: a scripted generator and a trainer that writes real (tiny) adapter files.

Every output derives from a hash of (run seed, model identity, row id, role, sample index) — never from call
order or batching — so the loop's bookkeeping (ids, parsing, pairing, resume, markers) runs for real in
seconds without torch. Judge texts end in ``Score: s`` so the real parser runs; a configurable share has no
label (and gets a forced label when the recipe asks, as the real generators do). The meta-judge prefers the
judgment with the higher latent quality, with a configurable first-position bias. Asked (role ``eval``) to
compare two answers in eval's pairwise template, it reads the two answers out of the prompt, as a model would,
and prefers the one with the higher latent quality, with the same first-position bias, ending in ``[[A]]``,
``[[B]]`` or ``[[C]]``; any other eval request is answered like an actor's.
Exercised by: ``mrlite run recipes/smoke.yaml``.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import struct
from pathlib import Path

from mrlite.backends.base import Completion, GenRequest, Sampling, TrainResult
from mrlite.backends.forcing import pick_choice, score_values
from mrlite.core.parsing import SCORE_LABEL, WINNER_LABEL, has_score, has_winner
from mrlite.recipe import Recipe
from mrlite.rundir import atomic_write_json, atomic_write_text, hash_parts, iter_jsonl, model_identity, sha256_file

_WORDS = ["clear", "concise", "helpful", "answer", "detail", "example", "step", "reason", "because", "therefore", "first", "second", "finally", "note", "consider", "simple", "careful", "context", "summary", "point", "idea", "result", "method", "check", "useful", "further", "overall"]


_OPENERS = ["How do I", "Explain", "Write a short story about", "What is the difference between", "Give me tips on",
            "Summarize", "Why does", "Compare", "Plan a trip with", "Write a poem about", "Help me understand",
            "List three facts about"]
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fe", "gi", "hu", "ja", "ko", "le",
              "mo", "nu", "pi", "qua", "ri", "so", "tu", "ve", "wo", "xi", "ya", "zu", "bre", "cla", "dro", "fli",
              "gra", "ple", "sta", "tri", "blo", "cre", "spa"]
_SHOT_RE = re.compile(r"<task>(.*?)</task>", re.DOTALL)
# The two answers of eval's pairwise judge prompt (mrlite/templates/eval_pairwise.txt).
_PAIRWISE_RE = re.compile(r"\[The Start of Answer A\]\n(.*)\n\[The End of Answer A\].*"
                          r"\[The Start of Answer B\]\n(.*)\n\[The End of Answer B\]", re.S)


def _u(*parts: object) -> float:
    """Uniform [0, 1) from a hash of the parts."""
    return int.from_bytes(hash_parts(*parts)[:8], "big") / 2**64


def _model_identity(model: str) -> str:
    p = Path(model)
    return model_identity(p)[:16] if (p / "lineage.json").is_file() else model


class FakeGenerator:
    """Scripted Generator (see module docstring). ``history`` records every request received."""

    def __init__(self, recipe: Recipe, model: str):
        self.seed = recipe.loop.seed
        self.cfg = recipe.backends.fake
        self.low, self.high = recipe.judge.score_range
        self.model = _model_identity(model)
        self.history: list[GenRequest] = []

    # -- roles ---------------------------------------------------------------------------------------------
    def _actor(self, rid: str) -> str:
        u = _u(self.seed, self.model, rid, "actor")
        if u < 0.04:
            return ""  # empty answers happen; the sample stage drops them
        if u < 0.12:
            rid = rid.rsplit(":", 1)[0]  # a duplicate of the prompt's canonical answer
        n = 6 + int(_u(self.seed, self.model, rid, "len") * 60)
        words = [_WORDS[int(_u(self.seed, rid, i) * len(_WORDS))] for i in range(n)]
        return f"Answer ({rid}): " + " ".join(words) + "."

    def _tasks(self, req: GenRequest) -> str:
        """A few-shot prompt's continuation: 2-5 new tasks, now and then a copy (or a near copy) of one of the
        shown examples, an empty or a too-short one, as real models do."""
        shots = _SHOT_RE.findall(req.messages[-1]["content"])
        rng = random.Random(int(_u(self.seed, self.model, req.id, "tasks") * 2**53))
        tasks = []
        for _ in range(rng.randint(2, 5)):
            u = rng.random()
            if u < 0.04 and shots:
                tasks.append(rng.choice(shots))
            elif u < 0.08 and shots:
                tasks.append(rng.choice(shots) + " please")
            elif u < 0.10:
                tasks.append("Hi")
            else:
                words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3))) for _ in range(rng.randint(4, 12))]
                tasks.append(f"{rng.choice(_OPENERS)} {' '.join(words)}?")
        return " " + "</task>\n<task>".join(tasks) + "</task>"

    def _quality(self, rid: str) -> float:
        return self.low + (self.high - self.low) * _u(self.seed, self.model, rid, "quality")

    def _judge(self, rid: str, k: int) -> tuple[str, bool]:
        q = self._quality(rid)
        noise = (_u(self.seed, self.model, rid, k, "noise") - 0.5) * 2.0
        score = int(min(self.high, max(self.low, round(q + noise))))
        n = 4 + int(_u(self.seed, self.model, rid, k, "jlen") * 30)
        body = " ".join(_WORDS[int(_u(self.seed, rid, k, i) * len(_WORDS))] for i in range(n))
        if _u(self.seed, self.model, rid, k, "unparseable") < self.cfg.unparseable_share:
            return f"The response is {body}. I would rate it highly overall.", False
        return f"The response is {body}.\nScore: {score}", True

    def _meta(self, rid: str, k: int) -> tuple[str, bool]:
        a, _, b = rid.partition("|")
        qa, qb = _u(self.seed, self.model, a, "jq"), _u(self.seed, self.model, b, "jq")
        u = _u(self.seed, self.model, rid, k, "verdict")
        if _u(self.seed, self.model, rid, k, "biased") < abs(self.cfg.first_position_bias - 0.5) * 2:
            winner = "A" if self.cfg.first_position_bias >= 0.5 else "B"
        else:
            winner = "A" if u < 1 / (1 + math.exp(-6 * (qa - qb))) else "B"
        if _u(self.seed, self.model, rid, k, "unparseable") < self.cfg.unparseable_share:
            return "Both judgments have merits and it is hard to choose.", False
        return f"Judgment {winner} applies the rubric more faithfully.\nWinner: Judgement {winner}", True

    def _pairwise(self, rid: str, k: int, a: str, b: str) -> str:
        """A verdict on two answers: latent quality from each answer's text, plus the first-position bias."""
        qa, qb = _u(self.seed, self.model, a, "aq"), _u(self.seed, self.model, b, "aq")
        if _u(self.seed, self.model, rid, k, "unparseable") < self.cfg.unparseable_share:
            return "Both answers have merits and it is hard to choose."
        if _u(self.seed, self.model, rid, k, "biased") < abs(self.cfg.first_position_bias - 0.5) * 2:
            v = "A" if self.cfg.first_position_bias >= 0.5 else "B"
        elif abs(qa - qb) < 0.05:
            v = "C"
        else:
            v = "A" if _u(self.seed, self.model, rid, k, "verdict") < 1 / (1 + math.exp(-6 * (qa - qb))) else "B"
        why = {"A": "Answer A is more helpful.", "B": "Answer B is more helpful.", "C": "They are equally good."}[v]
        return f"{why}\n[[{v}]]"

    def generate(self, requests: list[GenRequest], sampling: Sampling) -> list[list[Completion]]:
        out = []
        for req in requests:
            self.history.append(req)
            comps = []
            for k in range(req.n):
                rid = f"{req.id}:{k}" if req.role == "actor" else req.id
                if req.role == "prompts":
                    text = self._tasks(req) if k == 0 else self._tasks(GenRequest(f"{req.id}:{k}", req.messages, 1, 0))
                    comps.append(Completion(text, False, len(text.split())))
                    continue
                pair = _PAIRWISE_RE.search(req.messages[-1]["content"]) if req.role == "eval" else None
                if pair:
                    text = self._pairwise(rid, k, pair.group(1), pair.group(2))
                    comps.append(Completion(text, False, len(text.split())))
                    continue
                if req.role in ("actor", "eval"):
                    text = self._actor(rid)
                    comps.append(Completion(text, False, len(text.split())))
                    continue
                text, _ = self._judge(rid, k) if req.role == "judge" else self._meta(rid, k)
                forced = False
                # Forced values follow the shared rule (forcing.pick_choice) on scripted logits: scores near the
                # response's latent quality, the verdict towards the better judgment.
                if req.force == "score" and not has_score(text, self.low, self.high):
                    values = [int(v) for v in score_values((self.low, self.high))]
                    q = self._quality(rid)
                    pick = pick_choice([-((v - q) ** 2) for v in values], sampling.temperature,
                                       _u(self.seed, rid, k, "forced"))
                    text, forced = f"{text}\n{SCORE_LABEL}{values[pick]}", True
                elif req.force == "winner" and not has_winner(text):
                    a, _, b = rid.partition("|")
                    gap = _u(self.seed, self.model, a, "jq") - _u(self.seed, self.model, b, "jq")
                    pick = pick_choice([3 * gap, -3 * gap], sampling.temperature, _u(self.seed, rid, k, "f"))
                    text, forced = f"{text}\n{WINNER_LABEL}{'AB'[pick]}", True
                comps.append(Completion(text, forced, len(text.split())))
            out.append(comps)
        return out

    def prompt_lengths(self, requests: list[GenRequest]) -> list[int]:
        return [sum(len(m["content"].split()) for m in r.messages) + 4 for r in requests]

    def close(self) -> None:
        pass


def _write_safetensors(path: Path, name: str, values: list[float]) -> None:
    """A real safetensors file (8-byte header length, JSON header, little-endian F32 data)."""
    data = struct.pack(f"<{len(values)}f", *values)
    header = {name: {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)


class FakeTrainer:
    """Trainer that 'trains' instantly: a deterministic adapter derived from the rows, a lineage chain and a
    plausible metrics curve, so everything downstream of training runs for real."""

    def __init__(self, recipe: Recipe, iteration: int):
        self.recipe = recipe
        self.iteration = iteration

    def _train(self, rows: Path, base: str, out: Path, kind: str) -> TrainResult:
        n = sum(1 for _ in iter_jsonl(rows))
        if n == 0:
            raise ValueError(f"{rows}: no training rows")
        digest = sha256_file(rows)
        cfg = self.recipe.train if kind == "dpo" else self.recipe.eft
        adapter = out / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        atomic_write_json(adapter / "adapter_config.json", {
            "peft_type": "LORA", "r": cfg.lora.r, "lora_alpha": cfg.lora.alpha,
            "target_modules": cfg.lora.target_modules, "base_model_name_or_path": _model_identity(base), "fake": True,
        })
        _write_safetensors(adapter / "adapter_model.safetensors", "lora_B",
                           [round(_u(digest, i) - 0.5, 6) for i in range(16)])
        parent = Path(base) / "lineage.json"
        lineage = json.loads(parent.read_text()) if parent.is_file() else {"base": str(base), "adapters": []}
        lineage["adapters"].append({"iteration": self.iteration, "kind": kind,
                                    "adapter_sha256": sha256_file(adapter / "adapter_model.safetensors")})
        if kind == "dpo" and self.recipe.train.method == "full":
            lineage["adapters"][-1]["method"] = "full"
        model = out / "model"
        model.mkdir(parents=True, exist_ok=True)
        atomic_write_json(model / "lineage.json", lineage)
        atomic_write_text(model / "fake_model.txt", "fake model; identity = hash of lineage.json\n")
        if kind == "dpo" and self.recipe.train.method == "full":  # full fine-tuning writes M_t only
            shutil.rmtree(adapter)
        steps = max(1, math.ceil(n / (cfg.batch_size * cfg.grad_accum)))
        metrics = []
        for s in range(1, steps + 1):
            loss = round(0.6931 * math.exp(-0.15 * s) + 0.01 * _u(digest, s), 6)
            row = {"step": s, "loss": loss}
            if kind == "dpo":
                margin = round(0.6931 - loss, 6)
                row |= {"rewards/margins": margin, "rewards/accuracies": round(min(1.0, 0.5 + margin), 6)}
            metrics.append(row)
        return TrainResult(n_rows=n, metrics=metrics,
                           summary={"steps": steps, "first_loss": metrics[0]["loss"], "last_loss": metrics[-1]["loss"]})

    def train_dpo(self, rows: Path, base: str, out: Path) -> TrainResult:
        return self._train(rows, base, out, "dpo")

    def train_sft(self, rows: Path, base: str, out: Path) -> TrainResult:
        return self._train(rows, base, out, "sft")
