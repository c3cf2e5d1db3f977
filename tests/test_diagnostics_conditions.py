"""The ablation conditions on a hand-built batch: which rows and tokens each condition changes, the [IMG] row
under each quirk setting, and the per-example losses in bits."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvl.ablation.conditions import (
    Quirks,
    caption_positions,
    detector_rank,
    lang4vis_inputs,
    lang4vis_losses,
    phrase_nll_bits,
    vis4lang_inputs,
)

MASK = 4
MEAN = np.array([10.0, 20.0], np.float32)


def hand_batch():
    """Two examples, [IMG] + 3 region rows (example 1's third row is padding), 6 text positions."""
    f0 = [[1, 1], [1, 0], [0, 1], [2, 2]]
    f1 = [[2, 2], [3, 3], [1, 1], [0, 0]]
    boxes = [[0, 0, 99, 99], [0, 0, 9, 9], [50, 50, 59, 59], [0, 0, 4, 9]]
    b1 = [[0, 0, 99, 99], [0, 0, 9, 9], [50, 50, 59, 59], [0, 0, 0, 0]]
    return {
        "input_ids": np.array([[2, 10, 11, 12, 3, 0], [2, 13, 14, 3, 0, 0]], np.int32),
        "text_mask": np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], np.int32),
        "token_type_ids": np.zeros((2, 6), np.int32),
        "phrase_mask": np.array([[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]], np.int32),
        "features": np.array([f0, f1], np.float32),
        "locations": np.zeros((2, 4, 5), np.float32),
        "boxes": np.array([boxes, b1], np.float32),
        "region_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32),
        "region_target_mask": np.array([[0, 1, 1, 1], [0, 1, 1, 0]], np.int32),
        "ref_boxes": np.array([[[0, 0, 9, 9], [0, 0, 0, 0]], [[50, 50, 59, 59], [0, 0, 0, 0]]], np.float32),
        "ref_mask": np.array([[1, 0], [1, 0]], np.int32),
        "cls_prob": np.array([[[0] * 4, [0.1, 0.5, 0.3, 0.1], [0.25] * 4, [0.7, 0.1, 0.1, 0.1]],
                              [[0] * 4, [0.25] * 4, [0.0, 0.2, 0.2, 0.6], [0] * 4]], np.float32),
        "objects_id": np.array([[-1, 0, 1, 0], [-1, 0, 2, -1]], np.int32),
        "objects_conf": np.array([[0, 0.5, 0.25, 0.1], [0, 0.25, 0.6, 0]], np.float32),
        "vg_label": np.array([2, -1], np.int32),
    }


@pytest.mark.parametrize("quirks, img1_object, img1_all", [
    (Quirks(), [13 / 3, 23 / 3], [20 / 3, 40 / 3]),  # VOLTA: the [IMG] mean divides by all 3 rows, padding too
    (Quirks.corrected(), [6.5, 11.5], [10.0, 20.0]),  # real regions only
])
def test_vis4lang_rows_tokens_and_global_row(quirks, img1_object, img1_all):
    b = hand_batch()
    # object at IoT > 0.5: example 0 aligns region 1 only (region 3 covers exactly half); example 1 region 2
    inputs, labels = vis4lang_inputs(b, 1, 0.5, MEAN, MASK, "first", quirks)
    f = np.asarray(inputs["features"])
    np.testing.assert_allclose(f[0], [[4, 23 / 3], [10, 20], [0, 1], [2, 2]], rtol=1e-6)
    np.testing.assert_allclose(f[1, 1:], [[3, 3], [10, 20], [0, 0]])
    np.testing.assert_allclose(f[1, 0], img1_object, rtol=1e-6)
    np.testing.assert_array_equal(inputs["input_ids"], [[2, 10, MASK, MASK, 3, 0], [2, MASK, 14, 3, 0, 0]])
    np.testing.assert_array_equal(labels, [[-1, -1, 11, 12, -1, -1], [-1, 13, -1, -1, -1, -1]])
    for key in ("locations", "region_mask", "text_mask", "token_type_ids"):
        np.testing.assert_array_equal(inputs[key], b[key])
    # all: every detector region (never padding) takes the mean; none: only [IMG] is recomputed
    f = np.asarray(vis4lang_inputs(b, 2, 0.5, MEAN, MASK, "first", quirks)[0]["features"])
    np.testing.assert_allclose(f[0], [MEAN] * 4)
    np.testing.assert_allclose(f[1, 1:], [MEAN, MEAN, [0, 0]])
    np.testing.assert_allclose(f[1, 0], img1_all, rtol=1e-6)
    f = np.asarray(vis4lang_inputs(b, 0, 0.5, MEAN, MASK, "first", quirks)[0]["features"])
    np.testing.assert_allclose(f[0], [[1, 1], [1, 0], [0, 1], [2, 2]])


def test_lang4vis_zeroes_aligned_rows_masks_text_and_picks_the_target():
    b = hand_batch()
    inputs, index, has, aligned = lang4vis_inputs(b, 0, 0.4, MASK, "first")
    np.testing.assert_array_equal(aligned, [[0, 1, 0, 1], [0, 0, 1, 0]])
    np.testing.assert_array_equal(index, [1, 2])  # IoU 1.0 beats region 3's 0.5
    np.testing.assert_array_equal(has, [True, True])
    f = np.asarray(inputs["features"])
    np.testing.assert_allclose(f[0], [[1, 1], [0, 0], [0, 1], [0, 0]])  # stale [IMG] (VOLTA)
    np.testing.assert_array_equal(inputs["input_ids"], b["input_ids"])
    # corrected: [IMG] from the rows not zeroed (VOLTA's divisor counts padding rows; corrected: real ones)
    f = np.asarray(lang4vis_inputs(b, 0, 0.4, MASK, "first", Quirks(lang4vis_stale_global=False))[0]["features"])
    np.testing.assert_allclose(f[:, 0], [[0, 1], [1.5, 1.5]])
    f = np.asarray(lang4vis_inputs(b, 0, 0.4, MASK, "first", Quirks.corrected())[0]["features"])
    np.testing.assert_allclose(f[:, 0], [[0, 1], [3, 3]])
    ids = np.asarray(lang4vis_inputs(b, 1, 0.4, MASK, "first")[0]["input_ids"])
    np.testing.assert_array_equal(ids, [[2, 10, MASK, MASK, 3, 0], [2, MASK, 14, 3, 0, 0]])
    ids = np.asarray(lang4vis_inputs(b, 2, 0.4, MASK, "first")[0]["input_ids"])
    np.testing.assert_array_equal(ids, [[2, MASK, MASK, MASK, 3, 0], [2, MASK, MASK, 3, 0, 0]])
    np.testing.assert_array_equal(caption_positions(b["text_mask"]), [[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]])
    # nothing exceeds IoT 1.0: no target, nothing zeroed
    _, index, has, aligned = lang4vis_inputs(b, 0, 1.0, MASK, "first")
    assert not np.asarray(has).any() and not np.asarray(aligned).any()


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_losses_in_bits_at_the_target_with_and_without_the_off_by_one():
    b = hand_batch()
    rng = np.random.default_rng(0)
    logits = {"0": rng.normal(size=(2, 4, 4)).astype(np.float32)}
    index, has = jnp.array([1, 2]), jnp.array([True, False])
    out = {k: np.asarray(v) for k, v in lang4vis_losses(logits, b, index, has).items()}
    p = b["cls_prob"][0, 1]
    kl = np.sum(p * (np.log(p) - log_softmax(logits["0"][0, 1])))
    np.testing.assert_allclose(out["mrc_kl"], [kl / math.log(2), 0.0], rtol=1e-5)
    # VOLTA's xent_1601: the 1601-way scores against the 1600-space id (0 here: class index 0 = background)
    np.testing.assert_allclose(out["mrc_xe"], [-log_softmax(logits["0"][0, 1])[0] / math.log(2), 0], rtol=1e-5)
    fixed = lang4vis_losses(logits, b, index, has, Quirks(xent_1601_off_by_one=False))
    np.testing.assert_allclose(fixed["mrc_xe"], [-log_softmax(logits["0"][0, 1])[1] / math.log(2), 0], rtol=1e-5)
    np.testing.assert_allclose(out["mrc_xe_vg"], [-log_softmax(logits["0"][0, 1])[2] / math.log(2), 0], rtol=1e-5)
    # a model with the 1600-way head: confidence-weighted XE to the id, MRC-XE-VG against the label's K index
    logits3 = {"3": rng.normal(size=(2, 4, 3)).astype(np.float32)}
    out = lang4vis_losses(logits3, b, jnp.array([2, 2]), jnp.array([True, True]))
    assert "mrc_kl" not in out
    np.testing.assert_allclose(out["mrc_xe"], [-log_softmax(logits3["3"][0, 2])[1] * 0.25 / math.log(2),
                                               -log_softmax(logits3["3"][1, 2])[2] * 0.6 / math.log(2)], rtol=1e-5)
    np.testing.assert_allclose(out["mrc_xe_vg"], [-log_softmax(logits3["3"][0, 2])[1] / math.log(2), 0], rtol=1e-5)


def test_phrase_nll_and_detector_rank():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]], np.float32))
    got = phrase_nll_bits(jnp.asarray(logits), jnp.array([[-1, 1, 2]]))
    np.testing.assert_allclose(got, [(-math.log2(0.8) - math.log2(0.6)) / 2], rtol=1e-5)
    assert float(phrase_nll_bits(jnp.asarray(logits), jnp.array([[-1, -1, -1]]))[0]) == 0.0
    b = hand_batch()
    rank, prob = detector_rank(b, jnp.array([1, 2]), jnp.array([True, True]))
    np.testing.assert_array_equal(rank, [1, -1])  # label 2 has p 0.3; only 0.5 is higher
    np.testing.assert_allclose(prob, [0.3, 0.0], rtol=1e-6)
    rank, _ = detector_rank(b, jnp.array([1, 2]), jnp.array([False, True]))
    np.testing.assert_array_equal(rank, [-1, -1])
