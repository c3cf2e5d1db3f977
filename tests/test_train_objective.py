"""The assembled pretraining objective: modes 0/1/2, negatives, the [IMG] row, gradients.

The objective does not depend on the encoder's depth: a one-layer UNITER, every program compiled with
``FAST_COMPILE`` (semantics, not speed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvl.data.regions import region_inputs
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import get_model
from jaxvl.models.volta.presets import single_stream_plan
from jaxvl.pretrain.loss import ObjectiveConfig, make_negatives, mask_batch, pretraining_loss
from jaxvl.runtime.compile import FAST_COMPILE

masker = jax.jit(mask_batch, static_argnums=(2, 3, 4), compiler_options=FAST_COMPILE)  # cheaper than eager


@pytest.fixture(scope="module")
def setup():
    world = World(WorldConfig(num_images=4, num_regions=6))
    tok = Tokenizer.from_words(world.vocabulary())
    rows = []
    for image in world:
        ids, mask = tok.encode(image.captions[0], 16)
        r = region_inputs(image.regions, 6, "first")
        n = image.regions.num_boxes
        cls = np.zeros((7, 21), np.float32)
        cls[1:1 + n] = image.regions.cls_prob
        oid = np.full((7,), -1, np.int32)
        oid[1:1 + n] = image.regions.objects_id
        conf = np.zeros((7,), np.float32)
        conf[1:1 + n] = image.regions.objects_conf
        target = r["region_mask"].copy()
        target[0] = 0
        rows.append(dict(input_ids=ids, text_mask=mask, token_type_ids=np.zeros_like(ids), region_target_mask=target,
                         cls_prob=cls, objects_id=oid, objects_conf=conf, **r))
    batch = {k: jnp.asarray(np.stack([row[k] for row in rows])) for k in rows[0]}
    model = get_model("uniter", tiny=True, v_feature_size=24, vocab_size=tok.vocab_size,
                      visual_target_weights={"0": 1.0, "3": 0.5, "1": 0.1}, num_object_classes=20,
                      **single_stream_plan(1).to_dict())
    params = jax.jit(lambda b: model.init(jax.random.key(0), **{k: b[k] for k in (
        "input_ids", "features", "locations")}), compiler_options=FAST_COMPILE)(batch)["params"]
    ocfg = ObjectiveConfig(mask_id=tok.mask_id, cls_id=tok.cls_id, sep_id=tok.sep_id)
    return model, params, batch, ocfg


def test_loss_parts_and_gradients(setup):
    model, params, batch, ocfg = setup
    fn = jax.jit(jax.value_and_grad(lambda p, k: pretraining_loss(model, p, batch, k, ocfg), has_aux=True),
                 compiler_options=FAST_COMPILE)
    (total, parts), grads = fn(params, jax.random.key(1))
    assert set(parts) == {"mlm", "mrc_kl", "mrc_xe", "mrfr", "itm"}
    np.testing.assert_allclose(total, parts["mlm"] + parts["mrc_kl"] + 0.5 * parts["mrc_xe"] + 0.1 * parts["mrfr"]
                               + parts["itm"], rtol=1e-5)
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_mode_1_drops_targets_of_mismatched_pairs(setup):
    model, params, batch, ocfg = setup
    always_swap = ObjectiveConfig(**{**ocfg.__dict__, "itm_prob": 1.0, "region_prob": 1.0, "token_prob": 1.0})
    inputs, targets = masker(jax.random.key(2), batch, always_swap, model.cfg.vocab_size, "first")
    assert targets["is_mismatched"].tolist() == [1, 1, 1, 1]
    assert (targets["token_labels"] == -1).all() and (targets["region_labels"] == -1).all()
    mode0 = ObjectiveConfig(**{**always_swap.__dict__, "objective": 0})
    _, targets0 = masker(jax.random.key(2), batch, mode0, model.cfg.vocab_size, "first")
    assert (targets0["token_labels"] != -1).any()
    mode2 = ObjectiveConfig(**{**always_swap.__dict__, "objective": 2})
    parts = jax.eval_shape(lambda: pretraining_loss(model, params, batch, jax.random.key(3), mode2)[1])
    assert "itm" not in parts and "mlm" in parts


def test_negatives_take_another_examples_text(setup):
    _, _, batch, _ = setup
    out, swapped = make_negatives(jax.random.key(4), batch, 1.0)
    assert swapped.tolist() == [1, 1, 1, 1]
    for i in range(4):
        donors = [j for j in range(4) if np.array_equal(out["input_ids"][i], batch["input_ids"][j])]
        assert donors and i not in donors or np.array_equal(batch["input_ids"][i], out["input_ids"][i]) is False


def test_global_row_is_recomputed_from_masked_regions(setup):
    model, _, batch, ocfg = setup
    everything = ObjectiveConfig(**{**ocfg.__dict__, "objective": 2, "region_prob": 1.0, "region_zero_prob": 1.0,
                                    "overlap_threshold": None})
    inputs, _ = masker(jax.random.key(5), batch, everything, model.cfg.vocab_size, "first")
    assert float(jnp.abs(inputs["features"]).sum()) == 0.0  # every region zeroed, so [IMG] = 0 too
    nothing = ObjectiveConfig(**{**everything.__dict__, "region_prob": 0.0})
    inputs, _ = masker(jax.random.key(5), batch, nothing, model.cfg.vocab_size, "first")
    # no masking: VOLTA's divisor counts all 6 region rows, so [IMG] = sum / 6
    want = batch["features"][:, 1:].sum(1) / 6
    np.testing.assert_allclose(inputs["features"][:, 0], want, rtol=1e-6)
