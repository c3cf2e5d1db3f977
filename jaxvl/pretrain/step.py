"""The pretraining step: one pure update of a V&L BERT, its state created in shards, jitted with donation.

``init_state`` creates the parameters and optimizer state directly in their shards (a jitted init
with ``out_shardings``; no host ever holds the whole model); ``jit_train_step`` compiles
``train_step`` with the state's shardings in and out and the old state donated
(``jaxvl.runtime.compile``).

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
from jax.sharding import Mesh, NamedSharding

from jaxvl.models.volta.model import VLBertForPreTraining
from jaxvl.pretrain.loss import Batch, ObjectiveConfig, pretraining_loss
from jaxvl.runtime.compile import jit_step
from jaxvl.runtime.sharding import DEFAULT_RULES, Rules, activation_rules
from jaxvl.runtime.state import TrainState, apply_gradients, boxed_shardings, boxed_state_init, init_sharded

INIT_INPUTS = ("input_ids", "features", "locations")


def train_step(state: TrainState, batch: Batch, *, model: VLBertForPreTraining, ocfg: ObjectiveConfig,
               tx: optax.GradientTransformation, accumulate_steps: int = 1, rules: Rules = DEFAULT_RULES,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One pretraining update on the global ``batch`` (``jaxvl.data.grain`` fields, [B, ...]), dropout on.

    Metrics (float32 []): ``loss`` and its parts (``mlm``, ``itm``, ``mrc_kl``, ...; see
    ``pretraining_loss``), ``grad_norm`` (global norm before clipping) and ``lr`` (the learning rate
    this update used, when ``tx`` is a ``make_optimizer`` transformation).

    The model runs under ``runtime.sharding.activation_rules(rules)``, so under a mesh its activation
    constraints resolve with the parameters' rules: the streams split over the batch axes only, embedding
    tables read as FSDP gathers them (``jaxvl.models.layers``).

    ``accumulate_steps`` k > 1: the gradient is the mean of k microbatches' gradients ([B/k, ...] each, rows
    ``j, j + k, ...``; ``runtime.state.apply_gradients``), then one update; k must divide B. This is a
    different sample of the same objective, not the k = 1 update computed in pieces: each microbatch draws
    its own masking, negatives and dropout (key ``fold_in(step key, j)``), ITM negatives are swapped within a
    microbatch, and MLM, MRC-KL, MRC-XE and MRFR are means over the microbatch's masked tokens / regions (a
    mean of k ratios, not the ratio of the sums). Only ITM (a mean over examples) would match, given the same
    draws. The equality of accumulated and large-batch updates holds for per-example-mean losses without
    randomness (tested with ``apply_gradients``).
    """

    def loss_fn(params, batch, rng):
        return pretraining_loss(model, params, batch, rng, ocfg, deterministic=False)

    with activation_rules(rules):
        return apply_gradients(state, batch, loss_fn, tx, accumulate_steps)


def boxed_init(model: VLBertForPreTraining, tx: optax.GradientTransformation,
               example_batch: Mapping[str, Any]) -> Callable[[jax.Array], TrainState]:
    """``rng -> TrainState`` with ``nn.LogicallyPartitioned`` boxes on params and optimizer moments
    (``runtime.state.boxed_state_init``). Only the shapes and dtypes of ``example_batch``'s ``INIT_INPUTS``
    are used (one row of zeros: ``input_ids`` [1, T], ``features`` [1, R, F], ``locations`` [1, R, L])."""
    shapes = {k: (tuple(example_batch[k].shape[1:]), example_batch[k].dtype) for k in INIT_INPUTS}

    def init_params(rng: jax.Array) -> Any:
        inputs = {k: jnp.zeros((1, *shape), dtype) for k, (shape, dtype) in shapes.items()}
        return model.init(rng, **inputs)["params"]

    return boxed_state_init(init_params, tx)


def state_shardings(model: VLBertForPreTraining, tx: optax.GradientTransformation, example_batch: Mapping[str, Any],
                    mesh: Mesh, rules: Rules = DEFAULT_RULES) -> TrainState:
    """A ``TrainState`` of ``NamedSharding``s: params and the optimizer's per-parameter moments by their
    logical axes (``jaxvl.runtime.sharding``), counters, learning rate and rng replicated. No compute."""
    return boxed_shardings(boxed_init(model, tx, example_batch), mesh, rules)


def init_state(model: VLBertForPreTraining, tx: optax.GradientTransformation, rng: jax.Array,
               example_batch: Mapping[str, Any], mesh: Mesh, rules: Rules = DEFAULT_RULES,
               compiler_options: dict[str, Any] | None = None) -> TrainState:
    """A fresh ``TrainState`` created in its shards on ``mesh``. The values do not depend on the mesh
    (``jax_threefry_partitionable``): the same ``rng`` gives the same parameters on any mesh.
    ``compiler_options``: XLA options for this compile (e.g. ``FAST_COMPILE`` in CPU tests)."""
    return init_sharded(boxed_init(model, tx, example_batch), rng, mesh, rules, compiler_options)


def jit_train_step(model: VLBertForPreTraining, ocfg: ObjectiveConfig, tx: optax.GradientTransformation, mesh: Mesh,
                   state_shardings: TrainState, batch_sharding: NamedSharding | Mapping[str, NamedSharding],
                   compiler_options: dict[str, Any] | None = None, *, accumulate_steps: int = 1,
                   rules: Rules = DEFAULT_RULES,
                   ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step`` under ``jax.jit``: state in and out with ``state_shardings`` (the input state is
    donated: do not reuse it after the call), the batch with ``batch_sharding`` (one sharding for every
    field, or a dict), metrics replicated. ``compiler_options``: XLA options (see ``FAST_COMPILE``).
    ``accumulate_steps``: gradient accumulation over that many microbatches (``train_step``); ``rules``: the
    logical rules ``state_shardings`` were made with (they also place the activations)."""
    fn = functools.partial(train_step, model=model, ocfg=ocfg, tx=tx, accumulate_steps=accumulate_steps, rules=rules)
    return jit_step(fn, mesh, state_shardings, batch_sharding, compiler_options)
