"""Synthetic image-text retrieval (VOLTA task 8, Flickr30k): N world images, each with its M captions.

A retrieval set (``retrieval_set``) is the images of ``images`` and the world's own captions of each
(``WorldConfig.captions_per_image`` = M, so N x M captions, image n's caption c at row ``n * M + c``), as
Flickr30k's test split: every caption scored against every image gives an [N x M, N] score matrix; image
retrieval (IR) ranks the N images for each caption, text retrieval (TR) the N x M captions for each image, and the
gold is the caption's own image. The world needs ``vision_to_language=1`` so that every caption describes its
image. Chance: R@K = K / N for IR and, for TR (a hit when any of the image's M captions is among the top K),
1 - C(NM - M, K) / C(NM, K), about K M / (N M) = K / N for small K.

A caption may also describe another image of the set (the same classes and attributes in both): ``describes``
[N x M, N] marks every image holding every (class, attribute) a caption mentions (its relation words are not
checked), a multi-positive gold for scorers that want it; the own image is always marked.

Training items (``retrieval_options``) follow VOLTA's ``RetrievalDataset``: per caption 4 (caption, image)
options, the match first (cross-entropy target 0): (1) the caption with its image, (2) a random caption of the
set that does not describe that image, (3) the caption with a random image it does not describe, (4) the caption
with a HARD image: one holding a class the caption mentions but that it does not describe (a random one when none
is). Option draws depend only on ``(world, images, caption row, seed)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxvl.data.synthetic.tasks import check_images, example_rng, image_inputs, text_inputs
from jaxvl.data.synthetic.world import World
from jaxvl.data.tokenizer import Tokenizer

OPTIONS = 4
_TASK = 8


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
    """``images`` [N] world indices; ``captions`` [N x M]; ``caption_image`` [N x M] int64, the index in
    ``images`` of each caption's own image; ``describes`` bool [N x M, N] (module doc)."""

    images: np.ndarray
    captions: tuple[str, ...]
    caption_image: np.ndarray
    describes: np.ndarray


def retrieval_set(world: World, images: Sequence[int]) -> RetrievalSet:
    """The retrieval set of ``images`` (2 or more distinct world indices; module doc)."""
    if world.cfg.vision_to_language != 1.0:
        raise ValueError(f"vision_to_language={world.cfg.vision_to_language}: retrieval needs captions that "
                         "describe their image (vision_to_language=1)")
    index = check_images(world, images, least=2)
    shown = [world[i] for i in index]
    held = [{(o.label, o.attribute) for o in image.objects} for image in shown]
    captions, owner, rows = [], [], []
    for n, image in enumerate(shown):
        for caption, mentions in zip(image.captions, image.mentions, strict=True):
            named = {(k, a) for _, k, a in mentions}
            captions.append(caption)
            owner.append(n)
            rows.append([named <= h for h in held])
    return RetrievalSet(np.array(index, np.int64), tuple(captions), np.array(owner, np.int64),
                        np.array(rows, bool))


def retrieval_options(world: World, rset: RetrievalSet, seed: int = 0) -> np.ndarray:
    """int64 [N x M, 4, 2]: per caption row, VOLTA's 4 training options as (caption row, image index in the set),
    the match first (module doc). Raises ValueError when some caption describes every image of the set."""
    classes = [{o.label for o in world[int(i)].objects} for i in rset.images]
    out = np.zeros((len(rset.captions), OPTIONS, 2), np.int64)
    for c, p in enumerate(rset.caption_image):
        rng = example_rng(seed, _TASK, c)
        wrong_captions = np.flatnonzero(~rset.describes[:, p])
        wrong_images = np.flatnonzero(~rset.describes[c])
        if not len(wrong_images) or not len(wrong_captions):
            raise ValueError(f"caption {rset.captions[c]!r} describes every image of the set (or image {p} is "
                             "described by every caption); use more images")
        named = {w for w in rset.captions[c].split() if w in world.class_names}
        hard = [m for m in wrong_images if named & {world.class_names[k] for k in classes[m]}] or list(wrong_images)
        out[c] = [(c, p), (rng.choice(wrong_captions), p), (c, rng.choice(wrong_images)),
                  (c, hard[int(rng.integers(len(hard)))])]
    return out


def retrieval_batch(world: World, rset: RetrievalSet, pairs: np.ndarray, tokenizer: Tokenizer,
                    max_seq_length: int) -> dict[str, np.ndarray]:
    """(caption row, image index) pairs [..., 2] (e.g. ``retrieval_options`` [C, 4, 2]) -> model inputs with the
    pairs' leading shape S (L = R + 1, the global row first): ``input_ids``, ``token_type_ids``, ``text_mask``
    int32 [*S, T]; ``features`` [*S, L, D], ``locations`` [*S, L, 5], ``boxes`` [*S, L, 4] float32,
    ``region_mask`` [*S, L] int32; ``describes`` bool [*S] (whether the caption describes the image)."""
    pairs = np.asarray(pairs, np.int64)
    if pairs.ndim < 2 or pairs.shape[-1] != 2 or not pairs.size:
        raise ValueError(f"pairs: expected a non-empty [..., 2] array of (caption row, image index), got "
                         f"shape {pairs.shape}")
    shape, flat = pairs.shape[:-1], pairs.reshape(-1, 2)
    text = text_inputs([rset.captions[c] for c in flat[:, 0]], tokenizer, max_seq_length)
    images = image_inputs(world, [int(rset.images[m]) for m in flat[:, 1]])
    out = {k: v.reshape(*shape, *v.shape[1:]) for k, v in {**text, **images}.items()}
    out["describes"] = rset.describes[flat[:, 0], flat[:, 1]].reshape(shape)
    return out


__all__ = ["OPTIONS", "RetrievalSet", "retrieval_batch", "retrieval_options", "retrieval_set"]
