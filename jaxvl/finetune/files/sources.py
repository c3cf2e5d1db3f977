"""Lazy example sources over VOLTA's task files: texts and targets in memory, regions read per example.

Each source is a random-access ``Sequence`` of example dicts in ``jaxvl.finetune.data``'s layout (T tokens,
L = R + 1 region rows with the global ``[IMG]`` row first, D feature size). The image features stay in the
per-image feature LMDB (``ImageStore``): ``source[i]`` reads the example's image(s) from it, so a split of 443k
questions over 80k images holds only its token ids, targets and image ids in memory. The LMDB environment opens
lazily in each process and is left out of pickles (``FeatureLMDB``), so a source can go to Grain worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from jaxvl.data.readers.volta_lmdb import FeatureLMDB
from jaxvl.data.records import BadRecord
from jaxvl.data.regions import region_inputs
from jaxvl.data.synthetic.tasks import box_iou
from jaxvl.data.tokenizer import Tokenizer

IMAGE_FIELDS = ("features", "locations", "region_mask")
HIT_IOU = 0.5  # VOLTA's RefCOCO+ success threshold on the picked region's IoU


class ImageStore:
    """VOLTA's per-image feature LMDB (``features_h5path1``) as fixed-size region rows of ``num_regions`` + 1.

    ``rows(image_id)`` -> ``features`` [L, D], ``locations`` [L, 5], ``boxes`` [L, 4] (pixels) float32 and
    ``region_mask`` [L] int32, the global row first (``jaxvl.data.regions.region_inputs``; VOLTA's
    ``add_global_imgfeat="first"``). ``feature_dim`` D is read off the first image ``require`` checks; an image of
    another size raises ``BadRecord`` naming the LMDB and the image.
    """

    def __init__(self, path: str, num_regions: int):
        if num_regions < 1:
            raise ValueError(f"num_regions={num_regions}: expected >= 1 regions per image")
        self.path, self.num_regions = path, num_regions
        self.lmdb = FeatureLMDB(path, feature_dim=None, num_classes=None)
        self.feature_dim = 0

    def require(self, image_ids: Sequence[Hashable], where: Callable[[int], str]) -> None:
        """Every id of ``image_ids`` must be in the LMDB: else one ``BadRecord`` naming the image id, the LMDB and
        ``where(i)`` (the file and record that needs it). Sets ``feature_dim`` from the first image."""
        for i, image_id in enumerate(image_ids):
            if image_id not in self.lmdb:
                raise BadRecord(f"{self.path}: no image {str(image_id)!r} in the feature LMDB (needed by "
                                f"{where(i)})")
        if not self.feature_dim and len(image_ids):
            self.feature_dim = int(self.lmdb[image_ids[0]].features.shape[1])

    def rows(self, image_id: Hashable) -> dict[str, np.ndarray]:
        """The region rows of one image (class doc)."""
        try:
            regions = self.lmdb[image_id]
        except KeyError:
            raise BadRecord(f"{self.path}: no image {str(image_id)!r} in the feature LMDB") from None
        if self.feature_dim and regions.features.shape[1] != self.feature_dim:
            raise BadRecord(f"{self.path}: image {str(image_id)!r} has {regions.features.shape[1]}-d features; the "
                            f"split's first image has {self.feature_dim}")
        return region_inputs(regions, self.num_regions, "first")


class Texts:
    """A split's texts as VOLTA encodes them (``[CLS] tokens[:T - 2] [SEP]`` padded with the pad id): ``input_ids``
    int32 [N, T] and ``lengths`` int32 [N] in memory; ``texts[rows]`` -> ``input_ids``, ``token_type_ids`` (0),
    ``text_mask`` int32 [*rows.shape, T] (an int row -> [T])."""

    def __init__(self, input_ids: np.ndarray, lengths: np.ndarray):
        self.input_ids, self.lengths = np.asarray(input_ids, np.int32), np.asarray(lengths, np.int32)

    @classmethod
    def encode(cls, texts: Sequence[str], tokenizer: Tokenizer, max_seq_length: int) -> Texts:
        """Every text of ``texts`` encoded with ``tokenizer`` to ``max_seq_length`` tokens."""
        ids = np.full((len(texts), max_seq_length), tokenizer.pad_id, np.int32)
        lengths = np.zeros(len(texts), np.int32)
        for n, text in enumerate(texts):
            ids[n], mask = tokenizer.encode(text, max_seq_length)
            lengths[n] = mask.sum()
        return cls(ids, lengths)

    def __getitem__(self, rows: int | np.ndarray) -> dict[str, np.ndarray]:
        ids = self.input_ids[rows]
        mask = (np.arange(ids.shape[-1]) < np.asarray(self.lengths[rows])[..., None]).astype(np.int32)
        return dict(input_ids=ids, token_type_ids=np.zeros_like(ids), text_mask=mask)


# ================================================================================================ targets


class SoftTargets:
    """VL-classifier (VQA, GQA): example i's ``labels[i]`` / ``scores[i]`` scattered into float32 [C]."""

    def __init__(self, labels: Sequence[np.ndarray], scores: Sequence[np.ndarray], num_labels: int):
        self.labels, self.scores, self.num_labels = list(labels), list(scores), num_labels

    def __call__(self, i: int, rows: Mapping[str, np.ndarray]) -> np.ndarray:
        target = np.zeros(self.num_labels, np.float32)
        target[self.labels[i]] = self.scores[i]
        return target

    def chance(self) -> float:
        """The VQA score of always answering the answer with the highest mean target (the majority answer)."""
        total = np.zeros(self.num_labels, np.float64)
        for labels, scores in zip(self.labels, self.scores, strict=True):
            np.add.at(total, labels, scores)
        return float(total.max() / max(len(self.labels), 1))


class LabelTargets:
    """VL-binary-classifier (NLVR2), VL-tri-classifier (SNLI-VE): example i's label, int32 []."""

    def __init__(self, labels: Sequence[int]):
        self.labels = np.asarray(labels, np.int32)

    def __call__(self, i: int, rows: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.labels[i]

    def chance(self) -> float:
        """The accuracy of always answering the split's most frequent label."""
        return float(np.bincount(self.labels).max() / len(self.labels))


class IoUTargets:
    """V-logit (RefCOCO+): the IoU of every region row's pixel box with example i's gold box ``gold[i]`` (x1y1x2y2,
    VOLTA's ``refer_expression_dataset.iou`` ``+ 1`` convention), the global row included, 0 on padding: [L]."""

    def __init__(self, gold: np.ndarray):
        self.gold = np.asarray(gold, np.float32).reshape(-1, 4)

    def __call__(self, i: int, rows: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.where(rows["region_mask"] > 0, box_iou(rows["boxes"], self.gold[i]), 0.0).astype(np.float32)


# ================================================================================================ sources


class TextImageExamples(Sequence):
    """One text on one image per example (VQA, GQA, SNLI-VE, RefCOCO+): ``text`` [N], ``image_ids`` [N] (LMDB
    keys), ``target(i, rows)`` -> the example's ``target``."""

    def __init__(self, text: Texts, image_ids: Sequence[Hashable], images: ImageStore,
                 target: Callable[[int, Mapping[str, np.ndarray]], np.ndarray]):
        self.text, self.image_ids, self.images, self.target = text, list(image_ids), images, target

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # type: ignore[override] - no slices
        i = int(i)
        rows = self.images.rows(self.image_ids[i])
        return {**self.text[i], **{k: rows[k] for k in IMAGE_FIELDS}, "target": self.target(i, rows)}

    def refer_chance(self, sample: int) -> float:
        """RefCOCO+'s chance: the mean, over the examples, of the fraction of an example's real rows whose IoU with
        the gold box exceeds 0.5 (a uniform pick); over at most ``sample`` evenly spaced examples (reading their
        images), all of them in a smaller split."""
        picks = np.unique(np.linspace(0, len(self) - 1, min(sample, len(self))).round().astype(int))
        shares = []
        for i in picks:
            rows = self.images.rows(self.image_ids[i])
            real = rows["region_mask"] > 0
            shares.append(float(((self.target(int(i), rows) > HIT_IOU) & real).sum() / real.sum()))
        return float(np.mean(shares))


class ImagePairExamples(Sequence):
    """NLVR2: one statement on two images per example; the image fields hold both ([2, L, ...], left first)."""

    def __init__(self, text: Texts, image_pairs: Sequence[tuple[Hashable, Hashable]], images: ImageStore,
                 target: LabelTargets):
        self.text, self.image_pairs, self.images, self.target = text, list(image_pairs), images, target

    def __len__(self) -> int:
        return len(self.image_pairs)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # type: ignore[override] - no slices
        i = int(i)
        rows = [self.images.rows(image_id) for image_id in self.image_pairs[i]]
        return {**self.text[i], **{k: np.stack([r[k] for r in rows]) for k in IMAGE_FIELDS},
                "target": self.target(i, rows[0])}


class RetrievalExamples(Sequence):
    """Retrieval: per caption VOLTA's 4 (caption, image) options, the positive first (``target`` 0).

    ``text`` [C] holds every caption of the split, ``image_ids`` [N] the split's images and
    ``options`` int64 [C, 4, 2] (caption row, image index) per example; the text and image fields get an option
    axis ([4, T], [4, L, D], ...).
    """

    def __init__(self, text: Texts, image_ids: Sequence[Hashable], options: np.ndarray, images: ImageStore):
        self.text, self.image_ids, self.images = text, list(image_ids), images
        self.options = np.asarray(options, np.int64)

    def __len__(self) -> int:
        return len(self.options)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # type: ignore[override] - no slices
        captions, images = self.options[int(i), :, 0], self.options[int(i), :, 1]
        read = {int(m): self.images.rows(self.image_ids[m]) for m in set(images.tolist())}
        return {**self.text[captions],
                **{k: np.stack([read[int(m)][k] for m in images]) for k in IMAGE_FIELDS},
                "target": np.zeros((), np.int32)}


__all__ = ["HIT_IOU", "IMAGE_FIELDS", "ImagePairExamples", "ImageStore", "IoUTargets", "LabelTargets",
           "RetrievalExamples", "SoftTargets", "TextImageExamples", "Texts"]
