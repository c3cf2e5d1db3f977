"""Synthetic referring expressions (VOLTA task 10, RefCOCO+): an expression that names exactly one gold object of a
world image, and per-region IoU targets against that object's box.

Expression: ``the ATTRIBUTE CLASS on the SIDE``. Among the image's objects of the same class and attribute as the
target, SIDE says which one: ``left`` for the leftmost box centre, ``right`` for the rightmost (a target in the
middle of three or more is not referable). A target alone of its kind gets the half of the image its box centre
lies in, so the side is always true and the expression always names one object. The target is drawn among the
referable objects that some detector region covers with IoU > 0.5 (so an answer exists); an image with none is
left out.

Targets are VOLTA's ``refer_expression_dataset``: the IoU of every region row's pixel box with the gold box
(``tasks.box_iou``, its ``+ 1`` pixel convention), the global ``[IMG]`` row (the whole image) included, padded rows
0. A prediction (the argmax over real rows) is right when its IoU exceeds 0.5. Chance, a uniform pick among an
image's real rows, is the mean fraction of rows above 0.5 (``refer_chance``; about one or two rows of R + 1 for
each target, since the detector makes one or two jittered detections per object). A model that ignores the text
and picks any object region does better than chance but below 1 in images of several objects.

Knob: ``seed``; image ``i``'s expression depends only on ``(world, i, seed)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxvl.data.regions import region_inputs
from jaxvl.data.synthetic.tasks import box_iou, check_images, example_rng, image_inputs, text_inputs
from jaxvl.data.synthetic.world import SyntheticImage, World
from jaxvl.data.tokenizer import Tokenizer

HIT_IOU = 0.5  # VOLTA's success threshold on the argmax region's IoU
_TASK = 10


@dataclasses.dataclass(frozen=True)
class ReferExample:
    """An ``expression`` naming gold object ``target_object`` of world image ``image``; ``gold_box`` its pixel box
    x1y1x2y2."""

    image: int
    expression: str
    target_object: int
    gold_box: tuple[float, float, float, float]


def side_of(image: SyntheticImage, j: int, image_width: int) -> str | None:
    """The SIDE word that singles out object ``j`` among the image's objects of its class and attribute, or None
    when it lies between two of them (module doc)."""
    o = image.objects[j]
    centre = {k: float(p.box[0] + p.box[2]) / 2 for k, p in enumerate(image.objects)
              if (p.label, p.attribute) == (o.label, o.attribute)}
    if len(centre) == 1:
        return "left" if centre[j] < image_width / 2 else "right"
    if centre[j] == min(centre.values()):
        return "left"
    return "right" if centre[j] == max(centre.values()) else None


def refer_examples(world: World, images: Sequence[int], seed: int = 0) -> list[ReferExample]:
    """One expression per image of ``images`` (distinct world indices) that has a referable, detected object, in
    that order (module doc)."""
    out = []
    width = world.cfg.image_size[1]
    for i in check_images(world, images):
        image = world[i]
        boxes = region_inputs(image.regions, world.cfg.num_regions, None)["boxes"]
        candidates = []
        for j, o in enumerate(image.objects):
            side = side_of(image, j, width)
            if side is not None and (box_iou(boxes, o.box) > HIT_IOU).any():
                candidates.append((j, side))
        if not candidates:
            continue
        j, side = candidates[int(example_rng(seed, _TASK, i).integers(len(candidates)))]
        o = image.objects[j]
        expression = f"the {world.attribute_names[o.attribute]} {world.class_names[o.label]} on the {side}"
        out.append(ReferExample(i, expression, j, tuple(float(v) for v in o.box)))
    return out


def refer_batch(world: World, examples: Sequence[ReferExample], tokenizer: Tokenizer,
                max_seq_length: int) -> dict[str, np.ndarray]:
    """Examples -> model inputs and targets [N, ...] (L = R + 1, the global row first):

    ``input_ids``, ``token_type_ids``, ``text_mask`` int32 [N, T]; ``features`` [N, L, D], ``locations``
    [N, L, 5], ``boxes`` [N, L, 4] float32, ``region_mask`` [N, L] int32; ``target`` float32 [N, L] (IoU of each
    row's box with the gold box, 0 on padded rows) and ``gold_box`` float32 [N, 4] (pixels)."""
    if not examples:
        raise ValueError("examples: no example")
    images = image_inputs(world, [ex.image for ex in examples])
    gold = np.array([ex.gold_box for ex in examples], np.float32)
    target = np.stack([box_iou(b, g) for b, g in zip(images["boxes"], gold, strict=True)])
    target = np.where(images["region_mask"] > 0, target, 0.0).astype(np.float32)
    return dict(**text_inputs([ex.expression for ex in examples], tokenizer, max_seq_length), **images,
                target=target, gold_box=gold)


def refer_hits(scores: np.ndarray, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Per-region scores [N, L] -> bool [N]: whether the argmax over real rows has IoU > 0.5 with the gold box."""
    masked = np.where(batch["region_mask"] > 0, np.asarray(scores, np.float32), -np.inf)
    picked = np.take_along_axis(batch["target"], masked.argmax(1)[:, None], 1)[:, 0]
    return picked > HIT_IOU


def refer_chance(batch: dict[str, np.ndarray]) -> float:
    """The expected accuracy of a uniform pick among each example's real rows."""
    real = batch["region_mask"] > 0
    return float((((batch["target"] > HIT_IOU) & real).sum(1) / real.sum(1)).mean())


__all__ = ["HIT_IOU", "ReferExample", "refer_batch", "refer_chance", "refer_examples", "refer_hits", "side_of"]
