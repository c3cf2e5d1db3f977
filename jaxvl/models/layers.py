"""Small building blocks with logical axis names on every parameter.

Logical axes used across jaxvl (mapped to mesh axes by the trainer's rules):
``embed`` (model width), ``heads`` and ``kv`` (attention heads and head size), ``mlp`` (feed-forward
width), ``vocab`` (token and type tables), ``feature`` (region feature width), ``pooler``,
``classes`` (head outputs), ``layers`` (the stacked axis of scanned segments).

Activations carry logical axes too (``jaxvl.runtime.sharding.constrain``): ``constrain_stream`` splits a
stream [B, L, hidden] over the batch axes only (parameters split ``embed`` over 'fsdp'; activations never
do), and ``Embed`` looks rows up in its table as FSDP gathers it. Outside a sharded step (no rules in
context) both are no-ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxvl.runtime.sharding import constrain, constrain_gathered

Axes = tuple[str | None, ...]

STREAM_AXES: Axes = ("batch", None, None)  # a stream [B, L, hidden]


def normal_init(stddev: float, axes: Axes):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), axes)


def dense(features: int | Sequence[int], axes: Axes, *, dtype: str = "float32", name: str | None = None,
          axis: int | Sequence[int] = -1, stddev: float = 0.02, xavier: bool = False) -> nn.DenseGeneral:
    """A ``DenseGeneral`` whose kernel carries ``axes`` (in dims then out dims) and bias the out dims."""
    n_out = 1 if isinstance(features, int) else len(features)
    init = nn.initializers.xavier_uniform() if xavier else nn.initializers.normal(stddev)
    return nn.DenseGeneral(
        features, axis=axis, dtype=jnp.dtype(dtype), param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-n_out:]),
    )


def layer_norm(eps: float, *, axis_name: str = "embed", name: str | None = None) -> nn.LayerNorm:
    """BERT's LayerNorm (epsilon inside the square root; two-pass variance for parity with torch)."""
    return nn.LayerNorm(
        epsilon=eps, use_fast_variance=False, name=name, dtype=jnp.float32, param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)),
    )


class Embed(nn.Embed):
    """``nn.Embed`` (same parameter, same values) whose lookup reads the table as FSDP gathers it
    (``constrain_gathered`` with the table's logical ``axes``), so that under a sharded step the rows it
    returns [..., features] follow the ids' batch split rather than the table's split of ``embed``."""

    axes: Axes = ("vocab", "embed")

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.num_embeddings == 1 or not jnp.issubdtype(inputs.dtype, jnp.integer):
            return super().__call__(inputs)
        table = constrain_gathered(self.embedding, self.axes)
        return jnp.take(table if self.dtype is None else table.astype(self.dtype), inputs, axis=0)


def embed(num: int, features: int, *, name: str | None = None, stddev: float = 0.02,
          axes: Axes = ("vocab", "embed"), dtype: str = "float32") -> Embed:
    return Embed(num, features, dtype=jnp.dtype(dtype), param_dtype=jnp.float32, name=name,
                 embedding_init=normal_init(stddev, axes), axes=axes)


def activation(name: str):
    """VOLTA's ACT2FN: exact (erf) gelu, relu, swish, tanh."""
    table = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": jax.nn.relu,
             "swish": jax.nn.silu, "tanh": jnp.tanh}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
    return table[name]


def dropout(module: nn.Module, x: jax.Array, rate: float, deterministic: bool) -> jax.Array:
    """Inverted dropout drawing from ``module``'s ``dropout`` rng stream; usable from setup-style modules."""
    if deterministic or rate == 0.0:
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def constrain_stream(x: jax.Array) -> jax.Array:
    """A stream [B, L, hidden] split over the batch axes only (``STREAM_AXES``)."""
    return constrain(x, STREAM_AXES)
