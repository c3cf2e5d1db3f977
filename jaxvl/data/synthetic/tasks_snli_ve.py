"""Synthetic SNLI-VE (VOLTA task 13, visual entailment): a hypothesis about one world image, entailed, neutral or
contradicted by its gold objects.

Every hypothesis reads ``there is a WORD CLASS``, where WORD is an attribute word of the world (grounded: the
regions carry it) or one of ``UNGROUNDED_WORDS`` (``old``, ``new``, ``small``, ``wooden``: words the world never
grounds, so the regions cannot tell whether they hold). Labels follow VOLTA's ``LABEL_MAP`` (``LABEL_NAMES``:
contradiction 0, neutral 1, entailment 2) and the kind of hypothesis (``HYPOTHESIS_KINDS``) says why:

- ``held`` (entailment): an object of the image has that class and attribute;
- ``ungrounded`` (neutral): an ungrounded word and the class of an object of the image. The object is there, but
  whether it is old or wooden no region can decide;
- ``wrong_attribute`` (contradiction): a class of the image with an attribute that none of its objects of that
  class has; with probability 1/2 (when the image allows) an attribute that ANOTHER object of the image has, so
  finding the attribute anywhere in the image is not enough: it must sit on the named class;
- ``absent_class`` (contradiction): a class none of the image's objects has; its WORD is an ungrounded word with
  probability 1/2, else an attribute word, so an ungrounded word does not by itself mean neutral.

A contradiction is ``wrong_attribute`` with probability ``wrong_attribute_share`` (0.5; ``absent_class`` when
the image holds no class with a missing attribute, and the other way round). Labels come in blocks of three
consecutive world images (3b, 3b + 1, 3b + 2), one of each label in a random order per block, so any set of whole
blocks is balanced exactly and chance (and the majority baseline) is 1/3. The regions alone say nothing about
the label. The text alone does: an ungrounded word is neutral or contradiction, an attribute word entailment or
contradiction, so a text-only model reaches 2/3 (guessing neutral and entailment) and no more; the rest needs
the regions: does the image hold the class (neutral vs contradiction), and the class with that attribute
(entailment vs contradiction). A model that checks the class but not its attribute (right on every example but
the ``wrong_attribute`` ones, which it calls entailment) reaches 1 - ``wrong_attribute_share`` / 3, 5/6.

Knobs (``snli_ve_examples``): ``wrong_attribute_share``; ``seed``: image ``i``'s hypothesis depends only on
``(world, i, seed)``, whatever the other images of the set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxvl.data.readers.tasks.snli_ve import LABELS
from jaxvl.data.synthetic.tasks import check_images, example_rng, image_inputs, task_vocabulary, text_inputs
from jaxvl.data.synthetic.world import World
from jaxvl.data.tokenizer import Tokenizer

LABEL_NAMES = tuple(sorted(LABELS, key=LABELS.get))  # ("contradiction", "neutral", "entailment")
CONTRADICTION, NEUTRAL, ENTAILMENT = (LABELS[name] for name in LABEL_NAMES)
UNGROUNDED_WORDS = ("old", "new", "small", "wooden")
HYPOTHESIS_KINDS = ("held", "ungrounded", "wrong_attribute", "absent_class")
_TASK, _BLOCKS = 13, 113  # hypothesis draws; the blocks' label orders (a stream of their own)


@dataclasses.dataclass(frozen=True)
class EntailmentExample:
    """A ``hypothesis`` about world image ``image``: its ``kind`` (in ``HYPOTHESIS_KINDS``), ``label`` (VOLTA's:
    0 contradiction, 1 neutral, 2 entailment) and ``target_object``, the gold object it names (-1 for
    ``absent_class``)."""

    image: int
    hypothesis: str
    kind: str
    label: int
    target_object: int


def _contradiction(world: World, rng: np.random.Generator, image: int,
                   wrong_attribute_share: float) -> tuple[str, int, int, str]:
    """(kind, object or -1, class, word) of a contradiction about ``image``; ValueError when it admits none."""
    objects = world[image].objects
    held = {(o.label, o.attribute) for o in objects}
    wrong = [(j, a) for j, o in enumerate(objects) for a in range(world.cfg.num_attributes)
             if (o.label, a) not in held]
    absent = [k for k in range(world.cfg.num_classes) if k not in {o.label for o in objects}]
    if not wrong and not absent:
        raise ValueError(f"image {image}: every class holds every attribute; no contradiction is possible")
    if wrong and (rng.random() < wrong_attribute_share or not absent):
        misbound = [(j, a) for j, a in wrong if a in {o.attribute for o in objects}]
        pool = misbound if misbound and rng.random() < 0.5 else wrong
        j, a = pool[int(rng.integers(len(pool)))]
        return "wrong_attribute", j, objects[j].label, world.attribute_names[a]
    k = absent[int(rng.integers(len(absent)))]
    words = UNGROUNDED_WORDS if rng.random() < 0.5 else world.attribute_names
    return "absent_class", -1, k, words[int(rng.integers(len(words)))]


def snli_ve_vocabulary(world: World) -> list[str]:
    """``task_vocabulary`` plus ``UNGROUNDED_WORDS`` (only SNLI-VE's hypotheses use them, so the other task worlds'
    token ids stay as they were), for ``Tokenizer.from_words``."""
    return task_vocabulary(world, UNGROUNDED_WORDS)


def snli_ve_examples(world: World, images: Sequence[int], wrong_attribute_share: float = 0.5,
                     seed: int = 0) -> list[EntailmentExample]:
    """One hypothesis per image of ``images`` (distinct world indices), in that order (module doc)."""
    if not 0.0 <= wrong_attribute_share <= 1.0:
        raise ValueError(f"wrong_attribute_share={wrong_attribute_share} must lie in [0, 1]")
    grounded = set(UNGROUNDED_WORDS) & set(world.vocabulary())
    if grounded:
        raise ValueError(f"the world's vocabulary holds the ungrounded words {sorted(grounded)}")
    out = []
    for i in check_images(world, images):
        label = int(example_rng(seed, _BLOCKS, i // 3).permutation(3)[i % 3])
        rng = example_rng(seed, _TASK, i)
        objects = world[i].objects
        if label == CONTRADICTION:
            kind, j, k, word = _contradiction(world, rng, i, wrong_attribute_share)
        else:
            j = int(rng.integers(len(objects)))
            k = objects[j].label
            if label == ENTAILMENT:
                kind, word = "held", world.attribute_names[objects[j].attribute]
            else:
                kind, word = "ungrounded", UNGROUNDED_WORDS[int(rng.integers(len(UNGROUNDED_WORDS)))]
        out.append(EntailmentExample(i, f"there is a {word} {world.class_names[k]}", kind, label, j))
    return out


def snli_ve_batch(world: World, examples: Sequence[EntailmentExample], tokenizer: Tokenizer,
                  max_seq_length: int) -> dict[str, np.ndarray]:
    """Examples -> model inputs and targets [N, ...] (L = R + 1, the global row first):

    ``input_ids``, ``token_type_ids``, ``text_mask`` int32 [N, T]; ``features`` [N, L, D], ``locations``
    [N, L, 5], ``boxes`` [N, L, 4] float32, ``region_mask`` [N, L] int32; ``target`` float32 [N, 3] (the one-hot
    label, VOLTA's BCE target); ``label`` int32 [N] (0 contradiction, 1 neutral, 2 entailment) and ``kind``
    int32 [N] (index in ``HYPOTHESIS_KINDS``)."""
    if not examples:
        raise ValueError("examples: no example")
    label = np.array([ex.label for ex in examples], np.int32)
    return dict(**text_inputs([ex.hypothesis for ex in examples], tokenizer, max_seq_length),
                **image_inputs(world, [ex.image for ex in examples]),
                target=np.eye(len(LABEL_NAMES), dtype=np.float32)[label], label=label,
                kind=np.array([HYPOTHESIS_KINDS.index(ex.kind) for ex in examples], np.int32))


__all__ = ["CONTRADICTION", "ENTAILMENT", "HYPOTHESIS_KINDS", "LABEL_NAMES", "NEUTRAL", "UNGROUNDED_WORDS",
           "EntailmentExample", "snli_ve_batch", "snli_ve_examples", "snli_ve_vocabulary"]
