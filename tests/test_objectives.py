"""Objectives and masking against hand-computed values on small inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvl.models.volta.objectives import (
    apply_region_masking,
    box_overlaps,
    global_region_feature,
    itm_loss,
    mask_regions,
    mask_tokens,
    mlm_loss,
    mrc_kl_loss,
    mrc_xe_loss,
    mrfr_loss,
)
from jaxvl.runtime.compile import FAST_COMPILE


def test_mask_tokens_statistics_and_never_specials():
    ids = jnp.tile(jnp.arange(10, 50, dtype=jnp.int32), (500, 1))  # 500 x 40
    candidates = jnp.ones(ids.shape, bool).at[:, 0].set(False).at[:, -1].set(False)
    masked, labels = jax.jit(mask_tokens, static_argnums=(3, 4), compiler_options=FAST_COMPILE)(
        jax.random.key(0), ids, candidates, 4, 1000)
    target = np.asarray(labels) != -1
    assert not target[:, 0].any() and not target[:, -1].any()
    assert abs(target[:, 1:-1].mean() - 0.15) < 0.01
    np.testing.assert_array_equal(np.asarray(labels)[target], np.asarray(ids)[target])
    masked, ids_np = np.asarray(masked), np.asarray(ids)
    assert (masked[~target] == ids_np[~target]).all()
    is_mask = masked[target] == 4
    unchanged = masked[target] == ids_np[target]
    assert abs(is_mask.mean() - 0.8) < 0.02
    assert 0.08 < unchanged.mean() < 0.12  # 10% kept, plus random draws that hit the same id (rare)


def test_box_overlaps_by_hand():
    boxes = jnp.array([[0, 0, 9, 9], [5, 5, 14, 14], [0, 0, 4, 4]], jnp.float32)  # areas 100, 100, 25 (+1 rule)
    iou = np.asarray(box_overlaps(boxes, "iou"))
    np.testing.assert_allclose(np.diag(iou), 1.0)
    np.testing.assert_allclose(iou[0, 1], 25 / 175)  # intersection 5x5
    np.testing.assert_allclose(iou[0, 2], 25 / 100)
    iot = np.asarray(box_overlaps(boxes, "iot"))
    np.testing.assert_allclose(iot[0, 2], 1.0)  # box 2 lies inside box 0
    np.testing.assert_allclose(iot[2, 0], 0.25)
    np.testing.assert_allclose(iot[1, 2], 0.0)


def _regions():
    boxes = jnp.array([[[0, 0, 9, 9], [1, 1, 9, 9], [50, 50, 60, 60], [0, 0, 0, 0]]], jnp.float32)
    feats = jnp.arange(1, 13, dtype=jnp.float32).reshape(1, 4, 3)
    mask = jnp.array([[1, 1, 1, 0]])
    return feats, mask, boxes


def test_mask_regions_never_pads_and_zeroes_targets():
    feats = jnp.ones((400, 6, 2))
    mask = jnp.ones((400, 6), jnp.int32).at[:, -2:].set(0)
    boxes = jnp.tile(jnp.array([[0, 0, 9, 9]], jnp.float32) + 20 * jnp.arange(6)[:, None], (400, 1, 1))
    # compiled (FAST_COMPILE): the same random bits as eager, at a seventh of the CPU time
    masked, labels, _ = jax.jit(mask_regions, compiler_options=FAST_COMPILE)(jax.random.key(1), feats, mask, boxes)
    labels = np.asarray(labels)
    assert (labels[:, -2:] == -1).all()
    assert abs((labels[:, :4] == 1).mean() - 0.15) < 0.02
    zeroed = np.asarray(masked).sum(-1) == 0
    assert not zeroed[labels == -1].any()
    assert abs(zeroed[labels == 1].mean() - 0.9) < 0.05


def test_co_masking_true_and_volta_compat():
    """Region 0 is the target; box 1 overlaps it (IoU 81/100 > 0.4); box 2 does not; row 3 is padding."""
    feats, mask, boxes = _regions()
    target = jnp.array([[True, False, False, False]])
    zero = target
    compat = apply_region_masking(feats, mask, boxes, target, zero, threshold=0.4)
    true = apply_region_masking(feats, mask, boxes, target, zero, threshold=0.4, volta_compat=False)
    for masked, labels, excluded in (compat, true):
        assert labels.tolist() == [[1, -1, -1, -1]]
        np.testing.assert_array_equal(excluded, [[True, True, False, False]])
        assert float(jnp.abs(masked[0, 0]).sum()) == 0.0
        np.testing.assert_array_equal(masked[0, 2], feats[0, 2])
    np.testing.assert_array_equal(compat[0][0, 1], feats[0, 1])  # released VOLTA: overlap only changes the divisor
    assert float(jnp.abs(true[0][0, 1]).sum()) == 0.0  # true co-masking zeroes the overlapping region
    none = apply_region_masking(feats, mask, boxes, target, zero, threshold=None)
    np.testing.assert_array_equal(none[2], [[True, False, False, False]])
    iot = apply_region_masking(feats, mask, boxes, target, zero, threshold=0.95, kind="iot")
    np.testing.assert_array_equal(iot[2], [[True, True, False, False]])  # box 1 lies inside box 0: IoT 1.0


def test_targets_never_land_on_padding():
    feats, mask, boxes = _regions()
    _, labels, _ = apply_region_masking(feats, mask, boxes, jnp.ones((1, 4), bool), jnp.ones((1, 4), bool))
    assert labels.tolist() == [[1, 1, 1, -1]]


def test_global_feature_divisor():
    feats = jnp.array([[[2.0], [4.0], [0.0], [0.0]]])  # row 2 zeroed target, row 3 padding
    mask = jnp.array([[1, 1, 1, 0]])
    excluded = jnp.array([[False, False, True, False]])
    # VOLTA: sum 6 / #(not excluded over all 4 rows) = 3 -> 2.0
    np.testing.assert_allclose(global_region_feature(feats, mask, excluded), [[2.0]])
    # real regions only: 6 / 2 = 3.0
    np.testing.assert_allclose(global_region_feature(feats, mask, excluded, volta_compat=False), [[3.0]])
    np.testing.assert_allclose(global_region_feature(feats, mask, jnp.ones((1, 4), bool)), [[6.0]])  # max(1, 0)


def test_mlm_loss_by_hand():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = jnp.array([[0, 1, -1]])
    want = (-math.log(0.5) - math.log(0.8)) / 2
    np.testing.assert_allclose(mlm_loss(logits, labels), want, rtol=1e-6)
    assert float(mlm_loss(logits, jnp.full((1, 3), -1))) == 0.0


def test_mrc_kl_by_hand():
    q = jnp.array([[[0.5, 0.5, 0.0 + 1e-9], [0.2, 0.3, 0.5]]])
    p = jnp.array([[[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]])
    labels = jnp.array([[1, 1]])
    want = (math.log(1 / 0.5) + 0.0) / 2  # KL(p||q) = log 2 for row 0, 0 for row 1 (identical)
    np.testing.assert_allclose(mrc_kl_loss(jnp.log(q), p, labels), want, rtol=1e-5)
    np.testing.assert_allclose(mrc_kl_loss(jnp.log(q), p, jnp.array([[1, -1]])), math.log(2), rtol=1e-5)


def test_mrc_xe_and_mrfr_and_itm_by_hand():
    logits = jnp.log(jnp.array([[[0.25, 0.75], [0.6, 0.4], [0.5, 0.5]]]))
    ids, conf, labels = jnp.array([[1, 0, 1]]), jnp.array([[0.5, 1.0, 1.0]]), jnp.array([[1, 1, -1]])
    want = (0.5 * -math.log(0.75) + 1.0 * -math.log(0.6)) / 2
    np.testing.assert_allclose(mrc_xe_loss(logits, ids, conf, labels), want, rtol=1e-6)

    pred = jnp.array([[[1.0, 2.0], [0.0, 0.0]]])
    target = jnp.array([[[0.0, 0.0], [5.0, 5.0]]])
    np.testing.assert_allclose(mrfr_loss(pred, target, jnp.array([[1, -1]])), (1 + 4) / 2, rtol=1e-6)

    itm = jnp.log(jnp.array([[0.9, 0.1], [0.3, 0.7]]))
    np.testing.assert_allclose(itm_loss(itm, jnp.array([0, 1])), (-math.log(0.9) - math.log(0.7)) / 2, rtol=1e-6)


@pytest.mark.parametrize("kind", ["iou", "iot"])
def test_co_masking_threshold_kinds_are_jittable(kind):
    feats, mask, boxes = _regions()
    fn = jax.jit(lambda k: mask_regions(k, feats, mask, boxes, threshold=0.2, kind=kind))
    assert fn(jax.random.key(3))[0].shape == feats.shape
