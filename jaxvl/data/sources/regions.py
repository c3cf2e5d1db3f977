"""The region side of the file sources: region options, the spec read off the first records, and checks.

``RegionOptions`` parses ``num_regions``, ``feature_dim``, ``num_classes`` and ``probe``; a
``SpecProbe`` reads the ``RegionSpec`` off the first records; ``check_spec`` / ``fits_spec`` hold every
later record to it (``skip_or_raise`` counting what ``skip_bad`` skips); ``feature_format`` tells a
feature store's format (LMDB, TSV or a directory of npz files).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from jaxvl.data.records import BadRecord, RegionFeatures, check_region_features
from jaxvl.data.sources.base import ParsedSource, Skips, SourceError

if TYPE_CHECKING:  # the builders import tensorflow_datasets: only the factories load them
    from jaxvl.data.builders.common import RegionSpec

log = logging.getLogger(__name__)

DEFAULT_PROBE = 100
"""Records per split read up front to find R (the most boxes) when ``num_regions`` is not given."""
REGION_OPTIONS = ("name", "num_regions", "feature_dim", "num_classes", "probe")
"""The options every file source takes (``name`` included)."""
FEATURE_FORMATS = ("lmdb", "tsv", "npz")
"""The formats of a per-image feature store (``format=``)."""
_LMDB_MAGIC = (0xBEEFC0DE).to_bytes(4, "little")  # MDB_meta.mm_magic, after the 16-byte page header


@dataclasses.dataclass(frozen=True)
class RegionOptions:
    """The region options of a file source (see ``jaxvl.data.sources``); ``num_classes`` "auto" = from the data."""

    num_regions: int | None = None
    feature_dim: int | None = None
    num_classes: int | None | str = "auto"
    probe: int | None = DEFAULT_PROBE

    @classmethod
    def parse(cls, src: ParsedSource) -> RegionOptions:
        """The region options of ``src`` (``SourceError`` for a bad value)."""
        k = src.int_option("num_classes", ("none", "auto"))
        probe = src.int_option("probe", ("all",))
        return cls(num_regions=src.int_option("num_regions"), feature_dim=src.int_option("feature_dim"),
                   num_classes="auto" if k is None else (None if k == "none" else k),
                   probe=DEFAULT_PROBE if probe is None else (None if probe == "all" else probe))

    @property
    def reader_num_classes(self) -> int | None:
        """The ``num_classes`` (K + 1, background included) readers check, or None (no check)."""
        return self.num_classes + 1 if isinstance(self.num_classes, int) else None


class SpecProbe:
    """Reads the region spec off the first records: D and K from the first, R = the most boxes seen."""

    def __init__(self, options: RegionOptions):
        self.options = options
        self.first: RegionFeatures | None = None
        self.max_boxes = 0
        self.seen = 0

    def feed(self, records: Iterable[Any], regions: Callable[[Any], RegionFeatures] = lambda rec: rec) -> None:
        """Reads up to ``options.probe`` records of one split (all with ``probe=all``), then closes the stream.

        ``regions`` maps an item of ``records`` to its ``RegionFeatures`` (e.g. a ``CaptionPair``'s).
        """
        it = iter(records)
        try:
            for item in itertools.islice(it, self.options.probe):
                rec = regions(item)
                if self.first is None:
                    self.first = rec
                self.max_boxes = max(self.max_boxes, rec.num_boxes)
                self.seen += 1
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def spec(self, where: str) -> RegionSpec:
        """The ``RegionSpec``; ``SourceError`` when no record was seen."""
        from jaxvl.data.builders.common import RegionSpec

        if self.first is None:
            raise SourceError(f"{where}: no usable record to read the region sizes (R, D, K) from")
        opts, first = self.options, self.first
        k = opts.num_classes
        if k == "auto":
            k = None if first.cls_prob is None else first.cls_prob.shape[1] - 1
        try:
            return RegionSpec(num_regions=opts.num_regions or self.max_boxes,
                              feature_dim=opts.feature_dim or int(first.features.shape[1]), num_classes=k)
        except ValueError as e:
            raise SourceError(f"{where}: region sizes read off record {first.image_id!r}: {e}") from e


def check_spec(rec: RegionFeatures, spec: RegionSpec, source: str) -> RegionFeatures:
    """``BadRecord`` unless ``rec`` is sound and fits ``spec`` (its D, and with K classes a ``cls_prob`` of K+1)."""
    k1 = None if spec.num_classes is None else spec.num_classes + 1
    sizes = f"D={spec.feature_dim}, K={spec.num_classes}"
    try:
        check_region_features(rec, source, feature_dim=spec.feature_dim, num_classes=k1)
    except BadRecord as e:
        raise BadRecord(f"{e} (the dataset's region sizes, read off the first record: {sizes})") from e
    if k1 is not None and rec.cls_prob is None:
        raise BadRecord(f"{source}: record {rec.image_id!r} has no cls_prob, but the dataset stores {k1} detector "
                        "classes (read off the first record; num_classes=none stores features only)")
    return rec


def skip_or_raise(error: BadRecord, skip_bad: bool, skips: Skips, what: str) -> None:
    """Raises ``error``, or with ``skip_bad`` counts it in ``skips`` as ``what`` and logs it."""
    if not skip_bad:
        raise error
    skips.add(what)
    log.warning("skipping: %s", error)


def fits_spec(rec: RegionFeatures, spec: RegionSpec, source: str, skip_bad: bool, skips: Skips, what: str) -> bool:
    """Whether ``rec`` fits ``spec``; a record that does not raises, or with ``skip_bad`` is counted as ``what``."""
    try:
        check_spec(rec, spec, source)
    except BadRecord as e:
        skip_or_raise(e, skip_bad, skips, what)
        return False
    return True


def feature_format(path: str, fmt: str | None = None) -> str:
    """``lmdb``, ``tsv`` or ``npz`` for a feature path: ``fmt`` if given, else detected.

    A directory with ``data.mdb`` is an LMDB, one with ``*.npz`` files an npz directory; a file is an
    LMDB if it starts with an LMDB meta page, else a TSV. ``ValueError`` when nothing fits.
    """
    if fmt is not None:
        if fmt not in FEATURE_FORMATS:
            raise ValueError(f"format={fmt!r}; expected one of {', '.join(FEATURE_FORMATS)}")
        return fmt
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "data.mdb")):
            return "lmdb"
        if any(n.endswith(".npz") for n in os.listdir(path)):
            return "npz"
        raise ValueError(f"{path}: a directory with neither data.mdb (an LMDB) nor .npz feature files")
    with open(path, "rb") as f:
        head = f.read(20)
    return "lmdb" if head[16:20] == _LMDB_MAGIC else "tsv"
