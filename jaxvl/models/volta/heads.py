"""Poolers and pretraining heads of VOLTA's ``BertForVLPreTraining``.

- ``Pooler``: act(W h[:, 0]) to ``pooler_size`` (ReLU by default: VOLTA's ``fusion_act``), on
  ``[CLS]`` for text and on the global ``[IMG]`` row for vision.
- ``MLMHead``: dense -> gelu -> LN -> the word-embedding matrix (tied; passed in) + bias.
- ``ImagePredictionHead``: dense -> gelu -> LN (optional: off for VL-BERT) -> one decoder per
  visual target (``"0"``: MRC-KL 1601, ``"3"``: MRC-XE 1600, ``"1"``/``"5"``: MRFR 2048, ...).
- ITM: a dense from the fused pooled vector to ``itm_dim`` (inside ``VLBertForPreTraining``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxvl.models.layers import activation, dense, layer_norm
from jaxvl.models.volta.config import VLConfig


class Pooler(nn.Module):
    """[B, L, hidden] -> [B, size]: the first row through a dense and the fusion activation."""

    size: int
    act: str = "relu"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        return activation(self.act)(dense(self.size, ("embed", "pooler"), dtype=self.dtype, name="dense")(hidden[:, 0]))


class MLMHead(nn.Module):
    """[B, L, hidden] -> [B, L, vocab] logits; ``decode`` maps [.., hidden] onto the word table."""

    cfg: VLConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, decode: Callable[[jax.Array], jax.Array]) -> jax.Array:
        c = self.cfg
        h = dense(c.hidden_size, ("embed", "embed"), dtype=c.dtype, name="transform", xavier=True)(hidden)
        h = layer_norm(c.layer_norm_eps, name="norm")(activation(c.hidden_act)(h))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)), (c.vocab_size,))
        return decode(h).astype(jnp.float32) + bias


class ImagePredictionHead(nn.Module):
    """[B, Lv, v_hidden] -> {target key: [B, Lv, size]} for every visual target with a positive weight."""

    cfg: VLConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> dict[str, jax.Array]:
        c = self.cfg
        h = activation(c.hidden_act)(dense(c.v_hidden_size, ("embed", "embed"), dtype=c.dtype, name="transform",
                                           xavier=True)(hidden))
        if c.image_head_ln:
            h = layer_norm(c.layer_norm_eps, name="norm")(h)
        return {key: dense(size, ("embed", "classes"), dtype=c.dtype, name=f"decoder_{key}", xavier=True)(h)
                .astype(jnp.float32) for key, size in c.visual_targets.items()}
