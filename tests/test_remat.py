"""``VLConfig.remat``: the encoder's sub-layers (unscanned) or scanned blocks under ``nn.remat``.

"full" and "dots" change what the backward pass keeps, never parameters, outputs or gradients: the same
parameter tree, loss (dropout on: the recomputation draws the same masks) and gradients as "none", on tiny
UNITER and LXMERT with and without ``scan_layers``; and a compiled backward at a moderate size keeps fewer
temporaries with "full" (and "dots") than with "none". The config key reaches the model and stays out of VOLTA's JSON.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from test_train_step import SIZES, synthetic_batch

from jaxvl.configs.pretrain import get_config as pretrain_config
from jaxvl.models import get_config, get_model, to_volta_dict
from jaxvl.models.volta.config import config_from_volta_dict
from jaxvl.models.volta.presets import lxmert_plan, single_stream_plan
from jaxvl.pretrain.loss import ObjectiveConfig, pretraining_loss
from jaxvl.runtime.compile import FAST_COMPILE, memory_stats

PLANS = {"uniter": single_stream_plan(2), "lxmert": lxmert_plan(l_layers=1, r_layers=1, x_layers=2, bert_layers=2)}


@functools.cache
def data():
    host, tok = synthetic_batch()
    ocfg = ObjectiveConfig(mask_id=tok.mask_id, cls_id=tok.cls_id, sep_id=tok.sep_id)
    return {k: jnp.asarray(v) for k, v in host.items()}, ocfg


@functools.cache
def loss_and_grads(name: str, scan: bool, remat: str):
    """Parameter shapes, and the pretraining loss (dropout on, fixed key) and its gradient at the same
    initial parameters."""
    batch, ocfg = data()
    model = get_model(name, tiny=True, scan_layers=scan, remat=remat, **SIZES, **PLANS[name].to_dict())
    init = jax.jit(model.init, compiler_options=FAST_COMPILE)  # one program, not one per initialiser op
    params = nn.meta.unbox(init(jax.random.key(0), **model.dummy_inputs())["params"])
    fn = jax.value_and_grad(lambda p: pretraining_loss(model, p, batch, jax.random.key(1), ocfg)[0])
    loss, grads = jax.jit(fn, compiler_options=FAST_COMPILE)(params)
    return jax.tree.map(lambda x: x.shape, params), float(loss), grads


# LXMERT's cases (two compiles of ~10-20 s each) run under -m slow.
CASES = [("uniter", False), ("uniter", True), pytest.param("lxmert", False, marks=pytest.mark.slow),
         pytest.param("lxmert", True, marks=pytest.mark.slow)]


@pytest.mark.parametrize("remat", ["full", "dots"])
@pytest.mark.parametrize("name, scan", CASES)
def test_remat_keeps_parameters_loss_and_gradients(name, scan, remat):
    shapes, loss, grads = loss_and_grads(name, scan, remat)
    want_shapes, want_loss, want_grads = loss_and_grads(name, scan, "none")
    assert shapes == want_shapes
    assert loss == pytest.approx(want_loss, rel=1e-6)

    # Recomputation reorders float32 sums: compare each leaf to its own scale, with a floor for gradients that
    # are zero but for rounding (the key biases: a softmax does not see them).
    floor = 1e-7 * max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want_grads))

    def close(path, got, want):
        atol = 1e-5 * float(jnp.max(jnp.abs(want))) + floor
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=jax.tree_util.keystr(path))

    jax.tree_util.tree_map_with_path(close, grads, want_grads)


# Unscanned: -m slow (an LXMERT forward compiled twice, ~20 s); its remat path keeps the loss and gradients in
# test_remat_keeps_parameters_loss_and_gradients[uniter-False-*], and the sown attention under remat is checked here
# with scan_layers.
@pytest.mark.parametrize("scan", [pytest.param(False, marks=pytest.mark.slow), True])
def test_remat_keeps_hidden_states_and_sown_attention(scan):
    """The forward pass with every output asked for (hidden states, sown attention weights) is unchanged."""
    batch, _ = data()
    inputs = {k: batch[k] for k in ("input_ids", "features", "locations", "text_mask", "region_mask")}
    outs = {}
    for remat in ("none", "full"):
        model = get_model("lxmert", tiny=True, sow_weights=True, scan_layers=scan, remat=remat, **SIZES,
                          **PLANS["lxmert"].to_dict())
        params = jax.jit(model.init)(jax.random.key(0), **model.dummy_inputs())["params"]
        forward = functools.partial(model.apply, output_hidden_states=True, mutable=["intermediates"])
        outs[remat] = jax.jit(forward, compiler_options=FAST_COMPILE)({"params": params}, **inputs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), outs["full"], outs["none"])


def moderate_uniter(remat: str, scan: bool):
    """A moderate UNITER (4 layers, hidden 256) with ``remat``, abstract parameters, the deterministic loss and a
    batch of 32 x (32 tokens, 37 regions) as ``ShapeDtypeStruct``s."""
    model = get_model("uniter", tiny=True, remat=remat, scan_layers=scan, hidden_size=256, v_hidden_size=256,
                      num_attention_heads=4, v_num_attention_heads=4, intermediate_size=1024,
                      v_intermediate_size=1024, vocab_size=512, v_feature_size=64, num_object_classes=20,
                      **single_stream_plan(4).to_dict())
    batch, ocfg = data()
    rows, text, regions = 32, 32, 37
    spec = {k: jax.ShapeDtypeStruct((rows, text if v.shape[1] == batch["input_ids"].shape[1] else regions,
                                     *v.shape[2:]), v.dtype) for k, v in batch.items()}
    spec.update(features=jax.ShapeDtypeStruct((rows, regions, 64), jnp.float32),
                cls_prob=jax.ShapeDtypeStruct((rows, regions, 21), jnp.float32))
    params = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), **model.dummy_inputs())["params"]))

    def loss(p, b):
        return pretraining_loss(model, p, b, jax.random.key(1), ocfg, deterministic=True)[0]

    return loss, params, spec


def test_remat_cuts_the_compiled_backward_temporaries_of_scanned_layers():
    temp = {}
    for remat in ("none", "full", "dots"):
        loss, params, spec = moderate_uniter(remat, scan=True)
        temp[remat] = memory_stats(jax.jit(jax.grad(loss)).lower(params, spec).compile())["temp_size_in_bytes"]
    assert temp["full"] < 0.5 * temp["none"], temp
    assert temp["full"] < temp["dots"] < temp["none"], temp


def test_remat_cuts_the_residuals_of_unscanned_layers():
    """What the forward pass keeps for the backward (the leaves of ``jax.vjp``'s function, shapes only): XLA:CPU's
    compiled temporaries of the unscanned layers do not show it (its scheduler may recompute early), these do."""

    def residual_bytes(remat: str) -> int:
        loss, params, spec = moderate_uniter(remat, scan=False)
        residuals = jax.eval_shape(lambda p, b: jax.vjp(loss, p, b)[1], params, spec)
        return sum(math.prod(r.shape) * r.dtype.itemsize for r in jax.tree.leaves(residuals))

    saved = {remat: residual_bytes(remat) for remat in ("none", "full", "dots")}
    assert saved["full"] < 0.25 * saved["none"], saved
    assert saved["full"] < saved["dots"] < saved["none"], saved


def test_remat_is_a_jaxvl_knob_outside_volta_json():
    cfg = get_config("uniter", tiny=True, remat="dots")
    assert "remat" not in to_volta_dict(cfg)
    assert config_from_volta_dict(to_volta_dict(cfg)).remat == "none"
    with pytest.raises(ValueError, match="remat='some'"):
        get_config("uniter", tiny=True, remat="some")
    assert pretrain_config("uniter,tiny").model.remat == "none"
