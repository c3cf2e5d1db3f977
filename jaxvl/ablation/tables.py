"""The ablation's markdown tables, built from tidy rows (``jaxvl.ablation.report.tidy_rows``): the paper's layout
with 95% intervals (``markdown_table``), its console form without them (``summary_table``) and the LabelMatch table
(``labelmatch_table``), each with a title naming the unit (bits), the examples n and the IoT threshold; and what
they share: the losses' display names (``METRIC_LABELS``), the region losses shown (``region_metrics``) and a row
lookup (``find_row``). Rows read on a head the model never trained are left out of every table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxvl.ablation.conditions import LEVELS
from jaxvl.ablation.verdicts import on_trained_heads

METRIC_LABELS = {"mlm": "MLM", "mrc_kl": "MRC-KL", "mrc_xe": "MRC-XE", "mrc_xe_vg": "MRC-XE-VG"}
REGION_METRICS = ("mrc_kl", "mrc_xe")  # the lang4vis losses of the paper's table (MRC-XE-VG: LabelMatch only)


def _cell(row: dict[str, Any] | None, delta: bool = False, interval: bool = True) -> str:
    if row is None:
        return "–"
    mean, low, high = (row["delta"], row["delta_low"], row["delta_high"]) if delta else (
        row["mean"], row["ci_low"], row["ci_high"])
    if mean is None:
        return "–"
    sign = "+" if delta and mean >= 0 else ""
    bounds = "" if low is None or not interval else f" [{low:.3f}, {high:.3f}]"
    return f"{sign}{mean:.3f}{bounds}"


def find_row(rows: Sequence[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    """The first of ``rows`` whose fields equal ``keys``; None if there is none."""
    for row in rows:
        if all(row.get(k) == v for k, v in keys.items()):
            return row
    return None


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _head(cells: Sequence[str]) -> list[str]:
    """A markdown table's header and rule."""
    return [_line(cells), "|" + "---|" * len(cells)]


def region_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The lang4vis losses of ``REGION_METRICS`` that some model reads on a head it trained, in that order."""
    shown = on_trained_heads(rows)
    return [m for m in REGION_METRICS if any(r["metric"] == m for r in shown)]


def _models(rows: Sequence[dict[str, Any]], metric: str | None = None) -> list[str]:
    """The models of ``rows`` in order; with ``metric``, those that do not read it on a head they never trained."""
    hidden = {r["model"] for r in rows if r["metric"] == metric and r.get("trained_head") is False}
    return [m for m in dict.fromkeys(r["model"] for r in rows) if m not in hidden]


def _title(rows: Sequence[dict[str, Any]], threshold: float, metric: str, subset: str) -> str:
    """The paper table's title: the unit and each task's examples."""
    vis = find_row(rows, task="vis4lang", condition="none", metric="mlm", subset="all")
    lang = find_row(rows, task="lang4vis", condition="none", metric=metric, subset=subset, threshold=threshold)
    parts = [] if vis is None else [f"vis4lang MLM on n={vis['count']} examples"]
    if lang is not None:
        parts.append(f"lang4vis {METRIC_LABELS[metric]} at IoT>{threshold:g} on n={lang['count']} examples in the "
                     f"mean, {lang['without_target']} without an aligned region")
    return "Mean loss in bits [95% bootstrap interval]" + (": " + "; ".join(parts) if parts else "") + "."


def markdown_table(rows: Sequence[dict[str, Any]], threshold: float = 0.5, lang4vis_metric: str = "mrc_kl",
                   subset: str = "all") -> str:
    """The paper's layout, full form (``table.md``): a title (unit, examples), then per model MLM None /
    Object (IoT > threshold) / All and Δ All−None, ``lang4vis_metric`` None / Phrase / All at ``threshold``
    and Δ All−None, each mean [95% interval] in bits. A model that reads ``lang4vis_metric`` on a head it
    never trained is left out."""
    t, name = f"IoT>{threshold:g}", METRIC_LABELS[lang4vis_metric]
    lines = _head(["model", "MLM None", f"MLM Object ({t})", "MLM All", "MLM Δ All−None", f"{name} None ({t})",
                   f"{name} Phrase ({t})", f"{name} All ({t})", f"{name} Δ All−None"])
    for model in _models(rows, lang4vis_metric):
        v = {c: find_row(rows, model=model, task="vis4lang", condition=c, metric="mlm", subset="all",
                      threshold=threshold if c == "object" else None) for c in LEVELS["vis4lang"]}
        lang = {c: find_row(rows, model=model, task="lang4vis", condition=c, metric=lang4vis_metric, subset=subset,
                         threshold=threshold) for c in LEVELS["lang4vis"]}
        lines.append(_line([model, _cell(v["none"]), _cell(v["object"]), _cell(v["all"]), _cell(v["all"], delta=True),
                            _cell(lang["none"]), _cell(lang["phrase"]), _cell(lang["all"]),
                            _cell(lang["all"], delta=True)]))
    return "\n".join([_title(rows, threshold, lang4vis_metric, subset), "", *lines]) + "\n"


def _count(row: dict[str, Any] | None) -> str:
    return "–" if row is None else str(row["count"])


def summary_table(rows: Sequence[dict[str, Any]], threshold: float = 0.5,
                  metrics: Sequence[str] = REGION_METRICS) -> str:
    """The console form of ``markdown_table`` (at most 120 characters a line for model names up to 16): a
    title, then one row per model and lang4vis loss of ``metrics`` it reads on a head it trained (one row
    with ``–`` when there is none), the mean losses in bits (no intervals) and each task's examples n."""
    t = f"IoT>{threshold:g}"
    lines = ["Mean loss in bits (95% intervals in table.md); lang4vis on the region head each model trained:", "",
             *_head(["model", "n", "MLM None", f"MLM Object ({t})", "MLM All", "loss", "n", f"None ({t})",
                     f"Phrase ({t})", f"All ({t})"])]
    for model in _models(rows):
        v = [find_row(rows, model=model, task="vis4lang", condition=c, metric="mlm", subset="all",
                   threshold=threshold if c == "object" else None) for c in LEVELS["vis4lang"]]
        own = [m for m in metrics if model in _models(rows, m) and find_row(rows, model=model, metric=m)]
        for metric in own or [None]:
            lang = [find_row(rows, model=model, task="lang4vis", condition=c, metric=metric, subset="all",
                          threshold=threshold) for c in LEVELS["lang4vis"]]
            label = "–" if metric is None else METRIC_LABELS[metric]
            lines.append(_line([model, _count(v[0]), *(_cell(r, interval=False) for r in v), label, _count(lang[0]),
                                *(_cell(r, interval=False) for r in lang)]))
    return "\n".join(lines) + "\n"


def _labelmatch_subsets(rows: Sequence[dict[str, Any]], model: str, threshold: float) -> dict[str, str]:
    """subset -> its label in the LabelMatch table. ``labelmatch_agree`` is a subset of ``labelmatch``: with
    as many examples it holds the same ones, and one row (``labelmatch = agree``) stands for both."""
    counts = {s: _count(find_row(rows, model=model, task="lang4vis", condition="none", subset=s, threshold=threshold))
              for s in ("labelmatch", "labelmatch_agree")}
    if counts["labelmatch"] == counts["labelmatch_agree"]:
        return {"labelmatch": "labelmatch = agree"}
    return {"labelmatch": "labelmatch", "labelmatch_agree": "labelmatch_agree"}


def labelmatch_table(rows: Sequence[dict[str, Any]], threshold: float = 0.5) -> str:
    """Markdown: per model, LabelMatch subset (``_labelmatch_subsets``) and lang4vis loss it reads on a head
    it trained (MRC-KL, MRC-XE, MRC-XE-VG), the loss for None / Phrase / All at ``threshold`` (mean [95%
    interval], bits) and the examples n."""
    t = f"IoT>{threshold:g}"
    shown = on_trained_heads(rows)
    conds = LEVELS["lang4vis"]
    lines = [f"LabelMatch at {t}: mean loss in bits [95% bootstrap interval].", "",
             *_head(["model", "subset", "loss", *(f"{c.capitalize()} ({t})" for c in conds), "n"])]
    for model in _models(rows):
        for subset, label in _labelmatch_subsets(rows, model, threshold).items():
            for metric in ("mrc_kl", "mrc_xe", "mrc_xe_vg"):
                found = [find_row(shown, model=model, task="lang4vis", condition=c, metric=metric, subset=subset,
                               threshold=threshold) for c in conds]
                if any(found):
                    lines.append(_line([model, label, METRIC_LABELS[metric], *map(_cell, found),
                                        _count(next(r for r in found if r))]))
    return "\n".join(lines) + "\n"
