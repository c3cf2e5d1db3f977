"""Synthetic SNLI-VE (issue 15): hypotheses entailed, neutral or contradicted by an image's gold objects.

The fast tests recompute every label from the gold objects, check determinism, exact label balance and that the
ungrounded words never occur in the world; the slow test trains a tiny UNITER with a test-local head (per-region
features, max-pooled over the real regions, then a linear 3-way classifier) on VOLTA's SNLI-VE loss (BCE on the
one-hot label) and checks it beats the text-only ceiling of 2/3 on held-out images, on every label.
"""

from __future__ import annotations

import functools
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.synthetic.tasks import TASK_WORDS
from jaxvl.data.synthetic.tasks_snli_ve import (
    CONTRADICTION,
    ENTAILMENT,
    HYPOTHESIS_KINDS,
    LABEL_NAMES,
    NEUTRAL,
    UNGROUNDED_WORDS,
    snli_ve_batch,
    snli_ve_examples,
    snli_ve_vocabulary,
)
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.finetune.losses import task_loss
from jaxvl.models import get_model
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import VLBertModel
from jaxvl.models.volta.task_heads import VOLTA_TASKS
from jaxvl.runtime.compile import FAST_COMPILE

T = 8  # "there is a WORD CLASS" is 5 words + [CLS] [SEP]


@functools.cache
def world(num_images: int = 96, num_regions: int = 4, min_objects: int = 1, max_objects: int = 3) -> World:
    """A colour world: 4 colour words carried by the last 4 feature dims, a sharp detector."""
    return World(WorldConfig(num_images=num_images, num_regions=num_regions, min_objects=min_objects,
                             max_objects=max_objects, num_classes=12, num_attributes=4, colour_dims=4,
                             detector_rank_probs=(1.0, 0.0, 0.0, 0.0, 0.0), detector_temperature=0.5, seed=0))


@functools.cache
def tokenizer(w: World) -> Tokenizer:
    return Tokenizer.from_words(snli_ve_vocabulary(w))


def truth(w: World, image: int, hypothesis: str) -> int:
    """The label of ``there is a WORD CLASS`` recomputed from image ``image``'s gold objects."""
    there, is_, a, word, name = hypothesis.split()
    assert (there, is_, a) == ("there", "is", "a")
    objects = w[image].objects
    label = w.class_names.index(name)
    if label not in {o.label for o in objects}:
        return CONTRADICTION
    if word in UNGROUNDED_WORDS:
        return NEUTRAL
    return ENTAILMENT if (label, w.attribute_names.index(word)) in {(o.label, o.attribute) for o in objects} \
        else CONTRADICTION


def test_labels_are_true_of_the_gold_objects():
    w = world()
    examples = snli_ve_examples(w, range(96), seed=0)
    assert LABEL_NAMES == ("contradiction", "neutral", "entailment")  # VOLTA's LABEL_MAP
    assert [ex.image for ex in examples] == list(range(96))
    for ex in examples:
        assert truth(w, ex.image, ex.hypothesis) == ex.label, ex
        objects = w[ex.image].objects
        if ex.target_object >= 0:
            assert w.class_names[objects[ex.target_object].label] == ex.hypothesis.split()[-1]
        assert (ex.kind == "absent_class") == (ex.target_object < 0)
        assert {"held": ENTAILMENT, "ungrounded": NEUTRAL}.get(ex.kind, CONTRADICTION) == ex.label
    kinds = Counter(ex.kind for ex in examples)
    assert set(kinds) == set(HYPOTHESIS_KINDS) and min(kinds.values()) > 8, kinds
    contradictions = [ex for ex in examples if ex.label == CONTRADICTION]
    # an ungrounded word does not by itself mean neutral; a wrong attribute is often another object's
    assert any(ex.hypothesis.split()[3] in UNGROUNDED_WORDS for ex in contradictions)
    assert any(ex.kind == "wrong_attribute" and ex.hypothesis.split()[3] in
               {w.attribute_names[o.attribute] for o in w[ex.image].objects} for ex in contradictions)


def test_labels_are_balanced_in_blocks_of_three_and_deterministic():
    w = world()
    examples = snli_ve_examples(w, range(96), seed=3)
    for b in range(0, 96, 3):
        assert sorted(ex.label for ex in examples[b:b + 3]) == [0, 1, 2]
    orders = {tuple(ex.label for ex in examples[b:b + 3]) for b in range(0, 96, 3)}
    assert len(orders) > 3  # the order within a block is drawn
    assert snli_ve_examples(w, range(96), seed=3) == examples
    assert snli_ve_examples(w, [17, 5], seed=3) == [examples[17], examples[5]]  # image i whatever the set
    assert snli_ve_examples(w, range(96), seed=4) != examples
    only_class = snli_ve_examples(w, range(96), wrong_attribute_share=0.0)
    assert {ex.kind for ex in only_class if ex.label == CONTRADICTION} == {"absent_class"}


def test_batch_layout():
    w = world()
    examples = snli_ve_examples(w, range(12))
    b = snli_ve_batch(w, examples, tokenizer(w), T)
    assert set(UNGROUNDED_WORDS) <= set(snli_ve_vocabulary(w)) and not set(UNGROUNDED_WORDS) & set(w.vocabulary())
    assert not set(UNGROUNDED_WORDS) & set(TASK_WORDS)  # the other task worlds' token ids are unchanged
    np.testing.assert_array_equal(b["label"], [ex.label for ex in examples])
    assert b["target"].dtype == np.float32 and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["target"], np.eye(3)[b["label"]])
    assert [HYPOTHESIS_KINDS[k] for k in b["kind"]] == [ex.kind for ex in examples]
    assert [tokenizer(w).decode(i) for i in b["input_ids"]] == [ex.hypothesis for ex in examples]
    assert b["input_ids"].shape == (12, T) and b["features"].shape == (12, 5, 24) and b["locations"].shape[-1] == 5
    # VOLTA's SNLI-VE head and loss take the batch as it is
    logits = jnp.asarray(20 * (2 * b["target"] - 1))  # confident and right on every class
    assert float(task_loss(VOLTA_TASKS["snli-ve"], logits, jnp.asarray(b["label"]))) < 1e-6
    assert float(task_loss(VOLTA_TASKS["snli-ve"], -logits, jnp.asarray(b["label"]))) > 10


def test_bad_knobs():
    w = world()
    with pytest.raises(ValueError, match="wrong_attribute_share=1.5"):
        snli_ve_examples(w, range(6), wrong_attribute_share=1.5)
    with pytest.raises(ValueError, match="images"):
        snli_ve_examples(w, [2, 2])
    with pytest.raises(IndexError, match="image 96"):
        snli_ve_examples(w, [96])
    with pytest.raises(ValueError, match="examples"):
        snli_ve_batch(w, [], tokenizer(w), T)
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        snli_ve_batch(w, snli_ve_examples(w, range(6)), Tokenizer.from_words(w.vocabulary()), T)


# ------------------------------------------------------------------------------------- a tiny model learns it


class EntailmentModel(nn.Module):
    """A tiny V&L BERT; per region row 32 features, max-pooled over the real rows, a linear 3-way head: [B, 3]."""

    cfg: VLConfig

    @nn.compact
    def __call__(self, b: dict[str, jax.Array]) -> jax.Array:
        out = VLBertModel(self.cfg, name="bert")(b["input_ids"], b["features"], b["locations"], b["token_type_ids"],
                                                 b["text_mask"], b["region_mask"])
        rows = jnp.where(b["region_mask"][..., None] > 0, nn.gelu(nn.Dense(32)(out.vision)), -10000.0)
        return nn.Dense(3)(jnp.concatenate([rows.max(1), out.pooled_text], -1))


INPUTS = ("input_ids", "token_type_ids", "text_mask", "features", "locations", "region_mask")
TRAIN, VAL, STEPS, BATCH, CHUNK = 1536, 192, 3000, 32, 50


@pytest.mark.slow
def test_a_tiny_model_learns_snli_ve():
    """Images of 1-3 objects (4 region rows + [IMG]): chance 1/3, text-only 2/3, class-but-not-attribute 5/6 (the
    module doc). Measured here: 0.875 (per label 0.69 / 0.98 / 0.95) in ~17 s; another seed (init and batches) gave
    0.865. The head reads the regions: VOLTA's SNLI-VE head (one Linear on the fused pooled vector) on this tiny
    model stayed at the text-only 2/3 for 1500 steps (0.70 after 4000), as retrieval's pooled head does."""
    w = world(TRAIN + VAL, 4, 1, 3)
    tok = tokenizer(w)
    train = snli_ve_batch(w, snli_ve_examples(w, range(TRAIN)), tok, T)
    val = snli_ve_batch(w, snli_ve_examples(w, range(TRAIN, TRAIN + VAL)), tok, T)
    task = VOLTA_TASKS["snli-ve"]
    cfg = get_model("uniter", tiny=True, vocab_size=tok.vocab_size, num_object_classes=12,
                    max_position_embeddings=16).cfg
    model = EntailmentModel(cfg)
    params = jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(0),
                                                                 {k: train[k][:1] for k in INPUTS})["params"]
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 2e-3, STEPS // 10, STEPS), weight_decay=1e-4)

    def step(carry, b):
        params, opt = carry
        value, grads = jax.value_and_grad(lambda p: task_loss(task, model.apply({"params": p}, b), b["label"]))(
            params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), value

    run = jax.jit(lambda carry, bs: jax.lax.scan(step, carry, bs))
    carry, rng = (params, tx.init(params)), np.random.default_rng(0)
    for _ in range(STEPS // CHUNK):
        idx = rng.integers(0, TRAIN, (CHUNK, BATCH))
        carry, losses = run(carry, {k: train[k][idx] for k in (*INPUTS, "label")})
    assert np.isfinite(np.asarray(losses)).all()
    logits = jax.jit(model.apply)({"params": carry[0]}, {k: jnp.asarray(val[k]) for k in INPUTS})
    pred = np.asarray(logits).argmax(1)
    accuracy = float((pred == val["label"]).mean())
    per_label = [float((pred == val["label"])[val["label"] == k].mean()) for k in range(3)]
    print(f"SNLI-VE accuracy {accuracy:.3f} (chance 0.333, text-only 0.667); per label {per_label}")
    assert accuracy > 2 / 3 + 0.12 and min(per_label) > 0.55, (accuracy, per_label)
