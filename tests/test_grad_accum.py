"""Gradient accumulation (``runtime.state.apply_gradients(..., accumulate_steps=k)``): k microbatches'
gradients averaged under ``lax.scan``, then one update.

For a loss that is a mean over examples with no randomness the accumulated update equals the large batch's
(a linear model; the V&L model's ITM loss with masking, negatives and dropout off, on 8 devices). The
pretraining step's own loss is not such a loss (``pretrain.step.train_step``'s docstring): it is checked to
run, stay finite and keep its shardings. Microbatches stay split over the mesh's batch axes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec
from ml_collections import ConfigDict
from test_train_step import PLANS, SIZES, synthetic_batch

from jaxvl.models import get_model
from jaxvl.pretrain.loss import ObjectiveConfig, pretraining_loss
from jaxvl.pretrain.step import init_state, jit_train_step, state_shardings
from jaxvl.pretrain.sweep import init_sweep_state, jit_sweep_step, sweep_state_shardings
from jaxvl.pretrain.trainer import grad_accum_steps
from jaxvl.runtime.compile import FAST_COMPILE, compile_step, jit_step, memory_stats
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import batch_sharding, make_mesh, to_global
from jaxvl.runtime.state import TrainState, apply_gradients, split_microbatches

ROWS = 16  # 2 rows per device on 8 devices at k = 1, 1 per device at k = 2


def linear_problem(rows: int = ROWS, features: int = 6, classes: int = 3):
    """A softmax regression: params {w [F, C], b [C]}, batch {x [rows, F], y [rows]}, mean cross-entropy."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(features, classes)), jnp.float32), "b": jnp.zeros((classes,))}
    batch = {"x": jnp.asarray(rng.normal(size=(rows, features)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, classes, rows), jnp.int32)}

    def loss_fn(p, b, rng):
        logits = b["x"] @ p["w"] + p["b"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, b["y"])
        return jnp.mean(nll), {"nll_max": jnp.max(nll)}

    return params, batch, loss_fn


def fresh(params, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=jax.random.key(seed))


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("tx", [optax.sgd(0.5), make_optimizer(OptimizerConfig(total_steps=4, learning_rate=1e-2))],
                         ids=["sgd", "adamw"])
def test_accumulated_update_equals_the_large_batch_update(k, tx):
    params, batch, loss_fn = linear_problem()
    want, wm = jax.jit(lambda s, b: apply_gradients(s, b, loss_fn, tx))(fresh(params, tx), batch)
    got, gm = jax.jit(lambda s, b: apply_gradients(s, b, loss_fn, tx, k))(fresh(params, tx), batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got.params, want.params)
    assert int(got.step) == 1 and gm.keys() == wm.keys()
    for key in ("loss", "grad_norm", "lr"):
        if key in wm:
            np.testing.assert_allclose(gm[key], wm[key], rtol=1e-6, err_msg=key)
    # A metric that is not a mean over examples is the mean of the microbatches' values, not the batch's.
    assert float(gm["nll_max"]) <= float(wm["nll_max"])


def test_microbatch_keys_are_fold_in_of_the_step_key():
    """Microbatch j draws from ``fold_in(fold_in(state.rng, step), j)``; k = 1 from the step key itself."""
    params, batch, _ = linear_problem()
    tx = optax.sgd(0.1)

    def loss_fn(p, b, rng):
        return jnp.sum(p["b"]), {"draw": jax.random.uniform(rng)}

    state = fresh(params, tx, seed=3)
    step_key = jax.random.fold_in(state.rng, 0)
    _, one = apply_gradients(state, batch, loss_fn, tx)
    _, four = apply_gradients(state, batch, loss_fn, tx, 4)
    assert float(one["draw"]) == float(jax.random.uniform(step_key))
    want = np.mean([float(jax.random.uniform(jax.random.fold_in(step_key, j))) for j in range(4)])
    np.testing.assert_allclose(float(four["draw"]), want, rtol=1e-6)


def test_microbatches_are_strided_and_stay_split_over_the_batch_axes():
    batch = {"x": jnp.arange(ROWS * 3, dtype=jnp.float32).reshape(ROWS, 3), "id": jnp.arange(ROWS)}
    micro = split_microbatches(batch, 4)
    assert micro["x"].shape == (4, ROWS // 4, 3)
    np.testing.assert_array_equal(micro["id"][1], np.arange(1, ROWS, 4))  # microbatch j: rows j, j + k, ...
    for shape, axes in (((8, 1, 1), "data"), ((4, 2, 1), ("data", "fsdp")), ((1, 2, 4), "fsdp")):
        mesh = make_mesh(*shape)
        global_batch = to_global({k: np.asarray(v) for k, v in batch.items()}, mesh)
        with jax.set_mesh(mesh):
            out = jax.jit(lambda b: split_microbatches(b, 2)).lower(global_batch).compile().output_shardings
        assert out["x"].spec == PartitionSpec(None, axes), shape
        assert out["id"].spec == PartitionSpec(None, axes), shape


# ---------------------------------------------------------------------------------- the V&L model


@functools.cache
def vl_setup():
    host, tok = synthetic_batch(num_images=ROWS)
    model = get_model("uniter", tiny=True, **SIZES, **PLANS["uniter"].to_dict())
    ocfg = ObjectiveConfig(mask_id=tok.mask_id, cls_id=tok.cls_id, sep_id=tok.sep_id)
    tx = make_optimizer(OptimizerConfig(total_steps=3, warmup_fraction=0.0, learning_rate=1e-3))
    mesh = make_mesh(8, 1, 1)
    batch = to_global(host, mesh)
    state = init_state(model, tx, jax.random.key(0), batch, mesh, compiler_options=FAST_COMPILE)
    return model, ocfg, tx, mesh, batch, state


def copy(state: TrainState) -> TrainState:
    return jax.tree.map(lambda x: x.copy(), state)


@functools.cache
def itm_only_update(k: int):
    """One SGD update on 8 devices of the V&L model's deterministic ITM loss, a mean over examples: no masked
    tokens or regions (MLM / MRC terms 0), no negatives, dropout off."""
    model, ocfg, _, mesh, batch, state = vl_setup()
    ocfg = dataclasses.replace(ocfg, token_prob=0.0, region_prob=0.0, itm_prob=0.0)
    tx = optax.sgd(0.5)
    state = state.replace(opt_state=tx.init(state.params))

    def loss_fn(params, b, rng):
        return pretraining_loss(model, params, b, rng, ocfg, deterministic=True)

    shardings = state_shardings(model, tx, batch, mesh)
    step = jit_step(lambda s, b: apply_gradients(s, b, loss_fn, tx, k), mesh, shardings, batch_sharding(mesh),
                    FAST_COMPILE)
    new, metrics = compile_step(step, state, batch, mesh)(copy(state), batch)
    return jax.device_get(new.params), {key: float(v) for key, v in metrics.items()}


# k = 4 on the V&L model: -m slow (another compile); not slow, k = 2 here and k = 4 on the linear problem above.
@pytest.mark.parametrize("k", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_accumulated_vl_update_equals_the_large_batch_update_on_8_devices(k):
    want, wm = itm_only_update(1)
    got, gm = itm_only_update(k)
    assert wm["itm"] > 0 and wm["mlm"] == 0.0 and wm["loss"] == wm["itm"]
    for key in wm:
        np.testing.assert_allclose(gm[key], wm[key], rtol=1e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)


# Two compiles of the real step on 8 devices: -m slow. Not slow: the real step at k = 2 (its run equals the sweep
# member's in test_sweep_member_accumulates_like_its_single_run), the accumulated update on 8 devices
# (test_accumulated_vl_update_equals_the_large_batch_update_on_8_devices[2]) and the microbatches' shardings
# (test_microbatches_are_strided_and_stay_split_over_the_batch_axes).
@pytest.mark.slow
def test_pretraining_step_accumulates_on_8_devices():
    """The real step at k = 2: finite loss and parts, the metrics of k = 1, state kept in its shardings."""
    model, ocfg, tx, mesh, batch, state = vl_setup()
    shardings = state_shardings(model, tx, batch, mesh)
    runs = {}
    for k in (1, 2):
        step = jit_train_step(model, ocfg, tx, mesh, shardings, batch_sharding(mesh), FAST_COMPILE, accumulate_steps=k)
        new, metrics = compile_step(step, state, batch, mesh)(copy(state), batch)
        runs[k] = (new, {key: float(v) for key, v in metrics.items()})
    (_, m1), (new, m2) = runs[1], runs[2]
    assert m2.keys() == m1.keys() and all(np.isfinite(list(m2.values())))
    assert m2["lr"] == m1["lr"] and int(new.step) == 1
    for leaf, s in zip(jax.tree.leaves(new), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(s, leaf.ndim)


def test_accumulation_cuts_activation_memory_per_device():
    """An MLP whose activations dominate (4096 rows x 1024 hidden), compiled on 8 devices: at k = 4 a device's
    temporaries are about a quarter (each microbatch split over all 8 devices, one live at a time)."""
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(64, 1024)) / 8, jnp.float32),
              "w2": jnp.asarray(rng.normal(size=(1024, 1)) / 32, jnp.float32)}
    rows = 4096
    batch = {"x": jax.ShapeDtypeStruct((rows, 64), jnp.float32), "y": jax.ShapeDtypeStruct((rows, 1), jnp.float32)}

    def loss_fn(p, b, rng):
        h = jnp.tanh(jnp.tanh(b["x"] @ p["w1"]) * 2.0)
        return jnp.mean((h @ p["w2"] - b["y"]) ** 2), {}

    tx = optax.sgd(0.1)
    mesh = make_mesh(8, 1, 1)
    replicated = jax.tree.map(lambda _: jax.NamedSharding(mesh, PartitionSpec()), fresh(params, tx))
    temp = {}
    for k in (1, 4):
        step = jit_step(lambda s, b, k=k: apply_gradients(s, b, loss_fn, tx, k), mesh, replicated, batch_sharding(mesh))
        temp[k] = memory_stats(compile_step(step, fresh(params, tx), batch, mesh))["temp_size_in_bytes"]
    assert temp[4] < 0.4 * temp[1], temp


def test_sweep_member_accumulates_like_its_single_run():
    """A vmapped sweep at k = 2 (microbatches split inside the member vmap): member 1 equals its single run at
    k = 2 after one update (tests/test_sweep.py's twins, one device)."""
    from test_sweep import HOST, MEMBERS, MODEL, OCFG, TX, single_settings

    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    batch = to_global(HOST, mesh)
    shardings = sweep_state_shardings(MODEL, TX, batch, mesh, len(MEMBERS))
    state = init_sweep_state(MODEL, TX, MEMBERS, batch, mesh, compiler_options=FAST_COMPILE)
    step = jit_sweep_step(MODEL, OCFG, TX, mesh, shardings, batch_sharding(mesh), FAST_COMPILE, accumulate_steps=2)
    swept, sm = compile_step(step, state, batch, mesh)(state, batch)

    model, ocfg, tx = single_settings(MEMBERS[1])
    single = init_state(model, tx, jax.random.key(MEMBERS[1].seed), batch, mesh, compiler_options=FAST_COMPILE)
    step = jit_train_step(model, ocfg, tx, mesh, state_shardings(model, tx, batch, mesh), batch_sharding(mesh),
                          FAST_COMPILE, accumulate_steps=2)
    single, m = compile_step(step, single, batch, mesh)(single, batch)
    for key in m:
        np.testing.assert_allclose(sm[key][1], m[key], rtol=1e-5, err_msg=key)
    got = swept.params["bert"]["encoder"]["layer_0"]["query"]["kernel"][1]
    np.testing.assert_allclose(got, single.params["bert"]["encoder"]["layer_0"]["query"]["kernel"], rtol=1e-5,
                               atol=1e-7)


# ------------------------------------------------------------------------------------------ errors


def test_bad_accumulate_steps_fail_before_compiling():
    params, batch, loss_fn = linear_problem(rows=10)
    tx = optax.sgd(0.1)
    step = jax.jit(lambda s, b, k: apply_gradients(s, b, loss_fn, tx, k), static_argnums=2)
    with pytest.raises(ValueError, match=r"accumulate_steps=4 does not divide the batch: field 'x' has shape \(10,"):
        step.lower(fresh(params, tx), batch, 4)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="expected a positive int"):
            step.lower(fresh(params, tx), batch, bad)
    model, ocfg, tx, mesh, batch, state = vl_setup()
    jitted = jit_train_step(model, ocfg, tx, mesh, state_shardings(model, tx, batch, mesh), batch_sharding(mesh),
                            accumulate_steps=3)
    with pytest.raises(ValueError, match="accumulate_steps=3 does not divide the batch: field '.*' has shape \\(16"):
        jitted.lower(state, batch)


def test_trainer_checks_grad_accum_steps_against_the_batch_size():
    cfg = ConfigDict(dict(grad_accum_steps=4, data=dict(batch_size=256)))
    assert grad_accum_steps(cfg) == 4
    cfg.grad_accum_steps = 3
    with pytest.raises(ValueError, match="grad_accum_steps=3 does not divide data.batch_size=256"):
        grad_accum_steps(cfg)
    cfg.grad_accum_steps = 0
    with pytest.raises(ValueError, match="expected a positive int"):
        grad_accum_steps(cfg)
