"""The one attention module every jaxvl model uses.

``DotProductAttention`` takes projected queries, keys and values split into heads and an additive
bias (padding masks in VOLTA's ``(1 - m) * -10000`` form, the captioner's geometry term, or both
summed). Softmax is always float32; matmuls run in the inputs' dtype with float32 accumulation.
When the probabilities are neither dropped out nor sown, it calls ``jax.nn.dot_product_attention``
(fused kernels where the backend has them); otherwise it computes the same thing explicitly.

``attention_bias`` turns 0/1 masks into that additive bias.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxvl.models.layers import dropout

# VOLTA's (and BERT's) additive mask constant; HF uses finfo.min (same result unless a row is fully masked).
MASK_VALUE = -10000.0


def attention_bias(mask: jax.Array) -> jax.Array:
    """[B, L] 0/1 key mask -> [B, 1, 1, L] float32 additive bias (0 keep, -10000 drop)."""
    return ((1.0 - mask.astype(jnp.float32)) * MASK_VALUE)[:, None, None, :]


class DotProductAttention(nn.Module):
    """softmax(q k^T / sqrt(d) + bias) v over heads.

    Shapes: q [B, Lq, H, D], k and v [B, Lk, H, D], bias broadcastable to [B, H, Lq, Lk] (float32).
    Returns [B, Lq, H, D]. With ``sow_weights`` the probabilities [B, H, Lq, Lk] are sown into the
    ``intermediates`` collection under ``weights``.
    """

    dropout_rate: float = 0.0
    fused: bool = True
    sow_weights: bool = False

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        drop = self.dropout_rate > 0.0 and not deterministic
        if self.fused and not drop and not self.sow_weights:
            if bias is not None:
                bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
            return jax.nn.dot_product_attention(q, k, v, bias=bias)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores * jnp.float32(1.0 / math.sqrt(q.shape[-1]))
        if bias is not None:
            scores = scores + bias
        probs = jax.nn.softmax(scores, axis=-1)
        if self.sow_weights:
            self.sow("intermediates", "weights", probs)
        probs = dropout(self, probs, self.dropout_rate, deterministic)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return ctx.astype(v.dtype)
