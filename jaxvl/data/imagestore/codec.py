"""The record codec of the image store: named arrays as raw little-endian bytes with their dtype and shape.

One record is ``b"JVIS"``, a uint32 little-endian header length, a UTF-8 JSON header padded with spaces to a
multiple of 8 bytes, then the arrays' bytes one after the other, each padded to a multiple of 8::

    {"scalars": {"image_id": "...", "num_boxes": 30, ...},
     "arrays": [["features", "<f2", [30, 2048]], ["boxes", "<f4", [30, 4]], ...]}

Decoding hands back ``np.frombuffer`` views of the record (no copy, aligned to 8 bytes). Everything is checked:
the magic, the header, the dtypes (little-endian float16/32/64 and int8/16/32/64 only) and that the bytes add
up; a record that does not decode raises ``BadRecord`` naming ``where`` (the file and the record).
Compared with TFDS's ``tf.Example`` of float lists (the pair layout), encoding takes no per-float work at all.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvl.data.records import BadRecord

MAGIC = b"JVIS"
_PREFIX = struct.Struct("<4sI")
_ALIGN = 8
DTYPES = frozenset({"<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8"})
"""The array dtypes a record may hold (``np.dtype.str``: little-endian only)."""


def _padded(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def encode_record(scalars: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """``scalars`` (JSON values) and ``arrays`` (dtypes in ``DTYPES`` once little-endian) -> one record."""
    parts, specs = [], []
    for name, value in arrays.items():
        a = np.asarray(value)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        if a.dtype.str not in DTYPES:
            raise ValueError(f"array {name!r}: dtype {a.dtype} cannot be stored (one of {sorted(DTYPES)})")
        specs.append([name, a.dtype.str, list(a.shape)])
        parts.append(a.tobytes())
        parts.append(b"\0" * (_padded(a.nbytes) - a.nbytes))
    header = json.dumps({"scalars": dict(scalars), "arrays": specs}, separators=(",", ":")).encode("utf-8")
    header += b" " * (_padded(_PREFIX.size + len(header)) - _PREFIX.size - len(header))
    return b"".join([_PREFIX.pack(MAGIC, len(header)), header, *parts])


def decode_record(record: bytes, where: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One record -> (scalars, arrays as read-only views of ``record``); ``BadRecord`` naming ``where``."""
    def fail(problem: str) -> BadRecord:
        return BadRecord(f"{where}: {problem}")

    if len(record) < _PREFIX.size:
        raise fail(f"{len(record)} bytes, too short for an image-store record")
    magic, size = _PREFIX.unpack_from(record)
    if magic != MAGIC:
        raise fail(f"not an image-store record (starts with {bytes(record[:4])!r}, expected {MAGIC!r})")
    offset = _PREFIX.size + size
    if offset > len(record):
        raise fail(f"header of {size} bytes runs past the record's {len(record)} bytes")
    try:
        header = json.loads(bytes(record[_PREFIX.size:offset]))
        scalars, specs = header["scalars"], header["arrays"]
        if not isinstance(scalars, dict) or not isinstance(specs, list):
            raise TypeError("scalars must be an object and arrays a list")
    except (ValueError, KeyError, TypeError) as e:
        raise fail(f"unreadable header ({type(e).__name__}: {e})") from e
    arrays = {}
    for spec in specs:
        try:
            name, dtype, shape = spec
            count = int(np.prod(shape, dtype=np.int64))
            if not isinstance(name, str) or any(not isinstance(s, int) or s < 0 for s in shape):
                raise TypeError(f"bad array entry {spec!r}")
        except (ValueError, TypeError) as e:
            raise fail(f"unreadable header ({type(e).__name__}: {e})") from e
        if dtype not in DTYPES:
            raise fail(f"array {name!r} has dtype {dtype!r}; expected one of {sorted(DTYPES)}")
        nbytes = count * np.dtype(dtype).itemsize
        if offset + nbytes > len(record):
            raise fail(f"array {name!r} {dtype} {shape} needs {nbytes} bytes at {offset}; the record has "
                       f"{len(record)}")
        arrays[name] = np.frombuffer(record, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += _padded(nbytes)
    if offset != len(record):
        raise fail(f"{len(record) - offset} bytes left over after the arrays the header lists")
    return scalars, arrays
