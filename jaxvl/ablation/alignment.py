"""Phrase-to-region alignment of the cross-modal ablation (reference section 5.2), as pure ``jnp`` functions.

A detected region is *aligned* with a phrase when its intersection with any of the phrase's gold
boxes, divided by the area of that gold box (IoT, "intersection over target"), exceeds a threshold
(0.5 by default; VOLTA's ``iot`` in ``flickr30ke_ablation_dataset.py``). Widths, heights and
intersections use VOLTA's +1-pixel convention: a box from x1 to x2 is ``x2 - x1 + 1`` pixels wide, so
boxes that touch on an edge intersect by one pixel row. The global ``[IMG]`` row and padding rows are
never aligned (their ``alignable`` entry is 0).

The language-for-vision target is the aligned region with the highest IoU (maximum over the gold
boxes); ties go to the first such region, as both torch's and jnp's ``argmax`` do. A phrase with no
aligned region has no target (``has_target`` False).

Shapes: region ``boxes`` [..., L, 4] and gold ``ref_boxes`` [..., G, 4] in pixels x1y1x2y2, ``ref_mask``
[..., G] (1 = a real gold box, 0 = padding), ``alignable`` [..., L]. The threshold is a traced scalar, so
one compiled program serves every threshold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _area(boxes: jax.Array) -> jax.Array:
    return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)


def box_intersections(boxes: jax.Array, ref_boxes: jax.Array) -> jax.Array:
    """Pixel intersections [..., L, G] of every region with every gold box (+1-pixel convention)."""
    b = boxes[..., :, None, :].astype(jnp.float32)
    r = ref_boxes[..., None, :, :].astype(jnp.float32)
    iw = jnp.maximum(jnp.minimum(b[..., 2], r[..., 2]) - jnp.maximum(b[..., 0], r[..., 0]) + 1, 0)
    ih = jnp.maximum(jnp.minimum(b[..., 3], r[..., 3]) - jnp.maximum(b[..., 1], r[..., 1]) + 1, 0)
    return iw * ih


def iot(boxes: jax.Array, ref_boxes: jax.Array) -> jax.Array:
    """Intersection / gold-box area [..., L, G]."""
    return box_intersections(boxes, ref_boxes) / _area(ref_boxes.astype(jnp.float32))[..., None, :]


def iou(boxes: jax.Array, ref_boxes: jax.Array) -> jax.Array:
    """Intersection / union [..., L, G]."""
    inter = box_intersections(boxes, ref_boxes)
    union = _area(boxes.astype(jnp.float32))[..., :, None] + _area(ref_boxes.astype(jnp.float32))[..., None, :] - inter
    return inter / union


def aligned_regions(boxes: jax.Array, ref_boxes: jax.Array, ref_mask: jax.Array, alignable: jax.Array,
                    threshold: jax.Array | float) -> jax.Array:
    """bool [..., L]: alignable regions whose IoT with at least one real gold box exceeds ``threshold``."""
    over = (iot(boxes, ref_boxes) > threshold) & ref_mask.astype(bool)[..., None, :]
    return jnp.any(over, axis=-1) & alignable.astype(bool)


def target_region(boxes: jax.Array, ref_boxes: jax.Array, ref_mask: jax.Array,
                  aligned: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The aligned region with the highest IoU over the real gold boxes.

    Returns (index int32 [...], has_target bool [...]); the index is 0 where nothing is aligned.
    """
    best = jnp.max(jnp.where(ref_mask.astype(bool)[..., None, :], iou(boxes, ref_boxes), 0.0), axis=-1)
    score = jnp.where(aligned, best, -1.0)
    has_target = jnp.any(aligned, axis=-1)
    index = jnp.where(has_target, jnp.argmax(score, axis=-1), 0).astype(jnp.int32)
    return index, has_target
