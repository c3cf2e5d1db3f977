"""SNLI-VE (visual entailment) as VOLTA's ``visual_entailment_dataset.py`` reads it: ``snli_ve_{split}.jsonl``.

File (VOLTA ``datasets/snli_ve/annotations/{train,dev,test}.jsonl``, the SNLI-VE release's
``snli_ve_{train,dev,test}.jsonl``), one premise-image / hypothesis pair per line::

    {"Flikr30kID": "2248275918.jpg", "sentence2": "A group of people sit.", "gold_label": "entailment",
     "pairID": "2248275918.jpg#1r1e", "sentence1": "...", "annotator_labels": ["entailment"], ...}

The image id is ``int(Flikr30kID.split(".")[0])`` (the Flickr30k feature key; the field name's spelling is the
release's). ``gold_label`` maps to VOLTA's ``LABEL_MAP`` (:data:`LABELS`: contradiction 0, neutral 1,
entailment 2); ``"-"`` (no annotator majority) keeps the pair with no label (``label`` None: VOLTA's empty
target). ``question_id`` is the record's index in the file, as in VOLTA.

Errors (``BadRecord``; ``FileNotFoundError`` for a missing file) name the file and the line (and ``pairID``):
a line that is not JSON, a missing or mistyped field, an image name without a numeric id, an unknown
``gold_label``, a repeated ``pairID``.
"""

from __future__ import annotations

import dataclasses
import os

from jaxvl.data.readers.tasks.files import claim_id, get_str, iter_jsonl
from jaxvl.data.records import BadRecord

__all__ = ["LABELS", "NO_LABEL", "SnliVeExample", "read_snli_ve_jsonl"]

LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}
NO_LABEL = "-"


@dataclasses.dataclass(frozen=True)
class SnliVeExample:
    """One image-hypothesis pair; ``label`` in :data:`LABELS` values or None for ``"-"``."""

    question_id: int
    image_id: int
    hypothesis: str
    label: int | None
    pair_id: str | None
    line: int


def read_snli_ve_jsonl(path: str | os.PathLike) -> list[SnliVeExample]:
    """An SNLI-VE ``*.jsonl`` file -> examples in file order (unlabelled ``"-"`` pairs kept)."""
    path = os.fspath(path)
    seen: dict[str, str] = {}
    out = []
    for line, rec in iter_jsonl(path):
        where = f"{path}: line {line}"
        pair_id = get_str(rec, "pairID", where) if "pairID" in rec else None
        if pair_id is not None:
            where = f"{where} (pairID {pair_id!r})"
            claim_id(seen, pair_id, "pairID", where)
        image = get_str(rec, "Flikr30kID", where)
        stem = os.path.basename(image).split(".")[0]
        if not stem.isdigit():
            raise BadRecord(f"{where}: 'Flikr30kID' {image!r} does not start with a numeric Flickr30k image id")
        gold = get_str(rec, "gold_label", where)
        if gold != NO_LABEL and gold not in LABELS:
            raise BadRecord(f"{where}: unknown gold_label {gold!r} (one of {', '.join(LABELS)} or '-')")
        out.append(SnliVeExample(len(out), int(stem), get_str(rec, "sentence2", where),
                                 None if gold == NO_LABEL else LABELS[gold], pair_id, line))
    return out
