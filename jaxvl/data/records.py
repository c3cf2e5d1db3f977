"""The records every reader produces, and the checks every record passes.

Readers of different formats (VOLTA LMDBs, bottom-up-attention TSV, per-image npz, Flickr30k
Entities) and the synthetic world all yield these dataclasses, so the TFDS builders and the input
pipeline see one schema. Arrays are numpy; boxes are pixel ``[x1, y1, x2, y2]`` in the image.

Bad input: ``check_region_features`` / ``check_ablation_example`` raise ``BadRecord`` naming the
source (file) and the record; ``RecordErrors`` turns that into counted, logged skips when a reader
runs with ``skip_bad=True``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")


class BadRecord(ValueError):
    """A record that cannot be used; the message names the file and the record."""


@dataclasses.dataclass
class RegionFeatures:
    """Detector output for one image.

    ``boxes`` [R, 4] float32 pixel x1y1x2y2; ``features`` [R, D] float32; ``cls_prob`` [R, K+1] float32
    detector class distribution with background at index 0 (VG: K+1 = 1601) or None;
    ``objects_id`` [R] int64 argmax over ``cls_prob[:, 1:]`` (K-space, VOLTA's convention; -1 where a
    source's argmax was the background class, confidence 0) and ``objects_conf`` [R] float32 its
    probability; attributes optional (CC's 401-way ``attr_scores`` are not kept).
    """

    image_id: str
    image_h: int
    image_w: int
    boxes: np.ndarray
    features: np.ndarray
    cls_prob: np.ndarray | None = None
    objects_id: np.ndarray | None = None
    objects_conf: np.ndarray | None = None
    attrs_id: np.ndarray | None = None
    attrs_conf: np.ndarray | None = None

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


@dataclasses.dataclass
class CaptionPair:
    """A pretraining pair: one image's regions and one caption."""

    regions: RegionFeatures
    caption: str


@dataclasses.dataclass
class AblationExample:
    """One (sentence, annotated phrase) of Flickr30k Entities (reference section 5.1).

    ``first_word_index`` is the phrase's first word in ``sentence.split(" ")``; ``ref_boxes`` [N, 4]
    float32 holds every gold box of the phrase's entity, 0-based pixel x1y1x2y2.
    """

    image_id: str
    sentence_index: int
    sentence: str
    phrase: str
    first_word_index: int
    entity_id: str
    phrase_type: str
    ref_boxes: np.ndarray


def check_region_features(rec: RegionFeatures, source: str, feature_dim: int | None = None,
                          num_classes: int | None = None) -> RegionFeatures:
    """Raises ``BadRecord`` unless shapes, dtypes, finiteness and boxes are sound; returns ``rec``.

    Boxes must lie inside the image (a tolerance of one pixel for the +1 convention) with x2 >= x1 and
    y2 >= y1. ``feature_dim`` / ``num_classes`` (K+1) are checked when given.
    """
    where = f"{source}: record {rec.image_id!r}"

    def fail(msg: str):
        raise BadRecord(f"{where}: {msg}")

    if rec.image_h <= 0 or rec.image_w <= 0:
        fail(f"image size {rec.image_w}x{rec.image_h} is not positive")
    boxes, feats = rec.boxes, rec.features
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        fail(f"boxes must be [num_boxes, 4]; got shape {boxes.shape}")
    if feats.ndim != 2 or feats.shape[0] != boxes.shape[0]:
        fail(f"features must be [num_boxes={boxes.shape[0]}, dim]; got shape {feats.shape}")
    if feature_dim is not None and feats.shape[1] != feature_dim:
        fail(f"features have dim {feats.shape[1]}, expected {feature_dim}")
    if not np.issubdtype(feats.dtype, np.floating) or not np.issubdtype(boxes.dtype, np.floating):
        fail(f"features and boxes must be floating point; got {feats.dtype} and {boxes.dtype}")
    if not np.isfinite(feats).all():
        fail(f"features hold NaN or Inf (region {int(np.argwhere(~np.isfinite(feats))[0, 0])})")
    if not np.isfinite(boxes).all():
        fail("boxes hold NaN or Inf")
    flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if flipped.any():
        i = int(np.argmax(flipped))
        fail(f"box {i} has x2 < x1 or y2 < y1: {boxes[i].tolist()}")
    outside = (boxes[:, :2] < -1).any(1) | (boxes[:, 2] > rec.image_w + 1) | (boxes[:, 3] > rec.image_h + 1)
    if outside.any():
        i = int(np.argmax(outside))
        fail(f"box {i} {boxes[i].tolist()} lies outside the {rec.image_w}x{rec.image_h} image")
    if rec.cls_prob is not None:
        if rec.cls_prob.shape[0] != boxes.shape[0] or rec.cls_prob.ndim != 2:
            fail(f"cls_prob must be [num_boxes={boxes.shape[0]}, classes]; got shape {rec.cls_prob.shape}")
        if num_classes is not None and rec.cls_prob.shape[1] != num_classes:
            fail(f"cls_prob has {rec.cls_prob.shape[1]} classes, expected {num_classes}")
        if not np.isfinite(rec.cls_prob).all() or (rec.cls_prob < 0).any():
            fail("cls_prob holds NaN, Inf or negative values")
    for name in ("objects_id", "objects_conf", "attrs_id", "attrs_conf"):
        arr = getattr(rec, name)
        if arr is not None and arr.shape[:1] != (boxes.shape[0],):
            fail(f"{name} must have num_boxes={boxes.shape[0]} entries; got shape {arr.shape}")
    return rec


def check_ablation_example(ex: AblationExample, source: str) -> AblationExample:
    """Raises ``BadRecord`` unless the phrase occurs in its sentence at ``first_word_index`` and has boxes."""
    where = f"{source}: sentence {ex.sentence_index}, phrase {ex.phrase!r}"
    words, phrase_words = ex.sentence.split(" "), ex.phrase.split(" ")
    i = ex.first_word_index
    if not 0 <= i < len(words) or [w.lower() for w in words[i:i + len(phrase_words)]] != [
            w.lower() for w in phrase_words]:
        raise BadRecord(f"{where}: the phrase does not occur in the sentence at word {i}: {ex.sentence!r}")
    if ex.ref_boxes.ndim != 2 or ex.ref_boxes.shape[1] != 4 or ex.ref_boxes.shape[0] == 0:
        raise BadRecord(f"{where}: ref_boxes must be [N >= 1, 4]; got shape {ex.ref_boxes.shape}")
    if ((ex.ref_boxes[:, 2] < ex.ref_boxes[:, 0]) | (ex.ref_boxes[:, 3] < ex.ref_boxes[:, 1])).any():
        raise BadRecord(f"{where}: a gold box has x2 < x1 or y2 < y1")
    return ex


class RecordErrors:
    """Raise on the first bad record, or with ``skip_bad`` count and log each one and go on.

    Usage in a reader: ``for rec in errors.filter(raw_records, parse)``; after the loop,
    ``errors.report()`` logs (and returns) how many records were skipped.
    """

    def __init__(self, source: str, skip_bad: bool = False):
        self.source, self.skip_bad, self.skipped = source, skip_bad, 0

    def filter(self, items: Iterable, parse: Callable[..., T]) -> Iterator[T]:
        for item in items:
            try:
                yield parse(item)
            except BadRecord as e:
                if not self.skip_bad:
                    raise
                self.skipped += 1
                log.warning("skipping bad record: %s", e)

    def report(self) -> int:
        if self.skipped:
            log.warning("%s: skipped %d bad records", self.source, self.skipped)
        return self.skipped
