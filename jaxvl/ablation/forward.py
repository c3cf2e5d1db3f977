"""One checkpoint under every member of a task: the forward passes inside the compiled sweep.

``vis4lang_forward`` and ``lang4vis_forward`` return one checkpoint's per-example losses (bits) for every
member of their task, [M, B], evaluated together (``vmap``, or ``lax.map`` over chunks of
``member_batch_size``). Two savings, each exact (``AblationSpec`` switches them off to measure them):

- ``scored_rows_only``: the heads run only where a loss is read: the MLM head (the vocabulary projection)
  at the phrase's sub-words, the visual heads at the target region;
- ``share_prefix`` (dual-stream models): in the ``cfg.unimodal_prefix`` leading sub-layers each stream reads
  only its own input, so each distinct stream input goes through them once, not once per member. vis4lang
  varies only the regions: the text prefix runs once for all its members. lang4vis varies the text by
  condition (and control) and the regions by IoT threshold: the text prefix runs once per condition, the
  vision prefix once per threshold (LXMERT, 30 members: 5 + 10 prefix passes instead of 30 of each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvl.ablation.conditions import (
    Batch,
    lang4vis_inputs,
    lang4vis_losses,
    lang4vis_masked,
    phrase_nll_bits,
    phrase_positions,
    vis4lang_inputs,
)
from jaxvl.ablation.spec import AblationSpec
from jaxvl.models.volta.model import VLBertForPreTraining

MemberArrays = tuple[jax.Array, jax.Array, jax.Array]  # levels [M] int, thresholds [M] float, controls [M] bool


def map_members(fn: Callable, xs: Any, batch_size: int | None) -> Any:
    """``vmap(fn)(xs)``, or ``lax.map`` over chunks of ``batch_size`` (vmapped inside each chunk)."""
    if batch_size is None:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=batch_size)


def shares_prefix(model: VLBertForPreTraining, spec: AblationSpec) -> bool:
    """Whether the sweep computes the streams' unimodal prefixes apart (``spec.share_prefix`` and a model
    with a prefix)."""
    return spec.share_prefix and model.cfg.unimodal_prefix > 0


def lang4vis_variants(levels: np.ndarray, thresholds: np.ndarray, controls: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct text inputs (one per (level, control)) and vision inputs (one per threshold) of lang4vis
    members: (text_keys [Nt, 2] (level, control), text_index [M], vision_keys [Nv], vision_index [M])."""
    text_keys, text_index = np.unique(np.stack([levels, controls.astype(np.int32)], 1), axis=0, return_inverse=True)
    vision_keys, vision_index = np.unique(thresholds, return_inverse=True)
    return (text_keys.astype(np.int32), text_index.reshape(-1).astype(np.int32), vision_keys.astype(np.float32),
            vision_index.reshape(-1).astype(np.int32))


class MemberForward:
    """The model evaluated on one batch for one checkpoint ``params``: whole, or from prefix streams."""

    def __init__(self, model: VLBertForPreTraining, params: Any, batch: Batch):
        self.model, self.variables, self.batch = model, {"params": params}, batch

    def __call__(self, inputs: Batch, **positions: jax.Array) -> Any:
        return self.model.apply(self.variables, **inputs, deterministic=True, **positions)

    def text_prefix(self, input_ids: jax.Array) -> jax.Array:
        b = self.batch
        return self.model.apply(self.variables, input_ids, b["token_type_ids"], b["text_mask"],
                                method=self.model.text_prefix)

    def vision_prefix(self, features: jax.Array) -> jax.Array:
        b = self.batch
        return self.model.apply(self.variables, features, b["locations"], b["region_mask"],
                                method=self.model.vision_prefix)

    def from_prefix(self, text: jax.Array, vision: jax.Array, **positions: jax.Array) -> Any:
        b = self.batch
        return self.model.apply(self.variables, text, vision, b["text_mask"], b["region_mask"], **positions,
                                method=self.model.from_prefix)


def vis4lang_forward(model: VLBertForPreTraining, params: Any, batch: Batch, members: MemberArrays,
                     mean_feature: jax.Array, spec: AblationSpec, control: Callable[[Any], Any]
                     ) -> dict[str, jax.Array]:
    """{"mlm": [M, B]}: the masked phrase's mean NLL (bits) under each vis4lang member. ``control(flag)``:
    the member's control flag, or None when the sweep has no controls."""
    run, add_global = MemberForward(model, params, batch), model.cfg.add_global_imgfeat
    text_len = batch["input_ids"].shape[1]
    rows = phrase_positions(batch["phrase_mask"], min(spec.max_phrase_tokens or text_len, text_len))  # [B, P]

    def inputs_of(x):
        return vis4lang_inputs(batch, x[0], x[1], mean_feature, spec.mask_id, add_global, spec.quirks, control(x[2]))

    text = None
    if shares_prefix(model, spec):  # every member masks the same phrase: one text prefix
        first = jax.tree.map(lambda a: a[0], members)
        text = run.text_prefix(inputs_of(first)[0]["input_ids"])

    def member(x):
        inputs, labels = inputs_of(x)
        positions = {"text_positions": rows} if spec.scored_rows_only else {}
        if text is None:
            out = run(inputs, **positions)
        else:
            out = run.from_prefix(text, run.vision_prefix(inputs["features"]), **positions)
        if spec.scored_rows_only:
            labels = jnp.take_along_axis(labels, rows, axis=1)
        return {"mlm": phrase_nll_bits(out.mlm_logits, labels)}

    return map_members(member, members, spec.member_batch_size)


def lang4vis_forward(model: VLBertForPreTraining, params: Any, batch: Batch, members: MemberArrays,
                     spec: AblationSpec, control: Callable[[Any], Any]) -> dict[str, jax.Array]:
    """{metric: [M, B]}: the target region's losses (bits, ``lang4vis_losses``) under each lang4vis member."""
    run, add_global = MemberForward(model, params, batch), model.cfg.add_global_imgfeat

    def inputs_of(level, threshold, flag):
        return lang4vis_inputs(batch, level, threshold, spec.mask_id, add_global, spec.quirks, control(flag))

    def losses(out, index, has):
        if not spec.scored_rows_only:
            return lang4vis_losses(out.visual_logits, batch, index, has, spec.quirks)
        return lang4vis_losses(out.visual_logits, batch, index, has, spec.quirks, logits_index=jnp.zeros_like(index))

    def positions(index):
        return {"region_positions": index[:, None]} if spec.scored_rows_only else {}

    if not shares_prefix(model, spec):
        def member(x):
            inputs, index, has, _ = inputs_of(*x)
            return losses(run(inputs, **positions(index)), index, has)

        return map_members(member, members, spec.member_batch_size)

    text_keys, text_index, vision_keys, vision_index = lang4vis_variants(*(np.asarray(a) for a in members))

    def text_variant(key):  # the text depends on the condition (and control) only
        masked = lang4vis_masked(batch, key[0], control(key[1].astype(bool)))
        return run.text_prefix(jnp.where(masked, spec.mask_id, batch["input_ids"]))

    def vision_variant(threshold):  # the regions depend on the threshold only
        return run.vision_prefix(inputs_of(0, threshold, False)[0]["features"])

    texts = map_members(text_variant, jnp.asarray(text_keys), spec.member_batch_size)  # [Nt, B, Lt, hidden]
    visions = map_members(vision_variant, jnp.asarray(vision_keys), spec.member_batch_size)  # [Nv, B, Lv, v_hidden]

    def shared_member(x):
        level, threshold, flag, t, v = x
        _, index, has, _ = inputs_of(level, threshold, flag)
        return losses(run.from_prefix(texts[t], visions[v], **positions(index)), index, has)

    return map_members(shared_member, (*members, jnp.asarray(text_index), jnp.asarray(vision_index)),
                       spec.member_batch_size)
