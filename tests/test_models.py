"""The V&L BERTs: parameter counts, plan semantics against a numpy reference, scan, dropout, dtypes, axes.

Every program is compiled with ``FAST_COMPILE`` (the tests check semantics, not speed); each tiny preset is
initialised and run once (``tiny_case``, cached) and the other tests reuse its parameters and outputs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from jaxvl.models import PRESETS, attention_bias, count_params, get_config, get_model, scan_params, unscan_params
from jaxvl.models.volta.encoder import AttentionSublayer, FeedForwardSublayer
from jaxvl.models.volta.plan import Sublayer
from jaxvl.runtime.compile import FAST_COMPILE

VOLTA_COUNTS = {"visualbert": 114_882_941, "uniter": 114_497_405, "vl-bert": 116_066_941,
                "lxmert": 211_369_853, "vilbert": 242_076_029}


def run(model, variables, batch, **kwargs):
    """``model.apply`` under ``jax.jit`` (eager flax is slow on CPU); static kwargs are closed over."""
    rngs = kwargs.pop("rngs", None)
    return jax.jit(lambda v, b, r: model.apply(v, **b, rngs=r, **kwargs),
                   compiler_options=FAST_COMPILE)(variables, batch, rngs)


def param_shapes(model):
    return jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), **model.dummy_inputs())["params"]))


def make_batch(cfg, batch=2, text_len=7, regions=5, seed=0):
    """Random valid inputs; row 1 has padded text (last 2) and a padded region (last)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, (batch, text_len))
    text_mask = np.ones((batch, text_len), np.int32)
    region_mask = np.ones((batch, regions), np.int32)
    if batch > 1:
        ids[1, -2:] = 0
        text_mask[1, -2:] = 0
        region_mask[1, -1] = 0
    xy = rng.uniform(0, 0.5, (batch, regions, 2))
    wh = rng.uniform(0.1, 0.5, (batch, regions, 2))
    boxes = np.concatenate([xy, xy + wh, (wh[..., :1] * wh[..., 1:])], -1)
    return dict(input_ids=jnp.asarray(ids, jnp.int32),
                features=jnp.asarray(rng.normal(size=(batch, regions, cfg.v_feature_size)), jnp.float32),
                locations=jnp.asarray(boxes, jnp.float32), text_mask=jnp.asarray(text_mask),
                region_mask=jnp.asarray(region_mask))


@pytest.mark.parametrize("name", PRESETS)
def test_ctrl_parameter_counts_equal_volta(name):
    model = get_model(name)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))
    assert count_params(shapes["params"]) == VOLTA_COUNTS[name]


@functools.cache
def tiny_case(name: str):
    """The tiny preset ``name``: model, ``make_batch`` inputs, ``init`` params (key 0) and the deterministic
    forward with every hidden state; computed once per module and shared by the tests below."""
    model = get_model(name, tiny=True)
    batch = make_batch(model.cfg)
    init = jax.jit(lambda b: model.init(jax.random.key(0), **b), compiler_options=FAST_COMPILE)
    params = nn.meta.unbox(init(batch)["params"])
    return model, batch, params, run(model, {"params": params}, batch, output_hidden_states=True)


@pytest.mark.parametrize("name", PRESETS)
def test_tiny_forward_shapes_and_scan_equivalence(name):
    model, batch, params, out = tiny_case(name)
    cfg = model.cfg
    assert out.text.shape == (2, 7, cfg.hidden_size) and out.vision.shape == (2, 5, cfg.v_hidden_size)
    assert out.mlm_logits.shape == (2, 7, cfg.vocab_size)
    assert out.visual_logits["0"].shape == (2, 5, 1601) and out.itm_logits.shape == (2, 2)
    assert len(out.hidden_states) == cfg.plan.depth + 1

    scanned_model = get_model(name, tiny=True, scan_layers=True)
    scanned = scan_params(params, cfg)
    assert "layer_0" not in scanned["bert"]["encoder"] and "segment_0" in scanned["bert"]["encoder"]
    init_scanned = jax.eval_shape(lambda: nn.meta.unbox(scanned_model.init(jax.random.key(0), **batch)["params"]))
    assert jax.tree.map(np.shape, scanned) == jax.tree.map(np.shape, init_scanned)
    out_s = run(scanned_model, {"params": scanned}, batch, output_hidden_states=True)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(out_s), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)  # float32: scan reorders nothing but codegen
    back = unscan_params(scanned, cfg)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), back, params))


@pytest.mark.parametrize("name", ["uniter", "vilbert"])
def test_heads_at_given_rows_equal_the_all_rows_logits_there(name):
    model, batch, params, out = tiny_case(name)
    text_rows = jnp.array([[3, 1, 6], [0, 0, 2]])
    region_rows = jnp.array([[4], [1]])
    at = model.apply({"params": params}, **batch, text_positions=text_rows, region_positions=region_rows)
    assert at.mlm_logits.shape == (2, 3, model.cfg.vocab_size) and at.visual_logits["0"].shape == (2, 1, 1601)
    np.testing.assert_allclose(at.mlm_logits, np.take_along_axis(out.mlm_logits, text_rows[..., None], 1),
                               rtol=1e-6, atol=1e-6)
    for key, logits in at.visual_logits.items():
        np.testing.assert_allclose(logits, np.take_along_axis(out.visual_logits[key], region_rows[..., None], 1),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["lxmert", "vilbert"])
def test_unimodal_prefix_apart_equals_the_whole_forward(name):
    """Each stream's unimodal prefix computed alone (as the ablation shares it across conditions), then the rest,
    gives the whole forward pass's outputs, unscanned and scanned; single-stream models have no prefix."""
    model, batch, params, out = tiny_case(name)
    assert 0 < model.cfg.unimodal_prefix < len(model.cfg.sublayers)
    for m, p in ((model, params), (get_model(name, tiny=True, scan_layers=True), scan_params(params, model.cfg))):
        t = m.apply({"params": p}, batch["input_ids"], None, batch["text_mask"], method=m.text_prefix)
        v = m.apply({"params": p}, batch["features"], batch["locations"], batch["region_mask"], method=m.vision_prefix)
        got = m.apply({"params": p}, t, v, batch["text_mask"], batch["region_mask"], method=m.from_prefix)
        for field in ("text", "vision", "pooled", "mlm_logits", "itm_logits"):
            np.testing.assert_allclose(getattr(got, field), getattr(out, field), rtol=2e-5, atol=2e-5, err_msg=field)
        np.testing.assert_allclose(got.visual_logits["0"], out.visual_logits["0"], rtol=2e-5, atol=2e-5)
    single, _, single_params, _ = tiny_case("uniter")
    assert single.cfg.unimodal_prefix == 0
    with pytest.raises(ValueError, match="no unimodal prefix"):
        single.apply({"params": single_params}, batch["input_ids"], method=single.text_prefix)


def test_shared_sublayers_tie_parameters():
    model = get_model("uniter", tiny=True)
    params = flatten_dict(param_shapes(model), sep="/")
    assert not any("/v_" in k for k in params if "/encoder/" in k)  # single-stream: every sub-layer tied
    lx = get_model("lxmert", tiny=True)
    cfg = lx.cfg
    lx_params = flatten_dict(param_shapes(lx), sep="/")
    cross = [n for n, s in enumerate(cfg.sublayers) if s.tied]
    assert cross == list(cfg.plan.shared_sublayers)
    for n in cross:
        assert not any(k.startswith(f"bert/encoder/layer_{n}/v_") for k in lx_params)
        assert f"bert/encoder/layer_{n}/query/kernel" in lx_params


def _ln(x, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def _reference_attention(p, t, v, t_mask, v_mask, spec, heads):
    """VOLTA's gated attention in numpy: scores per direction, joint softmax where two are active."""
    def proj(x, name, prefix):
        if prefix + name not in p:  # modules a sub-layer never calls have no parameters
            return None
        return np.einsum("bld,dhk->blhk", x, p[prefix + name]["kernel"]) + p[prefix + name]["bias"]

    vp = "" if spec.tied else "v_"
    tq, tk, tvv = (proj(t, n, "") for n in ("query", "key", "value"))
    vq, vk, vvv = (proj(v, n, vp) for n in ("query", "key", "value"))
    d = (tk if tk is not None else vk).shape[-1]
    def neg(m):
        return (1.0 - m)[:, None, None, :] * -10000.0


    def attend(q, sources):
        scores = [np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d) + neg(m) for k, _, m in sources]
        joint = np.concatenate(scores, -1)
        probs = np.exp(joint - joint.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        splits = np.split(probs, np.cumsum([s.shape[-1] for s in scores])[:-1], axis=-1)
        return sum(np.einsum("bhqk,bkhd->bqhd", pr, val) for pr, (_, val, _) in zip(splits, sources, strict=True))

    def out(ctx, x, prefix):
        h = np.einsum("blhk,hkd->bld", ctx, p[prefix + "out"]["kernel"]) + p[prefix + "out"]["bias"]
        return _ln(h + x) * p[prefix + "norm"]["scale"] + p[prefix + "norm"]["bias"]

    new_t, new_v = t, v
    if spec.has_text:
        src = ([(tk, tvv, t_mask)] if spec.tt else []) + ([(vk, vvv, v_mask)] if spec.tv else [])
        new_t = out(attend(tq, src), t, "")
    if spec.has_vision:
        src = ([(tk, tvv, t_mask)] if spec.vt else []) + ([(vk, vvv, v_mask)] if spec.vv else [])
        new_v = out(attend(vq, src), v, vp)
    return new_t, new_v


@pytest.mark.parametrize("flags", [
    dict(tt=True), dict(tv=True), dict(tt=True, tv=True), dict(vv=True, vt=True),
    dict(tt=True, vv=True), dict(tv=True, vt=True), dict(tv=True, vt=True, shared=True),
    dict(tt=True, tv=True, vt=True, vv=True, shared=True),
])
def test_attention_sublayer_matches_volta_semantics(flags):
    cfg = get_config("lxmert", tiny=True)
    spec = Sublayer("attn", t_width=32, t_heads=4, v_width=32, v_heads=4, **flags)
    rng = np.random.default_rng(1)
    t, v = rng.normal(size=(2, 6, 32)).astype(np.float32), rng.normal(size=(2, 4, 32)).astype(np.float32)
    t_mask, v_mask = np.ones((2, 6), np.float32), np.ones((2, 4), np.float32)
    t_mask[1, -2:] = 0
    v_mask[0, -1] = 0
    layer = AttentionSublayer(cfg, spec)
    args = (t, v, attention_bias(t_mask), attention_bias(v_mask))
    params = nn.meta.unbox(layer.init(jax.random.key(0), *args)["params"])
    params = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), params)  # non-trivial LN
    got_t, got_v = layer.apply({"params": params}, *args)
    want_t, want_v = _reference_attention(jax.tree.map(np.asarray, params), t, v, t_mask, v_mask, spec, 4)
    np.testing.assert_allclose(got_t, want_t, atol=2e-5)
    np.testing.assert_allclose(got_v, want_v, atol=2e-5)
    if not spec.has_text:
        assert np.array_equal(got_t, t)  # inactive stream passes through untouched
    if not spec.has_vision:
        assert np.array_equal(got_v, v)


def test_feed_forward_sublayer_passthrough_and_math():
    cfg = get_config("vilbert", tiny=True)
    spec = Sublayer("ff", t_ff=True, v_ff=False, t_width=37, v_width=37)
    rng = np.random.default_rng(2)
    t, v = rng.normal(size=(2, 6, 32)).astype(np.float32), rng.normal(size=(2, 4, 32)).astype(np.float32)
    bias_t, bias_v = attention_bias(np.ones((2, 6))), attention_bias(np.ones((2, 4)))
    layer = FeedForwardSublayer(cfg, spec)
    params = nn.meta.unbox(layer.init(jax.random.key(0), t, v, bias_t, bias_v)["params"])
    got_t, got_v = layer.apply({"params": params}, t, v, bias_t, bias_v)
    p = jax.tree.map(np.asarray, params)
    h = t @ p["wi"]["kernel"] + p["wi"]["bias"]
    h = np.asarray(jax.nn.gelu(h, approximate=False)) @ p["wo"]["kernel"] + p["wo"]["bias"]
    np.testing.assert_allclose(got_t, _ln(h + t) * p["norm"]["scale"] + p["norm"]["bias"], atol=2e-5)
    assert np.array_equal(got_v, v)
    assert not any(k.startswith("v_") for k in params)


def test_dropout_and_deterministic_mode():
    model, batch, params, eval_a = tiny_case("uniter")  # dropout is shared code: one model covers it
    variables = {"params": params}  # eval_a: deterministic by default, no rng needed
    train = jax.jit(lambda v, b, r: model.apply(v, **b, deterministic=False, rngs={"dropout": r}),
                    compiler_options=FAST_COMPILE)
    train_a = train(variables, batch, jax.random.key(1))
    train_b = train(variables, batch, jax.random.key(1))
    train_c = train(variables, batch, jax.random.key(2))
    np.testing.assert_array_equal(train_a.text, train_b.text)
    assert not np.allclose(train_a.text, train_c.text)
    assert not np.allclose(train_a.text, eval_a.text)
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, **batch, deterministic=False)


def test_scanned_dropout_runs_and_differs_per_layer():
    model = get_model("uniter", tiny=True, scan_layers=True)
    _, batch, params, _ = tiny_case("uniter")
    variables = {"params": scan_params(params, model.cfg)}
    out = run(model, variables, batch, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert np.isfinite(out.text).all()


def test_fused_and_explicit_attention_agree():
    _, batch, params, a = tiny_case("lxmert")  # the fused (default) forward
    explicit = get_model("lxmert", tiny=True, fused_attention=False)
    b = run(explicit, {"params": params}, batch, output_hidden_states=True)
    np.testing.assert_allclose(a.text, b.text, atol=1e-5)
    np.testing.assert_allclose(a.vision, b.vision, atol=1e-5)
    for x, y in zip(jax.tree.leaves(a.hidden_states), jax.tree.leaves(b.hidden_states), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)  # every sub-layer, not just the last


def test_sown_attention_weights():
    model = get_model("lxmert", tiny=True, sow_weights=True)
    _, batch, params, _ = tiny_case("lxmert")  # sowing adds no parameters
    _, state = run(model, {"params": params}, batch, mutable=["intermediates"])
    sown = flatten_dict(state["intermediates"], sep="/")
    cross = [n for n, s in enumerate(model.cfg.sublayers) if s.tv]
    key = f"bert/encoder/layer_{cross[0]}/t_attend/weights"
    assert key in sown
    weights = sown[key][0]
    assert weights.shape == (2, 4, 7, 5)  # text queries over vision keys only
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert weights[1, :, :, -1].max() < 1e-6  # the padded region gets no attention


def test_bfloat16_matmuls_run_close_to_float32():
    _, batch, params, a = tiny_case("uniter")  # float32 parameters and forward
    bf16 = get_model("uniter", tiny=True, dtype="bfloat16")
    variables = {"params": params}
    b = run(bf16, variables, batch)
    assert jax.tree.leaves(variables["params"])[0].dtype == jnp.float32
    assert np.isfinite(np.asarray(b.text, np.float32)).all()
    np.testing.assert_allclose(np.asarray(b.text, np.float32), a.text, atol=0.1)


def test_every_parameter_has_logical_axes():
    allowed = {"embed", "heads", "kv", "mlp", "vocab", "feature", "pooler", "classes", "layers", None}
    for name in ("vl-bert", "lxmert"):
        for scan in (False, True):
            model = get_model(name, tiny=True, scan_layers=scan)
            boxed = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), **m.dummy_inputs()))["params"]
            leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
            assert all(isinstance(x, nn.Partitioned) for x in leaves)
            for leaf in leaves:
                assert len(leaf.names) == len(leaf.value.shape) and set(leaf.names) <= allowed
                if scan and leaf.names[0] == "layers":
                    assert leaf.value.shape[0] > 1


def test_visual_target_heads_follow_the_config():
    model = get_model("uniter", tiny=True, visual_target_weights={"0": 1.0, "3": 1.0, "1": 0.5, "4": 0.0})
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), **model.dummy_inputs())[0])
    sizes = {k: v.shape[-1] for k, v in out.visual_logits.items()}
    assert sizes == {"0": 1601, "3": 1600, "1": model.cfg.v_feature_size}
    no_ln = jax.eval_shape(lambda: get_model("vl-bert", tiny=True).init(jax.random.key(0), **model.dummy_inputs()))
    assert "norm" not in no_ln["params"]["image_predictions"]
