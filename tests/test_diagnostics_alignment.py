"""Phrase-to-region alignment: hand-computed IoT / IoU (+1-pixel areas), thresholds, the [IMG] row, targets."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvl.ablation.alignment import aligned_regions, box_intersections, iot, iou, target_region


def volta_overlaps(anchors, gt, kind):
    """VOLTA's ``iot`` / ``iou`` (flickr30ke_ablation_dataset.py), in numpy, loop by loop."""
    out = np.zeros((len(anchors), len(gt)))
    for i, a in enumerate(anchors):
        for j, g in enumerate(gt):
            iw = max(min(a[2], g[2]) - max(a[0], g[0]) + 1, 0)
            ih = max(min(a[3], g[3]) - max(a[1], g[1]) + 1, 0)
            g_area = (g[2] - g[0] + 1) * (g[3] - g[1] + 1)
            a_area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
            out[i, j] = iw * ih / (g_area if kind == "iot" else a_area + g_area - iw * ih)
    return out


BOXES = np.array([[0, 0, 639, 479],  # [IMG]: the whole image
                  [10, 10, 19, 19],  # inside gold 0: 100 px of its 400
                  [10, 10, 29, 29],  # equals gold 0
                  [25, 25, 44, 44],  # overlaps gold 0 by 5x5 = 25 px
                  [30, 30, 39, 39],  # starts one pixel after gold 0 ends: no intersection
                  [100, 100, 109, 109]], np.float32)  # inside gold 1 (the whole of gold 1)
REF = np.array([[10, 10, 29, 29], [100, 100, 104, 104], [0, 0, 0, 0]], np.float32)  # 20x20, 5x5, padding
REF_MASK = np.array([1, 1, 0])
ALIGNABLE = np.array([0, 1, 1, 1, 1, 1])


def test_hand_computed_overlaps_follow_the_plus_one_convention():
    inter = np.asarray(box_intersections(BOXES, REF[:2]))
    assert inter[1, 0] == 100 and inter[2, 0] == 400 and inter[3, 0] == 25 and inter[4, 0] == 0
    assert inter[5, 1] == 25 and inter[0, 0] == 400  # [IMG] covers gold 0 whole
    got_iot = np.asarray(iot(BOXES, REF[:2]))
    np.testing.assert_allclose(got_iot[:, 0], [1.0, 0.25, 1.0, 25 / 400, 0.0, 0.0])
    np.testing.assert_allclose(got_iot[5, 1], 1.0)
    got_iou = np.asarray(iou(BOXES, REF[:2]))
    np.testing.assert_allclose(got_iou[1, 0], 100 / 400)
    np.testing.assert_allclose(got_iou[3, 0], 25 / (400 + 400 - 25))
    np.testing.assert_allclose(got_iou[5, 1], 25 / 100)
    # edge contact: [0, 9] and [9, 20] share the pixel column 9
    assert float(box_intersections(np.array([[0, 0, 9, 9.]]), np.array([[9, 0, 20, 9.]]))[0, 0]) == 10


def test_parity_with_volta_on_random_boxes():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (2, 40, 2))
    wh = rng.uniform(1, 200, (2, 40, 2))
    a = np.concatenate([xy[0], xy[0] + wh[0]], 1).astype(np.float32)
    g = np.concatenate([xy[1][:7], xy[1][:7] + wh[1][:7]], 1).astype(np.float32)
    for kind, fn in (("iot", iot), ("iou", iou)):
        np.testing.assert_allclose(np.asarray(fn(a, g)), volta_overlaps(a, g, kind), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("threshold, want", [
    (0.5, [0, 0, 1, 0, 0, 1]),  # 0.25 and 0.0625 of gold 0 are not > 0.5; region 5 covers all of gold 1
    (0.2, [0, 1, 1, 0, 0, 1]),
    (0.0, [0, 1, 1, 1, 0, 1]),  # any intersection
    (1.0, [0, 0, 0, 0, 0, 0]),  # strictly greater: nothing exceeds 1
])
def test_aligned_regions_any_gold_box_never_img_or_padding_box(threshold, want):
    got = aligned_regions(BOXES, REF, REF_MASK, ALIGNABLE, threshold)
    np.testing.assert_array_equal(np.asarray(got), np.array(want, bool))
    # the padding gold box [0,0,0,0] would align the [IMG] and nothing else; masked, it aligns nothing
    assert not np.asarray(aligned_regions(BOXES, REF[2:], np.array([0]), np.ones(6), 0.0)).any()


def test_target_is_the_aligned_region_with_highest_iou_and_batches():
    aligned = aligned_regions(BOXES, REF, REF_MASK, ALIGNABLE, 0.0)
    index, has = target_region(BOXES, REF, REF_MASK, aligned)
    assert int(index) == 2 and bool(has)  # IoU 1.0 with gold 0
    # without region 2: region 1 (IoU 0.25 with gold 0) ties region 5 (0.25 with gold 1); the first wins
    aligned = aligned.at[2].set(False)
    assert int(target_region(BOXES, REF, REF_MASK, aligned)[0]) == 1
    # batched: one example with no aligned region gets index 0 and has_target False
    boxes = jnp.stack([BOXES, BOXES])
    ref = jnp.stack([REF, REF])
    al = aligned_regions(boxes, ref, jnp.stack([REF_MASK, REF_MASK]), jnp.stack([ALIGNABLE, ALIGNABLE]),
                         jnp.array([0.5, 1.0])[:, None, None])
    idx, has = target_region(boxes, ref, jnp.stack([REF_MASK, REF_MASK]), al)
    np.testing.assert_array_equal(np.asarray(idx), [2, 0])
    np.testing.assert_array_equal(np.asarray(has), [True, False])
