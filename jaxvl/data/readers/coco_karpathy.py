"""Karpathy's ``dataset_coco.json`` (the COCO captioning splits ORT trains on), joined with region features.

The file (from Karpathy's neuraltalk2 splits; ``dataset_flickr8k.json`` / ``dataset_flickr30k.json``
share the layout) is ``{"dataset": "coco", "images": [...]}`` with, per image::

    {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "imgid": 0, "cocoid": 391895,
     "split": "test", "sentids": [...],
     "sentences": [{"tokens": ["a", "man", ...], "raw": "A man ...", "imgid": 0, "sentid": 770337}, ...]}

``split`` is one of ``train`` (82,783 images), ``restval`` (30,504), ``val`` (5,000), ``test``
(5,000). As in ORT / self-critical.pytorch (``dataloader.py`` with ``train_only=0``), ``restval``
is folded into ``train`` unless ``fold_restval=False`` (then it stays a split of its own; Ilinykh's
fork drops it). ``sentences[*].tokens`` is the tokenisation (already lower-cased, punctuation
removed; ``prepro_labels.py`` uses it unchanged); every caption of an image is kept (most COCO images
have 5, a few 6 or 7: ``caption_counts`` reports them). The image id joined with the features is
``str(cocoid)`` (the bottom-up-attention TSVs' ``img_id``, ORT's ``cocobu_att/<cocoid>.npz``);
``id_key="imgid"`` or ``"filename"`` (the file stem, for the Flickr files) choose another.

Bad input raises ``BadRecord`` naming the file and the image (its index in ``images`` and its id):
a missing or mistyped field, an unknown split, an image with zero captions, a caption with no
tokens or a token holding whitespace, a repeated id. With ``skip_bad`` bad images are logged,
counted (``skipped``) and left out. A file that is not JSON or has no ``images`` list always raises.

``RegionJoin`` pairs images with their regions from per-image feature LMDBs, directories of
``<id>.npz`` files or bottom-up-attention TSVs (streamed in file order, never held in memory). An
image without features, with a bad feature record, or with zero valid boxes (no box of positive
width and height) raises ``BadRecord``, or with ``skip_bad`` is skipped and counted in
``RegionJoin.counts``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxvl.data.caption_vocab import ORT_COUNT_THRESHOLD, CaptionVocab
from jaxvl.data.records import BadRecord, RecordErrors, RegionFeatures

log = logging.getLogger(__name__)

SPLITS = ("train", "restval", "val", "test")
ID_KEYS = ("cocoid", "imgid", "filename")


@dataclasses.dataclass
class KarpathyImage:
    """One image of the file: ``index`` in ``images``, join ``image_id``, ``split`` (after folding
    restval; ``original_split`` as written), ``file_path`` (``filepath/filename``) and its captions'
    token lists."""

    index: int
    image_id: str
    split: str
    original_split: str
    file_path: str
    captions: list[list[str]]


def _image_id(img: dict[str, Any], id_key: str, where: str) -> str:
    if id_key not in img:
        raise BadRecord(f"{where}: no {id_key!r} (the join id; id_key= picks one of {', '.join(ID_KEYS)})")
    value = img[id_key]
    if id_key == "filename":
        if not isinstance(value, str) or not value.strip():
            raise BadRecord(f"{where}: 'filename' must be a non-empty string; got {value!r}")
        return os.path.splitext(os.path.basename(value))[0]
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip():
        raise BadRecord(f"{where}: {id_key!r} must be an integer or a non-empty string; got {value!r}")
    return str(value).strip()


def parse_image(img: Any, index: int, path: str, id_key: str = "cocoid", fold_restval: bool = True) -> KarpathyImage:
    """One entry of ``images`` -> ``KarpathyImage``; raises ``BadRecord`` naming ``path``, the index and the id."""
    where = f"{path}: image {index}"
    if not isinstance(img, dict):
        raise BadRecord(f"{where}: must be a JSON object; got {type(img).__name__}")
    image_id = _image_id(img, id_key, where)
    where = f"{where} ({id_key} {img[id_key]!r})"
    split = img.get("split")
    if split not in SPLITS:
        raise BadRecord(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    sentences = img.get("sentences")
    if not isinstance(sentences, list):
        raise BadRecord(f"{where}: 'sentences' must be a list; got {type(sentences).__name__}")
    if not sentences:
        raise BadRecord(f"{where}: has zero captions")
    captions = []
    for j, sent in enumerate(sentences):
        tokens = sent.get("tokens") if isinstance(sent, dict) else None
        if not isinstance(tokens, list):
            raise BadRecord(f"{where}: sentence {j} has no 'tokens' list")
        if not tokens:
            raise BadRecord(f"{where}: sentence {j} has no tokens (raw {str(sent.get('raw'))[:60]!r})")
        bad = [t for t in tokens if not isinstance(t, str) or not t or t.split() != [t]]
        if bad:
            raise BadRecord(f"{where}: sentence {j} holds tokens that are not single words: {bad[:3]!r}")
        captions.append(list(tokens))
    folder, name = img.get("filepath", ""), img.get("filename", "")
    file_path = os.path.join(folder, name) if isinstance(folder, str) and isinstance(name, str) else ""
    folded = "train" if fold_restval and split == "restval" else split
    return KarpathyImage(index=index, image_id=image_id, split=folded, original_split=split, file_path=file_path,
                         captions=captions)


class KarpathyCaptions:
    """The images of a Karpathy split file, parsed and checked up front (the file is small: ~150 MB for COCO)."""

    def __init__(self, path: str | os.PathLike, fold_restval: bool = True, id_key: str = "cocoid",
                 skip_bad: bool = False):
        self.path = os.fspath(path)
        if id_key not in ID_KEYS:
            raise ValueError(f"id_key={id_key!r}; expected one of {', '.join(ID_KEYS)}")
        self.fold_restval, self.id_key = fold_restval, id_key
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"Karpathy split file not found: {self.path}")
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{self.path}: expected a JSON object with an 'images' list (Karpathy's dataset_*.json)")
        self.errors = RecordErrors(self.path, skip_bad=skip_bad)
        first_index: dict[str, int] = {}

        def parse(item: tuple[int, Any]) -> KarpathyImage:
            image = parse_image(item[1], item[0], self.path, self.id_key, self.fold_restval)
            if image.image_id in first_index:
                raise BadRecord(f"{self.path}: image {image.index} ({self.id_key} {image.image_id!r}) repeats the "
                                f"id of image {first_index[image.image_id]}")
            first_index[image.image_id] = image.index
            return image

        self.images: list[KarpathyImage] = list(self.errors.filter(enumerate(data["images"]), parse))
        self.errors.report()
        if not self.images:
            raise ValueError(f"{self.path}: no usable images")

    @property
    def skipped(self) -> int:
        """Bad images left out (``skip_bad``)."""
        return self.errors.skipped

    @property
    def splits(self) -> dict[str, list[KarpathyImage]]:
        """Split -> its images in file order (``train``, then ``restval`` if not folded, ``val``, ``test``)."""
        out: dict[str, list[KarpathyImage]] = {}
        for name in SPLITS:
            imgs = [im for im in self.images if im.split == name]
            if imgs:
                out[name] = imgs
        return out

    def caption_counts(self) -> dict[str, dict[int, int]]:
        """Split -> {captions per image: number of images} (COCO: mostly 5, some 6 and 7)."""
        out: dict[str, dict[int, int]] = {}
        for name, imgs in self.splits.items():
            hist: dict[int, int] = {}
            for im in imgs:
                hist[len(im.captions)] = hist.get(len(im.captions), 0) + 1
            out[name] = dict(sorted(hist.items()))
        return out

    def build_vocab(self, count_threshold: int = ORT_COUNT_THRESHOLD,
                    splits: Sequence[str] = ("train",)) -> CaptionVocab:
        """``CaptionVocab.build`` over the captions of ``splits`` (after folding; ``SPLITS`` = every split,
        which is what ORT's ``prepro_labels.py`` counts over), in file order."""
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"vocabulary splits {sorted(unknown)} are not among {', '.join(SPLITS)}")
        return CaptionVocab.build((c for im in self.images if im.split in splits for c in im.captions),
                                  count_threshold)


def caption_stats(images: Iterable[KarpathyImage], vocab: CaptionVocab, max_length: int) -> dict[str, int]:
    """Counts over ``images``: images, captions, captions longer than ``max_length`` (truncated when
    encoded), tokens and tokens mapped to UNK."""
    stats = {"images": 0, "captions": 0, "truncated_captions": 0, "tokens": 0, "unk_tokens": 0}
    for im in images:
        stats["images"] += 1
        for tokens in im.captions:
            stats["captions"] += 1
            stats["truncated_captions"] += len(tokens) > max_length
            stats["tokens"] += len(tokens)
            stats["unk_tokens"] += sum(t not in vocab for t in tokens)
    return stats


def valid_boxes(rec: RegionFeatures) -> np.ndarray:
    """[R] bool: boxes of positive width and height."""
    b = rec.boxes
    return (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) if b.size else np.zeros((0,), bool)


class RegionJoin:
    """Karpathy images -> ``(image, RegionFeatures)`` from feature LMDBs, npz directories or TSVs (module doc).

    ``paths``: one feature store or several of one format ``fmt`` (``lmdb``, ``npz`` or ``tsv``), e.g.
    LXMERT's ``train2014_obj36.tsv`` and ``val2014_obj36.tsv``: an image is looked up in each store in
    turn (TSVs are streamed one after the other). ``feature_dim`` / ``num_classes`` (K + 1) are passed
    to the readers. ``counts`` maps what was skipped (with ``skip_bad``) to how many; ``quiet`` skips
    without logging each one (for a first look at the records).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], fmt: str,
                 feature_dim: int | None = None, num_classes: int | None = None, skip_bad: bool = False,
                 quiet: bool = False):
        self.paths = [os.fspath(paths)] if isinstance(paths, str | os.PathLike) else [os.fspath(p) for p in paths]
        self.path = " + ".join(self.paths)
        self.fmt, self.skip_bad, self.quiet = fmt, skip_bad, quiet
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.counts: dict[str, int] = {}
        if fmt == "lmdb":
            from jaxvl.data.readers.volta_lmdb import FeatureLMDB

            self._stores = [(p, FeatureLMDB(p, feature_dim=feature_dim, num_classes=num_classes)) for p in self.paths]
        elif fmt == "npz":
            from jaxvl.data.readers.npz import NpzFeatureReader

            self._stores = [(p, NpzFeatureReader(p, feature_dim=feature_dim, num_classes=num_classes))
                            for p in self.paths]
        elif fmt == "tsv":
            missing = [p for p in self.paths if not os.path.isfile(p)]
            if missing:
                raise FileNotFoundError(f"TSV feature file not found: {missing[0]}")
            self._stores = None
        else:
            raise ValueError(f"feature format {fmt!r}; expected lmdb, npz or tsv")

    def _skip(self, error: BadRecord, what: str) -> None:
        if not self.skip_bad:
            raise error
        self.counts[what] = self.counts.get(what, 0) + 1
        if not self.quiet:
            log.warning("skipping: %s", error)

    def _missing(self, image: KarpathyImage) -> None:
        self._skip(BadRecord(f"{self.path}: no features for image {image.image_id!r} ({image.split} image "
                             f"{image.index} of the split file)"), "images without usable features")

    def _usable(self, image: KarpathyImage, rec: RegionFeatures, path: str) -> bool:
        if valid_boxes(rec).any():
            return True
        self._skip(BadRecord(f"{path}: record {rec.image_id!r} ({image.split} image {image.index} of the split "
                             f"file) has zero valid boxes ({rec.num_boxes} boxes, none of positive size)"),
                   "images with zero valid boxes")
        return False

    def pairs(self, images: Sequence[KarpathyImage]) -> Iterator[tuple[KarpathyImage, RegionFeatures]]:
        """Each image with its regions: in ``images`` order (LMDB, npz) or in the TSVs' line order."""
        if self._stores is None:
            yield from self._stream_tsv(images)
            return
        for image in images:
            found = next(((path, store) for path, store in self._stores if image.image_id in store), None)
            if found is None:
                self._missing(image)
                continue
            try:
                rec = found[1][image.image_id]
            except BadRecord as e:
                self._skip(e, "images without usable features")
                continue
            if self._usable(image, rec, found[0]):
                yield image, rec

    def _stream_tsv(self, images: Sequence[KarpathyImage]) -> Iterator[tuple[KarpathyImage, RegionFeatures]]:
        from jaxvl.data.readers.tsv import TsvFeatureReader

        wanted = {im.image_id: im for im in images}
        seen: set[str] = set()
        for path in self.paths:
            reader = TsvFeatureReader(path, feature_dim=self.feature_dim, num_classes=self.num_classes,
                                      skip_bad=self.skip_bad)
            for rec in reader:
                image = wanted.get(rec.image_id)
                if image is None or rec.image_id in seen:
                    continue  # another split's image, one the split file lacks, or a repeated line
                seen.add(rec.image_id)
                if self._usable(image, rec, path):
                    yield image, rec
            if reader.skipped:
                self.counts["bad feature records"] = self.counts.get("bad feature records", 0) + reader.skipped
        for image in images:
            if image.image_id not in seen:
                self._missing(image)
