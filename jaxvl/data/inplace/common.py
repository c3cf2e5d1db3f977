"""What every in-place source shares: the dataset info the pipelines read, and the bad records met while reading.

``InPlaceInfo`` stands in for the ``tfds.core.DatasetInfo`` of a prepared dataset (the pipelines read only its
``full_name`` and ``metadata``); ``as_stored`` turns a builder's record into what the prepared split returns for
it. ``BadRecords`` decides what a record that fails to decode or check does: raise
(the ``BadRecord`` names the file and the key), or with ``skip_bad`` be logged, counted and replaced.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from jaxvl.data.records import BadRecord

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class InPlaceInfo:
    """The part of a prepared dataset's ``DatasetInfo`` the pipelines read, for a store read in place.

    ``full_name``: the source string (what messages name, e.g. ``tokenizer_for``'s); ``metadata``: what a
    prepared dataset's ``metadata.json`` holds (``regions``: the ``RegionSpec`` as a dict; ``source``,
    ``source_string``, ``files``, ``skip_bad``).
    """

    full_name: str
    metadata: Mapping[str, Any]


def as_stored(record: Mapping[str, Any]) -> dict[str, Any]:
    """A builder's record (``pair_record``, ``phrase_record``) as ``tfds`` returns it once stored: ``str`` values
    as UTF-8 ``bytes`` (``Text`` features), the rest unchanged."""
    return {k: v.encode("utf-8") if isinstance(v, str) else v for k, v in record.items()}


class BadRecords:
    """A random-access source's bad records: raised, or with ``skip_bad`` logged, counted and replaced.

    A source read by index cannot drop one: the pipeline's shuffle, batches, host shards and resume are all
    positions in ``range(len(source))``. So with ``skip_bad`` a bad record ``i`` is replaced by the next good one
    (``i + 1``, ``i + 2``, ..., wrapping around): every batch keeps its shape and the order still depends on the
    data alone, so a run stays deterministic and resumable. Each bad record is logged once per process (the
    ``BadRecord`` names the file and the key) and counted in ``skipped``: the distinct bad records this process
    has met (threads share the count; Grain worker processes keep their own).
    """

    def __init__(self, size: int, skip_bad: bool, source: str):
        self.size, self.skip_bad, self.source = size, skip_bad, source
        self._bad: set[int] = set()
        self._lock = threading.Lock()

    @property
    def skipped(self) -> int:
        """How many distinct bad records this process has met and replaced."""
        return len(self._bad)

    def read(self, index: int, read: Callable[[int], T]) -> T:
        """``read(index)``; a ``BadRecord`` is raised, or with ``skip_bad`` noted and the next index tried."""
        if not 0 <= index < self.size:
            raise IndexError(f"{self.source}: record index {index} out of range for {self.size} records")
        for step in range(self.size):
            i = (index + step) % self.size
            try:
                return read(i)
            except BadRecord as e:
                if not self.skip_bad:
                    raise
                self._note(i, e)
        raise BadRecord(f"{self.source}: all {self.size} records are bad (skip_bad replaced each by the next)")

    def _note(self, index: int, error: BadRecord) -> None:
        with self._lock:
            if index in self._bad:
                return
            self._bad.add(index)
            count = len(self._bad)
        log.warning("skipping bad record (%d so far in this process; replaced by the next good one): %s", count,
                    error)

    def __getstate__(self) -> dict[str, Any]:  # a lock does not pickle; each process counts its own
        return {"size": self.size, "skip_bad": self.skip_bad, "source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)
