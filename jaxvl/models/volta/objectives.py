"""Pretraining objectives and masking as pure ``jnp`` functions of ``(batch, rng)``.

Everything here runs inside the compiled step (no host-side numpy), so a sweep member's masking
policy is data and every host of a pod stays free. Facts from VOLTA (reference section 4):

- Tokens: each caption token independently with p = 0.15 becomes a target; of those 80% -> ``[MASK]``,
  10% -> a random id in [0, vocab), 10% unchanged. ``[CLS]``, ``[SEP]`` and padding never. Labels -1
  elsewhere.
- Regions: each real region with p = 0.15 becomes a target (label 1, else -1); of those 90% have their
  feature zeroed. The global ``[IMG]`` row is never a target.
- Overlap ("co-masking"): regions whose IoU (or IoT) with a sampled region exceeds a threshold are
  excluded from the ``[IMG]`` mean's divisor. VOLTA's released code stops there (``volta_compat``);
  true co-masking also zeroes them.
- ``[IMG]`` = sum of the (masked) region features / max(1, #regions not excluded).
- Sweeps (``jaxvl.pretrain.sweep``): the masking probabilities and the overlap threshold may be traced
  scalars instead of python floats, so members of one compiled sweep differ in them. A threshold above
  1 (``NO_OVERLAP`` = 2.0, VOLTA's "none") is the traced form of ``threshold=None``: it excludes exactly
  the sampled regions, as ``None`` does.
- Losses: MLM cross-entropy over targets; MRC-KL = KL(detector distribution || softmax(pred)) summed
  over classes and target regions / #targets; MRC-XE = cross-entropy to the 1600-way detector argmax
  weighted by its confidence / #targets; MRFR = squared error / (#targets x D); ITM cross-entropy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE = -1
# An overlap threshold no IoU / IoT (both <= 1) exceeds: co-masking off, as VOLTA's "none" (2.0).
NO_OVERLAP = 2.0


# ------------------------------------------------------------------------------------------ masking


def mask_tokens(rng: jax.Array, input_ids: jax.Array, candidates: jax.Array, mask_id: int, vocab_size: int,
                prob: float | jax.Array = 0.15) -> tuple[jax.Array, jax.Array]:
    """BERT masking. ``input_ids`` [B, L] int; ``candidates`` [B, L] bool (caption tokens: not
    ``[CLS]``/``[SEP]``/padding); ``prob`` a python float or a float32 [] array (the same bits either way).
    Returns (masked ids [B, L], labels [B, L]: original id or -1)."""
    pick, how, rand = jax.random.split(rng, 3)
    target = candidates & jax.random.bernoulli(pick, prob, input_ids.shape)
    u = jax.random.uniform(how, input_ids.shape)
    random_ids = jax.random.randint(rand, input_ids.shape, 0, vocab_size, dtype=input_ids.dtype)
    replaced = jnp.where(u < 0.8, mask_id, jnp.where(u < 0.9, random_ids, input_ids))
    return jnp.where(target, replaced, input_ids), jnp.where(target, input_ids, IGNORE)


def box_overlaps(boxes: jax.Array, kind: str = "iou") -> jax.Array:
    """Pairwise overlaps of pixel boxes [..., R, 4] (x1y1x2y2, VOLTA's +1-pixel areas) -> [..., R, R].

    ``iou``: intersection / union. ``iot``: intersection / area of the second box (column), i.e. how
    much of region j a region i covers.
    """
    x1, y1, x2, y2 = (boxes[..., k] for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    iw = jnp.maximum(jnp.minimum(x2[..., :, None], x2[..., None, :]) - jnp.maximum(x1[..., :, None], x1[..., None, :])
                     + 1, 0)
    ih = jnp.maximum(jnp.minimum(y2[..., :, None], y2[..., None, :]) - jnp.maximum(y1[..., :, None], y1[..., None, :])
                     + 1, 0)
    inter = iw * ih
    if kind == "iou":
        return inter / (area[..., :, None] + area[..., None, :] - inter)
    if kind == "iot":
        return inter / area[..., None, :]
    raise ValueError(f"overlap kind {kind!r}; expected 'iou' or 'iot'")


def mask_regions(rng: jax.Array, features: jax.Array, region_mask: jax.Array, boxes: jax.Array,
                 prob: float | jax.Array = 0.15, zero_prob: float = 0.9, threshold: float | jax.Array | None = 0.4,
                 kind: str = "iou", volta_compat: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Region masking of the R real-region rows (no ``[IMG]`` row in these inputs).

    ``features`` [B, R, D], ``region_mask`` [B, R] (1 = real), ``boxes`` [B, R, 4] pixels.
    Returns (masked features [B, R, D], labels [B, R]: 1 target / -1 otherwise, excluded [B, R] bool:
    rows left out of the ``[IMG]`` divisor). ``threshold=None`` turns overlap off, as does a (possibly
    traced) threshold above 1 such as ``NO_OVERLAP``; ``prob`` and ``threshold`` may be float32 [] arrays.
    With ``volta_compat`` overlapping regions only change the divisor; otherwise they are zeroed too.
    """
    pick, how = jax.random.split(rng)
    real = region_mask.astype(bool)
    target = real & jax.random.bernoulli(pick, prob, real.shape)
    zero = target & (jax.random.uniform(how, real.shape) < zero_prob)
    return apply_region_masking(features, region_mask, boxes, target, zero, threshold, kind, volta_compat)


def apply_region_masking(features: jax.Array, region_mask: jax.Array, boxes: jax.Array, target: jax.Array,
                         zero: jax.Array, threshold: float | jax.Array | None = 0.4, kind: str = "iou",
                         volta_compat: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``mask_regions`` for given ``target`` / ``zero`` [B, R] bool (e.g. the regions a phrase aligns with).

    Returns (masked features, labels 1 / -1, excluded) as ``mask_regions`` does.
    """
    real = region_mask.astype(bool)
    target = target & real
    if threshold is None:
        excluded = target
    else:
        over = box_overlaps(boxes, kind) > threshold  # [B, R(sampled i), R(j)]
        excluded = (jnp.any(over & target[..., :, None], axis=-2) & real) | target  # padding rows never
    if not volta_compat:
        zero = zero | (excluded & ~target & real)
    masked = jnp.where(zero[..., None], jnp.zeros_like(features), features)
    return masked, jnp.where(target, 1, IGNORE), excluded


def global_region_feature(features: jax.Array, region_mask: jax.Array, excluded: jax.Array,
                          volta_compat: bool = True) -> jax.Array:
    """The ``[IMG]`` feature [B, D]: sum of the region rows / max(1, #rows not excluded).

    VOLTA counts every row of the fixed-size region block, padding included (``volta_compat``);
    otherwise only real regions count, so it is the mean over visible real regions.
    """
    keep = ~excluded if volta_compat else (~excluded & region_mask.astype(bool))
    count = jnp.maximum(keep.sum(-1, keepdims=True), 1).astype(features.dtype)
    return features.sum(-2) / count


# ------------------------------------------------------------------------------------------- losses


def _mean_over_targets(per_item: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(targets, per_item, 0.0)) / jnp.maximum(targets.sum(), 1)


def mlm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) over tokens with a label != -1. ``logits`` [B, L, V], ``labels`` [B, L]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    return _mean_over_targets(nll, labels != IGNORE)


def mrc_kl_loss(logits: jax.Array, target_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """MRC-KL: sum over classes of p (log p - log softmax(logits)), averaged over target regions.

    ``logits`` [B, R, C], ``target_probs`` [B, R, C] (the detector distribution), ``labels`` [B, R].
    """
    logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    p = target_probs.astype(jnp.float32)
    kl = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - logq), 0.0), axis=-1)
    return _mean_over_targets(kl, labels == 1)


def mrc_xe_loss(logits: jax.Array, class_ids: jax.Array, confidences: jax.Array, labels: jax.Array) -> jax.Array:
    """MRC-XE: cross-entropy to the detector's argmax class, times its confidence, averaged over targets.

    ``logits`` [B, R, K] (VOLTA's 1600-way head), ``class_ids`` [B, R] in [0, K), ``confidences`` [B, R].
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, class_ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return _mean_over_targets(nll * confidences, labels == 1)


def mrfr_loss(predicted: jax.Array, target_features: jax.Array, labels: jax.Array) -> jax.Array:
    """MRFR: squared error summed over target regions and dims / (#targets x D). [B, R, D] inputs."""
    se = jnp.sum((predicted.astype(jnp.float32) - target_features.astype(jnp.float32)) ** 2, axis=-1)
    return _mean_over_targets(se, labels == 1) / predicted.shape[-1]


def itm_loss(logits: jax.Array, is_mismatched: jax.Array) -> jax.Array:
    """ITM cross-entropy: ``logits`` [B, 2], label 0 = matched caption, 1 = swapped caption."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, is_mismatched[:, None].astype(jnp.int32), axis=-1))
