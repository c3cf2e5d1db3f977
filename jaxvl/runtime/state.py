"""The state every jaxvl trainer steps, and the pure core of every train step.

``TrainState`` (step, params, optimizer state, rng) is what a step reads and writes and what a
checkpoint holds; ``apply_gradients`` is one update given any ``loss_fn(params, batch, rng)`` (optionally
with its gradient accumulated over microbatches, ``split_microbatches``);
``boxed_state_init`` turns any model's parameter init into a boxed ``TrainState`` init (what every task
creates its state from), ``boxed_shardings`` gives that state's shardings on a mesh and
``init_sharded`` runs it straight into its shards; ``current_learning_rate`` reads the learning rate an
injected optax optimizer used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh

from jaxvl.runtime.sharding import DEFAULT_RULES, Rules, constrain, param_shardings, rules_in_context

Batch = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    """Everything a step reads and writes. ``step``: int32 [] (updates done); ``params``: the model's
    (unboxed) parameter tree; ``opt_state``: the optax state; ``rng``: a typed key [] from which step
    ``n`` draws ``fold_in(rng, n)`` (masking, negatives and dropout)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def check_accumulate_steps(batch: Batch, accumulate_steps: int) -> None:
    """A ``ValueError`` (raised while tracing, before anything compiles) unless ``accumulate_steps`` is a
    positive int that, when above 1, divides the rows of every ``batch`` field."""
    if isinstance(accumulate_steps, bool) or not isinstance(accumulate_steps, int) or accumulate_steps < 1:
        raise ValueError(f"accumulate_steps={accumulate_steps!r}; expected a positive int")
    if accumulate_steps == 1:
        return
    for key, value in batch.items():
        if value.ndim == 0 or value.shape[0] % accumulate_steps:
            raise ValueError(f"accumulate_steps={accumulate_steps} does not divide the batch: field {key!r} has shape "
                             f"{tuple(value.shape)}; the global batch size must be a multiple of accumulate_steps")


def split_microbatches(batch: Batch, accumulate_steps: int) -> Batch:
    """``{field: [B, ...]}`` -> ``{field: [k, B/k, ...]}`` with ``k = accumulate_steps``: microbatch ``j``
    holds rows ``j, j + k, j + 2k, ...`` (a strided split: a device holding a contiguous block of rows holds
    an equal share of every microbatch, so the split moves no data). Under a mesh (``jax.set_mesh``) each
    microbatch's rows are constrained to the mesh's batch axes, as ``batch_sharding`` splits the batch (the
    ``batch`` rule of the ``sharding.activation_rules`` in context, else of ``DEFAULT_RULES``)."""
    check_accumulate_steps(batch, accumulate_steps)
    rules = rules_in_context() or DEFAULT_RULES

    def split(x: jax.Array) -> jax.Array:
        x = jnp.moveaxis(x.reshape(x.shape[0] // accumulate_steps, accumulate_steps, *x.shape[1:]), 1, 0)
        return constrain(x, (None, "batch") + (None,) * (x.ndim - 2), rules)

    return {key: split(value) for key, value in batch.items()}


def _value_and_grad(loss_fn: LossFn, params: Any, batch: Batch, rng: jax.Array
                    ) -> tuple[Any, dict[str, jax.Array]]:
    """The gradient of ``loss_fn`` at ``params`` and the metrics ``{"loss": loss, **parts}``."""
    (loss, parts), grads = jax.value_and_grad(lambda p: loss_fn(p, batch, rng), has_aux=True)(params)
    return grads, {"loss": loss, **parts}


def _accumulated_value_and_grad(loss_fn: LossFn, params: Any, batch: Batch, rng: jax.Array, accumulate_steps: int
                                ) -> tuple[Any, dict[str, jax.Array]]:
    """``_value_and_grad`` averaged over ``accumulate_steps`` microbatches (``split_microbatches``) under
    ``jax.lax.scan``, so only one microbatch's activations are live at a time; microbatch ``j`` uses the
    key ``fold_in(rng, j)``. Gradients (in the parameters' dtype) and metrics are summed, then divided by k."""
    micro = split_microbatches(batch, accumulate_steps)
    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: _value_and_grad(loss_fn, params, first, rng))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(carry: tuple[Any, dict[str, jax.Array]], xs: tuple[jax.Array, Batch]):
        j, microbatch = xs
        step = _value_and_grad(loss_fn, params, microbatch, jax.random.fold_in(rng, j))
        return jax.tree.map(jnp.add, carry, step), None

    total, _ = jax.lax.scan(body, zeros, (jnp.arange(accumulate_steps), micro))
    return jax.tree.map(lambda x: x / accumulate_steps, total)


def apply_gradients(state: TrainState, batch: Batch, loss_fn: LossFn, tx: optax.GradientTransformation,
                    accumulate_steps: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
    """The pure core of every jaxvl train step: ``loss_fn(params, batch, rng) -> (loss, parts)`` with the
    step's key ``rng = fold_in(state.rng, state.step)``, its gradient, one ``tx`` update. Metrics: ``loss``,
    the parts, ``grad_norm`` (before any clipping) and ``lr`` when ``tx`` injects one.

    ``accumulate_steps`` (k > 1): gradient accumulation for a batch [B, ...] larger than memory. The batch is
    split into k microbatches [B/k, ...] (``split_microbatches``: rows ``j, j + k, ...`` form microbatch
    ``j``; a ``ValueError`` naming the field's rows and k, before compiling, when k does not divide B), their
    gradients computed one after another under ``jax.lax.scan`` and averaged, then ONE ``tx`` update;
    ``loss`` and the parts are the microbatches' means. Microbatch ``j`` gets the key ``fold_in(rng, j)``
    (k = 1 keeps ``rng`` itself, so the default is bitwise today's step). For a loss that is a mean over
    examples with no randomness the update equals the k = 1 update up to float32 summation order; losses
    normalised per batch (by counts of masked tokens, say) or drawing random numbers differ (see
    ``jaxvl.pretrain.step.train_step``).
    """
    check_accumulate_steps(batch, accumulate_steps)
    rng = jax.random.fold_in(state.rng, state.step)
    if accumulate_steps == 1:
        grads, metrics = _value_and_grad(loss_fn, state.params, batch, rng)
    else:
        grads, metrics = _accumulated_value_and_grad(loss_fn, state.params, batch, rng, accumulate_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    try:
        metrics["lr"] = current_learning_rate(opt_state)
    except ValueError:
        pass
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def member_state(state: Any, k: int) -> TrainState:
    """Member ``k`` of a sweep's stacked state (any struct with a shared ``step`` and ``params``, ``opt_state`` and
    ``rng`` stacked on a leading member axis) as a single run's ``TrainState``, e.g. for its own checkpoint."""
    num = state.rng.shape[0]
    if not -num <= k < num:
        raise IndexError(f"sweep member {k}: the sweep has {num} members")
    take = functools.partial(jax.tree.map, lambda x: x[k])
    return TrainState(step=state.step, params=take(state.params), opt_state=take(state.opt_state), rng=state.rng[k])


BoxedInit = Callable[[jax.Array], Any]


def boxed_state_init(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation
                     ) -> Callable[[jax.Array], TrainState]:
    """``rng -> TrainState`` at step 0 from any ``init_params(rng) -> params`` (e.g. ``model.init(rng,
    *dummy_inputs)["params"]``, with ``nn.LogicallyPartitioned`` boxes): ``rng`` is split in two, the
    first key initialises the parameters, the second is the state's step key; the optimizer state is
    ``tx.init(params)`` (its per-parameter moments keep the parameters' boxes)."""

    def init(rng: jax.Array) -> TrainState:
        init_rng, step_rng = jax.random.split(rng)
        params = init_params(init_rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=step_rng)

    return init


def boxed_shardings(boxed_init: BoxedInit, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """The ``NamedSharding`` tree of ``boxed_init``'s (unboxed) output on ``mesh``: boxed leaves by their
    logical axes, everything else replicated. Shapes only (``jax.eval_shape``), no compute."""
    return param_shardings(jax.eval_shape(boxed_init, jax.random.key(0)), mesh, rules)


def init_sharded(boxed_init: BoxedInit, rng: jax.Array, mesh: Mesh, rules: Rules = DEFAULT_RULES,
                 compiler_options: dict[str, Any] | None = None) -> Any:
    """``boxed_init(rng)`` (a tree with ``nn.LogicallyPartitioned`` boxes, e.g. a ``TrainState``) run under
    ``jax.jit`` straight into its shards: no host ever holds the whole tree."""
    shardings = boxed_shardings(boxed_init, mesh, rules)
    with jax.set_mesh(mesh):
        return jax.jit(lambda r: nn.meta.unbox(boxed_init(r)), out_shardings=shardings,
                       compiler_options=compiler_options)(rng)


INJECTED_STATES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


def is_injected(x: Any) -> bool:
    return isinstance(x, INJECTED_STATES)


def current_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate the latest update used (0-d float32), read from a ``make_optimizer`` state
    (either form: ``learning_rate``, or ``peak_learning_rate * schedule_factor``)."""
    for state in jax.tree.leaves(opt_state, is_leaf=is_injected):
        if is_injected(state):
            hp = state.hyperparams
            if "learning_rate" in hp:
                return jnp.asarray(hp["learning_rate"], jnp.float32)
            if "peak_learning_rate" in hp:
                return jnp.asarray(hp["peak_learning_rate"] * hp["schedule_factor"], jnp.float32)
    raise ValueError("no injected learning rate in this optimizer state; was it built by make_optimizer?")
