"""Referring expressions (RefCOCO, RefCOCO+, RefCOCOg): REFER's ``refs(unc).p`` + ``instances.json``.

Files (VOLTA ``datasets/refcoco+_unc/annotations/refcoco+/``; VOLTA's ``refer_expression_dataset.py`` reads them
through ``tools/refer/refer.py``'s ``REFER``, ``splitBy="unc"``, or ``"umd"`` for RefCOCOg)::

    refs(unc).p      a pickle (Python 2) of a list of refs:
        {"ref_id": 0, "ann_id": 1719310, "image_id": 581857, "category_id": 1, "split": "train",
         "sent_ids": [0, 1], "sentences": [{"sent_id": 0, "raw": "The lady ...", "sent": "the lady ...",
                                            "tokens": ["the", "lady", ...]}, ...], "file_name": "..."}
    instances.json   COCO-style: {"images": [...], "categories": [...],
                                  "annotations": [{"id": 1719310, "image_id": 581857, "bbox": [x, y, w, h],
                                                   "category_id": 1, ...}, ...]}

Each ref's box is its annotation's ``bbox`` (COCO ``[x, y, w, h]`` in pixels, REFER's ``getRefBox``); VOLTA turns
it into ``[x, y, x + w, y + h]`` (:attr:`ReferringExpression.box_xyxy`) and computes IoU targets against the
detector boxes. VOLTA yields one entry per sentence (``raw`` text with its ``sent_id``):
:func:`refer_sentences`. :func:`refs_in_split` selects a split as ``REFER.getRefIds(split=...)`` does
(``testA`` matches every split containing ``A``; ``test`` every split containing ``test``).

Errors (``BadRecord``; ``FileNotFoundError`` for a missing file) name the file and the ref (index, ref_id) or
annotation: a missing or mistyped field, a repeated ref / annotation / sentence id, an ``ann_id`` absent from
``instances.json``, an image id that disagrees with the annotation's, ``sent_ids`` that disagree with the
sentences, an unknown split, a bbox that is not 4 finite numbers with non-negative width and height.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
from typing import Any

from jaxvl.data.readers.tasks.files import claim_id, get_field, get_int, get_str, read_json, read_pickle
from jaxvl.data.records import BadRecord

__all__ = ["SPLITS", "ReferSentence", "ReferringExpression", "read_refer", "refer_sentences", "refs_in_split"]

SPLITS = ("train", "val", "test", "testA", "testB", "testC", "testAB", "testBC", "testAC")
"""The split names REFER's files use (RefCOCO/+: train/val/testA/testB; RefCOCOg umd: train/val/test)."""


@dataclasses.dataclass(frozen=True)
class ReferringExpression:
    """One ref: an object (``ann_id``) of ``image_id`` and its sentences; ``bbox`` is COCO ``(x, y, w, h)``."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    sent_ids: tuple[int, ...]
    sentences: tuple[str, ...]
    bbox: tuple[float, float, float, float]

    @property
    def box_xyxy(self) -> tuple[float, float, float, float]:
        """``(x1, y1, x2, y2)`` as VOLTA converts the ref box before its IoU targets."""
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)


@dataclasses.dataclass(frozen=True)
class ReferSentence:
    """VOLTA's entry: one sentence (``raw`` text) of a ref with the ref's box and image."""

    sent_id: int
    ref_id: int
    image_id: int
    caption: str
    bbox: tuple[float, float, float, float]


def _bbox(ann: Any, where: str) -> tuple[float, float, float, float]:
    bbox = get_field(ann, "bbox", where)
    if (not isinstance(bbox, list | tuple) or len(bbox) != 4
            or any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in bbox)):
        raise BadRecord(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h]; got {bbox!r:.80}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise BadRecord(f"{where}: 'bbox' {bbox} has a negative width or height")
    return tuple(float(v) for v in bbox)


def _annotations(instances_path: str) -> dict[int, tuple[int, tuple[float, float, float, float]]]:
    doc = read_json(instances_path)
    anns = get_field(doc, "annotations", instances_path)
    if not isinstance(anns, list) or not anns:
        raise BadRecord(f"{instances_path}: 'annotations' must be a non-empty list")
    seen: dict[int, str] = {}
    out = {}
    for i, ann in enumerate(anns):
        where = f"{instances_path}: annotations[{i}]"
        ann_id = get_int(ann, "id", where)
        where = f"{where} (id {ann_id})"
        claim_id(seen, ann_id, "annotation id", where)
        out[ann_id] = (get_int(ann, "image_id", where), _bbox(ann, where))
    return out


def _sentences(ref: Any, where: str, seen: dict[int, str]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    sents = get_field(ref, "sentences", where)
    if not isinstance(sents, list) or not sents:
        raise BadRecord(f"{where}: 'sentences' must be a non-empty list")
    ids, texts = [], []
    for j, sent in enumerate(sents):
        swhere = f"{where}: sentences[{j}]"
        sent_id = get_int(sent, "sent_id", swhere)
        claim_id(seen, sent_id, "sent_id", f"{swhere} (sent_id {sent_id})")
        ids.append(sent_id)
        texts.append(get_str(sent, "raw", swhere))
    sent_ids = get_field(ref, "sent_ids", where)
    if not isinstance(sent_ids, list | tuple) or list(sent_ids) != ids:
        raise BadRecord(f"{where}: 'sent_ids' {sent_ids!r:.80} disagree with the sentences' ids {ids}")
    return tuple(ids), tuple(texts)


def read_refer(refs_path: str | os.PathLike, instances_path: str | os.PathLike) -> list[ReferringExpression]:
    """REFER's ``refs(<splitBy>).p`` joined with ``instances.json`` -> refs in file order (every split)."""
    refs_path, instances_path = os.fspath(refs_path), os.fspath(instances_path)
    anns = _annotations(instances_path)
    refs = read_pickle(refs_path, encoding="utf-8")
    if not isinstance(refs, list) or not refs:
        raise BadRecord(f"{refs_path}: expected a non-empty list of refs; got {type(refs).__name__}")
    seen_refs: dict[int, str] = {}
    seen_sents: dict[int, str] = {}
    out = []
    for i, ref in enumerate(refs):
        where = f"{refs_path}: ref {i}"
        ref_id = get_int(ref, "ref_id", where)
        where = f"{where} (ref_id {ref_id})"
        claim_id(seen_refs, ref_id, "ref_id", where)
        split = get_str(ref, "split", where)
        if split not in SPLITS:
            raise BadRecord(f"{where}: unknown split {split!r} (one of {', '.join(SPLITS)})")
        ann_id, image_id = get_int(ref, "ann_id", where), get_int(ref, "image_id", where)
        if ann_id not in anns:
            raise BadRecord(f"{where}: ann_id {ann_id} is not an annotation of {instances_path}")
        ann_image, bbox = anns[ann_id]
        if ann_image != image_id:
            raise BadRecord(f"{where}: image_id {image_id} but annotation {ann_id} of {instances_path} is on "
                            f"image {ann_image}")
        sent_ids, sentences = _sentences(ref, where, seen_sents)
        out.append(ReferringExpression(ref_id, ann_id, image_id, get_int(ref, "category_id", where), split,
                                       sent_ids, sentences, bbox))
    return out


def refs_in_split(refs: Iterable[ReferringExpression], split: str) -> list[ReferringExpression]:
    """The refs ``REFER.getRefIds(split=split)`` returns, in order."""
    if split in ("testA", "testB", "testC"):
        return [r for r in refs if split[-1] in r.split]
    if split == "test":
        return [r for r in refs if "test" in r.split]
    if split in ("train", "val", "testAB", "testBC", "testAC"):
        return [r for r in refs if r.split == split]
    raise ValueError(f"unknown REFER split {split!r}; one of {', '.join(SPLITS)}")


def refer_sentences(refs: Iterable[ReferringExpression]) -> list[ReferSentence]:
    """One entry per sentence, as VOLTA's ``ReferExpressionDataset._load_annotations``."""
    return [ReferSentence(sid, r.ref_id, r.image_id, text, r.bbox)
            for r in refs for sid, text in zip(r.sent_ids, r.sentences, strict=True)]
