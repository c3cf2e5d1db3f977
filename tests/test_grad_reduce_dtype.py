"""``VLConfig.weight_grad_dtype``: below float32, the dense layers' weight gradients come out of the backward matmul
in float32 ("float32", the default) or in the compute dtype ("compute"), and the data-parallel all-reduce sums them
in that dtype.

On the CPU mesh XLA reduces a jitted step's gradients after their cast to float32, so the data-parallel sum is
written with ``shard_map`` here: the parameters enter replicated and autodiff psums each weight gradient where the
parameter meets the per-device batch, in the dtype the model's code gives that gradient (the lowered program shows
it; a TPU compile keeps it: the slow libtpu test reads it from a v5e compile of the real train step). XLA CPU
compiles a bf16 psum to a float32 all-reduce whose result is rounded to bf16: a milder error than a bf16 sum.
"""

from __future__ import annotations

import importlib.util
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P
from test_train_step import SIZES, synthetic_batch

from jaxvl.models import get_model
from jaxvl.models.layers import F32GradDense, dense
from jaxvl.models.volta.config import VLConfig, config_from_volta_dict, to_volta_dict
from jaxvl.models.volta.presets import single_stream_plan
from jaxvl.pretrain.loss import ObjectiveConfig, pretraining_loss
from jaxvl.runtime.sharding import make_mesh

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
ROWS = 4  # rows per device


def all_reduce_elements(hlo_text: str) -> dict[str, int]:
    """Elements all-reduced per dtype (``bf16``, ``f32``, ...) over the all-reduce instructions of an HLO text."""
    out: dict[str, int] = {}
    for line in hlo_text.splitlines():
        parts = re.split(r" all-reduce(?:-start)?\(", line)
        if len(parts) < 2:
            continue
        for dtype, dims in re.findall(r"\b(bf16|f16|f32|s32|u32|pred)\[([\d,]*)\]", parts[0]):
            out[dtype] = out.get(dtype, 0) + int(np.prod([int(d) for d in dims.split(",") if d]))
    return out


def lowered_all_reduce_elements(stablehlo_text: str) -> dict[str, int]:
    """Elements all-reduced per dtype (``bf16``, ``f32``, ...) in a lowered (StableHLO) module's text: the operand
    types that close each ``stablehlo.all_reduce``'s reduction region, ``}) : (tensor<AxBxbf16>, ...) -> ...``."""
    out: dict[str, int] = {}
    in_all_reduce = False
    for line in stablehlo_text.splitlines():
        if '"stablehlo.all_reduce"' in line:
            in_all_reduce = True
        elif in_all_reduce and line.lstrip().startswith("}) :"):
            operands = line.split("->")[0]
            for dims, dtype in re.findall(r"tensor<((?:\d+x)*)([a-z]+\d*)>", operands):
                out[dtype] = out.get(dtype, 0) + int(np.prod([int(d) for d in dims.split("x") if d]))
            in_all_reduce = False
    return out


def bf16_round(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def rel_error(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """||got - ref|| / ||ref|| over all the leaves together."""
    num = sum(float(((g - r) ** 2).sum()) for g, r in zip(got, ref, strict=True))
    return float(np.sqrt(num / sum(float((r ** 2).sum()) for r in ref)))


def test_f32_grad_dense_same_forward_and_input_gradient_float32_weight_gradient():
    """``F32GradDense`` vs ``nn.DenseGeneral`` at bfloat16, both layouts ``dense`` builds ([.., in] -> [.., heads, kv]
    and [.., heads, kv] -> [.., out]): the same parameters, bitwise the same bf16 outputs and input gradients; the
    kernel gradient is the float32 accumulator (not bf16-rounded, within float32 rounding of the float64 x^T g)."""
    for features, axes, axis, shape in [((2, 4), ("embed", "heads", "kv"), -1, (3, 5, 8)),
                                        (8, ("heads", "kv", "embed"), (-2, -1), (3, 5, 2, 4))]:
        x = jax.random.normal(jax.random.key(1), shape, jnp.float32).astype(jnp.bfloat16)
        plain, f32 = (dense(features, axes, axis=axis, dtype="bfloat16", name="d", weight_grad_dtype=w)
                      for w in ("compute", "float32"))
        assert isinstance(f32, F32GradDense) and not isinstance(plain, F32GradDense)
        params = nn.unbox(plain.init(jax.random.key(0), x))
        assert jax.tree.all(jax.tree.map(jnp.array_equal, params, nn.unbox(f32.init(jax.random.key(0), x))))
        params = jax.tree.map(lambda a: a + 0.01, params)  # a non-zero bias
        cot = jax.random.normal(jax.random.key(2), plain.apply(params, x).shape).astype(jnp.bfloat16)

        def vjp(module, params=params, x=x, cot=cot):
            out, pull = jax.vjp(module.apply, params, x)
            return out, *pull(cot)

        (out_p, gp_p, gx_p), (out_f, gp_f, gx_f) = vjp(plain), vjp(f32)
        assert out_f.dtype == jnp.bfloat16 and jnp.array_equal(out_p, out_f) and jnp.array_equal(gx_p, gx_f)
        n_in = len(shape) - 2 if axis == -1 else 2
        xs, gs = np.asarray(x, np.float64), np.asarray(cot, np.float64)
        exact = np.tensordot(xs, gs, axes=(list(range(len(shape) - n_in)), list(range(len(shape) - n_in))))
        kernel_f, kernel_p = np.asarray(gp_f["params"]["kernel"]), np.asarray(gp_p["params"]["kernel"])
        assert kernel_f.dtype == np.float32 and not np.array_equal(kernel_f, bf16_round(kernel_f))
        np.testing.assert_allclose(kernel_f, exact, rtol=1e-5, atol=1e-5)
        assert np.array_equal(kernel_p, bf16_round(kernel_p))  # "compute": the bf16 matmul output
        n_out = 1 if isinstance(features, int) else len(features)
        bias = np.asarray(gp_f["params"]["bias"])
        assert bias.dtype == np.float32
        np.testing.assert_allclose(bias, gs.sum(axis=tuple(range(gs.ndim - n_out))), rtol=1e-5, atol=1e-5)


def test_config_field_validated_and_outside_volta_json():
    assert VLConfig().weight_grad_dtype == "float32"
    with pytest.raises(ValueError, match="weight_grad_dtype"):
        VLConfig(weight_grad_dtype="bfloat16")
    cfg = VLConfig(weight_grad_dtype="compute", dtype="bfloat16")
    d = to_volta_dict(cfg)
    assert "weight_grad_dtype" not in d and config_from_volta_dict(d) == cfg.replace(weight_grad_dtype="float32",
                                                                                   dtype="float32")
    with pytest.raises(ValueError, match="unknown VOLTA config keys"):
        config_from_volta_dict({**d, "weight_grad_dtype": "compute"})


def _model(dtype: str, weight_grad_dtype: str, layers: int = 2, scan: bool = True):
    return get_model("uniter", tiny=True, **SIZES, **single_stream_plan(layers).to_dict(), dtype=dtype,
                     scan_layers=scan, weight_grad_dtype=weight_grad_dtype)


def _setup(num_images: int, model: nn.Module):
    """The synthetic batch of ``num_images`` rows, its objective settings and ``model``'s float32 parameters."""
    host, tok = synthetic_batch(num_images=num_images)
    ocfg = ObjectiveConfig(mask_id=tok.mask_id, cls_id=tok.cls_id, sep_id=tok.sep_id)
    x = {k: jnp.asarray(host[k][:1]) for k in ("input_ids", "features", "locations")}
    params = nn.unbox(model.init(jax.random.key(0), **x)["params"])
    return {k: jnp.asarray(v) for k, v in host.items()}, ocfg, params


def _loss_and_grad(model, ocfg):
    def f(params, batch):
        return jax.value_and_grad(lambda p: pretraining_loss(model, p, batch, jax.random.key(1), ocfg,
                                                             deterministic=True)[0])(params)
    return f


def test_float32_model_is_unaffected():
    """dtype float32: bitwise the same loss and gradients with weight_grad_dtype "float32" or "compute"."""
    models = [_model("float32", w, layers=1, scan=False) for w in ("float32", "compute")]
    batch, ocfg, params = _setup(4, models[0])
    runs = [jax.jit(_loss_and_grad(model, ocfg))(params, batch) for model in models]
    assert jax.tree.all(jax.tree.map(jnp.array_equal, runs[0], runs[1]))


@pytest.mark.slow
def test_data_parallel_sum_in_float32_closer_to_the_reference():
    """bf16 UNITER (2 scanned layers) on a data-parallel mesh of 8: with "compute" the weight gradients are psummed
    in bf16 (bf16 all-reduce operands in the lowered program), with "float32" in float32 (no bf16 all-reduce). The
    reference is the float64 sum of the 8 devices' float32 partial gradients. The dense layers' summed gradients
    are within float32 rounding of it with "float32" (measured 5e-8 relative) and not with "compute" (measured
    2e-3: bf16 partials, their CPU sum rounded to bf16); the forward loss is bitwise the same in both."""
    mesh = make_mesh(8, 1, 1)
    axis = mesh.axis_names[0]
    batch, ocfg, params = _setup(8 * ROWS, _model("float32", "float32"))
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]
    dense_modules = {p.rsplit("[", 1)[0] for p in paths if p.endswith("['kernel']")}
    dense_leaf = [p.rsplit("[", 1)[0] in dense_modules for p in paths]  # kernels and biases of the dense layers

    def data_parallel(weight_grad_dtype: str, partials: bool):
        step = _loss_and_grad(_model("bfloat16", weight_grad_dtype), ocfg)

        def per_device(params, batch):
            if partials:  # parameters made per-device: each device's own gradient, nothing summed
                params = jax.tree.map(lambda a: jax.lax.pcast(a, (axis,), to="varying"), params)
            loss, grads = step(params, batch)
            return jax.lax.psum(loss, axis), jax.tree.map(lambda g: g[None], grads) if partials else grads

        out = (P(), P(axis)) if partials else (P(), P())
        return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axis)), out_specs=out))

    def leaves(tree):
        return [np.asarray(a, np.float64) for a, keep in zip(jax.tree.leaves(tree), dense_leaf, strict=True) if keep]

    _, partial_grads = data_parallel("float32", partials=True)(params, batch)
    ref = [p.sum(0) for p in leaves(partial_grads)]
    assert sum(not np.array_equal(p, bf16_round(p)) for p in ref) > len(ref) // 2  # float32 partials, not rounded
    errors, losses = {}, {}
    for weight_grad_dtype in ("compute", "float32"):
        lowered = data_parallel(weight_grad_dtype, partials=False).lower(params, batch)
        reduced = lowered_all_reduce_elements(lowered.as_text())
        if weight_grad_dtype == "compute":
            assert reduced.get("bf16", 0) > 0.5 * sum(r.size for r in ref)
        else:
            assert "bf16" not in reduced and reduced["f32"] >= sum(r.size for r in ref)
        losses[weight_grad_dtype], grads = lowered.compile()(params, batch)
        errors[weight_grad_dtype] = rel_error(leaves(grads), ref)
    assert float(losses["compute"]) == float(losses["float32"])
    assert errors["float32"] < 1e-6 < 5e-4 < errors["compute"] < 2e-2, errors


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu absent: install the tpu extra (pip install 'jaxvl[tpu]')")
def test_tpu_compile_all_reduces_weight_gradients_in_float32(tmp_path):
    """The real data-parallel pretraining step (tiny bf16 UNITER, scanned) compiled for v5e-8: with "compute" most
    gradient elements are all-reduced in bf16; with "float32" none is, and the all-reduce bytes grow (measured
    327,736 -> 529,235 bytes per chip per step)."""
    from jaxvl.aot.chips import parse_slice
    from jaxvl.aot.run import compile_report
    from jaxvl.configs import load_config

    cfg = load_config("pretrain:uniter,tiny", ["model.dtype=bfloat16", "model.scan_layers=True"])
    found = {}
    for weight_grad_dtype in ("compute", "float32"):
        path = str(tmp_path / f"{weight_grad_dtype}.hlo")
        report = compile_report(cfg, "pretrain:uniter,tiny", parse_slice("v5e-8"), 1, "data=8", 16,
                                model_overrides={"weight_grad_dtype": weight_grad_dtype}, hlo_path=path)
        with open(path) as f:
            found[weight_grad_dtype] = (all_reduce_elements(f.read()), report.collective_bytes["all-reduce"],
                                        report.params)
    (compute, compute_bytes, params), (f32, f32_bytes, _) = found["compute"], found["float32"]
    assert compute.get("bf16", 0) > 0.5 * params and "bf16" not in f32 and f32["f32"] > 0.5 * params
    assert 1.3 * compute_bytes < f32_bytes < 2 * compute_bytes
