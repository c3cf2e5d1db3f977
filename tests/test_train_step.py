"""The sharded, donated, AOT-compiled train step on 8 fake CPU devices.

Each (model, mesh) pair is initialised and compiled once (``run``, cached) and stepped 3 times; the
tests compare those runs. Compiling dominates the time (XLA CPU, mostly the threefry bits of dropout
and masking), so the models are one layer deep (UNITER: one attention + one feed-forward sub-layer;
LXMERT: one text, one vision and one cross block), everything compiles with ``FAST_COMPILE``, and
LXMERT runs the full mesh matrix only under ``-m slow`` (by default: one device vs. (2, 2, 2)).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvl.data.regions import region_inputs
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import get_model
from jaxvl.models.volta.presets import lxmert_plan, single_stream_plan
from jaxvl.pretrain.loss import ObjectiveConfig, pretraining_loss
from jaxvl.pretrain.step import init_state, jit_train_step, state_shardings, train_step
from jaxvl.runtime.compile import FAST_COMPILE, compile_step, memory_stats, memory_summary
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import batch_sharding, bytes_per_device, make_mesh, to_global
from jaxvl.runtime.state import TrainState

STEPS = 3
# Meshes (data, fsdp, tensor); "single" is one device.
MESHES = {"single": (1, 1, 1), "data": (8, 1, 1), "fsdp": (1, 8, 1), "tensor": (2, 1, 4), "mixed": (2, 2, 2)}
# hidden 64 / FFN 128 / vocab 1024 divide over 8 devices, so under FSDP nearly every byte is sharded and the
# per-device share of the state approaches 1/8 (at the stock tiny sizes, 32 / 37 / 99, the FFN and vocab
# dims do not divide over 8 and stay replicated). 20 object classes: the synthetic world's detector.
SIZES = dict(vocab_size=1024, hidden_size=64, v_hidden_size=64, intermediate_size=128, v_intermediate_size=128,
             v_feature_size=24, num_object_classes=20, visual_target_weights={"0": 1.0, "3": 0.5, "1": 0.1})
PLANS = {"uniter": single_stream_plan(1), "lxmert": lxmert_plan(l_layers=1, r_layers=1, x_layers=1, bert_layers=2)}
# Same parameters and same random bits on every mesh (threefry is partitionable), so runs differ only in
# the order of float32 sums (sharded matmuls and reductions, all-reduces): ~1e-7 relative per op; after 3
# Adam steps (lr 1e-3) the loss agrees to ~1e-6, so 1e-5 (about 100 float32 ulps) leaves margin.
RTOL = 1e-5


def synthetic_batch(num_images: int = 8, text_len: int = 16, regions: int = 6) -> tuple[dict[str, np.ndarray], Any]:
    """Host arrays of a pretraining batch from the synthetic world (``[IMG]`` row first), and its tokenizer."""
    world = World(WorldConfig(num_images=num_images, num_regions=regions))
    tok = Tokenizer.from_words(world.vocabulary())
    rows = []
    for image in world:
        ids, mask = tok.encode(image.captions[0], text_len)
        r = region_inputs(image.regions, regions, "first")
        n = image.regions.num_boxes
        cls = np.zeros((regions + 1, world.cfg.num_classes + 1), np.float32)
        cls[1:1 + n] = image.regions.cls_prob
        oid = np.full((regions + 1,), -1, np.int32)
        oid[1:1 + n] = image.regions.objects_id
        conf = np.zeros((regions + 1,), np.float32)
        conf[1:1 + n] = image.regions.objects_conf
        target = r["region_mask"].copy()
        target[0] = 0
        rows.append(dict(input_ids=ids, text_mask=mask, token_type_ids=np.zeros_like(ids), region_target_mask=target,
                         cls_prob=cls, objects_id=oid, objects_conf=conf, **r))
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}, tok


@functools.cache
def setup(name: str):
    host, tok = synthetic_batch()
    model = get_model(name, tiny=True, **SIZES, **PLANS[name].to_dict())
    ocfg = ObjectiveConfig(mask_id=tok.mask_id, cls_id=tok.cls_id, sep_id=tok.sep_id)
    tx = make_optimizer(OptimizerConfig(total_steps=STEPS, warmup_fraction=0.0, learning_rate=1e-3))
    return model, ocfg, tx, host


@functools.cache
def mesh_of(key: str):
    return make_mesh(*MESHES[key], devices=jax.devices()[:1] if key == "single" else None)


def copy_state(state: TrainState) -> TrainState:
    """A copy (the compiled step donates its input state)."""
    return jax.tree.map(lambda x: x.copy(), state)


class Run(NamedTuple):
    compiled: Any
    state0: TrainState  # the initial state (a copy kept for reruns)
    batch: dict[str, jax.Array]
    metrics: list[dict[str, float]]  # per step
    state: TrainState  # after STEPS steps


@functools.cache
def run(name: str, key: str) -> Run:
    """Initialise (``init_state`` directly sharded for "single"/"fsdp"; the single-device state resharded
    otherwise, to save compiles), compile once, and take ``STEPS`` steps."""
    model, ocfg, tx, host = setup(name)
    mesh = mesh_of(key)
    batch = to_global(host, mesh)
    shardings = state_shardings(model, tx, batch, mesh)
    if key in ("single", "fsdp"):
        state = init_state(model, tx, jax.random.key(0), batch, mesh, compiler_options=FAST_COMPILE)
    else:
        state = jax.device_put(copy_state(run(name, "single").state0), shardings)
    state0 = copy_state(state)
    step = jit_train_step(model, ocfg, tx, mesh, shardings, batch_sharding(mesh), compiler_options=FAST_COMPILE)
    compiled = compile_step(step, state, batch, mesh)
    metrics = []
    for _ in range(STEPS):
        state, m = compiled(state, batch)
        metrics.append({k: float(v) for k, v in m.items()})
    return Run(compiled, state0, batch, metrics, state)


def assert_same_curve(got: list[dict[str, float]], want: list[dict[str, float]]):
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=RTOL if k != "grad_norm" else 10 * RTOL, err_msg=k)


CASES = [("uniter", "data"), ("uniter", "fsdp"), ("uniter", "tensor"),
         pytest.param("lxmert", "mixed", marks=pytest.mark.slow),
         pytest.param("lxmert", "data", marks=pytest.mark.slow), pytest.param("lxmert", "fsdp", marks=pytest.mark.slow),
         pytest.param("lxmert", "tensor", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name, key", CASES)
def test_loss_curve_is_the_same_on_every_mesh(name, key):
    reference, sharded = run(name, "single"), run(name, key)
    assert_same_curve(sharded.metrics, reference.metrics)
    losses = [m["loss"] for m in reference.metrics]
    assert all(np.isfinite(losses)) and len(set(losses)) == STEPS
    # The state comes back in its shardings, and the parameters moved the same way.
    model, _, tx, _ = setup(name)
    shardings = state_shardings(model, tx, sharded.batch, mesh_of(key))
    for leaf, s in zip(jax.tree.leaves(sharded.state), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(s, leaf.ndim)
    words = ("params", "bert", "embeddings", "word_embeddings", "embedding")
    got, want = (functools.reduce(lambda t, k: getattr(t, k) if k == "params" else t[k], words, r.state)
                 for r in (sharded, reference))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_metrics_step_and_learning_rate():
    r = run("uniter", "single")
    assert set(r.metrics[0]) == {"loss", "mlm", "mrc_kl", "mrc_xe", "mrfr", "itm", "grad_norm", "lr"}
    # total_steps 3, no warmup: update k uses 1e-3 * (3 - k) / 3.
    np.testing.assert_allclose([m["lr"] for m in r.metrics], [1e-3, 2e-3 / 3, 1e-3 / 3], rtol=1e-6)
    m = r.metrics[0]
    np.testing.assert_allclose(m["loss"], m["mlm"] + m["mrc_kl"] + 0.5 * m["mrc_xe"] + 0.1 * m["mrfr"] + m["itm"],
                               rtol=1e-5)
    assert int(r.state.step) == STEPS and int(r.state0.step) == 0


def test_init_state_is_sharded_and_mesh_independent():
    single, fsdp = run("uniter", "single").state0, run("uniter", "fsdp").state0
    words = fsdp.params["bert"]["embeddings"]["word_embeddings"]["embedding"]  # [1024, 64]: ('vocab', 'embed')
    assert words.sharding.spec == jax.P(None, "fsdp")
    assert {s.data.shape for s in words.addressable_shards} == {(1024, 8)}
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(fsdp.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    mu = fsdp.opt_state[1].mu  # clip, adam, decay, lr
    assert mu["bert"]["embeddings"]["word_embeddings"]["embedding"].sharding.spec == jax.P(None, "fsdp")


def test_fsdp_state_is_an_eighth_per_device(capsys):
    """Compiled per-device argument bytes, less the batch's share: the params + optimizer state."""
    sizes = {}
    for key in ("single", "fsdp"):
        r = run("uniter", key)
        stats = memory_stats(r.compiled)
        batch_bytes = bytes_per_device(r.batch, jax.tree.map(lambda x: x.sharding, r.batch))
        sizes[key] = stats["argument_size_in_bytes"] - batch_bytes
        expected = bytes_per_device(r.state0, jax.tree.map(lambda x: x.sharding, r.state0))
        assert abs(sizes[key] - expected) <= 0.01 * expected  # the compiled view agrees with the shardings
        assert "argument_size" in memory_summary(r.compiled, verbose=True)
        assert memory_summary(r.compiled).startswith("memory per device: ") and "\n" not in memory_summary(r.compiled)
    ratio = sizes["fsdp"] / sizes["single"]
    with capsys.disabled():
        print(f"\n[FSDP 1x8x1] params+opt state per device: {sizes['fsdp']} B vs {sizes['single']} B on one device;"
              f" ratio {ratio:.4f} (ideal 1/8 = 0.125)")
    assert 0.125 <= ratio < 0.2


def test_dropout_rng_changes_the_loss_and_a_seed_reproduces_bitwise():
    r = run("uniter", "single")
    model, ocfg, _, _ = setup("uniter")

    def one_step(seed: int):
        state = copy_state(r.state0).replace(rng=jax.random.key(seed))
        state, m = r.compiled(state, r.batch)
        return float(m["loss"]), np.asarray(state.params["mlm"]["transform"]["kernel"])

    (a, pa), (a2, pa2), (b, _) = one_step(1), one_step(1), one_step(2)
    assert a == a2 and np.array_equal(pa, pa2)  # same seed: bitwise the same loss and update
    assert a != b
    # The step's dropout is on: the same masking rng with dropout off gives another loss.
    key = jax.random.fold_in(jax.random.key(1), 0)
    det = jax.jit(lambda p, bt, k: pretraining_loss(model, p, bt, k, ocfg, deterministic=True)[0],
                  compiler_options=FAST_COMPILE)
    assert float(det(copy_state(r.state0).params, r.batch, key)) != a


def test_train_step_is_a_pure_function():
    """Eager-free check of the unjitted step's contract: shapes of the output state and metrics."""
    model, ocfg, tx, host = setup("uniter")
    state = run("uniter", "single").state0
    out, metrics = jax.eval_shape(functools.partial(train_step, model=model, ocfg=ocfg, tx=tx), state,
                                  {k: jnp.asarray(v) for k, v in host.items()})
    assert jax.tree.structure(out) == jax.tree.structure(state)
    assert all(m.shape == () and m.dtype == jnp.float32 for m in metrics.values())
