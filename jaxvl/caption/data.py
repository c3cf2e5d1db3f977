"""Grain input pipeline over prepared captioning datasets: one image per row, its captions beside it.

Reads a split of a ``CaptionImages`` / ``SyntheticCaptions`` dataset (``jaxvl prepare --source
synthetic-captions`` or ``coco-karpathy:...``) through ``tfds`` data sources, with no TensorFlow::

    source, info = open_split(out / "jaxvl_synthetic_captions/default/1.0.0", "train")  # jaxvl.data.grain
    vocab = caption_vocab_for(info)                   # the dataset's CaptionVocab (check a checkpoint's against it)
    it = iter(caption_dataset(source, CaptionPipelineConfig(batch_size=16, seed=0)))
    batch = next(it)                                  # dict of numpy arrays, this host's rows
    state = it.get_state()                            # it.set_state(state) resumes exactly

The model encodes each image once and broadcasts it to its C captions (ORT replicates the image C
times instead). Order of operations, all index-based like ``jaxvl.data.grain``: global shuffle of
the images (each epoch reshuffled), ``repeat(num_epochs)``, the per-image transform (a ``random_map``
whose generator derives from ``seed`` and the element's global position, so caption windows are
reproducible, resumable and independent of the number of hosts), chunks of ``batch_size // P``
consecutive images with ``drop_remainder``, the per-host split (host ``p`` of ``P`` takes chunks ``p,
p + P, ...``, so global batch ``k`` is the same images whatever P is, as in ``jaxvl.data.grain``; a
finite stream is cut to a multiple of P chunks), and ``to_iter_dataset`` with threads and prefetch.

Captions per image (C = ``captions_per_image``, default 5 = ORT's ``seq_per_img``): an image with
N >= C captions gives a window of C consecutive captions, starting at a random index (ORT's
``get_captions``) or at 0 with ``caption_window="first"``; an image with N < C gives its N captions
and C - N rows of zeros with ``caption_mask`` 0 (ORT instead samples N < C captions with
replacement; masking keeps every reference once).

Batch fields (B = per-host images, R regions, D features, T = the dataset's ``max_length``):

- ``features`` [B, R, D] float32, ``boxes`` [B, R, 4] float32 pixel x1y1x2y2, ``region_mask``
  [B, R] int32 (1 on real regions with a box of positive size), ``num_boxes`` [B] int32,
  ``image_size`` [B, 2] int32 as (height, width) pixels;
- ``captions`` [B, C, T + 2] int32 in ORT's layout: position 0 is the start token, the words
  follow, then the end token, then padding, and start = end = pad = id 0 (``CaptionVocab``):
  ``[0, w_1, ..., w_L, 0, 0, ...]``. Decoder input ``captions[..., :-1]``, targets
  ``captions[..., 1:]``; target ``t`` is trained iff ``t <= caption_lengths`` (the L words and the
  end token, ORT's mask);
- ``caption_lengths`` [B, C] int32 (L <= T; 0 on padded rows), ``caption_mask`` [B, C] int32 (1 on
  real captions);
- ``image_id`` [B] numpy str (host side only: drop it before sending a batch to devices).

With ``analysis_fields=True`` (for ``jaxvl.caption.attention``) a batch also carries what
the dataset stores of: ``objects_id`` [B, R] int32 (detector class in K-space, -1 on padding) and
``objects_conf`` [B, R] float32 (datasets with detector classes); ``phrase_spans`` [B, C, P, 2] int32
(each noun phrase's word span ``[start, end)``: word ``j`` is ``captions[..., j + 1]``; ``[0, 0]``
pads) and ``phrase_regions`` [B, C, P, R] bool (its linked regions), windowed like the captions
(datasets with noun-phrase links: the synthetic captioning world).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

import jaxvl.data.builders.captions  # noqa: F401 -- registers the caption builders for open_split by name
from jaxvl.data.builders.common import as_str
from jaxvl.data.caption_vocab import CaptionVocab
from jaxvl.data.grain import host_batch_size, host_batches

WINDOWS = ("random", "first")


@dataclasses.dataclass(frozen=True)
class CaptionPipelineConfig:
    """How to read a captioning split: global images per batch, captions per image, regions, seed, epochs.

    ``batch_size`` is the global number of images: each of the P processes yields ``batch_size // P``.
    ``num_regions`` is R of the model input (None: the dataset's stored R; fewer cut, more zero-pad).
    ``analysis_fields`` adds the detector classes and noun-phrase links the dataset stores (module doc).
    """

    batch_size: int = 16
    captions_per_image: int = 5
    num_regions: int | None = None
    caption_window: str = "random"
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    num_threads: int = 4
    prefetch_buffer_size: int = 16
    analysis_fields: bool = False

    def __post_init__(self):
        if self.batch_size < 1 or self.captions_per_image < 1:
            raise ValueError(f"batch_size={self.batch_size} and captions_per_image={self.captions_per_image} "
                             "must be >= 1")
        if self.caption_window not in WINDOWS:
            raise ValueError(f"caption_window={self.caption_window!r}; expected one of {', '.join(WINDOWS)}")
        if self.num_regions is not None and self.num_regions < 1:
            raise ValueError(f"num_regions={self.num_regions} must be >= 1 or None")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs={self.num_epochs} must be >= 1 or None (forever)")


def caption_vocab_for(info: tfds.core.DatasetInfo) -> CaptionVocab:
    """The ``CaptionVocab`` a captioning dataset was encoded with (from its metadata)."""
    data = (info.metadata or {}).get("vocab")
    if data is None:
        raise ValueError(f"dataset {info.full_name} carries no caption vocabulary in its metadata (not a "
                         "jaxvl captioning dataset?)")
    return CaptionVocab.from_json(dict(data), f"dataset {info.full_name} metadata")


def _fit_rows(values: np.ndarray, rows: int) -> np.ndarray:
    """[n, ...] -> [rows, ...]: cut, or zero-padded."""
    out = np.zeros((rows, *values.shape[1:]), values.dtype)
    n = min(len(values), rows)
    out[:n] = values[:n]
    return out


class CaptionTransform(grain.transforms.RandomMap):
    """One stored image -> its fixed-shape model inputs (fields in the module doc, without B)."""

    def __init__(self, captions_per_image: int = 5, num_regions: int | None = None, caption_window: str = "random",
                 analysis_fields: bool = False):
        self.captions_per_image = captions_per_image
        self.num_regions = num_regions
        self.caption_window = caption_window
        self.analysis_fields = analysis_fields

    def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.captions_per_image
        r = self.num_regions or int(np.shape(element["features"])[0])
        stored = np.asarray(element["captions"], np.int32)  # [N, T]
        lengths = np.asarray(element["caption_lengths"], np.int32)
        n, t = stored.shape
        start = int(rng.integers(0, n - c + 1)) if n > c and self.caption_window == "random" else 0
        take = slice(start, start + min(n, c))
        captions = np.zeros((c, t + 2), np.int32)
        captions[:min(n, c), 1:t + 1] = stored[take]
        cap_lengths = np.zeros((c,), np.int32)
        cap_lengths[:min(n, c)] = lengths[take]
        num_boxes = min(int(element["num_boxes"]), r)
        out = {
            "features": _fit_rows(np.asarray(element["features"], np.float32), r),
            "boxes": _fit_rows(np.asarray(element["boxes"], np.float32), r),
            "region_mask": _fit_rows(np.asarray(element["region_mask"], np.int32), r),
            "num_boxes": np.int32(num_boxes),
            "image_size": np.array([element["image_h"], element["image_w"]], np.int32),
            "captions": captions,
            "caption_lengths": cap_lengths,
            "caption_mask": (np.arange(c) < n).astype(np.int32),
            "image_id": np.asarray(as_str(element["image_id"])),
        }
        if self.analysis_fields:
            out.update(_analysis_fields(element, take, c, r))
        return out


def _analysis_fields(element: Mapping[str, Any], take: slice, captions: int, regions: int) -> dict[str, np.ndarray]:
    """The stored detector classes and noun-phrase links of one image, windowed to ``take`` / cut to R."""
    out = {}
    if "objects_id" in element:
        ids = np.full((regions,), -1, np.int32)
        stored = np.asarray(element["objects_id"], np.int32)[:regions]
        ids[:len(stored)] = stored
        out["objects_id"] = ids
        out["objects_conf"] = _fit_rows(np.asarray(element["objects_conf"], np.float32), regions)
    if "phrase_spans" in element:
        spans = np.asarray(element["phrase_spans"], np.int32)[take]  # [n, P, 2]
        linked = np.asarray(element["phrase_regions"], bool)[take]  # [n, P, R_stored]
        out["phrase_spans"] = _fit_rows(spans, captions)
        out["phrase_regions"] = _fit_rows(np.moveaxis(_fit_rows(np.moveaxis(linked, -1, 0), regions), 0, -1),
                                          captions)
    return out


def caption_dataset(source: Sequence[Mapping[str, Any]], cfg: CaptionPipelineConfig,
                    shard: grain.sharding.ShardOptions | None = None) -> grain.IterDataset:
    """This host's batches of images of ``source`` (a split from ``open_split``), as a Grain ``IterDataset``.

    ``shard`` defaults to this JAX process. The batches depend only on ``cfg`` (seed included) and the
    shard, never on threads or timing; a finite run (``num_epochs``) ends after
    ``floor(num_epochs * len(source) / P / per_host_batch)`` batches.
    """
    shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    per_host = host_batch_size(cfg.batch_size, shard)
    if len(source) < shard.shard_count * per_host:
        raise ValueError(f"the split has {len(source)} images, fewer than one global batch of {cfg.batch_size}")
    ds = grain.MapDataset.source(source)
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    # before the host split: an image's caption window depends on its global position, not on P
    ds = ds.random_map(CaptionTransform(cfg.captions_per_image, cfg.num_regions, cfg.caption_window,
                                        cfg.analysis_fields), seed=cfg.seed)
    return host_batches(ds, per_host, shard, cfg.num_epochs is not None, cfg.num_threads, cfg.prefetch_buffer_size)
