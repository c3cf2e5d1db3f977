"""``jaxvl probe mirror``: the mirror probe (``jaxvl.probes.mirror``) of trained checkpoints on a pretraining split.

``probe_mirror(cfg, workdir)`` runs ``jaxvl/configs/probes.py`` (``--config probes:mirror[,tiny]``):

1. ``mirror.words`` parsed ("left:right[,a:b]"), then checkpoints and items as for EMAP
   (``jaxvl.probes.run.load_jobs``), the items restricted to captions holding a mirror word as a whole word (BERT's
   basic tokenisation: lower-cased, split on spaces and punctuation; ``leftover`` does not count), up to
   ``n_items`` of distinct images;
2. per checkpoint the words as vocabulary ids (a word that is not a token of the vocabulary: one ValueError
   naming ``mirror.words``), the items whose tokenised caption still holds a whole-word mirror token after
   truncation to ``max_seq_length`` (the others dropped and counted), and one ``MirrorProgram`` per model config
   (``text_block`` items per compiled call; block / mesh errors before anything compiles);
3. per checkpoint ``<workdir>/<name>/``: ``mirror.json`` (summary with intervals, verdict, units, where the items
   came from, per item its record index, image id, caption and values per condition), ``mirror.csv`` (tidy: item,
   condition, measure, value; item = the record index in the split), ``table.md`` and ``mirror.png`` (per-condition
   MLM loss and ITM score with 95% intervals); all tables in ``<workdir>/table.md``, also returned.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from jaxvl.probes.mirror import (
    CONDITIONS,
    MLM_FLOOR_NATS,
    WORDS_KEY,
    MirrorProgram,
    MirrorResult,
    MirrorWords,
    parse_mirror_words,
    select_mirror_items,
)
from jaxvl.probes.run import load_jobs, positive_int, write_text


def caption_filter(pairs: tuple[tuple[str, str], ...]) -> Callable[[str], bool]:
    """caption -> whether a mirror word is one of its words under BERT's normalisation and pre-tokenisation
    (lower case, accents stripped, split on whitespace and punctuation): whole words only."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words = {w for p in pairs for w in p}
    return lambda caption: any(w in words for w, _ in pre.pre_tokenize_str(norm.normalize_str(caption)))


def plot_mirror(result: MirrorResult, summary: dict[str, Any], name: str, path: str) -> str:
    """``mirror.png``: per condition the mean MLM loss (nats) and ITM score (top), and each condition's paired change
    from ``orig`` (bottom: mirror consistency, flip+swap near 0 and flip away from it for a model that reads the
    side from the boxes), all with their bootstrap intervals."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend state

    fig = Figure(figsize=(10, 7.6), dpi=100)
    axes = fig.subplots(2, 2)
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    itm = "ITM match score (logit0 - logit1)" + ("" if result.itm_trained else ",\nUNTRAINED head: no verdict")
    changes = {"mlm": ("mlm_flip", "mlm_swap", "mlm_flip_swap"), "itm": ("itm_flip", "itm_swap", "itm_flip_swap")}
    panels = [(axes[0, 0], [f"mlm_nats/{c}" for c in CONDITIONS], CONDITIONS, colours,
               "MLM loss of the mirror-word token (nats)", "MLM loss per condition"),
              (axes[0, 1], [f"itm/{c}" for c in CONDITIONS], CONDITIONS, colours, itm, "ITM score per condition"),
              (axes[1, 0], changes["mlm"], CONDITIONS[1:], colours[1:], "change of the MLM loss from orig (nats)",
               f"MLM: flip - orig = {summary['mlm_flip']:+.3g} [{summary['mlm_flip_low']:+.3g}, "
               f"{summary['mlm_flip_high']:+.3g}]"),
              (axes[1, 1], changes["itm"], CONDITIONS[1:], colours[1:], "change of the ITM score from orig",
               f"ITM: flip - orig = {summary['itm_flip']:+.3g} [{summary['itm_flip_low']:+.3g}, "
               f"{summary['itm_flip_high']:+.3g}]")]
    for ax, keys, labels, colour, ylabel, title in panels:
        x = np.arange(len(keys))
        mean = np.array([summary[k] for k in keys])
        low, high = np.array([summary[f"{k}_low"] for k in keys]), np.array([summary[f"{k}_high"] for k in keys])
        ax.bar(x, mean, color=colour, alpha=0.75, width=0.6)
        ax.errorbar(x, mean, yerr=[np.nan_to_num(mean - low), np.nan_to_num(high - mean)], fmt="none",
                    ecolor="black", capsize=5, lw=1.2)
        ticks = [c if k.startswith(("mlm_nats", "itm/")) else f"{c} - orig" for c, k in zip(labels, keys, strict=True)]
        ax.set_xticks(x, ticks)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_title(title, fontsize=9, pad=12)
        ax.axhline(0, color="grey", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Mirror probe of {name}: n = {result.n} items ({summary['n_targets']} {result.words_label} tokens)"
                 f"\nbars: means over items; whiskers: {100 * summary['level']:.0f}% bootstrap intervals "
                 f"({summary['n_boot']} resamples of the items); changes paired per item", fontsize=10)
    if not result.itm_trained:  # as jaxvl.probes.plots marks the other probes' plots
        fig.text(0.5, 0.905, "ITM head never trained: the ITM panels are not a result", ha="center", color="red",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9 if not result.itm_trained else 0.93))
    fig.savefig(path)
    return path


def write_csv(result: MirrorResult, path: str) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["item", "condition", "measure", "value"])
        writer.writeheader()
        writer.writerows(result.tidy_rows())
    return path


def probe_mirror(cfg: ConfigDict, workdir: str) -> str:
    """Runs the mirror probe as the module doc says; returns the tables (also in ``<workdir>/table.md``)."""
    from tqdm import tqdm

    from jaxvl.models.volta.model import VLBertForPreTraining
    from jaxvl.runtime.compile import FAST_COMPILE
    from jaxvl.runtime.sharding import make_mesh

    if cfg.probe != "mirror":
        raise ValueError(f"config probe={cfg.probe!r}: `jaxvl probe mirror` runs probe 'mirror' "
                         "(--config probes:mirror)")
    pairs = parse_mirror_words(cfg.mirror.words)
    block = positive_int(cfg, "text_block")
    label = "/".join(w for p in pairs for w in p)
    jobs = load_jobs(cfg, workdir, "the mirror probe", 1, keep=caption_filter(pairs),
                     wanted=f"a whole-word {label} (config {WORDS_KEY})")

    # ------------------------------------------- words, items and programs (every error before any compile)
    mesh = make_mesh(**cfg.mesh.to_dict())
    options = FAST_COMPILE if cfg.fast_compile else None
    programs: dict[Any, MirrorProgram] = {}
    prepared = []
    for ckpt, items, facts, tokenizer, itm_note in jobs:
        words = MirrorWords.from_tokenizer(tokenizer, pairs)
        try:
            kept, index = select_mirror_items(items, words)
        except ValueError as e:
            raise ValueError(f"checkpoint {ckpt.name}: {e} after truncation to {facts['max_seq_length']} tokens "
                             f"(config data.max_seq_length)") from None
        key = (ckpt.model_cfg, tokenizer.mask_id)
        if key not in programs:
            programs[key] = MirrorProgram(VLBertForPreTraining(ckpt.model_cfg), tokenizer.mask_id, mesh, block,
                                          compiler_options=options)
        prepared.append((ckpt, kept, index, facts, tokenizer, itm_note, words, programs[key]))

    # ------------------------------------------------------------------------------- run, report
    tables = []
    for ckpt, items, index, facts, tokenizer, itm_note, words, program in prepared:
        records = [facts["item_index"][int(i)] for i in index]
        start = time.perf_counter()
        with tqdm(total=items.n, desc=f"mirror {ckpt.name}", unit="item", disable=not cfg.progress) as bar:
            result = program(ckpt.params, items, words, bar.update, item_ids=records)
        seconds = time.perf_counter() - start
        result.dropped, result.itm_trained = len(facts["item_index"]) - items.n, not itm_note
        summary = result.summary(seed=max(cfg.seed, 0))
        out = os.path.join(workdir, ckpt.name)
        os.makedirs(out, exist_ok=True)
        order = "in split order" if cfg.seed < 0 else f"in an order drawn with seed {cfg.seed}"
        where = (f"Checkpoint {ckpt.path} ({ckpt.preset}). Items: {items.n} records of distinct images ({order}) of "
                 f"the {facts['split_size']} of split {facts['split']!r} of {facts['dataset']} whose caption holds "
                 f"a whole-word {words.label} ({result.dropped} more lost theirs to truncation at "
                 f"{facts['max_seq_length']} tokens); [MASK] id {tokenizer.mask_id}. {items.n} items x 4 conditions "
                 f"(6 model rows each) in {seconds:.1f} s (compilation included; {program.block} items per call).")
        table = "\n\n".join(p for p in (result.table(ckpt.name, summary), where,
                                        f"Note: {itm_note}." if itm_note else "") if p)
        record = result.as_dict(True, summary)
        texts = {int(i): tokenizer.decode(items.input_ids[k]) for k, i in enumerate(records)}
        image_of = dict(zip(facts["item_index"], facts["image_ids"], strict=True))
        for row in record["items"]:
            row.update(image_id=image_of[row["item"]], caption=texts[row["item"]])
        record.update(checkpoint=ckpt.path, preset=ckpt.preset, name=ckpt.name, seconds=round(seconds, 3),
                      block=program.block, mask_id=tokenizer.mask_id, floor_nats=MLM_FLOOR_NATS,
                      itm_note=itm_note, verdict=result.verdict(ckpt.name, MLM_FLOOR_NATS, summary),
                      **{k: v for k, v in facts.items() if k not in ("item_index", "image_ids")})
        with open(os.path.join(out, "mirror.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(record, indent=1) + "\n")
        write_csv(result, os.path.join(out, "mirror.csv"))
        plot_mirror(result, summary, ckpt.name, os.path.join(out, "mirror.png"))
        write_text(os.path.join(out, "table.md"), table)
        tables.append(f"### {ckpt.name}\n\n{table}")
    combined = "\n\n".join(tables)
    write_text(os.path.join(workdir, "table.md"), combined)
    return combined


__all__ = ["caption_filter", "plot_mirror", "probe_mirror", "write_csv"]
