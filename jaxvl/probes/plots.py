"""Plots of the probe commands, drawn from their JSON records on bare matplotlib ``Figure``s (no pyplot state).

- ``plot_emap(records, path)``: per checkpoint, the full model's and EMAP's accuracies (%) and AUROC side by
  side, chance marked; error bars only where a record carries an interval (``<metric>_low`` / ``<metric>_high``,
  e.g. the labelled design's bootstrap intervals), else the caption says "no interval";
- ``plot_mmshap(record, path)``: the per-example T-SHAP histogram (%), the mean and its 95% bootstrap interval
  marked, n in the title.

A record whose ``itm_trained`` is False (the ITM head was never trained) gets "ITM head never trained: not a
result" in red at the top of its plot. Every record key but the metrics is optional.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

UNTRAINED = "ITM head never trained: not a result"
REMOVED = {"mean": "the dataset-mean feature", "mask": "masking"}  # MM-SHAP's region removal, in words
PREDICTORS = (("full", "full model", "#4c72b0"), ("emap", "EMAP (additive projection)", "#dd8452"))
# (key in a record's "full" / "emap" dict, panel title, unit scale, y label); shown where the records have them
EMAP_METRICS = (("accuracy", "accuracy", 100.0, "accuracy (%)"),
                ("balanced_accuracy", "balanced accuracy\n(mean of matched and mismatched)", 100.0,
                 "balanced accuracy (%)"),
                ("auroc", "AUROC of the match score\n(logit 0 - logit 1)", 1.0, "AUROC (0-1)"))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend state

    return Figure(figsize=(width, height), dpi=110)


def _number(value: Any) -> float:
    """A record's value as a float (None, missing and non-numbers: NaN)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def metric_interval(metrics: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """The interval a metrics dict carries for ``key``: ``<key>_low`` / ``<key>_high``, the same without a trailing
    ``_accuracy`` (``balanced_low``), or ``<key>_ci`` = [low, high]; None without one."""
    for stem in (key, key.removesuffix("_accuracy")):
        low, high = _number(metrics.get(f"{stem}_low")), _number(metrics.get(f"{stem}_high"))
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    ci = metrics.get(f"{key}_ci")
    if isinstance(ci, Sequence) and len(ci) == 2 and all(math.isfinite(_number(x)) for x in ci):
        return _number(ci[0]), _number(ci[1])
    return None


def _chance(key: str, records: Sequence[Mapping[str, Any]]) -> tuple[float, str]:
    """Chance level of ``key`` (in the metric's own unit) and its legend label."""
    if key == "auroc":
        return 0.5, "chance (0.5)"
    if key == "accuracy":  # the majority label's share, where the counts are known
        full = records[0].get("full", {})
        counts = [_number(full.get("n_matched")), _number(full.get("n_mismatched"))]
        if all(math.isfinite(c) for c in counts) and sum(counts) > 0:
            share = max(counts) / sum(counts)
            return share, f"majority label ({100 * share:.0f}%)"
    return 0.5, "chance (50%)"


def _label(record: Mapping[str, Any], i: int) -> str:
    name = str(record.get("model") or record.get("name") or f"checkpoint {i + 1}")
    n = record.get("n_items")
    text = f"{name}\nn = {n}" if n is not None else name
    return text + ("\n(ITM untrained)" if record.get("itm_trained") is False else "")


def _caption(records: Sequence[Mapping[str, Any]], without: Sequence[str], panels: int) -> str:
    """What the bars are; ``without``: the panels with no interval (of ``panels``)."""
    designs = {str(r.get("design", "pairs")) for r in records}
    parts = []
    if "pairs" in designs:
        parts.append("design 'pairs': every text of N items with every image, the N matched pairs against the "
                     "N(N - 1) mismatched pairs; accuracy on each, balanced = their mean")
    if "labelled" in designs:
        parts.append("design 'labelled': each item scored by its own pair against its label (0 = match)")
    parts.append("EMAP: each logit replaced by row mean + column mean - grand mean over the N x N pairs")
    if len(without) == panels:
        parts.append("no interval: the records carry none (each value is one count over all pairs)")
    else:
        parts.append("error bars: the 95% interval each record carries (labelled design: bootstrap over items)"
                     + (f"; no interval on {', '.join(without)}" if without else ""))
    return "; ".join(parts) + "."


def plot_emap(records: Mapping[str, Any] | Sequence[Mapping[str, Any]], path: str | os.PathLike):
    """Full model vs EMAP per checkpoint: accuracy (where the records have it), balanced accuracy (%) and AUROC bars
    with chance lines; ``records``: one ``emap.json`` record (``EmapResult.as_dict`` and the command's keys) or
    several. Writes ``path`` (PNG) and returns the figure."""
    records = [records] if isinstance(records, Mapping) else list(records)
    if not records:
        raise ValueError("plot_emap: no record")
    panels = [m for m in EMAP_METRICS if any(math.isfinite(_number(r.get("full", {}).get(m[0]))) for r in records)]
    if not panels:
        raise ValueError("plot_emap: no record holds a full-model accuracy or AUROC")
    width = max(3.6, 1.3 + 1.3 * len(records))
    fig = _figure(width * len(panels), 5.0)
    x = np.arange(len(records))
    without = []
    for p, (key, title, scale, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        has_any = False
        for j, (which, name, colour) in enumerate(PREDICTORS):
            values = np.array([_number(r.get(which, {}).get(key)) for r in records]) * scale
            spans = [metric_interval(r.get(which, {}), key) for r in records]
            err = np.maximum(0.0, np.array([[v - s[0] * scale, s[1] * scale - v] if s else [0.0, 0.0]
                                            for v, s in zip(values, spans, strict=True)]).T)
            has = any(s is not None for s in spans)
            has_any |= has
            pos = x + (j - 0.5) * 0.38
            ax.bar(pos, np.nan_to_num(values), 0.36, color=colour, label=name, yerr=err if has else None,
                   capsize=4 if has else 0)
            for at, v, s in zip(pos, values, spans, strict=True):
                top = 0.0 if not math.isfinite(v) else s[1] * scale if s else v
                ax.annotate("n/a" if not math.isfinite(v) else f"{v:.1f}" if scale > 1 else f"{v:.3f}", (at, top),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)
        if not has_any:
            without.append(ylabel.split(" (")[0])
        level, chance_label = _chance(key, records)
        ax.axhline(level * scale, color="black", ls="--", lw=1, label="chance level (per panel title)")
        ax.set_ylim(0, 1.12 * scale)
        ax.set_xticks(x, [_label(r, i) for i, r in enumerate(records)], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\ndashed: {chance_label}", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.1))
    n = sorted({r.get("n_items") for r in records if r.get("n_items") is not None})
    pairs = sorted({r.get("n_pairs") for r in records if r.get("n_pairs") is not None})
    score = records[0].get("score", "ITM logits")
    title = (f"EMAP vs the full model ({score}, class 0 = match): n = {', '.join(map(str, n)) or '?'} items, "
             f"{', '.join(f'{p:,}' for p in pairs) or '?'} (text, image) pairs")
    if any(r.get("itm_trained") is False for r in records):
        fig.text(0.5, 0.995, UNTRAINED, ha="center", va="top", color="red", fontsize=12, fontweight="bold")
    fig.text(0.5, 0.94, title, ha="center", va="top", fontsize=10)
    fig.text(0.01, 0.0, textwrap.fill(_caption(records, without, len(panels)), int(15 * width * len(panels))),
             fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.17, 1, 0.9))
    fig.savefig(path, bbox_inches="tight")
    return fig


def plot_mmshap(record: Mapping[str, Any], path: str | os.PathLike):
    """The per-example T-SHAP (%) histogram of one ``mmshap.json`` record (``MMShapResult.as_dict`` and the
    command's keys), its mean and 95% bootstrap interval marked. Writes ``path`` (PNG) and returns the figure."""
    examples = record.get("examples") or []
    t = np.array([_number(e.get("t_shap")) for e in examples]) * 100
    t = t[np.isfinite(t)]
    n_all = record.get("n_examples", len(examples))
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(t, bins=np.linspace(0, 100, 21), color="#4c72b0", edgecolor="white",
            label="examples (5-point bins)")
    ax.plot(t, np.zeros_like(t), "|", color="black", ms=12, clip_on=False, label="each example")
    mean = _number(record.get("t_shap"))
    interval = metric_interval(record, "t_shap")
    if interval is not None:
        ax.axvspan(*interval, color="#dd8452", alpha=0.3,
                   label=f"95% bootstrap interval of the mean [{interval[0]:.1f}, {interval[1]:.1f}]")
    if math.isfinite(mean):
        ax.axvline(mean, color="#dd8452", lw=2, label=f"mean T-SHAP {mean:.1f}%")
    if not t.size:
        ax.text(50, 0.5, "no example with a defined T-SHAP", ha="center", va="center")
    ax.set_xlim(0, 100)
    ax.set_xlabel("T-SHAP (%): share of the |Shapley values| on caption sub-words (0 = image only, 100 = text only)",
                  fontsize=8)
    ax.set_ylabel("examples (count)")
    ax.legend(fontsize=7, loc="upper right")
    k, removal = record.get("permutations"), record.get("removal")
    name = record.get("model") or record.get("checkpoint") or ""
    about = ", ".join(p for p in (f"{k} antithetic permutation pairs" if k else "",
                                  f"regions removed by {REMOVED.get(removal, removal)}" if removal else "",
                                  "" if interval else "no interval") if p)
    ax.set_title(f"MM-SHAP{' of ' + os.path.basename(str(name)) if name else ''}: T-SHAP per example, n = {t.size}"
                 f"{f' of {n_all}' if n_all != t.size else ''} examples\n{about}", fontsize=9)
    if record.get("itm_trained") is False:
        fig.suptitle(UNTRAINED, color="red", fontsize=12, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return fig


__all__ = ["UNTRAINED", "metric_interval", "plot_emap", "plot_mmshap"]
