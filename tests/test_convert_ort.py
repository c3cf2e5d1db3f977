"""ORT checkpoint conversion: names and shapes, parity against ORT's own PyTorch code, round trips, strict errors.

Golden files ``tests/data/ort_golden_<variant>.npz`` come from ``scripts/make_ort_golden.py``: ORT's
``RelationTransformerModel`` (yahoo/object_relation_transformer 9f28357) at tiny sizes with 8 heads, random
weights, one batch with padded regions and degenerate boxes. ``default`` is ORT's defaults; ``legacy`` sets
``legacy_extra_skip`` and the raw (non-trigonometric) box embedding.
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from jaxvl.convert.common import StateDictError
from jaxvl.convert.ort import (
    PE_NAME,
    from_ort,
    load_ort_checkpoint,
    ort_config_from_state_dict,
    ort_positional_encoding,
    ort_state_dict_shapes,
    to_ort,
)
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig, ort_token_mask, sinusoid_positions
from jaxvl.models.ort.geometry import box_relational_embedding

DATA = os.path.join(os.path.dirname(__file__), "data")
VARIANTS = {"default": {}, "legacy": {"legacy_extra_skip": True, "trigonometric_embedding": False}}
ATOL = 1e-5
# The trigonometric box embedding is float32 sin/cos of arguments up to 690, where float32's spacing is 6.1e-5: how
# the argument rounds differs between XLA versions, so the embedding is compared to two of those spacings (measured
# max 5.3e-5 with jax 0.12), and the memory and log-probs of that variant to 5e-5 (measured max 7.9e-6 with jax
# 0.10, 2.3e-5 with jax 0.12; the legacy variant, without the embedding, 1e-6 with both).
ANGLE_SPACING = float(np.spacing(np.float32(690.0)))
PARITY_ATOL = {"default": 5e-5, "legacy": ATOL}


@cache
def golden(variant: str) -> dict:
    """``sd``, ``in`` and ``out`` dicts plus the top-level arrays of one golden file."""
    with np.load(os.path.join(DATA, f"ort_golden_{variant}.npz")) as z:
        g: dict = {"sd": {}, "in": {}, "out": {}}
        for key in z.files:
            group, _, rest = key.partition("/")
            if rest:
                g[group][rest] = z[key]
            else:
                g[key] = z[key]
    return g


def config(variant: str) -> CaptionerConfig:
    return CaptionerConfig.tiny(num_heads=8, vocab_size=12, **VARIANTS[variant])


def state(variant: str) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in golden(variant)["sd"].items()}


@cache
def teacher_forced(variant: str):
    """Jitted (memory, log-probs with ORT's token mask, log-probs without) for the variant's config."""
    model = Captioner(config(variant))

    @jax.jit
    def run(params, features, boxes, mask, tokens):
        v = {"params": params}
        memory = model.apply(v, features, boxes, mask, method=Captioner.encode)
        masked = model.apply(v, memory, mask, tokens, ort_token_mask(tokens), method=Captioner.decode)
        return memory, masked, model.apply(v, memory, mask, tokens, method=Captioner.decode)

    return run


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_config_is_current(variant):
    stored = CaptionerConfig(**json.loads(str(golden(variant)["config"])))
    assert stored == config(variant), "tiny config changed: rerun scripts/make_ort_golden.py"
    # Sizes read off the state dict; the flag a state dict cannot show comes from the caller.
    inferred = ort_config_from_state_dict(golden(variant)["sd"], legacy_extra_skip=stored.legacy_extra_skip)
    assert inferred == dataclasses.replace(stored, max_len=CaptionerConfig().max_len)


@pytest.mark.parametrize("variant", VARIANTS)
def test_key_names_shapes_and_parameter_count_match_ort(variant):
    g = golden(variant)
    tiny = ort_state_dict_shapes(config(variant), include_buffers=False)
    assert list(tiny.items()) == [(k, v.shape) for k, v in g["sd"].items()]
    full_cfg = dataclasses.replace(CaptionerConfig(), **VARIANTS[variant])
    full = list(zip(g["full_keys"].tolist(), map(tuple, json.loads(str(g["full_shapes"]))), strict=True))
    assert list(ort_state_dict_shapes(full_cfg).items()) == full  # pe buffer included, in ORT's place
    model = Captioner(full_cfg)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), **model.dummy_inputs())["params"]))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == int(g["full_params"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_ort_teacher_forced(variant):
    """Encoder memory and teacher-forced log-probs of ORT's model, padded regions and degenerate boxes included."""
    g = golden(variant)
    params = from_ort(g["sd"], config(variant))
    inputs, out = g["in"], g["out"]
    tokens = jnp.asarray(inputs["labels"][:, :-1], jnp.int32)  # ORT crops the last label
    memory, masked, plain = teacher_forced(variant)(params, inputs["features"], inputs["boxes"], inputs["mask"],
                                                    tokens)
    tol = PARITY_ATOL[variant]
    np.testing.assert_allclose(memory, out["memory"], atol=tol, rtol=ATOL)
    np.testing.assert_allclose(masked, out["logprobs"], atol=tol, rtol=ATOL)
    # Without ORT's token mask every position a caption loss reads (targets up to the EOS) is unchanged.
    targets = inputs["labels"][:, 1:]
    read = np.cumsum(targets == 0, axis=1) - (targets == 0) == 0
    np.testing.assert_allclose(np.asarray(plain)[read], out["logprobs"][read], atol=tol, rtol=ATOL)
    # The box embedding on its own (float32 sin/cos of arguments up to 690: two float32 spacings of the argument).
    emb = box_relational_embedding(inputs["boxes"], dim=config(variant).geometry_features,
                                   trigonometric=config(variant).trigonometric_embedding)
    np.testing.assert_allclose(emb, out["box_embedding"], atol=2 * ANGLE_SPACING)


def test_parity_with_ort_greedy_incremental_decoding():
    """``init_cache`` + ``decode_step`` reproduce ORT's greedy ``_sample`` (which re-decodes the prefix each step)."""
    g = golden("default")
    cfg = config("default")
    model = Captioner(cfg)
    params = from_ort(g["sd"], cfg)
    seq, logps = g["out"]["greedy_seq"], g["out"]["greedy_logprobs"]
    batch, steps = seq.shape

    @jax.jit
    def greedy(p, features, boxes, mask):
        v = {"params": p}
        memory = model.apply(v, features, boxes, mask, method=Captioner.encode)
        cache_ = model.apply(v, memory, mask, steps + 1, method=Captioner.init_cache)

        def step(carry, t):
            cache_, token, unfinished = carry
            logp, cache_ = model.apply(v, cache_, token, t, method=Captioner.decode_step)
            best, nxt = jnp.max(logp, -1), jnp.argmax(logp, -1).astype(jnp.int32)
            unfinished = unfinished & (nxt > 0)
            nxt = nxt * unfinished
            return (cache_, nxt, unfinished), (nxt, best)

        start = (cache_, jnp.zeros(batch, jnp.int32), jnp.ones(batch, bool))
        _, (tokens, best) = jax.lax.scan(step, start, jnp.arange(steps))
        return tokens.T, best.T

    tokens, best = greedy(params, g["in"]["features"], g["in"]["boxes"], g["in"]["mask"])
    np.testing.assert_array_equal(tokens, seq)
    # ORT stops early once every row has finished; its log-probs after that are zeros.
    live = np.cumsum(seq == 0, axis=1) - (seq == 0) == 0
    np.testing.assert_allclose(np.asarray(best)[live], logps[live], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trips_are_exact(variant):
    cfg = config(variant)
    sd = state(variant)
    back = to_ort(from_ort(sd, cfg), cfg, include_buffers=False)
    assert list(back) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), from_ort(sd, cfg))
    again = from_ort(to_ort(params, cfg), cfg)
    flat, flat_again = flatten_dict(params), flatten_dict(again)
    assert flat.keys() == flat_again.keys()
    for k in flat:
        np.testing.assert_array_equal(flat_again[k], flat[k], err_msg="/".join(k))


def test_geometry_heads_are_stacked_in_order():
    cfg = config("default")
    sd = state("default")
    params = from_ort(sd, cfg)
    geo = params["encoder"]["layer_1"]["geometry"]
    for h in range(8):
        np.testing.assert_array_equal(geo["kernel"][:, h], sd[f"model.encoder.layers.1.self_attn.WGs.{h}.weight"][0])
        assert geo["bias"][h] == sd[f"model.encoder.layers.1.self_attn.WGs.{h}.bias"][0]


def test_positional_encoding_buffer():
    pe_head = golden("default")["pe_head"]
    np.testing.assert_allclose(ort_positional_encoding(32)[0, :32], pe_head, atol=1e-6)
    np.testing.assert_allclose(sinusoid_positions(jnp.arange(32), 32), pe_head, atol=1e-6)
    cfg = config("default")
    sd = state("default")
    written = to_ort(from_ort(sd, cfg), cfg)
    assert list(written)[-4:] == ["model.tgt_embed.0.lut.weight", PE_NAME, "model.generator.proj.weight",
                                  "model.generator.proj.bias"]
    assert written[PE_NAME].shape == (1, 5000, 32)
    from_ort(written, cfg)  # accepted with the buffer
    bad = dict(written)
    bad[PE_NAME] = written[PE_NAME][..., ::-1].copy()
    with pytest.raises(StateDictError, match="sinusoid"):
        from_ort(bad, cfg)
    bad[PE_NAME] = written[PE_NAME][:, :100]
    with pytest.raises(StateDictError, match="mis-shaped"):
        from_ort(bad, cfg)


def test_load_checkpoint_file(tmp_path):
    """A ``torch.save``d state dict (with the pe buffer and DataParallel's ``module.`` prefix), read with
    ``weights_only=True``; sizes inferred from the tensors."""
    cfg = config("legacy")
    sd = to_ort(from_ort(state("legacy"), cfg), cfg)
    torch = pytest.importorskip("torch", reason="needs torch to write a .pth: pip install -e '.[test]'")
    path = tmp_path / "model.pth"
    torch.save({f"module.{k}": torch.from_numpy(v) for k, v in sd.items()}, path)
    params, loaded_cfg = load_ort_checkpoint(path, legacy_extra_skip=True)
    assert loaded_cfg == dataclasses.replace(cfg, max_len=CaptionerConfig().max_len)
    expect = flatten_dict(from_ort(state("legacy"), cfg))
    got = flatten_dict(params)
    assert got.keys() == expect.keys() and all(np.array_equal(got[k], expect[k]) for k in expect)
    params2, cfg2 = load_ort_checkpoint(path, cfg)
    assert cfg2 is cfg
    with pytest.raises(FileNotFoundError):
        load_ort_checkpoint(tmp_path / "missing.pth", cfg)


def test_strict_checks_list_every_problem():
    cfg = config("default")
    sd = state("default")
    del sd["model.decoder.layers.1.src_attn.linears.2.bias"]
    sd["model.encoder.layers.0.self_attn.WGs.8.weight"] = np.zeros((1, 64), np.float32)
    sd["model.generator.proj.weight"] = sd["model.generator.proj.weight"][:, :8]
    with pytest.raises(StateDictError) as err:
        from_ort(sd, cfg, source="ckpt.pth")
    msg = str(err.value)
    assert "ckpt.pth" in msg
    assert "missing (1): model.decoder.layers.1.src_attn.linears.2.bias" in msg
    assert "unexpected (1): model.encoder.layers.0.self_attn.WGs.8.weight" in msg
    assert "mis-shaped (1): model.generator.proj.weight: got (12, 8), expected (12, 32)" in msg
    with pytest.raises(ValueError, match="8 heads"):
        from_ort(state("default"), CaptionerConfig.tiny(vocab_size=12))
    with pytest.raises(ValueError, match="8 heads"):
        ort_state_dict_shapes(CaptionerConfig.tiny())
    # A trigonometric checkpoint against a raw-coordinate config: every WGs weight is mis-shaped.
    with pytest.raises(StateDictError, match=r"mis-shaped \(16\)"):
        from_ort(state("default"), config("legacy"))
