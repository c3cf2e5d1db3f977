"""Synthetic NLVR2 (VOLTA task 12): a statement about a pair of world images, true or false by their gold objects.

Statement types (``STATEMENT_TYPES``):

- ``count``: ``there are two CLASS``, true iff the two images together hold exactly two objects of CLASS. A false
  one names, with probability 1/2, a class the pair holds once or three or more times (counting needed), else a
  class neither image holds;
- ``left_has``: ``the left image has a ATTRIBUTE CLASS``, true iff the left (first) image holds an object of that
  class and attribute. A false one names, with probability 1/2, an object of the RIGHT image that the left one
  lacks (telling the two images apart is needed), else a class and attribute the left image lacks.

Labels (1 true, 0 false, NLVR2's) come in blocks of two examples, one true and one false, so any even number of
examples is balanced exactly and chance (and the majority baseline) is 1/2; neither the statement type nor the
position says anything about the label. Each example draws its pair of distinct images from ``images``, redrawing
until the pair admits the statement it needs: a true ``count`` needs a class held twice, so such pairs are more
common among true ``count`` statements (an image-only cue, as NLVR2 has its own).

Knobs (``nlvr2_examples``): ``num_examples``; ``count_share`` (0.5), the probability of a ``count`` statement;
``seed``. Example ``e`` depends only on ``(world, images, e, seed)``, not on ``num_examples``.

VOLTA's NLVR2 model runs the statement twice, with each image, and classifies the concatenation of the two pooled
outputs; ``nlvr2_batch`` gives the two images on an axis of their own.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

from jaxvl.data.synthetic.tasks import check_images, example_rng, image_inputs, text_inputs
from jaxvl.data.synthetic.world import World
from jaxvl.data.tokenizer import Tokenizer

STATEMENT_TYPES = ("count", "left_has")
TRUE, FALSE = 1, 0
_TASK, _BLOCKS = 12, 112  # example draws; the blocks' true/false coins (a stream of their own)
_MAX_TRIES = 1000


@dataclasses.dataclass(frozen=True)
class NLVR2Example:
    """A ``statement`` about world images ``left`` and ``right``: its type (in ``STATEMENT_TYPES``) and ``label``
    (1 true, 0 false)."""

    left: int
    right: int
    statement: str
    statement_type: str
    label: int


def _statement(world: World, rng: np.random.Generator, left: int, right: int, kind: str,
               label: int) -> str | None:
    """A statement of ``kind`` about the pair with truth ``label``, or None when the pair admits none."""
    names, attrs = world.class_names, world.attribute_names
    if kind == "count":
        counts = Counter(o.label for i in (left, right) for o in world[i].objects)
        if label == TRUE:
            pool = [k for k, n in counts.items() if n == 2]
        elif rng.random() < 0.5:
            pool = [k for k, n in counts.items() if n != 2]
        else:
            pool = [k for k in range(world.cfg.num_classes) if k not in counts]
        return f"there are two {names[pool[int(rng.integers(len(pool)))]]}" if pool else None
    held = {(o.label, o.attribute) for o in world[left].objects}
    if label == TRUE:
        pool = sorted(held)
    else:
        pool = sorted({(o.label, o.attribute) for o in world[right].objects} - held) if rng.random() < 0.5 else []
        pool = pool or [(k, a) for k in range(world.cfg.num_classes) for a in range(world.cfg.num_attributes)
                        if (k, a) not in held]
    k, a = pool[int(rng.integers(len(pool)))]
    return f"the left image has a {attrs[a]} {names[k]}"


def nlvr2_examples(world: World, images: Sequence[int], num_examples: int, count_share: float = 0.5,
                   seed: int = 0) -> list[NLVR2Example]:
    """``num_examples`` statements about pairs of ``images`` (2 or more distinct world indices), true and false in
    blocks of two (module doc)."""
    if num_examples < 1:
        raise ValueError(f"num_examples={num_examples} must be >= 1")
    if not 0.0 <= count_share <= 1.0:
        raise ValueError(f"count_share={count_share} must lie in [0, 1]")
    pool = check_images(world, images, least=2)
    out = []
    for e in range(num_examples):
        first_true = example_rng(seed, _BLOCKS, e // 2).random() < 0.5  # the block's coin
        label = TRUE if first_true == (e % 2 == 0) else FALSE
        rng = example_rng(seed, _TASK, e)
        kind = "count" if rng.random() < count_share else "left_has"
        for _ in range(_MAX_TRIES):
            left, right = (pool[int(k)] for k in rng.choice(len(pool), 2, replace=False))
            statement = _statement(world, rng, left, right, kind, label)
            if statement is not None:
                break
        else:
            raise ValueError(f"example {e}: no pair of the {len(pool)} images admits a {'true' if label else 'false'}"
                             f" {kind!r} statement; use more images")
        out.append(NLVR2Example(left, right, statement, kind, label))
    return out


def nlvr2_batch(world: World, examples: Sequence[NLVR2Example], tokenizer: Tokenizer,
                max_seq_length: int) -> dict[str, np.ndarray]:
    """Examples -> model inputs and labels (L = R + 1, the global row first; axis 1 of the image inputs is
    (left, right)):

    ``input_ids``, ``token_type_ids``, ``text_mask`` int32 [N, T]; ``features`` [N, 2, L, D], ``locations``
    [N, 2, L, 5], ``boxes`` [N, 2, L, 4] float32, ``region_mask`` [N, 2, L] int32; ``labels`` int32 [N] (1 true)."""
    if not examples:
        raise ValueError("examples: no example")
    images = image_inputs(world, [i for ex in examples for i in (ex.left, ex.right)])
    images = {k: v.reshape(len(examples), 2, *v.shape[1:]) for k, v in images.items()}
    return dict(**text_inputs([ex.statement for ex in examples], tokenizer, max_seq_length), **images,
                labels=np.array([ex.label for ex in examples], np.int32))


__all__ = ["FALSE", "STATEMENT_TYPES", "TRUE", "NLVR2Example", "nlvr2_batch", "nlvr2_examples"]
