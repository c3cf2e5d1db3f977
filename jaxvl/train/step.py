"""The training state, one pure training step, and its sharded, donated, ahead-of-time compiled form.

``init_state`` creates the parameters and optimizer state directly in their shards (a jitted init
with ``out_shardings``; no host ever holds the whole model); ``jit_train_step`` compiles
``train_step`` with the state's shardings in and out and the old state donated; lowering and
compiling once (``compile_step``) gives an executable to call every step and its memory footprint
(``memory_summary``).

Typical use::

    mesh = make_mesh(data=-1)
    state = init_state(model, tx, jax.random.key(0), batch, mesh)
    step = jit_train_step(model, ocfg, tx, mesh, state_shardings(model, tx, batch, mesh), batch_sharding(mesh))
    compiled = compile_step(step, state, batch, mesh)
    print(memory_summary(compiled))
    for batch in global_batches(...):
        state, metrics = compiled(state, batch)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.models.vlbert import VLBertForPreTraining
from jaxvl.train.objective import Batch, ObjectiveConfig, pretraining_loss
from jaxvl.train.optimizer import current_learning_rate
from jaxvl.train.sharding import DEFAULT_RULES, Rules, param_shardings

INIT_INPUTS = ("input_ids", "features", "locations")

# XLA options that cut CPU compile time 2-4x (most of it goes to the threefry bits of dropout and
# masking) at some cost in run time: for tests and CPU smoke runs, not for training.
FAST_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


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


def train_step(state: TrainState, batch: Batch, *, model: VLBertForPreTraining, ocfg: ObjectiveConfig,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
    """One pretraining update on the global ``batch`` (``jaxvl.data.pipeline`` fields, [B, ...]), dropout on.

    Metrics (float32 []): ``loss`` and its parts (``mlm``, ``itm``, ``mrc_kl``, ...; see
    ``pretraining_loss``), ``grad_norm`` (global norm before clipping) and ``lr`` (the learning rate
    this update used, when ``tx`` is a ``make_optimizer`` transformation).
    """

    def loss_fn(params, batch, rng):
        return pretraining_loss(model, params, batch, rng, ocfg, deterministic=False)

    return apply_gradients(state, batch, loss_fn, tx)


def _boxed_init_fn(model: VLBertForPreTraining, tx: optax.GradientTransformation,
                   example_batch: Mapping[str, Any]) -> Callable[[jax.Array], TrainState]:
    """``rng -> TrainState`` with ``nn.LogicallyPartitioned`` boxes on params and optimizer moments.
    Only the shapes and dtypes of ``example_batch``'s ``INIT_INPUTS`` are used (one row)."""
    shapes = {k: (tuple(example_batch[k].shape[1:]), example_batch[k].dtype) for k in INIT_INPUTS}

    def init(rng: jax.Array) -> TrainState:
        init_rng, step_rng = jax.random.split(rng)
        inputs = {k: jnp.zeros((1, *shape), dtype) for k, (shape, dtype) in shapes.items()}
        params = model.init(init_rng, **inputs)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=step_rng)

    return init


def state_shardings(model: VLBertForPreTraining, tx: optax.GradientTransformation, example_batch: Mapping[str, Any],
                    mesh: Mesh, rules: Rules = DEFAULT_RULES) -> TrainState:
    """A ``TrainState`` of ``NamedSharding``s: params and the optimizer's per-parameter moments by their
    logical axes (``jaxvl.train.sharding``), counters, learning rate and rng replicated. No compute."""
    abstract = jax.eval_shape(_boxed_init_fn(model, tx, example_batch), jax.random.key(0))
    return param_shardings(abstract, mesh, rules)


def init_state(model: VLBertForPreTraining, tx: optax.GradientTransformation, rng: jax.Array,
               example_batch: Mapping[str, Any], mesh: Mesh, rules: Rules = DEFAULT_RULES,
               compiler_options: dict[str, Any] | None = None) -> TrainState:
    """A fresh ``TrainState`` created in its shards on ``mesh``. The values do not depend on the mesh
    (``jax_threefry_partitionable``): the same ``rng`` gives the same parameters on any mesh.
    ``compiler_options``: XLA options for this compile (e.g. ``FAST_COMPILE`` in CPU tests)."""
    return init_sharded(_boxed_init_fn(model, tx, example_batch), rng, mesh, rules, compiler_options)


def init_sharded(boxed_init: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh, rules: Rules = DEFAULT_RULES,
                 compiler_options: dict[str, Any] | None = None) -> Any:
    """``boxed_init(rng)`` (a tree with ``nn.LogicallyPartitioned`` boxes, e.g. a ``TrainState``) run under
    ``jax.jit`` straight into its shards: no host ever holds the whole tree."""
    shardings = param_shardings(jax.eval_shape(boxed_init, jax.random.key(0)), mesh, rules)
    with jax.set_mesh(mesh):
        return jax.jit(lambda r: nn.meta.unbox(boxed_init(r)), out_shardings=shardings,
                       compiler_options=compiler_options)(rng)


def jit_train_step(model: VLBertForPreTraining, ocfg: ObjectiveConfig, tx: optax.GradientTransformation, mesh: Mesh,
                   state_shardings: TrainState, batch_sharding: NamedSharding | Mapping[str, NamedSharding],
                   compiler_options: dict[str, Any] | None = None,
                   ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step`` under ``jax.jit``: state in and out with ``state_shardings`` (the input state is
    donated: do not reuse it after the call), the batch with ``batch_sharding`` (one sharding for every
    field, or a dict), metrics replicated. ``compiler_options``: XLA options (see ``FAST_COMPILE``)."""
    fn = functools.partial(train_step, model=model, ocfg=ocfg, tx=tx)
    return jit_step(fn, mesh, state_shardings, batch_sharding, compiler_options)


def jit_step(step_fn: Callable, mesh: Mesh, state_shardings: Any, batch_sharding: Any,
             compiler_options: dict[str, Any] | None = None, extra_shardings: tuple = ()) -> Callable:
    """Any ``step_fn(state, batch, *extra) -> (state, metrics)`` under ``jax.jit`` with the state donated,
    in/out shardings as ``jit_train_step`` (``extra_shardings`` for further arguments) and metrics replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding, *extra_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=0, compiler_options=compiler_options)


def compile_step(jitted: Any, state: TrainState, batch: Batch, mesh: Mesh) -> jax.stages.Compiled:
    """Ahead-of-time ``jitted.lower(state, batch).compile()`` under ``mesh`` (arrays or ``ShapeDtypeStruct``s).
    The result is called like ``jitted`` (same donation) and never retraces."""
    with jax.set_mesh(mesh):
        return jitted.lower(state, batch).compile()


MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes")


def memory_stats(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Per-device byte counts of a compiled program (``compiled.memory_analysis()``): arguments, outputs,
    outputs aliased to donated arguments, temporaries, code; and ``peak_estimate_in_bytes`` =
    arguments + outputs - aliased + temporaries. Empty where the backend reports nothing."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    out = {f: int(getattr(analysis, f, 0) or 0) for f in MEMORY_FIELDS}
    out["peak_estimate_in_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                     - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def memory_summary(compiled: jax.stages.Compiled) -> str:
    """One readable line per ``memory_stats`` entry (per device), e.g. for the trainer's start-up log."""
    stats = memory_stats(compiled)
    if not stats:
        return "memory analysis: not available on this backend"
    lines = [f"  {k.removesuffix('_in_bytes'):<22} {_mib(v):>12}  ({v} B)" for k, v in stats.items()]
    return "\n".join(["memory per device (compiled step):", *lines])
