"""Shared loading and field checks for the task-file readers: JSON, JSON lines and restricted pickles.

Every function here raises one clear error naming the file and, where there is one, the record:

* ``FileNotFoundError`` for a path that does not exist (or is a directory);
* :class:`~jaxvl.data.records.BadRecord` (a ``ValueError``) for an empty file, text that is not JSON
  (truncated or corrupt, with the line and column), a pickle that is truncated or names a global the
  restricted unpickler (:mod:`jaxvl.data.readers.safe_pickle`) refuses, and a record with a missing or
  mistyped field or a repeated id.

Pickles are only ever read through :func:`~jaxvl.data.readers.safe_pickle.safe_pickle_load`, never
``pickle.load``: VOLTA's answer vocabularies, answer targets, retrieval hard negatives and REFER's
``refs(unc).p`` come from the internet.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np

from jaxvl.data.readers.safe_pickle import UnsafeData, safe_pickle_load
from jaxvl.data.records import BadRecord

__all__ = ["claim_id", "get_field", "get_float", "get_int", "get_str", "iter_jsonl", "read_json", "read_pickle"]


def _check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise BadRecord(f"{path}: empty file")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """The parsed JSON document at ``path``; raises naming the file (and line/column of a parse error)."""
    path = _check_file(path)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise BadRecord(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg} "
                            "(truncated or corrupt file?)") from None
        except UnicodeDecodeError as e:
            raise BadRecord(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for each non-blank line of a JSON-lines file (1-based line numbers).

    Raises ``BadRecord`` naming the file and line for a line that is not JSON or not a JSON object, and for
    a file with no records at all.
    """
    path = _check_file(path)
    count = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadRecord(f"{path}: line {number}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadRecord(f"{path}: line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise BadRecord(f"{path}: line {number}: expected a JSON object; got {type(obj).__name__}")
            count += 1
            yield number, obj
    if count == 0:
        raise BadRecord(f"{path}: no records (only blank lines)")


def read_pickle(path: str | os.PathLike, encoding: str = "ASCII") -> Any:
    """A pickled data file through the restricted unpickler; ``encoding="utf-8"`` for Python 2 text pickles.

    Raises ``BadRecord`` naming the file for a truncated or corrupt pickle and for one that needs a global
    the restricted unpickler refuses (``os.system``, a class of some library).
    """
    path = _check_file(path)
    with open(path, "rb") as f:
        try:
            return safe_pickle_load(f, encoding=encoding)
        except UnsafeData as e:
            raise BadRecord(f"{path}: refused by the restricted unpickler: {e}") from None
        except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, IndexError, KeyError, TypeError,
                AttributeError, OverflowError, MemoryError, struct.error) as e:
            raise BadRecord(f"{path}: not a readable pickle (truncated or corrupt): "
                            f"{type(e).__name__}: {e}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def get_field(record: Any, key: str, where: str) -> Any:
    """``record[key]``; ``BadRecord`` naming ``where`` if the record is not a dict or lacks the key."""
    if not isinstance(record, dict):
        raise BadRecord(f"{where}: expected an object/dict; got {type(record).__name__}")
    if key not in record:
        raise BadRecord(f"{where}: no {key!r} field")
    return record[key]


def get_int(record: Any, key: str, where: str) -> int:
    """An integer field (a Python or numpy int, never a bool or a float)."""
    value = get_field(record, key, where)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise BadRecord(f"{where}: {key!r} must be an integer; got {type(value).__name__} {_short(value)}")
    return int(value)


def get_str(record: Any, key: str, where: str, allow_empty: bool = False) -> str:
    """A string field; empty (or whitespace-only) strings are refused unless ``allow_empty``."""
    value = get_field(record, key, where)
    if not isinstance(value, str):
        raise BadRecord(f"{where}: {key!r} must be a string; got {type(value).__name__} {_short(value)}")
    if not allow_empty and not value.strip():
        raise BadRecord(f"{where}: {key!r} is empty")
    return value


def get_float(record: Any, key: str, where: str) -> float:
    """A finite number field (int or float, Python or numpy; never a bool)."""
    value = get_field(record, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise BadRecord(f"{where}: {key!r} must be a number; got {type(value).__name__} {_short(value)}")
    if not math.isfinite(float(value)):
        raise BadRecord(f"{where}: {key!r} must be finite; got {value!r}")
    return float(value)


def claim_id(seen: dict[Hashable, str], key: Hashable, what: str, where: str) -> None:
    """Record ``key`` as seen at ``where``; ``BadRecord`` naming both places if it was seen before."""
    if key in seen:
        raise BadRecord(f"{where}: duplicate {what} {key!r} (first at {seen[key]})")
    seen[key] = where
