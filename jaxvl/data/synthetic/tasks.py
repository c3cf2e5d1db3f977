"""Synthetic downstream task worlds with planted answers: VOLTA's controlled-study tasks, offline.

Each task draws labelled examples from a ``World``'s images, with the answer (label, target box, matching image)
computed from the image's GOLD objects, so it is right by construction and a model can only learn it by reading
the regions the simulated detector made of those objects. Everything is deterministic: an example of image ``i``
(VQA, referring expressions) depends only on ``(world, i, seed)``, whatever the other images of the set; a
retrieval set or NLVR2 pair set only on ``(world, images, seed)``, and example ``e`` not on how many follow it.

- ``tasks_vqa``: ``what colour is the CLASS`` (a colour world: ``colour_dims`` > 0) and ``is there a CLASS``
  (yes/no, balanced), 10 annotator answers per question with ``answer_noise``, VQA soft scores over an answer
  vocabulary (VOLTA task 1);
- ``tasks_retrieval``: N images x M captions each, with the full caption-describes-image matrix, and VOLTA's
  4-way training options (task 8, Flickr30k);
- ``tasks_refer``: ``the ATTRIBUTE CLASS on the left`` naming exactly one gold object among several, with
  per-region IoU targets against its box (task 10, RefCOCO+);
- ``tasks_nlvr2``: two images and a statement (``there are two CLASS``, ``the left image has a ATTRIBUTE CLASS``),
  true or false 50/50 (task 12, NLVR2).

This module holds what they share: the words they add to the world's vocabulary (``task_vocabulary``, for
``Tokenizer.from_words``), text encoding with VOLTA's ``[CLS] text [SEP]`` layout, the region inputs of an image
(``jaxvl.data.regions.region_inputs``: a global ``[IMG]`` row first, 5-d locations) and VOLTA's box IoU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxvl.data.regions import region_inputs
from jaxvl.data.synthetic.world import World
from jaxvl.data.tokenizer import Tokenizer

# Words of the task templates that a world's captions may lack.
TASK_WORDS = ("what", "colour", "is", "the", "there", "a", "on", "left", "right", "are", "two", "image", "has",
              "yes", "no")


def task_vocabulary(world: World, extra: Sequence[str] = ()) -> list[str]:
    """The world's caption vocabulary plus every task template word and ``extra`` (sorted), for
    ``Tokenizer.from_words``."""
    return sorted({*world.vocabulary(), *TASK_WORDS, *extra})


def example_rng(seed: int, task: int, index: int) -> np.random.Generator:
    """The generator of example ``index`` of task ``task`` (a small constant per task module) under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, 15, task, index]))


def check_images(world: World, images: Sequence[int], least: int = 1) -> list[int]:
    """``images`` as a list of distinct world indices (at least ``least``); ValueError / IndexError otherwise."""
    out = [int(i) for i in images]
    if len(out) < least or len(set(out)) != len(out):
        raise ValueError(f"images: expected {least} or more distinct world indices, got {len(out)} "
                         f"({len(set(out))} distinct)")
    for i in out:
        if not 0 <= i < len(world):
            raise IndexError(f"image {i} outside [0, {len(world)})")
    return out


def text_inputs(texts: Sequence[str], tokenizer: Tokenizer, max_seq_length: int) -> dict[str, np.ndarray]:
    """Texts -> ``input_ids``, ``token_type_ids`` (0), ``text_mask`` int32 [N, max_seq_length] (``[CLS] text
    [SEP]`` padded). Raises ValueError when a text does not fit (a cut would drop its planted words) or holds a
    word the tokenizer does not know (build it from ``task_vocabulary``)."""
    ids, masks = [], []
    for text in texts:
        pieces = tokenizer.tokenize(text)
        if tokenizer.unk_token in pieces:
            raise ValueError(f"text {text!r}: a word outside the tokenizer's vocabulary (build it from "
                             "task_vocabulary(world))")
        if len(pieces) + 2 > max_seq_length:
            raise ValueError(f"max_seq_length={max_seq_length}: text {text!r} needs {len(pieces) + 2} tokens "
                             "with [CLS] and [SEP]")
        i, m = tokenizer.encode(text, max_seq_length)
        ids.append(i)
        masks.append(m)
    input_ids = np.stack(ids)
    return dict(input_ids=input_ids, token_type_ids=np.zeros_like(input_ids), text_mask=np.stack(masks))


def image_inputs(world: World, images: Sequence[int]) -> dict[str, np.ndarray]:
    """World images -> ``features`` [N, L, D], ``locations`` [N, L, 5], ``boxes`` [N, L, 4] (pixels) float32 and
    ``region_mask`` [N, L] int32, L = R + 1 (the global ``[IMG]`` row first, its box the whole image)."""
    cache: dict[int, dict[str, np.ndarray]] = {}
    rows = []
    for i in images:
        if i not in cache:
            cache[i] = region_inputs(world[i].regions, world.cfg.num_regions, "first")
        rows.append(cache[i])
    return {k: np.stack([r[k] for r in rows]) for k in ("features", "locations", "boxes", "region_mask")}


def box_iou(boxes: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """IoU of boxes [..., 4] with one gold box [4] (pixels x1y1x2y2) -> [...] float32, with VOLTA's
    ``refer_expression_dataset.iou`` pixel convention (a box spans ``x2 - x1 + 1`` pixels)."""
    boxes = np.asarray(boxes, np.float64)
    gold = np.asarray(gold, np.float64)
    iw = np.clip(np.minimum(boxes[..., 2], gold[2]) - np.maximum(boxes[..., 0], gold[0]) + 1, 0, None)
    ih = np.clip(np.minimum(boxes[..., 3], gold[3]) - np.maximum(boxes[..., 1], gold[1]) + 1, 0, None)
    area = (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)
    gold_area = (gold[2] - gold[0] + 1) * (gold[3] - gold[1] + 1)
    return (iw * ih / (area + gold_area - iw * ih)).astype(np.float32)


__all__ = ["TASK_WORDS", "box_iou", "check_images", "example_rng", "image_inputs", "task_vocabulary", "text_inputs"]
