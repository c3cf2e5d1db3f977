"""Poolers and pretraining heads of VOLTA's ``BertForVLPreTraining``.

- ``Pooler``: act(W h[:, 0]) to ``pooler_size`` (ReLU by default: VOLTA's ``fusion_act``), on
  ``[CLS]`` for text and on the global ``[IMG]`` row for vision.
- ``MLMHead``: dense -> gelu -> LN -> the word-embedding matrix (tied; passed in) + bias.
- ``ImagePredictionHead``: dense -> gelu -> LN (optional: off for VL-BERT) -> one decoder per
  visual target (``"0"``: MRC-KL 1601, ``"3"``: MRC-XE 1600, ``"1"``/``"5"``: MRFR 2048, ...).
- ITM: a dense from the fused pooled vector to ``itm_dim`` (inside ``VLBertForPreTraining``).

With ``VLConfig.pad_to_multiple_of`` > 1 the MLM bias is ``padded_vocab_size`` wide and the class
decoders ``padded_visual_targets`` wide; both heads slice their logits back to the true sizes, so
callers (softmaxes, losses, probes) never see padding and padding gets no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxvl.models.layers import activation, dense, dense_class, layer_norm
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.embeddings import zero_padded_init


class Pooler(nn.Module):
    """[B, L, hidden] -> [B, size]: the first row through a dense and the fusion activation."""

    size: int
    act: str = "relu"
    dtype: str = "float32"
    weight_grad_dtype: str = "float32"

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        pooled = dense(self.size, ("embed", "pooler"), dtype=self.dtype, name="dense",
                       weight_grad_dtype=self.weight_grad_dtype)(hidden[:, 0])
        return activation(self.act)(pooled)


class MLMHead(nn.Module):
    """[B, L, hidden] -> [B, L, vocab_size] logits; ``decode`` maps [.., hidden] onto the (padded) word table,
    [.., padded_vocab_size]; the bias is [padded_vocab_size] and the padding columns are sliced off."""

    cfg: VLConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, decode: Callable[[jax.Array], jax.Array]) -> jax.Array:
        c = self.cfg
        h = dense(c.hidden_size, ("embed", "embed"), dtype=c.dtype, name="transform", xavier=True,
                  weight_grad_dtype=c.weight_grad_dtype)(hidden)
        h = layer_norm(c.layer_norm_eps, name="norm")(activation(c.hidden_act)(h))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (c.padded_vocab_size,))
        logits = decode(h).astype(jnp.float32) + bias
        return logits if c.padded_vocab_size == c.vocab_size else logits[..., :c.vocab_size]


def padded_decoder(size: int, padded: int, dtype: str, name: str, weight_grad_dtype: str = "float32"
                   ) -> nn.DenseGeneral:
    """A decoder [.., in] -> [.., padded] (kernel axes ``embed``, ``classes``; xavier-uniform) whose columns past
    ``size`` start at zero: ``dense(padded, ...)`` with the kernel drawn at its true width (``zero_padded_init``)."""
    return dense_class(dtype, weight_grad_dtype)(
        padded, dtype=jnp.dtype(dtype), param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(zero_padded_init(nn.initializers.xavier_uniform(), -1, size),
                                                 ("embed", "classes")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)),
    )


class ImagePredictionHead(nn.Module):
    """[B, Lv, v_hidden] -> {target key: [B, Lv, size]} for every visual target with a positive weight
    (decoders ``padded_visual_targets`` wide, outputs sliced to ``visual_targets``' sizes)."""

    cfg: VLConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> dict[str, jax.Array]:
        c = self.cfg
        h = activation(c.hidden_act)(dense(c.v_hidden_size, ("embed", "embed"), dtype=c.dtype, name="transform",
                                           xavier=True, weight_grad_dtype=c.weight_grad_dtype)(hidden))
        if c.image_head_ln:
            h = layer_norm(c.layer_norm_eps, name="norm")(h)
        out = {}
        for key, size in c.visual_targets.items():
            padded = c.padded_visual_targets[key]
            if padded == size:
                decoder = dense(size, ("embed", "classes"), dtype=c.dtype, name=f"decoder_{key}", xavier=True,
                                weight_grad_dtype=c.weight_grad_dtype)
                out[key] = decoder(h).astype(jnp.float32)
            else:
                decoder = padded_decoder(size, padded, c.dtype, f"decoder_{key}", c.weight_grad_dtype)
                out[key] = decoder(h).astype(jnp.float32)[..., :size]
        return out
