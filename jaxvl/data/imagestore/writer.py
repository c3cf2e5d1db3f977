"""Writing one split of an image store: each image's regions once, each caption as a reference to them.

    with SplitWriter(directory, "train", RegionSpec(36, 2048, 1600), features_dtype="float16") as w:
        for pair in pairs:                 # CaptionPair, in any order
            w.add(pair, where="volta-cc train")
    w.images, w.captions                   # rows written

Image records (``<split>-images.array_record``, codec of ``jaxvl.data.imagestore.codec``): scalars
``image_id``, ``image_h``, ``image_w``, ``num_boxes`` (n <= R, after the pair layout's truncation to the first
R boxes) and arrays of the n real rows only: ``features`` [n, D] (float32, or float16 with
``features_dtype="float16"``), ``boxes`` [n, 4] float32 and with K classes ``cls_prob`` [n, K+1] float32,
``objects_id`` [n] int32, ``objects_conf`` [n] float32 (``encode_regions``' values: checked, ``objects_*``
derived from ``cls_prob`` when absent). Caption records (``<split>-captions.array_record``): scalars ``image``
(the image's row), ``image_id`` and ``caption``, in the order the pairs came.

A pair whose image id was written before refers to that row: when its regions are the same object as the last
pair's (a source yielding one image's captions together) nothing is encoded again; otherwise the image is
encoded and must match the stored record byte for byte (CRC-32), or ``BadRecord``. Features outside float16's
range (|x| > 65504) cannot be stored as float16: ``BadRecord`` naming the image.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from jaxvl.data.builders.common import CLASS_KEYS, RegionSpec, encode_regions
from jaxvl.data.imagestore.codec import encode_record
from jaxvl.data.imagestore.layout import FEATURES_DTYPES, WRITER_OPTIONS, captions_file, images_file
from jaxvl.data.records import BadRecord, CaptionPair, RegionFeatures

FLOAT16_MAX = float(np.finfo(np.float16).max)


def image_record(regions: RegionFeatures, spec: RegionSpec, features_dtype: str, where: str) -> bytes:
    """One image's record (module doc); ``BadRecord`` naming ``where`` and the image."""
    fields = encode_regions(regions, spec, where)
    n = int(fields["num_boxes"])
    features = fields["features"][:n]
    if features_dtype == "float16":
        peak = float(np.abs(features).max()) if n else 0.0
        if peak > FLOAT16_MAX:
            raise BadRecord(f"{where}: record {regions.image_id!r} has features up to {peak:g}, beyond float16's "
                            f"{FLOAT16_MAX:g} (store it with features_dtype=float32)")
        features = features.astype(np.float16)
    arrays: dict[str, np.ndarray] = {"features": features, "boxes": fields["boxes"][:n]}
    arrays.update({key: fields[key][:n] for key in CLASS_KEYS if key in fields})
    scalars = {"image_id": regions.image_id, "image_h": int(fields["image_h"]), "image_w": int(fields["image_w"]),
               "num_boxes": n}
    return encode_record(scalars, arrays)


def caption_record(image: int, image_id: str, caption: str) -> bytes:
    """One caption's record: its image's row and id, and the text."""
    return encode_record({"image": image, "image_id": image_id, "caption": caption}, {})


class SplitWriter:
    """Writes the two tables of one split, or of its shard ``shard = (index, total)``, into ``directory`` (module
    doc); a context manager. The files are written under temporary names and renamed when the ``with`` block
    ends without an error (removed when it raises), so a shard written again (a retried Beam bundle) replaces
    the files whole."""

    def __init__(self, directory: str, split: str, spec: RegionSpec, features_dtype: str = "float32",
                 shard: tuple[int, int] | None = None):
        from array_record.python.array_record_module import ArrayRecordWriter

        if features_dtype not in FEATURES_DTYPES:
            raise ValueError(f"features_dtype={features_dtype!r}; expected one of {', '.join(FEATURES_DTYPES)}")
        self.spec, self.features_dtype, self.split = spec, features_dtype, split
        index, total = shard if shard is not None else (None, None)
        self.images_path = os.path.join(directory, images_file(split, index, total))
        self.captions_path = os.path.join(directory, captions_file(split, index, total))
        self._partial = f".partial-{uuid.uuid4().hex[:12]}"
        self._images = ArrayRecordWriter(self.images_path + self._partial, WRITER_OPTIONS)
        self._captions = ArrayRecordWriter(self.captions_path + self._partial, WRITER_OPTIONS)
        self._rows: dict[str, tuple[int, int]] = {}  # image id -> (row, CRC-32 of its record)
        self._last: tuple[RegionFeatures, int] | None = None
        self.images = self.captions = self.truncated = 0

    def add(self, pair: CaptionPair, where: str) -> None:
        """Writes ``pair``'s caption, and its image unless already written; ``BadRecord`` naming ``where``."""
        regions = pair.regions
        if self._last is not None and self._last[0] is regions:
            row = self._last[1]
        else:
            row = self._image_row(regions, where)
            self._last = (regions, row)
        self._captions.write(caption_record(row, regions.image_id, pair.caption))
        self.captions += 1

    def add_all(self, pairs: Iterable[CaptionPair], where: str,
                skip: Callable[[BadRecord], None] | None = None) -> None:
        """``add`` of every pair; a pair the store cannot take raises ``BadRecord``, or with ``skip`` is passed to
        ``skip(error)`` and left out."""
        for pair in pairs:
            try:
                self.add(pair, where)
            except BadRecord as e:
                if skip is None:
                    raise
                skip(e)

    def _image_row(self, regions: RegionFeatures, where: str) -> int:
        record = image_record(regions, self.spec, self.features_dtype, where)
        crc = zlib.crc32(record)
        known = self._rows.get(regions.image_id)
        if known is not None:
            if known[1] != crc:
                raise BadRecord(f"{where}: image {regions.image_id!r} comes again with other regions than its "
                                f"first record (row {known[0]} of {self.images_path})")
            return known[0]
        row = self.images
        self._images.write(record)
        self._rows[regions.image_id] = (row, crc)
        self.images += 1
        self.truncated += regions.num_boxes > self.spec.num_regions
        return row

    def close(self, keep: bool = True) -> None:
        """Closes both tables: renamed to their final names (``keep``) or removed."""
        self._images.close()
        self._captions.close()
        for path in (self.images_path, self.captions_path):
            if keep:
                os.replace(path + self._partial, path)
            elif os.path.exists(path + self._partial):
                os.remove(path + self._partial)

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(keep=exc_type is None)
