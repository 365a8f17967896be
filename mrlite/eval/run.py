"""``mrlite eval RUN_DIR``: answers of every iteration's model, leaderboard exports, pairwise win rates judged in
both orders (raw and AlpacaEval-style LC, with AlpacaEval annotation files), judge quality against human rankings
and against an external judge, and the meta-judge's biases.

The paper evaluates with AlpacaEval 2 (LC win rate) and Arena-Hard, GPT-4 judging, plus judge agreement with
GPT-4 and with humans on Open Assistant and the meta-judge's positional and score bias (algorithm.md Part B §7;
arXiv 2407.19594 Tables 1-5, 7). This module does the offline, cheap version of each and exports the answers and
verdicts for the official tools. Everything lands in ``RUN_DIR/eval/`` (atomic writes); answers and judgments are
cached under ``eval/cache/`` by content, so a repeated eval makes no model or judge call. Exercised by:
``mrlite eval runs/smoke``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mrlite.backends.base import GenRequest, Sampling, fits
from mrlite.data.datagen import judge_scores, open_generator
from mrlite.core.diagnostics import mean_score
from mrlite.errors import MrliteError
from mrlite.core.fmt import pct
from mrlite.data.oasst import human_agreement, load_ranked
from mrlite.recipe import Recipe, load_recipe
from mrlite.rundir import (
    RunDir, atomic_write_json, atomic_write_jsonl, atomic_write_text, derive_seed, model_identity, read_jsonl,
)
from mrlite.report.runstats import meta_judge_biases, run_iterations
from mrlite.data.sources import PromptPool, load_prompt_pool, normalize_prompt
from mrlite.eval.judge import PROMPT_VERSION, EndpointJudge, JsonlCache, LocalJudge, judge_comparison, key_of
from mrlite.eval.winrate import LC_NAME, PromptResult, judge_agreement, summarize

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
LC_DEFINITION = {
    "name": LC_NAME,
    "features": "tanh(dlen / std(dlen)) + model term; dlen = M_t's answer minus the baseline's, in characters, std "
                "with ddof 1",
    "fit": "logistic, per-prompt preference (share of the two orders M_t won, tie = 1/2) as the target, L2 with C = "
           "100 on both terms",
    "read_out": "at dlen = 0: AlpacaEval's length_controlled_minimal GLM on eval/alpaca_eval/annotations_*.json, with "
                "a fixed weak penalty where AlpacaEval cross-validates an L1 one",
}


class EvalError(MrliteError, ValueError):
    """An eval problem a user can fix. One line."""


@dataclass
class EvalModel:
    """M_t: ``path`` loads with the run's generator backend; ``identity`` keys the caches."""

    t: int
    path: str
    identity: str
    name: str


# --------------------------------------------------------------------------------------------------------------
# models, prompts and answers


def trained_iterations(rd: RunDir) -> list[int]:
    return [t for t in run_iterations(rd) if (rd.path(t, "model")).is_dir() and rd.read_marker(t, "train")]


def targets(rd: RunDir, iters: Sequence[int] | None) -> list[int]:
    """The iterations t >= 1 to compare (default every trained one)."""
    trained = trained_iterations(rd)
    wanted = trained if iters is None else sorted(set(iters) - {0})
    missing = [t for t in wanted if t not in trained]
    if missing:
        raise EvalError(f"{rd.root}: iteration(s) {missing} have no trained model (trained: {trained or 'none'}); "
                        "finish them with mrlite run, or drop them from --iters")
    return wanted


def find_models(rd: RunDir, recipe: Recipe, iters: Sequence[int] | None) -> list[EvalModel]:
    """The models to answer: M_0, each target M_t and its predecessor M_{t-1} (for "vs previous").

    Args:
        rd: The run directory.
        recipe: Its recipe (M_0 is the base model, or ``iter_00/model`` after EFT).
        iters: Target iterations; None = every trained one.

    Returns:
        EvalModels sorted by iteration.

    Raises:
        EvalError: a target iteration has no trained model.
    """
    wanted = targets(rd, iters)
    wanted = sorted(set(wanted) | {t - 1 for t in wanted if t - 1 in trained_iterations(rd)})
    out = []
    if recipe.eft.enabled:
        d = rd.path(0, "model")
        if not d.is_dir():
            raise EvalError(f"{rd.root}: EFT is enabled but iter_00/model is missing; run the eft stage first")
        out.append(EvalModel(0, str(d), model_identity(d), f"{recipe.name}-M0"))
    else:
        from mrlite.stages import resolve_base

        base = resolve_base(recipe)
        out.append(EvalModel(0, base, f"{recipe.model.base}@{recipe.model.revision or ''}", f"{recipe.name}-M0"))
    for t in wanted:
        d = rd.path(t, "model")
        out.append(EvalModel(t, str(d), model_identity(d), f"{recipe.name}-M{t}"))
    return out


def heldout_prompts(rd: RunDir, recipe: Recipe, spec: str, column: str, split: str, limit: int) -> list[dict]:
    """The eval prompts, ``{"prompt_id", "prompt"}``.

    Args:
        rd: The run directory.
        recipe: Its recipe (``heldout`` reads its prompt source).
        spec: ``heldout`` (the run's source minus every prompt an iteration trained on), or any prompt source.
        column: Prompt column of ``spec``.
        split: Split of ``spec``.
        limit: At most this many, in source order.

    Raises:
        EvalError: no held-out prompt is left. SourceError: the source cannot be read.
    """
    if spec == "heldout":
        d = recipe.data
        if rd.path(0, "pool.jsonl").is_file():  # the run's own pool (grown or read by its prompts stage)
            pool_rows = read_jsonl(rd.path(0, "pool.jsonl"))
            pool = PromptPool([r["id"] for r in pool_rows], [r["prompt"] for r in pool_rows], "run-pool")
        else:
            pool = load_prompt_pool(d.prompts, d.column, d.split, d.max_prompt_chars)
        used = {normalize_prompt(p["prompt"]) for t in run_iterations(rd) if rd.path(t, "prompts.jsonl").is_file()
                for p in read_jsonl(rd.path(t, "prompts.jsonl"))}
        rows = [{"prompt_id": i, "prompt": p} for i, p in zip(pool.ids, pool.prompts, strict=True)
                if normalize_prompt(p) not in used]
        if not rows:
            raise EvalError(f"{rd.root}: every prompt of {d.prompts!r} was used in training; pass --prompts FILE")
    else:
        pool = load_prompt_pool(spec, column, split)
        rows = [{"prompt_id": i, "prompt": p} for i, p in zip(pool.ids, pool.prompts, strict=True)]
    return rows[:limit]


def generate_answers(recipe: Recipe, gen, model: EvalModel, prompts: list[dict], sampling: Sampling, seed: int,
                     cache: JsonlCache) -> tuple[list[dict], dict]:
    """Answer every prompt once, greedy or sampled as ``sampling`` says, seeded per prompt.

    Args:
        recipe: The run's recipe (context length).
        gen: M_t's generator.
        model: M_t.
        prompts: The eval prompts.
        sampling: Answer sampling.
        seed: Seed of the answers (the same per prompt for every model).
        cache: Answers keyed by (model identity, prompt, sampling, seed).

    Returns:
        Answer rows (``output`` None where the prompt was too long for the model) and counts.
    """
    keys = [key_of(model.identity, p["prompt"], sampling, seed) for p in prompts]
    todo = [i for i, k in enumerate(keys) if cache.get(k) is None]
    if todo:
        reqs = [GenRequest(id=f"eval:{prompts[i]['prompt_id']}", n=1, role="eval",
                           messages=[{"role": "user", "content": prompts[i]["prompt"]}],
                           seed=derive_seed(seed, "eval", prompts[i]["prompt_id"])) for i in todo]
        ok = fits(gen, reqs, recipe.model.max_model_len)
        send = [r for r, k in zip(reqs, ok, strict=True) if k]
        outs = iter(gen.generate(send, sampling) if send else [])
        for i, fit in zip(todo, ok, strict=True):
            c = next(outs)[0] if fit else None
            cache.put({"key": keys[i], "text": None if c is None else c.text,
                       "tokens": None if c is None else c.n_tokens})
        cache.save()
    rows = []
    for p, k in zip(prompts, keys, strict=True):
        c = cache.get(k)
        rows.append({"prompt_id": p["prompt_id"], "prompt": p["prompt"], "output": c["text"],
                     "chars": None if c["text"] is None else len(c["text"]), "tokens": c["tokens"],
                     "generator": model.name})
    return rows, {"generated": len(todo), "cached": len(prompts) - len(todo),
                  "too_long": sum(r["output"] is None for r in rows)}


def write_exports(ev: Path, model: EvalModel, answers: list[dict], dataset: str) -> None:
    """Write M_t's answers, its AlpacaEval ``model_outputs`` JSON and its Arena-Hard answer JSONL (v0.1 layout).

    Args:
        ev: The ``eval/`` folder.
        model: M_t; its ``name`` is the generator / model id in both exports.
        answers: Answer rows.
        dataset: AlpacaEval's ``dataset`` field.
    """
    ok = [a for a in answers if a["output"] is not None]
    atomic_write_jsonl(ev / "answers" / f"M{model.t}.jsonl", answers)
    alpaca = [{"instruction": a["prompt"], "output": a["output"], "generator": model.name, "dataset": dataset}
              for a in ok]
    atomic_write_text(ev / "alpaca_eval" / f"{model.name}.json", json.dumps(alpaca, ensure_ascii=False, indent=1))
    atomic_write_jsonl(ev / "arena_hard" / "model_answer" / f"{model.name}.jsonl", [
        {"question_id": a["prompt_id"], "answer_id": key_of(model.name, a["prompt_id"], a["output"])[:22],
         "model_id": model.name, "choices": [{"index": 0, "turns": [{"content": a["output"]}]}], "tstamp": 0.0,
         "conv_metadata": {"token_len": a["tokens"]}} for a in ok])


# --------------------------------------------------------------------------------------------------------------
# judges


def open_judge(spec: str, rd: RunDir, recipe: Recipe, models: list[EvalModel], *, api_key_env: str | None,
               max_tokens: int, concurrency: int, retries: int = 4):
    """Open the pairwise judge.

    Args:
        spec: ``self`` (the newest evaluated model judges every pair), a model (alias, folder, Hub id; loaded
            with the hf backend, or the run's own real backend), or ``openai:<base_url>#<model>``.
        rd: The run directory.
        recipe: Its recipe.
        models: The evaluated models.
        api_key_env: Environment variable with the endpoint key (None: no key).
        max_tokens: The judge's answer budget (part of its cache identity).
        concurrency: Endpoint requests in flight.
        retries: Endpoint retries per request.

    Raises:
        EndpointError: a bad spec or a missing key. ModelError: an unknown model.
    """
    if spec.startswith("openai:"):
        from mrlite.eval.endpoint import OpenAIChat, parse_judge_spec

        url, name = parse_judge_spec(spec)
        client = OpenAIChat(url, name, api_key_env=api_key_env, concurrency=concurrency, retries=retries)
        return EndpointJudge(client, max_tokens)
    from mrlite.backends import load_generator

    if spec == "self":
        m = models[-1]
        return LocalJudge(load_generator(recipe, m.path), f"self:M{m.t}@{m.identity[:12]}|{max_tokens}",
                          recipe.model.max_model_len, max_tokens)
    gen, ident = open_generator(spec, recipe=None if recipe.backends.generator == "fake" else recipe)
    return LocalJudge(gen, f"{ident}|{max_tokens}", recipe.model.max_model_len, max_tokens)


# --------------------------------------------------------------------------------------------------------------
# the whole eval


def _comparisons(ts: list[int]) -> list[tuple[int, int, str]]:
    """(t, baseline, kind) per target: vs M_0, and vs M_{t-1} when that is not M_0 itself."""
    return [c for t in ts for c in [(t, 0, "vs_seed")] + ([(t, t - 1, "vs_prev")] if t >= 2 else [])]


def run_eval(run_dir: str | Path, *, iters: Sequence[int] | None = None, judge: str = "self",
             prompts: str = "heldout", column: str = "prompt", split: str = "train", limit: int = 64,
             human: str | None = None, human_split: str = "validation", human_limit: int = 50, human_n: int = 1,
             lang: str | None = "en", api_key_env: str | None = "OPENAI_API_KEY", n_boot: int = 200,
             concurrency: int = 4, retries: int = 4, judge_max_tokens: int = 512, temperature: float | None = None,
             max_new_tokens: int | None = None, seed: int = 0, agreement: bool = True) -> dict:
    """Run the whole evaluation of a run directory; returns (and writes) ``eval/summary.json``.

    Args:
        run_dir: A run directory with ``recipe.yaml``.
        iters: Iterations to evaluate (M_0 is always included); default every trained one.
        judge: ``self`` (the newest evaluated model judges every pair), a model (alias, folder, Hub id) or
            ``openai:<base_url>#<model>``.
        prompts: ``heldout`` (the run's prompt source minus the training prompts), ``builtin``, a file or a
            Hub id; ``column``/``split`` select from it; ``limit`` caps the count.
        human: Human-ranked data in the Open Assistant format for judge quality (held-out split
            ``human_split``, ``human_limit`` prompts, ``human_n`` judgments per reply, language ``lang``).
            Default: the run's own held-out EFT prompts (``iter_00/eft_heldout.jsonl``, written by the
            ``eft_data`` stage when ``eft.heldout`` > 0), when that file has any; ``""`` turns it off.
        api_key_env: Environment variable with the endpoint's key ('' for none).
        n_boot: Bootstrap resamples for the intervals.
        concurrency: Endpoint requests in flight.
        retries: Endpoint retries per request (exponential backoff from 1 s).
        judge_max_tokens: Answer budget of the pairwise judge.
        temperature: Answer sampling temperature (default: the recipe's actor temperature).
        max_new_tokens: Answer budget (default: the recipe's actor budget).
        seed: Seed of the answer sampling.
        agreement: With an endpoint judge, also judge every pair with the self-judge (the newest model) and
            report its agreement with the endpoint's verdicts (``judge_agreement`` in the summary).

    Returns:
        The summary dict.

    Raises:
        EvalError, RunDirError, SourceError, EndpointError: one-line problems a user can fix.
    """
    rd = RunDir.existing(run_dir)
    recipe = load_recipe(rd.recipe_path)
    ev = rd.root / EVAL_DIR
    models = find_models(rd, recipe, iters)
    judge_obj = None
    if judge.startswith("openai:"):  # fail on a bad spec or missing key before generating anything
        judge_obj = open_judge(judge, rd, recipe, models, api_key_env=api_key_env, max_tokens=judge_max_tokens,
                               concurrency=concurrency, retries=retries)
    plist = heldout_prompts(rd, recipe, prompts, column, split, limit)
    atomic_write_jsonl(ev / "prompts.jsonl", plist)
    if human is None:
        human = default_human(rd)
    ranked = load_ranked(human, split=human_split, lang=lang, limit=human_limit)[0] if human else None
    sampling = _answer_sampling(recipe, temperature, max_new_tokens)
    dataset = "mrlite-heldout" if prompts == "heldout" else Path(prompts).stem
    answers, counts, quality, hrows = _answer_all(recipe, ev, models, plist, sampling, seed, dataset, ranked, human_n)
    judge_obj = judge_obj or open_judge(judge, rd, recipe, models, api_key_env=api_key_env,
                                        max_tokens=judge_max_tokens, concurrency=concurrency, retries=retries)
    ts = targets(rd, iters)
    comps, results = _judge_and_write(judge_obj, ev, ts, answers, n_boot, seed, counts)
    agree = None
    if agreement and judge.startswith("openai:") and comps:
        agree = _self_agreement(rd, recipe, models, ev, ts, answers, results, judge_obj.identity, judge_max_tokens,
                                n_boot, seed)
    if hrows:
        atomic_write_jsonl(ev / "human_judgments.jsonl", hrows)
    summary = {
        "run": recipe.name, "judge": judge_obj.identity, "prompt_template": PROMPT_VERSION,
        "prompts": {"source": prompts, "count": len(plist), "dataset": dataset},
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p,
                     "max_new_tokens": sampling.max_new_tokens, "seed": seed},
        "models": _model_rows(models, answers), "lc_definition": LC_DEFINITION, "comparisons": comps, **counts,
        "human": None if not ranked else {"source": human, "split": human_split, "prompts": len(ranked),
                                          "n": human_n, "models": quality},
        "meta_judge": [{"t": t, **b} for t in run_iterations(rd) if (b := meta_judge_biases(rd, t))],
        "judge_agreement": agree,
    }
    atomic_write_json(ev / "summary.json", summary)
    return summary


def _answer_sampling(recipe: Recipe, temperature: float | None, max_new_tokens: int | None) -> Sampling:
    """How eval answers are sampled: the recipe's actor settings unless the command overrides them."""
    a = recipe.actor
    return Sampling(a.temperature if temperature is None else temperature, a.top_p, max_new_tokens or a.max_new_tokens)


def _judge_and_write(judge, ev: Path, ts: list[int], answers: dict, n_boot: int, seed: int,
                     counts: dict) -> tuple[list[dict], dict]:
    """Judge every comparison (closing the judge afterwards), add its call counts to ``counts``, write
    ``eval/judgments.jsonl``; returns the comparison summaries and the per-prompt results by label."""
    try:
        comps, all_rows, jcounts, results = _judge_all(judge, ev, ts, answers, n_boot, seed)
    finally:
        judge.close()
    counts |= jcounts
    atomic_write_jsonl(ev / "judgments.jsonl", all_rows)
    return comps, results


def _model_rows(models: list[EvalModel], answers: dict) -> list[dict]:
    """The summary's per-model rows: how many prompts each answered and the mean answer length."""
    return [{"t": m.t, "name": m.name, "answers": sum(x["output"] is not None for x in answers[m.t]),
             "mean_chars": mean_score([x["chars"] for x in answers[m.t]])} for m in models]


def default_human(rd: RunDir) -> str | None:
    """The run's held-out EFT prompts (Open Assistant trees the ``eft_data`` stage kept out of training), if any."""
    p = rd.path(0, "eft_heldout.jsonl")
    return str(p) if p.is_file() and p.stat().st_size > 0 else None


def _answer_all(recipe: Recipe, ev: Path, models: list[EvalModel], plist: list[dict], sampling: Sampling,
                seed: int, dataset: str, ranked, human_n: int):
    """Each model in turn: its answers (and exports) and, with human data, its judge quality."""
    from mrlite.backends import load_generator

    acache, hcache = JsonlCache(ev / "cache" / "answers.jsonl"), JsonlCache(ev / "cache" / "human.jsonl")
    answers, counts, quality, hrows = {}, {"answer_calls": 0, "answer_cached": 0}, [], []
    for m in models:
        gen = load_generator(recipe, m.path)
        try:
            answers[m.t], st = generate_answers(recipe, gen, m, plist, sampling, seed, acache)
            counts["answer_calls"] += st["generated"]
            counts["answer_cached"] += st["cached"]
            if ranked:
                q, rows = _human_quality(recipe, gen, m, ranked, human_n, seed, hcache)
                quality.append(q)
                hrows += rows
        finally:
            gen.close()
        write_exports(ev, m, answers[m.t], dataset)
        log.info("eval: M%d answered %d prompts (%d cached)", m.t, len(plist), st["cached"])
    return answers, counts, quality, hrows


def _judge_all(judge, ev: Path, ts: list[int], answers: dict, n_boot: int, seed: int):
    """Every comparison of the targets ``ts``, judged in both orders, summarised with intervals; each comparison's
    verdicts also go to ``alpaca_eval/annotations_<label>.json``. Returns the summaries, verdict rows, call counts
    and the per-prompt results by label."""
    jcache = JsonlCache(ev / "cache" / "judgments.jsonl")
    comps, all_rows, by_label = [], [], {}
    counts = {"judge_calls": 0, "judge_cached": 0, "endpoint_errors": 0}
    for t, b, kind in _comparisons(ts):
        label = f"M{t}_vs_M{b}"
        rows, results, st = judge_comparison(judge, jcache, label, answers[t], answers[b])
        all_rows += rows
        by_label[label] = results
        for k in counts:
            counts[k] += st[k]
        comps.append({"label": label, "t": t, "base": b, "kind": kind, **summarize(results, n_boot=n_boot, seed=seed)})
        write_annotations(ev, label, answers[t], answers[b], results, judge.identity)
        log.info("eval: %s win rate %s (LC %s), %d judged, %d cached", label, pct(comps[-1]["win_rate"], 1),
                 pct(comps[-1]["lc_win_rate"], 1), st["judge_calls"], st["judge_cached"])
        for w in comps[-1]["lc_warnings"]:
            log.warning("eval: %s LC %s", label, w)
    return comps, all_rows, counts, by_label


def alpaca_annotations(ans_t: list[dict], ans_b: list[dict], results: list[PromptResult], annotator: str) -> list[dict]:
    """One comparison's verdicts as AlpacaEval annotations: a row per prompt with both verdicts.

    ``output_1`` is the baseline's answer and ``output_2`` M_t's (AlpacaEval's convention: generator_2 is the
    model being compared); ``preference`` = 1 + the share of the two orders M_t won (a tie counts ½), in [1, 2].
    AlpacaEval's ``get_winrate`` and ``get_length_controlled_winrate`` (``glm_name="length_controlled_minimal"``)
    read these rows as they are.
    """
    rows = []
    for a, b, r in zip(ans_t, ans_b, results, strict=True):
        if r.preference is None:
            continue
        rows.append({"instruction": a["prompt"], "output_1": b["output"], "output_2": a["output"],
                     "generator_1": b["generator"], "generator_2": a["generator"], "annotator": annotator,
                     "preference": 1.0 + r.preference})
    return rows


def write_annotations(ev: Path, label: str, ans_t: list[dict], ans_b: list[dict], results: list[PromptResult],
                      annotator: str) -> Path:
    """Write ``eval/alpaca_eval/annotations_<label>.json`` (``alpaca_annotations``); returns its path."""
    path = ev / "alpaca_eval" / f"annotations_{label}.json"
    atomic_write_text(path, json.dumps(alpaca_annotations(ans_t, ans_b, results, annotator), ensure_ascii=False,
                                       indent=1))
    return path


def _self_agreement(rd: RunDir, recipe: Recipe, models: list[EvalModel], ev: Path, ts: list[int], answers: dict,
                    ext: dict[str, list[PromptResult]], ext_identity: str, max_tokens: int, n_boot: int,
                    seed: int) -> dict:
    """The self-judge (the newest model) judges the external judge's pairs, both orders; its agreement with the
    external judge per comparison and pooled (the paper's agreement-with-GPT-4 table). Verdicts are cached like
    the external judge's; the self-judge's rows go to ``eval/self_judgments.jsonl``."""
    judge = open_judge("self", rd, recipe, models, api_key_env=None, max_tokens=max_tokens, concurrency=1)
    jcache = JsonlCache(ev / "cache" / "judgments.jsonl")
    out = {"judge": judge.identity, "reference": ext_identity, "judge_calls": 0, "judge_cached": 0,
           "comparisons": []}
    rows_all: list[dict] = []
    own_all: list[PromptResult] = []
    ref_all: list[PromptResult] = []
    try:
        for t, b, _ in _comparisons(ts):
            label = f"M{t}_vs_M{b}"
            rows, own, st = judge_comparison(judge, jcache, label, answers[t], answers[b])
            rows_all += rows
            out["judge_calls"] += st["judge_calls"]
            out["judge_cached"] += st["judge_cached"]
            out["comparisons"].append({"label": label, "t": t, "base": b,
                                       **judge_agreement(own, ext[label], n_boot=n_boot, seed=seed)})
            own_all += own
            ref_all += ext[label]
    finally:
        judge.close()
    out["all"] = judge_agreement(own_all, ref_all, n_boot=n_boot, seed=seed)
    atomic_write_jsonl(ev / "self_judgments.jsonl", rows_all)
    a = out["all"]
    log.info("eval: self-judge agrees with %s on %s of %d ordered pairs (%s without ties)", ext_identity,
             pct(a["agreement"], 1), a["pairs"], pct(a["agreement_no_ties"], 1))
    return out


def _human_quality(recipe: Recipe, gen, m: EvalModel, ranked, n: int, seed: int,
                   cache: JsonlCache) -> tuple[dict, list[dict]]:
    """M_t as judge of held-out human-ranked replies: agreement and Spearman (cached per reply)."""
    j = recipe.judge
    sampling = Sampling(j.temperature, j.top_p, j.max_new_tokens)
    items = [(r["message_id"], p.prompt, r["text"]) for p in ranked for r in p.responses]
    keys = {i: key_of(m.identity, "human", p, r, n, sampling, seed) for i, p, r in items}
    todo = [it for it in items if cache.get(keys[it[0]]) is None]
    if todo:
        got, _ = judge_scores(gen, todo, n=n, sampling=sampling, seed=seed, score_range=j.score_range,
                              max_model_len=recipe.model.max_model_len, force=j.force_parse)
        for i, _, _ in todo:
            cache.put({"key": keys[i], "judgments": got.get(i)})
        cache.save()
    per, rows = [], []
    for p in ranked:
        scores = []
        for r in p.responses:
            js = cache.get(keys[r["message_id"]])["judgments"] or []
            valid = [s for _, s in js if s is not None]
            scores.append(sum(valid) / len(valid) if valid else None)
            rows.append({"model": f"M{m.t}", "prompt_id": p.prompt_id, "message_id": r["message_id"],
                         "human_rank": r["rank"], "score": scores[-1], "judgments": [t for t, _ in js]})
        per.append((scores, [r["rank"] for r in p.responses]))
    return {"t": m.t, "name": m.name, **human_agreement(per)}, rows
