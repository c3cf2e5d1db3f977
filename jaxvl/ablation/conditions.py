"""The ablation conditions (reference sections 5.3-5.4): model inputs and per-example losses, in ``jnp``.

Vision-for-language (``vis4lang``, predict the masked phrase): every sub-word of the phrase is
``[MASK]`` (labels: the phrase's token ids) and the vision is ablated at one of three levels:
``none``; ``object``: the regions aligned with the phrase at the IoT threshold; ``all``: every
detector region. Ablated rows take the dataset-mean region feature (boxes, locations and masks
unchanged), then the ``[IMG]`` row is recomputed as the mean of the region rows. Metric: per
example, the mean NLL of the phrase's tokens in bits.

Language-for-vision (``lang4vis``, predict the masked object): the regions aligned with the phrase
are zeroed (pretraining's region mask) and the text is ablated at one of three levels: ``none``;
``phrase``: the phrase's sub-words ``[MASK]``; ``all``: every sub-word ``[MASK]`` (``[CLS]``/``[SEP]``
kept). Metrics at the target region (the aligned region with the highest IoU), in bits: MRC-KL
against the detector distribution (models with the ``"0"`` head), MRC-XE (``"3"`` head: against the
detector argmax, weighted by its confidence; otherwise VOLTA's ``xent_1601`` of the ``"0"`` head), and,
where the example has a LabelMatch label, MRC-XE-VG: cross-entropy against that label.

A condition is data: ``level`` (0, 1, 2 in the orders of ``LEVELS``) and ``threshold`` are traced
scalars, so the conditions stack on a leading axis and ``vmap`` (``jaxvl.ablation.sweep``). So is
``control``: True evaluates the condition's matched control instead (``jaxvl.ablation.controls``: as
much input removed, none of it aligned with the phrase; its draw reads the batch's ``example`` field);
None (the default) leaves controls out of the program.

VOLTA's behaviours that touch the diagnostic (reference section 7, items 5 and 8, and the ``[IMG]``
divisor of item 2) are reproduced by default; ``Quirks`` names the corrected behaviour of each.
Losses use ``jaxvl.models.volta.objectives`` (``mlm_loss``, ``mrc_kl_loss``, ``mrc_xe_loss``) on one example at a time.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxvl.ablation.alignment import aligned_regions, target_region
from jaxvl.ablation.controls import REGION_STREAM, TOKEN_STREAM, matched_control
from jaxvl.models.volta import objectives as obj

Batch = dict[str, jax.Array]

TASKS = ("vis4lang", "lang4vis")
LEVELS = {"vis4lang": ("none", "object", "all"), "lang4vis": ("none", "phrase", "all")}
LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class Quirks:
    """VOLTA's behaviours in the diagnostic. Each field True reproduces VOLTA (the default, for comparability).

    - ``missing_target_as_zero``: a lang4vis example with no aligned region contributes loss 0 and
      counts in the mean (VOLTA puts its target label on ``[IMG]``, slices that row away and divides by
      ``max(count, 1)``). False: such examples are excluded. Either way the report counts them.
    - ``lang4vis_stale_global``: in lang4vis the ``[IMG]`` row keeps the mean of the un-ablated features
      (it leaks the zeroed regions). False: it is recomputed from the zeroed rows as pretraining does
      (sum / number of rows not zeroed).
    - ``xent_1601_off_by_one``: for a model without the ``"3"`` head, lang4vis MRC-XE is the 1601-way
      ``"0"`` head's cross-entropy against the 1600-space ``objects_id`` (VOLTA's ``xent_1601``; one class
      off). False: against ``objects_id + 1``, the same class in the 1601 space.
    - ``global_mean_over_padding``: a recomputed ``[IMG]`` row divides by every region row, padding
      included (VOLTA's ``mean`` over the fixed-size block). False: by the real regions only. Equal
      when every image fills all R rows (Flickr30k's 36 boxes).
    """

    missing_target_as_zero: bool = True
    lang4vis_stale_global: bool = True
    xent_1601_off_by_one: bool = True
    global_mean_over_padding: bool = True

    @classmethod
    def corrected(cls) -> Quirks:
        """Every field False: the corrected behaviour throughout."""
        return cls(**{f.name: False for f in dataclasses.fields(cls)})


def global_layout(add_global: str | None) -> tuple[int, slice] | None:
    """(row of ``[IMG]``, slice of the region rows) for ``add_global_imgfeat``, or None without a global row."""
    if add_global not in ("first", "last", None):
        raise ValueError(f"add_global_imgfeat={add_global!r}; expected 'first', 'last' or None")
    return {"first": (0, slice(1, None)), "last": (-1, slice(None, -1)), None: None}[add_global]


def caption_positions(text_mask: jax.Array) -> jax.Array:
    """bool [B, T]: the sub-word positions of ``[CLS] sub-words [SEP] pad``, i.e. 1 <= p < length - 1."""
    pos = jnp.arange(text_mask.shape[-1])
    length = text_mask.sum(-1, keepdims=True)
    return (pos >= 1) & (pos < length - 1)


def _with_global(features: jax.Array, batch: Batch, excluded: jax.Array, add_global: str | None,
                 over_padding: bool) -> jax.Array:
    """``features`` with the ``[IMG]`` row recomputed from the region rows (rows ``excluded`` left out)."""
    layout = global_layout(add_global)
    if layout is None:
        return features
    g, rows = layout
    region_real = batch["region_target_mask"][:, rows]
    feat = obj.global_region_feature(features[:, rows], region_real, excluded[:, rows], over_padding)
    return features.at[:, g].set(feat.astype(features.dtype))


def alignment(batch: Batch, threshold: jax.Array | float) -> jax.Array:
    """bool [B, L]: detector regions aligned with each example's phrase at ``threshold``."""
    return aligned_regions(batch["boxes"], batch["ref_boxes"], batch["ref_mask"], batch["region_target_mask"],
                           threshold)


def _model_inputs(batch: Batch, input_ids: jax.Array, features: jax.Array) -> Batch:
    out = {k: batch[k] for k in ("text_mask", "token_type_ids", "locations", "region_mask")}
    out.update(input_ids=input_ids, features=features)
    return out


# ---------------------------------------------------------------------------------------- vis4lang


def vis4lang_ablated(batch: Batch, level: jax.Array | int, threshold: jax.Array | float,
                     control: jax.Array | bool | None = None) -> jax.Array:
    """bool [B, L]: the rows vis4lang replaces at ``level`` (0 none, 1 object at ``threshold``, 2 all), or
    where ``control`` is True the rows its matched control replaces (regions not aligned at ``threshold``)."""
    real = batch["region_target_mask"].astype(bool)
    aligned = alignment(batch, threshold)
    ablated = jnp.where(level == 2, real, jnp.where(level == 1, aligned, False))
    if control is None:
        return ablated
    return jnp.where(control, matched_control(real, aligned, level, batch["example"], REGION_STREAM), ablated)


def vis4lang_inputs(batch: Batch, level: jax.Array | int, threshold: jax.Array | float, mean_feature: jax.Array,
                    mask_id: int, add_global: str | None, quirks: Quirks = Quirks(),
                    control: jax.Array | bool | None = None) -> tuple[Batch, jax.Array]:
    """Model inputs and MLM labels [B, T] (phrase ids, -1 elsewhere) of one vis4lang condition (or its
    control, ``vis4lang_ablated``).

    ``mean_feature`` [D] is the dataset-mean region feature that replaces the ablated rows.
    """
    phrase = batch["phrase_mask"].astype(bool)
    ids = batch["input_ids"]
    ablate = vis4lang_ablated(batch, level, threshold, control)
    features = jnp.where(ablate[..., None], mean_feature.astype(batch["features"].dtype), batch["features"])
    features = _with_global(features, batch, jnp.zeros_like(ablate), add_global, quirks.global_mean_over_padding)
    inputs = _model_inputs(batch, jnp.where(phrase, mask_id, ids), features)
    return inputs, jnp.where(phrase, ids, obj.IGNORE)


def phrase_positions(phrase_mask: jax.Array, size: int) -> jax.Array:
    """int32 [B, size]: the positions of each row's phrase sub-words in order, then the row's other positions
    (their labels are ignored). ``size`` must be at least every row's phrase length (``AblationSpec``'s
    ``max_phrase_tokens``, checked per batch by ``run_ablation``); the MLM head then runs at these rows only."""
    order = jnp.argsort(~phrase_mask.astype(bool), axis=-1, stable=True)
    return order[:, :size].astype(jnp.int32)


def phrase_nll_bits(mlm_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """[B]: per example, the mean NLL (bits) over the tokens with a label (0 for an example with none)."""
    per_example = jax.vmap(lambda lg, lb: obj.mlm_loss(lg[None], lb[None]))(mlm_logits, labels)
    return per_example / LN2


# ---------------------------------------------------------------------------------------- lang4vis


def lang4vis_masked(batch: Batch, level: jax.Array | int, control: jax.Array | bool | None = None) -> jax.Array:
    """bool [B, T]: the sub-words lang4vis masks at ``level`` (0 none, 1 phrase, 2 all), or where ``control``
    is True the sub-words its matched control masks (caption sub-words outside the phrase)."""
    caption, phrase = caption_positions(batch["text_mask"]), batch["phrase_mask"].astype(bool)
    masked = jnp.where(level == 2, caption, jnp.where(level == 1, phrase, False))
    if control is None:
        return masked
    return jnp.where(control, matched_control(caption, phrase, level, batch["example"], TOKEN_STREAM), masked)


def lang4vis_inputs(batch: Batch, level: jax.Array | int, threshold: jax.Array | float, mask_id: int,
                    add_global: str | None, quirks: Quirks = Quirks(), control: jax.Array | bool | None = None
                    ) -> tuple[Batch, jax.Array, jax.Array, jax.Array]:
    """Model inputs of one lang4vis condition (or its control, ``lang4vis_masked``), the target region index
    [B], ``has_target`` [B] and the aligned (zeroed) rows [B, L]. ``level``: 0 none, 1 phrase, 2 all."""
    aligned = alignment(batch, threshold)
    index, has_target = target_region(batch["boxes"], batch["ref_boxes"], batch["ref_mask"], aligned)
    features = jnp.where(aligned[..., None], jnp.zeros_like(batch["features"]), batch["features"])
    if not quirks.lang4vis_stale_global:
        features = _with_global(features, batch, aligned, add_global, quirks.global_mean_over_padding)
    text = lang4vis_masked(batch, level, control)
    inputs = _model_inputs(batch, jnp.where(text, mask_id, batch["input_ids"]), features)
    return inputs, index, has_target, aligned


def _at(values: jax.Array, index: jax.Array) -> jax.Array:
    """values [B, L, ...] at row index [B] -> [B, ...]."""
    return jax.vmap(lambda v, i: v[i])(values, index)


def lang4vis_losses(visual_logits: dict[str, jax.Array], batch: Batch, index: jax.Array, has_target: jax.Array,
                    quirks: Quirks = Quirks(), logits_index: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per-example losses [B] in bits at the target region ``index`` [B]: ``mrc_kl`` (``"0"`` head), ``mrc_xe``
    (``"3"`` or ``"0"`` head) and, when the batch has ``vg_label``, ``mrc_xe_vg``. 0 where there is no target.
    ``visual_logits`` {target: [B, L, size]} are read at ``logits_index`` [B] (default ``index``; 0 for logits
    the model computed at the target row only, ``region_positions=index[:, None]``)."""
    logits_index = index if logits_index is None else logits_index
    labels = jnp.where(has_target, 1, obj.IGNORE)[:, None]  # [B, 1]: one target row per example

    def per_example(fn, *rows):  # fn on each example as a batch of one example with one region
        return jax.vmap(lambda lab, *row: fn(*(r[None, None] for r in row), lab[None]))(labels, *rows)

    out = {}
    cls_prob = _at(batch["cls_prob"], index)
    raw_ids = _at(batch["objects_id"], index)
    has_id = raw_ids >= 0  # -1: no detector class (the source's argmax was background)
    ids = jnp.maximum(raw_ids, 0)
    conf = jnp.where(has_id, _at(batch["objects_conf"], index), 0.0)
    if "0" in visual_logits:
        logits0 = _at(visual_logits["0"], logits_index)
        out["mrc_kl"] = per_example(obj.mrc_kl_loss, logits0, cls_prob)
    if "3" in visual_logits:
        out["mrc_xe"] = per_example(obj.mrc_xe_loss, _at(visual_logits["3"], logits_index), ids, conf)
    elif "0" in visual_logits:
        target = ids if quirks.xent_1601_off_by_one else ids + 1
        out["mrc_xe"] = per_example(obj.mrc_xe_loss, logits0, target, has_id.astype(jnp.float32))
    if "vg_label" in batch and ("0" in visual_logits or "3" in visual_logits):
        vg = batch["vg_label"]
        has_label = (vg >= 0).astype(jnp.float32)
        if "0" in visual_logits:
            logits, label = logits0, jnp.maximum(vg, 0)
        else:  # the 1600-way head: the label's K-space index
            logits, label = _at(visual_logits["3"], logits_index), jnp.maximum(vg - 1, 0)
        out["mrc_xe_vg"] = per_example(obj.mrc_xe_loss, logits, label, has_label)
    return {k: v / LN2 for k, v in out.items()}


def detector_rank(batch: Batch, index: jax.Array, has_target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The detector's 0-based rank of the LabelMatch label at the target region (classes with a strictly
    higher probability, background included) and its probability; -1 / 0 without a label or target."""
    probs = _at(batch["cls_prob"], index)  # [B, K+1]
    vg = batch["vg_label"]
    p_label = jnp.take_along_axis(probs, jnp.maximum(vg, 0)[:, None], axis=-1)[:, 0]
    rank = jnp.sum(probs > p_label[:, None], axis=-1).astype(jnp.int32)
    ok = has_target & (vg >= 0)
    return jnp.where(ok, rank, -1), jnp.where(ok, p_label, 0.0)
