"""The output of the caption attention analyses (``jaxvl.caption.attention.analyze``): tidy rows, files, plots.

``tidy_rows(results)``: one row per analysis, family, layer and head (``ROW_FIELDS``). ``write_report(results,
out_dir)``: ``caption_attention.csv`` / ``.jsonl`` (the tidy rows), ``caption_attention.md`` (the notes and
per-layer means) and the plots ``entropy.png``, ``grounding.png`` (when grounding was measured) and
``correlations.png``, drawn on bare matplotlib ``Figure``s (no pyplot, no global backend state).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

FAMILIES = ("encoder_self", "decoder_self", "cross")  # the attention families of ``collect_attention``
ROW_FIELDS = ("analysis", "family", "layer", "head", "value", "count")


def tidy_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``analyze``'s per-layer, per-head results as tidy rows (``ROW_FIELDS``; layers and heads counted from 1,
    ``grounding_chance`` without layer and head)."""
    rows = []

    def grid(analysis: str, family: str, values: np.ndarray, count: int) -> None:
        for (layer, head), v in np.ndenumerate(values):
            rows.append(dict(analysis=analysis, family=family, layer=layer + 1, head=head + 1, value=float(v),
                             count=int(count)))

    for family in FAMILIES:
        grid("entropy", family, results["entropy"][family], results["queries"][family])
    if results["grounding"] is not None:
        grid("grounding", "cross", results["grounding"], results["phrase_tokens"])
        rows.append(dict(analysis="grounding_chance", family="cross", layer=None, head=None,
                         value=results["grounding_chance"], count=results["phrase_tokens"]))
    for name, values in results["spearman"].items():
        if values is not None:
            grid(f"spearman_{name}", "encoder_self", values, results["pairs"][name])
    return rows


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Writes the tidy rows (CSV, JSONL), a markdown summary with the notes, and the PNG plots; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f) for name, f in (
        ("csv", "caption_attention.csv"), ("jsonl", "caption_attention.jsonl"), ("summary", "caption_attention.md"),
        ("entropy", "entropy.png"), ("grounding", "grounding.png"), ("correlations", "correlations.png"))}
    rows = results["rows"]
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ROW_FIELDS)
        writer.writeheader()
        writer.writerows({k: "" if r[k] is None else r[k] for k in ROW_FIELDS} for r in rows)
    with open(paths["jsonl"], "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: _json_value(r[k]) for k in ROW_FIELDS}) + "\n")
    with open(paths["summary"], "w", encoding="utf-8") as f:
        f.write(_summary(results))
    _plot_entropy(results, paths["entropy"])
    if results["grounding"] is None:
        del paths["grounding"]
    else:
        _plot_grounding(results, paths["grounding"])
    _plot_correlations(results, paths["correlations"])
    return paths


def _per_layer(values: np.ndarray) -> str:
    """Mean over the finite heads of each layer, as ``a | b | ...``."""
    means = [float(np.mean(row[np.isfinite(row)])) if np.isfinite(row).any() else None for row in values]
    return " / ".join("n/a" if m is None else f"{m:.3f}" for m in means)


def _summary(results: Mapping[str, Any]) -> str:
    lines = ["# Caption attention analyses", "", f"{results['images']} images, {results['captions']} captions, "
             f"teacher-forced (align={results['align']!r}).", "", "## Operationalisations", ""]
    lines += [f"- {n}" for n in results["notes"]]
    lines += ["", "## Means over heads, per layer (layer 1 first)", "", "| analysis | family | per layer | count |",
              "| --- | --- | --- | --- |"]
    for family in FAMILIES:
        entropy, n = _per_layer(results["entropy"][family]), results["queries"][family]
        lines.append(f"| entropy | {family} | {entropy} | {n} |")
    if results["grounding"] is not None:
        lines.append(f"| grounding | cross | {_per_layer(results['grounding'])} | {results['phrase_tokens']} |")
        lines.append(f"| grounding_chance | cross | {results['grounding_chance']:.3f} | {results['phrase_tokens']} |")
    for name, values in results["spearman"].items():
        if values is not None:
            lines.append(f"| spearman_{name} | encoder_self | {_per_layer(values)} | {results['pairs'][name]} |")
    return "\n".join(lines) + "\n"


# Each family's kind (as ``jaxvl.ablation.attention.KINDS``) and what its queries attend to, for the plots.
FAMILY_LABELS = {"encoder_self": "encoder self-attention: vision (regions -> regions)",
                 "decoder_self": "decoder self-attention: text (words -> earlier words)",
                 "cross": "cross-attention: cross (words -> regions)"}
ENTROPY_LABEL = "normalised entropy (0 = one key, 1 = uniform)"
GROUNDING_LABEL = "share of the phrase token's cross-attention\non its linked regions (0-1)"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend state

    return Figure(figsize=(width, height), dpi=100)


def _layer_panel(ax, values: np.ndarray, title: str, ylabel: str) -> None:
    """Per-layer mean over heads (line), each head (points, "head 1" ...) and the heads' min-max band."""
    from matplotlib import colormaps

    layers = np.arange(1, values.shape[0] + 1)
    finite = np.isfinite(values).any(axis=1)
    if finite.any():
        ax.fill_between(layers[finite], np.nanmin(values[finite], 1), np.nanmax(values[finite], 1), color="grey",
                        alpha=0.2, label="range over heads")
        ax.plot(layers[finite], np.nanmean(values[finite], 1), marker="o", color="black", lw=1,
                label="mean over heads")
    colours = colormaps["tab10" if values.shape[1] <= 10 else "tab20"].colors  # head h: the same colour everywhere
    for h in range(values.shape[1]):
        ax.scatter(layers, values[:, h], s=12, alpha=0.8, color=colours[h % len(colours)], label=f"head {h + 1}")
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)


def _legend_below(fig, ax) -> None:
    """One legend for the figure (every panel draws the same series), centred under the panels."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=7, frameon=False)


def _plot_entropy(results: Mapping[str, Any], path: str):
    """``entropy.png``: a panel per family (titled with its kind); returns the figure."""
    heads = results["entropy"][FAMILIES[0]].shape[1]
    fig = _figure(4.6 * len(FAMILIES), 3.9 + 0.18 * math.ceil((heads + 2) / 6))
    for i, family in enumerate(FAMILIES):
        ax = fig.add_subplot(1, len(FAMILIES), i + 1)
        _layer_panel(ax, results["entropy"][family],
                     f"{FAMILY_LABELS[family]}\n{results['queries'][family]} queries", ENTROPY_LABEL)
        ax.set_ylim(0, 1.05)
    _legend_below(fig, ax)
    fig.suptitle("Attention entropy per layer (jaxvl operationalisation of Eq. 5)", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    return fig


def _plot_grounding(results: Mapping[str, Any], path: str):
    """``grounding.png``: the cross-attention share on linked regions, decoder layer x head; returns the figure."""
    values = results["grounding"]
    fig = _figure(max(5.0, 2.2 + 0.7 * values.shape[1]), max(3.4, 1.6 + 0.5 * values.shape[0]))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (layer, head), v in np.ndenumerate(values):
        ax.text(head, layer, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if np.isfinite(v) and v < 0.6 else "black")
    ax.set_xticks(range(values.shape[1]), [str(h + 1) for h in range(values.shape[1])])
    ax.set_yticks(range(values.shape[0]), [str(layer + 1) for layer in range(values.shape[0])])
    ax.set_xlabel("head")
    ax.set_ylabel("decoder layer")
    ax.set_title(f"{FAMILY_LABELS['cross']}\nshare on linked regions (Eq. 3): chance "
                 f"{results['grounding_chance']:.2f}, {results['phrase_tokens']} phrase tokens", fontsize=9)
    fig.colorbar(image, ax=ax).set_label(GROUNDING_LABEL, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return fig


def _plot_correlations(results: Mapping[str, Any], path: str):
    """``correlations.png``: Spearman's rho per encoder layer for each measured correlation; returns the figure."""
    panels = [(name, v) for name, v in results["spearman"].items() if v is not None]
    heads = panels[0][1].shape[1] if panels else 1
    fig = _figure(max(4.6 * len(panels), 6.0), 3.9 + 0.18 * math.ceil((heads + 2) / 6))
    ax = None
    for i, (name, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _layer_panel(ax, values, f"vs {name} ({results['pairs'][name]} pairs)", "Spearman rho (-1 to 1)")
        ax.axhline(0.0, color="grey", lw=0.8)
    if ax is not None:
        _legend_below(fig, ax)
    fig.suptitle(f"{FAMILY_LABELS['encoder_self']}: correlations per layer (jaxvl operationalisation)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    return fig
