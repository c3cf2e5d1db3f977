"""VOLTA's AdamW: the decay mask, the warmup/linear-decay schedule, clipping, and one update by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxvl.models import get_model
from jaxvl.models.volta.presets import single_stream_plan
from jaxvl.runtime.optimizer import OptimizerConfig, decay_mask, learning_rate_schedule, make_optimizer
from jaxvl.runtime.state import current_learning_rate


def abstract_params(name, **overrides):
    model = get_model(name, tiny=True, **overrides)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))["params"]


def flat_mask(params):
    return {jax.tree_util.keystr(k, simple=True, separator="/"): v
            for k, v in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]}


def test_decay_mask_of_a_tiny_uniter():
    params = nn.meta.unbox(abstract_params("uniter", **single_stream_plan(1).to_dict()))
    decayed = {
        "bert/embeddings/image_embeddings/kernel", "bert/embeddings/image_location_embeddings/kernel",
        "bert/embeddings/position_embeddings/embedding", "bert/embeddings/token_type_embeddings/embedding",
        "bert/embeddings/word_embeddings/embedding",
        "bert/encoder/layer_0/key/kernel", "bert/encoder/layer_0/out/kernel", "bert/encoder/layer_0/query/kernel",
        "bert/encoder/layer_0/value/kernel", "bert/encoder/layer_1/wi/kernel", "bert/encoder/layer_1/wo/kernel",
        "bert/t_pooler/dense/kernel", "bert/v_pooler/dense/kernel",
        "image_predictions/decoder_0/kernel", "image_predictions/transform/kernel",
        "itm/kernel", "mlm/transform/kernel",
    }
    not_decayed = {
        "bert/embeddings/image_embeddings/bias", "bert/embeddings/image_location_embeddings/bias",
        "bert/embeddings/image_location_norm/bias", "bert/embeddings/image_location_norm/scale",
        "bert/embeddings/image_norm/bias", "bert/embeddings/image_norm/scale",
        "bert/embeddings/norm/bias", "bert/embeddings/norm/scale",
        "bert/embeddings/v_norm/bias", "bert/embeddings/v_norm/scale",
        "bert/encoder/layer_0/key/bias", "bert/encoder/layer_0/norm/bias", "bert/encoder/layer_0/norm/scale",
        "bert/encoder/layer_0/out/bias", "bert/encoder/layer_0/query/bias", "bert/encoder/layer_0/value/bias",
        "bert/encoder/layer_1/norm/bias", "bert/encoder/layer_1/norm/scale",
        "bert/encoder/layer_1/wi/bias", "bert/encoder/layer_1/wo/bias",
        "bert/t_pooler/dense/bias", "bert/v_pooler/dense/bias",
        "image_predictions/decoder_0/bias", "image_predictions/norm/bias", "image_predictions/norm/scale",
        "image_predictions/transform/bias", "itm/bias",
        "mlm/bias", "mlm/norm/bias", "mlm/norm/scale", "mlm/transform/bias",
    }
    mask = flat_mask(params)
    assert mask == {**dict.fromkeys(decayed, True), **dict.fromkeys(not_decayed, False)}


@pytest.mark.parametrize("name, off, on", [
    ("lxmert", ["bert/v_embeddings/img_norm/scale", "bert/v_embeddings/loc_norm/bias",
                "bert/encoder/layer_0/v_norm/scale"], ["bert/v_embeddings/image_location_embeddings/kernel"]),
    ("vl-bert", ["bert/embeddings/visual_ln_text/scale", "bert/embeddings/visual_ln_object/bias"],
     ["bert/embeddings/end_embedding", "bert/embeddings/object_linguistic_embeddings"]),
])
def test_decay_mask_special_names(name, off, on):
    boxed = flat_mask(abstract_params(name))  # boxed trees work too: paths end in the box's `value`
    mask = {k.removesuffix("/value"): v for k, v in boxed.items()}
    assert all(not mask[k] for k in off) and all(mask[k] for k in on)
    assert not any(v for k, v in mask.items() if k.endswith("/bias"))


def test_schedule_warmup_then_linear_decay():
    cfg = OptimizerConfig(total_steps=1000, learning_rate=1e-4)  # VOLTA: warmup 10%
    lr = learning_rate_schedule(cfg)
    assert cfg.warmup_steps == 100
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose(float(lr(50)), 5e-5, rtol=1e-6)
    np.testing.assert_allclose(float(lr(100)), 1e-4, rtol=1e-6)  # warmup end: the peak
    np.testing.assert_allclose(float(lr(550)), 5e-5, rtol=1e-6)
    assert float(lr(1000)) == 0.0 and float(lr(1200)) == 0.0
    no_warmup = learning_rate_schedule(OptimizerConfig(total_steps=4, warmup_fraction=0.0, learning_rate=1.0))
    np.testing.assert_allclose([float(no_warmup(i)) for i in range(5)], [1.0, 0.75, 0.5, 0.25, 0.0])


def test_clipping_scales_the_gradient_before_adam():
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # global norm 50
    for clip, want in [(5.0, grads["w"] / 10), (None, grads["w"]), (100.0, grads["w"])]:
        tx = make_optimizer(OptimizerConfig(total_steps=10, clip_norm=clip))
        _, state = tx.update(grads, tx.init(params), params)
        adam = [s for s in state if isinstance(s, optax.ScaleByAdamState)][0]
        np.testing.assert_allclose(adam.mu["w"], 0.1 * want, rtol=1e-6)  # mu = (1 - b1) * clipped grad
        np.testing.assert_allclose(adam.nu["w"], 0.001 * want**2, rtol=1e-6)


def test_two_updates_equal_hand_computed_adamw():
    """A 2-parameter toy: ``kernel`` is decayed, ``bias`` is not; 10 steps with 20% warmup, so update 0
    uses lr 0 and update 1 uses lr/2; the second gradient (norm 10) is clipped to norm 5."""
    cfg = OptimizerConfig(total_steps=10, warmup_fraction=0.2, learning_rate=0.1, weight_decay=0.5, clip_norm=5.0)
    tx = make_optimizer(cfg)
    params = {"dense": {"kernel": jnp.array(1.5), "bias": jnp.array(-0.5)}}
    grads = [{"dense": {"kernel": jnp.array(0.3), "bias": jnp.array(-0.4)}},
             {"dense": {"kernel": jnp.array(6.0), "bias": jnp.array(8.0)}}]
    state = tx.init(params)
    p, m, v = np.array([1.5, -0.5]), np.zeros(2), np.zeros(2)
    decay = np.array([1.0, 0.0])
    for t, g in enumerate(grads, start=1):
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        g = np.array([g["dense"]["kernel"], g["dense"]["bias"]], np.float64)
        g = g * min(1.0, 5.0 / np.linalg.norm(g))
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        lr = 0.1 * (t - 1) / 2  # warmup: update k uses lr * k / warmup_steps
        p = p - lr * ((m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-6) + 0.5 * decay * p)
        np.testing.assert_allclose([params["dense"]["kernel"], params["dense"]["bias"]], p, rtol=1e-6)
        np.testing.assert_allclose(current_learning_rate(state), lr, rtol=1e-6)
    assert float(params["dense"]["kernel"]) != 1.5  # the second update moved it


def test_config_validation():
    with pytest.raises(ValueError):
        OptimizerConfig(total_steps=0)
    with pytest.raises(ValueError):
        OptimizerConfig(warmup_fraction=1.5)
    with pytest.raises(ValueError):
        current_learning_rate(optax.adam(1e-3).init({"w": jnp.zeros(2)}))
