"""Commands ``mrlite data …``, ``mrlite eval`` and ``mrlite report`` (registered in ``cli.py``). Thin: parse, call,
echo; every heavy import (datasets, torch, scikit-learn, matplotlib) happens inside a command body.

Exercised by: ``mrlite data check builtin``, ``mrlite eval runs/smoke``, ``mrlite report runs/smoke``.
"""

from __future__ import annotations

import json

import click

from mrlite.errors import setup_cli_logging, user_errors


_errors = user_errors("Cached answers and judgments are kept; run the command again.")
_logging = setup_cli_logging


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _need_eval_extra(command: str, modules: dict[str, str]) -> None:
    """Stop before any work when the ``eval`` extra is missing (``modules``: import name → package name): one line
    naming the install command."""
    import importlib

    for name, package in modules.items():
        try:
            importlib.import_module(name)
        except ImportError:
            raise click.ClickException(
                f"mrlite {command} needs the eval extra ({package} is not installed): pip install -e \".[eval]\" "
                "(or pip install \"mrlite[eval]\")") from None


# --------------------------------------------------------------------------------------------------------------
# mrlite data


@click.group("data")
def data_group():
    """Prompt sources and training data: check a source, generate prompts, build EFT rows.

    \b
    Examples:
      mrlite data check builtin
      mrlite data prompts --model smollm2-135m --n 200 --out prompts_gen.jsonl
      mrlite data eft OpenAssistant/oasst1 --model smollm2-135m --out eft.jsonl
    """


@data_group.command("check")
@click.argument("source")
@click.option("--column", default="prompt", show_default=True, help="Prompt column (or chat `messages`).")
@click.option("--split", default="train", show_default=True, help="Split of a Hub dataset or folder.")
@click.option("--max-chars", type=int, help="Count prompts longer than this as dropped.")
@_errors
def data_check(source, column, split, max_chars):
    """Validate a prompt SOURCE (builtin, .jsonl/.csv/.parquet/.json, folder, Hub id) and print what is kept.

    \b
    Examples:
      mrlite data check builtin
      mrlite data check my_prompts.csv --column question
      mrlite data check HuggingFaceH4/ultrachat_200k --column messages --split train_sft
    """
    from mrlite.sources import load_prompt_pool, validation_table

    pool = load_prompt_pool(source, column, split, max_chars)
    for name, n in validation_table(pool):
        click.echo(f"{n:>8}  {name}")


@data_group.command("prompts")
@click.option("--model", required=True, help="Generating model: fake, tiny-random, smollm2-135m, a folder or Hub id.")
@click.option("--backend", type=click.Choice(["fake", "hf", "vllm"]), help="Default: fake for --model fake, else hf.")
@click.option("--seed-prompts", default="builtin", show_default=True, help="Seed prompt source (few-shot examples).")
@click.option("--column", default="prompt", show_default=True, help="Prompt column of the seed source.")
@click.option("--n", "n", type=int, default=100, show_default=True, help="Prompts to generate.")
@click.option("--shots", type=int, default=8, show_default=True, help="Examples per request (paper: 8).")
@click.option("--temperature", type=float, default=0.6, show_default=True)
@click.option("--top-p", type=float, default=0.9, show_default=True)
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--batch", type=int, default=16, show_default=True, help="Requests per round.")
@click.option("--max-chars", type=int, default=2000, show_default=True, help="Longest prompt kept.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL to write (data.prompts reads it).")
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True)
@_errors
def data_prompts(model, backend, seed_prompts, column, n, shots, temperature, top_p, max_new_tokens, batch,
                 max_chars, seed, out, verbose, quiet):
    """Generate new prompts few-shot from a seed set (Self-Rewarding: 8-shot, T=0.6, p=0.9), de-duplicated.

    \b
    Examples:
      mrlite data prompts --model fake --n 20 --out /tmp/prompts.jsonl
      mrlite data prompts --model smollm2-135m --n 200 --out prompts_gen.jsonl
    """
    from pathlib import Path

    from mrlite.backends.base import Sampling
    from mrlite.datagen import generate_prompts, open_generator
    from mrlite.rundir import atomic_write_jsonl
    from mrlite.sources import SourceError, load_prompt_pool

    _logging(verbose, quiet)
    pool = load_prompt_pool(seed_prompts, column)
    if len(pool.prompts) < shots:
        raise SourceError(f"{seed_prompts}: {len(pool.prompts)} seed prompts, fewer than --shots {shots}")
    gen, _ = open_generator(model, backend=backend)
    try:
        rows, st = generate_prompts(pool.prompts, gen, n, shots=shots, seed=seed, batch=batch, max_chars=max_chars,
                                    sampling=Sampling(temperature, top_p, max_new_tokens))
    finally:
        gen.close()
    atomic_write_jsonl(Path(out), rows)
    click.echo(f"{len(rows)} prompts → {out} ({json.dumps(st)})")


@data_group.command("eft")
@click.argument("source")
@click.option("--model", required=True, help="Judging model (the SFT baseline in Self-Rewarding).")
@click.option("--backend", type=click.Choice(["fake", "hf", "vllm"]), help="Default: fake for --model fake, else hf.")
@click.option("--split", default="train", show_default=True)
@click.option("--lang", default="en", show_default=True, help="Language of the root prompts ('' = all).")
@click.option("--limit", type=int, help="At most this many prompts.")
@click.option("--n", "n", type=int, default=1, show_default=True, help="Judgment rounds per reply.")
@click.option("--temperature", type=float, default=0.8, show_default=True)
@click.option("--top-p", type=float, default=0.95, show_default=True)
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="Judgment budget.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL to write (eft.data reads it).")
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True)
@_errors
def data_eft(source, model, backend, split, lang, limit, n, temperature, top_p, max_new_tokens, seed, out, verbose,
             quiet):
    """EFT rows from Open Assistant ranked replies (SOURCE: oasst messages or trees, file/folder/Hub id).

    The model judges every ranked reply; a prompt's judgments are kept only when their scores order the
    replies as the humans ranked them (Self-Rewarding EFT).

    \b
    Examples:
      mrlite data eft tests/assets/oasst_messages.jsonl --model fake --out /tmp/eft.jsonl
      mrlite data eft OpenAssistant/oasst1 --model smollm2-135m --limit 500 --n 3 --out eft.jsonl
    """
    from pathlib import Path

    from mrlite.backends.base import Sampling
    from mrlite.datagen import build_eft, open_generator
    from mrlite.oasst import load_ranked
    from mrlite.rundir import atomic_write_jsonl

    _logging(verbose, quiet)
    ranked, lst = load_ranked(source, split=split, lang=lang or None, limit=limit)
    gen, _ = open_generator(model, backend=backend)
    try:
        rows, st = build_eft(ranked, gen, n=n, seed=seed, sampling=Sampling(temperature, top_p, max_new_tokens))
    finally:
        gen.close()
    atomic_write_jsonl(Path(out), rows)
    click.echo(f"{len(rows)} EFT rows from {st.get('kept_prompts', 0)} of {len(ranked)} prompts → {out} "
               f"(source {json.dumps(lst)}; judging {json.dumps(st)})")


# --------------------------------------------------------------------------------------------------------------
# mrlite eval / report


def _iters(value: str | None) -> list[int] | None:
    if value in (None, "", "all"):
        return None
    try:
        return sorted({int(x) for x in value.split(",") if x.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r}: use a comma list such as 0,2,4 or 'all'", param_hint="--iters") from None


@click.command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--iters", help="Iterations to evaluate, e.g. 1,2 (M_0 always included; default all trained).")
@click.option("--judge", default="self", show_default=True,
              help="self (newest evaluated model), a model (alias/folder/Hub id), or openai:<base_url>#<model>.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the endpoint key ('' = none).")
@click.option("--prompts", default="heldout", show_default=True,
              help="heldout (run's source minus training prompts), builtin, a file or a Hub id.")
@click.option("--column", default="prompt", show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--limit", type=int, default=64, show_default=True, help="Eval prompts.")
@click.option("--human", help="Human-ranked Open Assistant data for judge quality (file/folder/Hub id).")
@click.option("--human-split", default="validation", show_default=True)
@click.option("--human-limit", type=int, default=50, show_default=True)
@click.option("--human-n", type=int, default=1, show_default=True, help="Judgments per reply (averaged).")
@click.option("--lang", default="en", show_default=True)
@click.option("--bootstrap", type=int, default=200, show_default=True, help="Resamples for the intervals.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Endpoint requests in flight.")
@click.option("--retries", type=int, default=4, show_default=True, help="Endpoint retries per request (backoff).")
@click.option("--judge-max-tokens", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, help="Answer sampling (default: the recipe's actor temperature).")
@click.option("--max-new-tokens", type=int, help="Answer budget (default: the recipe's actor budget).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--agreement/--no-agreement", default=True, show_default=True,
              help="With an openai: judge, also judge every pair with the newest model and report its agreement.")
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True)
@_errors
def eval_cmd(run_dir, iters, judge, api_key_env, prompts, column, split, limit, human, human_split, human_limit,
             human_n, lang, bootstrap, concurrency, retries, judge_max_tokens, temperature, max_new_tokens, seed,
             agreement, verbose, quiet):
    """Evaluate every iteration's model of RUN_DIR: exports, win rates (both orders, LC), judge quality.

    Writes RUN_DIR/eval/: answers, AlpacaEval and Arena-Hard exports, AlpacaEval annotation files (one per
    comparison), judgments, summary.json. LC is AlpacaEval's length-controlled win rate without its
    instruction-difficulty term. Answers and verdicts are cached, so running it again judges nothing twice.

    \b
    Examples:
      mrlite eval runs/smoke
      mrlite eval runs/tiny --iters 1,2 --human tests/assets/oasst_messages.jsonl --human-split train
      mrlite eval runs/qwen --judge openai:https://api.openai.com/v1#gpt-4o-mini --limit 200
    """
    _need_eval_extra("eval", {"sklearn": "scikit-learn"})
    from mrlite.evaluate import run_eval

    _logging(verbose, quiet)
    s = run_eval(run_dir, iters=_iters(iters), judge=judge, prompts=prompts, column=column, split=split, limit=limit,
                 human=human, human_split=human_split, human_limit=human_limit, human_n=human_n, lang=lang or None,
                 api_key_env=api_key_env or None, n_boot=bootstrap, concurrency=concurrency, retries=retries,
                 judge_max_tokens=judge_max_tokens, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                 agreement=agreement)
    click.echo(f"judge {s['judge']}: {s['judge_calls']} verdicts asked, {s['judge_cached']} cached; "
               f"{s['answer_calls']} answers generated, {s['answer_cached']} cached")
    if not s["comparisons"]:
        click.echo("no trained iteration yet: only M0's answers were generated and exported")
    click.echo(f"{'comparison':<12} {'win%':>6} {'95% CI':>13} {'LC%':>6} {'95% CI':>13} {'ties':>5} "
               f"{'consist%':>8} {'failed':>6}")
    for c in s["comparisons"]:
        ci = c["win_rate_ci"] or [None, None]
        lci = c["lc_ci"] or [None, None]
        click.echo(f"{c['label']:<12} {_pct(c['win_rate']):>6} {_pct(ci[0]):>6}-{_pct(ci[1]):<6} "
                   f"{_pct(c['lc_win_rate']):>6} {_pct(lci[0]):>6}-{_pct(lci[1]):<6} {c['ties']:>5} "
                   f"{_pct(c['consistency']):>8} {c['failed_prompts']:>6}")
    if s["comparisons"]:
        click.echo(f"LC = {s['lc_definition']['name']}")
    for c in s["comparisons"]:
        for w in c.get("lc_warnings") or []:
            click.echo(f"warning: {c['label']} LC {w}")
    a = s.get("judge_agreement")
    if a:
        x = a["all"]
        ci = x["agreement_ci"] or [None, None]
        click.echo(f"self-judge {a['judge']} vs {a['reference']}: agreement {_pct(x['agreement'])}% "
                   f"[{_pct(ci[0])}-{_pct(ci[1])}] on {x['pairs']} ordered pairs, w/o ties "
                   f"{_pct(x['agreement_no_ties'])}% on {x['decisive']}")
    for q in (s["human"] or {}).get("models", []):
        click.echo(f"judge M{q['t']} vs humans: agreement {_pct(q['agreement'])}%, w/o ties "
                   f"{_pct(q['agreement_no_ties'])}%, Spearman {q['spearman'] if q['spearman'] is None else round(q['spearman'], 3)}")
    for m in s["meta_judge"]:
        click.echo(f"meta-judge iter {m['t']}: positional bias {_pct(m['positional_bias'])}% (slot A), "
                   f"score bias {_pct(m['score_bias'])}%")
    click.echo(f"→ {run_dir}/eval/summary.json")


@click.command("report")
@click.argument("run_dir", type=click.Path())
@click.option("--log", "log_to", type=click.Choice(["wandb", "trackio"]), help="Also log the numbers there.")
@click.option("--project", default="mrlite", show_default=True, help="wandb/trackio project.")
@click.option("-q", "--quiet", is_flag=True)
@_errors
def report_cmd(run_dir, log_to, project, quiet):
    """Write RUN_DIR/report.md and PNG plots (scores, lengths, parse rates, pairs, DPO, win rates, biases).

    \b
    Examples:
      mrlite report runs/smoke
      mrlite report runs/tiny --log wandb --project my-mr
    """
    _need_eval_extra("report", {"matplotlib": "matplotlib"})
    from mrlite.report import write_report

    _logging(0, quiet)
    path, figures = write_report(run_dir, log_to=log_to, project=project)
    click.echo(f"{path} ({len(figures)} figures: {', '.join(f.name for f in figures)})")
