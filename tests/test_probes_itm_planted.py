"""EMAP and MM-SHAP against planted truth: tiny UNITERs trained for image-text matching on labelled foils, with and
without a unimodal tell (issue 14, item 5).

One synthetic world (one object per image, named by every caption; 12 classes, no two sharing a visual prototype;
2 region rows per image, so the object fills most of the image: with the demo's 6 rows, 4-5 of them clutter, the
clean model's ITM output collapsed to a constant and stayed there for 10,000 steps at learning rates 1e-3 to 5e-3)
gives two labelled ITM sets (``jaxvl.data.synthetic.foils``), half of the items foils:

- ``clean``: a foil is another image's caption naming another class. A caption alone, or an image alone, says
  nothing about the label: it needs both modalities;
- ``tell``: the same items, every foil caption ending in the word ``maybe``: the label is readable from the text
  alone.

One model per set is trained with the ITM cross-entropy only (the pretraining's in-batch negatives cannot carry a
tell), both in one compiled program (``lax.scan`` over steps, ``vmap`` over the two models). On held-out
labelled items of other images (the same items for both, but for the tell):

- both full models are right on most items;
- EMAP (the ITM logits' additive projection over all N x N pairings of the items' texts and images) falls to
  chance on ``clean`` and keeps the full model's accuracy on ``tell``;
- MM-SHAP's mean T-SHAP (the text's share of the match score's Shapley values) is higher on ``tell``.

The item sets themselves (``jaxvl.data.synthetic.foils``) are checked first, without a model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.synthetic.foils import item_batch, labelled_items, tell_vocabulary
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import get_model
from jaxvl.models.volta.model import VLBertForPreTraining
from jaxvl.probes.emap import EmapResult
from jaxvl.probes.mmshap import MMShapProgram, MMShapResult
from jaxvl.probes.pairs import PairItems, PairProgram
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import make_mesh

TRAIN, VAL, T, R, K = 256, 128, 8, 2, 12  # images, held-out images, tokens, region rows, classes
STEPS, CHUNK, BATCH, ROUNDS, LEARNING_RATE = 1000, 50, 32, 8, 2e-3
PERMUTATIONS = 3  # MM-SHAP antithetic permutation pairs per item
TELL = "maybe"
SETS = {"clean": None, "tell": TELL}


@functools.cache
def world() -> World:
    return World(WorldConfig(num_images=TRAIN + VAL, num_classes=K, min_objects=1, max_objects=1, num_regions=R,
                             detector_rank_probs=(1.0, 0.0, 0.0, 0.0, 0.0), detector_temperature=0.5, seed=0))


@functools.cache
def tokenizer() -> Tokenizer:
    return Tokenizer.from_words(tell_vocabulary(world(), TELL))


def items(tell: str | None, images: range, rounds: int, seed: int) -> dict[str, np.ndarray]:
    """Model inputs and labels [rounds x len(images), ...] of ``rounds`` labelled sets of ``images``."""
    drawn = [it for s in range(rounds) for it in labelled_items(world(), images, tell=tell, seed=seed + s)]
    return item_batch(world(), drawn, tokenizer(), T)


@functools.cache
def held_out(name: str) -> dict[str, np.ndarray]:
    return items(SETS[name], range(TRAIN, TRAIN + VAL), 1, 1000)


def itm_logits(model: VLBertForPreTraining, params, b: dict[str, jax.Array]) -> jax.Array:
    first = jnp.zeros((b["input_ids"].shape[0], 1), jnp.int32)  # the MLM / region heads at one row only
    return model.apply({"params": params}, b["input_ids"], b["features"], b["locations"], b["token_type_ids"],
                       b["text_mask"], b["region_mask"], text_positions=first, region_positions=first).itm_logits


@functools.cache
def trained() -> tuple[VLBertForPreTraining, dict]:
    """One tiny UNITER per set, ITM cross-entropy only; parameters stacked [2, ...] in ``SETS`` order."""
    data = [items(tell, range(TRAIN), ROUNDS, 0) for tell in SETS.values()]
    model = get_model("uniter", tiny=True, vocab_size=tokenizer().vocab_size, num_object_classes=K,
                      max_position_embeddings=16)
    tx = make_optimizer(OptimizerConfig(total_steps=STEPS, learning_rate=LEARNING_RATE, warmup_fraction=0.05))
    shapes = {k: jnp.asarray(data[0][k][:1]) for k in ("input_ids", "features", "locations")}

    def init(key):
        params = nn.meta.unbox(model.init(key, **shapes)["params"])
        return params, tx.init(params)

    def step(carry, batch):
        params, opt = carry
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            itm_logits(model, p, batch), batch["labels"]).mean()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), value

    @jax.jit
    def chunk(carry, batches):  # CHUNK steps of both models
        return jax.lax.scan(lambda c, b: jax.vmap(step)(c, b), carry, batches)

    carry = jax.jit(jax.vmap(init), compiler_options=FAST_COMPILE)(jax.random.split(jax.random.key(0), len(SETS)))
    rng = np.random.default_rng(0)
    for _ in range(STEPS // CHUNK):
        idx = rng.integers(0, len(data[0]["labels"]), (len(data), CHUNK, BATCH))
        carry, losses = chunk(carry, {k: np.stack([d[k][i] for d, i in zip(data, idx, strict=True)], 1)
                                      for k in data[0]})
    assert np.isfinite(np.asarray(losses)).all()
    return model, carry[0]


def params_of(name: str) -> dict:
    k = list(SETS).index(name)
    return jax.tree.map(lambda x: x[k], trained()[1])


@functools.cache
def emap() -> dict[str, EmapResult]:
    """EMAP of each model on its held-out labelled items."""
    model, _ = trained()
    program = PairProgram(model, make_mesh(), text_block=32, image_block=32, compiler_options=FAST_COMPILE)
    return {name: EmapResult.from_sums(program(params_of(name), PairItems.from_batch(held_out(name))), name,
                                       labels=held_out(name)["labels"]) for name in SETS}


@functools.cache
def mmshap() -> dict[str, MMShapResult]:
    """MM-SHAP of each model on its held-out labelled items (regions removed by the held-out mean feature)."""
    model, _ = trained()
    out = {}
    for name in SETS:
        b = held_out(name)
        real = b["region_mask"][:, 1:] > 0  # the [IMG] row (first) is no region
        mean_feature = b["features"][:, 1:][real].mean(0)
        program = MMShapProgram(model, tokenizer().mask_id, mean_feature=mean_feature, compiler_options=FAST_COMPILE)
        out[name] = program(params_of(name), PairItems.from_batch(b), PERMUTATIONS)
    return out


# ------------------------------------------------------------------------------------------- the item sets


def test_foils_name_another_class_and_the_tell_changes_nothing_else():
    w = world()
    images = range(TRAIN, TRAIN + 40)
    clean, tell = labelled_items(w, images, seed=3), labelled_items(w, images, tell=TELL, seed=3)
    assert labelled_items(w, images, seed=3) == clean and labelled_items(w, images, seed=4) != clean
    assert [it.image for it in clean] == list(images) and sum(it.label for it in clean) == 20
    for c, t in zip(clean, tell, strict=True):
        image = w[c.image]
        assert (c.image, c.label, c.source) == (t.image, t.label, t.source)
        assert t.caption == (f"{c.caption} {TELL}" if c.label else c.caption)
        named = {k for k, name in enumerate(w.class_names) if name in c.caption.split()}
        if c.label == 0:
            assert c.source == c.image and c.caption in image.captions
        else:
            assert c.source != c.image and c.source in images and c.caption in w[c.source].captions
            assert not named & {o.label for o in image.objects}
    assert all(it.label for it in labelled_items(w, images, foil_share=1.0, seed=3))


def test_the_held_out_sets_plant_what_they_say():
    clean, tell = held_out("clean"), held_out("tell")
    np.testing.assert_array_equal(clean["labels"], tell["labels"])
    assert clean["labels"].mean() == 0.5
    tell_id = tokenizer().token_to_id(TELL)
    np.testing.assert_array_equal((tell["input_ids"] == tell_id).any(1), tell["labels"] == 1)  # text gives the label
    assert not (clean["input_ids"] == tell_id).any()
    for key in ("features", "locations", "region_mask"):  # the same images
        np.testing.assert_array_equal(clean[key], tell[key])
    assert clean["region_mask"].shape == (VAL, R + 1) and PairItems.from_batch(clean).n == VAL


def test_bad_foil_knobs():
    w = world()
    with pytest.raises(ValueError, match="tell='there'"):
        labelled_items(w, range(8), tell="there")  # a word of the captions
    with pytest.raises(ValueError, match="tell='two words'"):
        tell_vocabulary(w, "two words")
    with pytest.raises(ValueError, match="foil_share=1.5"):
        labelled_items(w, range(8), foil_share=1.5)
    with pytest.raises(ValueError, match="images"):
        labelled_items(w, [3, 3])
    with pytest.raises(ValueError, match="vision_to_language=0.5"):
        labelled_items(World(WorldConfig(num_images=8, num_classes=K, vision_to_language=0.5)), range(8))
    some = labelled_items(w, range(8), tell=TELL, foil_share=1.0)
    with pytest.raises(ValueError, match="max_seq_length=6"):
        item_batch(w, some, tokenizer(), 6)
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        item_batch(w, some, Tokenizer.from_words(w.vocabulary()), T)


# ------------------------------------------------------------------------------------------- the trained models


@pytest.mark.slow
def test_both_full_models_learn():
    for name, result in emap().items():
        full = result.full
        assert full.accuracy_low > 0.75 and full.balanced_low > 0.75, (name, full)
        assert full.auroc > 0.9, (name, full)


@pytest.mark.slow
def test_emap_falls_to_chance_without_a_tell_and_keeps_the_accuracy_with_one():
    clean, tell = emap()["clean"], emap()["tell"]
    assert clean.design == tell.design == "labelled" and "Design: labelled items" in clean.table()
    # clean: the label needs both modalities; the additive projection has none of it
    assert clean.emap.accuracy_low <= 0.5 <= clean.emap.accuracy_high, clean.emap
    assert clean.emap.balanced_low <= 0.5 <= clean.emap.balanced_high, clean.emap
    assert clean.emap.auroc < 0.65, clean.emap  # the ceiling: see the foils' weak class-frequency cue
    assert clean.emap.accuracy_high < clean.full.accuracy_low, (clean.emap, clean.full)
    # tell: the text alone gives the label; the projection keeps it
    assert tell.emap.accuracy >= tell.full.accuracy - 0.05 and tell.emap.auroc > 0.9, (tell.emap, tell.full)
    assert tell.emap.accuracy_low > clean.emap.accuracy_high, (tell.emap, clean.emap)


@pytest.mark.slow
def test_t_shap_rises_with_the_tell():
    clean, tell = mmshap()["clean"].summary(), mmshap()["tell"].summary()
    assert clean["n_defined"] == tell["n_defined"] == VAL
    assert tell["t_shap_low"] > clean["t_shap_high"], (clean, tell)
