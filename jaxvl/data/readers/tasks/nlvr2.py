"""NLVR2 statements as VOLTA's ``nlvr2_dataset.py`` reads them: ``{train,dev,test}.jsonl``, one pair per line.

File (VOLTA ``datasets/nlvr2/annotations/``; the official NLVR2 ``nlvr2/data/*.json`` files are JSON lines)::

    {"identifier": "dev-850-0-0", "sentence": "The left image contains twice the number of dogs ...",
     "label": "True", "left_url": "...", "right_url": "...", "writer": "103", ...}

The two images of ``identifier`` ``<prefix>-<n>`` are ``<prefix>-img0`` and ``<prefix>-img1`` (the feature keys);
the label is 1 for ``"True"`` and 0 for ``"False"`` (VOLTA: ``0 if str(label) == "False" else 1``; here any
other label raises instead of silently becoming 1; JSON booleans are accepted). ``question_id`` is the record's
index in the file, as in VOLTA.

Errors (``BadRecord``; ``FileNotFoundError`` for a missing file) name the file and the line (and identifier):
a line that is not JSON, a missing or mistyped field, a malformed identifier, a repeated identifier, an
unknown label.
"""

from __future__ import annotations

import dataclasses
import os

from jaxvl.data.readers.tasks.files import claim_id, get_field, get_str, iter_jsonl
from jaxvl.data.records import BadRecord

__all__ = ["LABELS", "Nlvr2Example", "read_nlvr2_jsonl"]

LABELS = {"False": 0, "True": 1}


@dataclasses.dataclass(frozen=True)
class Nlvr2Example:
    """One statement about an image pair; ``label`` 1 = true, 0 = false; ``line`` its 1-based file line."""

    question_id: int
    identifier: str
    image_id_0: str
    image_id_1: str
    sentence: str
    label: int
    line: int


def read_nlvr2_jsonl(path: str | os.PathLike) -> list[Nlvr2Example]:
    """An NLVR2 ``*.jsonl`` file -> examples in file order."""
    path = os.fspath(path)
    seen: dict[str, str] = {}
    out = []
    for line, rec in iter_jsonl(path):
        where = f"{path}: line {line}"
        identifier = get_str(rec, "identifier", where)
        where = f"{where} (identifier {identifier!r})"
        prefix, _, suffix = identifier.rpartition("-")
        if not prefix or not suffix:
            raise BadRecord(f"{where}: identifier must look like '<split>-<set>-<pair>-<n>'")
        claim_id(seen, identifier, "identifier", where)
        label = get_field(rec, "label", where)
        key = str(label) if isinstance(label, bool | str) else None
        if key not in LABELS:
            raise BadRecord(f"{where}: unknown label {label!r} (expected 'True' or 'False')")
        out.append(Nlvr2Example(len(out), identifier, f"{prefix}-img0", f"{prefix}-img1",
                                get_str(rec, "sentence", where), LABELS[key], line))
    return out
