"""The ORT captioner: box geometry by hand (both conventions), degenerate boxes, ORT's LayerNorm, masks, sown
attention, cached decoding against teacher forcing, bfloat16. Parity with ORT's own code: test_convert_ort.py."""

from __future__ import annotations

import os
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxvl.models.ort.captioner import (
    Captioner,
    CaptionerConfig,
    OrtLayerNorm,
    _linear,
    collect_attention,
    ort_token_mask,
    sinusoid_positions,
)
from jaxvl.models.ort.geometry import GeometryBias, box_relational_embedding, box_relative_coordinates

DATA = os.path.join(os.path.dirname(__file__), "data")
PAPER = dict(legacy_plus_one=False, legacy_size_ratio=False)
# Two boxes whose relative coordinates are simple numbers under both conventions (see the first test).
BOX_A, BOX_B = [0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 1.0]
# Zero width, identical pair, a point, an inverted box, an all-zero padding row.
DEGENERATE = [[0.2, 0.2, 0.2, 0.6], [0.1, 0.1, 0.4, 0.5], [0.1, 0.1, 0.4, 0.5], [0.3, 0.3, 0.3, 0.3],
              [0.7, 0.7, 0.5, 0.2], [0.0, 0.0, 0.0, 0.0]]


def make_inputs(cfg: CaptionerConfig, batch: int = 2, regions: int = 5, length: int = 6, seed: int = 0,
                boxes: np.ndarray | None = None) -> dict[str, jnp.ndarray]:
    """Random regions (row 1: last 2 padded, zero features and boxes) and BOS-first captions without 0s."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(batch, regions, cfg.feature_size)).astype(np.float32)
    if boxes is None:
        xy = rng.uniform(0, 0.6, (batch, regions, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.4, (batch, regions, 2))], -1)
    boxes = np.array(boxes, np.float32)
    mask = np.ones((batch, regions), np.int32)
    mask[1, -2:] = 0
    feats[1, -2:] = 0.0
    boxes[1, -2:] = 0.0
    tokens = rng.integers(1, cfg.vocab_size, (batch, length))
    tokens[:, 0] = 0
    return dict(features=jnp.asarray(feats), boxes=jnp.asarray(boxes), mask=jnp.asarray(mask),
                tokens=jnp.asarray(tokens, jnp.int32))


def param_shapes(cfg: CaptionerConfig):
    model = Captioner(cfg)
    return jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), **model.dummy_inputs())["params"]))


@cache
def init_params(cfg: CaptionerConfig):
    """Random parameters of the model's shapes, drawn in numpy (compiling ``init`` costs seconds of CPU):
    LayerNorm scales near 1, everything else N(0, 0.2^2), so no tensor is constant."""
    rng = np.random.default_rng(0)
    flat = flatten_dict(param_shapes(cfg))
    return unflatten_dict({path: jnp.asarray((1.0 if path[-1] == "scale" else 0.0) + 0.2 * rng.normal(size=s.shape),
                                             jnp.float32) for path, s in flat.items()})


def jit_apply(module: nn.Module, variables, *args, **kwargs):
    """``module.apply`` under ``jax.jit`` (eager flax compiles every primitive on CPU); kwargs are static."""
    return jax.jit(lambda v, *a: module.apply(v, *a, **kwargs))(variables, *args)


@cache
def forward(cfg: CaptionerConfig, sow: bool = False):
    """Jitted teacher-forced forward pass (``(log-probs, intermediates)`` with ``sow``)."""
    model = Captioner(cfg, sow_weights=sow)
    if sow:
        return jax.jit(lambda p, b: model.apply({"params": p}, **b, mutable=["intermediates"]))
    return jax.jit(lambda p, b: model.apply({"params": p}, **b))


# -- geometry ---------------------------------------------------------------------------------------------


def test_relative_coordinates_hand_computed_both_conventions():
    boxes = jnp.asarray([[BOX_A, BOX_B]])
    ort = np.asarray(box_relative_coordinates(boxes))
    # ORT: w = x2 - x1 + 1, so A is 1.5 x 1.5 and B 1.5 x 2; centres (0.25, 0.25) and (0.75, 0.5).
    np.testing.assert_allclose(ort[0, 0, 1], [np.log(0.5 / 1.5), np.log(0.25 / 1.5), np.log(1.5 / 1.5),
                                              np.log(1.5 / 2.0)], rtol=1e-6)
    np.testing.assert_allclose(ort[0, 1, 0], [np.log(0.5 / 1.5), np.log(0.25 / 2.0), 0.0, np.log(2.0 / 1.5)],
                               rtol=1e-6, atol=1e-7)
    paper = np.asarray(box_relative_coordinates(boxes, **PAPER))
    # Paper: A is 0.5 x 0.5 and B 0.5 x 1; dw = log(w_n / w_m).
    np.testing.assert_allclose(paper[0, 0, 1], [0.0, np.log(0.5), 0.0, np.log(2.0)], atol=1e-6)
    np.testing.assert_allclose(paper[0, 1, 0], [0.0, np.log(0.25), 0.0, np.log(0.5)], atol=1e-6)
    for rel in (ort, paper):  # the diagonal: displacement clamped at 1e-3, size ratios 0
        np.testing.assert_allclose(rel[0, [0, 1], [0, 1]], [[np.log(1e-3), np.log(1e-3), 0, 0]] * 2, atol=1e-6)


def test_embedding_layout_and_frequencies():
    """[sin(4 coords x 8 freqs) | cos(4 x 8)], coordinate-major, frequencies 1000^(-k/8), arguments 100 x coord."""
    boxes = jnp.asarray([[BOX_A, BOX_B, [0.1, 0.6, 0.3, 0.9]]])
    for flags in ({}, PAPER):
        rel = np.asarray(box_relative_coordinates(boxes, **flags), np.float64)
        emb = np.asarray(box_relational_embedding(boxes, **flags))
        assert emb.shape == (1, 3, 3, 64) and emb.dtype == np.float32
        expect = np.zeros((1, 3, 3, 64))
        for c in range(4):
            for k in range(8):
                angle = 100.0 * rel[..., c] / 1000.0 ** (k / 8)
                expect[..., c * 8 + k] = np.sin(angle)
                expect[..., 32 + c * 8 + k] = np.cos(angle)
        np.testing.assert_allclose(emb, expect, atol=2e-4)  # float32 sin/cos of arguments up to 690
    raw = box_relational_embedding(boxes, dim=4, trigonometric=False)
    np.testing.assert_array_equal(raw, box_relative_coordinates(boxes))
    with pytest.raises(ValueError, match="multiple of 8"):
        box_relational_embedding(boxes, dim=20)
    with pytest.raises(ValueError, match="boxes"):
        box_relational_embedding(boxes[..., :3])


@pytest.mark.parametrize("flags", [{}, PAPER], ids=["ort", "paper"])
def test_degenerate_boxes_give_finite_embeddings_and_gradients(flags):
    boxes = jnp.asarray([DEGENERATE])
    emb = box_relational_embedding(boxes, **flags)
    assert np.isfinite(np.asarray(emb)).all()
    weights = jax.random.normal(jax.random.key(1), emb.shape)
    grad = jax.jit(jax.grad(lambda b: jnp.sum(box_relational_embedding(b, **flags) * weights)))(boxes)
    assert np.isfinite(np.asarray(grad)).all()
    # Identical boxes relate to each other exactly as a box to itself.
    np.testing.assert_array_equal(emb[0, 1, 2], emb[0, 1, 1])


def test_geometry_bias_stacks_heads_and_floors_relu_zeros():
    emb = box_relational_embedding(jnp.asarray([[BOX_A, BOX_B, DEGENERATE[0]]]))
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.3, (64, 4)).astype(np.float32)
    bias = np.array([0.5, -0.2, 0.1, -3.0], np.float32)
    kernel[:, 3] = 0.0  # head 3: relu(-3) = 0 everywhere -> the log floor
    out = np.asarray(jit_apply(GeometryBias(4), {"params": {"kernel": kernel, "bias": bias}}, emb))
    assert out.shape == (1, 4, 3, 3) and out.dtype == np.float32
    e = np.asarray(emb, np.float64)
    for h in range(4):
        expect = np.log(np.maximum(np.maximum(e @ kernel[:, h] + bias[h], 0.0), 1e-6))
        np.testing.assert_allclose(out[0, h], expect[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, 3], np.log(np.float32(1e-6)), rtol=1e-6)


# -- building blocks ------------------------------------------------------------------------------------


def test_ort_layer_norm_uses_unbiased_std_plus_eps():
    x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, (3, 8)), jnp.float32)
    x = x.at[2].set(1.5)  # a constant row: std 0
    params = {"scale": jnp.linspace(0.5, 1.5, 8), "bias": jnp.linspace(-1, 1, 8)}
    eps = 0.1  # large, so that std + eps and sqrt(var + eps) differ visibly
    out = jit_apply(OrtLayerNorm(eps), {"params": params}, x)
    xn = np.asarray(x, np.float64)
    expect = params["scale"] * (xn - xn.mean(-1, keepdims=True)) / (xn.std(-1, ddof=1, keepdims=True) + eps)
    np.testing.assert_allclose(out, expect + params["bias"], rtol=1e-5, atol=1e-6)
    flax_ln = jit_apply(nn.LayerNorm(epsilon=eps), {"params": params}, x)
    assert np.abs(np.asarray(out - flax_ln))[:2].max() > 1e-2
    grad = jax.jit(jax.grad(lambda v: jnp.sum(OrtLayerNorm(eps).apply({"params": params}, v) ** 2)))(x)
    assert np.isfinite(np.asarray(grad)).all()  # torch's std backward: 0, not NaN, where std == 0


def test_sinusoid_positions_interleave_sin_and_cos():
    pe = np.asarray(sinusoid_positions(jnp.arange(5), 6))
    pos = np.arange(5)[:, None]
    div = np.exp(np.arange(0, 6, 2) * -(np.log(10000.0) / 6))
    np.testing.assert_allclose(pe[:, 0::2], np.sin(pos * div), atol=1e-6)
    np.testing.assert_allclose(pe[:, 1::2], np.cos(pos * div), atol=1e-6)


def test_ort_token_mask():
    tokens = jnp.asarray([[0, 5, 3, 0, 0], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(ort_token_mask(tokens), [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


def test_config_defaults_tiny_and_validation():
    c = CaptionerConfig()
    assert (c.d_model, c.num_heads, c.d_ff, c.num_encoder_layers, c.num_decoder_layers, c.geometry_features) == \
        (512, 8, 2048, 6, 6, 64)
    assert c.legacy_plus_one and c.legacy_size_ratio and c.ort_layer_norm and not c.legacy_extra_skip
    t = CaptionerConfig.tiny()
    assert (t.d_model, t.num_heads, t.num_encoder_layers, t.num_decoder_layers) == (32, 4, 2, 2)
    assert CaptionerConfig.tiny(trigonometric_embedding=False).geometry_features == 4
    for bad in (dict(num_heads=5), dict(dtype="float16"), dict(dropout=1.0), dict(num_decoder_layers=0)):
        with pytest.raises(ValueError):
            CaptionerConfig.tiny(**bad)


def test_input_errors_name_the_argument():
    cfg = CaptionerConfig.tiny()
    model, params = Captioner(cfg), init_params(cfg)
    b = make_inputs(cfg)
    bad = {"features": dict(b, features=b["features"][..., :3]), "boxes": dict(b, boxes=b["boxes"][:, :4]),
           "mask": dict(b, mask=b["mask"][:, :3]), "tokens": dict(b, tokens=b["tokens"][:1])}
    # Raised while tracing (eval_shape compiles nothing), i.e. before any compilation.
    for name, inputs in bad.items():
        with pytest.raises(ValueError, match=name):
            jax.eval_shape(lambda x, inputs=inputs: model.apply({"params": params}, **x), inputs)
    memory = jnp.zeros((2, 5, cfg.d_model))

    def init_cache(max_len):
        return jax.eval_shape(lambda m: model.apply({"params": params}, m, None, max_len, method=Captioner.init_cache),
                              memory)

    with pytest.raises(ValueError, match="max_len"):
        init_cache(cfg.max_len + 1)
    cache_ = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), init_cache(4))
    with pytest.raises(ValueError, match="position"):
        jax.eval_shape(lambda c: model.apply({"params": params}, c, jnp.zeros(2, jnp.int32), 4,
                                             method=Captioner.decode_step), cache_)


# -- the model ------------------------------------------------------------------------------------------


def test_parameter_tree_dtypes_and_ort_init():
    shapes = param_shapes(CaptionerConfig.tiny(dtype="bfloat16"))
    assert set(shapes) == {"att_embed", "encoder", "embed", "decoder", "generator"}
    enc = shapes["encoder"]["layer_0"]
    assert enc["geometry"]["kernel"].shape == (64, 4) and enc["self_attn"]["query"]["kernel"].shape == (32, 4, 8)
    assert set(shapes["decoder"]["layer_1"]) == {"norm_0", "self_attn", "norm_1", "cross_attn", "norm_2", "ff"}
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))  # params float32 whatever the dtype
    # ORT's init: xavier_uniform_ per torch Linear (the [d, heads, head_dim] kernel is one Linear(d, d); each
    # geometry column one Linear(64, 1)) and torch's U(+-1/sqrt(fan_in)) biases.
    geo = jax.jit(GeometryBias(8).init)(jax.random.key(0), jnp.zeros((1, 2, 2, 64)))["params"]
    kernel = np.asarray(nn.meta.unbox(geo["kernel"]))
    assert 0.9 * np.sqrt(6 / 65) < np.abs(kernel).max() <= np.sqrt(6 / 65)
    assert 0 < np.abs(np.asarray(nn.meta.unbox(geo["bias"]))).max() <= 1 / 8
    qkv = jax.jit(_linear((4, 8), ("embed", "heads", "kv"), 32, "float32").init)(jax.random.key(1), jnp.zeros((1, 32)))
    kernel = np.asarray(nn.meta.unbox(qkv["params"]["kernel"]))
    assert kernel.shape == (32, 4, 8) and 0.9 * np.sqrt(6 / 64) < np.abs(kernel).max() <= np.sqrt(6 / 64)
    assert np.abs(np.asarray(nn.meta.unbox(qkv["params"]["bias"]))).max() <= 1 / np.sqrt(32)


def test_padding_invariance_and_normalised_log_probs():
    """Padded regions' features and boxes change nothing; every row of log-probs is a distribution."""
    cfg = CaptionerConfig.tiny()
    params, fwd = init_params(cfg), forward(cfg)
    b = make_inputs(cfg)
    out = np.asarray(fwd(params, b))
    assert out.shape == (2, 6, cfg.vocab_size) and out.dtype == np.float32
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, atol=1e-5)
    noise = np.random.default_rng(5)
    moved = dict(b, features=b["features"].at[1, -2:].set(noise.normal(size=(2, cfg.feature_size))),
                 boxes=b["boxes"].at[1, -2:].set(noise.uniform(0, 1, (2, 4))))
    np.testing.assert_allclose(fwd(params, moved), out, atol=1e-6)


def test_cached_decoding_equals_teacher_forcing():
    cfg = CaptionerConfig.tiny()
    model, params = Captioner(cfg), init_params(cfg)
    b = make_inputs(cfg, length=7)
    teacher = np.asarray(forward(cfg)(params, b))

    @jax.jit
    def start(p, x):
        memory = model.apply({"params": p}, x["features"], x["boxes"], x["mask"], method=Captioner.encode)
        return model.apply({"params": p}, memory, x["mask"], 7, method=Captioner.init_cache)

    cache_ = start(params, b)
    assert cache_.max_len == 7 and cache_.self_k[0].shape == (2, 7, 4, 8) and cache_.cross_k[0].shape == (2, 5, 4, 8)
    step = jax.jit(lambda p, c, tok, pos: model.apply({"params": p}, c, tok, pos, method=Captioner.decode_step))
    for t in range(7):
        logp, cache_ = step(params, cache_, b["tokens"][:, t], jnp.int32(t))
        np.testing.assert_allclose(logp, teacher[:, t], atol=1e-5, err_msg=f"position {t}")
    assert step._cache_size() == 1  # one compilation for every position
    # ORT's token mask only changes the positions fed a 0 (EOS) and after: row 0 is BOS w w w EOS pad pad.
    tokens = b["tokens"].at[0, 4:].set(0)
    plain = np.asarray(forward(cfg)(params, dict(b, tokens=tokens)))
    masked = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, **x, token_mask=ort_token_mask(x["tokens"])))(
        params, dict(b, tokens=tokens)))
    np.testing.assert_allclose(masked[0, :4], plain[0, :4], atol=1e-6)
    np.testing.assert_allclose(masked[1], plain[1], atol=1e-6)
    assert np.abs(masked[0, 4:] - plain[0, 4:]).max() > 1e-4


def test_public_decoder_pieces_compose_to_teacher_forcing():
    """``decode`` = ``log_probs(decode_hidden(...))``; the generator on the last state alone is ORT's next-token
    step; ``embed_tokens`` gives [B, T, d_model]. These are methods: the parameter tree keeps its five roots."""
    cfg = CaptionerConfig.tiny()
    model, params = Captioner(cfg), init_params(cfg)
    b = make_inputs(cfg)
    teacher = np.asarray(forward(cfg)(params, b))

    @jax.jit
    def pieces(p, x):
        v = {"params": p}
        memory = model.apply(v, x["features"], x["boxes"], x["mask"], method="encode")
        hidden = model.apply(v, memory, x["mask"], x["tokens"], method="decode_hidden")
        return (hidden, model.apply(v, hidden, method="log_probs"), model.apply(v, hidden[:, -1], method="log_probs"),
                model.apply(v, x["tokens"], jnp.arange(x["tokens"].shape[1]), method="embed_tokens"))

    hidden, logp, last, embedded = pieces(params, b)
    assert hidden.shape == embedded.shape == (2, 6, cfg.d_model) and last.shape == (2, cfg.vocab_size)
    np.testing.assert_allclose(logp, teacher, atol=1e-6)
    np.testing.assert_allclose(last, teacher[:, -1], atol=1e-6)
    assert set(params) == {"att_embed", "encoder", "embed", "decoder", "generator"}


def test_sown_attention_weights():
    cfg = CaptionerConfig.tiny()
    params = init_params(cfg)
    b = make_inputs(cfg)
    out, state = forward(cfg, sow=True)(params, b)
    np.testing.assert_allclose(out, forward(cfg)(params, b), atol=1e-5)  # explicit path == fused path
    att = collect_attention(state["intermediates"])
    assert {k: v.shape for k, v in att.items()} == {"encoder_self": (2, 2, 4, 5, 5), "decoder_self": (2, 2, 4, 6, 6),
                                                    "cross": (2, 2, 4, 6, 5)}
    for probs in att.values():
        np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)
    for family in ("encoder_self", "cross"):  # row 1's padded regions get exactly no attention
        assert np.all(np.asarray(att[family])[:, 1, ..., -2:] == 0.0)
    upper = np.triu(np.ones((6, 6), bool), k=1)
    assert np.all(np.asarray(att["decoder_self"])[..., upper] == 0.0)
    keys = flatten_dict(state["intermediates"], sep="/")
    assert "encoder/layer_1/self_attn/attend/weights" in keys and "decoder/layer_0/cross_attn/attend/weights" in keys


@pytest.mark.slow
def test_degenerate_boxes_finite_outputs_and_gradients_in_training():
    """Zero-width, identical, point, inverted and zero padding boxes under the paper's convention (no +1, so
    sizes hit the floor); dropout on; ORT's LayerNorm sees the zeroed padding rows (std 0). Log-probs and
    all gradients (params, features, boxes) stay finite. One layer each way, to keep the compile short."""
    cfg = CaptionerConfig.tiny(num_encoder_layers=1, num_decoder_layers=1, **PAPER)
    model, params = Captioner(cfg), init_params(cfg)
    b = make_inputs(cfg, regions=6, boxes=np.array([DEGENERATE, DEGENERATE[::-1]]))

    def loss(p, feats, boxes, rng):
        logp = model.apply({"params": p}, feats, boxes, b["mask"], b["tokens"], deterministic=False,
                           rngs={"dropout": rng})
        return -jnp.mean(jnp.take_along_axis(logp[:, :-1], b["tokens"][:, 1:, None], -1)), logp

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (value, logp), grads = grad_fn(params, b["features"], b["boxes"], jax.random.key(3))
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(logp)).all()
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads[0]["encoder"]["layer_0"]["geometry"]["kernel"])).max() > 0
    (value2, _), _ = grad_fn(params, b["features"], b["boxes"], jax.random.key(4))
    assert float(value2) != float(value)  # dropout draws from the rng


def test_bfloat16_matmuls_stay_close_to_float32():
    cfg32 = CaptionerConfig.tiny()
    cfg16 = CaptionerConfig.tiny(dtype="bfloat16")
    params = init_params(cfg32)
    b = make_inputs(cfg32)
    out32 = np.asarray(forward(cfg32)(params, b))
    out16, inter = jax.jit(lambda p, x: Captioner(cfg16).apply({"params": p}, **x, capture_intermediates=True,
                                                                mutable=["intermediates"]))(params, b)
    assert out16.dtype == jnp.float32
    diff = np.abs(np.asarray(out16) - out32)
    assert diff.max() < 0.15 and diff.mean() < 0.03, (diff.max(), diff.mean())
    assert diff.max() > 0  # the matmuls did run in bfloat16
    captured = flatten_dict(inter["intermediates"], sep="/")
    assert captured["encoder/layer_0/geometry/__call__"][0].dtype == jnp.float32
    assert captured["encoder/layer_0/self_attn/query/__call__"][0].dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init_params(cfg16)))
