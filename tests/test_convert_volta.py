"""VOLTA checkpoint conversion: key/shape generator, golden parity against VOLTA itself, round trips, errors.

Golden files ``tests/data/volta_golden_<name>.npz`` come from ``scripts/make_volta_golden.py`` (VOLTA's own
``BertForVLPreTraining`` at jaxvl's tiny sizes, random weights, one padded batch). They are the only
parity source for UNITER, VL-BERT and ViLBERT.
"""

from __future__ import annotations

import json
import os
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.linen import meta

from jaxvl.convert.common import StateDictError
from jaxvl.convert.volta import (
    _tensors,
    from_volta,
    load_volta_checkpoint,
    to_volta,
    volta_state_dict_shapes,
    volta_tied_groups,
)
from jaxvl.models import PRESETS, get_config, get_model, scan_params, to_volta_dict, unscan_params

DATA = os.path.join(os.path.dirname(__file__), "data")
ATOL = 1e-5
TORCH = "needs torch to write a .bin: pip install -e '.[test]'"
FULL_PARAMS = {"visualbert": 114_882_941, "uniter": 114_497_405, "vl-bert": 116_066_941, "lxmert": 211_369_853,
               "vilbert": 242_076_029}


@cache
def golden(name: str) -> dict[str, dict[str, np.ndarray] | np.ndarray]:
    """The golden file of ``name``, split into ``sd``, ``in`` and ``out`` dicts plus the raw top-level arrays."""
    with np.load(os.path.join(DATA, f"volta_golden_{name}.npz")) as z:
        g: dict = {"sd": {}, "in": {}, "out": {}}
        for key in z.files:
            group, _, rest = key.partition("/")
            if rest:
                g[group][rest] = z[key]
            else:
                g[key] = z[key]
    return g


def state(name: str) -> dict[str, np.ndarray]:
    """A fresh copy of the golden VOLTA state dict (safe to mutate)."""
    return {k: v.copy() for k, v in golden(name)["sd"].items()}


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(meta.unbox(tree), sep="/").items()}


@pytest.mark.parametrize("name", PRESETS)
def test_golden_config_is_current_tiny_preset(name):
    stored = json.loads(str(golden(name)["config"]))
    current = json.loads(json.dumps({**to_volta_dict(get_config(name, tiny=True)), "model": "bert"}))
    assert stored == current, "tiny preset changed: rerun scripts/make_volta_golden.py"


@pytest.mark.parametrize("name", PRESETS)
def test_key_names_and_shapes_match_volta(name):
    """Exact names, order and shapes of VOLTA's state dict, tiny (golden file) and full size (stored key list)."""
    sd = golden(name)["sd"]
    assert list(volta_state_dict_shapes(get_config(name, tiny=True)).items()) == [(k, v.shape) for k, v in sd.items()]
    g = golden(name)
    full = list(zip(g["full_keys"].tolist(), map(tuple, json.loads(str(g["full_shapes"]))), strict=True))
    cfg = get_config(name)
    assert list(volta_state_dict_shapes(cfg).items()) == full
    unique = {t.path: int(np.prod(t.shape)) for t in _tensors(cfg)}
    assert sum(unique.values()) == int(g["full_params"]) == FULL_PARAMS[name]


@pytest.mark.parametrize("name", PRESETS)
def test_tied_aliases_are_equal_in_volta_state_dict(name):
    sd = golden(name)["sd"]
    groups = volta_tied_groups(get_config(name, tiny=True))
    assert ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight") in groups
    if name == "uniter":
        assert ("bert.embeddings.token_type_embeddings.weight",
                "bert.embeddings.image_token_type_embeddings.weight") in groups
    for group in groups:
        for k in group[1:]:
            assert np.array_equal(sd[group[0]], sd[k])


@pytest.mark.parametrize("name", PRESETS)
def test_golden_parity_with_volta(name):
    """jaxvl with VOLTA's weights reproduces every VOLTA hidden state, pooled output and head output."""
    g = golden(name)
    model = get_model(name, tiny=True)
    params = from_volta(g["sd"], model.cfg)
    inputs = {k: jnp.asarray(v) for k, v in g["in"].items()}
    out = model.apply({"params": params}, **inputs, deterministic=True, output_hidden_states=True)
    ref = g["out"]
    depth = len(model.cfg.sublayers)
    assert len(out.hidden_states) == depth + 1 == sum(k.startswith("t_") for k in ref)
    got = {}
    for i, (t, v) in enumerate(out.hidden_states):
        got[f"t_{i}"], got[f"v_{i}"] = t, v
    got.update(pooled_t=out.pooled_text, pooled_v=out.pooled_vision, pooled=out.pooled, mlm=out.mlm_logits,
               itm=out.itm_logits, **{f"mrc_{k}": v for k, v in out.visual_logits.items()})
    assert set(got) == set(ref)
    diffs = {k: float(np.max(np.abs(np.asarray(got[k]) - ref[k]))) for k in ref}
    for k in ref:
        assert np.shape(got[k]) == ref[k].shape, k
    bad = {k: d for k, d in diffs.items() if not d <= ATOL}
    assert not bad, f"{name}: max|diff| above {ATOL}: {bad}"


def init_shapes(name: str, **overrides) -> dict[str, tuple[int, ...]]:
    """Flat name -> shape of ``model.init``'s params, without running the model."""
    model = get_model(name, tiny=True, **overrides)
    return flat_shapes(jax.eval_shape(model.init, jax.random.PRNGKey(0), **model.dummy_inputs())["params"])


@pytest.mark.parametrize("name", PRESETS)
def test_round_trip_is_bitwise_exact(name):
    """VOLTA -> jaxvl -> VOLTA keeps names, order, dtypes and bits; jaxvl -> VOLTA -> jaxvl too."""
    sd = golden(name)["sd"]
    cfg = get_config(name, tiny=True)
    params = from_volta(sd, cfg)
    shapes = init_shapes(name)
    assert flat_shapes(params) == shapes, "from_volta's tree differs from model.init's"
    back = to_volta(params, cfg)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape and np.array_equal(back[k], sd[k]), k
    rng = np.random.default_rng(0)
    tree = traverse_util.unflatten_dict({tuple(k.split("/")): rng.standard_normal(s).astype(np.float32)
                                         for k, s in shapes.items()})
    again = traverse_util.flatten_dict(from_volta(to_volta(tree, cfg), cfg))
    flat = traverse_util.flatten_dict(tree)
    assert flat.keys() == again.keys()
    for k in flat:
        assert np.array_equal(flat[k], again[k]), k


def test_scanned_layout_is_the_callers_job():
    """from_volta gives the unscanned layout; scan_params turns it into the scanned model's tree, and
    to_volta asks for unscan_params when handed a scanned tree."""
    sd = golden("lxmert")["sd"]
    cfg = get_config("lxmert", tiny=True, scan_layers=True)
    scanned = scan_params(from_volta(sd, cfg), cfg)
    assert flat_shapes(scanned) == init_shapes("lxmert", scan_layers=True)
    with pytest.raises(KeyError, match="unscan_params"):
        to_volta(scanned, cfg)
    back = to_volta(unscan_params(scanned, cfg), cfg)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)


def test_module_prefix_is_accepted():
    sd = golden("vilbert")["sd"]
    cfg = get_config("vilbert", tiny=True)
    a = traverse_util.flatten_dict(from_volta({f"module.{k}": v for k, v in sd.items()}, cfg))
    b = traverse_util.flatten_dict(from_volta(sd, cfg))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_missing_unexpected_and_misshaped_are_all_listed():
    sd = state("lxmert")
    cfg = get_config("lxmert", tiny=True)
    del sd["bert.encoder.layer.3.output.v_dense.weight"]
    sd["bert.encoder.layer.99.output.dense.weight"] = np.zeros((3, 3), np.float32)
    sd["cls.bi_seq_relationship.weight"] = np.zeros((3, 24), np.float32)
    with pytest.raises(StateDictError) as e:
        from_volta(sd, cfg)
    msg = str(e.value)
    assert "missing (1): bert.encoder.layer.3.output.v_dense.weight" in msg
    assert "unexpected (1): bert.encoder.layer.99.output.dense.weight" in msg
    assert "cls.bi_seq_relationship.weight: got (3, 24), expected (2, 24)" in msg


@pytest.mark.parametrize("name, a, b", [
    ("uniter", "bert.encoder.layer.0.attention_self.query.weight",
     "bert.encoder.layer.0.attention_self.v_query.weight"),
    ("uniter", "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.image_token_type_embeddings.weight"),
    ("lxmert", "bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
    ("lxmert", "bert.encoder.layer.6.attention_output.LayerNorm.bias",
     "bert.encoder.layer.6.attention_output.v_LayerNorm.bias"),
])
def test_differing_tied_aliases_are_refused(name, a, b):
    sd = state(name)
    sd[b] = sd[b] + 1e-7 * np.ones_like(sd[b])
    assert not np.array_equal(sd[a], sd[b])
    with pytest.raises(StateDictError, match=f"{a} != {b}"):
        from_volta(sd, get_config(name, tiny=True))


def test_vision_params_are_separate_where_not_tied():
    """LXMERT's tiny layer 0 has text and vision self-attention with separate weights (no alias check)."""
    sd = state("lxmert")
    sd["bert.encoder.layer.0.attention_self.v_query.weight"] += 1.0
    params = from_volta(sd, get_config("lxmert", tiny=True))
    layer = params["bert"]["encoder"]["layer_0"]
    assert not np.array_equal(layer["query"]["kernel"], layer["v_query"]["kernel"])


def test_load_volta_checkpoint_from_torch_bin(tmp_path):
    """A DataParallel-style ``.bin`` with real shared tensors (as VOLTA saves them) loads weights-only."""
    torch = pytest.importorskip("torch", reason=TORCH)
    sd = golden("uniter")["sd"]
    cfg = get_config("uniter", tiny=True)
    tensors: dict[str, torch.Tensor] = {}
    for group in volta_tied_groups(cfg):
        shared = torch.from_numpy(sd[group[0]].copy())
        tensors.update({k: shared for k in group})
    ckpt = {f"module.{k}": tensors.get(k, torch.from_numpy(v.copy())) for k, v in sd.items()}
    path = tmp_path / "pytorch_model_9.bin"
    torch.save(ckpt, path)
    loaded = traverse_util.flatten_dict(load_volta_checkpoint(path, cfg))
    expected = traverse_util.flatten_dict(from_volta(sd, cfg))
    assert loaded.keys() == expected.keys()
    assert all(np.array_equal(loaded[k], expected[k]) for k in loaded)


class NotATensor:
    """A plain class instance: pickled by reference to this class, which ``weights_only`` loading refuses."""

    def __init__(self):
        self.payload = [1, 2, 3]


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH)
    sd = {k: torch.from_numpy(v.copy()) for k, v in golden("visualbert")["sd"].items()}
    sd["evil"] = NotATensor()
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)
    with pytest.raises(StateDictError, match="weights-only"):
        load_volta_checkpoint(path, get_config("visualbert", tiny=True))


def test_configs_volta_cannot_run_are_refused():
    with pytest.raises(ValueError, match="object_mask_word_embedding"):
        volta_state_dict_shapes(get_config("vl-bert", tiny=True, visual_target_weights={"0": 1.0, "6": 1.0}))
    with pytest.raises(ValueError, match="v_coordinate_embeddings_dim"):
        volta_state_dict_shapes(get_config("vl-bert", tiny=True, v_coordinate_embeddings_dim=4))
    with pytest.raises(ValueError, match="one-directional cross-attention"):
        volta_state_dict_shapes(get_config("vilbert", tiny=True, vt_attn_sublayers=[]))
