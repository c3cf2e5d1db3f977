"""``VLConfig.pad_to_multiple_of``: a padded vocabulary and padded class heads shard, and change nothing else.

A padded model is the unpadded one plus zero rows / columns: the same init from the same seed, the same
outputs, losses and gradients (padding's gradient exactly zero), the same VOLTA state dict after a round
trip, the same parameter count, and on a ``tensor`` = 4 mesh its word table is sharded where the unpadded
one (vocabulary not divisible by 4) is replicated, with one train step's loss equal to the unpadded
single-device run's.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from jax.sharding import PartitionSpec
from test_train_step import synthetic_batch

from jaxvl.convert.common import pad_to_shape
from jaxvl.convert.hf import bert_into_text_stream
from jaxvl.convert.volta import from_volta, to_volta
from jaxvl.models import PRESETS, count_params, get_config, get_model
from jaxvl.models.volta.presets import single_stream_plan
from jaxvl.pretrain.loss import ObjectiveConfig, pretraining_loss
from jaxvl.pretrain.step import init_state, jit_train_step, state_shardings
from jaxvl.runtime.compile import FAST_COMPILE, compile_step
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import batch_sharding, make_mesh, to_global

DATA = os.path.join(os.path.dirname(__file__), "data")
PAD = 8
INPUTS = ("input_ids", "features", "locations", "token_type_ids", "text_mask", "region_mask")
WORDS = ("bert", "embeddings", "word_embeddings", "embedding")


@functools.cache
def setup() -> tuple[Any, Any, Any, dict[str, np.ndarray]]:
    """The unpadded and the padded one-layer UNITER (vocabulary 4k + 2, classes 21 / 20: none divides by 4 or
    PAD except the 20), their objective config and a synthetic batch."""
    host, tok = synthetic_batch()
    vocab = 4 * (tok.vocab_size // 4) + 6  # > the tokenizer's ids, and 2 mod 4
    sizes = dict(vocab_size=vocab, v_feature_size=24, num_object_classes=20,
                 visual_target_weights={"0": 1.0, "3": 0.5, "1": 0.1}, **single_stream_plan(1).to_dict())
    plain = get_model("uniter", tiny=True, **sizes)
    padded = get_model("uniter", tiny=True, pad_to_multiple_of=PAD, **sizes)
    ocfg = ObjectiveConfig(mask_id=tok.mask_id, cls_id=tok.cls_id, sep_id=tok.sep_id)
    return plain, padded, ocfg, host


@functools.cache
def golden(name: str) -> dict[str, dict[str, np.ndarray]]:
    """VOLTA's tiny ``name`` (``tests/data/volta_golden_<name>.npz``, see ``test_convert_volta``): its state
    dict ``sd``, inputs ``in`` and outputs ``out``."""
    g: dict[str, dict[str, np.ndarray]] = {"sd": {}, "in": {}, "out": {}}
    with np.load(os.path.join(DATA, f"volta_golden_{name}.npz")) as z:
        for key in z.files:
            group, _, rest = key.partition("/")
            if group in g and rest:
                g[group][rest] = z[key]
    return g


def flat(tree: Any) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(nn.meta.unbox(tree))


def init(model: Any) -> dict:
    return nn.meta.unbox(model.init(jax.random.key(0), **model.dummy_inputs())["params"])


@functools.cache
def initial(padded: bool) -> dict:
    """``init`` of ``setup``'s padded or unpadded model (host arrays)."""
    return jax.device_get(init(setup()[1 if padded else 0]))


def padded_paths(cfg) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The padded parameters of ``cfg``'s model and their padded shapes (feature targets are not padded)."""
    h, vh = cfg.hidden_size, cfg.v_hidden_size
    out = {WORDS: (cfg.padded_vocab_size, h), ("mlm", "bias"): (cfg.padded_vocab_size,)}
    for key, size in cfg.padded_visual_targets.items():
        if size != cfg.visual_targets[key]:
            out[("image_predictions", f"decoder_{key}", "kernel")] = (vh, size)
            out[("image_predictions", f"decoder_{key}", "bias")] = (size,)
    return out


def assert_zero_padded(got: dict, want: dict, exact: bool = True) -> None:
    """``got`` (a padded tree, flat) is ``want`` (the unpadded one) with zeros appended where shapes differ
    (bitwise, or up to float32 summation order); the zeros are exact either way."""
    assert got.keys() == want.keys()
    for k in want:
        g = np.asarray(got[k])
        real = g[tuple(slice(0, n) for n in want[k].shape)]
        if exact:
            np.testing.assert_array_equal(real, want[k], err_msg="/".join(k))
        else:
            # Sums in another order: errors relative to the tensor's scale, and ~1e-11 noise where the
            # gradient is zero in exact arithmetic (attention key biases).
            atol = 1e-6 * float(np.max(np.abs(want[k]), initial=0.0)) + 1e-9
            np.testing.assert_allclose(real, want[k], rtol=1e-5, atol=atol, err_msg="/".join(k))
        assert np.array_equal(g, pad_to_shape(real, g.shape)), f"{'/'.join(k)}: padding is not zero"


def test_config_sizes():
    cfg = get_config("uniter", pad_to_multiple_of=128)
    assert (cfg.vocab_size, cfg.padded_vocab_size) == (30522, 30592)
    assert cfg.visual_targets == {"0": 1601} and cfg.padded_visual_targets == {"0": 1664}
    feats = get_config("uniter", pad_to_multiple_of=128, visual_target_weights={"1": 1.0, "4": 1.0})
    assert feats.padded_visual_targets == {"1": 2048, "4": 512}  # feature targets are never padded
    assert get_config("uniter").padded_vocab_size == 30522
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        get_config("uniter", pad_to_multiple_of=0)


def test_padded_init_is_the_unpadded_init_plus_zeros():
    plain, padded, _, _ = setup()
    got, want = flat(initial(True)), flat(initial(False))
    for path, shape in padded_paths(padded.cfg).items():
        assert got[path].shape == shape and want[path].shape != shape, path
    assert_zero_padded(got, want)


def test_outputs_losses_and_gradients_are_the_unpadded_models():
    plain, padded, ocfg, host = setup()
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    params = initial(False)

    def run(model, params):
        def fn(params, batch):
            (loss, parts), grads = jax.value_and_grad(
                lambda p: pretraining_loss(model, p, batch, jax.random.key(1), ocfg), has_aux=True)(params)
            out = model.apply({"params": params}, **{k: batch[k] for k in INPUTS}, output_hidden_states=True)
            return loss, parts, grads, out

        return jax.jit(fn, compiler_options=FAST_COMPILE)(params, batch)

    loss, parts, grads, out = run(plain, params)
    loss_p, parts_p, grads_p, out_p = run(padded, jax.tree.map(lambda p, x: pad_to_shape(x, p.shape), initial(True),
                                                                params))
    assert out_p.mlm_logits.shape == out.mlm_logits.shape == (*host["input_ids"].shape, plain.cfg.vocab_size)
    for a, b in zip(jax.tree.leaves(out_p), jax.tree.leaves(out), strict=True):  # logits, pooled, hidden states
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-6)
    assert parts_p.keys() == parts.keys() == {"mlm", "mrc_kl", "mrc_xe", "mrfr", "itm"}
    for k in parts:
        np.testing.assert_allclose(parts_p[k], parts[k], rtol=1e-6, err_msg=k)
    # Real rows: the same gradient; padding rows and columns: exactly zero.
    assert_zero_padded(flat(grads_p), flat(grads), exact=False)


@pytest.mark.parametrize("name", PRESETS)
def test_volta_round_trip_with_padding(name):
    """Import pads with zeros to the padded model's shapes, export gives VOLTA's tensors back bit for bit."""
    sd = golden(name)["sd"]
    plain, padded = get_config(name, tiny=True), get_config(name, tiny=True, pad_to_multiple_of=PAD)
    assert padded.padded_vocab_size != plain.vocab_size and padded.padded_visual_targets != plain.visual_targets
    params = from_volta(sd, padded)
    model = get_model(name, tiny=True, pad_to_multiple_of=PAD)
    shapes = jax.eval_shape(model.init, jax.random.key(0), **model.dummy_inputs())["params"]
    assert {k: v.shape for k, v in flat(params).items()} == {k: v.shape for k, v in flat(shapes).items()}
    assert_zero_padded(flat(params), flat(from_volta(sd, plain)))
    for tree in (params, from_volta(sd, plain)):  # padded or not, the export is VOLTA's state dict
        back = to_volta(tree, padded)
        assert list(back) == list(sd)
        for k in sd:
            assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k


def test_padded_model_matches_volta():
    """VOLTA parity holds with padding: the padded UNITER on VOLTA's weights reproduces VOLTA's outputs."""
    g = golden("uniter")
    model = get_model("uniter", tiny=True, pad_to_multiple_of=PAD)
    inputs = {k: jnp.asarray(v) for k, v in g["in"].items()}
    out = jax.jit(lambda p, x: model.apply({"params": p}, **x), compiler_options=FAST_COMPILE)(
        from_volta(g["sd"], model.cfg), inputs)
    np.testing.assert_allclose(out.mlm_logits, g["out"]["mlm"], atol=1e-5)
    for key, logits in out.visual_logits.items():
        np.testing.assert_allclose(logits, g["out"][f"mrc_{key}"], atol=1e-5)


def bert_state_dict(cfg, layers: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random HF ``BertForPreTraining`` state dict (the names ``bert_into_text_stream`` reads) for ``cfg``'s text."""
    rng = np.random.default_rng(seed)
    h, f = cfg.hidden_size, cfg.intermediate_size
    shapes = {"embeddings.word_embeddings.weight": (cfg.vocab_size, h),
              "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
              "embeddings.token_type_embeddings.weight": (2, h), "cls.predictions.bias": (cfg.vocab_size,)}

    def linear(name: str, n_out: int, n_in: int) -> None:
        shapes.update({f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)})

    for norm in ("embeddings.LayerNorm", "cls.predictions.transform.LayerNorm"):
        shapes.update({f"{norm}.weight": (h,), f"{norm}.bias": (h,)})
    linear("cls.predictions.transform.dense", h, h)
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for m in ("query", "key", "value"):
            linear(f"{p}.attention.self.{m}", h, h)
        linear(f"{p}.attention.output.dense", h, h)
        linear(f"{p}.intermediate.dense", f, h)
        linear(f"{p}.output.dense", h, f)
        for norm in (f"{p}.attention.output.LayerNorm", f"{p}.output.LayerNorm"):
            shapes.update({f"{norm}.weight": (h,), f"{norm}.bias": (h,)})
    return {f"bert.{k}" if not k.startswith("cls.") else k: rng.standard_normal(s).astype(np.float32)
            for k, s in shapes.items()}


def test_bert_into_text_stream_pads_the_word_table():
    plain, padded = get_model("uniter", tiny=True), get_model("uniter", tiny=True, pad_to_multiple_of=PAD)
    sd = bert_state_dict(plain.cfg, layers=2)
    want = bert_into_text_stream(sd, plain.cfg, init(plain))
    got = bert_into_text_stream(sd, padded.cfg, init(padded))
    assert flat(got)[WORDS].shape == (padded.cfg.padded_vocab_size, plain.cfg.hidden_size)
    assert_zero_padded(flat(got), flat(want))
    np.testing.assert_array_equal(flat(got)[WORDS][:plain.cfg.vocab_size], sd["bert.embeddings.word_embeddings.weight"])


def test_count_params_leaves_out_the_padding():
    plain, padded, _, _ = setup()
    n = count_params(initial(False))
    assert count_params(initial(True), padded.cfg) == n == count_params(initial(False), plain.cfg)
    assert count_params(initial(True)) > n  # without the config, every stored scalar
    full = get_model("uniter", pad_to_multiple_of=128)
    shapes = jax.eval_shape(full.init, jax.random.key(0), **full.dummy_inputs())["params"]
    assert flat(shapes)[WORDS].shape == (30592, 768)
    assert count_params(shapes, full.cfg) == 114_497_405  # VOLTA's UNITER (tests/test_convert_volta.py)


def spec(tree: Any, path: tuple[str, ...]) -> PartitionSpec:
    return traverse_util.flatten_dict(tree)[path].spec


def tensor_case():
    """The models, objective and host batch (``setup``), an optimizer for one step, and the (data 2, tensor 4) mesh
    with the batch on it."""
    plain, padded, ocfg, host = setup()
    tx = make_optimizer(OptimizerConfig(total_steps=1, warmup_fraction=0.0, learning_rate=1e-3))
    mesh = make_mesh(data=2, tensor=4)
    return plain, padded, ocfg, host, tx, mesh, to_global(host, mesh)


def test_padded_word_table_shards_over_tensor():
    plain, padded, _, _, tx, mesh, batch = tensor_case()
    assert plain.cfg.vocab_size % 4 and plain.cfg.visual_targets["0"] % 4
    unsharded = state_shardings(plain, tx, batch, mesh).params
    assert spec(unsharded, WORDS) == PartitionSpec(None, None)  # does not divide: replicated
    assert spec(unsharded, ("image_predictions", "decoder_0", "kernel")) == PartitionSpec(None, None)
    shardings = state_shardings(padded, tx, batch, mesh)
    assert spec(shardings.params, WORDS) == PartitionSpec("tensor", None)
    assert spec(shardings.params, ("mlm", "bias")) == PartitionSpec("tensor")
    assert spec(shardings.params, ("image_predictions", "decoder_0", "kernel")) == PartitionSpec(None, "tensor")


# One train step compiled twice (~20-30 s): -m slow. Not slow: the sharding above, the padded model's losses and
# gradients equal to the unpadded model's (test_outputs_losses_and_gradients_are_the_unpadded_models), and a tensor
# = 4 step equal to one device's (tests/test_train_step.py::test_loss_curve_is_the_same_on_every_mesh[uniter-tensor]).
@pytest.mark.slow
def test_padded_word_table_sharded_over_tensor_trains_the_same():
    plain, padded, ocfg, host, tx, mesh, batch = tensor_case()
    assert spec(state_shardings(padded, tx, batch, mesh).params, WORDS) == PartitionSpec("tensor", None)

    def one_step(model, mesh, batch):
        state = init_state(model, tx, jax.random.key(0), batch, mesh, compiler_options=FAST_COMPILE)
        step = jit_train_step(model, ocfg, tx, mesh, state_shardings(model, tx, batch, mesh), batch_sharding(mesh),
                              compiler_options=FAST_COMPILE)
        state, metrics = compile_step(step, state, batch, mesh)(state, batch)
        return flat(jax.device_get(state.params)), {k: float(v) for k, v in metrics.items()}

    single = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    want_params, want = one_step(plain, single, to_global(host, single))
    got_params, got = one_step(padded, mesh, batch)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)
    # The same update of the real rows; the padding stays zero (no gradient, and weight decay of zero is zero).
    for path in padded_paths(padded.cfg):
        real = got_params[path][tuple(slice(0, n) for n in want_params[path].shape)]
        np.testing.assert_allclose(real, want_params[path], rtol=1e-4, atol=1e-6, err_msg="/".join(path))
        assert np.array_equal(got_params[path], pad_to_shape(real, got_params[path].shape)), path


@pytest.mark.slow
def test_pretrain_command_with_padding_gives_the_unpadded_losses(tmp_path):
    """``--config.model.pad_to_multiple_of=128`` through ``jaxvl pretrain``: the same per-step losses as
    without padding; the run's ``run.json`` records the setting and the ablation reads it back."""
    import json

    from jaxvl.ablation import model_config_from_run
    from jaxvl.cli import main

    def losses(workdir, *extra):
        code = main(["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(workdir),
                     "--config.data.dataset='synthetic:num_images=32,val_images=8'", "--config.steps=3",
                     "--config.data.batch_size=8", "--config.fast_compile=True", "--config.progress=False",
                     f"--config.data.prepare_dir={str(tmp_path / 'data')!r}", *extra])
        assert code == 0
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r["split"] == "train"]

    plain = losses(tmp_path / "plain")
    padded = losses(tmp_path / "padded", "--config.model.pad_to_multiple_of=128")
    np.testing.assert_allclose(padded, plain, rtol=1e-5)
    cfg, _ = model_config_from_run(str(tmp_path / "padded" / "run.json"))
    assert cfg.pad_to_multiple_of == 128 and cfg.padded_vocab_size % 128 == 0
