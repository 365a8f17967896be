"""Commands ``mrlite data …`` (registered in ``cli/__init__.py``): check a prompt source, generate prompts, build EFT rows.
Thin: parse, call, echo; every heavy import (datasets, torch) happens inside a command body.

Exercised by: ``mrlite data check builtin``, ``mrlite data eft tests/assets/oasst_messages.jsonl --model fake``.
"""

from __future__ import annotations

import json

import click

from mrlite.errors import setup_cli_logging, user_errors

_errors = user_errors("Nothing was written (the output file appears whole at the end); run the command again.")
_logging = setup_cli_logging


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
    from mrlite.data.sources import load_prompt_pool, validation_table

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
    from mrlite.data.datagen import generate_prompts, open_generator
    from mrlite.rundir import atomic_write_jsonl
    from mrlite.data.sources import SourceError, load_prompt_pool

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
    from mrlite.data.datagen import build_eft, open_generator
    from mrlite.data.oasst import load_ranked
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
