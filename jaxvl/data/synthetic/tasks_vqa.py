"""Synthetic VQA (VOLTA task 1): questions about one world image whose answers are planted in its gold objects.

Two question types, one question per image (the type drawn per image):

- ``colour``: ``what colour is the CLASS``, asked of an object whose class occurs once in the image (so ``the
  CLASS`` names one object); the answer is its colour word. Needs a colour world (``WorldConfig.colour_dims`` >
  0: attribute words are colours carried by their own feature dimensions). The model must find the CLASS region
  and read its colour: chance (a uniform guess among the colours) is ``1 / num_attributes``, and a model that
  reads the colour of a random object of the image instead does better than that but below 1 in images of
  several objects;
- ``exists``: ``is there a CLASS``, ``yes`` for a class of one of the image's objects and ``no`` for a class of
  none of them, each with probability 1/2 (chance 1/2). In worlds with ambiguous class pairs
  (``ambiguous_fraction`` > 0) a ``no`` whose class shares its prototype with a present one cannot be told
  from the regions (a planted limit, like the ablation's).

Knobs (``vqa_examples``):

- ``colour_share`` (0.5): the probability that an image's question is a ``colour`` question (an image with no
  object of a unique class gets an ``exists`` question instead). It must be 0 in a world without colours;
- ``answer_noise`` (0.0): each of the 10 annotator answers is, with this probability, another answer of the same
  type (another colour; the other of yes/no), so the planted answer's soft score drops below 1 like VQA's
  annotator disagreement;
- ``seed``: image ``i``'s question depends only on ``(world, i, seed)``.

The answer vocabulary (``answer_vocabulary``) is the world's colour words then ``yes``, ``no``. Soft scores follow
VQA's ``compute_softscore`` (VOLTA's targets): an answer given by n of the 10 annotators scores
``min(1, 0.3 n)`` with 3 -> 0.9 (0, 0.3, 0.6, 0.9, 1 for n = 0, 1, 2, 3, >= 4). A prediction's VQA score is the
target at its argmax (``compute_score_with_logits``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

from jaxvl.data.synthetic.tasks import check_images, example_rng, image_inputs, text_inputs
from jaxvl.data.synthetic.world import World
from jaxvl.data.tokenizer import Tokenizer

QUESTION_TYPES = ("colour", "exists")
ANNOTATORS = 10
YES, NO = "yes", "no"
_TASK = 1


@dataclasses.dataclass(frozen=True)
class VQAExample:
    """One question about world image ``image``: its ``question_type`` (in ``QUESTION_TYPES``), the planted
    ``answer`` and the ``ANNOTATORS`` annotator ``answers``; ``target_object`` the gold object asked about (-1 for
    an ``exists`` question answered ``no``)."""

    image: int
    question: str
    question_type: str
    answer: str
    answers: tuple[str, ...]
    target_object: int


def answer_vocabulary(world: World) -> list[str]:
    """The answers: the world's colour words (none without ``colour_dims``), then ``yes``, ``no``."""
    return [*(world.attribute_names if world.cfg.colour_dims else []), YES, NO]


def soft_score(count: int) -> float:
    """VQA's soft score of an answer given by ``count`` of the 10 annotators (0, .3, .6, .9, 1)."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def soft_scores(answers: Sequence[str]) -> dict[str, float]:
    """Annotator answers -> {distinct answer: soft score}."""
    return {a: soft_score(n) for a, n in Counter(answers).items()}


def vqa_examples(world: World, images: Sequence[int], colour_share: float = 0.5, answer_noise: float = 0.0,
                 seed: int = 0) -> list[VQAExample]:
    """One question per image of ``images`` (distinct world indices), in that order (module doc)."""
    if not 0.0 <= colour_share <= 1.0:
        raise ValueError(f"colour_share={colour_share} must lie in [0, 1]")
    if colour_share > 0 and not world.cfg.colour_dims:
        raise ValueError(f"colour_share={colour_share}: colour questions need a colour world (colour_dims > 0)")
    if not 0.0 <= answer_noise <= 1.0:
        raise ValueError(f"answer_noise={answer_noise} must lie in [0, 1]")
    out = []
    for i in check_images(world, images):
        rng = example_rng(seed, _TASK, i)
        objects = world[i].objects
        counts = Counter(o.label for o in objects)
        unique = [j for j, o in enumerate(objects) if counts[o.label] == 1]
        wants_colour = rng.random() < colour_share
        if wants_colour and unique:
            j = unique[int(rng.integers(len(unique)))]
            question = f"what colour is the {world.class_names[objects[j].label]}"
            qtype, answer, others = "colour", world.attribute_names[objects[j].attribute], world.attribute_names
        else:
            qtype, others = "exists", (YES, NO)
            absent = [k for k in range(world.cfg.num_classes) if k not in counts]
            if rng.random() < 0.5 or not absent:
                j = int(rng.integers(len(objects)))
                label, answer = objects[j].label, YES
            else:
                j, label, answer = -1, absent[int(rng.integers(len(absent)))], NO
            question = f"is there a {world.class_names[label]}"
        wrong = [a for a in others if a != answer]
        noisy = rng.random(ANNOTATORS) < answer_noise
        picks = rng.integers(len(wrong), size=ANNOTATORS)
        answers = tuple(wrong[p] if n else answer for n, p in zip(noisy, picks, strict=True))
        out.append(VQAExample(i, question, qtype, answer, answers, j))
    return out


def vqa_batch(world: World, examples: Sequence[VQAExample], tokenizer: Tokenizer,
              max_seq_length: int) -> dict[str, np.ndarray]:
    """Examples -> model inputs and targets [N, ...] (A = ``len(answer_vocabulary(world))``, L = R + 1):

    ``input_ids``, ``token_type_ids``, ``text_mask`` int32 [N, T]; ``features`` [N, L, D], ``locations``
    [N, L, 5], ``boxes`` [N, L, 4] float32, ``region_mask`` [N, L] int32; ``target`` float32 [N, A] (the soft
    scores, VOLTA's BCE target); ``answer`` int32 [N] (the planted answer's index) and ``question_type`` int32
    [N] (index in ``QUESTION_TYPES``)."""
    if not examples:
        raise ValueError("examples: no example")
    vocab = {a: k for k, a in enumerate(answer_vocabulary(world))}
    target = np.zeros((len(examples), len(vocab)), np.float32)
    for n, ex in enumerate(examples):
        for a, s in soft_scores(ex.answers).items():
            target[n, vocab[a]] = s
    return dict(**text_inputs([ex.question for ex in examples], tokenizer, max_seq_length),
                **image_inputs(world, [ex.image for ex in examples]), target=target,
                answer=np.array([vocab[ex.answer] for ex in examples], np.int32),
                question_type=np.array([QUESTION_TYPES.index(ex.question_type) for ex in examples], np.int32))


__all__ = ["ANNOTATORS", "NO", "QUESTION_TYPES", "YES", "VQAExample", "answer_vocabulary", "soft_score",
           "soft_scores", "vqa_batch", "vqa_examples"]
