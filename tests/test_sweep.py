"""Sweeps compiled as one program: member k of a vmapped sweep equals a single run with member k's settings.

One tiny UNITER (one attention + one feed-forward sub-layer) on a random batch; the base run weighs
MRC-KL "0" and 0.1 MRFR "1", and since members also weigh MRC-XE the shared model gets head "3" too.
The single runs use the static path (``step.jit_train_step``, ``ObjectiveConfig`` floats, a model with
only the member's positive-weight heads, ``make_optimizer`` without an injected peak), so the test
checks that traced settings, the zero-weight switch and the injected learning rate reproduce it. Each
compile is cached (``functools.cache``) and everything uses ``FAST_COMPILE``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvl.models import get_model
from jaxvl.models.volta.model import VLBertForPreTraining, get_config
from jaxvl.models.volta.objectives import NO_OVERLAP
from jaxvl.models.volta.presets import single_stream_plan
from jaxvl.pretrain.loss import ObjectiveConfig, mask_batch
from jaxvl.pretrain.step import init_state, jit_train_step, state_shardings
from jaxvl.pretrain.sweep import (
    SweepMember,
    check_members,
    init_sweep_state,
    jit_sweep_step,
    members_from_config,
    shared_visual_target_weights,
    stack_hparams,
    stack_states,
    summary_table,
    sweep_state_shardings,
    unstack_member,
)
from jaxvl.runtime.compile import FAST_COMPILE, compile_step
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer, set_peak_learning_rate
from jaxvl.runtime.sharding import batch_sharding, make_mesh, to_global
from jaxvl.runtime.state import current_learning_rate

STEPS = 3
MASK, CLS, SEP = 3, 1, 2
# Every width divides over 8 devices, so FSDP really shards. 20 object classes (21-way MRC-KL head).
SIZES = dict(vocab_size=128, hidden_size=32, v_hidden_size=32, intermediate_size=64, v_intermediate_size=64,
             v_feature_size=24, num_object_classes=20, **single_stream_plan(1).to_dict())
OCFG = ObjectiveConfig(mask_id=MASK, cls_id=CLS, sep_id=SEP)
OPT = OptimizerConfig(total_steps=STEPS, warmup_fraction=0.0, learning_rate=1e-3)
# Members differ in seed and lr (and MRC-XE instead of MRC-KL), masking probabilities and co-masking
# ("none" vs 0.4 vs 0.2). "xent" and "masking" are checked against single runs (TWINS; two compiles
# each), all four on the meshes.
SWEEP = [
    {"name": "base"},
    {"name": "xent", "seed": 1, "learning_rate": 3e-4, "mrc_kl_weight": 0.0, "mrc_xe_weight": 1.0},
    {"name": "masking", "token_prob": 0.4, "region_prob": 0.5, "overlap_threshold": "none", "mrfr_weight": 0.0},
    {"name": "iou0.2", "seed": 2, "region_prob": 0.3, "overlap_threshold": 0.2, "mrc_xe_weight": 0.5},
]
TWINS = (1, 2)
# Member k runs the same float32 ops as its single run, batched (vmapped matmuls may sum in another
# order): ~1e-7 relative per op, ~1e-6 after 3 Adam steps; 1e-5 leaves margin (as test_train_step).
RTOL = 1e-5


def random_batch(rows: int = 8, text_len: int = 12, regions: int = 6, feat: int = 24, classes: int = 20,
                 vocab: int = 128) -> dict[str, np.ndarray]:
    """Host arrays of a pretraining batch: [CLS] words [SEP] padding; an [IMG] row then 3..6 real regions
    with overlapping pixel boxes, a detector distribution, its argmax class and confidence."""
    r = np.random.default_rng(0)
    ids = np.zeros((rows, text_len), np.int32)
    for i, n in enumerate(r.integers(4, text_len - 1, rows)):
        ids[i, :n + 2] = [CLS, *r.integers(5, vocab, n), SEP]
    real = np.arange(regions)[None] < r.integers(3, regions + 1, rows)[:, None]
    xy = r.uniform(0, 40, (rows, regions, 2))
    wh = r.uniform(8, 40, (rows, regions, 2))
    boxes = np.where(real[..., None], np.concatenate([xy, xy + wh], -1), 0)
    locs = np.concatenate([boxes / 80, (wh[..., :1] * wh[..., 1:]) / 6400], -1) * real[..., None]
    logits = r.normal(size=(rows, regions, classes + 1)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True) * real[..., None]
    feats = r.normal(size=(rows, regions, feat)) * real[..., None]
    g = np.ones((rows, 1))
    img_box = np.tile([[[0.0, 0.0, 80.0, 80.0]]], (rows, 1, 1))
    out = dict(
        input_ids=ids, text_mask=(ids > 0).astype(np.int32), token_type_ids=np.zeros_like(ids),
        features=np.concatenate([feats.sum(1, keepdims=True) / real.sum(1)[:, None, None], feats], 1),
        locations=np.concatenate([np.tile([[[0, 0, 1, 1, 1.0]]], (rows, 1, 1)), locs], 1),
        region_mask=np.concatenate([g, real], 1).astype(np.int32),
        region_target_mask=np.concatenate([0 * g, real], 1).astype(np.int32),
        boxes=np.concatenate([img_box, boxes], 1),
        cls_prob=np.concatenate([0 * probs[:, :1], probs], 1),
        objects_id=np.concatenate([-g, np.where(real, probs[..., 1:].argmax(-1), -1)], 1).astype(np.int32),
        objects_conf=np.concatenate([0 * g, probs[..., 1:].max(-1)], 1),
    )
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in out.items()}


HOST = random_batch()
# The single run the sweep varies: MRC-KL + 0.1 MRFR. Its members also weigh MRC-XE, so the shared
# model gets head "3" too.
BASE = get_config("uniter", tiny=True, visual_target_weights={"0": 1.0, "1": 0.1}, **SIZES)
MEMBERS = members_from_config(SWEEP, BASE, OCFG, OPT)
MODEL = VLBertForPreTraining(BASE.replace(visual_target_weights=shared_visual_target_weights(MEMBERS, BASE)))
TX = make_optimizer(OPT, injected_peak=True)
MESHES = {"single": (1, 1, 1), "data": (8, 1, 1), "fsdp": (1, 8, 1), "members": (4, 2, 1)}


@functools.cache
def mesh_of(key: str):
    return make_mesh(*MESHES[key], devices=jax.devices()[:1] if key == "single" else None)


def copy(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.copy(), tree)


class Run(NamedTuple):
    compiled: Any
    state0: Any
    metrics: list[dict[str, np.ndarray]]
    state: Any


@functools.cache
def sweep_run(key: str) -> Run:
    """The 4-member sweep on mesh ``key``: created in its shards for "single" and "members" (the member
    axis over 'data', FSDP over the rest), the single-device state resharded otherwise (one compile
    less); ``STEPS`` steps."""
    mesh = mesh_of(key)
    member_axis = "data" if key == "members" else None
    batch = to_global(HOST, mesh)
    shardings = sweep_state_shardings(MODEL, TX, batch, mesh, len(MEMBERS), member_axis=member_axis)
    if key in ("data", "fsdp"):
        state = jax.device_put(copy(sweep_run("single").state0), shardings)
    else:
        state = init_sweep_state(MODEL, TX, MEMBERS, batch, mesh, member_axis=member_axis,
                                 compiler_options=FAST_COMPILE)
    state0 = copy(state)
    step = compile_step(jit_sweep_step(MODEL, OCFG, TX, mesh, shardings, batch_sharding(mesh), FAST_COMPILE),
                        state, batch, mesh)
    metrics = []
    for _ in range(STEPS):
        state, m = step(state, batch)
        metrics.append({k: np.asarray(v) for k, v in m.items()})
    return Run(step, state0, metrics, state)


def single_settings(m: SweepMember):
    """Member ``m`` as a static single run: its heads only, its floats in ``ObjectiveConfig``, its lr."""
    heads = {"0": m.mrc_kl_weight, "3": m.mrc_xe_weight, "1": m.mrfr_weight}
    model = get_model("uniter", tiny=True, visual_target_weights={k: w for k, w in heads.items() if w > 0}, **SIZES)
    ocfg = dataclasses.replace(OCFG, token_prob=m.token_prob, region_prob=m.region_prob,
                               overlap_threshold=None if m.overlap_threshold > 1 else m.overlap_threshold)
    return model, ocfg, make_optimizer(dataclasses.replace(OPT, learning_rate=m.learning_rate))


@functools.cache
def single_run(k: int) -> Run:
    m = MEMBERS[k]
    model, ocfg, tx = single_settings(m)
    mesh = mesh_of("single")
    batch = to_global(HOST, mesh)
    state = init_state(model, tx, jax.random.key(m.seed), batch, mesh, compiler_options=FAST_COMPILE)
    state0 = copy(state)
    step = compile_step(jit_train_step(model, ocfg, tx, mesh, state_shardings(model, tx, batch, mesh),
                                       batch_sharding(mesh), FAST_COMPILE), state, batch, mesh)
    metrics = []
    for _ in range(STEPS):
        state, m_ = step(state, batch)
        metrics.append({k_: np.asarray(v) for k_, v in m_.items()})
    return Run(step, state0, metrics, state)


def _bits(x: jax.Array) -> np.ndarray:
    return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)


def flat(tree: Any) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# --------------------------------------------------------------------------------------- the key test


@pytest.mark.slow
@pytest.mark.parametrize("k", TWINS)
def test_member_equals_a_single_run_with_its_settings(k):
    sweep, single = sweep_run("single"), single_run(k)
    for step, (got, want) in enumerate(zip(sweep.metrics, single.metrics, strict=True)):
        # The zero-weight head is still reported by the sweep; every metric of the single run matches.
        assert set(want) <= set(got)
        for name, value in want.items():
            np.testing.assert_allclose(got[name][k], value, rtol=RTOL if name != "grad_norm" else 10 * RTOL,
                                       err_msg=f"step {step} {name}")
    np.testing.assert_allclose([m["lr"][k] for m in sweep.metrics], [m["lr"] for m in single.metrics], rtol=0)
    member = unstack_member(sweep.state, k)
    got, want = flat(member.params), flat(single.state.params)
    assert set(want) <= set(got)  # the sweep model has every head; the single run only its own
    for path, value in want.items():
        np.testing.assert_allclose(got[path], value, rtol=1e-4, atol=1e-6, err_msg=path)
    # Same start: member k's initial params are bitwise those of init_state with its seed.
    start = flat(unstack_member(sweep.state0, k).params)
    for path, value in flat(single.state0.params).items():
        np.testing.assert_array_equal(start[path], value, err_msg=path)
    assert int(member.step) == STEPS


@pytest.mark.slow
def test_members_really_differ():
    """Guards the key test against vacuity: the members' curves and parameters differ from each other."""
    sweep = sweep_run("single")
    losses = np.stack([m["loss"] for m in sweep.metrics])  # [steps, K]
    assert np.isfinite(losses).all()
    assert len({tuple(col) for col in losses.T.round(6)}) == len(MEMBERS)
    np.testing.assert_array_equal(sweep.metrics[0]["lr"], np.float32([1e-3, 3e-4, 1e-3, 1e-3]))
    first = sweep.metrics[0]
    # Every head is computed and reported; its member weight decides what it adds ("xent": MRC-XE instead
    # of MRC-KL; "iou0.2": both, MRC-XE at half weight).
    for k, (kl, xe) in enumerate([(1, 0), (0, 1), (1, 0), (1, 0.5)]):
        mrfr = 0.0 if k == 2 else 0.1
        np.testing.assert_allclose(first["loss"][k], first["mlm"][k] + kl * first["mrc_kl"][k] + xe * first["mrc_xe"][k]
                                   + mrfr * first["mrfr"][k] + first["itm"][k], rtol=1e-6)
    kernel = np.asarray(sweep.state.params["mlm"]["transform"]["kernel"])
    assert all(not np.allclose(kernel[0], kernel[j]) for j in range(1, len(MEMBERS)))


def test_members_are_data_not_program():
    """The same compiled executable runs any member settings: with the members' states and settings in
    reverse order, the first step's metrics come out reversed."""
    sweep = sweep_run("single")
    flip = lambda x: x[::-1]  # noqa: E731
    state = copy(sweep.state0)
    state = state.replace(params=jax.tree.map(flip, state.params), opt_state=jax.tree.map(flip, state.opt_state),
                          rng=flip(state.rng), hparams=jax.tree.map(flip, state.hparams))
    _, metrics = sweep.compiled(state, to_global(HOST, mesh_of("single")))
    for name, value in sweep.metrics[0].items():
        np.testing.assert_allclose(np.asarray(metrics[name])[::-1], value, rtol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------------- meshes


@pytest.mark.slow
@pytest.mark.parametrize("key", ["data", "fsdp", "members"])
def test_sweep_on_a_mesh_gives_the_numbers_of_one_device(key):
    reference, sharded = sweep_run("single"), sweep_run(key)
    for got, want in zip(sharded.metrics, reference.metrics, strict=True):
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].shape == (len(MEMBERS),)
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL if name != "grad_norm" else 10 * RTOL,
                                       err_msg=name)
    for a, b in zip(jax.tree.leaves(sharded.state0.params), jax.tree.leaves(reference.state0.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # "members": created in its shards
    got, want = flat(sharded.state.params), flat(reference.state.params)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=1e-4, atol=1e-6, err_msg=path)
    # The state comes back in its shardings: member axis first, then the single run's placement.
    mesh = mesh_of(key)
    member_axis = "data" if key == "members" else None
    shardings = sweep_state_shardings(MODEL, TX, to_global(HOST, mesh), mesh, len(MEMBERS), member_axis=member_axis)
    for leaf, s in zip(jax.tree.leaves(sharded.state), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(s, leaf.ndim)
    words = sharded.state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]  # [K, vocab, embed]
    want_spec = {"data": jax.P(None, None, None), "fsdp": jax.P(None, None, "fsdp"),
                 "members": jax.P("data", None, "fsdp")}[key]
    assert words.sharding.spec == want_spec
    if key == "fsdp":
        assert {s.data.shape for s in words.addressable_shards} == {(len(MEMBERS), 128, 4)}
        mu = sharded.state.opt_state[1].mu["bert"]["embeddings"]["word_embeddings"]["embedding"]
        assert mu.sharding.spec == want_spec
    if key == "members":  # each of the 4 data rows of devices holds one member
        assert {s.data.shape for s in words.addressable_shards} == {(1, 128, 16)}


# ------------------------------------------------------------------------------------ cheap checks


def test_members_from_config_defaults_and_errors():
    by_name = {m.name: m for m in MEMBERS}
    # Left-out keys take the single run's values: lr from OPT, probabilities from OCFG, weights from the model.
    assert by_name["base"] == SweepMember("base", seed=0, learning_rate=1e-3, mrc_kl_weight=1.0, mrc_xe_weight=0.0,
                                          mrfr_weight=0.1, token_prob=0.15, region_prob=0.15, overlap_threshold=0.4)
    assert shared_visual_target_weights(MEMBERS, BASE) == {"0": 1.0, "1": 0.1, "3": 1.0}
    assert set(MODEL.cfg.visual_targets) == {"0", "1", "3"}
    assert by_name["masking"].overlap_threshold == NO_OVERLAP == 2.0
    assert [m.name for m in members_from_config([{}, {"seed": 3}])] == ["member0", "member1"]
    errors = [
        ([{"name": "a"}, {"name": "b", "lr": 1e-3}], "sweep member 1 ('b'): unknown key 'lr'"),
        ([{"name": "a", "objective": 2}], "sweep member 0 ('a'): key 'objective' changes shapes"),
        ([{"name": "a"}, {"name": "a"}], "duplicate member name 'a'"),
        ([{"name": "p", "token_prob": 1.5}], "sweep member 'p': token_prob=1.5; expected a probability"),
        ([{"name": "s", "seed": -1}], "seed=-1"),
        ([{"name": "t", "overlap_threshold": "some"}], "overlap_threshold='some'"),
        ([], "non-empty list"),
        ({"name": "a"}, "non-empty list"),
    ]
    for cfg, message in errors:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            members_from_config(cfg, BASE, OCFG, OPT)
    # A head is parameters: a member weighing one the shared model lacks is refused before compiling.
    with pytest.raises(ValueError, match=r"sweep member 1 \('xent'\): mrc_xe_weight=1.0 needs visual head '3'"):
        check_members(MEMBERS, BASE)
    with pytest.raises(ValueError, match="needs visual head '3'"):
        init_sweep_state(VLBertForPreTraining(BASE), TX, MEMBERS, HOST, mesh_of("single"))
    check_members([dataclasses.replace(m, mrc_xe_weight=0.0) for m in MEMBERS], BASE)  # weight 0: no head needed


def test_stack_hparams_and_unstack_roundtrip():
    hp = stack_hparams(MEMBERS)
    assert hp.learning_rate.dtype == jnp.float32 and hp.learning_rate.shape == (4,)
    np.testing.assert_array_equal(hp.overlap_threshold, np.float32([0.4, 0.4, 2.0, 0.2]))
    np.testing.assert_array_equal(hp.mrc_kl_weight, np.float32([1, 0, 1, 1]))
    state = sweep_run("single").state0
    members = [unstack_member(state, k) for k in range(len(MEMBERS))]
    peaks = [float(s.opt_state[-1].hyperparams["peak_learning_rate"]) for s in members]
    np.testing.assert_array_equal(peaks, np.float32([1e-3, 3e-4, 1e-3, 1e-3]))
    # No warmup: the schedule factor at count 0 is 1, so the state's learning rate is the member's peak.
    np.testing.assert_array_equal([float(current_learning_rate(s.opt_state)) for s in members], peaks)
    again = stack_states(members, MEMBERS)
    assert jax.tree.structure(again) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    with pytest.raises(IndexError):
        unstack_member(state, 4)


def test_injected_peak_is_bitwise_the_static_optimizer():
    """``make_optimizer(cfg, injected_peak=True)`` with its peak set to x updates exactly as
    ``make_optimizer(cfg with learning_rate=x)``: 5 updates of a toy tree, warmup then decay, clipped."""
    cfg = OptimizerConfig(total_steps=6, warmup_fraction=0.5, learning_rate=1.0, weight_decay=0.3, clip_norm=1.0)
    params = {"dense": {"kernel": jnp.linspace(-1, 1, 6).reshape(2, 3), "bias": jnp.ones(3)}}
    static = make_optimizer(dataclasses.replace(cfg, learning_rate=3e-3))
    injected = make_optimizer(cfg, injected_peak=True)
    a, b = static.init(params), set_peak_learning_rate(injected.init(params), 3e-3)
    pa = pb = params
    for t in range(5):
        g = jax.tree.map(functools.partial(lambda x, t: jnp.sin(3.0 * x * (t + 1)), t=t), pa)
        ua, a = static.update(g, a, pa)
        ub, b = injected.update(g, b, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
        assert float(current_learning_rate(a)) == float(current_learning_rate(b))
        for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
            np.testing.assert_array_equal(x, y)
    assert float(current_learning_rate(a)) > 0 and not np.array_equal(pa["dense"]["kernel"], params["dense"]["kernel"])
    with pytest.raises(ValueError, match="injected_peak=True"):
        set_peak_learning_rate(static.init(params), 1.0)


def test_traced_masking_settings_are_bitwise_the_static_ones():
    """``mask_batch`` with the probabilities / threshold as float32 arrays (and 2.0 for "none") gives the
    same bits as ``ObjectiveConfig`` floats (and None)."""
    batch = {k: jnp.asarray(v) for k, v in HOST.items()}
    static = jax.jit(mask_batch, static_argnums=(2, 3, 4), compiler_options=FAST_COMPILE)
    traced = jax.jit(lambda key, b, t, r, o: mask_batch(key, b, OCFG, 128, "first", token_prob=t, region_prob=r,
                                                        overlap_threshold=o), compiler_options=FAST_COMPILE)
    for token, region, threshold in [(0.15, 0.15, 0.4), (0.4, 0.5, None), (0.15, 0.3, 0.2)]:
        ocfg = dataclasses.replace(OCFG, token_prob=token, region_prob=region, overlap_threshold=threshold)
        want = static(jax.random.key(7), batch, ocfg, 128, "first")
        got = traced(jax.random.key(7), batch, np.float32(token), np.float32(region),
                     np.float32(NO_OVERLAP if threshold is None else threshold))
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(x, y)


def test_summary_table():
    history = sweep_run("single").metrics
    table = summary_table(history, MEMBERS).splitlines()
    assert table[0] == ("| member | seed | learning_rate | mrc_kl_weight | mrc_xe_weight | mrfr_weight | token_prob "
                        "| region_prob | overlap_threshold | final loss | itm | mlm | mrc_kl | mrc_xe | mrfr |")
    assert len(table) == 2 + len(MEMBERS)
    cells = [c.strip() for c in table[2 + 2].strip("|").split("|")]  # "masking"
    assert cells[:9] == ["masking", "0", "0.001", "1", "0", "0", "0.4", "0.5", "none"]
    np.testing.assert_allclose(float(cells[9]), history[-1]["loss"][2], atol=1e-4)
    with pytest.raises(ValueError, match="has 4 values for 3 members"):
        summary_table(history, MEMBERS[:3])
