"""Ablation results as tidy rows with bootstrap intervals, a paper-style markdown table, and PNG plots.

``tidy_rows(result)`` gives one row per (model, task, condition, threshold, metric, subset): the mean
over the included examples, its percentile-bootstrap 95% interval, the example count, the examples
without an aligned region (lang4vis), and the difference to the task's ``none`` condition at the same
threshold with its *paired* interval (the same resampled examples for both: every statistic of a
result shares one set of bootstrap weights) and, where the sweep ran the condition's matched control
(``jaxvl.ablation.controls``): the control's difference to ``none``, the effect (condition minus
control, paired), the examples whose control fell short of units, and the verdict
(``jaxvl.ablation.verdicts``). Subsets: ``all``, and with LabelMatch labels
``labelmatch`` (examples whose phrase matches one detector label) and ``labelmatch_agree`` (where the
detector's top class at the target region is that label); MRC-XE-VG exists on those two only.

``write_report(result, workdir)`` writes ``results.csv`` / ``results.jsonl`` (tidy rows),
``per_example.<task>.csv.gz`` (one row per model, member and example), ``detector.csv`` (LabelMatch detector
agreement), ``table.md`` (laid out like the paper's table: MLM None / Object / All, MRC-KL None /
Phrase / All; then the verdicts), ``conditions.png`` (per-model bars for each condition with intervals) and
``thresholds.png`` (loss against the IoT threshold), plus the attention analyses when given
(``attention.csv``, ``attention.png``). Plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxvl.ablation.conditions import LEVELS
from jaxvl.ablation.labelmatch import detector_rows
from jaxvl.ablation.sweep import AblationResult
from jaxvl.ablation.verdicts import EFFECT_FLOOR_BITS, verdict, verdict_table

METRIC_LABELS = {"mlm": "MLM", "mrc_kl": "MRC-KL", "mrc_xe": "MRC-XE", "mrc_xe_vg": "MRC-XE-VG"}
BLOCK = 256  # statistics bootstrapped at once
TIDY_FIELDS = ("model", "task", "condition", "threshold", "metric", "subset", "mean", "ci_low", "ci_high", "count",
               "without_target", "delta", "delta_low", "delta_high", "control_delta", "control_delta_low",
               "control_delta_high", "effect", "effect_low", "effect_high", "control_shortfall", "verdict")
# statistic -> its (mean, low, high) fields; "" is the member's own mean
_STAT_FIELDS = {"": ("mean", "ci_low", "ci_high"), "delta": ("delta", "delta_low", "delta_high"),
                "control_delta": ("control_delta", "control_delta_low", "control_delta_high"),
                "effect": ("effect", "effect_low", "effect_high")}


# ------------------------------------------------------------------------------------ bootstrap


def bootstrap_weights(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """float32 [n_boot, n]: how often each of n examples is drawn in each of ``n_boot`` resamples."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs n >= 1 examples and n_boot >= 1 resamples; got {n}, {n_boot}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n * n_boot).reshape(n_boot, n).astype(np.float32)


def bootstrap_means(values: np.ndarray, mask: np.ndarray, weights: np.ndarray, level: float = 0.95,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of ``values`` [N, S] over ``mask`` [N, S] and their percentile intervals under ``weights``.

    Returns (mean, low, high), each [S]; NaN for a statistic without included examples. A resample that
    happens to draw none of a statistic's examples is left out of its percentiles.
    """
    values = np.where(mask, np.asarray(values, np.float64), 0.0)
    mask = np.asarray(mask, np.float64)
    count = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = values.sum(0) / count
        boot = (weights @ values) / (weights @ mask)  # [n_boot, S]
    tail = 100 * (1 - level) / 2
    low = np.full(values.shape[1], np.nan)
    high = np.full(values.shape[1], np.nan)
    for s in np.flatnonzero(count > 0):
        col = boot[:, s][np.isfinite(boot[:, s])]
        low[s], high[s] = np.percentile(col, [tail, 100 - tail])
    return mean, low, high


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
              floor: float = EFFECT_FLOOR_BITS) -> list[dict[str, Any]]:
    """One row per (model, task, condition, threshold, metric, subset); fields ``TIDY_FIELDS``.

    ``delta*`` is the paired difference to the ``none`` condition (None for ``none`` itself or when that
    condition was not evaluated). ``control_delta*``, ``effect*``, ``control_shortfall`` and ``verdict``
    (module doc; ``floor`` in bits) are None where the condition has no control; controls have no rows of
    their own.
    """
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
                                    control_shortfall=_shortfall(result, task, m, ctrl, mask))
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


# ------------------------------------------------------------------------------------ writers


def _open_text(path: str):
    """A text file for CSV writing; gzip (fast level 1: these files are large, not precious) for ``.gz``."""
    if path.endswith(".gz"):
        return gzip.open(path, "wt", compresslevel=1, encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")


def write_rows(rows: Sequence[dict[str, Any]], path: str | os.PathLike, fields: Sequence[str] | None = None) -> None:
    """Rows as CSV (``.csv``, ``.csv.gz``) or JSON lines (``.jsonl``); None values are empty CSV cells / null."""
    path = os.fspath(path)
    if path.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        return
    fields = list(fields or (rows[0].keys() if rows else ()))
    with _open_text(path) as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})


def per_example_columns(result: AblationResult, task: str, phrases: Sequence[str] | None = None,
                        image_ids: Sequence[str] | None = None) -> dict[str, list]:
    """Columns of one row per (model, member, example) of ``task``: identifiers (``control`` 1: the member is
    its condition's matched control), whether the example counts in the member's mean, every metric (bits)
    and the alignment statistics (``regions_ablated`` / ``tokens_masked``: the units the member removed);
    ``phrases`` / ``image_ids`` (by example position) when given. An unused threshold is an empty string."""
    members = result.members[task]
    k, m, n = len(result.model_names), len(members), result.num_examples
    rows = (k, m, n)

    def grid(values: np.ndarray) -> list:  # [.., N] broadcast to [K, M, N], flattened
        return np.broadcast_to(values, rows).reshape(-1).tolist()

    ex = result.example
    cols: dict[str, list] = {
        "model": grid(np.array(result.model_names, object)[:, None, None]),
        "condition": grid(np.array([mb.condition for mb in members], object)[None, :, None]),
        "control": grid(np.array([int(mb.control) for mb in members])[None, :, None]),
        "threshold": grid(np.array(["" if mb.threshold is None else mb.threshold for mb in members],
                                   object)[None, :, None]),
        "example": grid(ex),
    }
    if image_ids is not None:
        cols["image_id"] = grid(np.array(image_ids, object)[ex])
    if phrases is not None:
        cols["phrase"] = grid(np.array(phrases, object)[ex])
    cols["included"] = grid(np.stack([result.included(task, i) for i in range(m)]).astype(int))
    for metric, values in result.values[task].items():
        cols[metric] = np.asarray(values, np.float64).reshape(-1).tolist()
    if task == "vis4lang":
        cols["regions_ablated"] = grid(result.stats["vis4lang_ablated"])
    else:
        cols["regions_aligned"] = grid(result.stats["num_aligned"])
        cols["tokens_masked"] = grid(result.stats["text_masked"])
        cols["has_target"] = grid(result.stats["has_target"].astype(int))
        if result.vg_label is not None:
            cols["vg_label"] = grid(result.vg_label)
    return cols


def write_per_example(result: AblationResult, path: str | os.PathLike, phrases: Sequence[str] | None = None,
                      image_ids: Sequence[str] | None = None) -> list[str]:
    """``per_example_columns`` as one CSV per task (the tasks have different columns): ``path`` ending in
    ``.csv`` or ``.csv.gz`` gets the task before the suffix (``per_example.vis4lang.csv.gz``). Returns the
    paths written."""
    path = os.fspath(path)
    stem, suffix = (path[:-7], ".csv.gz") if path.endswith(".csv.gz") else os.path.splitext(path)
    written = []
    for task in result.values:
        cols = per_example_columns(result, task, phrases, image_ids)
        out = f"{stem}.{task}{suffix}"
        with _open_text(out) as f:
            writer = csv.writer(f)
            writer.writerow(list(cols))
            writer.writerows(zip(*cols.values(), strict=True))
        written.append(out)
    return written


# ------------------------------------------------------------------------------------ table


def _cell(row: dict[str, Any] | None, delta: bool = False) -> str:
    if row is None:
        return "–"
    mean, low, high = (row["delta"], row["delta_low"], row["delta_high"]) if delta else (
        row["mean"], row["ci_low"], row["ci_high"])
    if mean is None:
        return "–"
    sign = "+" if delta and mean >= 0 else ""
    interval = "" if low is None else f" [{low:.3f}, {high:.3f}]"
    return f"{sign}{mean:.3f}{interval}"


def _find(rows: Sequence[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in keys.items()):
            return row
    return None


def markdown_table(rows: Sequence[dict[str, Any]], threshold: float = 0.5, lang4vis_metric: str = "mrc_kl",
                   subset: str = "all") -> str:
    """The paper's layout (bits, 95% intervals): per model, MLM None / Object (IoT > threshold) / All and
    Δ All−None, then ``lang4vis_metric`` None / Phrase / All and Δ All−None at ``threshold``."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    name = {"mrc_kl": "MRC-KL", "mrc_xe": "MRC-XE", "mrc_xe_vg": "MRC-XE-VG"}[lang4vis_metric]
    head = ["model", "MLM None", f"MLM Object (IoT>{threshold:g})", "MLM All", "Δ All−None",
            f"{name} None", f"{name} Phrase", f"{name} All", "Δ All−None"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    v_sub = "all"
    for model in models:
        v = {c: _find(rows, model=model, task="vis4lang", condition=c, metric="mlm", subset=v_sub,
                      threshold=threshold if c == "object" else None) for c in LEVELS["vis4lang"]}
        lang = {c: _find(rows, model=model, task="lang4vis", condition=c, metric=lang4vis_metric, subset=subset,
                         threshold=threshold) for c in LEVELS["lang4vis"]}
        cells = [model, _cell(v["none"]), _cell(v["object"]), _cell(v["all"]), _cell(v["all"], delta=True),
                 _cell(lang["none"]), _cell(lang["phrase"]), _cell(lang["all"]), _cell(lang["all"], delta=True)]
        lines.append("| " + " | ".join(cells) + " |")
    none_row = next((r for r in rows if r["task"] == "lang4vis" and r["threshold"] == threshold
                     and r["subset"] == subset and r["metric"] == lang4vis_metric), None)
    notes = []
    vis_none = next((r for r in rows if r["task"] == "vis4lang" and r["subset"] == "all"), None)
    if vis_none is not None:
        notes.append(f"vis4lang: {vis_none['count']} examples")
    if none_row is not None:
        notes.append(f"lang4vis at IoT>{threshold:g}: {none_row['count']} examples in the mean, "
                     f"{none_row['without_target']} without an aligned region")
    return "\n".join(lines) + ("\n\n" + "; ".join(notes) + "." if notes else "") + "\n"


def labelmatch_table(rows: Sequence[dict[str, Any]], threshold: float = 0.5) -> str:
    """Markdown: per model and LabelMatch subset, the lang4vis MRC loss (MRC-KL, else MRC-XE) and
    MRC-XE-VG for None / Phrase / All at ``threshold``, mean [95% interval] in bits."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    metric = "mrc_kl" if any(r["metric"] == "mrc_kl" for r in rows) else "mrc_xe"
    name = "MRC-KL" if metric == "mrc_kl" else "MRC-XE"
    conds = ("none", "phrase", "all")
    head = ["model", "subset", *(f"{name} {c.capitalize()}" for c in conds),
            *(f"MRC-XE-VG {c.capitalize()}" for c in conds), "examples"]
    lines = [f"LabelMatch at IoT>{threshold:g}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        for subset in ("labelmatch", "labelmatch_agree"):
            cells = [model, subset]
            count = None
            for m in (metric, "mrc_xe_vg"):
                for c in conds:
                    row = _find(rows, model=model, task="lang4vis", condition=c, metric=m, subset=subset,
                                threshold=threshold)
                    cells.append(_cell(row))
                    count = row["count"] if row is not None else count
            cells.append("–" if count is None else str(count))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_conditions(rows: Sequence[dict[str, Any]], path: str | os.PathLike, threshold: float = 0.5,
                    lang4vis_metric: str = "mrc_kl") -> None:
    """Two panels (vis4lang MLM, lang4vis ``lang4vis_metric``): bars per condition, one per model, with
    the 95% interval as error bars; vis4lang ``object`` and lang4vis at ``threshold``."""
    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, task, metric in ((axes[0], "vis4lang", "mlm"), (axes[1], "lang4vis", lang4vis_metric)):
        conds = LEVELS[task]
        width = 0.8 / max(len(models), 1)
        for i, model in enumerate(models):
            means, errs = [], [[], []]
            for c in conds:
                thr = None if task == "vis4lang" and c != "object" else threshold
                row = _find(rows, model=model, task=task, condition=c, metric=metric, subset="all", threshold=thr)
                ok = row is not None and row["mean"] is not None
                means.append(row["mean"] if ok else math.nan)
                errs[0].append(row["mean"] - row["ci_low"] if ok and row["ci_low"] is not None else 0.0)
                errs[1].append(row["ci_high"] - row["mean"] if ok and row["ci_high"] is not None else 0.0)
            ax.bar(np.arange(len(conds)) + i * width, means, width, yerr=errs, capsize=3, label=model)
        ax.set_xticks(np.arange(len(conds)) + width * (len(models) - 1) / 2, [c.capitalize() for c in conds])
        ax.set_title(f"{task}: {METRIC_LABELS[metric]} (bits)")
        ax.set_ylabel("bits")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_thresholds(rows: Sequence[dict[str, Any]], path: str | os.PathLike, lang4vis_metric: str = "mrc_kl") -> None:
    """Loss against the IoT threshold with 95% intervals: vis4lang ``object`` (``none`` / ``all``, which do
    not depend on it, as dashed and dotted lines) and each lang4vis condition, one colour per model."""
    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"none": "--", "object": "-", "all": ":", "phrase": "-."}
    for i, model in enumerate(models):
        colour = colours[i % len(colours)]
        for ax, task, metric in ((axes[0], "vis4lang", "mlm"), (axes[1], "lang4vis", lang4vis_metric)):
            for c in LEVELS[task]:
                sel = sorted((r for r in rows if r["model"] == model and r["task"] == task and r["condition"] == c
                              and r["metric"] == metric and r["subset"] == "all" and r["mean"] is not None),
                             key=lambda r: -1.0 if r["threshold"] is None else r["threshold"])
                if not sel:
                    continue
                if sel[0]["threshold"] is None:
                    ax.axhline(sel[0]["mean"], color=colour, ls=styles[c], lw=1, label=f"{model} {c}")
                    continue
                x = [r["threshold"] for r in sel]
                y = [r["mean"] for r in sel]
                err = [[m - (r["ci_low"] if r["ci_low"] is not None else m) for m, r in zip(y, sel, strict=True)],
                       [(r["ci_high"] if r["ci_high"] is not None else m) - m for m, r in zip(y, sel, strict=True)]]
                ax.errorbar(x, y, yerr=err, color=colour, ls=styles[c], marker="o", ms=3, capsize=2,
                            label=f"{model} {c}")
    for ax, title in ((axes[0], "vis4lang MLM"), (axes[1], f"lang4vis {METRIC_LABELS[lang4vis_metric]}")):
        ax.set_xlabel("IoT threshold")
        ax.set_ylabel("bits")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: AblationResult, workdir: str | os.PathLike, threshold: float = 0.5, n_boot: int = 1000,
                 seed: int = 0, phrases: Sequence[str] | None = None, image_ids: Sequence[str] | None = None,
                 attention: Sequence[dict[str, Any]] | None = None, floor: float = EFFECT_FLOOR_BITS
                 ) -> dict[str, str]:
    """Writes every output of the module doc under ``workdir``; returns {name: path}.

    The markdown table's lang4vis metric is MRC-KL when the models have it, else MRC-XE.
    """
    from jaxvl.ablation.attention import plot_attention

    os.makedirs(workdir, exist_ok=True)
    paths = {name: os.path.join(os.fspath(workdir), name) for name in
             ("results.csv", "results.jsonl", "table.md", "conditions.png", "thresholds.png")}
    rows = tidy_rows(result, n_boot, seed, floor=floor)
    write_rows(rows, paths["results.csv"], TIDY_FIELDS)
    write_rows(rows, paths["results.jsonl"])
    for out in write_per_example(result, os.path.join(os.fspath(workdir), "per_example.csv.gz"), phrases, image_ids):
        paths[os.path.basename(out)] = out
    metric = "mrc_kl" if "mrc_kl" in result.values.get("lang4vis", {}) else "mrc_xe"
    table = markdown_table(rows, threshold, metric)
    verdicts = verdict_table(rows, threshold, (metric,), floor)
    table += "\n" + verdicts if verdicts else ""
    if result.vg_label is not None and "lang4vis" in result.values:
        paths["detector.csv"] = os.path.join(os.fspath(workdir), "detector.csv")
        write_rows(detector_rows(result), paths["detector.csv"])
        table += "\n" + labelmatch_table(rows, threshold)
    with open(paths["table.md"], "w", encoding="utf-8") as f:
        f.write(table)
    plot_conditions(rows, paths["conditions.png"], threshold, metric)
    plot_thresholds(rows, paths["thresholds.png"], metric)
    if attention:
        paths["attention.csv"] = os.path.join(os.fspath(workdir), "attention.csv")
        paths["attention.png"] = os.path.join(os.fspath(workdir), "attention.png")
        write_rows(attention, paths["attention.csv"])
        plot_attention(attention, paths["attention.png"])
    return paths
