"""Labelled image-text matching (ITM) items from a synthetic world: matched captions and foils, with an optional
unimodal tell.

An item is (caption, image k, label): label 0 = match (VOLTA's ITM class 0), 1 = mismatch. This is the
evaluation design of Hessel & Lee's EMAP (and the training set of an ITM-only model), where a mismatched item is
a FOIL: a caption that does not describe image k, paired with it.

- matched item: one of image k's own captions (drawn at random). The world must have ``vision_to_language=1`` so
  that every caption describes its image;
- foil item: a caption of ANOTHER image of the same set, drawn among those that mention no class of image k:
  no mentioned class shares a visual prototype (``World.prototype_of``) with one of image k's objects, so
  the foil is visible as one from the caption and the regions together, even in worlds with ambiguous class pairs.

Knobs (``labelled_items``):

- ``foil_share`` (default 0.5): the share of the set's items that are foils, exactly ``round(foil_share * N)``
  of them, at positions drawn from the seed. Foil captions are captions of images of the same set, so a
  caption alone says (almost) nothing about its label: the label needs the text AND the image (nothing unimodal is
  planted). Almost: a foil must name another class than its image, so a caption naming a class frequent in the set
  is matched a little more often than foiled, a weak text-only cue that shrinks as classes are balanced;
- ``tell`` (default None): a word appended to EVERY foil caption (``"there is a kibo dagupo maybe"``) and to no
  matched caption. It plants a unimodal tell: the label is then predictable from the text alone. The word must
  be a single lower-case word outside the world's vocabulary (``tell_vocabulary`` gives the vocabulary with it,
  for ``Tokenizer.from_words``). The draws do not depend on ``tell``: the same seed gives the same items with
  and without it;
- ``seed``: everything is deterministic from (world, images, foil_share, seed).

``item_batch`` tokenises items into the model's fixed-shape inputs (the layout of ``jaxvl.data.grain.
PretrainTransform``: ``[CLS] caption [SEP]`` padded, a global ``[IMG]`` row, 5-d locations) plus ``labels``;
``jaxvl.probes.pairs.PairItems.from_batch`` takes it as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxvl.data.regions import region_inputs
from jaxvl.data.synthetic.world import SyntheticImage, World
from jaxvl.data.tokenizer import Tokenizer

MATCH, MISMATCH = 0, 1


@dataclasses.dataclass(frozen=True)
class LabelledItem:
    """One ITM item: ``caption`` paired with world image ``image``; ``label`` 0 match / 1 foil; ``source`` the
    image whose caption it is (``image`` itself for a matched item)."""

    image: int
    caption: str
    label: int
    source: int


def check_tell(world: World, tell: str | None) -> None:
    """Raises ValueError unless ``tell`` is None or one lower-case word outside the world's vocabulary."""
    if tell is None:
        return
    if not isinstance(tell, str) or not tell.isalpha() or not tell.islower() or not tell.isascii():
        raise ValueError(f"tell={tell!r}: expected one lower-case ASCII word (letters only)")
    if tell in world.vocabulary():
        raise ValueError(f"tell={tell!r} is already a word of the world's captions; pick a word outside its "
                         "vocabulary, so only foils carry it")


def tell_vocabulary(world: World, tell: str | None) -> list[str]:
    """The world's vocabulary plus the tell word (sorted), for ``Tokenizer.from_words``."""
    check_tell(world, tell)
    return sorted({*world.vocabulary(), *([tell] if tell else [])})


def _prototypes(world: World, image: SyntheticImage) -> set[int]:
    return {int(world.prototype_of[o.label]) for o in image.objects}


def labelled_items(world: World, images: Sequence[int], foil_share: float = 0.5, tell: str | None = None,
                   seed: int = 0) -> list[LabelledItem]:
    """One labelled item per image of ``images`` (world indices, distinct), in that order: foils at
    ``round(foil_share * N)`` positions, matched items elsewhere (module doc)."""
    if world.cfg.vision_to_language != 1.0:
        raise ValueError(f"vision_to_language={world.cfg.vision_to_language}: matched items need captions that "
                         "describe their image (vision_to_language=1)")
    if not 0.0 <= foil_share <= 1.0:
        raise ValueError(f"foil_share={foil_share} must lie in [0, 1]")
    check_tell(world, tell)
    images = [int(i) for i in images]
    if not images or len(set(images)) != len(images):
        raise ValueError(f"images: expected one or more distinct world indices, got {len(images)} "
                         f"({len(set(images))} distinct)")
    shown = [world[i] for i in images]  # raises IndexError outside the world
    rng = np.random.default_rng([seed, 14])
    n = len(images)
    foil = np.zeros(n, bool)
    foil[rng.permutation(n)[:round(foil_share * n)]] = True
    captions = [(j, c, {int(world.prototype_of[k]) for _, k, _ in m})
                for j, image in enumerate(shown) for c, m in zip(image.captions, image.mentions, strict=True)]
    out = []
    for pos, (index, image) in enumerate(zip(images, shown, strict=True)):
        if not foil[pos]:
            out.append(LabelledItem(index, image.captions[int(rng.integers(len(image.captions)))], MATCH, index))
            continue
        own = _prototypes(world, image)
        candidates = [(j, c) for j, c, protos in captions if j != pos and not protos & own]
        if not candidates:
            raise ValueError(f"image {index}: no caption of another image of the set mentions only other classes; "
                             "use more images or classes")
        j, caption = candidates[int(rng.integers(len(candidates)))]
        out.append(LabelledItem(index, f"{caption} {tell}" if tell else caption, MISMATCH, images[j]))
    return out


def item_batch(world: World, items: Sequence[LabelledItem], tokenizer: Tokenizer, max_seq_length: int,
               num_regions: int | None = None, add_global: str | None = "first") -> dict[str, np.ndarray]:
    """Items -> model inputs [N, ...]: ``input_ids``, ``token_type_ids`` (0), ``text_mask`` [N, T] int32,
    ``features`` [N, L, D], ``locations`` [N, L, 5] float32, ``region_mask`` [N, L] int32 (L = R + 1 with the
    global ``[IMG]`` row, R = ``num_regions`` or the world's), and ``labels`` [N] int32 (0 match, 1 foil).
    Raises ValueError when a caption does not fit ``max_seq_length`` (a cut tell would unplant it) or holds a word
    the tokenizer does not know."""
    if not items:
        raise ValueError("items: no item")
    r = world.cfg.num_regions if num_regions is None else int(num_regions)
    regions_of: dict[int, dict[str, np.ndarray]] = {}
    rows = []
    for item in items:
        pieces = tokenizer.tokenize(item.caption)
        if tokenizer.unk_token in pieces:
            raise ValueError(f"caption {item.caption!r}: a word outside the tokenizer's vocabulary (build it from "
                             "tell_vocabulary(world, tell))")
        if len(pieces) + 2 > max_seq_length:
            raise ValueError(f"max_seq_length={max_seq_length}: caption {item.caption!r} needs {len(pieces) + 2} "
                             "tokens with [CLS] and [SEP]")
        ids, mask = tokenizer.encode(item.caption, max_seq_length)
        if item.image not in regions_of:
            regions_of[item.image] = region_inputs(world[item.image].regions, r, add_global)
        regions = regions_of[item.image]
        rows.append(dict(input_ids=ids, token_type_ids=np.zeros_like(ids), text_mask=mask,
                         features=regions["features"], locations=regions["locations"],
                         region_mask=regions["region_mask"], labels=np.int32(item.label)))
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}


__all__ = ["MATCH", "MISMATCH", "LabelledItem", "check_tell", "item_batch", "labelled_items", "tell_vocabulary"]
