"""Sweeps compiled as one program: K pretraining runs that share shapes, stacked and trained by one vmapped step.

A sweep member (``SweepMember``) may differ from the others in its seed (initial parameters and the
step rng), peak learning rate, region-loss weights (MRC-KL ``"0"``, MRC-XE ``"3"``, MRFR ``"1"``/``"5"``;
a weight of 0 switches a head off, so MRC-XE vs MRC-KL is a member, not a recompile), token and region
masking probabilities and co-masking overlap threshold (``objectives.NO_OVERLAP`` = 2.0 for "none").
Everything else (the model, its heads, the batch, ``ObjectiveConfig``'s static fields, the schedule's
shape) is shared. The per-member values are data, ``SweepHParams`` (float32 [K] each), so changing
them never recompiles.

``SweepState`` stacks K ``TrainState``s on a leading member axis (params, optimizer state, rng, and the
hyper-parameters; the step counter is shared). ``sweep_train_step`` vmaps one member's update over
that axis with the batch broadcast (``in_axes=None``: one copy, not K); the learning rate is the
``peak_learning_rate`` injected into a ``make_optimizer(cfg, injected_peak=True)`` state, set from the
member's ``SweepHParams.learning_rate`` before each update, so member k's update is bitwise the update
of ``make_optimizer(replace(cfg, learning_rate=lr_k))`` (see ``jaxvl.runtime.optimizer``).

On a mesh the member axis is unsharded by default (each device holds every member's shard of each
parameter, placed by the logical rules as in single runs) or, with ``member_axis``, split over one mesh
axis (members' own parameters then do not use that axis). Typical use::

    members = members_from_config(cfg.sweep, model_cfg, ocfg, opt_cfg, seed=cfg.seed)  # the single run's configs
    model = VLBertForPreTraining(model_cfg.replace(
        visual_target_weights=shared_visual_target_weights(members, model_cfg)))  # every head a member weighs
    tx = make_optimizer(opt_cfg, injected_peak=True)
    state = init_sweep_state(model, tx, members, batch, mesh)
    shardings = sweep_state_shardings(model, tx, batch, mesh, len(members))
    step = compile_step(jit_sweep_step(model, ocfg, tx, mesh, shardings, batch_sharding(mesh)), state, batch, mesh)
    history = []
    for batch in global_batches(...):
        state, metrics = step(state, batch)      # the state is donated; metrics: {name: [K]}
        history.append(metrics)
    print(summary_table(history, members))
    member_k = unstack_member(state, k)          # a TrainState, e.g. for its own checkpoint
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import VLBertForPreTraining
from jaxvl.models.volta.objectives import NO_OVERLAP
from jaxvl.pretrain.loss import Batch, ObjectiveConfig, pretraining_loss
from jaxvl.pretrain.step import boxed_init, state_shardings
from jaxvl.runtime.compile import jit_step
from jaxvl.runtime.optimizer import OptimizerConfig, set_peak_learning_rate
from jaxvl.runtime.sharding import DEFAULT_RULES, Rules
from jaxvl.runtime.state import TrainState, apply_gradients, member_state

# Member weight -> the visual heads (``VLConfig.visual_target_weights`` keys) it weighs.
WEIGHT_HEADS = {"mrc_kl_weight": ("0",), "mrc_xe_weight": ("3",), "mrfr_weight": ("1", "5")}
# Config keys a member may not set, because they change shapes or the compiled program.
STATIC_KEYS = frozenset({"objective", "overlap_kind", "volta_compat", "region_zero_prob", "itm_prob", "mask_id",
                         "cls_id", "sep_id", "visual_target_weights", "total_steps", "warmup_fraction", "b1", "b2",
                         "eps", "weight_decay", "clip_norm", "batch_size", "text_len", "regions", "dtype"})
# Metrics that are not loss parts (left out of the summary table).
NON_LOSS_METRICS = ("grad_norm", "lr", "seconds")


@dataclasses.dataclass(frozen=True)
class SweepMember:
    """One member's settings. ``seed``: ``jax.random.key(seed)`` gives its initial parameters and step rng
    (masking, negatives, dropout) as in a single run; the data order is the sweep's, shared by all.
    ``overlap_threshold`` > 1 (``NO_OVERLAP``) is co-masking off ("none")."""

    name: str
    seed: int = 0
    learning_rate: float = 1e-4
    mrc_kl_weight: float = 1.0
    mrc_xe_weight: float = 0.0
    mrfr_weight: float = 0.0
    token_prob: float = 0.15
    region_prob: float = 0.15
    overlap_threshold: float = 0.4

    def __post_init__(self):
        where = f"sweep member {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"sweep member name {self.name!r}: expected a non-empty string")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**32:
            raise ValueError(f"{where}: seed={self.seed!r}; expected an integer in [0, 2**32)")
        for key in SWEEP_KEYS:
            value = getattr(self, key)
            if key == "seed":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{where}: {key}={value!r}; expected a finite number >= 0")
        for key in ("token_prob", "region_prob"):
            if getattr(self, key) > 1:
                raise ValueError(f"{where}: {key}={getattr(self, key)!r}; expected a probability in [0, 1]")


SWEEP_KEYS = tuple(f.name for f in dataclasses.fields(SweepMember) if f.name != "name")


@struct.dataclass
class SweepHParams:
    """The members' traced settings: float32 [K] each (a single member's [] inside the vmapped step)."""

    learning_rate: jax.Array
    mrc_kl_weight: jax.Array
    mrc_xe_weight: jax.Array
    mrfr_weight: jax.Array
    token_prob: jax.Array
    region_prob: jax.Array
    overlap_threshold: jax.Array


@struct.dataclass
class SweepState:
    """K stacked ``TrainState``s: ``step`` int32 [] (shared), ``params`` / ``opt_state`` leaves [K, ...],
    ``rng`` typed keys [K] (member k's step n draws ``fold_in(rng[k], n)``), ``hparams`` [K] each."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    hparams: SweepHParams


# vmap axes of a SweepState: everything but the step counter has the member axis first.
_AXES = SweepState(step=None, params=0, opt_state=0, rng=0, hparams=0)


# ------------------------------------------------------------------------------------------ members


def _base_values(model_cfg: VLConfig | None, ocfg: ObjectiveConfig | None, opt_cfg: OptimizerConfig | None,
                 seed: int) -> dict[str, Any]:
    """The single run's settings as member values (the defaults of keys a member leaves out)."""
    values = {f.name: f.default for f in dataclasses.fields(SweepMember) if f.name != "name"}
    values["seed"] = seed
    if opt_cfg is not None:
        values["learning_rate"] = opt_cfg.learning_rate
    if ocfg is not None:
        values["token_prob"], values["region_prob"] = ocfg.token_prob, ocfg.region_prob
        values["overlap_threshold"] = NO_OVERLAP if ocfg.overlap_threshold is None else ocfg.overlap_threshold
    if model_cfg is not None:
        weights = dict(model_cfg.visual_target_weights)
        for key, heads in WEIGHT_HEADS.items():
            values[key] = next((weights[h] for h in heads if weights.get(h, 0) > 0), 0.0)
    return values


def members_from_config(sweep_cfg: Sequence[Mapping[str, Any]], model_cfg: VLConfig | None = None,
                        ocfg: ObjectiveConfig | None = None, opt_cfg: OptimizerConfig | None = None,
                        seed: int = 0) -> list[SweepMember]:
    """A config's ``sweep`` section (K dicts) -> K ``SweepMember``s, checked before anything compiles.

    Each dict has a ``name`` (default ``member{i}``) and any of ``SWEEP_KEYS``; the keys it leaves out
    take the single run's values (``opt_cfg.learning_rate``, ``ocfg``'s probabilities and threshold,
    the model's head weights, ``seed``), or ``SweepMember``'s defaults where those are not given.
    ``overlap_threshold`` may be ``"none"`` / None (-> ``NO_OVERLAP``). Errors (``ValueError``, naming
    the member and key): unknown keys; keys that change shapes or the program (``STATIC_KEYS``);
    duplicate names; values out of range. A member may weigh a head the single run's model lacks:
    build the shared model with ``shared_visual_target_weights`` (``check_members`` enforces it).
    """
    if isinstance(sweep_cfg, Mapping | str) or not isinstance(sweep_cfg, Sequence) or not sweep_cfg:
        raise ValueError(f"sweep: expected a non-empty list of member dicts, got {sweep_cfg!r}")
    base = _base_values(model_cfg, ocfg, opt_cfg, seed)
    members, names = [], set()
    for i, entry in enumerate(sweep_cfg):
        entry = entry.to_dict() if hasattr(entry, "to_dict") else entry
        if not isinstance(entry, Mapping):
            raise ValueError(f"sweep member {i}: expected a dict of settings, got {entry!r}")
        name = entry.get("name", f"member{i}")
        where = f"sweep member {i} ({name!r})"
        for key in entry:
            if key in STATIC_KEYS:
                raise ValueError(f"{where}: key {key!r} changes shapes or the compiled program and cannot differ "
                                 f"between members of one sweep (sweepable: {list(SWEEP_KEYS)}); run it separately")
            if key != "name" and key not in SWEEP_KEYS:
                raise ValueError(f"{where}: unknown key {key!r} (sweepable: {list(SWEEP_KEYS)})")
        values = {**base, **{k: v for k, v in entry.items() if k != "name"}}
        if values["overlap_threshold"] is None or (isinstance(values["overlap_threshold"], str)
                                                   and values["overlap_threshold"].lower() == "none"):
            values["overlap_threshold"] = NO_OVERLAP
        if name in names:
            raise ValueError(f"{where}: duplicate member name {name!r}")
        names.add(name)
        members.append(SweepMember(name=name, **values))  # checks the values, naming the member and key
    return members


def shared_visual_target_weights(members: Sequence[SweepMember], model_cfg: VLConfig) -> dict[str, float]:
    """``visual_target_weights`` for the sweep's shared model: ``model_cfg``'s, plus weight 1.0 for each head
    a member weighs > 0 that it lacks (MRC-KL "0", MRC-XE "3", MRFR "1"). In a sweep the members' weights
    replace these for every head of ``WEIGHT_HEADS``, so only which heads exist matters."""
    weights = {key: w for key, w in model_cfg.visual_target_weights if w > 0}
    for key, heads in WEIGHT_HEADS.items():
        if any(getattr(m, key) > 0 for m in members) and not set(heads) & set(weights):
            weights[heads[0]] = 1.0
    return weights


def check_members(members: Sequence[SweepMember], model_cfg: VLConfig):
    """``ValueError`` naming the member and key if a member weighs a head the shared model does not have
    (a head is parameters, so it cannot be switched on per member; see ``shared_visual_target_weights``)."""
    heads = set(model_cfg.visual_targets)
    for i, m in enumerate(members):
        for key, needs in WEIGHT_HEADS.items():
            if getattr(m, key) > 0 and not heads & set(needs):
                raise ValueError(
                    f"sweep member {i} ({m.name!r}): {key}={getattr(m, key)} needs visual head {needs[0]!r}, which "
                    f"the shared model does not have (heads {sorted(heads)}): heads change the parameter shapes, so "
                    f"build the model with shared_visual_target_weights(members, model_cfg)")


def stack_hparams(members: Sequence[SweepMember]) -> SweepHParams:
    """The members' settings as float32 [K] arrays (one field per ``SweepHParams`` field)."""
    return SweepHParams(**{f.name: jnp.asarray([getattr(m, f.name) for m in members], jnp.float32)
                           for f in dataclasses.fields(SweepHParams)})


def member_keys(members: Sequence[SweepMember]) -> jax.Array:
    """Typed keys [K], ``jax.random.key(seed)`` per member (what a single run with that seed starts from)."""
    return jnp.stack([jax.random.key(m.seed) for m in members])


def visual_weights(model_cfg: VLConfig, hp: SweepHParams) -> dict[str, jax.Array]:
    """{head key: the member's weight} for the model's heads that a member weight covers (``WEIGHT_HEADS``)."""
    owner = {head: key for key, heads in WEIGHT_HEADS.items() for head in heads}
    return {head: getattr(hp, owner[head]) for head in model_cfg.visual_targets if head in owner}


# --------------------------------------------------------------------------------------------- step


def _member_step(state: SweepState, batch: Batch, *, model: VLBertForPreTraining, ocfg: ObjectiveConfig,
                 tx: optax.GradientTransformation, accumulate_steps: int = 1,
                 ) -> tuple[SweepState, dict[str, jax.Array]]:
    """``step.train_step`` for one member (an unstacked ``state``): its settings from ``state.hparams``,
    its peak learning rate put into the optimizer state, then ``runtime.state.apply_gradients``."""
    hp = state.hparams

    def loss_fn(params, batch, rng):
        return pretraining_loss(model, params, batch, rng, ocfg, deterministic=False, token_prob=hp.token_prob,
                                region_prob=hp.region_prob, overlap_threshold=hp.overlap_threshold,
                                visual_weights=visual_weights(model.cfg, hp))

    state = state.replace(opt_state=set_peak_learning_rate(state.opt_state, hp.learning_rate))
    return apply_gradients(state, batch, loss_fn, tx, accumulate_steps)


def sweep_train_step(state: SweepState, batch: Batch, *, model: VLBertForPreTraining, ocfg: ObjectiveConfig,
                     tx: optax.GradientTransformation, accumulate_steps: int = 1,
                     ) -> tuple[SweepState, dict[str, jax.Array]]:
    """One update of every member on the shared global ``batch`` ([B, ...], not stacked), dropout on.

    ``tx``: a ``make_optimizer(cfg, injected_peak=True)`` transformation (the members' peaks come from
    ``state.hparams.learning_rate``). ``ocfg``: the shared static settings (its probabilities and
    threshold are replaced by the members'). Metrics: those of ``step.train_step``, float32 [K] each.
    ``accumulate_steps``: each member's gradient averaged over that many microbatches of the shared batch
    (``step.train_step``'s caveats apply). Unlike ``step.train_step``, no logical rules are in context, so the
    model's activation constraints are off in a sweep (the members' rules may leave out the member axis).
    """
    fn = functools.partial(_member_step, model=model, ocfg=ocfg, tx=tx, accumulate_steps=accumulate_steps)
    return jax.vmap(fn, in_axes=(_AXES, None), out_axes=(_AXES, 0))(state, batch)


# ------------------------------------------------------------------------------ state and shardings


def _without_axis(rules: Rules, axis: str | None) -> Rules:
    """``rules`` with mesh axis ``axis`` removed from every rule (rules left empty map to None)."""
    if axis is None:
        return rules
    out = []
    for name, axes in rules:
        kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a != axis)
        out.append((name, kept[0] if len(kept) == 1 else kept or None))
    return tuple(out)


def _check_member_axis(mesh: Mesh, num_members: int, member_axis: str | None):
    if member_axis is None:
        return
    if member_axis not in mesh.axis_names:
        raise ValueError(f"member_axis={member_axis!r} is not a mesh axis {mesh.axis_names}")
    if num_members % mesh.shape[member_axis]:
        raise ValueError(f"{num_members} sweep members do not divide over mesh axis {member_axis!r} "
                         f"(size {mesh.shape[member_axis]})")


def sweep_state_shardings(model: VLBertForPreTraining, tx: optax.GradientTransformation,
                          example_batch: Mapping[str, Any], mesh: Mesh, num_members: int,
                          rules: Rules = DEFAULT_RULES, member_axis: str | None = None) -> SweepState:
    """A ``SweepState`` of ``NamedSharding``s: each member's params and optimizer moments placed by the
    logical ``rules`` as in a single run (``step.state_shardings``) behind a member axis that is
    replicated, or split over mesh axis ``member_axis`` (which the members' own dims then do not use);
    the step counter is replicated. No compute."""
    _check_member_axis(mesh, num_members, member_axis)
    single = state_shardings(model, tx, example_batch, mesh, _without_axis(rules, member_axis))

    def stack(s: NamedSharding) -> NamedSharding:
        return NamedSharding(mesh, PartitionSpec(member_axis, *s.spec))

    member = NamedSharding(mesh, PartitionSpec(member_axis))
    hparams = SweepHParams(**{f.name: member for f in dataclasses.fields(SweepHParams)})
    return SweepState(step=single.step, params=jax.tree.map(stack, single.params),
                      opt_state=jax.tree.map(stack, single.opt_state), rng=stack(single.rng), hparams=hparams)


def init_sweep_state(model: VLBertForPreTraining, tx: optax.GradientTransformation, members: Sequence[SweepMember],
                     example_batch: Mapping[str, Any], mesh: Mesh, rules: Rules = DEFAULT_RULES,
                     member_axis: str | None = None, compiler_options: dict[str, Any] | None = None) -> SweepState:
    """A fresh ``SweepState`` created in its shards (``sweep_state_shardings``): member k's params, optimizer
    state and step rng are those ``step.init_state(model, tx, jax.random.key(seed_k), ...)`` creates, with
    the member's peak learning rate injected. ``tx``: ``make_optimizer(cfg, injected_peak=True)``.
    Raises ``check_members``' errors before anything compiles."""
    check_members(members, model.cfg)
    init = boxed_init(model, tx, example_batch)
    shardings = sweep_state_shardings(model, tx, example_batch, mesh, len(members), rules, member_axis)

    def create(keys: jax.Array, hparams: SweepHParams) -> SweepState:
        states = jax.vmap(lambda r: nn.meta.unbox(init(r)))(keys)
        opt_state = jax.vmap(set_peak_learning_rate)(states.opt_state, hparams.learning_rate)
        return SweepState(step=jnp.zeros((), jnp.int32), params=states.params, opt_state=opt_state, rng=states.rng,
                          hparams=hparams)

    with jax.set_mesh(mesh):
        return jax.jit(create, out_shardings=shardings, compiler_options=compiler_options)(
            member_keys(members), stack_hparams(members))


def jit_sweep_step(model: VLBertForPreTraining, ocfg: ObjectiveConfig, tx: optax.GradientTransformation, mesh: Mesh,
                   state_shardings: SweepState, batch_sharding: NamedSharding | Mapping[str, NamedSharding],
                   compiler_options: dict[str, Any] | None = None, *, accumulate_steps: int = 1,
                   ) -> Callable[[SweepState, Batch], tuple[SweepState, dict[str, jax.Array]]]:
    """``sweep_train_step`` under ``jax.jit`` like ``step.jit_train_step``: the state in and out with
    ``state_shardings`` (donated: do not reuse the input state), the batch with ``batch_sharding``,
    metrics [K] replicated. Compile it ahead of time with ``step.compile_step``. ``accumulate_steps``: see
    ``sweep_train_step``."""
    fn = functools.partial(sweep_train_step, model=model, ocfg=ocfg, tx=tx, accumulate_steps=accumulate_steps)
    return jit_step(fn, mesh, state_shardings, batch_sharding, compiler_options)


def unstack_member(state: SweepState, k: int) -> TrainState:
    """Member ``k`` as a single run's ``TrainState`` (for its own checkpoint or conversion). Its optimizer
    state is that of ``make_optimizer(cfg, injected_peak=True)`` holding the member's peak, so
    ``step.train_step`` with that ``tx`` (and the member's ``ObjectiveConfig``) continues it."""
    return member_state(state, k)


def stack_states(states: Sequence[TrainState], members: Sequence[SweepMember]) -> SweepState:
    """K single-run states (e.g. one BERT-initialised start, or unstacked members) -> a ``SweepState``
    with the members' settings; their optimizer states must come from an ``injected_peak`` optimizer and
    share the step. The inverse of ``unstack_member``. (Place the result with ``jax.device_put`` and
    ``sweep_state_shardings``.)"""
    if len(states) != len(members):
        raise ValueError(f"{len(states)} states for {len(members)} sweep members")
    steps = {int(s.step) for s in states}
    if len(steps) != 1:
        raise ValueError(f"states at different steps {sorted(steps)}; a sweep shares one step counter")
    hparams = stack_hparams(members)
    opt_states = [set_peak_learning_rate(s.opt_state, m.learning_rate) for s, m in zip(states, members, strict=True)]
    stack = functools.partial(jax.tree.map, lambda *xs: jnp.stack(xs))
    return SweepState(step=states[0].step, params=stack(*[s.params for s in states]), opt_state=stack(*opt_states),
                      rng=jnp.stack([s.rng for s in states]), hparams=hparams)


# ------------------------------------------------------------------------------------------ summary


def summary_table(metrics_history: Sequence[Mapping[str, Any]], members: Sequence[SweepMember],
                  train_seconds: Sequence[float] | None = None) -> str:
    """A markdown table, one row per member: its name, the settings that differ between members, then
    the last step's ``loss`` and loss parts (``mlm``, ``mrc_kl``, ...; not ``grad_norm`` / ``lr``), and with
    ``train_seconds`` each member's training time (the members train together: the sweep's time).

    ``metrics_history``: one {metric: [K]} mapping per step, oldest first (arrays or lists).
    """
    if not metrics_history:
        raise ValueError("summary_table: no metrics yet")
    last = {k: np.asarray(v, np.float64).reshape(-1) for k, v in metrics_history[-1].items()}
    for key, value in last.items():
        if value.shape != (len(members),):
            raise ValueError(f"summary_table: metric {key!r} has {value.shape[0]} values for {len(members)} members")
    varying = [k for k in SWEEP_KEYS if len({getattr(m, k) for m in members}) > 1]
    parts = ["loss", *sorted(k for k in last if k not in ("loss", *NON_LOSS_METRICS))]
    parts = [k for k in parts if k in last]
    header = ["member", *varying, *(f"final {k}" if k == "loss" else k for k in parts)]
    header += ["training s"] if train_seconds is not None else []
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for i, m in enumerate(members):
        cells = [m.name, *(_fmt_setting(k, getattr(m, k)) for k in varying), *(f"{last[k][i]:.4f}" for k in parts)]
        cells += [f"{train_seconds[i]:.1f}"] if train_seconds is not None else []
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _fmt_setting(key: str, value: Any) -> str:
    if key == "overlap_threshold" and value > 1:
        return "none"
    return str(value) if key == "seed" else f"{value:g}"
