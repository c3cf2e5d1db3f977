"""The pretraining objective as one pure function of ``(params, batch, rng)``.

``pretraining_loss`` does, inside the compiled step: ITM negatives (a caption swapped with another
example's with probability 0.5), MLM token masking, region masking with optional co-masking, the
``[IMG]`` row recomputed from the masked regions, the model's forward pass, and the weighted losses.

VOLTA's objective modes (``--objective``): 0 = ITM; 1 = ITM, and no MLM/MRC targets on mismatched
pairs (the ctrl default); 2 = no ITM and no negatives. Deliberate difference: a negative caption is
another caption of the same batch (a random permutation), where VOLTA draws one from the corpus.
MRFR regresses the original (unmasked) region features; VOLTA regresses its already-zeroed input.

Sweeps (``jaxvl.pretrain.sweep``) pass the per-member values as traced scalars through the keyword
overrides of ``mask_batch`` / ``pretraining_loss`` (``token_prob``, ``region_prob``,
``overlap_threshold``, ``visual_weights``); without them both functions run exactly as before, from
the static ``ObjectiveConfig`` and the model's ``visual_target_weights``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxvl.models.volta import objectives as obj
from jaxvl.models.volta.model import VLBertForPreTraining

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Masking and loss settings. Token ids come from the tokenizer (``mask_id``, ``cls_id``, ``sep_id``)."""

    mask_id: int
    cls_id: int
    sep_id: int
    objective: int = 1
    token_prob: float = 0.15
    region_prob: float = 0.15
    region_zero_prob: float = 0.9
    overlap_threshold: float | None = 0.4
    overlap_kind: str = "iou"
    volta_compat: bool = True
    itm_prob: float = 0.5

    def __post_init__(self):
        if self.objective not in (0, 1, 2):
            raise ValueError(f"objective={self.objective}; VOLTA's modes are 0, 1 and 2")


def _global_rows(add_global: str | None) -> tuple[int, slice] | None:
    """(index of the [IMG] row, slice of the region rows), or None without a global row."""
    return {"first": (0, slice(1, None)), "last": (-1, slice(None, -1)), None: None}[add_global]


def make_negatives(rng: jax.Array, batch: Batch, prob: float) -> tuple[Batch, jax.Array]:
    """Swaps each example's text for another example's with probability ``prob``.

    Returns the new batch and ``is_mismatched`` [B] int32 (1 = swapped, ITM label 1).
    """
    pick, perm_key = jax.random.split(rng)
    size = batch["input_ids"].shape[0]
    # A permutation without fixed points: shift a random permutation by one position.
    perm = jax.random.permutation(perm_key, size)
    donor = jnp.zeros(size, jnp.int32).at[perm].set(jnp.roll(perm, 1))
    swap = jax.random.bernoulli(pick, prob, (size,)) & (size > 1)
    out = dict(batch)
    for key in ("input_ids", "text_mask", "token_type_ids"):
        if key in batch:
            out[key] = jnp.where(swap[:, None], batch[key][donor], batch[key])
    return out, swap.astype(jnp.int32)


def mask_batch(rng: jax.Array, batch: Batch, ocfg: ObjectiveConfig, vocab_size: int, add_global: str | None, *,
               token_prob: float | jax.Array | None = None, region_prob: float | jax.Array | None = None,
               overlap_threshold: float | jax.Array | None = None) -> tuple[Batch, dict[str, jax.Array]]:
    """ITM negatives, token masking, region masking and the ``[IMG]`` row. Returns (model inputs, targets).

    ``token_prob``, ``region_prob``, ``overlap_threshold``: when given (python floats or float32 []
    arrays, e.g. a sweep member's traced values), they replace ``ocfg``'s; a threshold above 1
    (``objectives.NO_OVERLAP``) turns co-masking off as ``ocfg.overlap_threshold=None`` does.
    """
    token_prob = ocfg.token_prob if token_prob is None else token_prob
    region_prob = ocfg.region_prob if region_prob is None else region_prob
    overlap_threshold = ocfg.overlap_threshold if overlap_threshold is None else overlap_threshold
    neg_key, tok_key, reg_key = jax.random.split(rng, 3)
    if ocfg.objective == 2:
        is_mismatched = jnp.zeros(batch["input_ids"].shape[0], jnp.int32)
    else:
        batch, is_mismatched = make_negatives(neg_key, batch, ocfg.itm_prob)
    ids = batch["input_ids"]
    candidates = batch["text_mask"].astype(bool) & (ids != ocfg.cls_id) & (ids != ocfg.sep_id)
    masked_ids, token_labels = obj.mask_tokens(tok_key, ids, candidates, ocfg.mask_id, vocab_size, token_prob)

    features, region_labels, excluded = obj.mask_regions(
        reg_key, batch["features"], batch["region_target_mask"], batch["boxes"], region_prob,
        ocfg.region_zero_prob, overlap_threshold, ocfg.overlap_kind, ocfg.volta_compat)
    layout = _global_rows(add_global)
    if layout is not None:
        g, rows = layout
        region_feats = features[:, rows]
        region_real = batch["region_target_mask"][:, rows]
        features = features.at[:, g].set(obj.global_region_feature(region_feats, region_real, excluded[:, rows],
                                                                   ocfg.volta_compat))
    if ocfg.objective == 1:  # no MLM / MRC targets on mismatched pairs
        token_labels = jnp.where(is_mismatched[:, None] == 1, obj.IGNORE, token_labels)
        region_labels = jnp.where(is_mismatched[:, None] == 1, obj.IGNORE, region_labels)
    inputs = {k: batch[k] for k in ("text_mask", "token_type_ids", "locations", "region_mask") if k in batch}
    inputs.update(input_ids=masked_ids, features=features)
    targets = dict(token_labels=token_labels, region_labels=region_labels, is_mismatched=is_mismatched,
                   original_features=batch["features"])
    for key in ("cls_prob", "objects_id", "objects_conf"):
        if key in batch:
            targets[key] = batch[key]
    return inputs, targets


def pretraining_loss(model: VLBertForPreTraining, params: Any, batch: Batch, rng: jax.Array, ocfg: ObjectiveConfig,
                     deterministic: bool = False, *, token_prob: float | jax.Array | None = None,
                     region_prob: float | jax.Array | None = None,
                     overlap_threshold: float | jax.Array | None = None,
                     visual_weights: Mapping[str, float | jax.Array] | None = None,
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss (nats) and its parts: ``mlm``, one entry per visual target (``mrc_kl``, ``mrc_xe``,
    ``mrfr``), ``itm``. ``batch`` holds the pipeline's fields (``jaxvl.data.grain``).

    Without overrides the settings are static: ``ocfg``'s, and the model's ``visual_target_weights``
    (heads with weight <= 0 do not exist and add nothing). ``token_prob``, ``region_prob`` and
    ``overlap_threshold`` override ``ocfg`` (see ``mask_batch``). ``visual_weights`` {head key: weight}
    overrides the weights of the model's heads (others keep the model's): every head of the model is
    then computed, reported in the parts and added as ``weight * loss``, so a (traced) weight of 0
    switches a head off without changing the program.
    """
    cfg = model.cfg
    heads = cfg.visual_targets
    if visual_weights is None:
        weights = {key: w for key, w in cfg.visual_target_weights if w > 0}
    else:
        missing = sorted(set(visual_weights) - set(heads))
        if missing:
            raise ValueError(f"visual_weights for heads {missing} the model does not have (its heads: "
                             f"{sorted(heads)}); give the model a positive visual_target_weights entry for each")
        weights = {key: visual_weights.get(key, w) for key, w in cfg.visual_target_weights if key in heads}
    mask_key, drop_key = jax.random.split(rng)
    inputs, targets = mask_batch(mask_key, batch, ocfg, cfg.vocab_size, cfg.add_global_imgfeat, token_prob=token_prob,
                                 region_prob=region_prob, overlap_threshold=overlap_threshold)
    out = model.apply({"params": params}, **inputs, deterministic=deterministic, rngs={"dropout": drop_key})
    parts = {"mlm": obj.mlm_loss(out.mlm_logits, targets["token_labels"])}
    labels = targets["region_labels"]
    total = parts["mlm"]
    for key, weight in weights.items():
        logits = out.visual_logits[key]
        if key == "0":
            name, value = "mrc_kl", obj.mrc_kl_loss(logits, targets["cls_prob"], labels)
        elif key == "3":
            ids = jnp.maximum(targets["objects_id"], 0)
            conf = jnp.where(targets["objects_id"] >= 0, targets["objects_conf"], 0.0)
            name, value = "mrc_xe", obj.mrc_xe_loss(logits, ids, conf, labels)
        elif key in ("1", "5"):
            name, value = "mrfr", obj.mrfr_loss(logits, targets["original_features"], labels)
        else:
            raise NotImplementedError(f"visual target {key!r} has no jaxvl loss yet")
        parts[name] = value
        total = total + weight * value
    if ocfg.objective != 2 and out.itm_logits is not None:
        parts["itm"] = obj.itm_loss(out.itm_logits, targets["is_mismatched"])
        total = total + parts["itm"]
    return total, parts
