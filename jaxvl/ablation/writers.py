"""Files of the ablation's results: rows as CSV (``.csv``, ``.csv.gz``) or JSON lines (``write_rows``), and the
per-example losses, one row per (model, member, example) of a task (``per_example_columns``), as one CSV per task
(``write_per_example``).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxvl.ablation.sweep import AblationResult


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
