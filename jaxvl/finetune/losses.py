"""VOLTA's downstream losses and per-example scores, as pure ``jnp`` functions of the task heads' logits.

Formulas from ``volta/task_utils.py`` (``ForwardModelsTrain`` / ``ForwardModelsVal``, ``compute_score_with_logits``,
``LossMap``) with the targets of ``volta/datasets/*``; loss names from ``config_tasks/all_trainval_tasks.yml``:

- VL-classifier (VQA), VL-classifier-GQA (GQA): BCE-with-logits on the soft scores [B, C], mean over B x C,
  times C (``loss.mean() * target.size(1)``); score: the target score of the argmax answer (VQA score; with
  GQA's one-hot targets, accuracy).
- VL-binary-classifier (NLVR2), VL-tri-classifier (SNLI-VE): BCE-with-logits on the one-hot label [B, C], mean
  (``loss.mean()``, no factor); score: accuracy (the one-hot score of the argmax).
- V-logit (RefCOCO/+/g): BCE-with-logits against each region's IoU with the gold box [B, R], mean times R
  (padded regions: IoU 0 and logit -10000, so ~0 in the sum, but counted in the mean, as VOLTA's); score: the
  argmax region's IoU > 0.5.
- VL-logit (retrieval): cross-entropy over each example's K options (VOLTA's training: K = 4, [positive, random
  caption, random image, hard negative], target 0); score: argmax option == target.

Every loss takes an optional ``mask`` [B] (1 = a real example): the mean then runs over real examples only
(a padded last batch); without it the number is VOLTA's. ``task_loss`` / ``task_score`` dispatch on a
``TaskSpec``'s type. Shape mismatches are a ValueError naming the argument, raised while tracing.

Deliberate differences from VOLTA: SNLI-VE is trained with VOLTA's configured ``BCEWithLogitLoss`` on its
one-hot label, not a softmax cross-entropy; ``refer_score`` given ``region_mask`` takes the argmax over real
regions only (VOLTA's argmax runs over all rows, where padded ones sit 10000 below: the same pick unless a
padded row's raw logit beats every real one by 10000). Exact ties for the maximum share the score evenly (the
expectation of a random tie-break; VOLTA's ``torch.max`` takes the first index): otherwise a collapsed head, whose
logits are all equal, would score 100% on retrieval's 4 options (the positive is always first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvl.models.volta.task_heads import TaskSpec

REFER_IOU_THRESHOLD = 0.5  # a RefCOCO pick is right when its IoU with the gold box exceeds this


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise ``BCEWithLogitsLoss(reduction="none")``: max(x, 0) - x y + log(1 + exp(-|x|))."""
    x = logits.astype(jnp.float32)
    return jnp.maximum(x, 0.0) - x * targets.astype(jnp.float32) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _check(name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if tuple(got) != tuple(want):
        raise ValueError(f"{name}: shape {tuple(got)}, expected {tuple(want)}")


def _squeeze_regions(name: str, x: jax.Array) -> jax.Array:
    """[B, R, 1] (VOLTA's V-logit layout) or [B, R] -> [B, R]."""
    if x.ndim == 3 and x.shape[-1] == 1:
        return x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"{name}: shape {x.shape}, expected [B, R] or [B, R, 1]")
    return x


def _mean(per_example: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of [B] values, over the rows with ``mask`` 1 when given."""
    if mask is None:
        return jnp.mean(per_example)
    _check("mask", mask.shape, per_example.shape)
    m = mask.astype(jnp.float32)
    return jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0)


def vqa_loss(logits: jax.Array, scores: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """VQA / GQA: ``logits`` [B, C], soft ``scores`` [B, C] in [0, 1] -> [] BCE mean x C."""
    _check("scores", scores.shape, logits.shape)
    return _mean(jnp.mean(bce_with_logits(logits, scores), axis=-1), mask) * logits.shape[-1]


def classifier_bce_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """NLVR2 / SNLI-VE: ``logits`` [B, C], int ``labels`` [B] (one-hot targets) -> [] BCE mean, no factor."""
    _check("labels", labels.shape, logits.shape[:1])
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return _mean(jnp.mean(bce_with_logits(logits, one_hot), axis=-1), mask)


def refer_loss(logits: jax.Array, iou: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """RefCOCO/+/g: ``logits`` [B, R] or [B, R, 1] (padded regions at -10000), ``iou`` [B, R] (or [B, R, 1]; 0 on
    padded regions) -> [] BCE mean x R."""
    logits, iou = _squeeze_regions("logits", logits), _squeeze_regions("iou", iou)
    _check("iou", iou.shape, logits.shape)
    return _mean(jnp.mean(bce_with_logits(logits, iou), axis=-1), mask) * logits.shape[-1]


def retrieval_loss(logits: jax.Array, target: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
    """Retrieval: ``logits`` [B, K] (or the head's [B * K, 1] with ``target`` given: rows k of an example
    adjacent), ``target`` [B] int (default 0: the positive first) -> [] mean cross-entropy over the K options."""
    if target is not None and logits.ndim == 2 and logits.shape[-1] == 1:
        if logits.shape[0] % target.shape[0]:
            raise ValueError(f"logits: {logits.shape[0]} rows do not split into {target.shape[0]} examples")
        logits = logits.reshape(target.shape[0], -1)
    target = jnp.zeros(logits.shape[:1], jnp.int32) if target is None else target
    _check("target", target.shape, logits.shape[:1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return _mean(-jnp.take_along_axis(logp, target[:, None].astype(jnp.int32), axis=-1)[:, 0], mask)


def tie_shares(logits: jax.Array) -> jax.Array:
    """[B, C] logits -> float32 [B, C]: 1 / t on the t entries of each row equal to its maximum, 0 elsewhere (the
    probability that an argmax with uniformly random tie-breaking picks each entry)."""
    x = logits.astype(jnp.float32)
    tied = (x == jnp.max(x, axis=-1, keepdims=True)).astype(jnp.float32)
    return tied / jnp.sum(tied, axis=-1, keepdims=True)


def score_of_argmax(logits: jax.Array, scores: jax.Array) -> jax.Array:
    """``compute_score_with_logits`` summed over classes: [B, C] logits and target scores -> [B], the target
    score of each row's argmax (VQA score with soft scores, accuracy with one-hot targets); tied maxima share it."""
    _check("scores", scores.shape, logits.shape)
    return jnp.sum(tie_shares(logits) * scores.astype(jnp.float32), axis=-1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """[B, C] logits, int [B] labels -> [B] float: 1.0 where the argmax is the label (1 / t when t classes tie for
    the maximum, the label among them)."""
    _check("labels", labels.shape, logits.shape[:1])
    return jnp.take_along_axis(tie_shares(logits), labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def refer_pick(logits: jax.Array, region_mask: jax.Array | None = None) -> jax.Array:
    """[B, R] or [B, R, 1] region logits -> [B] int: the argmax region, over real regions only when
    ``region_mask`` [B, R] is given (a padded region is never picked; a row with none real picks 0)."""
    logits = _squeeze_regions("logits", logits).astype(jnp.float32)
    if region_mask is not None:
        _check("region_mask", region_mask.shape, logits.shape)
        logits = jnp.where(region_mask.astype(bool), logits, -jnp.inf)
    return jnp.argmax(logits, axis=-1)


def refer_score(logits: jax.Array, iou: jax.Array, region_mask: jax.Array | None = None) -> jax.Array:
    """RefCOCO/+/g accuracy per example: [B] float 1.0 where the picked region's IoU with the gold box > 0.5 (the
    share of such regions among tied maxima); over real regions only when ``region_mask`` is given."""
    iou = _squeeze_regions("iou", iou)
    logits = _squeeze_regions("logits", logits).astype(jnp.float32)
    _check("iou", iou.shape, logits.shape)
    if region_mask is not None:
        _check("region_mask", region_mask.shape, logits.shape)
        logits = jnp.where(region_mask.astype(bool), logits, -jnp.inf)
    return jnp.sum(tie_shares(logits) * (iou > REFER_IOU_THRESHOLD).astype(jnp.float32), axis=-1)


def task_loss(task: TaskSpec, logits: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """VOLTA's training loss of ``task`` (``ForwardModelsTrain``). ``target``: soft scores [B, C] (VL-classifier
    types), int labels [B] (binary, tri; retrieval: the index of the positive), IoUs [B, R] (V-logit)."""
    if task.type in ("VL-classifier", "VL-classifier-GQA"):
        return vqa_loss(logits, target, mask)
    if task.type in ("VL-binary-classifier", "VL-tri-classifier"):
        return classifier_bce_loss(logits, target, mask)
    if task.type == "V-logit":
        return refer_loss(logits, target, mask)
    return retrieval_loss(logits, target, mask)


def task_score(task: TaskSpec, logits: jax.Array, target: jax.Array, region_mask: jax.Array | None = None
               ) -> jax.Array:
    """[B] per-example score of ``task`` (VOLTA's ``batch_score`` before its sum); targets as ``task_loss``'s."""
    if task.type in ("VL-classifier", "VL-classifier-GQA"):
        return score_of_argmax(logits, target)
    if task.type == "V-logit":
        return refer_score(logits, target, region_mask)
    if task.type == "VL-logit" and logits.ndim == 2 and logits.shape[-1] == 1:
        logits = logits.reshape(target.shape[0], -1)
    return accuracy(logits, target)
