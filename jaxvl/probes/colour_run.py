"""``jaxvl probe colour`` (``jaxvl/configs/probes.py``, probe ``colour``): the colour probe (``jaxvl.probes.colour``) of
trained checkpoints, with its report.

``probe_colour(cfg, workdir)``:

1. checkpoints and items as for EMAP (``jaxvl.probes.run.load_jobs``), only captions holding one of ``colour.words``
   as a whole word; per checkpoint the items whose text holds a whole-word colour token of its vocabulary, each with
   a foil colour drawn with ``seed`` (0 when ``seed`` < 0); ``colour.basis`` (a ``.npy`` [k, D], optional) checked
   against every model's feature size and orthonormalised, its random control drawn with the seed. Every bad input is
   a ``ValueError`` / ``FileNotFoundError`` naming the key or file before anything compiles;
2. per checkpoint one ``ColourProgram`` call per block of ``text_block`` items (every condition of a block in one
   compiled program);
3. ``<workdir>/<name>/colour.json`` (summary, verdicts, per-item rows), ``colour.csv`` (tidy: item, condition,
   measure, value), ``table.md`` and ``colour.png`` (each measure per feature condition with its 95% bootstrap
   interval); all tables in ``<workdir>/table.md``, which is returned.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from jaxvl.ablation.verdicts import EFFECT_FLOOR_BITS
from jaxvl.probes.colour import (
    CONDITION_LABELS,
    MEASURES,
    ColourItems,
    ColourResult,
    caption_has_word,
    check_basis,
    colour_items,
    control_basis,
    evaluate,
    parse_words,
)

N_BOOT = 1000


def read_basis(path: str) -> np.ndarray:
    """The array in the ``.npy`` at ``path`` (config ``colour.basis``); errors name the key and the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config colour.basis: {path}: no such file (a .npy [k, D] whose rows span the colour "
                                "subspace of the region features)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"config colour.basis: {path}: not a readable .npy array ({e})") from None


# ------------------------------------------------------------------------------------------- report pieces


def _cell(s: dict[str, float], unit: str) -> str:
    if unit == "%":
        return f"{s['mean']:.1f} [{s['low']:.1f}, {s['high']:.1f}]"
    return f"{s['mean']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]"


def _label(measure: str, itm_trained: bool) -> str:
    label, unit = MEASURES[measure]
    untrained = " (untrained ITM head)" if measure.startswith("itm") and not itm_trained else ""
    return f"{label}{untrained} ({unit})"


def result_table(result: ColourResult, summary: dict, verdicts: dict[str, str], name: str, itm_trained: bool,
                 about_basis: str) -> str:
    """The markdown report of one checkpoint: the measures per feature condition, the feature-side effects and the
    verdicts, each saying its unit, item count and interval."""
    head = ["| measure (unit) |", *(f" {CONDITION_LABELS[c]} |" for c in result.conditions)]
    lines = [f"Colour probe of {name}: n = {result.n} items (captions holding a whole-word colour token, each with "
             f"its own image); mean over items [95% bootstrap interval, {N_BOOT} resamples].", "",
             "".join(head), "|---" * (1 + len(result.conditions)) + "|"]
    for measure, per in summary["measures"].items():
        cells = "".join(f" {_cell(per[c], MEASURES[measure][1])} |" for c in result.conditions)
        lines.append(f"| {_label(measure, itm_trained)} |{cells}")
    eff = summary["effects"]
    if eff:
        lines += ["", f"Feature-side colour use: change in the MLM loss at the masked colour token (bits), n = "
                  f"{result.n} items. {about_basis}", "",
                  "| change | mean (bits) [95% bootstrap interval] |", "|---|---|",
                  f"| colour projected out - original | {_cell(eff['colour'], 'bits')} |",
                  f"| random projection - original (control) | {_cell(eff['control'], 'bits')} |",
                  f"| effect: colour - control | {_cell(eff['effect'], 'bits')} |"]
    lines += ["", "Verdicts:", f"- features: {verdicts['features']}", f"- text, MLM: {verdicts['mlm']}",
              f"- text, ITM: {verdicts['itm']}"]
    return "\n".join(lines)


def tidy_rows(result: ColourResult, item_ids: Sequence[int]) -> list[dict[str, Any]]:
    """(item, condition, measure, value) rows: every item's value of every measure under every feature condition,
    then its effects (condition ``effect``); ``item_ids`` [N] the items' record indices in the split."""
    rows = []
    for measure, values in result.measures().items():
        for i, item in enumerate(item_ids):
            rows += [dict(item=int(item), condition=c, measure=measure, value=float(values[i, j]))
                     for j, c in enumerate(result.conditions)]
    for name, values in result.effects().items():
        rows += [dict(item=int(item), condition="effect", measure=f"mlm_bits_{name}", value=float(values[i]))
                 for i, item in enumerate(item_ids)]
    return rows


def plot_result(result: ColourResult, summary: dict, verdicts: dict[str, str], path: str, title: str,
                itm_trained: bool, floor: float = EFFECT_FLOOR_BITS) -> None:
    """``colour.png``: one panel per measure (bars per feature condition, 95% bootstrap intervals as error bars,
    chance lines at 50%), the feature-side changes of the MLM loss with the floor, and the verdicts."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend state

    fig = Figure(figsize=(15, 8.5), dpi=100)
    axes = fig.subplots(2, 3).ravel()
    colours = {"original": "#4c72b0", "colour_projected": "#dd8452", "random_projected": "#8c8c8c"}

    def bars(ax: Any, labels: list[str], stats: list[dict], colour: list[str]) -> None:
        mean = np.array([s["mean"] for s in stats])
        err = np.abs(np.array([[s["low"] for s in stats], [s["high"] for s in stats]]) - mean)
        ax.bar(range(len(stats)), mean, yerr=err, capsize=5, color=colour)
        ax.set_xticks(range(len(stats)), labels, fontsize=8)
        ax.axhline(0, color="black", lw=0.6)

    for ax, (measure, per) in zip(axes, summary["measures"].items(), strict=False):
        label, unit = MEASURES[measure]
        bars(ax, [CONDITION_LABELS[c].replace(" (", "\n(") for c in result.conditions],
             [per[c] for c in result.conditions], [colours[c] for c in result.conditions])
        if unit == "%":
            ax.axhline(50, color="black", ls="--", lw=0.8, label="chance (50%)")
            ax.set_ylim(0, 100)
            ax.legend(fontsize=7, loc="lower right")
        untrained = "\nUNTRAINED ITM HEAD: no verdict" if measure.startswith("itm") and not itm_trained else ""
        ax.set_title(f"{label}{untrained}", fontsize=9)
        ax.set_ylabel(f"{unit} (mean over n = {result.n} items,\nerror bars: 95% bootstrap interval)", fontsize=8)
    ax = axes[4]
    eff = summary["effects"]
    if eff:
        bars(ax, ["colour projected\n- original", "random projection\n- original", "effect:\ncolour - control"],
             [eff["colour"], eff["control"], eff["effect"]], ["#dd8452", "#8c8c8c", "#55a868"])
        ax.axhline(floor, color="#55a868", ls="--", lw=0.8, label=f"floor of the effect ({floor} bits)")
        ax.legend(fontsize=7, loc="best")
        ax.set_ylabel(f"bits (mean over n = {result.n} items,\nerror bars: 95% bootstrap interval)", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no colour.basis:\nfeature side not measured", ha="center", va="center", color="grey",
                transform=ax.transAxes)
    ax.set_title("change in MLM -log2 p(true colour) at the masked colour token", fontsize=9)
    text = "\n\n".join(f"{k}: {v}" for k, v in (("features", verdicts["features"]), ("text, MLM", verdicts["mlm"]),
                                                  ("text, ITM", verdicts["itm"])))
    axes[5].axis("off")
    axes[5].text(0, 1, _wrap(text, 60), va="top", fontsize=8, transform=axes[5].transAxes)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(p, width) for p in text.split("\n"))


# ------------------------------------------------------------------------------------------- the command


def _block(cfg: ConfigDict) -> int:
    value = cfg.text_block
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config text_block={value!r}: expected an integer >= 1 (items per compiled call)")
    return value


def probe_colour(cfg: ConfigDict, workdir: str) -> str:
    """Runs the colour probe as the module doc says; returns the tables (also in ``<workdir>/table.md``)."""
    from tqdm import tqdm

    from jaxvl.models.volta.model import VLBertForPreTraining
    from jaxvl.probes.colour import ColourProgram
    from jaxvl.probes.run import load_jobs
    from jaxvl.runtime.compile import FAST_COMPILE
    from jaxvl.runtime.sharding import make_mesh

    # ------------------------------------------------------------- arguments, items, bases (before any compile)
    if cfg.probe != "colour":
        raise ValueError(f"config probe={cfg.probe!r}: `jaxvl probe colour` runs probe 'colour' "
                         "(--config probes:colour)")
    words = parse_words(str(cfg.colour.words))
    if len(words) < 2:
        raise ValueError(f"config colour.words={cfg.colour.words!r}: expected a comma list of two or more colour words")
    block, seed, basis_path = _block(cfg), max(int(cfg.seed), 0), str(cfg.colour.basis)
    raw_basis = read_basis(basis_path) if basis_path else None
    jobs = load_jobs(cfg, workdir, "the colour probe", 2, caption_has_word(words),
                     f"one of the colour words ({', '.join(words)}; config colour.words)")
    bases: dict[int, tuple[np.ndarray, np.ndarray, str]] = {}  # feature size -> (basis, control, note)
    prepared = []
    for ckpt, items, facts, tokenizer, itm_note in jobs:
        d = ckpt.model_cfg.v_feature_size
        if raw_basis is not None and d not in bases:
            rows, changed = check_basis(raw_basis, d, f"config colour.basis: {basis_path}")
            note = " Its rows were not orthonormal: orthonormalised by QR (the same subspace)." if changed else ""
            bases[d] = (rows, control_basis(rows, seed), note)
        prepared.append((ckpt, colour_items(items, tokenizer, words, seed), facts, tokenizer, itm_note))
    mesh = make_mesh(**cfg.mesh.to_dict())
    options = FAST_COMPILE if cfg.fast_compile else None
    programs: dict[Any, ColourProgram] = {}
    for ckpt, _, _, tokenizer, _ in prepared:
        key = (ckpt.model_cfg, tokenizer.mask_id)
        if key not in programs:
            programs[key] = ColourProgram(VLBertForPreTraining(ckpt.model_cfg), tokenizer.mask_id, mesh, block,
                                          cache_prefix=bool(cfg.cache_prefix) and ckpt.model_cfg.unimodal_prefix > 0,
                                          compiler_options=options)

    # ------------------------------------------------------------------------------------- run, report
    tables = []
    for ckpt, citems, facts, tokenizer, itm_note in prepared:
        basis, control, note = bases.get(ckpt.model_cfg.v_feature_size, (None, None, ""))
        start = time.perf_counter()
        with tqdm(total=citems.n, desc=f"colour {ckpt.name}", unit="item", disable=not cfg.progress) as bar:
            result = evaluate(programs[(ckpt.model_cfg, tokenizer.mask_id)], ckpt.params, citems, basis, control,
                              bar.update)
        seconds = time.perf_counter() - start
        table = _report(cfg, workdir, ckpt, citems, facts, tokenizer, itm_note, result, note, seconds, block, seed)
        tables.append(f"### {ckpt.name}\n\n{table}")
    combined = "\n\n".join(tables)
    _write(os.path.join(workdir, "table.md"), combined)
    return combined


def _report(cfg: ConfigDict, workdir: str, ckpt: Any, citems: ColourItems, facts: dict, tokenizer: Any,
            itm_note: str, result: ColourResult, basis_note: str, seconds: float, block: int, seed: int) -> str:
    """Writes ``colour.json``, ``colour.csv``, ``table.md`` and ``colour.png`` of one checkpoint; returns the
    table."""
    from jaxvl.ablation.report import write_rows

    out = os.path.join(workdir, ckpt.name)
    os.makedirs(out, exist_ok=True)
    summary = result.summary(N_BOOT, 0)
    itm_trained = not itm_note
    verdicts = result.verdicts(summary, itm_trained)
    about_basis = ("" if not result.basis_rank else
                   f"The colour subspace: the {result.basis_rank} rows of {cfg.colour.basis}, projected out of every "
                   f"real region row and the [IMG] row; control: a random subspace of the same rank orthogonal to it, "
                   f"drawn with seed {seed}.{basis_note} Verdict: found when the colour projection's interval lies "
                   f"above 0 and the effect's above the floor of {EFFECT_FLOOR_BITS} bits (the ablation's).")
    dropped = len(facts["item_index"]) - citems.n
    order = "in split order" if cfg.seed < 0 else f"in an order drawn with seed {cfg.seed}"
    where = (f"Checkpoint {ckpt.path} ({ckpt.preset}). Items: {citems.n} captions of distinct images ({order}) of the "
             f"{facts['split_size']} records of split {facts['split']!r} of {facts['dataset']} holding a colour word; "
             f"{dropped} more held one only as a sub-word piece, outside the vocabulary or past the "
             f"{facts['max_seq_length']}-token limit and were left out. Colour words of the vocabulary: "
             f"{', '.join(citems.words)}; each item's foil drawn among the others with seed {seed}. "
             f"{citems.n * 3 * len(result.conditions)} model inputs in {seconds:.1f} s (compilation included; "
             f"{block} items per compiled call).")
    table = "\n\n".join(p for p in (result_table(result, summary, verdicts, ckpt.name, itm_trained, about_basis),
                                    where, f"Note: {itm_note}." if itm_note else "") if p)
    measures, effects = result.measures(), result.effects()
    item_ids = [facts["item_index"][int(k)] for k in citems.kept]
    per_item = []
    for i in range(citems.n):
        row = dict(item=item_ids[i], image_id=facts["image_ids"][int(citems.kept[i])],
                   text=tokenizer.decode(citems.items.input_ids[i]), position=int(citems.position[i]),
                   colour=result.true_words[i], foil=result.foil_words[i])
        row.update({f"{m}_{c}": float(v[i, j]) for m, v in measures.items() for j, c in enumerate(result.conditions)})
        row.update({f"mlm_bits_{k}": float(v[i]) for k, v in effects.items()})
        per_item.append(row)
    record = dict(checkpoint=ckpt.path, preset=ckpt.preset, n_items=citems.n, conditions=list(result.conditions),
                  units={m: u for m, (_, u) in MEASURES.items()} | {"effects": "bits"},
                  interval=f"95% bootstrap percentile interval over items, {N_BOOT} resamples",
                  summary=_finite(summary), verdicts=verdicts, itm_trained=itm_trained, itm_note=itm_note,
                  colour_words=citems.words, seed=seed, basis=str(cfg.colour.basis), basis_rank=result.basis_rank,
                  floor_bits=EFFECT_FLOOR_BITS, seconds=round(seconds, 3), block=block, dropped_items=dropped,
                  dataset=facts["dataset"], split=facts["split"], split_size=facts["split_size"],
                  max_seq_length=facts["max_seq_length"], items=per_item)
    _write(os.path.join(out, "colour.json"), json.dumps(record, indent=1))
    write_rows(tidy_rows(result, item_ids), os.path.join(out, "colour.csv"), ("item", "condition", "measure", "value"))
    _write(os.path.join(out, "table.md"), table)
    plot_result(result, summary, verdicts, os.path.join(out, "colour.png"),
                f"Colour probe of {ckpt.name} ({ckpt.preset}): n = {citems.n} items", itm_trained)
    return table


def _finite(tree: Any) -> Any:
    """NaN -> None, for JSON."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    return None if isinstance(tree, float) and math.isnan(tree) else tree


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


__all__ = ["read_basis", "plot_result", "probe_colour", "result_table", "tidy_rows"]
