"""The shard plans of ``jaxvl prepare --workers N`` / ``--beam-runner``: each source's splits cut into shards
that Beam workers read independently, by key (``jaxvl.data.builders.beam``).

- ``synthetic``: both datasets (pairs and grounded phrases) over image index ranges; a worker generates image
  ``i`` directly (``World[i]`` depends only on the seed and ``i``). Pair keys are the single-process build's
  (``(i - first) * captions_per_image + j``), so the pairs even come out in the same order.
- ``volta-cc``: the train / val LMDBs over record index ranges; a worker opens the LMDB once and reads its
  records by key (``ConceptualCaptionsLMDB[i]``), with the source's region checks. Keys are the record
  indices. A bad record raises ``BadRecord`` naming the file and key, or with ``skip_bad`` is counted under the
  single-process build's names ("train: bad records in PATH", "train: records not fitting the region sizes in
  PATH").
- ``tsv``: each features TSV over line ranges (``jaxvl.data.readers.tsv.line_ranges``: one pass over its bytes);
  a worker seeks to its range and joins its lines to their captions (the JSON read once per worker). Keys are
  ``<line>/<caption>``; the column layout is the file's first record's, as in one pass.

A pair dataset's shards yield ``CaptionPair``s (``synthetic_pair_shards``, ``volta_cc_pair_shards``): an image
store writes each shard as its own pair of files (``jaxvl.data.imagestore.parallel``), a TFDS build encodes them
first (``stored``), and TFDS writes its own files.

Every read function here is module level and takes only picklable arguments, as Beam pickles it to its workers.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from jaxvl.data.builders.beam import Count, Key, ShardedSplit, ShardReader, index_ranges
from jaxvl.data.records import BadRecord, CaptionPair
from jaxvl.data.sources.base import ParsedSource, Skips
from jaxvl.data.sources.regions import RegionOptions
from jaxvl.data.synthetic.world import World, WorldConfig

if TYPE_CHECKING:
    from jaxvl.data.builders.common import RegionSpec
    from jaxvl.data.readers.tsv import LineRange
    from jaxvl.data.readers.volta_lmdb import ConceptualCaptionsLMDB

RECORDS_PER_SHARD = 64
"""Examples per shard (about): small enough to spread a few thousand pairs over several workers."""

PARALLEL_SOURCES = ("synthetic", "volta-cc", "tsv")
"""The sources ``jaxvl prepare --workers`` / ``--beam-runner`` takes, in either layout (pairs or images)."""


def where(builder: Any, split: str) -> str:
    """How a builder's messages name a split: ``<dataset>/<config> split '<split>'`` (as its own build does)."""
    return f"{builder.name}/{builder.builder_config.name} split {split!r}"


# ---------------------------------------------------------------------------------------------- synthetic


@functools.lru_cache(maxsize=4)
def _world(cfg: WorldConfig) -> World:
    return World(cfg)


def synthetic_pairs(world: WorldConfig, first: int, shard: tuple[int, int],
                    count: Count) -> Iterator[tuple[int, CaptionPair]]:
    """The pairs of images ``[start, stop)`` (``shard``) of ``world``, keyed by their index in the split."""
    generated = _world(world)
    for i in range(*shard):
        image = generated[i]
        for j, caption in enumerate(image.captions):
            yield (i - first) * world.captions_per_image + j, CaptionPair(regions=image.regions, caption=caption)


def read_synthetic_phrases(world: WorldConfig, spec: RegionSpec, name: str, first: int, shard: tuple[int, int],
                           count: Count) -> Iterator[tuple[str, dict[str, Any]]]:
    """The grounded phrases of images ``[start, stop)`` (``shard``), keyed ``<image>/<phrase>``."""
    from jaxvl.data.builders.ablation import phrase_record

    generated = _world(world)
    for i in range(*shard):
        image = generated[i]
        for j, phrase in enumerate(image.phrases):
            yield f"{i - first:09d}/{j:04d}", phrase_record(phrase, image.regions, spec, name)


def _synthetic_ranges(builder: Any, per_shard: int) -> tuple[WorldConfig, dict[str, tuple[int, list]]]:
    """A synthetic-world builder's world (train and val images) and, per split, its first image and its image
    index ranges of about ``per_shard`` examples."""
    cfg = builder.builder_config
    world = dataclasses.replace(cfg.world, num_images=cfg.world.num_images + cfg.val_images)
    images = max(1, per_shard // world.captions_per_image)
    return world, {split: (first, [(first + a, first + b) for a, b in index_ranges(stop - first, images)])
                   for split, (first, stop) in cfg.split_ranges.items()}


def synthetic_pair_shards(builder: Any, per_shard: int) -> dict[str, ShardedSplit]:
    """The splits of a ``SyntheticPretrain`` builder as image index ranges whose reads yield ``CaptionPair``s."""
    world, ranges = _synthetic_ranges(builder, per_shard)
    return {split: ShardedSplit(shards, functools.partial(synthetic_pairs, world, first))
            for split, (first, shards) in ranges.items()}


def synthetic_shards(builder: Any, per_shard: int) -> dict[str, ShardedSplit]:
    """The splits of a synthetic-world builder (pairs or phrases) as image index ranges of stored examples."""
    from jaxvl.data.builders.synthetic import SyntheticPretrain

    if isinstance(builder, SyntheticPretrain):
        return stored(builder, synthetic_pair_shards(builder, per_shard))
    world, ranges = _synthetic_ranges(builder, per_shard)
    return {split: ShardedSplit(shards, functools.partial(read_synthetic_phrases, world, builder.region_spec(),
                                                          where(builder, split), first))
            for split, (first, shards) in ranges.items()}


# ---------------------------------------------------------------------------------------------- volta-cc

_READERS: dict[tuple, ConceptualCaptionsLMDB] = {}


def _cc_reader(src: ParsedSource, path: str, skip_bad: bool) -> ConceptualCaptionsLMDB:
    """This process's reader of one LMDB (opened once: the key list is read when a reader opens)."""
    from jaxvl.data.sources.pretrain import cc_reader

    key = (src.text, path, skip_bad, os.getpid())
    if key not in _READERS:
        _READERS[key] = cc_reader(src, path, skip_bad)
    return _READERS[key]


def cc_pairs(src: ParsedSource, split: str, path: str, spec: RegionSpec, skip_bad: bool, shard: tuple[int, int],
             count: Count) -> Iterator[tuple[int, CaptionPair]]:
    """Records ``[start, stop)`` (``shard``) of a CC LMDB as ``CaptionPair``s keyed by record index; bad records
    raise ``BadRecord`` naming the file and key, or with ``skip_bad`` are counted (``count``) and skipped."""
    from jaxvl.data.sources.regions import fits_spec, skip_or_raise

    reader, skips = _cc_reader(src, path, skip_bad), Skips()
    for i in range(*shard):
        try:
            pair = reader[i]
        except BadRecord as e:
            skip_or_raise(e, skip_bad, skips, f"{split}: bad records in {path}")
            continue
        if fits_spec(pair.regions, spec, path, skip_bad, skips, f"{split}: records not fitting the region sizes "
                     f"in {path}"):
            yield i, pair
    for what, n in skips.counts.items():
        count(what, n)


def volta_cc_pair_shards(builder: Any, src: ParsedSource, skip_bad: bool, per_shard: int) -> dict[str, ShardedSplit]:
    """The train / val LMDBs of a ``volta-cc`` builder as record index ranges whose reads yield ``CaptionPair``s."""
    from jaxvl.data.sources.base import wants_skip_bad
    from jaxvl.data.sources.pretrain import cc_lmdb_paths

    skip_bad, spec = wants_skip_bad(src, skip_bad), builder.region_spec()
    out = {}
    for split, path in cc_lmdb_paths(src).items():
        n = len(_cc_reader(src, path, skip_bad))
        if n == 0:
            raise ValueError(f"{path}: the LMDB lists no records ({split} split)")
        out[split] = ShardedSplit(index_ranges(n, per_shard),
                                  functools.partial(cc_pairs, src, split, path, spec, skip_bad))
    return out


# ---------------------------------------------------------------------------------------------- tsv


@functools.lru_cache(maxsize=4)
def _captions(path: str) -> dict[str, Any]:
    """This process's copy of a captions JSON (read once per worker)."""
    from jaxvl.data.readers.volta_lmdb import read_caption_json

    return read_caption_json(path)


def tsv_pairs(opts: RegionOptions, fieldnames: tuple[str, ...] | None, split: str, features: str, captions_path: str,
              spec: RegionSpec, skip_bad: bool, lines: LineRange, count: Count) -> Iterator[tuple[str, CaptionPair]]:
    """The lines ``lines`` of a features TSV joined to their captions, keyed ``<line>/<caption>``; bad records
    raise ``BadRecord`` naming the file and line, or with ``skip_bad`` are counted under the single-process build's
    names."""
    from jaxvl.data.sources.pretrain import captioned_pairs, tsv_reader

    reader, skips = tsv_reader(opts, features, skip_bad, fieldnames), Skips()
    yield from captioned_pairs(reader.numbered(lines), _captions(captions_path), split, features, captions_path,
                               spec, skip_bad, skips, set())
    skips.add(f"{split}: bad records in {features}", reader.skipped)
    for what, n in skips.counts.items():
        count(what, n)


def tsv_pair_shards(builder: Any, src: ParsedSource, skip_bad: bool, per_shard: int) -> dict[str, ShardedSplit]:
    """The features TSVs of a ``tsv`` builder as line ranges of ``per_shard`` lines (images) whose reads yield
    ``CaptionPair``s; the column layout is read off each file's first record, so every range parses as the whole
    file does."""
    from jaxvl.data.readers.tsv import line_ranges
    from jaxvl.data.sources.base import wants_skip_bad
    from jaxvl.data.sources.pretrain import tsv_files, tsv_reader

    skip_bad, spec, opts = wants_skip_bad(src, skip_bad), builder.region_spec(), RegionOptions.parse(src)
    out = {}
    for split, (features, captions_path) in tsv_files(src).items():
        ranges = line_ranges(features, per_shard)
        if not ranges:
            raise ValueError(f"{features}: the TSV holds no lines ({split} split)")
        first = tsv_reader(opts, features, skip_bad)
        records = iter(first)
        next(records, None)  # learns the column layout (or raises naming a bad first line)
        records.close()  # and closes the file
        out[split] = ShardedSplit(ranges, functools.partial(tsv_pairs, opts, first.fieldnames, split, features,
                                                            captions_path, spec, skip_bad))
    return out


# ---------------------------------------------------------------------------------------------- stored pairs


def stored_pairs(read: ShardReader, spec: RegionSpec, name: str, shard: Any,
                 count: Count) -> Iterator[tuple[Key, dict[str, Any]]]:
    """The ``CaptionPair``s of ``read(shard, count)`` as a ``PretrainPairs`` split stores them (``pair_record``)."""
    from jaxvl.data.builders.pretrain import pair_record

    for key, pair in read(shard, count):
        yield key, pair_record(pair, spec, name)


def stored(builder: Any, pairs: Mapping[str, ShardedSplit]) -> dict[str, ShardedSplit]:
    """A pair builder's shards of ``CaptionPair``s (``pairs``) as shards of its stored records."""
    spec = builder.region_spec()
    return {split: ShardedSplit(s.shards, functools.partial(stored_pairs, s.read, spec, where(builder, split)))
            for split, s in pairs.items()}


# ---------------------------------------------------------------------------------------------- dispatch


def shard_plans(src: ParsedSource, builders: list[Any], skip_bad: bool,
                per_shard: int | None = None) -> list[Mapping[str, ShardedSplit]]:
    """Each builder's sharded splits, for the sources in ``PARALLEL_SOURCES``: stored records for a TFDS builder,
    ``CaptionPair``s for an image store (``ImagePairsBuilder``, whose shards are its files). ``per_shard``:
    examples per shard (default ``RECORDS_PER_SHARD``, or ``IMAGE_STORE_PAIRS_PER_SHARD`` for an image store).
    ``ValueError`` for another source or a builder without a plan."""
    from jaxvl.data.builders.images import ImagePairsBuilder
    from jaxvl.data.builders.images_shards import IMAGE_STORE_PAIRS_PER_SHARD
    from jaxvl.data.builders.pretrain import PretrainPairs
    from jaxvl.data.builders.synthetic import SyntheticAblation, SyntheticPretrain

    if src.name not in PARALLEL_SOURCES:
        raise ValueError(f"--source {src.name} cannot be prepared in parallel yet (--workers / --beam-runner); "
                         f"sources that can: {', '.join(PARALLEL_SOURCES)}")
    planned = (SyntheticPretrain, SyntheticAblation) if src.name == "synthetic" else (PretrainPairs,)
    pair_shards = {"volta-cc": volta_cc_pair_shards, "tsv": tsv_pair_shards}
    plans = []
    for builder in builders:
        pairs = builder.pairs if isinstance(builder, ImagePairsBuilder) else builder
        if not isinstance(pairs, planned):
            raise ValueError(f"--source {src.name}: {type(builder).__name__} ({builder.name}) cannot be prepared in "
                             "parallel yet (--workers / --beam-runner); prepare it without them")
        if isinstance(builder, ImagePairsBuilder):
            n = per_shard or IMAGE_STORE_PAIRS_PER_SHARD
            plans.append(synthetic_pair_shards(pairs, n) if src.name == "synthetic"
                         else pair_shards[src.name](pairs, src, skip_bad, n))
        elif src.name == "synthetic":
            plans.append(synthetic_shards(builder, per_shard or RECORDS_PER_SHARD))
        else:
            n = per_shard or RECORDS_PER_SHARD
            plans.append(stored(builder, pair_shards[src.name](builder, src, skip_bad, n)))
    return plans
