"""Image-text retrieval annotations (Flickr30k, COCO) and hard negatives, as VOLTA's ``retrieval_dataset.py``.

Files (VOLTA ``datasets/flickr30k/annotations/``, ``datasets/mscoco/annotations/``)::

    {train,valid,test}_ann.jsonl    one image per line
        Flickr30k: {"img_path": "1000092795.jpg", "sentences": ["Two young guys ...", ... x5], ...}
        COCO:      {"id": 391895, "sentences": ["A man with a red helmet ...", ...], ...}
    hard_negative.pkl               (dataroot; training only)
        {"train_image_list": [image ids, N], "train_hard_pool": int array [N, K]}

The image id is ``int(img_path.split(".")[0])`` for Flickr30k and ``id`` for COCO (``id_key``). Each image's
captions keep their order; :func:`caption_entries` lists ``(caption, image_id)`` in VOLTA's evaluation order
(images in file order, captions in order). VOLTA overwrites a repeated image silently; here it raises.

``train_hard_pool[i]`` lists indices into ``train_image_list`` of images whose captions are hard negatives for
image ``train_image_list[i]``; VOLTA samples a column in ``[1, K)`` (column 0 is skipped), so ``K >= 2``.
:func:`read_hard_negatives` checks the shape, the index range and unique image ids and, given the training
images, that each training image has a pool row and each pooled image has captions (VOLTA's two look-ups).

Errors (``BadRecord``; ``FileNotFoundError`` for a missing file) name the file and the line or image id.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from jaxvl.data.readers.tasks.files import claim_id, get_field, get_int, get_str, iter_jsonl, read_pickle
from jaxvl.data.records import BadRecord

__all__ = ["ID_KEYS", "HardNegatives", "RetrievalImage", "caption_entries", "read_hard_negatives",
           "read_retrieval_jsonl"]

ID_KEYS = ("img_path", "id")
"""``img_path`` (Flickr30k: the file stem as an int) or ``id`` (COCO: the int id)."""


@dataclasses.dataclass(frozen=True)
class RetrievalImage:
    """One image of a retrieval file with its captions; ``line`` is its 1-based line in the file."""

    image_id: int
    captions: tuple[str, ...]
    line: int


@dataclasses.dataclass(frozen=True)
class HardNegatives:
    """``image_ids[i]`` and ``pool[i]`` ([K] int64 indices into ``image_ids``) of VOLTA's ``hard_negative.pkl``."""

    image_ids: tuple[int | str, ...]
    pool: np.ndarray

    def negatives_of(self, image_id: int | str) -> list[int | str]:
        """The hard-negative image ids VOLTA samples from for ``image_id`` (pool columns 1..K-1)."""
        row = self.image_ids.index(image_id)
        return [self.image_ids[j] for j in self.pool[row, 1:]]


def _flickr_id(rec: Any, where: str) -> int:
    img_path = get_str(rec, "img_path", where)
    stem = os.path.basename(img_path).split(".")[0]
    if not stem.isdigit():
        raise BadRecord(f"{where}: 'img_path' {img_path!r} does not start with a numeric Flickr30k image id")
    return int(stem)


def read_retrieval_jsonl(path: str | os.PathLike, id_key: str = "img_path") -> list[RetrievalImage]:
    """A ``*_ann.jsonl`` retrieval file -> images in file order; ``id_key`` from :data:`ID_KEYS`."""
    if id_key not in ID_KEYS:
        raise ValueError(f"id_key must be one of {ID_KEYS}; got {id_key!r}")
    path = os.fspath(path)
    seen: dict[int, str] = {}
    out = []
    for line, rec in iter_jsonl(path):
        where = f"{path}: line {line}"
        image_id = _flickr_id(rec, where) if id_key == "img_path" else get_int(rec, "id", where)
        where = f"{where} (image {image_id})"
        claim_id(seen, image_id, "image", where)
        sentences = get_field(rec, "sentences", where)
        if not isinstance(sentences, list) or not sentences:
            raise BadRecord(f"{where}: 'sentences' must be a non-empty list of captions")
        captions = []
        for j, s in enumerate(sentences):
            if not isinstance(s, str) or not s.strip():
                raise BadRecord(f"{where}: sentences[{j}] must be a non-empty string; got {s!r:.80}")
            captions.append(s)
        out.append(RetrievalImage(image_id, tuple(captions), line))
    return out


def caption_entries(images: Iterable[RetrievalImage]) -> list[tuple[str, int]]:
    """``(caption, image_id)`` for every caption, in VOLTA's order (the rows of the evaluation score matrix)."""
    return [(c, img.image_id) for img in images for c in img.captions]


def _plain_id(value: Any, where: str) -> int | str:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRecord(f"{where}: image ids must be integers or strings; got {type(value).__name__} {value!r:.80}")
    return value


def read_hard_negatives(path: str | os.PathLike, images: Iterable[RetrievalImage] | None = None) -> HardNegatives:
    """VOLTA's ``hard_negative.pkl`` -> :class:`HardNegatives`, checked (and against ``images`` if given)."""
    path = os.fspath(path)
    doc = read_pickle(path)
    image_list = get_field(doc, "train_image_list", path)
    pool = get_field(doc, "train_hard_pool", path)
    if isinstance(image_list, np.ndarray):
        image_list = image_list.tolist()
    if not isinstance(image_list, list | tuple) or not image_list:
        raise BadRecord(f"{path}: 'train_image_list' must be a non-empty list of image ids")
    seen: dict[int | str, str] = {}
    ids = []
    for i, value in enumerate(image_list):
        where = f"{path}: train_image_list[{i}]"
        image_id = _plain_id(value, where)
        claim_id(seen, image_id, "image", where)
        ids.append(image_id)
    if isinstance(pool, list | tuple):
        try:
            pool = np.asarray(pool)
        except ValueError:
            raise BadRecord(f"{path}: 'train_hard_pool' rows have different lengths") from None
    n = len(ids)
    if not isinstance(pool, np.ndarray) or pool.ndim != 2 or pool.dtype.kind not in "iu":
        raise BadRecord(f"{path}: 'train_hard_pool' must be a 2-D integer array [{n}, K]; got "
                        f"{getattr(pool, 'shape', type(pool).__name__)} {getattr(pool, 'dtype', '')}")
    if pool.shape[0] != n or pool.shape[1] < 2:
        raise BadRecord(f"{path}: 'train_hard_pool' has shape {pool.shape}; expected [{n}, K >= 2] "
                        "(one row per train_image_list entry; column 0 is never sampled)")
    bad = np.argwhere((pool < 0) | (pool >= n))
    if bad.size:
        r, c = (int(v) for v in bad[0])
        raise BadRecord(f"{path}: train_hard_pool[{r}, {c}] (image {ids[r]!r}) = {int(pool[r, c])} is not an "
                        f"index into train_image_list [0, {n})")
    negatives = HardNegatives(tuple(ids), pool.astype(np.int64))
    if images is not None:
        have = {img.image_id: img.line for img in images}
        for img_id, line in have.items():
            if img_id not in seen:
                raise BadRecord(f"{path}: training image {img_id!r} (annotation line {line}) has no hard-negative "
                                "row in train_image_list")
        for i, img_id in enumerate(ids):
            if img_id not in have:
                raise BadRecord(f"{path}: train_image_list[{i}] = {img_id!r} has no captions in the annotations")
    return negatives
