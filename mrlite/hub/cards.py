"""Model and dataset cards for ``mrlite push``: YAML front matter the Hub reads, plus a readable body.

The model card says where the weights came from (base → adapters, from ``lineage.json``), how they were made (the
resolved recipe), how healthy the judge was in that iteration (parse and forced rates, score histogram,
meta-judge biases, from the stage markers), eval numbers when ``mrlite eval`` ran, and the report's plots. The
dataset card lists one config per file kind and one split per iteration, so ``load_dataset(repo, "pairs_actor",
split="iter_01")`` works on the Hub and ``load_dataset("json", data_files=...)`` on the run directory alike.
Pure text; imports neither torch nor huggingface_hub. Exercised by: ``mrlite push runs/smoke --iter 1 --repo
me/smoke --dry-run /tmp/card``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from mrlite.rundir import RunDir

TAGS = ["meta-rewarding", "dpo", "mrlite"]

KNOWN_BASES = {
    # alias → (Hub id, license). tiny-random and fake are local test models: no Hub base, no license.
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}

DATA_FILES = {
    # file kind (= config name) → (stage whose marker says the file is complete, what a row is)
    "prompts": ("sample", "one prompt of the iteration's slice"),
    "responses": ("sample", "one of the actor's K answers to a prompt"),
    "judgments": ("judge", "one of the judge's N judgments of an answer, with its parsed score"),
    "meta_judgments": ("meta_judge", "one meta-judge battle between two judgments of an answer"),
    "pairs_actor": ("pairs", "an actor preference pair (TRL preference format: prompt, chosen, rejected)"),
    "pairs_judge": ("pairs", "a judge preference pair (TRL preference format: prompt, chosen, rejected)"),
    "eft_rows": ("eft", "an EFT SFT row (TRL prompt-completion format); iteration 0 only"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(spec: str | None) -> bool:
    """``owner/name`` that is not an existing local path."""
    return bool(spec) and _HUB_ID.match(spec) is not None and not Path(spec).expanduser().exists()


def front_matter(meta: dict) -> str:
    """``---\\n<yaml>---\\n`` with None values dropped."""
    clean = {k: v for k, v in meta.items() if v not in (None, [], {})}
    return "---\n" + yaml.safe_dump(clean, sort_keys=False, allow_unicode=True) + "---\n"


def _read_card_meta(readme: Path) -> dict:
    """Front matter of a model card on disk ({} when absent or unreadable)."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return {}
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_info(base: str, revision: str | None = None) -> dict:
    """``{"hub_id", "license", "license_name", "license_link"}`` of ``model.base`` as far as it is known offline.

    An alias maps to its Hub original; a local directory's own README front matter gives its license (and its
    ``base_model`` when it names one); a Hub id's card is read from the local Hugging Face cache when present.
    """
    out: dict = {"hub_id": None, "license": None, "license_name": None, "license_link": None}
    if base in KNOWN_BASES:
        out["hub_id"], out["license"] = KNOWN_BASES[base]
        return out
    meta: dict = {}
    p = Path(base).expanduser()
    if p.is_dir():
        meta = _read_card_meta(p / "README.md")
        bm = meta.get("base_model")
        out["hub_id"] = bm if isinstance(bm, str) and is_hub_id(bm) else None
    elif is_hub_id(base):
        out["hub_id"] = base
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base, "README.md", revision=revision)
        except Exception:  # any cache problem just means "license unknown"
            cached = None
        if isinstance(cached, str):
            meta = _read_card_meta(Path(cached))
    for k in ("license", "license_name", "license_link"):
        if isinstance(meta.get(k), str):
            out[k] = meta[k]
    return out


def _pc(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def judge_health(rd: RunDir, t: int) -> dict:
    """The iteration's judge health from its stage markers (missing stages give None)."""
    def summary(stage: str) -> dict | None:
        m = rd.read_marker(t, stage)
        return (m or {}).get("summary") if m else None

    j, mj, pr, tr = summary("judge"), summary("meta_judge"), summary("pairs"), summary("train")
    out: dict = {"judge": None, "meta_judge": None, "pairs": None, "train": None}
    if j and j.get("judgments"):
        n = j["judgments"]
        out["judge"] = {"judgments": n, "parse_rate": (n - j.get("unparsable", 0)) / n,
                        "forced_rate": j.get("parsed_forced", 0) / n, "mean_score": j.get("mean_score"),
                        "histogram": j.get("histogram") or {}}
    if mj and mj.get("battles"):
        b = mj["battles"]
        out["meta_judge"] = {"battles": b, "decided_rate": (b - mj.get("undecided", 0)) / b,
                             "forced_rate": mj.get("parsed_forced", 0) / b,
                             "positional_bias": mj.get("positional_bias"), "slot_a_share": mj.get("slot_a_share"),
                             "score_bias": mj.get("score_bias")}
    if pr:
        out["pairs"] = {"actor": pr.get("actor_pairs", 0), "judge": pr.get("judge_pairs", 0),
                        "rho": pr.get("rho"), "guardrail": pr.get("guardrail")}
    if tr:
        out["train"] = {k: tr.get(k) for k in ("steps", "first_loss", "last_loss", "last_margin", "n_out")}
    return out


def _health_md(h: dict) -> list[str]:
    lines: list[str] = []
    j, mj = h["judge"], h["meta_judge"]
    if j:
        lines += ["| judge | value |", "|---|---|",
                  f"| judgments | {j['judgments']} |", f"| parsed | {_pc(j['parse_rate'])} |",
                  f"| of which forced (`Score:` appended) | {_pc(j['forced_rate'])} |",
                  f"| mean score | {_num(j['mean_score'], '.2f')} |", ""]
        hist = j["histogram"]
        if hist:
            keys = list(hist)
            lines += ["Score histogram:", "", "| " + " | ".join(str(k) for k in keys) + " |",
                      "|" + "---|" * len(keys), "| " + " | ".join(str(hist[k]) for k in keys) + " |", ""]
    else:
        lines += ["No judge marker for this iteration.", ""]
    if mj:
        lines += ["| meta-judge | value |", "|---|---|", f"| battles | {mj['battles']} |",
                  f"| decided | {_pc(mj['decided_rate'])} |", f"| forced | {_pc(mj['forced_rate'])} |",
                  f"| positional bias (slot A wins among equal-score battles) | {_pc(mj['positional_bias'])} |",
                  f"| score bias (higher-scored judgment wins) | {_pc(mj['score_bias'])} |", ""]
    if h["pairs"]:
        p = h["pairs"]
        lines += [f"Preference pairs: {p['actor']} actor + {p['judge']} judge (length-control rho {p['rho']})"
                  + (f"; guardrail: {p['guardrail']}" if p.get("guardrail") else "") + ".", ""]
    if h["train"] and h["train"].get("first_loss") is not None:
        tr = h["train"]
        lines += [f"DPO: {tr.get('steps')} steps, loss {_num(tr['first_loss'])} → {_num(tr['last_loss'])}"
                  + (f", reward margin {_num(tr['last_margin'], '.3f')}" if tr.get("last_margin") is not None
                     else "") + ".", ""]
    return lines


def _eval_md(rd: RunDir, t: int) -> list[str]:
    p = rd.root / "eval" / "summary.json"
    if not p.is_file():
        return []
    try:
        s = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    comps = [c for c in s.get("comparisons", []) if c.get("t") == t]
    human = [q for q in (s.get("human") or {}).get("models", []) if q.get("t") == t]
    if not comps and not human:
        return []
    lines = ["## Evaluation (`mrlite eval`)", ""]
    if comps:
        lines += ["| vs | win rate | 95% CI | LC win rate | consistency | prompts |", "|---|---|---|---|---|---|"]
        for c in comps:
            ci = c.get("win_rate_ci") or [None, None]
            lines.append(f"| M{c.get('base')} | {_pc(c.get('win_rate'))} | {_pc(ci[0])}–{_pc(ci[1])} | "
                         f"{_pc(c.get('lc_win_rate'))} | {_pc(c.get('consistency'))} | {c.get('scored')} |")
        lines.append("")
    for q in human:
        rho = "n/a" if q.get("spearman") is None else f"{q['spearman']:.2f}"
        lines += [f"Judge vs human preferences: agreement {_pc(q.get('agreement'))}, Spearman {rho} "
                  f"({q.get('pairs')} pairs).", ""]
    return lines


def _lineage_md(rd: RunDir, t: int, base_name: str) -> list[str]:
    p = rd.path(t, "model") / "lineage.json"
    try:
        lin = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        lin = {"adapters": []}
    steps = [f"`{base_name}` (base)"]
    for a in lin.get("adapters", []):
        what = "EFT SFT" if a.get("kind") == "sft" or a.get("iteration") == 0 else "DPO"
        steps.append(f"{what} LoRA of iteration {a.get('iteration')} (adapter sha256 `{str(a.get('adapter_sha256'))[:12]}`)")
    return ["## Lineage", "", " → ".join(steps), "",
            "Each adapter was trained on the merged model before it and merged into it (`lineage.json`).", ""]


def adapter_base(rd: RunDir, t: int) -> str | None:
    """Hub id of the model iteration ``t``'s adapter applies to, when that is the (Hub) base itself."""
    recipe = yaml.safe_load((rd.root / "recipe.yaml").read_text(encoding="utf-8"))
    if t != 1 or (recipe.get("eft") or {}).get("enabled"):
        return None  # it applies to M_{t-1}, a model of this run
    return base_info(recipe["model"]["base"], recipe["model"].get("revision"))["hub_id"]


def model_card(rd: RunDir, t: int, repo: str, *, adapter: bool, plots: list[str], datasets: list[str]) -> str:
    """README.md of a model repo for iteration ``t`` (merged weights, or only the adapter)."""
    recipe_text = (rd.root / "recipe.yaml").read_text(encoding="utf-8")
    recipe = yaml.safe_load(recipe_text)
    base = recipe["model"]["base"]
    info = base_info(base, recipe["model"].get("revision"))
    lib = "peft" if adapter else ("transformers" if (rd.path(t, "model") / "config.json").is_file() else None)
    meta = {
        "license": info["license"], "license_name": info["license_name"], "license_link": info["license_link"],
        "base_model": adapter_base(rd, t) if adapter else info["hub_id"],
        "base_model_relation": ("adapter" if adapter else "finetune") if info["hub_id"] else None,
        "library_name": lib, "pipeline_tag": "text-generation",
        "tags": [*TAGS, *(["lora", "peft"] if adapter else [])], "datasets": datasets,
    }
    if meta["base_model"] is None:
        meta["base_model_relation"] = None
    name = recipe.get("name", "run")
    kind = "LoRA adapter" if adapter else "merged model"
    lines = [front_matter(meta), f"# {repo.split('/')[-1]}", "",
             f"Iteration {t} of a Meta-Rewarding run (Wu et al. 2024, arXiv 2407.19594) made with "
             f"mrlite: the {kind} M_{t}. One model plays actor, judge and meta-judge; each "
             "iteration trains it with DPO on answer pairs (judged by itself) and judgment pairs (meta-judged by "
             "itself).", "",
             f"Run `{name}`, base `{base}`" + (f" ([{info['hub_id']}](https://huggingface.co/{info['hub_id']}))"
                                               if info["hub_id"] else "") + ".", ""]
    if adapter:
        prev = "the base model" if t == 1 and not recipe.get("eft", {}).get("enabled") \
            else f"the merged model of iteration {t - 1} (push it with `mrlite push RUN_DIR --iter {t - 1}`)"
        lines += ["This repository holds only the adapter. Apply it to " + prev + ":", "", "```python",
                  "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
                  f"base = AutoModelForCausalLM.from_pretrained({(info['hub_id'] or '<M_' + str(t - 1) + '>')!r})",
                  f"model = PeftModel.from_pretrained(base, {repo!r})", "```", ""]
    else:
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"tok = AutoTokenizer.from_pretrained({repo!r})",
                  f"model = AutoModelForCausalLM.from_pretrained({repo!r})", "```", ""]
    lines += _lineage_md(rd, t, info["hub_id"] or base)
    lines += [f"## Judge health in iteration {t}", "", *_health_md(judge_health(rd, t))]
    lines += _eval_md(rd, t)
    if plots:
        lines += ["## Plots (`mrlite report`)", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["## Recipe (resolved)", "", "```yaml", recipe_text.rstrip(), "```", "",
              "Reproduce with `mrlite run recipe.yaml` (the block above saved as a file).", ""]
    return "\n".join(lines)


def dataset_layout(rd: RunDir) -> dict[str, list[tuple[str, str]]]:
    """``{config: [(split, path in repo)]}`` for every finished file of the run (path = same as in the run dir)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for t in rd.iterations_present():
        for kind, (stage, _) in DATA_FILES.items():
            p = rd.path(t, f"{kind}.jsonl")
            if p.is_file() and rd.read_marker(t, stage) is not None:
                out.setdefault(kind, []).append((f"iter_{t:02d}", p.relative_to(rd.root).as_posix()))
    return out


def dataset_card(rd: RunDir, repo: str, layout: dict[str, list[tuple[str, str]]]) -> str:
    """README.md of a dataset repo: ``configs`` with ``data_files`` per split, and how to load them."""
    recipe_text = (rd.root / "recipe.yaml").read_text(encoding="utf-8")
    recipe = yaml.safe_load(recipe_text)
    default = "pairs_actor" if "pairs_actor" in layout else next(iter(layout), None)
    configs = []
    for kind, splits in layout.items():
        c: dict = {"config_name": kind, "data_files": [{"split": s, "path": p} for s, p in splits]}
        if kind == default:
            c["default"] = True
        configs.append(c)
    meta = {"configs": configs, "tags": TAGS, "task_categories": ["text-generation"],
            "pretty_name": f"mrlite run {recipe.get('name')}"}
    some = next(iter(layout.get("pairs_actor", [])), ("iter_01", "iter_01/pairs_actor.jsonl"))
    lines = [front_matter(meta), f"# {repo.split('/')[-1]}", "",
             f"Everything the Meta-Rewarding run `{recipe.get('name')}` generated (base `{recipe['model']['base']}`): "
             "prompts, the actor's responses, the judge's judgments, the meta-judge's battles and the DPO pairs "
             "built from them. One config per file kind, one split per iteration; the files are the run "
             "directory's own.", "",
             "| config | a row is | splits |", "|---|---|---|"]
    for kind, splits in layout.items():
        lines.append(f"| `{kind}` | {DATA_FILES[kind][1]} | {', '.join(s for s, _ in splits)} |")
    lines += ["", "## Load", "", "```python", "from datasets import load_dataset", "",
              f"pairs = load_dataset({repo!r}, \"pairs_actor\", split={some[0]!r})",
              "# TRL's preference format: DPOTrainer(model, args=DPOConfig(...), train_dataset=pairs, ...)", "```",
              "", "The same files on your own run directory, without the Hub:", "", "```python",
              "from datasets import load_dataset", "",
              f"pairs = load_dataset(\"json\", data_files={{{some[0]!r}: \"runs/{recipe.get('name')}/{some[1]}\"}})",
              "```", "",
              "The trainer of each iteration used `pairs_actor` and `pairs_judge` together "
              "(`concatenate_datasets` on their `prompt`, `chosen`, `rejected` columns).", "",
              "## Recipe (resolved)", "", "```yaml", recipe_text.rstrip(), "```", ""]
    return "\n".join(lines)


HUB_LICENSES = {
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0",
    "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0",
    "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0",
    "odc-by", "odbl", "openmdw-1.0", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense",
    "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3",
    "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "unknown", "other",
}
"""License identifiers the Hub accepts in ``license:`` (https://huggingface.co/docs/hub/repositories-licenses)."""


class CardError(ValueError):
    """A card whose metadata the Hub would reject."""


def validate_card(text: str, repo_type: str) -> dict:
    """Offline check of a card's metadata, as far as it can be done without the Hub's ``/api/validate-yaml``.

    Parses the card with ``huggingface_hub``'s own ``ModelCard``/``DatasetCard`` (which rejects a non-mapping
    block and a malformed ``model-index``), checks ``license`` against the Hub's list, ``base_model`` and
    ``datasets`` as repo ids (``huggingface_hub.utils.validate_repo_id``), ``tags`` as strings, and a dataset's
    ``configs`` with ``datasets``' own parser when it is installed. Returns the metadata dict.
    """
    from huggingface_hub import DatasetCard, ModelCard
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not text.startswith("---\n"):
        raise CardError("card has no YAML front matter")
    try:
        card = (DatasetCard if repo_type == "dataset" else ModelCard)(text)
    except ValueError as e:
        raise CardError(f"card metadata rejected: {e}") from None
    meta = card.data.to_dict()
    lic = meta.get("license")
    if lic is not None and lic not in HUB_LICENSES:
        raise CardError(f"license {lic!r} is not a Hub license id (use 'other' with license_name/license_link)")
    ids = []
    for key in ("base_model", "datasets"):
        v = meta.get(key)
        ids += [(key, x) for x in ([v] if isinstance(v, str) else v or [])]
    for key, x in ids:
        try:
            validate_repo_id(x)
        except HFValidationError as e:
            raise CardError(f"{key} {x!r}: {e}") from None
        if "/" not in x and key == "base_model":
            raise CardError(f"base_model {x!r}: expected a Hub id owner/name")
    if meta.get("base_model_relation") not in (None, "adapter", "merge", "quantized", "finetune"):
        raise CardError(f"base_model_relation {meta['base_model_relation']!r} is not one the Hub knows")
    if meta.get("base_model_relation") and not meta.get("base_model"):
        raise CardError("base_model_relation without base_model")
    tags = meta.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise CardError("tags must be a list of strings")
    if repo_type == "dataset" and meta.get("configs") is not None:
        try:
            from datasets.utils.metadata import MetadataConfigs
        except ImportError:
            MetadataConfigs = None
        if MetadataConfigs is not None:
            try:
                MetadataConfigs.from_dataset_card_data(card.data)
            except Exception as e:
                raise CardError(f"configs rejected by datasets: {e}") from None
    return meta
