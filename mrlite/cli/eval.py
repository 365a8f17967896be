"""Commands ``mrlite eval`` and ``mrlite report`` (registered in ``cli/__init__.py``). Thin: parse, call, echo; every heavy
import (torch, scikit-learn, matplotlib) happens inside a command body.

Exercised by: ``mrlite eval runs/smoke``, ``mrlite report runs/smoke``.
"""

from __future__ import annotations

import click

from mrlite.errors import setup_cli_logging, user_errors
from mrlite.core.fmt import pct


_errors = user_errors("Cached answers and judgments are kept; run the command again.")
_logging = setup_cli_logging


def _pct(x) -> str:
    return pct(x, 1, unit="")


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
@click.option("--human", help="Human-ranked Open Assistant data for judge quality (file/folder/Hub id); default: "
              "the run's held-out EFT prompts (iter_00/eft_heldout.jsonl) when it has some; '' for none.")
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
    from mrlite.eval.run import run_eval

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
        click.echo(f"meta-judge iter {m['t']}: positional bias {_pct(m['positional_bias'])}% (slot A among equal scores), "
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
