"""The fixed-size region fields every jaxvl TFDS dataset stores, and their encode/decode.

One image's detector output (``RegionFeatures``) is stored at a fixed region count R so that every
record of a dataset has the same tensor shapes (TFDS ``Tensor`` features are fixed-shape, and the
input pipeline never has to guess sizes):

- ``features`` [R, D] float32, ``boxes`` [R, 4] float32 pixel x1y1x2y2;
- ``image_h``, ``image_w``, ``num_boxes`` int32 scalars (``num_boxes`` <= R real rows, the rest zero);
- with ``num_classes`` K set: ``cls_prob`` [R, K+1] float32 (background at 0), ``objects_id`` [R] int32
  (K-space, -1 on padding) and ``objects_conf`` [R] float32.

An image with more than R boxes keeps its first R (detectors emit boxes by confidence) and the
builders count and log such truncations. ``decode_regions`` turns a stored example (as
``tfds.data_source`` returns it: numpy arrays, Python ints, ``bytes`` for text) back into a
``RegionFeatures`` holding only the real rows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxvl.data.builders.beam import ShardedSplit, sharded_generators, skip_counts
from jaxvl.data.records import BadRecord, RegionFeatures, check_region_features

REGION_KEYS = ("features", "boxes", "image_h", "image_w", "num_boxes")
CLASS_KEYS = ("cls_prob", "objects_id", "objects_conf")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RegionSpec:
    """Stored sizes of a dataset's regions: R rows of D-dim features, K detector classes (+ background).

    ``num_classes`` None stores no class fields (for feature files without a class distribution,
    e.g. bottom-up-attention TSVs that keep only boxes and features).
    """

    num_regions: int = 36
    feature_dim: int = 2048
    num_classes: int | None = 1600

    def __post_init__(self):
        if self.num_regions < 1 or self.feature_dim < 1:
            raise ValueError(f"num_regions={self.num_regions} and feature_dim={self.feature_dim} must be >= 1")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes} must be >= 1 or None")

    def features(self) -> dict[str, tfds.features.FeatureConnector]:
        """The TFDS feature connectors of the region fields (to merge into a ``FeaturesDict``)."""
        r, d = self.num_regions, self.feature_dim
        out: dict[str, tfds.features.FeatureConnector] = {
            "features": tfds.features.Tensor(shape=(r, d), dtype=np.float32),
            "boxes": tfds.features.Tensor(shape=(r, 4), dtype=np.float32),
            "image_h": tfds.features.Scalar(dtype=np.int32),
            "image_w": tfds.features.Scalar(dtype=np.int32),
            "num_boxes": tfds.features.Scalar(dtype=np.int32),
        }
        if self.num_classes is not None:
            out["cls_prob"] = tfds.features.Tensor(shape=(r, self.num_classes + 1), dtype=np.float32)
            out["objects_id"] = tfds.features.Tensor(shape=(r,), dtype=np.int32)
            out["objects_conf"] = tfds.features.Tensor(shape=(r,), dtype=np.float32)
        return out

    def to_dict(self) -> dict[str, int | None]:
        return dataclasses.asdict(self)


def encode_regions(rec: RegionFeatures, spec: RegionSpec, source: str) -> dict[str, np.ndarray | int]:
    """``rec`` -> the fixed-size stored fields of ``spec`` (see the module doc); raises ``BadRecord``.

    The record is checked first (``check_region_features`` with the spec's D and K+1). A record with
    no ``cls_prob`` cannot go into a dataset that stores classes; missing ``objects_id`` /
    ``objects_conf`` are derived from ``cls_prob`` (argmax over the K foreground classes).
    """
    k1 = None if spec.num_classes is None else spec.num_classes + 1
    check_region_features(rec, source, feature_dim=spec.feature_dim, num_classes=k1)
    r = spec.num_regions
    n = min(rec.num_boxes, r)
    features = np.zeros((r, spec.feature_dim), np.float32)
    boxes = np.zeros((r, 4), np.float32)
    features[:n] = rec.features[:n]
    boxes[:n] = rec.boxes[:n]
    out: dict[str, np.ndarray | int] = dict(features=features, boxes=boxes, image_h=int(rec.image_h),
                                            image_w=int(rec.image_w), num_boxes=n)
    if k1 is None:
        return out
    if rec.cls_prob is None:
        raise BadRecord(f"{source}: record {rec.image_id!r} has no cls_prob, but the dataset stores "
                        f"{k1} detector classes (build it with num_classes=None to keep only features)")
    cls_prob = np.zeros((r, k1), np.float32)
    cls_prob[:n] = rec.cls_prob[:n]
    objects_id = np.full((r,), -1, np.int32)
    objects_conf = np.zeros((r,), np.float32)
    ids = rec.objects_id if rec.objects_id is not None else rec.cls_prob[:, 1:].argmax(1)
    conf = (rec.objects_conf if rec.objects_conf is not None
            else rec.cls_prob[np.arange(rec.num_boxes), np.asarray(ids) + 1])
    objects_id[:n] = np.asarray(ids)[:n]
    objects_conf[:n] = np.asarray(conf)[:n]
    out.update(cls_prob=cls_prob, objects_id=objects_id, objects_conf=objects_conf)
    return out


def as_str(value: Any) -> str:
    """A stored ``Text`` value (``bytes`` from ``tfds.data_source``, ``str`` elsewhere) as ``str``."""
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)


def decode_regions(example: Mapping[str, Any]) -> RegionFeatures:
    """A stored example -> ``RegionFeatures`` with its ``num_boxes`` real rows (arrays are views)."""
    n = int(example["num_boxes"])
    rec = RegionFeatures(image_id=as_str(example["image_id"]), image_h=int(example["image_h"]),
                         image_w=int(example["image_w"]), boxes=np.asarray(example["boxes"])[:n],
                         features=np.asarray(example["features"])[:n])
    if "cls_prob" in example:
        rec.cls_prob = np.asarray(example["cls_prob"])[:n]
        rec.objects_id = np.asarray(example["objects_id"])[:n]
        rec.objects_conf = np.asarray(example["objects_conf"])[:n]
    return rec


class ConfiguredBuilder:
    """Mixin for jaxvl's TFDS builders whose ``builder_config`` carries the data: ``config_class`` names the
    config type; ``typed_config()`` checks it; ``region_spec`` and ``dataset_metadata`` read it.
    Subclasses that generate data themselves override these instead of passing a config.

    ``split_generators`` is what a builder's ``_split_generators`` returns: each split's examples generated in
    this process, or, after ``shard(...)``, a Beam pipeline per split (``jaxvl.data.builders.beam``) whose
    skip counters land in the dataset's ``skipped`` metadata.
    """

    config_class: type = tfds.core.BuilderConfig
    sharded: Mapping[str, ShardedSplit] | None = None

    def shard(self, splits: Mapping[str, ShardedSplit]) -> None:
        """Generate every split as a Beam pipeline over ``splits`` (then prepare with a Beam runner)."""
        self.sharded = dict(splits)

    def split_generators(self, generators: Mapping[str, Callable[[], Iterator]]) -> dict[str, Any]:
        """Split -> examples: ``generators[split]()`` in this process, or the split's Beam transform once sharded."""
        if not generators:
            raise ValueError(f"{self.name}/{self.builder_config.name}: no splits to build")
        if self.sharded is None:
            return {split: generate() for split, generate in generators.items()}
        return sharded_generators(f"{self.name}/{self.builder_config.name}", self.sharded, generators)

    def _process_pipeline_result(self, pipeline_result: Any) -> None:
        """TFDS hook after a Beam build: the skip counters added to the ``skipped`` metadata (before it is saved)."""
        counts = skip_counts(pipeline_result)
        if counts:
            skipped = self.info.metadata.setdefault("skipped", {})
            for what, n in counts.items():
                skipped[what] = skipped.get(what, 0) + n

    def typed_config(self) -> Any:
        cfg = self.builder_config
        if not isinstance(cfg, self.config_class):
            raise ValueError(f"{type(self).__name__} needs config={self.config_class.__name__}(...); got {cfg!r}")
        return cfg

    def region_spec(self) -> RegionSpec:
        return self.typed_config().regions

    def dataset_metadata(self) -> dict[str, Any]:
        return dict(self.typed_config().metadata)

    # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size, ...)" in bold to stdout
    # for every builder, even one that downloads nothing (all of jaxvl's read local files or generate the data);
    # these two TFDS hooks log one plain line instead (``jaxvl prepare`` prints what it wrote itself).
    def _log_download_bytes(self) -> None:
        logger.info("preparing %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        logger.info("prepared %s in %s", self.name, self.data_dir)

