"""VOLTA's Conceptual Captions LMDBs read in place: one split as the records of a prepared ``PretrainPairs`` split.

    source, info = open_volta_cc(parse_source("volta-cc:data/conceptual_captions"), "train")
    len(source)        # the LMDB's pairs (its __keys__ list)
    source[i]          # {"image_id": b"...", "caption": b"...", "features": [R, D] float32, ...}

``source[i]`` is record ``i`` of the LMDB's ``__keys__`` list, decoded by the reader of ``jaxvl prepare``
(``ConceptualCaptionsLMDB``: restricted msgpack / pickle decoding, every field checked), held to the region sizes
read off the first records of every split (``cc_region_spec``, as ``jaxvl prepare`` reads them) and laid out by
the builder's own ``pair_record``: the dict the prepared split stores for the same pair (fields in
``jaxvl.data.builders.pretrain``; text as UTF-8 ``bytes``, sizes as ``int``, as ``tfds`` returns them). The
order is the LMDB's (a prepared split is in TFDS's shuffled order); the pipeline shuffles either way.
"""

from __future__ import annotations

from typing import Any

from jaxvl.data.builders.common import RegionSpec
from jaxvl.data.builders.pretrain import pair_record
from jaxvl.data.inplace.common import BadRecords, InPlaceInfo, as_stored
from jaxvl.data.readers.volta_lmdb import ConceptualCaptionsLMDB
from jaxvl.data.sources.base import ParsedSource, wants_skip_bad
from jaxvl.data.sources.pretrain import cc_lmdb_paths, cc_reader, cc_region_spec
from jaxvl.data.sources.regions import check_spec


class VoltaCCPairs:
    """One Conceptual Captions LMDB as a Grain random-access source of ``PretrainPairs`` records.

    ``reader``'s environment opens lazily in each process that reads (read-only, ``lock=False``) and is left out
    when the source is pickled to a Grain worker; its key list was read once, when it opened. ``skipped``: the
    bad records this process replaced (``BadRecords``; only with ``skip_bad``).
    """

    def __init__(self, reader: ConceptualCaptionsLMDB, spec: RegionSpec, skip_bad: bool = False):
        self.reader, self.spec = reader, spec
        self.bad = BadRecords(len(reader), skip_bad, reader.path)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.bad.read(int(index), self._record)

    @property
    def skipped(self) -> int:
        """Bad records met and replaced in this process (``skip_bad``)."""
        return self.bad.skipped

    def _record(self, index: int) -> dict[str, Any]:
        """Record ``index`` as the prepared split stores it; ``BadRecord`` naming the file and the key."""
        pair = self.reader[index]
        where = f"{self.reader.path} [key {self.reader.key(index)!r}]"
        check_spec(pair.regions, self.spec, where)
        return as_stored(pair_record(pair, self.spec, where))

    def __repr__(self) -> str:
        return f"VoltaCCPairs({self.reader.path!r}, {len(self)} records, {self.spec})"


def open_volta_cc(src: ParsedSource, split: str, skip_bad: bool = False) -> tuple[VoltaCCPairs, InPlaceInfo]:
    """Split ``split`` (``train`` / ``val``) of a ``volta-cc`` source read in place, and its info.

    Paths, region options, ``probe=`` and ``skip_bad=1`` are the source's (``jaxvl.data.sources``). Raises
    ``ValueError`` for a split the source does not have (the message lists those it has), ``SourceError`` for
    unusable files, ``BadRecord`` for a bad record among the probed ones (without ``skip_bad``).
    """
    skip_bad = wants_skip_bad(src, skip_bad)
    paths = cc_lmdb_paths(src)
    if split not in paths:
        raise ValueError(f"{src.text}: no split {split!r}; it has {sorted(paths)}")
    spec = cc_region_spec(src, paths, skip_bad)
    source = VoltaCCPairs(cc_reader(src, paths[split], skip_bad), spec, skip_bad)
    metadata = {"regions": spec.to_dict(), "source": src.name, "source_string": src.text, "files": paths,
                "skip_bad": skip_bad, "in_place": True}
    return source, InPlaceInfo(full_name=src.text, metadata=metadata)
