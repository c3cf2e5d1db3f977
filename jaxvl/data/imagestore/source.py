"""Reading an image store: a Grain random-access source of (image, caption) pairs joined on read.

    source, info = open_image_store("data/jaxvl_synthetic_pretrain_images/default/1.0.0", "train")
    len(source)        # the split's captions
    source[i]          # {"image_id": b"...", "caption": b"...", "features": [R, D] float32, ...}

``source[i]`` reads caption record ``i``, then the image record it names, and lays them out exactly as a
prepared ``PretrainPairs`` split stores a pair (``jaxvl.data.builders.pretrain``): ``image_id`` and ``caption``
as UTF-8 ``bytes``; ``image_h``, ``image_w``, ``num_boxes`` as ``int``; ``features`` [R, D] float32 (float16
features are cast back), ``boxes`` [R, 4] float32 and with K classes ``cls_prob`` [R, K+1] float32,
``objects_id`` [R] int32, ``objects_conf`` [R] float32, zero past ``num_boxes`` (``objects_id`` -1). So
``PretrainTransform`` and everything after it are unchanged. The order is the captions table's (the source's
order; a TFDS split is shuffled once more when written), and the pipeline shuffles either way.

``directory`` may be a local or shared-filesystem path or an object-store URL (``gs://bucket/dir``): paths are
joined as strings, never made absolute, so a URL reaches ArrayRecord unchanged (``jaxvl.data.imagestore.layout``
says which library reads what).

Both tables are read through ``grain.sources.ArrayRecordDataSource``: readers open lazily in each process that
reads (Grain worker processes open their own; a pickled source carries only paths), threads share them. The
source is a plain sequence, so the global shuffle, per-host shards and ``get_state`` / ``set_state`` work as on
a TFDS split: deterministic and resumable.

Bad input: opening refuses an unreadable manifest, a missing split, a missing or truncated file and a table
whose record count disagrees with the manifest (``ValueError`` naming the file), and decodes the first pair,
all before anything compiles. Every record is checked when read (ArrayRecord's chunk hashes, the codec, the
fields against the manifest's region sizes, the caption's image row and id): a bad one raises ``BadRecord``
naming the file, the record and the image id, or with ``skip_bad`` is logged, counted (``source.skipped``)
and replaced by the next good pair (``jaxvl.data.inplace.common.BadRecords``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvl.data.builders.common import RegionSpec
from jaxvl.data.imagestore.codec import decode_record
from jaxvl.data.imagestore.layout import ImageStoreInfo, captions_file, is_file, read_manifest, shard_files
from jaxvl.data.inplace.common import BadRecords
from jaxvl.data.records import BadRecord


def _open_tables(paths: list[str], expected: list[int]) -> Any:
    """A Grain ``ArrayRecordDataSource`` over one table's files in order (the split's, or its shards');
    ``ValueError`` naming a file when one is missing or unreadable, or the records disagree with the manifest."""
    import grain

    for path in paths:
        if not is_file(path):
            raise ValueError(f"{path}: no such file (the image store is incomplete)")
    try:
        table = grain.sources.ArrayRecordDataSource(paths)
    except Exception as e:  # riegeli raises RuntimeError / ValueError kinds for a truncated or foreign file
        raise ValueError(f"{_named(paths)}: not a readable ArrayRecord file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if len(table) != sum(expected):
        if len(paths) > 1:  # find the file that disagrees (opening each reads only its footer)
            for path, n in zip(paths, expected, strict=True):
                held = len(grain.sources.ArrayRecordDataSource([path]))
                if held != n:
                    raise ValueError(f"{path}: {held} records, but the manifest says {n}")
        raise ValueError(f"{_named(paths)}: {len(table)} records, but the manifest says {sum(expected)}")
    return table


def _named(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} (or another of its {len(paths)} shards)"


def _read(table: Any, index: int, where: str) -> bytes:
    try:
        return table[index]
    except Exception as e:  # a corrupted chunk: riegeli's RuntimeError names the hash mismatch
        raise BadRecord(f"{where}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


class ImageStorePairs:
    """One split of an image store as a random-access source of stored ``PretrainPairs`` records (module doc)."""

    def __init__(self, directory: str, split: str, info: ImageStoreInfo, skip_bad: bool = False):
        self.spec = RegionSpec(**info.manifest["regions"])
        self.features_dtype = np.dtype(info.features_dtype)
        self.files = shard_files(directory, split, info.splits[split])
        self.images = _open_tables([f.images for f in self.files], [f.num_images for f in self.files])
        self.captions = _open_tables([f.captions for f in self.files], [f.num_captions for f in self.files])
        # the first caption / image of every shard in the split's numbering
        self._caption_starts = np.cumsum([0] + [f.num_captions for f in self.files])
        self._image_starts = np.cumsum([0] + [f.num_images for f in self.files])
        self.captions_path, self.images_path = self.files[0].captions, self.files[0].images
        shards = f" ({len(self.files)} shards)" if info.splits[split].shards else ""
        self.bad = BadRecords(len(self.captions), skip_bad, os.path.join(directory, captions_file(split)) + shards)
        r, k = self.spec.num_regions, self.spec.num_classes
        self._pads: dict[str, tuple[tuple[int, ...], np.dtype, float | int]] = {
            "features": ((self.spec.feature_dim,), self.features_dtype, 0.0), "boxes": ((4,), np.dtype("<f4"), 0.0)}
        if k is not None:
            self._pads.update(cls_prob=((k + 1,), np.dtype("<f4"), 0.0), objects_id=((), np.dtype("<i4"), -1),
                              objects_conf=((), np.dtype("<f4"), 0.0))
        self._rows = r

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.bad.read(int(index), self._pair)

    @property
    def skipped(self) -> int:
        """Bad pairs met and replaced in this process (``skip_bad``)."""
        return self.bad.skipped

    def _pair(self, index: int) -> dict[str, Any]:
        shard = int(np.searchsorted(self._caption_starts, index, side="right")) - 1
        files, local = self.files[shard], index - int(self._caption_starts[shard])
        where = f"{files.captions} [record {local}]"
        scalars, _ = decode_record(_read(self.captions, index, where), where)
        row, image_id, caption = scalars.get("image"), scalars.get("image_id"), scalars.get("caption")
        if not isinstance(row, int) or not isinstance(image_id, str) or not isinstance(caption, str):
            raise BadRecord(f"{where}: a caption record needs an int image row, a str image_id and a str caption; "
                            f"got {sorted(scalars)}")
        if not 0 <= row < files.num_images:
            raise BadRecord(f"{where}: the caption of image {image_id!r} refers to image row {row}, but "
                            f"{files.images} holds {files.num_images} images")
        image_where = f"{files.images} [record {row}, image {image_id!r}]"
        stored = _read(self.images, int(self._image_starts[shard]) + row, image_where)
        regions, arrays = decode_record(stored, image_where)
        if regions.get("image_id") != image_id:
            raise BadRecord(f"{where}: the caption of image {image_id!r} refers to image row {row}, which holds "
                            f"image {regions.get('image_id')!r}")
        out = self._regions(regions, arrays, image_where)
        out["image_id"], out["caption"] = image_id.encode("utf-8"), caption.encode("utf-8")
        return out

    def _regions(self, scalars: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str) -> dict[str, Any]:
        """The stored fields padded to R rows, float16 features cast back to float32; ``BadRecord`` naming ``where``."""
        sizes = {key: scalars.get(key) for key in ("image_h", "image_w", "num_boxes")}
        if not all(isinstance(v, int) for v in sizes.values()):
            raise BadRecord(f"{where}: image_h, image_w and num_boxes must be ints; got {sizes}")
        n = sizes["num_boxes"]
        if not 0 <= n <= self._rows:
            raise BadRecord(f"{where}: num_boxes={n} outside [0, R={self._rows}]")
        if set(arrays) != set(self._pads):
            raise BadRecord(f"{where}: arrays {sorted(arrays)}; the store holds {sorted(self._pads)}")
        out: dict[str, Any] = dict(sizes)
        for key, (tail, dtype, fill) in self._pads.items():
            a = arrays[key]
            if a.shape != (n, *tail) or a.dtype != dtype:
                raise BadRecord(f"{where}: {key} is {a.dtype.str} {list(a.shape)}; expected {dtype.str} "
                                f"{[n, *tail]}")
            stored = np.full((self._rows, *tail), fill, np.int32 if dtype.kind == "i" else np.float32)
            stored[:n] = a
            out[key] = stored
        return out

    def __repr__(self) -> str:
        shards = f" in {len(self.files)} shards" if len(self.files) > 1 else ""
        return (f"ImageStorePairs({self.captions_path!r}, {len(self)} captions of {len(self.images)} images{shards}, "
                f"{self.spec}, features {self.features_dtype})")


def open_image_store(directory: str | os.PathLike, split: str,
                     skip_bad: bool = False) -> tuple[ImageStorePairs, ImageStoreInfo]:
    """Split ``split`` of the image store in ``directory`` and its info (module doc); ``ValueError`` for a split
    it does not have or unusable files, ``BadRecord`` when the first pair is bad (without ``skip_bad``)."""
    directory = os.fspath(directory)
    info = read_manifest(directory)
    if split not in info.splits:
        raise ValueError(f"{directory}: no split {split!r}; it has {sorted(info.splits)}")
    source = ImageStorePairs(directory, split, info, skip_bad)
    if len(source):
        source[0]  # decodes the first pair now, before anything compiles
    return source, info
