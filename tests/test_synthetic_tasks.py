"""Synthetic task worlds with planted answers (issue 15, item 6): VQA, retrieval, referring expressions, NLVR2.

The fast tests recompute every answer, label and target from the images' gold objects, check determinism and
balance, and refuse bad knobs. The slow tests train a tiny UNITER with a small test-local head (a classifier on
the fused pooled output for VQA, one logit per region for referring expressions, the best region's logit as the
match score for retrieval, two passes' best-region logits for NLVR2) and check that it learns each task well above
its chance level, and above a baseline that ignores part of what is planted, on held-out images (NLVR2: the
``left_has`` statements; ``count`` has no learning test).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.synthetic.tasks import box_iou, task_vocabulary
from jaxvl.data.synthetic.tasks_nlvr2 import STATEMENT_TYPES, nlvr2_batch, nlvr2_examples
from jaxvl.data.synthetic.tasks_refer import refer_batch, refer_chance, refer_examples, refer_hits
from jaxvl.data.synthetic.tasks_retrieval import retrieval_batch, retrieval_options, retrieval_set
from jaxvl.data.synthetic.tasks_vqa import (
    ANNOTATORS,
    QUESTION_TYPES,
    answer_vocabulary,
    soft_score,
    vqa_batch,
    vqa_examples,
)
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import get_model
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import VLBertModel
from jaxvl.runtime.compile import FAST_COMPILE

T = 10  # tokens: the longest template, "the left image has a ATTR CLASS", is 7 words + [CLS] [SEP]


@functools.cache
def world(num_images: int = 96, num_regions: int = 4, min_objects: int = 1, max_objects: int = 3) -> World:
    """A colour world: 4 colour words carried by the last 4 feature dims, a sharp detector."""
    return World(WorldConfig(num_images=num_images, num_regions=num_regions, min_objects=min_objects,
                             max_objects=max_objects, num_classes=12, num_attributes=4, colour_dims=4,
                             detector_rank_probs=(1.0, 0.0, 0.0, 0.0, 0.0), detector_temperature=0.5, seed=0))


@functools.cache
def tokenizer(w: World) -> Tokenizer:
    return Tokenizer.from_words(task_vocabulary(w))


def named(w: World, words: list[str]) -> list[tuple[int, int]]:
    """(class, attribute) of every ``ATTR CLASS`` in ``words``."""
    return [(w.class_names.index(b), w.attribute_names.index(a)) for a, b in itertools.pairwise(words)
            if b in w.class_names]


# -------------------------------------------------------------------------------------------------- shared


def test_box_iou_has_voltas_pixel_convention():
    gold = np.array([0.0, 0.0, 9.0, 9.0])  # 10 x 10 pixels
    boxes = np.array([[0, 0, 9, 9], [20, 20, 30, 30], [0, 0, 4, 9]], np.float32)
    np.testing.assert_allclose(box_iou(boxes, gold), [1.0, 0.0, 0.5], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------- VQA


def test_vqa_is_deterministic_per_image():
    w = world()
    full = vqa_examples(w, range(40), answer_noise=0.2, seed=3)
    assert vqa_examples(w, range(40), answer_noise=0.2, seed=3) == full
    assert vqa_examples(w, [17, 5], answer_noise=0.2, seed=3) == [full[17], full[5]]  # image i whatever the set
    assert vqa_examples(w, range(40), answer_noise=0.2, seed=4) != full


def test_vqa_answers_are_the_gold_objects():
    w = world()
    examples = vqa_examples(w, range(96), colour_share=0.5, seed=1)
    kinds = Counter(ex.question_type for ex in examples)
    assert kinds["colour"] > 30 and kinds["exists"] > 30
    yes = [ex.answer == "yes" for ex in examples if ex.question_type == "exists"]
    assert 0.3 < np.mean(yes) < 0.7  # balanced yes / no
    for ex in examples:
        objects = w[ex.image].objects
        words = ex.question.split()
        label = w.class_names.index(words[-1])
        assert ex.answers == (ex.answer,) * ANNOTATORS  # no noise
        if ex.question_type == "colour":
            assert words[:-1] == ["what", "colour", "is", "the"]
            (obj,) = [o for o in objects if o.label == label]  # the class occurs once
            assert obj is objects[ex.target_object] and ex.answer == w.attribute_names[obj.attribute]
        else:
            assert words[:-1] == ["is", "there", "a"]
            assert ex.answer == ("yes" if label in {o.label for o in objects} else "no")
    b = vqa_batch(w, examples, tokenizer(w), T)
    vocab = answer_vocabulary(w)
    assert vocab == [*w.attribute_names, "yes", "no"] and b["target"].shape == (96, len(vocab))
    np.testing.assert_array_equal(b["target"], np.eye(len(vocab))[b["answer"]])  # 10 of 10 -> 1
    assert [vocab[a] for a in b["answer"]] == [ex.answer for ex in examples]
    assert [QUESTION_TYPES[q] for q in b["question_type"]] == [ex.question_type for ex in examples]
    assert [tokenizer(w).decode(i) for i in b["input_ids"]] == [ex.question for ex in examples]
    assert b["features"].shape == (96, 5, 24) and b["region_mask"].dtype == np.int32


def test_vqa_answer_noise_gives_soft_scores():
    w = world()
    examples = vqa_examples(w, range(96), answer_noise=0.3, seed=2)
    answers = [a for ex in examples for a in ex.answers]
    wrong = np.mean([a != ex.answer for ex in examples for a in ex.answers])
    assert 0.25 < wrong < 0.35, wrong
    for ex in examples:  # a noisy answer is another answer of the same type
        allowed = set(w.attribute_names) if ex.question_type == "colour" else {"yes", "no"}
        assert set(ex.answers) <= allowed
    assert len(answers) == 96 * ANNOTATORS
    assert [soft_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    b = vqa_batch(w, examples, tokenizer(w), T)
    vocab = answer_vocabulary(w)
    for ex, row in zip(examples, b["target"], strict=True):
        counts = Counter(ex.answers)
        np.testing.assert_allclose(row, [soft_score(counts[a]) for a in vocab])
    assert (b["target"][np.arange(96), b["answer"]] < 1).any()


# ------------------------------------------------------------------------------------ referring expressions


def test_refer_expressions_name_exactly_one_object():
    w = world()
    examples = refer_examples(w, range(96), seed=0)
    assert len(examples) > 80 and refer_examples(w, [9, 2]) == [e for e in examples if e.image in (9, 2)][::-1]
    assert refer_examples(w, range(96), seed=1) != examples
    width = w.cfg.image_size[1]
    for ex in examples:
        objects = w[ex.image].objects
        words = ex.expression.split()
        assert words[0] == "the" and words[-3:-1] == ["on", "the"]
        ((label, attribute),) = named(w, words)
        centre = {j: (o.box[0] + o.box[2]) / 2 for j, o in enumerate(objects) if (o.label, o.attribute) ==
                  (label, attribute)}
        if len(centre) == 1:  # alone of its kind: the half of the image
            pick = next(iter(centre)) if (centre[next(iter(centre))] < width / 2) == (words[-1] == "left") else None
        else:  # among its kind: the leftmost or rightmost
            pick = (min if words[-1] == "left" else max)(centre, key=centre.get)
        assert pick == ex.target_object
        np.testing.assert_array_equal(ex.gold_box, objects[pick].box)


def test_refer_targets_are_the_iou_with_the_gold_box():
    w = world()
    examples = refer_examples(w, range(96))
    b = refer_batch(w, examples, tokenizer(w), T)
    assert b["target"].shape == b["region_mask"].shape == (len(examples), w.cfg.num_regions + 1)
    for ex, target, mask in zip(examples, b["target"], b["region_mask"], strict=True):
        regions = w[ex.image].regions
        x1, y1, x2, y2 = ex.gold_box
        for row, box in enumerate([np.array([0, 0, regions.image_w, regions.image_h]), *regions.boxes]):
            iw = max(0.0, min(box[2], x2) - max(box[0], x1) + 1)
            ih = max(0.0, min(box[3], y2) - max(box[1], y1) + 1)
            union = (box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (x2 - x1 + 1) * (y2 - y1 + 1) - iw * ih
            assert target[row] == pytest.approx(iw * ih / union, rel=1e-5) and mask[row] == 1
    assert refer_hits(b["target"], b).all()  # the oracle; and an answer exists for each
    assert not refer_hits(-b["target"], b).any()
    chance = refer_chance(b)
    real = b["region_mask"].sum(1)
    assert chance == pytest.approx(np.mean((b["target"] > 0.5).sum(1) / real)) and 0.2 < chance < 0.5


# ----------------------------------------------------------------------------------------------------- NLVR2


def test_nlvr2_labels_are_true_of_the_pairs_and_balanced():
    w = world()
    examples = nlvr2_examples(w, range(96), 200, seed=0)
    assert nlvr2_examples(w, range(96), 50, seed=0) == examples[:50]  # example e whatever the count
    assert nlvr2_examples(w, range(96), 50, seed=1) != examples[:50]
    assert sum(ex.label for ex in examples) == 100
    assert all(examples[e].label != examples[e + 1].label for e in range(0, 200, 2))
    kinds = Counter(ex.statement_type for ex in examples)
    assert set(kinds) == set(STATEMENT_TYPES) and min(kinds.values()) > 60
    for kind in STATEMENT_TYPES:  # the type says nothing about the label, nor does the position
        assert 0.35 < np.mean([ex.label for ex in examples if ex.statement_type == kind]) < 0.65, kind
    assert 0.35 < np.mean([ex.label for ex in examples[::2]]) < 0.65
    right_only = 0
    for ex in examples:
        left, right = w[ex.left].objects, w[ex.right].objects
        words = ex.statement.split()
        assert ex.left != ex.right
        if ex.statement_type == "count":
            assert words[:3] == ["there", "are", "two"]
            label = w.class_names.index(words[3])
            truth = sum(o.label == label for o in left + right) == 2
        else:
            assert words[:5] == ["the", "left", "image", "has", "a"]
            (pair,) = named(w, words)
            truth = pair in {(o.label, o.attribute) for o in left}
            right_only += not truth and pair in {(o.label, o.attribute) for o in right}
        assert truth == bool(ex.label), ex
    assert right_only > 10  # false statements that are true of the other image
    b = nlvr2_batch(w, examples[:8], tokenizer(w), T)
    assert b["features"].shape == (8, 2, 5, 24) and b["region_mask"].shape == (8, 2, 5)
    np.testing.assert_array_equal(b["features"][0, 1], vqa_batch(w, vqa_examples(w, [examples[0].right]),
                                                                  tokenizer(w), T)["features"][0])
    np.testing.assert_array_equal(b["labels"], [ex.label for ex in examples[:8]])


# ------------------------------------------------------------------------------------------------- retrieval


def test_retrieval_set_and_options():
    w = world()
    rset = retrieval_set(w, range(20, 36))
    m = w.cfg.captions_per_image
    assert len(rset.captions) == 16 * m and list(rset.caption_image) == [n for n in range(16) for _ in range(m)]
    for c, caption in enumerate(rset.captions):
        assert caption == w[20 + c // m].captions[c % m]
        for n in range(16):
            held = {(o.label, o.attribute) for o in w[20 + n].objects}
            assert rset.describes[c, n] == (set(named(w, caption.split())) <= held)
    assert rset.describes[np.arange(16 * m), rset.caption_image].all()
    options = retrieval_options(w, rset, seed=0)
    np.testing.assert_array_equal(options, retrieval_options(w, rset, seed=0))
    assert options.shape == (16 * m, 4, 2) and (options[:, 0, 0] == np.arange(16 * m)).all()
    b = retrieval_batch(w, rset, options, tokenizer(w), 12)
    assert b["input_ids"].shape == (16 * m, 4, 12) and b["features"].shape == (16 * m, 4, 5, 24)
    np.testing.assert_array_equal(b["describes"], np.array([True, False, False, False])[None].repeat(16 * m, 0))
    assert (options[:, 1:3] != options[:, :1]).any(-1).all()
    for c, (_, hard) in enumerate(options[:, 3]):  # a hard image shares a class with the caption, when one does
        words = set(rset.captions[c].split())
        shares = [not rset.describes[c, n] and words & {w.class_names[o.label] for o in w[20 + n].objects}
                  for n in range(16)]
        assert bool(shares[hard]) or not any(shares)


# ------------------------------------------------------------------------------------------------- bad knobs


def test_bad_task_knobs():
    w, plain = world(), World(WorldConfig(num_images=8, num_classes=12))
    with pytest.raises(ValueError, match="colour_share=0.5"):
        vqa_examples(plain, range(8))
    assert {ex.question_type for ex in vqa_examples(plain, range(8), colour_share=0.0)} == {"exists"}
    with pytest.raises(ValueError, match="answer_noise=1.5"):
        vqa_examples(w, range(8), answer_noise=1.5)
    with pytest.raises(ValueError, match="colour_share=2"):
        vqa_examples(w, range(8), colour_share=2)
    with pytest.raises(ValueError, match="images"):
        refer_examples(w, [3, 3])
    with pytest.raises(IndexError, match="image 96"):
        vqa_examples(w, [96])
    with pytest.raises(ValueError, match="count_share=-0.1"):
        nlvr2_examples(w, range(8), 4, count_share=-0.1)
    with pytest.raises(ValueError, match="num_examples=0"):
        nlvr2_examples(w, range(8), 0)
    with pytest.raises(ValueError, match="images"):
        nlvr2_examples(w, [1], 2)
    with pytest.raises(ValueError, match="vision_to_language=0.5"):
        retrieval_set(World(WorldConfig(num_images=8, num_classes=12, vision_to_language=0.5)), range(8))
    with pytest.raises(ValueError, match="pairs"):
        retrieval_batch(w, retrieval_set(w, range(4)), np.zeros((3,), int), tokenizer(w), T)
    examples = vqa_examples(w, range(4))
    with pytest.raises(ValueError, match="max_seq_length=4"):
        vqa_batch(w, examples, tokenizer(w), 4)
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        vqa_batch(w, examples, Tokenizer.from_words(w.vocabulary()), T)


# ------------------------------------------------------------------------------------- tiny models learn them


class TaskModel(nn.Module):
    """A tiny V&L BERT with a test-local head (``head``): ``pooled``, a 2-layer classifier on the fused pooled output
    (logits [B, outputs]); ``regions``, one logit per region row (logits [B, L], padded rows -10000); ``best_region``,
    the largest of those (a match score [B, 1]: does some region fit the text)."""

    cfg: VLConfig
    head: str
    outputs: int = 1

    @nn.compact
    def __call__(self, b: dict[str, jax.Array]) -> jax.Array:
        out = VLBertModel(self.cfg, name="bert")(b["input_ids"], b["features"], b["locations"], b["token_type_ids"],
                                                 b["text_mask"], b["region_mask"])
        if self.head == "pooled":
            h = nn.LayerNorm()(nn.gelu(nn.Dense(64)(out.pooled_text * out.pooled_vision)))
            return nn.Dense(self.outputs)(h)
        rows = jnp.where(b["region_mask"] > 0, nn.Dense(1)(out.vision)[..., 0], -10000.0)
        return rows if self.head == "regions" else rows.max(1, keepdims=True)


def tiny(vocab_size: int) -> VLConfig:
    return get_model("uniter", tiny=True, vocab_size=vocab_size, num_object_classes=12, max_position_embeddings=16).cfg


def fit(model: nn.Module, train: dict[str, np.ndarray], steps: int, lr: float = 2e-3, batch: int = 32,
        chunk: int = 50) -> dict:
    """``model``'s parameters trained with VOLTA's BCE-with-logits on ``train["target"]`` (soft scores, IoUs or
    0/1 labels), batches drawn at random from ``train``'s rows."""
    data = {k: train[k] for k in ("input_ids", "token_type_ids", "text_mask", "features", "locations",
                                  "region_mask", "target")}
    params = nn.meta.unbox(jax.jit(model.init, compiler_options=FAST_COMPILE)(
        jax.random.key(0), {k: v[:1] for k, v in data.items()})["params"])
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, steps // 10, steps), weight_decay=1e-4)

    def step(carry, b):
        params, opt = carry
        loss = lambda p: optax.sigmoid_binary_cross_entropy(model.apply({"params": p}, b), b["target"]).mean()  # noqa: E731
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), value

    run = jax.jit(lambda carry, bs: jax.lax.scan(step, carry, bs))
    carry = (params, tx.init(params))
    rng = np.random.default_rng(0)
    for _ in range(steps // chunk):
        idx = rng.integers(0, len(data["target"]), (chunk, batch))
        carry, losses = run(carry, {k: v[idx] for k, v in data.items()})
    assert np.isfinite(np.asarray(losses)).all()
    return carry[0]


def predict(model: nn.Module, params: dict, b: dict[str, np.ndarray]) -> np.ndarray:
    keys = ("input_ids", "token_type_ids", "text_mask", "features", "locations", "region_mask")
    return np.asarray(jax.jit(model.apply)({"params": params}, {k: jnp.asarray(b[k]) for k in keys}))


VQA_TRAIN, VQA_VAL, VQA_STEPS = 1024, 192, 2000
REF_TRAIN, REF_VAL, REF_STEPS = 512, 192, 600


@pytest.mark.slow
def test_a_tiny_model_learns_vqa_colour():
    """``what colour is the CLASS`` over images of 2 objects (3 region rows): chance 1/4 (4 colours); a model that
    reads the colour of either object, ignoring the class, gets (1 + P(both share the colour)) / 2, about 0.6."""
    w = world(VQA_TRAIN + VQA_VAL, 3, 2, 2)
    tok = tokenizer(w)
    train = vqa_batch(w, vqa_examples(w, range(VQA_TRAIN), colour_share=1.0), tok, T)
    examples = vqa_examples(w, range(VQA_TRAIN, VQA_TRAIN + VQA_VAL), colour_share=1.0)
    val = vqa_batch(w, examples, tok, T)
    model = TaskModel(tiny(tok.vocab_size), "pooled", len(answer_vocabulary(w)))
    params = fit(model, train, VQA_STEPS)
    accuracy = float((predict(model, params, val).argmax(1) == val["answer"]).mean())
    chance = 1 / w.cfg.num_attributes
    class_blind = np.mean([np.mean([w.attribute_names[o.attribute] == ex.answer for o in w[ex.image].objects])
                           for ex in examples])
    print(f"VQA colour accuracy {accuracy:.3f} (chance {chance:.3f}, class-blind {class_blind:.3f})")
    assert accuracy > max(chance + 0.5, class_blind + 0.2), (accuracy, class_blind)


@pytest.mark.slow
def test_a_tiny_model_learns_referring_expressions():
    """``the ATTR CLASS on the SIDE`` over images of 2-3 objects (4 region rows + [IMG]): chance ~0.3 (a uniform
    row); a model that picks one of the objects ignoring the text, 1 / objects, about 0.4."""
    w = world(REF_TRAIN + REF_VAL, 4, 2, 3)
    tok = tokenizer(w)
    train = refer_batch(w, refer_examples(w, range(REF_TRAIN)), tok, T)
    val = refer_batch(w, refer_examples(w, range(REF_TRAIN, REF_TRAIN + REF_VAL)), tok, T)
    model = TaskModel(tiny(tok.vocab_size), "regions")
    params = fit(model, train, REF_STEPS)
    accuracy, chance = float(refer_hits(predict(model, params, val), val).mean()), refer_chance(val)
    text_blind = np.mean([1 / len(w[i].objects) for i in range(REF_TRAIN, REF_TRAIN + REF_VAL)])  # any object
    print(f"referring-expression accuracy {accuracy:.3f} (chance {chance:.3f}, text-blind {text_blind:.3f})")
    assert accuracy > max(chance + 0.3, text_blind + 0.2), (accuracy, chance, text_blind)



RET_TRAIN, RET_VAL, RET_STEPS, RET_T = 512, 32, 3000, 12


@pytest.mark.slow
def test_a_tiny_model_learns_retrieval():
    """Trained on VOLTA's 4 options per caption (one match score per (caption, image), BCE on ``describes``), it
    ranks the 32 held-out images (1-2 objects, 3 region rows) for each of their captions: image-retrieval R@1 (the
    caption's own image) against chance 1 / 32; the top image described by the caption against the share of images
    each caption describes. The score is ``best_region``: with the pooled classifier (VOLTA's head) this tiny model
    stayed at chance for 4000 steps, as its ITM head does (the matching plateau of tests/test_probes_itm_planted)."""
    w = world(RET_TRAIN + RET_VAL, 3, 1, 2)
    tok = tokenizer(w)
    rset = retrieval_set(w, range(RET_TRAIN))
    train = retrieval_batch(w, rset, retrieval_options(w, rset), tok, RET_T)
    train = {k: v.reshape(-1, *v.shape[2:]) for k, v in train.items()}
    train["target"] = train["describes"].astype(np.float32)[:, None]
    model = TaskModel(tiny(tok.vocab_size), "best_region")
    params = fit(model, train, RET_STEPS)
    val = retrieval_set(w, range(RET_TRAIN, RET_TRAIN + RET_VAL))
    c, n = len(val.captions), len(val.images)
    pairs = np.stack(np.meshgrid(np.arange(c), np.arange(n), indexing="ij"), -1)  # [C, N, 2]: every caption x image
    b = {k: v.reshape(c * n, *v.shape[2:]) for k, v in retrieval_batch(w, val, pairs, tok, RET_T).items()}
    top = predict(model, params, b).reshape(c, n).argmax(1)
    r_at_1, described = float((top == val.caption_image).mean()), float(val.describes[np.arange(c), top].mean())
    print(f"IR R@1 {r_at_1:.3f} (chance {1 / n:.3f}); top image described {described:.3f} "
          f"(chance {val.describes.mean():.3f})")
    assert r_at_1 > 4 / n and described > val.describes.mean() + 0.2, (r_at_1, described)


class PairModel(nn.Module):
    """NLVR2's two passes, (statement, left image) and (statement, right image), through one tiny V&L BERT; each
    pass's best-region logit (``TaskModel``'s ``best_region``), the two concatenated, a linear classifier: [B, 1]."""

    cfg: VLConfig

    @nn.compact
    def __call__(self, b: dict[str, jax.Array]) -> jax.Array:
        bert, score = VLBertModel(self.cfg, name="bert"), nn.Dense(1)
        best = []
        for side in range(2):
            out = bert(b["input_ids"], b["features"][:, side], b["locations"][:, side], b["token_type_ids"],
                       b["text_mask"], b["region_mask"][:, side])
            best.append(jnp.where(b["region_mask"][:, side] > 0, score(out.vision)[..., 0], -10000.0).max(1))
        return nn.Dense(1)(jnp.stack(best, -1))


# 3000 steps: accuracy 0.879, 0.980, 0.914, 0.910 with seeds 0-3 (offsetting every seed of the test); at 1500 some
# seeds stayed near the matching plateau (0.59) and the others spread over 0.81-0.97 with XLA's rounding.
NLVR2_TRAIN, NLVR2_VAL, NLVR2_STEPS = 512, 64, 3000


@pytest.mark.slow
def test_a_tiny_model_learns_nlvr2_left_image_statements():
    """``the left image has a ATTR CLASS`` (images of 1-2 objects, 3 region rows): chance 1/2; a model that checks
    whether EITHER image has it is wrong on the false statements true of the right image, about 1/4 of all."""
    w = world(NLVR2_TRAIN + NLVR2_VAL, 3, 1, 2)
    tok = tokenizer(w)
    train = nlvr2_batch(w, nlvr2_examples(w, range(NLVR2_TRAIN), 4 * NLVR2_TRAIN, count_share=0.0), tok, T)
    train["target"] = train["labels"].astype(np.float32)[:, None]
    examples = nlvr2_examples(w, range(NLVR2_TRAIN, NLVR2_TRAIN + NLVR2_VAL), 256, count_share=0.0, seed=1)
    val = nlvr2_batch(w, examples, tok, T)
    model = PairModel(tiny(tok.vocab_size))
    params = fit(model, train, NLVR2_STEPS)
    accuracy = float(((predict(model, params, val)[:, 0] > 0) == val["labels"]).mean())
    either = np.mean([ex.label == any((o.label, o.attribute) in named(w, ex.statement.split())
                                      for i in (ex.left, ex.right) for o in w[i].objects) for ex in examples])
    print(f"NLVR2 left-image accuracy {accuracy:.3f} (chance 0.5, either-image {either:.3f})")
    assert accuracy > either + 0.1, (accuracy, either)
