"""The V&L BERTs: embeddings -> plan-driven encoder -> poolers -> pretraining heads.

``get_model("uniter")`` (or ``visualbert``, ``vl-bert``, ``lxmert``, ``vilbert``) returns a
``VLBertForPreTraining`` at VOLTA's ctrl sizes; ``get_model(name, tiny=True)`` the test size;
any ``VLConfig`` field or plan key can be overridden.

Inputs (batch B, text length Lt, Lv regions including the global ``[IMG]`` row 0):
``input_ids`` [B, Lt] int, ``features`` [B, Lv, v_feature_size], ``locations`` [B, Lv, num_locs],
``token_type_ids`` [B, Lt] (default 0), ``text_mask`` [B, Lt] and ``region_mask`` [B, Lv] (1 = real).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from jaxvl.models.attention import attention_bias
from jaxvl.models.layers import constrain_stream, dense, dropout
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.embeddings import SHARED_EMBEDDINGS, VISUAL_EMBEDDINGS, TextEmbeddings
from jaxvl.models.volta.encoder import Encoder
from jaxvl.models.volta.heads import ImagePredictionHead, MLMHead, Pooler
from jaxvl.models.volta.presets import preset_config, tiny_overrides


@struct.dataclass
class VLOutput:
    """What a forward pass returns. Hidden states: a tuple of depth+1 (text, vision) pairs, or None."""

    text: jax.Array  # [B, Lt, hidden]
    vision: jax.Array  # [B, Lv, v_hidden]
    pooled_text: jax.Array | None = None  # [B, pooler_size]
    pooled_vision: jax.Array | None = None  # [B, v_pooler_size]
    pooled: jax.Array | None = None  # [B, pooler_size], fused
    hidden_states: tuple | None = None
    mlm_logits: jax.Array | None = None  # [B, Lt, vocab_size] (never padded); [B, P, ..] at ``text_positions``
    visual_logits: dict[str, jax.Array] | None = None  # {target: [B, Lv, size]}; [B, Q, size] at ``region_positions``
    itm_logits: jax.Array | None = None  # [B, itm_dim]


class VLBertModel(nn.Module):
    """VOLTA's ``BertModel``: embeddings, encoder and poolers (parameter names ``embeddings``,
    ``v_embeddings`` for dual-stream models, ``encoder``, ``t_pooler``, ``v_pooler``)."""

    cfg: VLConfig
    sow_weights: bool = False

    def setup(self):
        c = self.cfg
        if c.dual_stream:
            self.embeddings = TextEmbeddings(c)
            self.v_embeddings = VISUAL_EMBEDDINGS[c.image_embeddings](c)
        else:
            self.embeddings = SHARED_EMBEDDINGS[c.image_embeddings](c)
        self.encoder = Encoder(c, self.sow_weights)
        if c.fusion_method != "none":
            self.t_pooler = Pooler(c.pooler_size, c.fusion_act, c.dtype, c.weight_grad_dtype)
        if c.fusion_method in ("mul", "sum"):
            self.v_pooler = Pooler(c.v_pooler_size, c.fusion_act, c.dtype, c.weight_grad_dtype)

    def word_logits(self, hidden: jax.Array) -> jax.Array:
        """[..., hidden] -> [..., padded_vocab_size]: scores against the word-embedding table (the tied MLM
        decoder), padding rows included (``MLMHead`` slices them off)."""
        return self.embeddings.word_embeddings.attend(hidden.astype(jnp.dtype(self.cfg.dtype)))

    def __call__(self, input_ids, features, locations, token_type_ids=None, text_mask=None, region_mask=None,
                 deterministic: bool = True, output_hidden_states: bool = False) -> VLOutput:
        c = self.cfg
        token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        text_mask = jnp.ones(input_ids.shape, jnp.int32) if text_mask is None else text_mask
        region_mask = jnp.ones(features.shape[:2], jnp.int32) if region_mask is None else region_mask
        if c.dual_stream:
            t = self.embeddings(input_ids, token_type_ids, deterministic)
            v = self.v_embeddings(features, locations, deterministic)
        else:
            t, v = self.embeddings(input_ids, token_type_ids, features, locations, deterministic)
        t, v = constrain_stream(t), constrain_stream(v)
        (t, v), states = self.encoder(t, v, attention_bias(text_mask), attention_bias(region_mask),
                                      deterministic, output_hidden_states)
        return self.pool(t, v, states)

    def pool(self, t: jax.Array, v: jax.Array, states: tuple | None = None) -> VLOutput:
        """The final streams (and hidden states) with the poolers' outputs."""
        c = self.cfg
        pooled_t = self.t_pooler(t) if c.fusion_method != "none" else None
        pooled_v = self.v_pooler(v) if c.fusion_method in ("mul", "sum") else None
        return VLOutput(text=t, vision=v, pooled_text=pooled_t, pooled_vision=pooled_v, hidden_states=states)

    def text_prefix(self, input_ids: jax.Array, token_type_ids: jax.Array, text_mask: jax.Array,
                    deterministic: bool = True) -> jax.Array:
        """Dual-stream models: the text stream [B, Lt, hidden] after the ``cfg.unimodal_prefix`` sub-layers,
        which read the text input only (the vision stream there is a 1-row stand-in, discarded)."""
        t = constrain_stream(self.embeddings(input_ids, token_type_ids, deterministic))
        stand_in = jnp.zeros((t.shape[0], 1, self.cfg.v_hidden_size), t.dtype)
        (t, _), _ = self.encoder(t, stand_in, attention_bias(text_mask), attention_bias(jnp.ones((t.shape[0], 1))),
                                 deterministic, stop=self.cfg.unimodal_prefix)
        return t

    def vision_prefix(self, features: jax.Array, locations: jax.Array, region_mask: jax.Array,
                      deterministic: bool = True) -> jax.Array:
        """Dual-stream models: the vision stream [B, Lv, v_hidden] after the ``cfg.unimodal_prefix`` sub-layers
        (the text stream there is a 1-row stand-in, discarded)."""
        v = constrain_stream(self.v_embeddings(features, locations, deterministic))
        stand_in = jnp.zeros((v.shape[0], 1, self.cfg.hidden_size), v.dtype)
        (_, v), _ = self.encoder(stand_in, v, attention_bias(jnp.ones((v.shape[0], 1))), attention_bias(region_mask),
                                 deterministic, stop=self.cfg.unimodal_prefix)
        return v

    def from_prefix(self, t: jax.Array, v: jax.Array, text_mask: jax.Array, region_mask: jax.Array,
                    deterministic: bool = True) -> VLOutput:
        """The sub-layers after ``cfg.unimodal_prefix`` and the poolers, from the two prefix streams."""
        (t, v), _ = self.encoder(t, v, attention_bias(text_mask), attention_bias(region_mask), deterministic,
                                 start=self.cfg.unimodal_prefix)
        return self.pool(t, v)


def rows_at(hidden: jax.Array, positions: jax.Array | None) -> jax.Array:
    """hidden [B, L, D] at ``positions`` [B, P] (int, each in [0, L)) -> [B, P, D]; all rows when None."""
    if positions is None:
        return hidden
    return jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)


class VLBertForPreTraining(nn.Module):
    """VOLTA's ``BertForVLPreTraining`` without the losses (those live in ``jaxvl.models.volta.objectives``):
    ``bert`` (``VLBertModel``) and the heads ``cls`` (MLM tied to the word table, visual targets, ITM).

    ``text_positions`` [B, P] / ``region_positions`` [B, Q] (optional, int): run the MLM / visual heads only at
    those rows (``mlm_logits`` [B, P, vocab], ``visual_logits`` [B, Q, size]). The heads act on each row
    alone, so the logits equal the all-rows logits taken at those rows; a caller that scores a few rows
    (the ablation: the masked phrase, the target region) skips the vocabulary projection everywhere else.
    """

    cfg: VLConfig
    sow_weights: bool = False

    def setup(self):
        c = self.cfg
        self.bert = VLBertModel(c, self.sow_weights)
        self.mlm = MLMHead(c)
        self.image_predictions = ImagePredictionHead(c)
        if c.fusion_method != "none":
            self.itm = dense(c.itm_dim, ("pooler", "classes"), dtype=c.dtype, name="itm", xavier=True,
                             weight_grad_dtype=c.weight_grad_dtype)

    def __call__(self, input_ids, features, locations, token_type_ids=None, text_mask=None, region_mask=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 text_positions: jax.Array | None = None, region_positions: jax.Array | None = None) -> VLOutput:
        out = self.bert(input_ids, features, locations, token_type_ids, text_mask, region_mask,
                        deterministic, output_hidden_states)
        return self.heads(out, deterministic, text_positions, region_positions)

    def heads(self, out: VLOutput, deterministic: bool = True, text_positions: jax.Array | None = None,
              region_positions: jax.Array | None = None) -> VLOutput:
        """``out`` with the fused pooled vector and the MLM, visual and ITM logits."""
        c = self.cfg
        fused = {"mul": lambda: out.pooled_text * out.pooled_vision, "sum": lambda: out.pooled_text + out.pooled_vision,
                 "text": lambda: out.pooled_text, "none": lambda: None}[c.fusion_method]()
        pooled = None if fused is None else dropout(self, fused, 0.1, deterministic)
        return out.replace(
            pooled=pooled,
            mlm_logits=self.mlm(rows_at(out.text, text_positions), self.bert.word_logits),
            visual_logits=self.image_predictions(rows_at(out.vision, region_positions)),
            itm_logits=None if pooled is None else self.itm(pooled).astype(jnp.float32),
        )

    # The unimodal prefix apart (dual-stream models, ``cfg.unimodal_prefix`` > 0): ``from_prefix(text_prefix(..),
    # vision_prefix(..), ..)`` equals ``__call__``, and a caller evaluating many inputs that share one stream
    # (the ablation's conditions, EMAP's pairings) computes that stream's prefix once.

    def text_prefix(self, input_ids: jax.Array, token_type_ids: jax.Array | None = None,
                    text_mask: jax.Array | None = None) -> jax.Array:
        """[B, Lt] ids -> the text stream [B, Lt, hidden] after the unimodal prefix (deterministic)."""
        self._check_prefix()
        token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        text_mask = jnp.ones(input_ids.shape, jnp.int32) if text_mask is None else text_mask
        return self.bert.text_prefix(input_ids, token_type_ids, text_mask)

    def vision_prefix(self, features: jax.Array, locations: jax.Array, region_mask: jax.Array | None = None
                      ) -> jax.Array:
        """[B, Lv, D] features -> the vision stream [B, Lv, v_hidden] after the unimodal prefix (deterministic)."""
        self._check_prefix()
        region_mask = jnp.ones(features.shape[:2], jnp.int32) if region_mask is None else region_mask
        return self.bert.vision_prefix(features, locations, region_mask)

    def from_prefix(self, text: jax.Array, vision: jax.Array, text_mask: jax.Array | None = None,
                    region_mask: jax.Array | None = None, text_positions: jax.Array | None = None,
                    region_positions: jax.Array | None = None) -> VLOutput:
        """The rest of the encoder, the poolers and the heads from the two prefix streams (deterministic)."""
        self._check_prefix()
        text_mask = jnp.ones(text.shape[:2], jnp.int32) if text_mask is None else text_mask
        region_mask = jnp.ones(vision.shape[:2], jnp.int32) if region_mask is None else region_mask
        out = self.bert.from_prefix(text, vision, text_mask, region_mask)
        return self.heads(out, True, text_positions, region_positions)

    def _check_prefix(self) -> None:
        if self.cfg.unimodal_prefix == 0:
            raise ValueError("this model has no unimodal prefix (cfg.unimodal_prefix == 0: single-stream embeddings "
                             "mix the two inputs); run the whole model")

    def dummy_inputs(self, batch: int = 2, text_len: int = 8, regions: int = 5) -> dict[str, jax.Array]:
        """Zero-filled inputs of the right shapes and dtypes, for ``init`` and shape checks."""
        c = self.cfg
        return dict(input_ids=jnp.zeros((batch, text_len), jnp.int32),
                    features=jnp.zeros((batch, regions, c.v_feature_size), jnp.float32),
                    locations=jnp.zeros((batch, regions, c.num_locs), jnp.float32))


def get_config(name: str, tiny: bool = False, **overrides: Any) -> VLConfig:
    """The preset ``name`` (VOLTA ctrl sizes, or test sizes with ``tiny``) with ``overrides`` applied."""
    cfg = preset_config(name)
    if tiny:
        overrides = {**tiny_overrides(name), **overrides}
    return cfg.replace(**overrides) if overrides else cfg


def get_model(name: str, tiny: bool = False, sow_weights: bool = False, **overrides: Any) -> VLBertForPreTraining:
    """A ``VLBertForPreTraining`` for ``visualbert``, ``uniter``, ``vl-bert``, ``lxmert`` or ``vilbert``."""
    return VLBertForPreTraining(get_config(name, tiny, **overrides), sow_weights)
