"""The image-store builder: a ``PretrainPairs`` dataset written one record per image (``jaxvl.data.imagestore``).

    pairs = PretrainPairs(config=PretrainConfig(...), data_dir=out)      # or SyntheticPretrain, ...
    builder = ImagePairsBuilder(pairs, out, features_dtype="float16")
    builder.download_and_prepare()
    source, info = open_split(builder.data_dir, "train")                 # the pair records, joined on read

It writes the same pairs as ``pairs`` would (its ``pair_splits``, ``region_spec`` and ``dataset_metadata``)
but each image's regions once, in the image-store layout (``jaxvl.data.imagestore.layout``), under
``<out>/<pairs.name>_images/<config>/1.0.0``; the config is ``pairs``' config name, plus
``+features_dtype-float16`` for float16 features, so both sit beside the pair dataset. It is not a TFDS
builder, but has what ``jaxvl prepare`` and ``resolve_dataset`` use of one: ``name``, ``builder_config.name``,
``data_dir``, ``download_and_prepare(download_config=..., download_dir=...)`` (an existing store is reused
unless the download mode is ``FORCE_REDOWNLOAD``; a new one is written to ``<data_dir>.incomplete`` and moved
in place when complete) and ``info`` (``splits`` with ``num_examples``, ``metadata``). ``stands_for`` names the
dataset kind it replaces (``PretrainPairs``): ``jaxvl pretrain`` reads it. After ``shard(plan)`` (``jaxvl
prepare --workers N`` / ``--beam-runner``) it writes each split in shards, one pair of files per shard, with a
Beam pipeline (``jaxvl.data.builders.images_shards``); the pairs read back in the same order.

With ``skip_bad`` a pair the store cannot take (features beyond float16's range) is skipped and counted in
``skips``; otherwise it raises ``BadRecord`` naming the split and the image.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

from jaxvl.data.builders.beam import ShardedSplit
from jaxvl.data.builders.common import RegionSpec
from jaxvl.data.builders.images_shards import StoreTarget, skip_pair, summaries, write_shards
from jaxvl.data.builders.pretrain import PretrainPairs
from jaxvl.data.imagestore.layout import (
    FEATURES_DTYPES,
    VERSION,
    ImageStoreInfo,
    is_image_store,
    read_manifest,
    split_entry,
    write_manifest,
)
from jaxvl.data.imagestore.writer import SplitWriter
from jaxvl.data.sources.base import Skips

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ImageStoreConfig:
    """The config of an image store: its ``name`` (the TFDS-style config directory) and features dtype."""

    name: str
    features_dtype: str = "float32"


class ImagePairsBuilder:
    """Writes a ``PretrainPairs`` dataset's pairs as an image store (module doc)."""

    stands_for = PretrainPairs

    def __init__(self, pairs: PretrainPairs, out: str, features_dtype: str = "float32", skip_bad: bool = False,
                 skips: Skips | None = None):
        if features_dtype not in FEATURES_DTYPES:
            raise ValueError(f"features_dtype={features_dtype!r}; expected one of {', '.join(FEATURES_DTYPES)}")
        self.pairs = pairs
        self.name = f"{pairs.name}_images"
        config = pairs.builder_config.name
        if features_dtype != "float32":
            config += f"+features_dtype-{features_dtype}"
        self.builder_config = ImageStoreConfig(config, features_dtype)
        self.data_dir = os.path.join(os.fspath(out), self.name, config, VERSION)
        self.skip_bad, self.skips = skip_bad, skips if skips is not None else Skips()
        self.sharded: dict[str, ShardedSplit] | None = None

    @property
    def info(self) -> ImageStoreInfo:
        """The written store's manifest (``ValueError`` before ``download_and_prepare``)."""
        return read_manifest(self.data_dir)

    def shard(self, plan: Mapping[str, ShardedSplit]) -> None:
        """Write every split in shards with a Beam pipeline over ``plan`` (its reads yield ``CaptionPair``s;
        ``jaxvl.data.builders.images_shards``); ``download_and_prepare`` then needs a Beam runner."""
        self.sharded = dict(plan)

    def download_and_prepare(self, download_config: Any = None, download_dir: str | None = None) -> None:
        """Writes every split (module doc); ``download_dir`` is unused (nothing is downloaded)."""
        import tensorflow_datasets as tfds

        if "://" in self.data_dir:
            raise ValueError(f"{self.data_dir}: layout=images writes to a local or shared filesystem (ArrayRecord's "
                             "local writer); --out a mounted path, then copy the store to the bucket")
        force = getattr(download_config, "download_mode", None) == tfds.GenerateMode.FORCE_REDOWNLOAD
        if is_image_store(self.data_dir) and not force:
            log.info("reusing %s", self.data_dir)
            return
        splits = self.pairs.pair_splits()
        if not splits:
            raise ValueError(f"{self.name}/{self.builder_config.name}: no splits to build")
        spec = self.pairs.region_spec()
        staging = f"{self.data_dir}.incomplete"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        try:
            if self.sharded is None:
                counts = {split: self._write_split(staging, split, source, spec) for split, source in splits.items()}
            else:
                counts = self._write_shards(staging, spec, download_config)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        metadata = self.pairs.dataset_metadata()  # after the splits: a file source's skip counts are live
        write_manifest(staging, {
            "name": self.name, "config": self.builder_config.name, "version": VERSION,
            "description": getattr(self.pairs.builder_config, "description", None) or "",
            "features_dtype": self.builder_config.features_dtype, "regions": spec.to_dict(), "splits": counts,
            "metadata": {**metadata, "regions": spec.to_dict(), **self._skipped(metadata)}})
        shutil.rmtree(self.data_dir, ignore_errors=True)
        os.makedirs(os.path.dirname(self.data_dir), exist_ok=True)
        os.replace(staging, self.data_dir)

    def _write_shards(self, staging: str, spec: RegionSpec, download_config: Any) -> dict[str, dict[str, Any]]:
        """Every split's shards written by a Beam pipeline (``jaxvl.data.builders.images_shards``); the split
        entries of the manifest, the shards' skips added to ``skips``."""
        runner = getattr(download_config, "beam_runner", None)
        if runner is None:
            raise ValueError(f"{self.name}: a sharded image store is written by a Beam runner (--workers N or "
                             "--beam-runner)")
        if set(self.sharded) != set(self.pairs.pair_splits()):
            raise ValueError(f"{self.name}: sharded splits {sorted(self.sharded)} do not match the dataset's "
                             f"splits {sorted(self.pairs.pair_splits())}")
        target = StoreTarget(staging, spec, self.builder_config.features_dtype, self.skip_bad,
                             f"{self.name}/{self.builder_config.name}")
        write_shards(target, self.sharded, runner, download_config.beam_options)
        counts = {}
        for split, shards in summaries(staging, self.sharded).items():
            for summary in shards:
                for what, n in summary["skipped"].items():
                    self.skips.add(what, n)
            truncated = sum(summary["truncated"] for summary in shards)
            if truncated:
                log.warning("%s split %r: %d images had more than %d boxes and kept the first %d", self.name, split,
                            truncated, spec.num_regions, spec.num_regions)
            counts[split] = split_entry([(summary["images"], summary["captions"]) for summary in shards])
        return counts

    def _skipped(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """The ``skipped`` metadata entry: the source's counts and this builder's (none: no entry, as for pairs)."""
        if "skipped" not in metadata and not self.skips.counts:
            return {}
        return {"skipped": {**metadata.get("skipped", {}), **self.skips.counts}}

    def _write_split(self, directory: str, split: str, source: Any, spec: Any) -> dict[str, int]:
        where = f"{self.name}/{self.builder_config.name} split {split!r}"
        with SplitWriter(directory, split, spec, self.builder_config.features_dtype) as writer:
            skip = functools.partial(skip_pair, split, self.skips) if self.skip_bad else None
            writer.add_all(source(), where, skip)
        if writer.truncated:
            log.warning("%s: %d images had more than %d boxes and kept the first %d", where, writer.truncated,
                        spec.num_regions, spec.num_regions)
        return {"images": writer.images, "captions": writer.captions}

    def __repr__(self) -> str:
        return f"ImagePairsBuilder({self.data_dir!r})"
