"""The report's figures (matplotlib, Agg; no pyplot state): one function per PNG, each ``None`` without data.

Inputs are ``runstats.iteration_stats`` dicts and ``eval/summary.json``. Exercised by: ``mrlite report runs/smoke``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mrlite.core.diagnostics import SCORE_BUCKETS
from mrlite.rundir import atomic_write_bytes

C_ACTOR, C_JUDGE, C_META, C_GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f"


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (no timestamp in the metadata, so equal inputs give equal files)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return path


def _fig(ncols: int = 1, width: float = 8.0, height: float = 4.2):
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    return fig, axes


def _labels(its: list[dict]) -> list[str]:
    return [f"iter {s['t']}" for s in its]


def scores(its: list[dict]) -> Figure | None:
    """Judge score histogram per iteration (share of judgments per bucket; 'none' = unparsable)."""
    its = [s for s in its if s["scores"]]
    if not its:
        return None
    fig, (ax,) = _fig()
    keys = [str(b) for b in SCORE_BUCKETS] + ["none"]
    width = 0.8 / len(its)
    for k, s in enumerate(its):
        h, n = s["histogram"], len(s["scores"])
        vals = [h[b] / n for b in keys[:-1]] + [h["missing"] / n]
        mean = "n/a" if s["mean_score"] is None else f"{s['mean_score']:.2f}"
        ax.bar(np.arange(len(keys)) + (k - (len(its) - 1) / 2) * width, vals, width,
               label=f"iter {s['t']} (n={n}, mean {mean})")
    ax.set_xticks(range(len(keys)), keys)
    ax.set_xlabel("judge score (rounded; 'none' = unparsable)")
    ax.set_ylabel("share of judgments")
    ax.set_title("Judge scores per iteration")
    ax.legend(fontsize=8)
    return fig


def lengths(its: list[dict], ev: dict | None) -> Figure | None:
    """Response length per iteration (training responses; eval answers per model when eval ran)."""
    its = [s for s in its if s["response_chars"]]
    if not its:
        return None
    ncols = 2 if ev and ev.get("models") else 1
    fig, axes = _fig(ncols, 8.0 if ncols == 1 else 11.0)
    ax = axes[0]
    data = [s["response_chars"] for s in its]
    ax.boxplot(data, tick_labels=_labels(its), showmeans=True, showfliers=False)
    ax.set_ylabel("characters")
    ax.set_title("Sampled responses (box: quartiles, ▲ mean)")
    if ncols == 2:
        ms = ev["models"]
        chars = ev.get("answer_chars") or {}
        data = [chars.get(str(m["t"])) or [m["mean_chars"] or 0] for m in ms]
        axes[1].boxplot(data, tick_labels=[f"M{m['t']}" for m in ms], showmeans=True, showfliers=False)
        axes[1].set_ylabel("characters")
        axes[1].set_title(f"Eval answers per model ({ev['prompts']['count']} held-out prompts)")
    return fig


def _stacked(ax, labels, parts: list[tuple[str, list[float], str]], title: str) -> None:
    bottom = np.zeros(len(labels))
    for name, vals, color in parts:
        ax.bar(labels, vals, bottom=bottom, label=name, color=color)
        bottom += np.array(vals)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)


def parse_rates(its: list[dict]) -> Figure | None:
    """Judge: parsed from text / forced / unparsable; meta-judge: decided / forced / undecided."""
    its = [s for s in its if s["judge_parse"]["total"]]
    if not its:
        return None
    metas = [s for s in its if s["meta"]]
    fig, axes = _fig(2 if metas else 1, 11.0 if metas else 8.0)
    jp = [s["judge_parse"] for s in its]
    _stacked(axes[0], _labels(its), [
        ("parsed from text", [p["text"] / p["total"] for p in jp], C_ACTOR),
        ("forced label", [p["forced"] / p["total"] for p in jp], C_JUDGE),
        ("unparsable", [p["null"] / p["total"] for p in jp], "#d62728"),
    ], "Judge parse rate")
    if metas:
        ms = [s["meta"] for s in metas]
        _stacked(axes[1], _labels(metas), [
            ("winner from text", [(m["decided"] - m["forced"]) / m["battles"] for m in ms], C_META),
            ("forced label", [m["forced"] / m["battles"] for m in ms], C_JUDGE),
            ("undecided", [1 - m["decided"] / m["battles"] for m in ms], "#d62728"),
        ], "Meta-judge verdict rate")
    return fig


def pairs(its: list[dict]) -> Figure | None:
    """Pair counts per iteration, and chosen vs rejected lengths of the actor and judge pairs."""
    its = [s for s in its if s["pairs"]["actor"] or s["pairs"]["judge"]]
    if not its:
        return None
    fig, (a1, a2) = _fig(2, 11.0)
    x = np.arange(len(its))
    a1.bar(x - 0.2, [s["pairs"]["actor"] for s in its], 0.4, label="actor pairs", color=C_ACTOR)
    a1.bar(x + 0.2, [s["pairs"]["judge"] for s in its], 0.4, label="judge pairs", color=C_JUDGE)
    a1.set_xticks(x, _labels(its))
    a1.set_ylabel("pairs")
    a1.set_title("DPO pairs per iteration")
    a1.legend(fontsize=8)
    kinds = (("actor_chosen", C_ACTOR, 0.85), ("actor_rejected", C_ACTOR, 0.3),
             ("judge_chosen", C_JUDGE, 0.85), ("judge_rejected", C_JUDGE, 0.3))
    for k, (key, color, alpha) in enumerate(kinds):
        pos = x + (k - 1.5) * 0.2
        bp = a2.boxplot([s["pairs"][key] or [np.nan] for s in its], positions=pos, widths=0.17, showmeans=True,
                        showfliers=False, patch_artist=True, manage_ticks=False)
        for patch in bp["boxes"]:
            patch.set(facecolor=color, alpha=alpha)
        bp["boxes"][0].set_label(key.replace("_", " "))
    a2.set_xticks(x, _labels(its))
    a2.set_ylabel("characters")
    a2.set_title("Chosen vs rejected length (▲ mean)")
    a2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4, frameon=False)
    return fig


def training(its: list[dict]) -> Figure | None:
    """DPO loss and reward margin per logged step, iterations one after another."""
    its = [s for s in its if s["train"]]
    if not its:
        return None
    fig, (a1, a2) = _fig(2, 11.0)
    offset = 0
    for s in its:
        steps = [offset + r.get("step", i + 1) for i, r in enumerate(s["train"])]
        for ax, key in ((a1, "loss"), (a2, "rewards/margins")):
            ys = [r.get(key) for r in s["train"]]
            if any(y is not None for y in ys):
                ax.plot(steps, ys, marker="o", ms=3, label=f"iter {s['t']}")
        offset = steps[-1]
        for ax in (a1, a2):
            ax.axvline(offset + 0.5, color=C_GREY, lw=0.5, alpha=0.5)
    a1.axhline(np.log(2), color=C_GREY, ls="--", lw=1, label="ln 2 (start)")
    a1.set_title("DPO loss")
    a2.axhline(0, color=C_GREY, ls="--", lw=1)
    a2.set_title("DPO reward margin (chosen − rejected)")
    for ax in (a1, a2):
        ax.set_xlabel("logged step (cumulative over iterations)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    return fig


def winrates(ev: dict | None) -> Figure | None:
    """Win rate and LC win rate (AlpacaEval-style, no instruction-difficulty term) of M_t vs M_0 and vs M_{t−1},
    with 95 % bootstrap intervals."""
    comps = (ev or {}).get("comparisons") or []
    if not comps:
        return None
    fig, (ax,) = _fig()
    series = [("vs_seed", "win_rate", "win_rate_ci", "vs M0", C_ACTOR, "o-"),
              ("vs_seed", "lc_win_rate", "lc_ci", "vs M0, LC (AlpacaEval-style)", C_ACTOR, "s--"),
              ("vs_prev", "win_rate", "win_rate_ci", "vs M(t−1) (for t = 1 that is M0)", C_JUDGE, "o-"),
              ("vs_prev", "lc_win_rate", "lc_ci", "vs M(t−1), LC (AlpacaEval-style)", C_JUDGE, "s--")]
    for k, (kind, key, ci_key, label, color, style) in enumerate(series):
        cs = [c for c in comps if c["kind"] == kind and c[key] is not None]
        if not cs:
            continue
        x = np.array([c["t"] for c in cs]) + (k - 1.5) * 0.04
        y = np.array([c[key] for c in cs]) * 100
        lo = np.array([(c[ci_key] or [c[key]] * 2)[0] for c in cs]) * 100
        hi = np.array([(c[ci_key] or [c[key]] * 2)[1] for c in cs]) * 100
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt=style, color=color, capsize=3, label=label,
                    alpha=1.0 if key == "win_rate" else 0.7)
    ax.axhline(50, color=C_GREY, ls=":", lw=1)
    ax.set_xticks(sorted({c["t"] for c in comps}))
    ax.set_xlabel("iteration t (model M_t)")
    ax.set_ylabel("win rate % (ties = ½; both orders)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Pairwise win rate (95 % CI), judge {ev['judge'][:40]}, {ev['prompts']['count']} prompts")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    return fig


def meta_bias(its: list[dict]) -> Figure | None:
    """The meta-judge's positional bias (slot-A wins among equally scored battles) and score bias (higher score wins) per iteration."""
    its = [s for s in its if s["meta"]]
    if not its:
        return None
    fig, (ax,) = _fig()
    x = np.arange(len(its))
    for off, key, label, color in ((-0.2, "positional_bias", "positional bias: A wins, equal scores", C_META),
                                   (0.2, "score_bias", "score bias: higher-scored judgment wins", C_JUDGE)):
        vals = [100 * s["meta"][key] if s["meta"][key] is not None else 0 for s in its]
        bars = ax.bar(x + off, vals, 0.4, label=label, color=color)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.axhline(50, color=C_GREY, ls=":", lw=1, label="no bias (50 %)")
    ax.set_xticks(x, _labels(its))
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of decided battles")
    ax.set_title("Meta-judge biases (paper Table 5)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
    return fig


def judge_quality(ev: dict | None) -> Figure | None:
    """Each model as judge vs human rankings: agreement, agreement w/o ties, Spearman."""
    qs = ((ev or {}).get("human") or {}).get("models") or []
    if not qs:
        return None
    fig, (ax,) = _fig()
    x = np.arange(len(qs))
    for off, key, label, color in ((-0.27, "agreement", "agreement %", C_ACTOR),
                                   (0, "agreement_no_ties", "agreement w/o ties %", C_JUDGE),
                                   (0.27, "spearman", "Spearman ×100", C_META)):
        vals = [100 * q[key] if q[key] is not None else 0 for q in qs]
        ax.bar(x + off, vals, 0.27, label=label, color=color)
    ax.axhline(50, color=C_GREY, ls=":", lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [f"M{q['t']}" for q in qs])
    ax.set_title(f"Judge vs human rankings ({ev['human']['prompts']} prompts, {Path(ev['human']['source']).name})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
    return fig
