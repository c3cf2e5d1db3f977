"""Attention analyses: hand-made attention maps, and tiny single- and dual-stream models (scanned or not) against
a numpy computation from their sown weights."""

import functools

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxvl.ablation.alignment import aligned_regions
from jaxvl.ablation.attention import attention_rows, attention_statistics, sown_attention
from jaxvl.ablation.data import AblationPipelineConfig, ablation_dataset, scan_ablation, world_ablation_source
from jaxvl.ablation.sweep import stack_params
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import find_segments, get_config, get_model
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.sharding import make_mesh


def test_statistics_of_hand_made_attention_maps():
    cfg = get_config("uniter", tiny=True)  # attention sub-layers 0 and 2, joint over [text ; vision]
    tw = np.zeros((1, 2, 3, 6), np.float32)  # [B, H, Lt, text 3 + vision 3 keys]; text key 2 is padding
    tw[0, 0, :, [0, 1, 3, 4, 5]] = 0.2  # head 0: uniform over the 5 real keys
    tw[0, 1, :, 4] = 1.0  # head 1: everything on region 1
    vw = np.zeros((1, 2, 3, 6), np.float32)
    vw[0, :, :, [0, 1, 3, 4, 5]] = 0.2
    layer = {"t_attend": {"weights": (jnp.asarray(tw),)}, "v_attend": {"weights": (jnp.asarray(vw),)}}
    inter = {"intermediates": {"bert": {"encoder": {"layer_0": layer, "layer_2": layer}}}}
    batch = {"text_mask": jnp.array([[1, 1, 0]]), "region_mask": jnp.array([[1, 1, 1]]),
             "phrase_mask": jnp.array([[0, 1, 0]])}
    aligned = jnp.array([[False, True, False]])
    stats = attention_statistics(cfg, inter, batch, aligned, jnp.array([1]))
    assert set(stats) == {"0", "2"}
    s = {k: np.asarray(v) for k, v in stats["0"].items()}
    np.testing.assert_allclose(s["t_entropy"] / s["t_queries"], [1.0, 0.0], atol=1e-6)
    assert s["t_queries"] == 2 and s["v_queries"] == 3
    np.testing.assert_allclose(s["v_entropy"] / s["v_queries"], [1.0, 1.0], atol=1e-6)
    assert s["phrase_queries"] == 1  # token 1 of the phrase, in an example with an aligned region
    np.testing.assert_allclose(s["aligned_share"], [1 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(s["vision_mass"], [0.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(s["chance_share"], [1 / 3, 1 / 3], rtol=1e-6)
    # a padding example (valid 0) adds nothing
    none = attention_statistics(cfg, inter, batch, aligned, jnp.array([0]))["0"]
    assert float(none["t_queries"]) == 0 and float(none["phrase_queries"]) == 0


@functools.cache
def data():
    world = World(WorldConfig(num_images=3, seed=5))
    tok = Tokenizer.from_words(world.vocabulary())
    source = world_ablation_source(world, range(3))
    cfg = AblationPipelineConfig(batch_size=8, max_seq_length=16)
    index = scan_ablation(source, tok, cfg)
    return tok, list(ablation_dataset(source, tok, cfg, index, shard=grain.sharding.NoSharding()))


def numpy_rows(model, params, batches, threshold):
    """The same statistics straight from the sown weights, per model, in float64 numpy."""
    m = type(model)(model.cfg, sow_weights=True)
    apply = jax.jit(lambda p, inputs: m.apply({"params": p}, **inputs, mutable=["intermediates"])[1],
                    compiler_options=FAST_COMPILE)
    acc = {}
    for batch in batches:
        inputs = {k: jnp.asarray(batch[k]) for k in ("input_ids", "features", "locations", "token_type_ids",
                                                      "text_mask", "region_mask")}
        enc = apply(params, inputs)["intermediates"]["bert"]["encoder"]
        aligned = np.asarray(aligned_regions(batch["boxes"], batch["ref_boxes"], batch["ref_mask"],
                                             batch["region_target_mask"], threshold))
        valid = batch["valid"].astype(bool)
        for n, spec in enumerate(model.cfg.sublayers):
            if spec.kind != "attn":
                continue
            for stream, use, qmask in (("t", (spec.tt, spec.tv), batch["text_mask"]),
                                       ("v", (spec.vt, spec.vv), batch["region_mask"])):
                if not any(use) or f"{stream}_attend" not in enc[f"layer_{n}"]:
                    continue
                w = np.asarray(enc[f"layer_{n}"][f"{stream}_attend"]["weights"][0], np.float64)
                keys = np.concatenate([mk for mk, u in zip((batch["text_mask"], batch["region_mask"]), use,
                                                            strict=True) if u], 1)
                for b in np.flatnonzero(valid):
                    nk = keys[b].sum()
                    for q in np.flatnonzero(qmask[b]):
                        p = w[b, :, q][:, keys[b] == 1]
                        ent = -(p * np.log(np.where(p > 0, p, 1))).sum(-1) / np.log(nk)
                        key = (n, "text" if stream == "t" else "vision")
                        acc.setdefault(key, []).append(ent)
                        if stream == "t" and spec.tv and batch["phrase_mask"][b, q] and aligned[b].any():
                            vis = w[b, :, q, -aligned.shape[1]:] * batch["region_mask"][b]
                            share = (vis * aligned[b]).sum(-1) / vis.sum(-1)
                            acc.setdefault((n, "share"), []).append(share)
    return {k: np.mean(v, 0) for k, v in acc.items()}


def test_scanned_weights_map_to_their_sublayers():
    """LXMERT's plan scans in segments of different lengths and repeats; each sown map finds its sub-layer."""
    cfg = get_config("lxmert", tiny=True, scan_layers=True)
    segments = find_segments(cfg.sublayers)
    assert sorted({s.repeats for s in segments}) == [1, 2]  # both layouts occur
    enc = {}
    for k, seg in enumerate(segments):
        for j, spec in enumerate(seg.sublayers):
            if spec.kind != "attn":
                continue
            index = [seg.start + r * len(seg.sublayers) + j for r in range(seg.repeats)]
            node = {}
            for stream, used in (("t_attend", spec.has_text), ("v_attend", spec.has_vision)):
                if used:
                    maps = np.stack([np.full((1, 2, 3, 3), n, np.float32) for n in index])
                    node[stream] = {"weights": (maps if seg.repeats > 1 else maps[0],)}
            enc.setdefault(f"segment_{k}", {})[f"sub_{j}"] = node
    got = sown_attention(cfg, {"intermediates": {"bert": {"encoder": enc}}})
    want = [n for n, s in enumerate(cfg.sublayers) if s.kind == "attn"]
    assert [n for n, *_ in got] == want
    for n, spec, tw, vw in got:
        assert spec == cfg.sublayers[n]
        for w, used in ((tw, spec.has_text), (vw, spec.has_vision)):
            assert (w is not None) == used
            if used:
                assert w.shape == (1, 2, 3, 3) and (np.asarray(w) == n).all()


@pytest.mark.slow
def test_rows_match_numpy_from_the_sown_weights_of_a_dual_stream_model():
    tok, batches = data()
    model = get_model("lxmert", tiny=True, vocab_size=tok.vocab_size, num_object_classes=20)
    inputs = {k: jnp.asarray(batches[0][k][:1]) for k in ("input_ids", "features", "locations")}
    init = jax.jit(model.init, compiler_options=FAST_COMPILE)
    # at the init scale (N(0, 0.02)) attention is nearly uniform; larger weights make the maps peaked
    trees = [jax.tree.map(lambda x: 4 * x, nn.meta.unbox(init(jax.random.key(s), **inputs)["params"])) for s in (0, 1)]
    rows = attention_rows(model, stack_params(trees), batches, make_mesh(), threshold=0.5, model_names=["a", "b"],
                          compiler_options=FAST_COMPILE)
    want = numpy_rows(model, trees[1], batches, 0.5)
    got = [r for r in rows if r["model"] == "b"]
    for (n, kind), value in want.items():
        stream = "text" if kind == "share" else kind
        sel = sorted((r for r in got if r["sublayer"] == n and r["stream"] == stream), key=lambda r: r["head"])
        field = "aligned_share" if kind == "share" else "entropy"
        np.testing.assert_allclose([r[field] for r in sel], value, rtol=1e-4, atol=1e-4, err_msg=f"{n} {kind}")
    assert {r["sublayer"] for r in rows} == {n for n, _ in want}
    assert any(k == "share" for _, k in want)
    assert all(0 <= r["entropy"] <= 1 + 1e-6 for r in rows) and np.std([r["entropy"] for r in rows]) > 0.02
    # cross-attention of a dual-stream model sees only vision keys: all of a token's attention is on vision
    cross = [r for r in got if r["vision_mass"] is not None]
    assert cross and all(abs(r["vision_mass"] - 1) < 1e-5 for r in cross)
    # the two checkpoints differ, so their rows do
    first = {(r["sublayer"], r["stream"], r["head"]): r["entropy"] for r in rows if r["model"] == "a"}
    assert any(abs(first[(r["sublayer"], r["stream"], r["head"])] - r["entropy"]) > 1e-4 for r in got)
