"""Ablation results as tidy rows with bootstrap intervals, console and paper-style markdown tables, and PNG plots.

``tidy_rows(result)`` gives one row per (model, task, condition, threshold, metric, subset): the mean
over the included examples, its percentile-bootstrap 95% interval, the example count, the examples
without an aligned region (lang4vis), and the difference to the task's ``none`` condition at the same
threshold with its *paired* interval (the same resampled examples for both: every statistic of a
result shares one set of bootstrap weights) and, where the sweep ran the condition's matched control
(``jaxvl.ablation.controls``): the control's difference to ``none``, the effect (condition minus
control, paired), the examples whose control fell short of units, and the verdict
(``jaxvl.ablation.verdicts``), and ``trained_head``: False where the loss is read on a head the model
never trained (an MRC-XE sweep member's MRC-KL head): kept for completeness, shown by no table or plot.
Subsets: ``all``, and with LabelMatch labels ``labelmatch`` (examples whose phrase matches one detector
label) and ``labelmatch_agree`` (where the detector's top class at the target region is that label);
MRC-XE-VG exists on those two only.

Tables: ``console_tables`` (what ``jaxvl ablate`` prints, at most 120 characters a line: mean losses,
verdicts) and ``full_tables`` (``table.md``: the paper's layout per region loss with 95% intervals, the
verdicts, LabelMatch), each with a title, the unit (bits), the examples n and the IoT threshold in the
column names, and a glossary once under them. The tables themselves are built by ``jaxvl.ablation.tables``
(the verdicts' by ``jaxvl.ablation.verdicts``); the CSV / JSON-lines files are written by
``jaxvl.ablation.writers``.

``write_report(result, workdir)`` writes ``results.csv`` / ``results.jsonl`` (tidy rows),
``per_example.<task>.csv.gz`` (one row per model, member and example), ``detector.csv`` (LabelMatch detector
agreement), ``table.md`` (``full_tables``), ``conditions.png`` (bars per condition with intervals) and
``thresholds.png`` (loss against the IoT threshold, over a strip counting the examples without a region
aligned above it), each model's lang4vis losses on the heads it trained, plus the attention analyses when
given (``attention.csv``, ``attention.png``). Plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from jaxvl.ablation.conditions import LEVELS
from jaxvl.ablation.labelmatch import detector_rows
from jaxvl.ablation.sweep import AblationResult
from jaxvl.ablation.tables import (
    METRIC_LABELS,
    find_row,
    labelmatch_table,
    markdown_table,
    region_metrics,
    summary_table,
)
from jaxvl.ablation.verdicts import EFFECT_FLOOR_BITS, on_trained_heads, verdict, verdict_table
from jaxvl.ablation.writers import write_per_example, write_rows
from jaxvl.metrics.bootstrap import bootstrap_means, bootstrap_weights

BLOCK = 256  # statistics bootstrapped at once
TIDY_FIELDS = ("model", "task", "condition", "threshold", "metric", "subset", "mean", "ci_low", "ci_high", "count",
               "without_target", "delta", "delta_low", "delta_high", "control_delta", "control_delta_low",
               "control_delta_high", "effect", "effect_low", "effect_high", "control_shortfall", "verdict",
               "trained_head")
# statistic -> its (mean, low, high) fields; "" is the member's own mean
_STAT_FIELDS = {"": ("mean", "ci_low", "ci_high"), "delta": ("delta", "delta_low", "delta_high"),
                "control_delta": ("control_delta", "control_delta_low", "control_delta_high"),
                "effect": ("effect", "effect_low", "effect_high")}


# ------------------------------------------------------------------------------------ tidy rows


def _subsets(result: AblationResult, task: str, m: int) -> dict[str, tuple[np.ndarray, int | None]]:
    """subset -> (mask of the examples in the mean, examples of the subset without an aligned region)."""
    base = result.included(task, m)
    if task == "vis4lang":
        return {"all": (base, None)}
    no_target = ~result.stats["has_target"][m].astype(bool)
    out = {"all": (base, int(no_target.sum()))}
    if result.vg_label is not None:
        labelled = result.vg_label >= 0
        out["labelmatch"] = (base & labelled, int((no_target & labelled).sum()))
        out["labelmatch_agree"] = (base & labelled & (result.stats["detector_rank"][m] == 0), 0)
    return out


def _reference(result: AblationResult, task: str, m: int) -> int | None:
    """Index of the ``none`` member of ``task`` at member ``m``'s threshold (vis4lang: the one ``none``)."""
    member = result.members[task][m]
    for i, other in enumerate(result.members[task]):
        if other.condition == "none" and (task == "vis4lang" or other.threshold == member.threshold):
            return i
    return None


def _statistics(values: np.ndarray, m: int, ref: int | None, ctrl: int | None) -> dict[str, np.ndarray]:
    """statistic -> per-example column [N] of member ``m`` (``values`` [M, N] of one model and metric): its
    value, the paired difference to ``none`` (``ref``), its control's difference to ``none`` and the effect
    (member minus control ``ctrl``), each where it exists."""
    out = {"": values[m]}
    if ref is not None and ref != m:
        out["delta"] = values[m] - values[ref]
        if ctrl is not None:
            out["control_delta"] = values[ctrl] - values[ref]
    if ctrl is not None:
        out["effect"] = values[m] - values[ctrl]
    return out


def _shortfall(result: AblationResult, task: str, m: int, ctrl: int | None, mask: np.ndarray) -> int | None:
    """Examples of ``mask`` whose matched-count control (``object`` / ``phrase``) removed fewer units than
    member ``m``; None for ``all`` (its control is not matched in count) or without a control."""
    if ctrl is None or result.members[task][m].condition == "all":
        return None
    removed = result.stats["vis4lang_ablated" if task == "vis4lang" else "text_masked"]
    return int((mask & (removed[ctrl] < removed[m])).sum())


def tidy_rows(result: AblationResult, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
              floor: float = EFFECT_FLOOR_BITS, untrained: Mapping[str, Collection[str]] | None = None
              ) -> list[dict[str, Any]]:
    """One row per (model, task, condition, threshold, metric, subset); fields ``TIDY_FIELDS``.

    ``delta*`` is the paired difference to the ``none`` condition (None for ``none`` itself or when that
    condition was not evaluated). ``control_delta*``, ``effect*``, ``control_shortfall`` and ``verdict``
    (module doc; ``floor`` in bits) are None where the condition has no control; controls have no rows of
    their own. ``untrained``: model -> the metrics it reads on a head that model never trained (an MRC-XE
    sweep member's MRC-KL); their rows get ``trained_head`` False (kept for completeness; no table or plot
    shows them), every other row True.
    """
    untrained = untrained or {}
    weights = bootstrap_weights(result.num_examples, n_boot, seed)
    specs, cols, masks = [], [], []
    for task, metrics in result.values.items():
        for metric, values in metrics.items():
            for k, model in enumerate(result.model_names):
                for m, member in enumerate(result.members[task]):
                    if member.control:
                        continue
                    ref, ctrl = _reference(result, task, m), result.control_of(task, m)
                    stats = _statistics(values[k], m, ref, ctrl)
                    for subset, (mask, without) in _subsets(result, task, m).items():
                        if metric == "mrc_xe_vg" and subset == "all":
                            continue
                        spec = dict(model=model, task=task, condition=member.condition, threshold=member.threshold,
                                    metric=metric, subset=subset, count=int(mask.sum()), without_target=without,
                                    control_shortfall=_shortfall(result, task, m, ctrl, mask),
                                    trained_head=metric not in untrained.get(model, ()))
                        specs.append((spec, tuple(stats)))
                        cols.extend(stats.values())
                        masks.extend([mask] * len(stats))
    if not specs:
        return []
    weights = weights.astype(np.float64)
    parts = [bootstrap_means(np.stack(cols[i:i + BLOCK], 1), np.stack(masks[i:i + BLOCK], 1), weights, level)
             for i in range(0, len(cols), BLOCK)]  # in blocks of statistics, to bound memory
    mean, low, high = (np.concatenate([p[j] for p in parts]) for j in range(3))
    rows, c = [], 0
    for spec, names in specs:
        row = dict(spec, **{f: None for fields in _STAT_FIELDS.values() for f in fields})
        if spec["condition"] == "none":
            row.update(delta=0.0, delta_low=0.0, delta_high=0.0)
        for name in names:
            row.update(zip(_STAT_FIELDS[name], (_num(mean[c]), _num(low[c]), _num(high[c])), strict=True))
            c += 1
        row["verdict"] = verdict(row["effect_low"], row["effect_high"], floor)
        rows.append({f: row[f] for f in TIDY_FIELDS})
    return rows


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


# ------------------------------------------------------------------------------------ tables (printed, table.md)

CONSOLE_WIDTH = 120
_GLOSSARY = (
    "vis4lang (vision for language): the phrase's sub-words are masked and the model predicts them (MLM: mean "
    "loss per sub-word) with vision ablated: none, object (the regions aligned with the phrase at IoT > t replaced "
    "by the mean feature) or all (every region).",
    "lang4vis (language for vision): the regions aligned with the phrase at IoT > t are zeroed and the model predicts "
    "the detector's class at the best-aligned one with text ablated: none, phrase (its sub-words masked) or all "
    "(every sub-word). MRC-KL: KL divergence to the detector's class distribution; MRC-XE: cross-entropy to its top "
    "class (weighted by its confidence); each read on the head the model trained.",
)
_GLOSSARY_LABELMATCH = (
    "LabelMatch: the lang4vis examples whose phrase names one detector label (labelmatch), and those of them whose "
    "target region the detector's top class names too (labelmatch_agree; 'labelmatch = agree': the same examples, "
    "one row). MRC-XE-VG: cross-entropy to the phrase's own Visual Genome label."
)


def _wrap(text: str) -> str:
    """``text`` in lines of at most ``CONSOLE_WIDTH`` characters, broken at spaces only."""
    return textwrap.fill(text, CONSOLE_WIDTH, break_on_hyphens=False, break_long_words=False)


def glossary(labelmatch: bool = False) -> str:
    """What the tables' names mean (vis4lang, lang4vis, the losses; LabelMatch and MRC-XE-VG with
    ``labelmatch``), to print once under them; lines of at most ``CONSOLE_WIDTH`` characters."""
    parts = [*_GLOSSARY, *([_GLOSSARY_LABELMATCH] if labelmatch else [])]
    return "\n".join(_wrap(p) for p in parts) + "\n"


def untrained_note(rows: Sequence[dict[str, Any]]) -> str:
    """One note naming the losses read on heads a model never trained ("" when there are none): no table or
    plot shows them; ``results.csv`` keeps their rows, marked ``trained_head`` False."""
    hidden: dict[str, list[str]] = {model: [] for model in dict.fromkeys(r["model"] for r in rows)}
    for r in rows:
        label = METRIC_LABELS[r["metric"]]
        if r.get("trained_head") is False and label not in hidden[r["model"]]:
            hidden[r["model"]].append(label)
    listing = "; ".join(f"{model}: {', '.join(labels)}" for model, labels in hidden.items() if labels)
    if not listing:
        return ""
    return _wrap(f"Not shown: losses read on a head the model never trained ({listing}). results.csv keeps their "
                 "rows for completeness, marked trained_head=False.") + "\n"


def full_tables(rows: Sequence[dict[str, Any]], threshold: float = 0.5, floor: float = EFFECT_FLOOR_BITS,
                expected: Mapping[tuple[str, str], str] | None = None, labelmatch: bool = False) -> str:
    """``table.md``'s tables: the paper's table per region loss (``region_metrics``), the verdicts, the
    LabelMatch table (``labelmatch``), the glossary and the note on untrained heads."""
    metrics = region_metrics(rows) or ["mrc_kl"]
    parts = [markdown_table(rows, threshold, m) for m in metrics]
    parts += [verdict_table(rows, threshold, metrics, floor, expected),
              labelmatch_table(rows, threshold) if labelmatch else "", glossary(labelmatch), untrained_note(rows)]
    return "\n".join(p for p in parts if p)


def console_tables(rows: Sequence[dict[str, Any]], threshold: float = 0.5, floor: float = EFFECT_FLOOR_BITS,
                   expected: Mapping[tuple[str, str], str] | None = None) -> str:
    """What ``jaxvl ablate`` prints, at most 120 characters a line (model names up to 16): the mean losses
    (``summary_table``), the verdicts (``verdict_table``; ``expected``: its columns of that name), the glossary
    and the note on untrained heads. The full form (intervals, LabelMatch) is ``full_tables``."""
    metrics = region_metrics(rows)
    parts = [summary_table(rows, threshold, metrics), verdict_table(rows, threshold, metrics, floor, expected),
             glossary(), untrained_note(rows)]
    return "\n".join(p for p in parts if p)


# ------------------------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: Sequence[dict[str, Any]], task: str, metrics: Sequence[str]) -> list[tuple[str, str, str]]:
    """(model, metric, legend label) of each series a plot of ``task`` draws: vis4lang MLM per model; lang4vis
    per model and loss of ``metrics`` it reads on a head it trained (``rows``: ``on_trained_heads``)."""
    if task == "vis4lang":
        return [(m, "mlm", m) for m in dict.fromkeys(r["model"] for r in rows)]
    pairs = dict.fromkeys((r["model"], r["metric"]) for r in rows if r["task"] == task and r["metric"] in metrics)
    return [(m, k, m if len(metrics) == 1 else f"{m} {METRIC_LABELS[k]}") for m, k in pairs]


def _lang4vis_title(metrics: Sequence[str]) -> str:
    return "lang4vis: " + (METRIC_LABELS[metrics[0]] if len(metrics) == 1 else "region loss of the trained head")


LEGEND_BELOW = dict(fontsize=7, loc="upper center", ncol=2, frameon=False)


def _finish(fig: Any, axes: Sequence[Any], titles: Sequence[str], path: str | os.PathLike,
            legend_axes: Sequence[Any] | None = None) -> Any:
    """Titles, the unit, each panel's legend below it (never over the data; under ``legend_axes``' panel when
    given, one per panel), the error bars named; saved and closed. Returns the figure (its artists stay readable)."""
    for i, (ax, title) in enumerate(zip(axes, titles, strict=True)):
        ax.set_title(f"{title} (bits)")
        ax.set_ylabel("bits (error bars: 95% bootstrap interval)", fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            under = ax if legend_axes is None else legend_axes[i]
            under.legend(handles, labels, bbox_to_anchor=(0.5, -0.14 if under is ax else -0.45), **LEGEND_BELOW)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return fig


def _no_results(ax: Any, task: str) -> None:
    """Says so on a panel whose task has no rows to draw (the sweep did not run it)."""
    ax.text(0.5, 0.5, f"no {task} results", ha="center", va="center", transform=ax.transAxes, color="grey")


def plot_conditions(rows: Sequence[dict[str, Any]], path: str | os.PathLike, threshold: float = 0.5,
                    lang4vis_metrics: Sequence[str] = ("mrc_kl",)) -> Any:
    """Two panels (vis4lang MLM; lang4vis on each of ``lang4vis_metrics`` a model reads on a head it trained):
    bars per condition, one per series, with the 95% interval as error bars; vis4lang ``object`` and lang4vis
    at ``threshold``. Rows read on an untrained head are not drawn. Returns the (closed) figure."""
    plt = _pyplot()
    rows = on_trained_heads(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, task in ((axes[0], "vis4lang"), (axes[1], "lang4vis")):
        conds = LEVELS[task]
        series = _series(rows, task, lang4vis_metrics)
        if not series:
            _no_results(ax, task)
        width = 0.8 / max(len(series), 1)
        for i, (model, metric, label) in enumerate(series):
            means, errs = [], [[], []]
            for c in conds:
                thr = None if task == "vis4lang" and c != "object" else threshold
                row = find_row(rows, model=model, task=task, condition=c, metric=metric, subset="all", threshold=thr)
                ok = row is not None and row["mean"] is not None
                means.append(row["mean"] if ok else math.nan)
                errs[0].append(row["mean"] - row["ci_low"] if ok and row["ci_low"] is not None else 0.0)
                errs[1].append(row["ci_high"] - row["mean"] if ok and row["ci_high"] is not None else 0.0)
            ax.bar(np.arange(len(conds)) + i * width, means, width, yerr=errs, capsize=3, label=label)
        ax.set_xticks(np.arange(len(conds)) + width * (len(series) - 1) / 2, [c.capitalize() for c in conds])
    return _finish(fig, axes, ("vis4lang: MLM", _lang4vis_title(lang4vis_metrics)), path)


UNALIGNED_LABEL = "examples without an\naligned region (IoT > t)"


def unaligned_counts(rows: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, int]]]:
    """Per model, (IoT threshold t, examples without a region aligned at IoT > t) sorted by t: the lang4vis
    ``none`` rows' ``without_target`` on the ``all`` subset (alignment does not depend on the condition or the
    loss; the first loss's rows are read). Models with the same counts are merged under "all models"."""
    out: dict[str, list[tuple[float, int]]] = {}
    for r in rows:
        if (r["task"] == "lang4vis" and r["condition"] == "none" and r["subset"] == "all"
                and r["threshold"] is not None and r.get("without_target") is not None):
            per = dict(out.get(r["model"], ()))
            per.setdefault(float(r["threshold"]), int(r["without_target"]))
            out[r["model"]] = sorted(per.items())
    if len({tuple(v) for v in out.values()}) == 1:
        return {"all models": next(iter(out.values()))}
    return out


def _plot_unaligned(ax: Any, counts: Mapping[str, list[tuple[float, int]]]) -> None:
    """The strip under a threshold panel: examples without an aligned region per IoT threshold, each point
    labelled with its count (one series), or each model's line with the model's name at its end (several)."""
    for label, points in counts.items():
        x, y = zip(*points, strict=True)
        if len(counts) == 1:
            ax.plot(x, y, color="dimgrey", marker="s", ms=3, lw=1)
            for t, k in points:
                ax.annotate(str(k), (t, k), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=6)
        else:
            line = ax.plot(x, y, marker="s", ms=3, lw=1)[0]
            ax.annotate(label, (x[-1], y[-1]), textcoords="offset points", xytext=(4, 0), va="center", fontsize=6,
                        color=line.get_color(), annotation_clip=False)
    top = max(k for points in counts.values() for _, k in points)
    ax.set_ylim(0, max(1, top) * 1.35)
    ax.set_ylabel(UNALIGNED_LABEL, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def plot_thresholds(rows: Sequence[dict[str, Any]], path: str | os.PathLike,
                    lang4vis_metrics: Sequence[str] = ("mrc_kl",)) -> Any:
    """Loss against the IoT threshold with 95% intervals, one colour per series (``plot_conditions``):
    vis4lang ``object`` (``none`` / ``all``, which do not depend on it, as dashed and dotted lines) and each
    lang4vis condition. Rows read on an untrained head are not drawn. Under each panel, where the rows carry
    it (lang4vis ``without_target``), a strip of how many examples have no region aligned at IoT > t
    (``unaligned_counts``): the examples that lose their aligned region as t rises. Returns the (closed) figure."""
    plt = _pyplot()
    rows = on_trained_heads(rows)
    counts = unaligned_counts(rows)
    if counts:
        fig, grid = plt.subplots(2, 2, figsize=(11, 5.6), sharex="col", gridspec_kw=dict(height_ratios=(3, 1)))
        axes, strips = grid[0], grid[1]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        strips = None
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"none": "--", "object": "-", "all": ":", "phrase": "-."}
    for ax, task in ((axes[0], "vis4lang"), (axes[1], "lang4vis")):
        series = _series(rows, task, lang4vis_metrics)
        if not series:
            _no_results(ax, task)
        for i, (model, metric, label) in enumerate(series):
            colour = colours[i % len(colours)]
            for c in LEVELS[task]:
                sel = sorted((r for r in rows if r["model"] == model and r["task"] == task and r["condition"] == c
                              and r["metric"] == metric and r["subset"] == "all" and r["mean"] is not None),
                             key=lambda r: -1.0 if r["threshold"] is None else r["threshold"])
                if not sel:
                    continue
                if sel[0]["threshold"] is None:
                    ax.axhline(sel[0]["mean"], color=colour, ls=styles[c], lw=1, label=f"{label} {c}")
                    continue
                x = [r["threshold"] for r in sel]
                y = [r["mean"] for r in sel]
                err = [[m - (r["ci_low"] if r["ci_low"] is not None else m) for m, r in zip(y, sel, strict=True)],
                       [(r["ci_high"] if r["ci_high"] is not None else m) - m for m, r in zip(y, sel, strict=True)]]
                ax.errorbar(x, y, yerr=err, color=colour, ls=styles[c], marker="o", ms=3, capsize=2,
                            label=f"{label} {c}")
    for ax in strips if strips is not None else axes:
        ax.set_xlabel("IoT threshold t")
    if strips is not None:
        for ax in strips:
            _plot_unaligned(ax, counts)
        fig.subplots_adjust(hspace=0.12)
    return _finish(fig, axes, ("vis4lang: MLM", _lang4vis_title(lang4vis_metrics)), path, legend_axes=strips)


def write_report(result: AblationResult, workdir: str | os.PathLike, threshold: float = 0.5, n_boot: int = 1000,
                 seed: int = 0, phrases: Sequence[str] | None = None, image_ids: Sequence[str] | None = None,
                 attention: Sequence[dict[str, Any]] | None = None, floor: float = EFFECT_FLOOR_BITS,
                 untrained: Mapping[str, Collection[str]] | None = None) -> dict[str, str]:
    """Writes every output of the module doc under ``workdir``; returns {name: path}.

    ``untrained`` (``tidy_rows``) marks the losses read on heads a model never trained: no table or plot
    shows them. ``table.md`` holds ``full_tables``; the plots show the lang4vis losses of ``region_metrics``.
    """
    from jaxvl.ablation.attention import plot_attention

    os.makedirs(workdir, exist_ok=True)
    paths = {name: os.path.join(os.fspath(workdir), name) for name in
             ("results.csv", "results.jsonl", "table.md", "conditions.png", "thresholds.png")}
    rows = tidy_rows(result, n_boot, seed, floor=floor, untrained=untrained)
    write_rows(rows, paths["results.csv"], TIDY_FIELDS)
    write_rows(rows, paths["results.jsonl"])
    for out in write_per_example(result, os.path.join(os.fspath(workdir), "per_example.csv.gz"), phrases, image_ids):
        paths[os.path.basename(out)] = out
    labelmatch = result.vg_label is not None and "lang4vis" in result.values
    if labelmatch:
        paths["detector.csv"] = os.path.join(os.fspath(workdir), "detector.csv")
        write_rows(detector_rows(result), paths["detector.csv"])
    with open(paths["table.md"], "w", encoding="utf-8") as f:
        f.write(full_tables(rows, threshold, floor, labelmatch=labelmatch))
    metrics = region_metrics(rows) or ["mrc_kl"]
    plot_conditions(rows, paths["conditions.png"], threshold, metrics)
    plot_thresholds(rows, paths["thresholds.png"], metrics)
    if attention:
        paths["attention.csv"] = os.path.join(os.fspath(workdir), "attention.csv")
        paths["attention.png"] = os.path.join(os.fspath(workdir), "attention.png")
        write_rows(attention, paths["attention.csv"])
        plot_attention(attention, paths["attention.png"])
    return paths
