"""Box geometry for the Object Relation Transformer (Herdade et al. 2019), always in float32.

``box_relational_embedding`` turns boxes ``[x_min, y_min, x_max, y_max]`` (relative coordinates) into
the pairwise embedding ``E[b, m, n]`` of box n seen from box m (m indexes queries, n keys); the
encoder computes it once per forward pass. ``GeometryBias`` is one layer's ``W_G``: all heads' ORT
``WGs`` linear maps stacked into one ``[dim, heads]`` kernel, producing the additive attention term
``log(max(relu(E W_G + b), 1e-6))`` of shape ``[B, heads, N, N]``.

With centres ``cx, cy`` and sizes ``w, h`` the four relative coordinates are
``dx = log(max(|cx_m - cx_n| / w_m, 1e-3))``, ``dy`` likewise with ``h_m``, and the size terms
``dw, dh``. Two conventions sit behind named flags (both ``True`` = ORT's code and checkpoints):

- ``legacy_plus_one``: ORT's ``w = x_max - x_min + 1`` (a pixel-coordinate leftover); otherwise
  ``w = x_max - x_min``. Either way ``w`` is clamped below at ``min_size`` so that zero-width,
  inverted and all-zero padding boxes stay finite (with ``+1`` this only touches boxes ORT itself
  would turn into NaN).
- ``legacy_size_ratio``: ORT's ``dw = log(w_m / w_n)``; otherwise the paper's ``log(w_n / w_m)``.

The paper's formula has ``log 0`` on the diagonal; both conventions keep ORT's ``1e-3`` clamp on the
displacement terms. The sinusoidal embedding is ORT's: ``100 * [dx, dy, dw, dh]`` times ``dim / 8``
frequencies ``wave_len ** (-k / (dim / 8))``, laid out ``[sin(4 coords x dim/8) | cos(4 x dim/8)]``,
coordinate-major; without ``trigonometric`` the raw 4 coordinates are the embedding (ORT's
``trignometric_embedding=False``). Arguments reach +-690, far beyond what bfloat16 sin/cos resolve,
hence float32 throughout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

DISPLACEMENT_FLOOR = 1e-3  # ORT's clamp on |dx| / w and |dy| / h
GEOMETRY_FLOOR = 1e-6  # ORT's clamp on relu(E W_G + b) before the log


def box_relative_coordinates(boxes: jax.Array, *, legacy_plus_one: bool = True, legacy_size_ratio: bool = True,
                             min_size: float = 1e-3) -> jax.Array:
    """[B, N, 4] boxes ``[x_min, y_min, x_max, y_max]`` -> [B, N, N, 4] float32 ``(dx, dy, dw, dh)``,
    row m = query box, column n = key box."""
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes: expected [batch, regions, 4] (x_min, y_min, x_max, y_max), got {boxes.shape}")
    b = boxes.astype(jnp.float32)
    x0, y0, x1, y1 = (b[..., i] for i in range(4))
    extra = 1.0 if legacy_plus_one else 0.0
    cx, cy = (x0 + x1) * 0.5, (y0 + y1) * 0.5
    w = jnp.maximum(x1 - x0 + extra, min_size)
    h = jnp.maximum(y1 - y0 + extra, min_size)

    def displacement(c: jax.Array, size: jax.Array) -> jax.Array:
        return jnp.log(jnp.maximum(jnp.abs(c[:, :, None] - c[:, None, :]) / size[:, :, None], DISPLACEMENT_FLOOR))

    def size_ratio(size: jax.Array) -> jax.Array:
        m, n = size[:, :, None], size[:, None, :]
        return jnp.log(m / n) if legacy_size_ratio else jnp.log(n / m)

    return jnp.stack([displacement(cx, w), displacement(cy, h), size_ratio(w), size_ratio(h)], axis=-1)


def box_relational_embedding(boxes: jax.Array, *, dim: int = 64, wave_len: float = 1000.0,
                             trigonometric: bool = True, legacy_plus_one: bool = True,
                             legacy_size_ratio: bool = True, min_size: float = 1e-3) -> jax.Array:
    """[B, N, 4] boxes -> [B, N, N, dim] float32 relational embedding (``dim`` is 4 without ``trigonometric``)."""
    rel = box_relative_coordinates(boxes, legacy_plus_one=legacy_plus_one, legacy_size_ratio=legacy_size_ratio,
                                   min_size=min_size)
    if not trigonometric:
        if dim != 4:
            raise ValueError(f"the non-trigonometric box embedding is the 4 raw coordinates; dim={dim}")
        return rel
    if dim % 8:
        raise ValueError(f"box embedding dim must be a multiple of 8 (4 coordinates x sin/cos); got {dim}")
    n_freq = dim // 8
    freqs = 1.0 / jnp.power(jnp.float32(wave_len), jnp.arange(n_freq, dtype=jnp.float32) / n_freq)
    angles = (100.0 * rel)[..., None] * freqs  # [B, N, N, 4, n_freq]
    angles = angles.reshape(*angles.shape[:-2], 4 * n_freq)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class GeometryBias(nn.Module):
    """One layer's geometry term: [B, N, N, dim] embedding -> [B, heads, N, N] float32
    ``log(max(relu(E W_G + b), 1e-6))``. ``kernel`` [dim, heads] stacks ORT's per-head ``WGs``;
    each head's column is initialised like ORT's ``xavier_uniform_`` of a ``Linear(dim, 1)``."""

    num_heads: int

    @nn.compact
    def __call__(self, embedding: jax.Array) -> jax.Array:
        dim = embedding.shape[-1]
        kernel_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=0, out_axis=(),
                                                       batch_axis=(1,))
        bound = dim ** -0.5  # torch's default Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        kernel = self.param("kernel", nn.with_logical_partitioning(kernel_init, (None, "heads")),
                            (dim, self.num_heads), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(
            lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound), ("heads",)),
            (self.num_heads,), jnp.float32)
        w = jnp.einsum("bmnd,dh->bhmn", embedding.astype(jnp.float32), kernel,
                       precision=jax.lax.Precision.HIGHEST) + bias[:, None, None]
        return jnp.log(jnp.maximum(jax.nn.relu(w), GEOMETRY_FLOOR))


def relative_boxes(boxes: jax.Array, image_size: jax.Array) -> jax.Array:
    """Pixel x1y1x2y2 [B, N, 4] and (height, width) [B, 2] -> the captioner's relative boxes in [0, 1]
    (ORT's ``prepro_bbox_relative_coords.py``: divided by [W, H, W, H] and clipped)."""
    h = jnp.asarray(image_size)[:, 0].astype(jnp.float32)
    w = jnp.asarray(image_size)[:, 1].astype(jnp.float32)
    return jnp.clip(jnp.asarray(boxes, jnp.float32) / jnp.stack([w, h, w, h], axis=-1)[:, None, :], 0.0, 1.0)
