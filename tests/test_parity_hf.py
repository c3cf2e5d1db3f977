"""Numerical parity of jaxvl with HuggingFace ``transformers`` (PyTorch, CPU, float32) via ``jaxvl.convert.hf``.

Small HF models are built from config objects (never from a hub), every parameter is drawn at random
from a seeded generator (LayerNorm scales around 1, so a swapped or misplaced tensor shows), the
weights are converted, and *every* jaxvl hidden state -- the embeddings and the streams after each
sub-layer -- is compared with the HF tensor at the same point (HF's per-layer hidden states, plus
forward hooks for the states inside a layer) to ``max|diff| <= 1e-5``, on a batch with padded text
and padded regions.

Deliberate differences between the models, and why the compared outputs still agree:

- Poolers: HF LXMERT / VisualBERT / BERT pool with ``tanh(W h[CLS])`` at hidden width; VOLTA (and
  jaxvl) pool text *and* vision with ReLU to ``pooler_size`` (1024) and fuse them with ``mul``.
  Nothing downstream of the encoder is compared except BERT's MLM head; the HF pooler weights are
  ignored by the converters on purpose and jaxvl's poolers keep their init values.
- Heads: HF's LXMERT heads (QA, 1600 objects / 400 attributes / 2048 features) and VisualBERT's
  pretraining heads have no jaxvl counterpart (VOLTA's MRC-KL head has 1601 classes, ITM reads the
  fused pooler). Only base models are converted; BERT's MLM head *is* loaded (as in VOLTA) and its
  logits are compared.
- Mask constant: jaxvl adds ``(1 - m) * -10000`` (VOLTA, original BERT), HF adds
  ``(1 - m) * finfo(float32).min``. After subtracting the row maximum, ``exp(-10000 + O(10))`` and
  ``exp(finfo.min)`` both underflow to exactly 0 in float32, so the softmax is identical as long
  as every query row has at least one unmasked key (true here and for any real batch: [CLS] and the
  global [IMG] row are never masked). Padded *query* rows are computed identically by both and are
  compared too.
- HF VisualBERT concatenates text and region masks into one combined mask; jaxvl keeps a text bias
  and a vision bias and concatenates them with the keys inside the joint softmax -- the same bias
  vector over the same key order [text ; vision].
- LXMERT: HF runs all language layers, then all vision (``r_layers``) layers, then the cross blocks;
  jaxvl runs text layer i and vision layer i side by side at sub-layers 2i / 2i+1. The streams do
  not interact before the first cross block, so the states are the same; jaxvl's vision stream
  passes through unchanged at the text-only sub-layers 2r..2l-1. HF's ``visual_pos_dim`` is set to
  5 (VOLTA's ``num_locs``); HF's ``padding_idx=0`` on the LXMERT position/type tables only affects
  init and gradients.
- Single stream with the vision rows masked out (``region_mask=0``): the text queries' softmax spans
  [text keys ; vision keys], the vision keys' scores get -10000 and their probabilities underflow to
  exactly 0, and the feed-forward / LayerNorm act per token -- so UNITER's text stream is BERT.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Self

import jax
import numpy as np
import pytest
from flax import linen as nn

from jaxvl.convert.common import StateDictError, linear_to_kernel
from jaxvl.convert.hf import bert_into_text_stream, from_hf_lxmert, from_hf_visualbert, lxmert_layout
from jaxvl.models import VLBertForPreTraining, VLConfig, VLOutput, get_config, scan_params

torch = pytest.importorskip("torch", reason="HF parity needs torch: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="HF parity needs transformers: pip install -e '.[test]'")

TOL = 1e-5
B, LT, LV = 3, 7, 5


# ------------------------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------------------------
def randomize(model, seed: int, std: float = 0.2) -> None:
    """Every parameter ~ N(0, std) (LayerNorm scales ~ N(1, std)), from a seeded generator; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
            if name.endswith(("LayerNorm.weight", "layer_norm.weight")):
                p.add_(1.0)
    model.eval()


def make_batch(cfg: VLConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Row 0 full; row 1 with padded text (ids 0, mask 0); row 2 with padded regions."""
    rng = np.random.default_rng(seed)
    text_mask = np.ones((B, LT), np.int64)
    text_mask[1, 4:] = 0
    region_mask = np.ones((B, LV), np.int64)
    region_mask[2, 3:] = 0
    ids = rng.integers(1, cfg.vocab_size, (B, LT)) * text_mask
    return {"input_ids": ids, "token_type_ids": rng.integers(0, 2, (B, LT)) * text_mask, "text_mask": text_mask,
            "region_mask": region_mask,
            "features": rng.normal(size=(B, LV, cfg.v_feature_size)).astype(np.float32),
            "locations": rng.uniform(size=(B, LV, cfg.num_locs)).astype(np.float32)}


def jax_forward(cfg: VLConfig, params, batch: dict[str, np.ndarray]) -> VLOutput:
    """jaxvl ``VLBertForPreTraining`` forward with all hidden states."""
    return VLBertForPreTraining(cfg).apply(
        {"params": params}, batch["input_ids"], batch["features"], batch["locations"],
        token_type_ids=batch["token_type_ids"], text_mask=batch["text_mask"], region_mask=batch["region_mask"],
        deterministic=True, output_hidden_states=True)


@functools.cache
def _init(cfg: VLConfig) -> dict:
    """A complete, boxed parameter tree for ``cfg``: ``model.init``'s structure, shapes and partitioning
    metadata (from ``jax.eval_shape``, nothing compiled) filled with seeded random values."""
    model = VLBertForPreTraining(cfg)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(1), **model.dummy_inputs())["params"]
    rng = np.random.default_rng(1)

    def fill(leaf):
        if isinstance(leaf, nn.meta.AxisMetadata):
            return leaf.replace_boxed(fill(leaf.unbox()))
        return (rng.normal(size=leaf.shape) * 0.02).astype(leaf.dtype)

    return jax.tree.map(fill, shapes, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def init_params(cfg: VLConfig, boxed: bool = False) -> dict:
    """Init-like params for ``cfg`` (cached per config), with logical-partitioning boxes when ``boxed``."""
    params = _init(cfg)
    return params if boxed else nn.meta.unbox(params)


class Capture:
    """Forward hooks recording each call's (first) output, keyed by a label; a context manager."""

    def __init__(self):
        self.out: dict[str, list[np.ndarray]] = {}
        self.handles = []

    def on(self, module, label: str) -> None:
        def hook(_module, _inputs, output):
            first = output[0] if isinstance(output, tuple) else output
            self.out.setdefault(label, []).append(first.detach().numpy().copy())
        self.handles.append(module.register_forward_hook(hook))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def assert_states(got: tuple, expected: list[list[np.ndarray | None]], tol: float = TOL) -> float:
    """``got[k] = (text, vision)`` from jaxvl against ``expected[k] = [text, vision]`` (None: not compared).

    Every state named in ``expected`` is compared; returns the largest difference seen.
    """
    assert len(got) == len(expected), f"{len(got)} jaxvl hidden states, {len(expected)} expected"
    worst = 0.0
    for k, (pair, want) in enumerate(zip(got, expected, strict=True)):
        for stream, g, w in zip(("text", "vision"), pair, want, strict=True):
            if w is None:
                continue
            diff = float(np.max(np.abs(np.asarray(g) - w)))
            worst = max(worst, diff)
            assert diff <= tol, f"hidden state {k} ({stream}): max|diff| {diff:.3g} > {tol}"
    return worst


def torch_inputs(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------
# LXMERT.
# ------------------------------------------------------------------------------------------------
def hf_lxmert(cfg: VLConfig, seed: int = 0):
    n_text, r_layers, x_layers = lxmert_layout(cfg)
    hf_cfg = transformers.LxmertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, l_layers=n_text, x_layers=x_layers, r_layers=r_layers,
        visual_feat_dim=cfg.v_feature_size, visual_pos_dim=cfg.num_locs)
    model = transformers.LxmertModel(hf_cfg)
    randomize(model, seed)
    return model


def lxmert_expected(hf, batch: dict[str, np.ndarray]) -> tuple[list[list[np.ndarray]], object]:
    """HF LXMERT states at every jaxvl sub-layer boundary (see the module docstring for the order)."""
    c = hf.config
    n_text, r_layers, x_layers = c.l_layers, c.r_layers, c.x_layers
    enc = hf.encoder
    t = torch_inputs(batch)
    with Capture() as cap, torch.no_grad():
        cap.on(hf.embeddings, "emb_t")
        cap.on(enc.visn_fc, "emb_v")
        for i, layer in enumerate(enc.layer):
            cap.on(layer.attention, f"l{i}")
        for i, layer in enumerate(enc.r_layers):
            cap.on(layer.attention, f"r{i}")
        for j, layer in enumerate(enc.x_layers):
            cap.on(layer.visual_attention, f"x{j}")  # called twice: text queries, then vision queries
            cap.on(layer.lang_self_att, f"ls{j}")
            cap.on(layer.visn_self_att, f"vs{j}")
        out = hf(input_ids=t["input_ids"], visual_feats=t["features"], visual_pos=t["locations"],
                 attention_mask=t["text_mask"], visual_attention_mask=t["region_mask"],
                 token_type_ids=t["token_type_ids"], output_hidden_states=True)
    got = cap.out
    lang = [h.numpy() for h in out.language_hidden_states]
    vis = [h.numpy() for h in out.vision_hidden_states]
    depth = 2 * n_text + 3 * x_layers
    text: list = [None] * (depth + 1)
    vision: list = [None] * (depth + 1)
    text[0], vision[0] = got["emb_t"][0], got["emb_v"][0]
    for i in range(n_text):
        text[2 * i + 1], text[2 * i + 2] = got[f"l{i}"][0], lang[i]
    for i in range(r_layers):
        vision[2 * i + 1], vision[2 * i + 2] = got[f"r{i}"][0], vis[i]
    for k in range(2 * r_layers + 1, 2 * n_text + 1):  # text-only sub-layers: vision passes through
        vision[k] = vision[2 * r_layers]
    for j in range(x_layers):
        c0 = 2 * n_text + 3 * j
        (text[c0 + 1], vision[c0 + 1]) = got[f"x{j}"]
        text[c0 + 2], vision[c0 + 2] = got[f"ls{j}"][0], got[f"vs{j}"][0]
        text[c0 + 3], vision[c0 + 3] = lang[n_text + j], vis[r_layers + j]
    return [list(p) for p in zip(text, vision, strict=True)], out


@pytest.fixture(scope="module")
def lxmert_case():
    cfg = get_config("lxmert", tiny=True)
    hf = hf_lxmert(cfg)
    init = init_params(cfg, boxed=True)  # boxed, as model.init returns them; the converter unboxes
    return cfg, hf, nn.meta.unbox(init), from_hf_lxmert(hf.state_dict(), cfg, init)


def test_lxmert_layout_of_tiny_preset():
    assert lxmert_layout(get_config("lxmert", tiny=True)) == (3, 2, 2)
    assert lxmert_layout(get_config("lxmert")) == (9, 5, 5)


def test_lxmert_every_hidden_state_matches_hf(lxmert_case):
    cfg, hf, _, params = lxmert_case
    batch = make_batch(cfg)
    expected, hf_out = lxmert_expected(hf, batch)
    out = jax_forward(cfg, params, batch)
    assert len(expected) == cfg.plan.depth + 1 == 13
    assert_states(out.hidden_states, expected)
    np.testing.assert_allclose(np.asarray(out.text), hf_out.language_output.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out.vision), hf_out.vision_output.numpy(), atol=TOL, rtol=0)


def test_lxmert_keeps_init_for_params_hf_lacks(lxmert_case):
    _, _, init, params = lxmert_case
    assert jax.tree.structure(params) == jax.tree.structure(init)
    for a, b in ((init["bert"]["t_pooler"], params["bert"]["t_pooler"]), (init["bert"]["v_pooler"],
                 params["bert"]["v_pooler"]), (init["mlm"], params["mlm"]), (init["itm"], params["itm"]),
                 (init["image_predictions"], params["image_predictions"])):
        jax.tree.map(np.testing.assert_array_equal, a, b)


def test_lxmert_shared_cross_attention_is_one_module(lxmert_case):
    """x_layers[j].visual_attention (incl. its output dense + LN) lands in the tied sub-layer 6 + 3j."""
    _, hf, _, params = lxmert_case
    layer = params["bert"]["encoder"]["layer_9"]
    assert "v_query" not in layer and "v_norm" not in layer
    w = hf.state_dict()["encoder.x_layers.1.visual_attention.output.dense.weight"].numpy()
    np.testing.assert_array_equal(np.asarray(layer["out"]["kernel"]), linear_to_kernel(w, in_shape=(4, 8)))


def test_lxmert_scanned_layout(lxmert_case):
    """With ``scan_layers`` the converter fills the stacked ``segment_k`` layout; outputs still match HF."""
    cfg, hf, init, _ = lxmert_case
    scan_cfg = cfg.replace(scan_layers=True)
    scanned = from_hf_lxmert(hf.state_dict(), scan_cfg, scan_params(init, scan_cfg))
    assert "segment_0" in scanned["bert"]["encoder"] and "layer_0" not in scanned["bert"]["encoder"]
    batch = make_batch(cfg, seed=3)
    expected, _ = lxmert_expected(hf, batch)
    assert_states(jax_forward(scan_cfg, scanned, batch).hidden_states, expected)


def test_lxmert_bad_state_dict_lists_every_problem(lxmert_case):
    cfg, hf, init, _ = lxmert_case
    sd = dict(hf.state_dict())
    del sd["encoder.x_layers.1.lang_output.dense.weight"]
    sd["encoder.visn_fc.box_fc.weight"] = torch.zeros(cfg.hidden_size, 4)  # visual_pos_dim 4 vs num_locs 5
    sd["encoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(StateDictError) as err:
        from_hf_lxmert(sd, cfg, init)
    msg = str(err.value)
    for name in ("encoder.x_layers.1.lang_output.dense.weight", "encoder.visn_fc.box_fc.weight: got (32, 4)",
                 "encoder.extra.weight", "missing (1)", "unexpected (1)", "mis-shaped (1)"):
        assert name in msg, msg


def test_lxmert_rejects_other_layouts(lxmert_case):
    _, hf, init, _ = lxmert_case
    with pytest.raises(ValueError, match="image_embeddings='lxmert'"):
        from_hf_lxmert(hf.state_dict(), get_config("vilbert", tiny=True), init)
    vilbert_plan_as_lxmert = get_config("vilbert", tiny=True, image_embeddings="lxmert")
    with pytest.raises(ValueError, match="not an LXMERT layout"):
        from_hf_lxmert(hf.state_dict(), vilbert_plan_as_lxmert, init)


# ------------------------------------------------------------------------------------------------
# VisualBERT.
# ------------------------------------------------------------------------------------------------
def hf_visualbert(cfg: VLConfig, seed: int = 0):
    hf_cfg = transformers.VisualBertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, visual_embedding_dim=cfg.v_feature_size,
        num_hidden_layers=cfg.plan.depth // 2, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, hidden_act="gelu", max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps, pad_token_id=0)
    model = transformers.VisualBertModel(hf_cfg)
    randomize(model, seed)
    return model


def test_visualbert_every_hidden_state_matches_hf():
    cfg = get_config("visualbert", tiny=True)
    hf = hf_visualbert(cfg)
    params = from_hf_visualbert(hf.state_dict(), cfg, init_params(cfg))
    batch = make_batch(cfg, seed=1)
    t = torch_inputs(batch)
    with Capture() as cap, torch.no_grad():
        for i, layer in enumerate(hf.encoder.layer):
            cap.on(layer.attention, f"a{i}")
        hf_out = hf(input_ids=t["input_ids"], token_type_ids=t["token_type_ids"], attention_mask=t["text_mask"],
                    visual_embeds=t["features"], visual_attention_mask=t["region_mask"], output_hidden_states=True)
    def split(x: np.ndarray) -> list[np.ndarray]:  # [text ; vision], as HF concatenates them
        return [x[:, :LT], x[:, LT:]]

    expected = [split(hf_out.hidden_states[0].numpy())]
    for i in range(cfg.plan.depth // 2):
        expected += [split(cap.out[f"a{i}"][0]), split(hf_out.hidden_states[i + 1].numpy())]
    out = jax_forward(cfg, params, batch)
    assert_states(out.hidden_states, expected)
    np.testing.assert_allclose(np.concatenate([out.text, out.vision], axis=1), hf_out.last_hidden_state.numpy(),
                               atol=TOL, rtol=0)


def test_converters_accept_variables_and_base_model_trees():
    """``{"params": ...}`` comes back wrapped; ``VLBertModel`` trees (no ``bert`` root) work as well."""
    cfg = get_config("visualbert", tiny=True)
    sd = hf_visualbert(cfg).state_dict()
    init = init_params(cfg)
    full = from_hf_visualbert(sd, cfg, init)
    wrapped = from_hf_visualbert(sd, cfg, {"params": init})
    assert set(wrapped) == {"params"}
    jax.tree.map(np.testing.assert_array_equal, wrapped["params"], full)
    base = from_hf_visualbert(sd, cfg, init["bert"])
    jax.tree.map(np.testing.assert_array_equal, base, full["bert"])


def test_visualbert_bad_state_dict():
    cfg = get_config("visualbert", tiny=True)
    sd = dict(hf_visualbert(cfg).state_dict())
    sd["embeddings.visual_projection.weight"] = torch.zeros(cfg.hidden_size, 2048)
    del sd["encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(StateDictError, match=r"(?s)missing \(1\): encoder\.layer\.1\.attention\.self\.key\.bias.*"
                                              r"embeddings\.visual_projection\.weight: got \(32, 2048\)"):
        from_hf_visualbert(sd, cfg, init_params(cfg))
    with pytest.raises(ValueError, match="image_embeddings='visualbert'"):
        from_hf_visualbert(sd, get_config("uniter", tiny=True), init_params(cfg))


# ------------------------------------------------------------------------------------------------
# BERT into the text stream.
# ------------------------------------------------------------------------------------------------
def hf_bert(cfg: VLConfig, layers: int, seed: int = 0, pretraining: bool = False, type_vocab_size: int = 2):
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size, hidden_act="gelu",
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=0)
    model = (transformers.BertForPreTraining if pretraining else transformers.BertModel)(hf_cfg)
    randomize(model, seed)
    return model


def bert_expected(bert, batch: dict[str, np.ndarray], sublayers: Callable[[int], tuple[int, int]], depth: int,
                  region_mask_zero: bool = True):
    """BERT text states placed at jaxvl indices: embeddings at 0, layer i's attention / output at
    ``sublayers(i)``; the first ``depth + 1`` entries; vision never compared."""
    t = torch_inputs(batch)
    with Capture() as cap, torch.no_grad():
        for i, layer in enumerate(bert.encoder.layer):
            cap.on(layer.attention, f"a{i}")
        out = bert(input_ids=t["input_ids"], token_type_ids=t["token_type_ids"], attention_mask=t["text_mask"],
                   output_hidden_states=True)
    expected: list[list] = [[None, None] for _ in range(depth + 1)]
    expected[0][0] = out.hidden_states[0].numpy()
    for i in range(len(bert.encoder.layer)):
        a, f = sublayers(i)
        expected[a + 1][0], expected[f + 1][0] = cap.out[f"a{i}"][0], out.hidden_states[i + 1].numpy()
    return expected, out


def test_bert_into_uniter_text_stream_equals_bert_with_regions_masked():
    cfg = get_config("uniter", tiny=True)
    bert = hf_bert(cfg, layers=2)
    params = bert_into_text_stream(bert.state_dict(), cfg, init_params(cfg), copy_visual_tables=True)
    batch = make_batch(cfg, seed=2)
    batch["region_mask"] = np.zeros_like(batch["region_mask"])
    expected, _ = bert_expected(bert, batch, lambda i: (2 * i, 2 * i + 1), cfg.plan.depth)
    assert_states(jax_forward(cfg, params, batch).hidden_states, expected)
    emb = params["bert"]["embeddings"]
    # copy_visual_tables: UNITER's v_LayerNorm starts as BERT's embedding LayerNorm.
    np.testing.assert_array_equal(emb["v_norm"]["scale"], bert.state_dict()["embeddings.LayerNorm.weight"].numpy())


def test_bert_into_lxmert_maps_layers_through_the_plan():
    """Tiny LXMERT maps BERT layers 0-2 to sub-layers 2i / 2i+1 and layer 3 to the first cross block's
    self-attention (7) and feed-forward (8); the first 6 sub-layers are pure text, so they equal BERT."""
    cfg = get_config("lxmert", tiny=True)
    assert dict(cfg.plan.bert_layer2attn_sublayer) == {0: 0, 1: 2, 2: 4, 3: 7}
    bert = hf_bert(cfg, layers=4)
    init = init_params(cfg)
    params = bert_into_text_stream(bert.state_dict(), cfg, init)
    sd = bert.state_dict()
    enc = params["bert"]["encoder"]
    np.testing.assert_array_equal(enc["layer_7"]["query"]["kernel"], linear_to_kernel(
        sd["encoder.layer.3.attention.self.query.weight"].numpy(), out_shape=(4, 8)))
    np.testing.assert_array_equal(enc["layer_8"]["wo"]["bias"], sd["encoder.layer.3.output.dense.bias"].numpy())
    # The vision stream and the cross-attention keep their init values.
    for layer, name in (("layer_7", "v_query"), ("layer_8", "v_wi"), ("layer_6", "query"), ("layer_0", "v_key")):
        np.testing.assert_array_equal(enc[layer][name]["kernel"], init["bert"]["encoder"][layer][name]["kernel"])
    batch = make_batch(cfg, seed=4)
    bert3 = hf_bert(cfg, layers=3)
    bert3.load_state_dict({k: v for k, v in sd.items() if "layer.3." not in k}, strict=False)
    expected, _ = bert_expected(bert3, batch, lambda i: (2 * i, 2 * i + 1), 6)
    states = jax_forward(cfg, params, batch).hidden_states[:7]
    assert_states(states, expected)


def test_bert_pretraining_checkpoint_loads_mlm_head_and_matches_logits():
    """``bert.`` prefix, TF-era gamma/beta names and the MLM head of a ``BertForPreTraining`` checkpoint:
    with the regions masked out, jaxvl's MLM logits equal BERT's prediction logits."""
    cfg = get_config("uniter", tiny=True)
    bert = hf_bert(cfg, layers=2, pretraining=True)
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in bert.state_dict().items()}
    assert any(k.startswith("bert.") for k in sd) and any(k.startswith("cls.seq_relationship") for k in sd)
    params = bert_into_text_stream(sd, cfg, init_params(cfg))
    batch = make_batch(cfg, seed=5)
    batch["region_mask"] = np.zeros_like(batch["region_mask"])
    t = torch_inputs(batch)
    with torch.no_grad():
        want = bert(input_ids=t["input_ids"], token_type_ids=t["token_type_ids"],
                    attention_mask=t["text_mask"]).prediction_logits.numpy()
    got = np.asarray(jax_forward(cfg, params, batch).mlm_logits)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    no_head = bert_into_text_stream(sd, cfg, init_params(cfg), mlm_head=False)
    np.testing.assert_array_equal(no_head["mlm"]["bias"], init_params(cfg)["mlm"]["bias"])


def test_bert_into_visualbert_copies_visual_tables_on_request():
    cfg = get_config("visualbert", tiny=True)
    sd = hf_bert(cfg, layers=2).state_dict()
    init = init_params(cfg)
    copied = bert_into_text_stream(sd, cfg, init, copy_visual_tables=True)["bert"]["embeddings"]
    np.testing.assert_array_equal(copied["position_embeddings_visual"]["embedding"],
                                  sd["embeddings.position_embeddings.weight"].numpy())
    np.testing.assert_array_equal(copied["token_type_embeddings_visual"]["embedding"],
                                  sd["embeddings.token_type_embeddings.weight"].numpy())
    kept = bert_into_text_stream(sd, cfg, init)["bert"]["embeddings"]  # the default: VOLTA's behaviour
    np.testing.assert_array_equal(kept["position_embeddings_visual"]["embedding"],
                                  init["bert"]["embeddings"]["position_embeddings_visual"]["embedding"])


def test_bert_into_vlbert_keeps_extra_token_type_rows():
    cfg = get_config("vl-bert", tiny=True)
    assert cfg.type_vocab_size == 3
    sd = hf_bert(cfg, layers=2).state_dict()
    init = init_params(cfg)
    table = np.asarray(bert_into_text_stream(sd, cfg, init)["bert"]["embeddings"]["token_type_embeddings"]["embedding"])
    np.testing.assert_array_equal(table[:2], sd["embeddings.token_type_embeddings.weight"].numpy())
    np.testing.assert_array_equal(table[2], init["bert"]["embeddings"]["token_type_embeddings"]["embedding"][2])


def test_bert_bad_state_dict_lists_every_problem():
    cfg = get_config("uniter", tiny=True)
    sd = dict(hf_bert(cfg, layers=3, type_vocab_size=4).state_dict())  # one layer too many, 4 types > 2
    del sd["embeddings.LayerNorm.bias"]
    with pytest.raises(StateDictError) as err:
        bert_into_text_stream(sd, cfg, init_params(cfg))
    msg = str(err.value)
    for name in ("missing (1): embeddings.LayerNorm.bias", "encoder.layer.2.attention.self.query.weight",
                 "embeddings.token_type_embeddings.weight: got (4, 32), expected (2, 32)"):
        assert name in msg, msg
    assert "pooler" not in msg
