"""``mrlite report RUN_DIR``: ``RUN_DIR/report.md`` plus PNG plots in ``RUN_DIR/report/``.

One section per question a Meta-Rewarding user asks after each iteration (arXiv 2407.19594 §3-4): what did the
judge score, did answers grow longer, did the judge and meta-judge parse, how many pairs (and how long), did DPO
move, did the actor win against M_0 and M_{t−1} (when ``mrlite eval`` ran), is the judge still honest (human
agreement, meta-judge biases). Sections degrade to a one-line note when their inputs are missing.
Exercised by: ``mrlite report runs/smoke``.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from mrlite.core.diagnostics import mean_score
from mrlite.errors import MrliteError
from mrlite.core.fmt import pct
from mrlite.recipe import Recipe, load_recipe
from mrlite.rundir import RunDir, atomic_write_text, iter_jsonl
from mrlite.report.runstats import iteration_stats, run_iterations
from mrlite.eval.winrate import LC_NAME

log = logging.getLogger(__name__)

REPORT_MD = "report.md"
FIG_DIR = "report"


class ReportError(MrliteError, ValueError):
    """A report problem a user can fix (e.g. a logging package missing). One line."""


def collect(run_dir: str | Path) -> tuple[Recipe, list[dict], dict | None]:
    """The saved recipe, per-iteration stats and ``eval/summary.json`` (None when eval has not run)."""
    rd = RunDir.existing(run_dir)
    recipe = load_recipe(rd.recipe_path)
    its = [iteration_stats(rd, t) for t in run_iterations(rd)]
    ev_path = rd.root / "eval" / "summary.json"
    ev = json.loads(ev_path.read_text(encoding="utf-8")) if ev_path.is_file() else None
    if ev is not None:  # eval answer lengths per model, for the length plot
        ev["answer_chars"] = {}
        for m in ev.get("models", []):
            f = rd.root / "eval" / "answers" / f"M{m['t']}.jsonl"
            if f.is_file():
                ev["answer_chars"][str(m["t"])] = [r["chars"] for r in iter_jsonl(f) if r.get("chars") is not None]
    return recipe, its, ev


def make_figures(its: list[dict], ev: dict | None, out: Path) -> dict[str, Path]:
    """Draw every figure that has data; returns ``{name: png path}``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from mrlite.report import plots

    figs = {"scores": plots.scores(its), "lengths": plots.lengths(its, ev), "parse_rates": plots.parse_rates(its),
            "pairs": plots.pairs(its), "training": plots.training(its), "winrates": plots.winrates(ev),
            "meta_bias": plots.meta_bias(its), "judge_quality": plots.judge_quality(ev)}
    return {k: plots.save(f, out / f"{k}.png") for k, f in figs.items() if f is not None}


def write_report(run_dir: str | Path, *, log_to: str | None = None, project: str = "mrlite") -> tuple[Path, list[Path]]:
    """Write ``report.md`` and the PNGs; optionally log the numbers to wandb or trackio.

    Args:
        run_dir: A run directory.
        log_to: ``"wandb"`` or ``"trackio"`` to also log per-iteration scalars there.
        project: Project name for the logger.

    Returns:
        The report path and the PNG paths.

    Raises:
        RunDirError: not a run directory. ReportError: the logging package is missing or fails.
    """
    root = Path(run_dir)
    recipe, its, ev = collect(root)
    tracker = _tracker(log_to) if log_to else None  # fail before drawing anything
    figs = make_figures(its, ev, root / FIG_DIR)
    md = render(recipe, its, ev, {k: p.relative_to(root).as_posix() for k, p in figs.items()}, root)
    atomic_write_text(root / REPORT_MD, md)
    if tracker is not None:
        log_metrics(recipe, its, ev, tracker, project)
    return root / REPORT_MD, list(figs.values())


# --------------------------------------------------------------------------------------------------------------
# markdown


def _p(x, digits: int = 0) -> str:
    return pct(x, digits, none="–")


def _f(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _img(figs: dict[str, str], name: str, alt: str) -> list[str]:
    return [f"![{alt}]({figs[name]})", ""] if name in figs else ["_No data for this plot yet._", ""]


def _iteration_table(its: list[dict]) -> list[str]:
    out = ["| iter | prompts | responses | mean chars | judge parsed (forced) | mean score | len–score ρ | "
           "meta decided | actor / judge pairs | chosen / rejected chars | DPO loss first → last | last margin |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in its:
        jp, m, pr, tr = s["judge_parse"], s["meta"], s["pairs"], s["train"]
        parsed = f"{_p((jp['total'] - jp['null']) / jp['total'])} ({_p(jp['forced'] / jp['total'])})" if jp["total"] \
            else "–"
        loss = f"{_f(tr[0].get('loss'), 3)} → {_f(tr[-1].get('loss'), 3)}" if tr else "–"
        out.append(
            f"| {s['t']} | {s['prompts']} | {len(s['response_chars'])} | {_f(mean_score(s['response_chars']), 0)} | {parsed} | "
            f"{_f(s['mean_score'])} | {_f(s['length_score_corr'])} | {_p(m and m['decision_rate'])} | "
            f"{pr['actor']} / {pr['judge']} | {_f(mean_score(pr['actor_chosen']), 0)} / {_f(mean_score(pr['actor_rejected']), 0)} | "
            f"{loss} | {_f(tr[-1].get('rewards/margins'), 3) if tr else '–'} |")
    return [*out, ""]


def _eval_section(ev: dict | None, figs: dict[str, str], root: Path) -> list[str]:
    out = ["## Evaluation: win rates", ""]
    if ev is None:
        return [*out, f"_`mrlite eval` has not run on this directory yet: `mrlite eval {root}` adds win rates "
                      "against M0 and M(t−1), leaderboard exports and judge quality._", ""]
    out += [f"Judge `{ev['judge']}` on {ev['prompts']['count']} prompts ({ev['prompts']['source']}), every pair judged "
            "in both orders; a prompt's preference is the mean of its two outcomes (win 1, tie ½, loss 0). "
            f"LC = {LC_NAME}: a logistic fit of the preference on tanh(length difference / its std) plus a model "
            "term, read at zero length difference — AlpacaEval 2's length control, minus the per-instruction "
            "difficulty term that needs its own 805 instructions. Intervals: 95 % bootstrap over prompts. Exports "
            "for AlpacaEval / Arena-Hard: `eval/alpaca_eval/` (answers, and `annotations_<comparison>.json` to "
            "recompute these numbers with AlpacaEval's code), `eval/arena_hard/model_answer/`.", "",
            "| comparison | win rate [95 % CI] | LC win rate [95 % CI] | W / T / L | consistent orders | "
            "judge picks slot A | failed | mean chars (t / base) |", "|---|---|---|---|---|---|---|---|"]
    warns = []
    for c in ev["comparisons"]:
        ci, lci = c["win_rate_ci"] or [None, None], c["lc_ci"] or [None, None]
        flag = " ⚠" if c.get("lc_warnings") else ""
        out.append(f"| M{c['t']} vs M{c['base']} | {_p(c['win_rate'], 1)} [{_p(ci[0], 1)}, {_p(ci[1], 1)}] | "
                   f"{_p(c['lc_win_rate'], 1)} [{_p(lci[0], 1)}, {_p(lci[1], 1)}]{flag} | {c['wins']} / {c['ties']} / "
                   f"{c['losses']} | {_p(c['consistency'])} | {_p(c['first_slot'])} | {c['failed_prompts']} | "
                   f"{_f(c['mean_len_t'], 0)} / {_f(c['mean_len_base'], 0)} |")
        warns += [f"- ⚠ M{c['t']} vs M{c['base']}: LC {w}." for w in c.get("lc_warnings") or []]
    out += ["", *([*warns, ""] if warns else []), *_img(figs, "winrates", "win rates")]
    out += ["## Judge quality vs human rankings", ""]
    h = ev.get("human")
    if not h:
        return [*out, "_No human-ranked data given: `mrlite eval RUN_DIR --human <oasst file or Hub id>` measures "
                      "agreement and Spearman (the paper's Open Assistant protocol)._", ""]
    out += [f"{h['prompts']} held-out prompts from `{h['source']}` (split {h['split']}), {h['n']} judgment(s) per "
            "reply averaged.", "", "| model | pairs | agreement | w/o ties | Spearman |", "|---|---|---|---|---|"]
    out += [f"| M{q['t']} | {q['pairs']} | {_p(q['agreement'], 1)} | {_p(q['agreement_no_ties'], 1)} | "
            f"{_f(q['spearman'], 3)} |" for q in h["models"]]
    return [*out, "", *_img(figs, "judge_quality", "judge quality")]


def _guardrail_words(r: Recipe, its: list[dict]) -> list[str]:
    """What the guardrails did, in words (they never change the pairs of the iteration that measured a bias)."""
    tripped = [s for s in its if s.get("guardrail")]
    mode = r.guardrails.mode
    if not tripped:
        return [f"Guardrails ({mode}): no check tripped.", ""]
    out: list[str] = []
    for s in tripped:
        g, t = s["guardrail"], s["t"]
        if out:
            out.append("")
        if g["action"] == "stop":
            out.append(f"Guardrail in iteration {t}: {g['reason']}. Judge training stopped from iteration {t + 1} "
                       f"on; the judge pairs of iteration {t}, which measured the bias, were still trained on.")
        else:
            out.append(f"Guardrail warning in iteration {t}: {g['reason']}. guardrails.mode is 'warn', so judge "
                       f"training went on as planned (the paper trained the judge in iterations 1 and 2 whatever "
                       f"its biases); set guardrails.mode: stop to end judge training after such an iteration.")
    return [*out, ""]


def _agreement_section(ev: dict | None) -> list[str]:
    """The self-judge's agreement with an external judge (the paper's agreement-with-GPT-4 table), when eval ran
    with ``--judge openai:…``."""
    a = (ev or {}).get("judge_agreement")
    if not a:
        return []

    def ci(x: dict, key: str) -> str:
        v = x[f"{key}_ci"]
        return f"{_p(x[key], 1)} [{_p(v[0], 1)}, {_p(v[1], 1)}]" if v else _p(x[key], 1)

    out = ["## Judge agreement with the external judge", "",
           f"The self-judge `{a['judge']}` judged the same answer pairs as `{a['reference']}`, each in both orders; "
           "agreement = share of ordered pairs where both give M_t the same outcome (win, tie, loss); without ties = "
           "among pairs where neither calls a tie (the paper's agreement-with-GPT-4 table). 95 % bootstrap over "
           "prompts.", "",
           "| comparison | ordered pairs | agreement [95 % CI] | decisive pairs | w/o ties [95 % CI] | failed |",
           "|---|---|---|---|---|---|"]
    for c in [*a["comparisons"], {"label": "all", **a["all"]}]:
        name = c["label"].replace("_vs_", " vs ")
        out.append(f"| {name} | {c['pairs']} | {ci(c, 'agreement')} | {c['decisive']} | "
                   f"{ci(c, 'agreement_no_ties')} | {c['failed']} |")
    return [*out, ""]


def render(recipe: Recipe, its: list[dict], ev: dict | None, figs: dict[str, str], root: Path) -> str:
    """The Markdown report (figure paths relative to the run directory)."""
    r = recipe
    out = [f"# mrlite report: {r.name}", "",
           f"Model `{r.model.base}`, generator `{r.backends.generator}`, trainer `{r.backends.trainer}`; "
           f"{r.loop.iterations} iteration(s) planned, {len(its)} present; {r.data.prompts_per_iteration} prompts × "
           f"K={r.actor.n} responses × N={r.judge.n} judgments per iteration.", ""]
    if r.backends.generator == "fake":
        out += ["> Fake backend: these numbers exercise the bookkeeping, not learning.", ""]
    pool = root / "iter_00" / "pool.json"
    if pool.is_file():
        p = json.loads(pool.read_text(encoding="utf-8"))
        st = p.get("stats", {})
        if p.get("mode") == "generate":
            out += [f"Prompt pool: {st.get('kept')} prompts grown with `{p['model']}` from {p['seeds']['prompts']} "
                    f"seed prompts ({p['shots']}-shot; {st.get('duplicate', 0)} duplicate and "
                    f"{st.get('near_duplicate', 0)} near-duplicate tasks dropped; `iter_00/pool.json`).", ""]
        else:
            out += [f"Prompt pool: `{p.get('source')}` (`iter_00/pool.json`).", ""]
    out += ["## Iterations", "", *(_iteration_table(its) if its else ["_No iteration has run yet._", ""])]
    out += ["## Judge scores", "", "Share of judgments per (rounded) score. The paper sees the mean climb from "
            "about 4.1 towards 4.7 as the judge trains (Figure 5).", "", *_img(figs, "scores", "judge scores")]
    out += ["## Response length", "", "Length creep is what length control (ρ) guards against.", "",
            *_img(figs, "lengths", "response lengths")]
    out += ["## Parse rates", "", *_img(figs, "parse_rates", "parse rates")]
    out += ["## Preference pairs", "", *_img(figs, "pairs", "pairs")]
    out += ["## DPO training", "", *_img(figs, "training", "DPO loss and margins")]
    out += ["## Meta-judge biases", "",
            "Positional bias (the paper's, Table 5): the share of \"A\" verdicts among decided battles whose two "
            "judgments carry the same score (0.5 = none). Slot A, all battles: the same share over every decided "
            "battle, which score differences dilute towards 0.5. Score bias: the share of decided battles between "
            "differently scored judgments won by the higher-scored one (paper: 63 % → 98 %). Forced: verdicts whose "
            "`Winner:` line the generator had to append.", ""]
    metas = [s for s in its if s["meta"]]
    if metas:
        out += ["| iter | battles | decided | forced | positional bias | slot A, all battles | score bias | "
                "slot A by score gap 0 / (0,1] / (1,2] / >2 |", "|---|---|---|---|---|---|---|---|"]
        for s in metas:
            m = s["meta"]
            gaps = " / ".join(f"{_p(v['slot_a'])} ({v['battles']})" for v in m["positional_by_gap"].values())
            out.append(f"| {s['t']} | {m['battles']} | {_p(m['decision_rate'])} | {_p(m['forced_share'], 1)} | "
                       f"{_p(m['positional_bias'], 1)} | {_p(m['slot_a_share'], 1)} | {_p(m['score_bias'], 1)} | "
                       f"{gaps} |")
        out += [""]
    out += _guardrail_words(r, its)
    out += [*_img(figs, "meta_bias", "meta-judge biases")]
    out += _eval_section(ev, figs, root)
    out += _agreement_section(ev)
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------------------
# optional experiment trackers


def scalars(its: list[dict], ev: dict | None) -> dict[int, dict[str, float]]:
    """Per-iteration scalars for a tracker: ``{t: {name: value}}`` (None values left out)."""
    out: dict[int, dict] = {}
    for s in its:
        jp, m, tr = s["judge_parse"], s["meta"] or {}, s["train"]
        row = {"judge/mean_score": s["mean_score"], "actor/mean_chars": mean_score(s["response_chars"]),
               "judge/parse_rate": (jp["total"] - jp["null"]) / jp["total"] if jp["total"] else None,
               "meta/positional_bias": m.get("positional_bias"), "meta/score_bias": m.get("score_bias"),
               "pairs/actor": s["pairs"]["actor"], "pairs/judge": s["pairs"]["judge"],
               "train/last_loss": tr[-1].get("loss") if tr else None,
               "train/last_margin": tr[-1].get("rewards/margins") if tr else None}
        out[s["t"]] = row
    for c in (ev or {}).get("comparisons", []):
        row = out.setdefault(c["t"], {})
        row[f"eval/{c['kind']}/win_rate"] = c["win_rate"]
        row[f"eval/{c['kind']}/lc_win_rate"] = c["lc_win_rate"]
    return {t: {k: float(v) for k, v in row.items() if v is not None} for t, row in sorted(out.items())}


def _tracker(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ReportError(f"--log {name} needs the {name} package: pip install {name}") from None


def log_metrics(recipe: Recipe, its: list[dict], ev: dict | None, tracker, project: str) -> None:
    """Log per-iteration scalars to a tracker module (``wandb`` or ``trackio``: both expose init / log / finish)."""
    name = getattr(tracker, "__name__", "tracker")
    try:
        run = tracker.init(project=project, name=recipe.name, config=recipe.model_dump(mode="json"))
        for t, row in scalars(its, ev).items():
            tracker.log(row, step=t)
        (getattr(run, "finish", None) or tracker.finish)()
    except Exception as e:  # tracker set-up problems are the user's to fix
        raise ReportError(f"--log {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
