"""Image-text retrieval metrics as VOLTA's ``eval_retrieval.py`` computes them: R@1/5/10, median and mean rank.

The inputs are a score matrix ``scores`` [N captions, M images] (higher = better match) and ``caption_image``
[N], the index of each caption's own (gold) image (Flickr30k test: 5,000 captions, 1,000 images, 5 each).

- **Image retrieval** (IR): per caption, the 0-based rank of its gold image among all M images by score.
- **Text retrieval** (TR): per image, the best (smallest) rank of its gold captions among all N captions.

From a rank vector ``r`` (0-based): R@K = 100 * mean(r < K), median rank = floor(median(r) + 1), mean rank =
mean(r) + 1 (VOLTA's exact formulas, 1-based ranks in the two last).

**Ties.** VOLTA takes the rank as the position in ``np.argsort(-scores)``, numpy's default (unstable)
quicksort, so where the gold score ties another its rank depends on the sort. Two deterministic rules here:

- ``ties="stable"`` (default): the position in a *stable* descending sort, i.e. the number of candidates that
  score higher plus those that score equal and come earlier (lower index). Equal to VOLTA's rank whenever no
  score ties the gold one, and to ``np.argsort(-scores, kind="stable")`` always.
- ``ties="optimistic"``: only candidates that score strictly higher count (ties in favour of the gold).

For TR the best gold caption of an image is its highest-scoring one (under ``stable``, the lowest index among
equals), since a stable sort places that caption first among the image's captions.
"""

from __future__ import annotations

import numpy as np

TIES = ("stable", "optimistic")
RECALL_AT = (1, 5, 10)


def check_ties(ties: str) -> str:
    """Returns ``ties`` or raises ValueError unless it is one of ``TIES``."""
    if ties not in TIES:
        raise ValueError(f"retrieval: 'ties' must be one of {TIES}, got {ties!r}")
    return ties


def check_caption_image(caption_image: np.ndarray | list[int], num_images: int) -> np.ndarray:
    """``caption_image`` [N] as int64, or ValueError naming the first bad caption or the first image without a
    caption (text retrieval needs at least one gold caption per image)."""
    arr = np.asarray(caption_image)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"retrieval: 'caption_image' must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"retrieval: 'caption_image' must hold integer image indices, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= num_images))
    if bad.size:
        raise ValueError(f"retrieval: 'caption_image' of caption {int(bad[0])} is {int(arr[bad[0]])}, not an image "
                         f"index in [0, {num_images})")
    missing = np.flatnonzero(np.bincount(arr, minlength=num_images) == 0)
    if missing.size:
        raise ValueError(f"retrieval: image {int(missing[0])} has no caption in 'caption_image' (text retrieval "
                         "ranks every image's gold captions)")
    return arr.astype(np.int64)


def _check_scores(scores: np.ndarray, caption_image: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"retrieval: 'scores' must be [N captions, M images], got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("retrieval: 'scores' holds NaN")
    caption_image = check_caption_image(caption_image, scores.shape[1])
    if caption_image.shape[0] != scores.shape[0]:
        raise ValueError(f"retrieval: 'caption_image' has {caption_image.shape[0]} captions, 'scores' "
                         f"{scores.shape[0]} rows")
    return scores, caption_image


def rank_of(scores: np.ndarray, gold: np.ndarray, ties: str = "stable") -> np.ndarray:
    """[Q, C] candidate scores and [Q] gold candidate indices -> [Q] 0-based ranks of the gold candidates
    (the number of candidates ahead of the gold one under the ``ties`` rule)."""
    check_ties(ties)
    q = np.arange(scores.shape[0])
    g = scores[q, gold][:, None]
    ahead = scores > g
    if ties == "stable":
        ahead |= (scores == g) & (np.arange(scores.shape[1])[None, :] < gold[:, None])
    return ahead.sum(1)


def best_gold_captions(gold_scores: np.ndarray, caption_image: np.ndarray, num_images: int) -> np.ndarray:
    """[N] gold-pair scores -> [M] the caption of each image that ranks first among its captions: the highest
    score, the lowest caption index among equals."""
    order = np.lexsort((np.arange(len(caption_image)), -np.asarray(gold_scores, np.float64), caption_image))
    first = np.ones(len(order), bool)
    first[1:] = caption_image[order[1:]] != caption_image[order[:-1]]
    best = np.empty(num_images, np.int64)
    best[caption_image[order[first]]] = order[first]
    return best


def image_retrieval_ranks(scores: np.ndarray, caption_image: np.ndarray | list[int], ties: str = "stable"
                          ) -> np.ndarray:
    """[N, M] scores -> [N] 0-based rank of each caption's gold image among the M images."""
    scores, caption_image = _check_scores(scores, caption_image)
    return rank_of(scores, caption_image, ties)


def text_retrieval_ranks(scores: np.ndarray, caption_image: np.ndarray | list[int], ties: str = "stable"
                         ) -> np.ndarray:
    """[N, M] scores -> [M] 0-based rank, per image, of its best gold caption among the N captions."""
    scores, caption_image = _check_scores(scores, caption_image)
    gold = scores[np.arange(len(caption_image)), caption_image]
    best = best_gold_captions(gold, caption_image, scores.shape[1])
    return rank_of(scores.T, best, ties)


def recall_summary(ranks: np.ndarray) -> dict[str, float]:
    """[Q] 0-based ranks -> ``r1``, ``r5``, ``r10`` (percent), ``medr`` and ``meanr`` (1-based), as VOLTA."""
    ranks = np.asarray(ranks, np.float64)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"retrieval: 'ranks' must be a non-empty 1-D array, got shape {ranks.shape}")
    out = {f"r{k}": float(100.0 * np.sum(ranks < k) / len(ranks)) for k in RECALL_AT}
    out["medr"] = float(np.floor(np.median(ranks) + 1))
    out["meanr"] = float(np.mean(ranks) + 1)
    return out


def retrieval_metrics(image_ranks: np.ndarray, text_ranks: np.ndarray) -> dict[str, float]:
    """IR ranks [N] and TR ranks [M] -> one flat dict: ``ir_r1`` .. ``ir_meanr``, ``tr_r1`` .. ``tr_meanr``."""
    out = {f"ir_{k}": v for k, v in recall_summary(image_ranks).items()}
    out.update({f"tr_{k}": v for k, v in recall_summary(text_ranks).items()})
    return out


def score_matrix_metrics(scores: np.ndarray, caption_image: np.ndarray | list[int], ties: str = "stable"
                         ) -> dict[str, float]:
    """All of ``retrieval_metrics`` from a full [N, M] score matrix (small evaluations, checks)."""
    return retrieval_metrics(image_retrieval_ranks(scores, caption_image, ties),
                             text_retrieval_ranks(scores, caption_image, ties))
