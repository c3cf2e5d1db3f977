"""The fine-tuning step: VOLTA's task loss of ``VLBertForVLTasks`` as one pure update, and its sweep form.

``finetune_loss`` runs one task's head on a batch (``jaxvl.finetune.data``: retrieval's options and NLVR2's image
pairs folded into rows by ``model_rows``) and returns VOLTA's training loss (``jaxvl.finetune.losses.task_loss``)
with the batch's mean task score. ``init_finetune_state`` creates the ``TrainState`` in its shards;
``jit_finetune_step`` jits the update (``runtime.state.apply_gradients``) with donation.

Sweeps: K members that differ in seed (initial head parameters, dropout) and peak learning rate are stacked on a
leading axis (``FinetuneSweepState``, like ``jaxvl.pretrain.sweep``'s) and updated by one vmapped step with the
batch broadcast; member k's update is the single run's update with ``make_optimizer(replace(cfg,
learning_rate=lr_k), injected_peak=True)``. Typical use::

    model = VLBertForVLTasks(cfg, (TaskSpec("TASK1", "VL-classifier", 3129),))
    state = init_finetune_state(model, tx, jax.random.key(0), example, mesh)
    step = compile_step(jit_finetune_step(model, task, tx, mesh, finetune_state_shardings(model, tx, example, mesh),
                                          batch_sharding(mesh)), state, example, mesh)
    state, metrics = step(state, batch)           # metrics: loss, score, grad_norm, lr
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.finetune.data import MODEL_KEYS, model_rows, score_region_mask
from jaxvl.finetune.losses import task_loss, task_score
from jaxvl.models.volta.task_heads import TaskSpec, VLBertForVLTasks
from jaxvl.runtime.compile import jit_step
from jaxvl.runtime.optimizer import set_peak_learning_rate
from jaxvl.runtime.sharding import DEFAULT_RULES, Rules, activation_rules
from jaxvl.runtime.state import Batch, TrainState, apply_gradients, boxed_shardings, boxed_state_init, init_sharded


def task_outputs(model: VLBertForVLTasks, params: Any, batch: Batch, rng: jax.Array | None, task: TaskSpec,
                 deterministic: bool = False) -> tuple[jax.Array, jax.Array]:
    """VOLTA's training loss of ``task`` on ``batch`` ([B, ...], ``jaxvl.finetune.data``; a mean over the real
    examples of ``example_mask`` when the batch has one) and the per-example task scores [B] (VQA score, accuracy,
    RefCOCO+ hit, 4-way retrieval accuracy). Dropout from ``rng`` unless ``deterministic``."""
    rows = model_rows(task, batch)
    logits = model.apply({"params": params}, rows["input_ids"], rows["features"], rows["locations"],
                         rows["token_type_ids"], rows["text_mask"], rows["region_mask"], task=task.name,
                         deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
    loss = task_loss(task, logits, batch["target"], batch.get("example_mask"))
    return loss, task_score(task, logits, batch["target"], score_region_mask(task, batch))


def finetune_loss(model: VLBertForVLTasks, params: Any, batch: Batch, rng: jax.Array, task: TaskSpec,
                  deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``task_outputs``' loss, and ``{"score": the mean task score}`` (over ``example_mask``'s real examples)."""
    loss, scores = task_outputs(model, params, batch, rng, task, deterministic)
    mask = batch.get("example_mask")
    m = jnp.ones_like(scores) if mask is None else mask.astype(jnp.float32)
    return loss, {"score": jnp.sum(scores * m) / jnp.maximum(jnp.sum(m), 1.0)}


def boxed_init(model: VLBertForVLTasks, tx: optax.GradientTransformation, example: Mapping[str, Any]
               ) -> Callable[[jax.Array], TrainState]:
    """``rng -> TrainState`` with logical boxes, from the shapes of ``example``'s rows (a batch of the layout of
    ``model.tasks[0]``; two zero examples folded by ``model_rows``). Every head is initialised."""
    shapes = {k: (tuple(example[k].shape[1:]), example[k].dtype) for k in MODEL_KEYS}

    def init_params(rng: jax.Array) -> Any:
        rows = model_rows(model.tasks[0], {k: jnp.zeros((2, *shape), dtype) for k, (shape, dtype) in shapes.items()})
        return model.init(rng, rows["input_ids"], rows["features"], rows["locations"], rows["token_type_ids"],
                          rows["text_mask"], rows["region_mask"])["params"]

    return boxed_state_init(init_params, tx)


def finetune_state_shardings(model: VLBertForVLTasks, tx: optax.GradientTransformation, example: Mapping[str, Any],
                             mesh: Mesh, rules: Rules = DEFAULT_RULES) -> TrainState:
    """The state's ``NamedSharding``s (parameters and moments by their logical axes). No compute."""
    return boxed_shardings(boxed_init(model, tx, example), mesh, rules)


def init_finetune_state(model: VLBertForVLTasks, tx: optax.GradientTransformation, rng: jax.Array,
                        example: Mapping[str, Any], mesh: Mesh, rules: Rules = DEFAULT_RULES,
                        compiler_options: dict[str, Any] | None = None) -> TrainState:
    """A fresh ``TrainState`` created in its shards (random encoder and heads; the trainer then loads a pretrained
    encoder into it)."""
    return init_sharded(boxed_init(model, tx, example), rng, mesh, rules, compiler_options)


def finetune_step(state: TrainState, batch: Batch, *, model: VLBertForVLTasks, task: TaskSpec,
                  tx: optax.GradientTransformation, rules: Rules = DEFAULT_RULES) -> tuple[TrainState, dict]:
    """One update on the global ``batch``, dropout on. Metrics: ``loss``, ``score``, ``grad_norm``, ``lr``."""

    def loss_fn(params, batch, rng):
        return finetune_loss(model, params, batch, rng, task)

    with activation_rules(rules):
        return apply_gradients(state, batch, loss_fn, tx)


def jit_finetune_step(model: VLBertForVLTasks, task: TaskSpec, tx: optax.GradientTransformation, mesh: Mesh,
                      shardings: TrainState, batch_sharding: NamedSharding | Mapping[str, NamedSharding],
                      compiler_options: dict[str, Any] | None = None) -> Callable:
    """``finetune_step`` under ``jax.jit`` (the state donated; compile it with ``runtime.compile.compile_step``)."""
    fn = functools.partial(finetune_step, model=model, task=task, tx=tx)
    return jit_step(fn, mesh, shardings, batch_sharding, compiler_options)


# ============================================================================================ sweeps


@struct.dataclass
class FinetuneSweepState:
    """K stacked ``TrainState``s: ``step`` int32 [] shared; ``params``, ``opt_state`` leaves [K, ...]; ``rng`` keys
    [K]; ``learning_rate`` float32 [K], each member's peak."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    learning_rate: jax.Array


_AXES = FinetuneSweepState(step=None, params=0, opt_state=0, rng=0, learning_rate=0)


def sweep_state_shardings(model: VLBertForVLTasks, tx: optax.GradientTransformation, example: Mapping[str, Any],
                          mesh: Mesh) -> FinetuneSweepState:
    """Each member's shardings as a single run's behind a replicated member axis."""
    single = finetune_state_shardings(model, tx, example, mesh)
    stack = lambda s: NamedSharding(mesh, PartitionSpec(None, *s.spec))  # noqa: E731
    return FinetuneSweepState(step=single.step, params=jax.tree.map(stack, single.params),
                              opt_state=jax.tree.map(stack, single.opt_state), rng=stack(single.rng),
                              learning_rate=NamedSharding(mesh, PartitionSpec()))


def init_sweep_state(model: VLBertForVLTasks, tx: optax.GradientTransformation, seeds: Sequence[int],
                     learning_rates: Sequence[float], example: Mapping[str, Any], mesh: Mesh,
                     compiler_options: dict[str, Any] | None = None) -> FinetuneSweepState:
    """Member k: the state ``init_finetune_state(..., jax.random.key(seeds[k]), ...)`` creates, its peak learning
    rate ``learning_rates[k]`` injected (``tx``: ``make_optimizer(cfg, injected_peak=True)``)."""
    init = boxed_init(model, tx, example)

    def create(keys: jax.Array, lrs: jax.Array) -> FinetuneSweepState:
        states = jax.vmap(lambda r: nn.meta.unbox(init(r)))(keys)
        opt_state = jax.vmap(set_peak_learning_rate)(states.opt_state, lrs)
        return FinetuneSweepState(step=jnp.zeros((), jnp.int32), params=states.params, opt_state=opt_state,
                                  rng=states.rng, learning_rate=lrs)

    shardings = sweep_state_shardings(model, tx, example, mesh)
    keys = jnp.stack([jax.random.key(int(s)) for s in seeds])
    with jax.set_mesh(mesh):
        return jax.jit(create, out_shardings=shardings, compiler_options=compiler_options)(
            keys, jnp.asarray(learning_rates, jnp.float32))


def sweep_step(state: FinetuneSweepState, batch: Batch, *, model: VLBertForVLTasks, task: TaskSpec,
               tx: optax.GradientTransformation) -> tuple[FinetuneSweepState, dict]:
    """One update of every member on the shared ``batch``; metrics [K] each."""

    def member(s: FinetuneSweepState, batch: Batch):
        s = s.replace(opt_state=set_peak_learning_rate(s.opt_state, s.learning_rate))
        return apply_gradients(s, batch, lambda p, b, r: finetune_loss(model, p, b, r, task), tx)

    return jax.vmap(member, in_axes=(_AXES, None), out_axes=(_AXES, 0))(state, batch)


def jit_sweep_step(model: VLBertForVLTasks, task: TaskSpec, tx: optax.GradientTransformation, mesh: Mesh,
                   shardings: FinetuneSweepState, batch_sharding: NamedSharding | Mapping[str, NamedSharding],
                   compiler_options: dict[str, Any] | None = None) -> Callable:
    """``sweep_step`` under ``jax.jit`` (the state donated)."""
    return jit_step(functools.partial(sweep_step, model=model, task=task, tx=tx), mesh, shardings, batch_sharding,
                    compiler_options)


__all__ = ["FinetuneSweepState", "finetune_loss", "task_outputs", "finetune_state_shardings", "finetune_step",
           "init_finetune_state", "init_sweep_state", "jit_finetune_step", "jit_sweep_step", "sweep_state_shardings",
           "sweep_step"]
