"""Bottom-up-attention TSV feature files -> ``RegionFeatures``, one image per line, read lazily.

The Faster R-CNN extractors of bottom-up-attention (Caffe, and its detectron2 ports) write one
tab-separated line per image, numeric arrays as base64 of the raw little-endian buffer, no header.
Three column layouts are documented and recognised by their field count:

- 13 fields, VOLTA's ``data/*/extract_*_image.py`` (``FIELDS_VOLTA``): ``img_id img_h img_w
  objects_id objects_conf attrs_id attrs_conf num_boxes boxes features cls_prob attrs classes``;
- 10 fields, LXMERT's ``*_obj36.tsv`` (``FIELDS_LXMERT``): the first ten of those;
- 6 fields, the original Caffe ``generate_tsv.py`` (``FIELDS_BUTD``): ``image_id image_w image_h
  num_boxes boxes features`` (note: width before height).

Arrays (N = ``num_boxes``): ``boxes`` float32 [N, 4] pixel x1y1x2y2; ``features`` float32 [N, D]
(D = 2048 for ResNet-101); ``cls_prob`` float32 [N, 1601] (VG classes, background at 0);
``objects_id`` / ``attrs_id`` int64 [N]; ``objects_conf`` / ``attrs_conf`` float32 [N]. ``attrs`` and
``classes`` (full attribute / class score matrices) are not part of ``RegionFeatures`` and are not
decoded. A file written by a Python 3 ``csv.DictWriter`` from ``bytes`` holds ``b'...'`` around each
base64 field; that wrapper is accepted.

Bad lines (wrong field count, malformed base64, arrays of the wrong size, NaN/Inf, boxes outside the
image or flipped) raise ``BadRecord`` naming the file, line and image id; ``skip_bad=True`` counts
and logs them instead (``TsvFeatureReader.skipped`` after iteration).

``line_ranges`` cuts a file into ranges of lines found by one pass over its bytes, and
``TsvFeatureReader.numbered(lines)`` reads one range by seeking to it, with the same line numbers and checks
as a whole pass: a parallel ``jaxvl prepare`` reads a file's ranges in separate workers.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from jaxvl.data.records import BadRecord, RecordErrors, RegionFeatures, check_region_features

FIELDS_VOLTA: tuple[str, ...] = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                                 "num_boxes", "boxes", "features", "cls_prob", "attrs", "classes")
FIELDS_LXMERT: tuple[str, ...] = FIELDS_VOLTA[:10]
FIELDS_BUTD: tuple[str, ...] = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
LAYOUTS: dict[int, tuple[str, ...]] = {len(f): f for f in (FIELDS_VOLTA, FIELDS_LXMERT, FIELDS_BUTD)}
_ALIASES = {"image_id": "img_id", "image_h": "img_h", "image_w": "img_w"}
_REQUIRED = ("img_id", "img_h", "img_w", "num_boxes", "boxes", "features")
# name -> (dtype, trailing shape; -1 = inferred from the byte count)
_ARRAYS: dict[str, tuple[type, tuple[int, ...]]] = {
    "boxes": (np.float32, (4,)), "features": (np.float32, (-1,)), "cls_prob": (np.float32, (-1,)),
    "objects_id": (np.int64, ()), "objects_conf": (np.float32, ()), "attrs_id": (np.int64, ()),
    "attrs_conf": (np.float32, ()),
}


def raise_csv_field_limit() -> None:
    """Lift ``csv``'s 128 KiB field limit: one base64 ``features`` field is ~400 KB (36 x 2048 float32)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # C long is 32-bit on some platforms
            limit //= 2


def decode_b64_array(text: str, dtype: type, shape: tuple[int, ...], where: str, field: str) -> np.ndarray:
    """Decode one base64 field into a read-only array of ``dtype`` and ``shape`` (one entry may be -1).

    Raises ``BadRecord`` (prefixed with ``where``) on malformed base64 or a byte count that does not fit.
    """
    if len(text) >= 3 and text[:2] in ("b'", 'b"') and text[-1] == text[1]:
        text = text[2:-1]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRecord(f"{where}: field {field!r} is not valid base64 ({e})") from None
    item = np.dtype(dtype).itemsize
    count, rest = divmod(len(raw), item)
    known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
    want = "x".join("D" if d == -1 else str(d) for d in shape)
    if -1 in shape:
        ok = not rest and (count == 0 if known == 0 else count > 0 and count % known == 0)
        shape = tuple((count // known if known else 0) if d == -1 else d for d in shape)
    else:
        ok = not rest and count == known
    if not ok:
        raise BadRecord(f"{where}: field {field!r} holds {len(raw)} bytes, which is not a [{want}] "
                        f"{np.dtype(dtype).name} array")
    # a writable, native-endian copy (the file is little-endian)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


def _to_int(text: str, where: str, field: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise BadRecord(f"{where}: field {field!r} is not an integer: {str(text)[:40]!r}") from None


def parse_row(row: dict[str, str], where: str, feature_dim: int | None = None,
              num_classes: int | None = None) -> RegionFeatures:
    """One TSV row (field name -> text; ``image_*`` aliases accepted) -> checked ``RegionFeatures``.

    ``where`` names the file and line for error messages; ``feature_dim`` (D) and ``num_classes``
    (K+1, 1601 for VG) are checked when given.
    """
    row = {_ALIASES.get(k, k): v for k, v in row.items()}
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        raise BadRecord(f"{where}: missing fields {missing}")
    image_id = row["img_id"].strip()
    if not image_id:
        raise BadRecord(f"{where}: empty img_id")
    source, where = where, f"{where} (img_id {image_id!r})"
    h, w, n = (_to_int(row[k], where, k) for k in ("img_h", "img_w", "num_boxes"))
    if n < 0:
        raise BadRecord(f"{where}: num_boxes {n} is negative")
    arrays: dict[str, np.ndarray | None] = {}
    for name, (dtype, tail) in _ARRAYS.items():
        text = row.get(name)
        if text is None or text == "":
            if name in _REQUIRED:
                raise BadRecord(f"{where}: field {name!r} is empty")
            arrays[name] = None
            continue
        arrays[name] = decode_b64_array(text, dtype, (n, *tail), where, name)
    feats = arrays["features"]
    if n == 0 and feature_dim is not None:
        feats = feats.reshape(0, feature_dim)
    rec = RegionFeatures(image_id=image_id, image_h=h, image_w=w, boxes=arrays["boxes"], features=feats,
                         cls_prob=arrays["cls_prob"], objects_id=arrays["objects_id"],
                         objects_conf=arrays["objects_conf"], attrs_id=arrays["attrs_id"],
                         attrs_conf=arrays["attrs_conf"])
    check_objects_id(rec, where, num_classes)
    return check_region_features(rec, source, feature_dim=feature_dim, num_classes=num_classes)


def check_objects_id(rec: RegionFeatures, where: str, num_classes: int | None) -> None:
    """``objects_id`` is K-space (background excluded): each id in ``[0, num_classes - 1)`` when known."""
    ids = rec.objects_id
    if ids is None or ids.size == 0:
        return
    hi = None if num_classes is None else num_classes - 1
    if ids.min() < 0 or (hi is not None and ids.max() >= hi):
        raise BadRecord(f"{where}: objects_id out of range [0, {hi if hi is not None else 'K'}): "
                        f"min {int(ids.min())}, max {int(ids.max())}")


class TsvFeatureReader:
    """Iterate a bottom-up-attention TSV lazily, one ``RegionFeatures`` per line.

    ``fieldnames``: the column names when the file follows none of the documented layouts; by default
    the layout is recognised from the first line's field count (13, 10 or 6) and every later line
    must have the same count (a shorter line is a truncated record). ``feature_dim`` (e.g. 2048) and
    ``num_classes`` (e.g. 1601) are checked when given. With ``skip_bad`` bad lines are logged and
    counted (``skipped``; the count is logged at the end of the iteration) instead of raising.
    """

    def __init__(self, path: str | os.PathLike, fieldnames: Sequence[str] | None = None,
                 feature_dim: int | None = None, num_classes: int | None = None, skip_bad: bool = False):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"TSV feature file not found: {self.path}")
        self.fieldnames = tuple(fieldnames) if fieldnames is not None else None
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.errors = RecordErrors(self.path, skip_bad=skip_bad)
        raise_csv_field_limit()

    @property
    def skipped(self) -> int:
        """Bad lines skipped so far (``skip_bad=True``)."""
        return self.errors.skipped

    def _lines(self, lines: LineRange | None = None) -> Iterator[tuple[int, list[str] | Exception]]:
        """(line number, fields or the csv error) of every non-empty line, or of the lines of ``lines``."""
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            before = 0
            if lines is not None:
                f.seek(lines.offset)  # a line start (after "\n"): a clean decoder state, so the byte offset seeks
                before = lines.first - 1
            reader = csv.reader(f, delimiter="\t")
            while lines is None or reader.line_num < lines.count:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:  # e.g. a NUL byte; the reader goes on with the next line
                    yield before + reader.line_num, e
                    continue
                if row:
                    yield before + reader.line_num, row

    def _parse(self, item: tuple[int, list[str] | Exception]) -> RegionFeatures | None:
        line, row = item
        where = f"{self.path}: line {line}"
        if isinstance(row, Exception):
            raise BadRecord(f"{where}: unreadable line ({row})")
        if line == 1 and row[0].strip() in ("img_id", "image_id"):
            return None  # a header line
        names = self.fieldnames
        if names is None:
            names = self.fieldnames = LAYOUTS.get(len(row))
            if names is None:
                raise BadRecord(f"{where}: {len(row)} fields (image id {row[0][:40]!r}); expected one of the "
                                f"documented layouts with {sorted(LAYOUTS)} fields")
        if len(row) != len(names):
            raise BadRecord(f"{where}: {len(row)} fields (image id {row[0][:40]!r}), expected {len(names)}: "
                            "a truncated or malformed record")
        return parse_row(dict(zip(names, row, strict=True)), where, self.feature_dim, self.num_classes)

    def __iter__(self) -> Iterator[RegionFeatures]:
        for _, rec in self.numbered():
            yield rec

    def numbered(self, lines: LineRange | None = None) -> Iterator[tuple[int, RegionFeatures]]:
        """(line number, record) of the whole file, or of the lines of ``lines`` (``line_ranges``); skips are
        counted afresh per pass."""
        self.errors = RecordErrors(self.path, skip_bad=self.errors.skip_bad)
        for line, rec in self.errors.filter(self._lines(lines), lambda item: (item[0], self._parse(item))):
            if rec is not None:
                yield line, rec
        self.errors.report()


@dataclasses.dataclass(frozen=True)
class LineRange:
    """``count`` lines of a file from line ``first`` (1-based), which starts at byte ``offset``."""

    first: int
    offset: int
    count: int


def line_ranges(path: str | os.PathLike, lines_per_range: int) -> list[LineRange]:
    """The lines of ``path`` cut into ranges of ``lines_per_range`` lines, found in one binary pass over the file
    (bottom-up-attention TSVs hold no quoted newlines, so a line of the file is a line of the csv reader)."""
    if lines_per_range < 1:
        raise ValueError(f"lines_per_range={lines_per_range} must be >= 1")
    ranges, first, offset, line, position = [], 1, 0, 0, 0
    with open(path, "rb") as f:
        for raw in f:
            line, position = line + 1, position + len(raw)
            if line - first + 1 == lines_per_range:
                ranges.append(LineRange(first, offset, lines_per_range))
                first, offset = line + 1, position
    if line >= first:
        ranges.append(LineRange(first, offset, line - first + 1))
    return ranges


def read_tsv(path: str | os.PathLike, **kwargs) -> Iterator[RegionFeatures]:
    """``iter(TsvFeatureReader(path, **kwargs))``: the records of one TSV file, lazily."""
    return iter(TsvFeatureReader(path, **kwargs))


def encode_b64_array(arr: np.ndarray, dtype: type) -> str:
    """base64 of ``arr`` as little-endian ``dtype`` (the writer's half of ``decode_b64_array``)."""
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def format_row(rec: RegionFeatures, fieldnames: Sequence[str] = FIELDS_VOLTA) -> str:
    """One TSV line (no newline) for ``rec`` in the given layout; absent optional arrays are empty fields.

    For tests and for writing small fixture files; ``attrs`` / ``classes`` are written empty.
    """
    values: dict[str, str] = {"img_id": rec.image_id, "img_h": str(rec.image_h), "img_w": str(rec.image_w),
                              "num_boxes": str(rec.num_boxes)}
    for name, (dtype, _) in _ARRAYS.items():
        arr = getattr(rec, name)
        values[name] = "" if arr is None else encode_b64_array(arr, dtype)
    return "\t".join(values.get(_ALIASES.get(k, k), "") for k in fieldnames)
