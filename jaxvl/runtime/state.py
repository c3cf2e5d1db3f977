"""The state every jaxvl trainer steps, and the pure core of every train step.

``TrainState`` (step, params, optimizer state, rng) is what a step reads and writes and what a
checkpoint holds; ``apply_gradients`` is one update given any ``loss_fn(params, batch, rng)``;
``boxed_state_init`` turns any model's parameter init into a boxed ``TrainState`` init (what every task
creates its state from), ``boxed_shardings`` gives that state's shardings on a mesh and
``init_sharded`` runs it straight into its shards; ``current_learning_rate`` reads the learning rate an
injected optax optimizer used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh

from jaxvl.runtime.sharding import DEFAULT_RULES, Rules, param_shardings

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


def apply_gradients(state: TrainState, batch: Batch, loss_fn: LossFn, tx: optax.GradientTransformation
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
    """The pure core of every jaxvl train step: ``loss_fn(params, batch, rng) -> (loss, parts)`` with the
    step's key ``fold_in(state.rng, state.step)``, its gradient, one ``tx`` update. Metrics: ``loss``,
    the parts, ``grad_norm`` (before any clipping) and ``lr`` when ``tx`` injects one."""
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, parts), grads = jax.value_and_grad(lambda p: loss_fn(p, batch, rng), has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads)}
    try:
        metrics["lr"] = current_learning_rate(opt_state)
    except ValueError:
        pass
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


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
