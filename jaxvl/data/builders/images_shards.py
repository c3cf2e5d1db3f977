"""Writing an image store in shards, in parallel: ``jaxvl prepare --workers N`` / ``--beam-runner`` with
``layout=images``.

A split's shard plan (``jaxvl.data.prepare_shards``: image or record index ranges whose reads yield
``CaptionPair``s) becomes one pair of table files per shard (``<split>-images.array_record-00003-of-00008``,
``jaxvl.data.imagestore.layout``), written by the Beam worker that reads the shard::

    shard jobs -> Create -> Reshuffle (spread over the workers) -> Map(write_shard): tables + a summary file

Unlike the pair layout's Beam build (TFDS encodes every example, groups them by key in the runner and writes its
own files), nothing but the small shard descriptions crosses between processes: each worker reads its shard's
pairs and writes its own files, so there is no shuffle to hold in memory. Each shard is a store of its own: its
captions name rows of its own images file, so an image whose captions fall in two shards is stored in both
(only at a shard boundary, for sources that keep an image's captions together). The captions keep the source's
order, shard after shard: the same order as the single-process build.

``write_shard`` writes the tables under temporary names and renames them when complete, then a summary
(``<split>-summary<suffix>.json``: images, captions, truncated images, skipped pairs by kind), so a retried
bundle rewrites its shard whole; ``summaries`` reads them back in order once the pipeline has finished and
fails naming a missing one. The output directory must be a filesystem every worker writes to (local, NFS, a
mounted bucket): the tables are written with ArrayRecord's local writer. A bad record raises ``BadRecord``
(the runner's error carries it: ``jaxvl.data.builders.beam.bad_record_in``), or with ``skip_bad`` is counted in
the shard's summary under the single-process build's names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

from jaxvl.data.builders.beam import ShardedSplit, ShardReader
from jaxvl.data.builders.common import RegionSpec
from jaxvl.data.imagestore.layout import shard_suffix
from jaxvl.data.imagestore.writer import SplitWriter
from jaxvl.data.records import BadRecord
from jaxvl.data.sources.base import Skips

log = logging.getLogger(__name__)

IMAGE_STORE_PAIRS_PER_SHARD = 1024
"""Pairs per shard of a parallel image-store build (``--shard-size`` sets it): at VOLTA's ctrl shapes (36 x 2048
float32 features, 1601 classes) about 0.5 GB per images file when each image has one caption, so Conceptual
Captions' 3 million pairs make about 3,000 shards."""


def skip_pair(split: str, skips: Skips, error: BadRecord) -> None:
    """Counts a pair the image store cannot take (``skip_bad``) and logs why."""
    skips.add(f"{split}: pairs whose image the store cannot take", 1)
    log.warning("skipping: %s", error)


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Shard ``index`` of ``total`` of ``split``: ``shard`` is the plan's description, read by the split's reader."""

    split: str
    index: int
    total: int
    shard: Any


@dataclasses.dataclass(frozen=True)
class StoreTarget:
    """Where and how the shards are written: the staging ``directory``, the region sizes, the features dtype,
    ``skip_bad`` and the dataset's ``name`` (``<dataset>/<config>``, for messages)."""

    directory: str
    spec: RegionSpec
    features_dtype: str
    skip_bad: bool
    name: str


def summary_file(split: str, index: int, total: int) -> str:
    return f"{split}-summary{shard_suffix(index, total)}.json"


def write_shard(job: ShardJob, target: StoreTarget, reads: Mapping[str, ShardReader]) -> str:
    """Writes shard ``job`` (its tables, then its summary file) and returns the summary's name."""
    skips = Skips()
    where = f"{target.name} split {job.split!r}"
    skip = (lambda error: skip_pair(job.split, skips, error)) if target.skip_bad else None
    with SplitWriter(target.directory, job.split, target.spec, target.features_dtype,
                     (job.index, job.total)) as writer:
        pairs = (pair for _, pair in reads[job.split](job.shard, skips.add))
        writer.add_all(pairs, where, skip)
    summary = {"images": writer.images, "captions": writer.captions, "truncated": writer.truncated,
               "skipped": skips.counts}
    name = summary_file(job.split, job.index, job.total)
    partial = os.path.join(target.directory, f"{name}.partial-{uuid.uuid4().hex[:12]}")
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(summary, f)
    os.replace(partial, os.path.join(target.directory, name))
    return name


def write_shards(target: StoreTarget, plan: Mapping[str, ShardedSplit], runner: str, options: Any) -> None:
    """Runs the Beam pipeline writing every shard of every split of ``plan`` into ``target.directory``."""
    import apache_beam as beam

    jobs = [ShardJob(split, i, len(s.shards), shard) for split, s in plan.items() for i, shard in enumerate(s.shards)]
    reads = {split: s.read for split, s in plan.items()}
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        _ = (pipeline
             | "shards" >> beam.Create(jobs)
             | "spread" >> beam.Reshuffle()
             | "write" >> beam.Map(write_shard, target, reads))


def summaries(directory: str, plan: Mapping[str, ShardedSplit]) -> dict[str, list[dict[str, Any]]]:
    """Split -> the summary of each of its shards, in order (``write_shard``); ``RuntimeError`` naming a missing
    one (a pipeline that finished without writing every shard)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for split, s in plan.items():
        out[split] = []
        for i in range(len(s.shards)):
            path = os.path.join(directory, summary_file(split, i, len(s.shards)))
            if not os.path.exists(path):
                raise RuntimeError(f"{path}: the pipeline finished without writing shard {i} of split {split!r}")
            with open(path, encoding="utf-8") as f:
                out[split].append(json.load(f))
            os.remove(path)
    return out
