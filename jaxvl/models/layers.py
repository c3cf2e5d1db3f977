"""Small building blocks with logical axis names on every parameter.

Logical axes used across jaxvl (mapped to mesh axes by the trainer's rules):
``embed`` (model width), ``heads`` and ``kv`` (attention heads and head size), ``mlp`` (feed-forward
width), ``vocab`` (token and type tables), ``feature`` (region feature width), ``pooler``,
``classes`` (head outputs), ``layers`` (the stacked axis of scanned segments).

Activations carry logical axes too (``jaxvl.runtime.sharding.constrain``): ``constrain_stream`` splits a
stream [B, L, hidden] over the batch axes only (parameters split ``embed`` over 'fsdp'; activations never
do), and ``Embed`` looks rows up in its table as FSDP gathers it. Outside a sharded step (no rules in
context) both are no-ops.

Weight gradients in mixed precision (``dense``'s ``weight_grad_dtype``): with a compute ``dtype`` below float32,
``"compute"`` is autodiff's plain rule: a kernel's gradient is the compute-dtype output of its backward matmul
(and a bias's a compute-dtype sum), cast to the float32 parameter's dtype last, so a data-parallel step sums the
devices' bf16 partials in bf16 (a TPU compile all-reduces them before the cast). ``"float32"`` (the default) makes
the backward weight matmul return its float32 accumulator (``matmul_f32_weight_grad``) and sums the bias gradient
in float32, so every device's partial gradient and their all-reduce (or FSDP's reduce-scatter) stay float32: twice
those bytes. The forward values and the input gradients are the same in both; a float32 layer has one path only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxvl.runtime.sharding import constrain, constrain_gathered

Axes = tuple[str | None, ...]

STREAM_AXES: Axes = ("batch", None, None)  # a stream [B, L, hidden]
# ``VLConfig.weight_grad_dtype`` / ``dense``'s ``weight_grad_dtype`` (module doc).
WEIGHT_GRAD_DTYPES = ("float32", "compute")


def normal_init(stddev: float, axes: Axes):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), axes)


def _matmul(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """x [..., *in] @ kernel [*in, *out] -> [..., *out] (the last ``n_in`` dims of ``x`` against the first of
    ``kernel``), in the inputs' dtype: ``nn.DenseGeneral``'s matmul."""
    dims = ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ()))
    return jax.lax.dot_general(x, kernel, dims)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul_f32_weight_grad(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """``x @ kernel.astype(x.dtype)`` (``_matmul``; [..., *in] @ [*in, *out] -> [..., *out] in ``x``'s dtype) whose
    gradient for the float32 ``kernel`` [*in, *out] is the backward matmul's float32 accumulator, never rounded to
    ``x``'s dtype; the gradient for ``x`` is autodiff's (``x``'s dtype)."""
    return _matmul(x, kernel.astype(x.dtype), n_in)


def _matmul_fwd(x: jax.Array, kernel: jax.Array, n_in: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    w = kernel.astype(x.dtype)
    return _matmul(x, w, n_in), (x, w)


def _matmul_bwd(n_in: int, res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    lead = x.ndim - n_in
    dx = jax.lax.dot_general(g, w, ((tuple(range(lead, g.ndim)), tuple(range(n_in, w.ndim))), ((), ())))
    dw = jax.lax.dot_general(x, g, ((tuple(range(lead)), tuple(range(lead))), ((), ())),
                             preferred_element_type=jnp.float32)
    return dx, dw


matmul_f32_weight_grad.defvjp(_matmul_fwd, _matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _rounded(b: jax.Array, dtype: Any) -> jax.Array:
    """float32 ``b`` (any shape) rounded to ``dtype`` and back to float32; its gradient passes through unrounded."""
    return b.astype(dtype).astype(b.dtype)


def _rounded_fwd(b: jax.Array, dtype: Any) -> tuple[jax.Array, None]:
    return _rounded(b, dtype), None


def _rounded_bwd(dtype: Any, res: None, g: jax.Array) -> tuple[jax.Array]:
    return (g,)


_rounded.defvjp(_rounded_fwd, _rounded_bwd)


def _promote_for_f32_grads(inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None, *, dtype: Any
                           ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``F32GradDense``'s ``promote_dtype``: the inputs in ``dtype``; the kernel float32 (the matmul casts it);
    the bias float32 holding ``dtype``'s values, so the bias add gives ``dtype``'s sum once the output is cast
    and the bias gradient sums in float32."""
    return inputs.astype(dtype), kernel, None if bias is None else _rounded(bias, dtype)


def _dot_general_f32_weight_grad(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                                 precision: Any = None) -> jax.Array:
    """``F32GradDense``'s ``dot_general``: ``matmul_f32_weight_grad`` for the contraction ``nn.DenseGeneral`` makes
    without batch dims (the last dims of ``lhs`` against the first of ``rhs``, default precision)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n_in = len(lhs_contract)
    if (lhs_batch or rhs_batch or precision is not None or tuple(rhs_contract) != tuple(range(n_in))
            or tuple(lhs_contract) != tuple(range(lhs.ndim - n_in, lhs.ndim))):
        raise ValueError(f"float32 weight gradients need a trailing contraction without batch dims or precision; "
                         f"got dimension_numbers={dimension_numbers}, precision={precision}")
    # Under shard_map a kernel shared by every shard meets per-shard inputs: made varying here (as autodiff would
    # inside the matmul), its float32 gradient is psummed by autodiff outside the custom rule.
    shards = tuple(sorted(jax.typeof(lhs).manual_axis_type.varying - jax.typeof(rhs).manual_axis_type.varying))
    if shards:
        rhs = jax.lax.pcast(rhs, shards, to="varying")
    return matmul_f32_weight_grad(lhs, rhs, n_in)


class F32GradDense(nn.DenseGeneral):
    """``nn.DenseGeneral`` (same parameters, same forward values in ``dtype``) whose kernel gradient is the
    backward matmul's float32 accumulator and whose bias gradient sums in float32: inputs [..., *in] ->
    [..., *features] in ``dtype``; ``dense``'s ``weight_grad_dtype="float32"`` below float32 (module doc)."""

    promote_dtype: Any = _promote_for_f32_grads
    dot_general: Any = _dot_general_f32_weight_grad

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return super().__call__(inputs).astype(self.dtype)


def dense_class(dtype: str, weight_grad_dtype: str) -> type[nn.DenseGeneral]:
    """``F32GradDense`` for a ``dtype`` below float32 with ``weight_grad_dtype`` "float32", else ``nn.DenseGeneral``."""
    if weight_grad_dtype not in WEIGHT_GRAD_DTYPES:
        raise ValueError(f"weight_grad_dtype={weight_grad_dtype!r}; expected one of {WEIGHT_GRAD_DTYPES}")
    f32_grads = weight_grad_dtype == "float32" and jnp.dtype(dtype) != jnp.float32
    return F32GradDense if f32_grads else nn.DenseGeneral


def dense(features: int | Sequence[int], axes: Axes, *, dtype: str = "float32", name: str | None = None,
          axis: int | Sequence[int] = -1, stddev: float = 0.02, xavier: bool = False,
          weight_grad_dtype: str = "float32") -> nn.DenseGeneral:
    """A ``DenseGeneral`` [..., *in] -> [..., *features] computing in ``dtype`` (parameters float32) whose kernel
    carries ``axes`` (in dims then out dims) and bias the out dims; below float32, ``weight_grad_dtype`` "float32"
    makes it an ``F32GradDense`` (module doc)."""
    n_out = 1 if isinstance(features, int) else len(features)
    init = nn.initializers.xavier_uniform() if xavier else nn.initializers.normal(stddev)
    return dense_class(dtype, weight_grad_dtype)(
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
