"""CIDEr-D (Vedantam et al. 2015) exactly as coco-caption computes it (pycocoevalcap ``Cider``, ``vrama91/cider``
``CiderD``), with document frequencies that can come from the evaluated references or a training corpus.

Definitions (tokens from ``str.split()``, n = 1..4, sigma = 6):

- ``df(g)``: the number of images whose references (any of them) contain n-gram ``g``; ``ref_len =
  log(number of images in the df corpus)``.
- A caption's vector for order n holds ``tf(g) * (ref_len - log(max(1, df(g))))`` for each of its n-grams
  (an n-gram never seen in the df corpus gets the full ``ref_len``); ``norm_n`` is its Euclidean norm.
- Against one reference: ``val_n = sum_g min(c_g, r_g) * r_g / (norm_c * norm_r)`` (the "clipping" of CIDEr-D;
  the division is skipped when a norm is 0), times ``exp(-delta^2 / (2 sigma^2))``.
- Image score: ``10 * mean_n(sum_refs val_n) / num_refs``; the corpus score is the mean over images.

coco-caption's length ``delta`` is the difference of the two captions' *bigram* counts (``max(0, len - 1)``; its
``counts2vec`` adds ``term_freq`` when the 0-based order index is 1), kept here. It equals the word-count
difference whenever both captions have words, and an empty caption scores 0 either way.

:class:`CiderD` holds the df of a fixed reference corpus, so self-critical training can score thousands of
sampled captions per step against the *training* references' df (ORT's ``--cached_tokens coco-train-idxs``,
``ruotianluo/cider`` with a df pickle) without recounting. :func:`cider_d` is the evaluation form, where the
df corpus is the evaluated references themselves.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from jaxvl.metrics.common import check_aligned, ngram_lists

SIGMA = 6.0
MAX_N = 4

# A caption's tf-idf vector: one {n-gram: weight} dict per order, its per-order norms and its bigram count.
_Vector = tuple[list[dict[str, float]], list[float], int]


def document_frequency(references: Sequence[Sequence[str]], max_n: int = MAX_N) -> dict[str, int]:
    """``df(g)``: in how many of the images (one reference list each) any reference contains n-gram ``g``.

    Keys are n-grams as space-joined words (``"a dog"``), all orders in one dict.
    """
    df: dict[str, int] = {}
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not len(refs):
            raise ValueError(f"CIDEr-D: reference list {i} of the df corpus must be a non-empty list of captions")
        grams: set[str] = set()
        for ref in refs:
            for order in ngram_lists(ref.split(), max_n):
                grams.update(order)
        for gram in grams:
            df[gram] = df.get(gram, 0) + 1
    return df


class CiderD:
    """CIDEr-D scorer with document frequencies fixed at construction.

    ``CiderD(refs_corpus)`` counts the df over ``refs_corpus`` (one list of tokenised references per image) once;
    ``scores(candidates, refs)`` then gives each candidate's CIDEr-D against its own references. With
    ``refs_corpus`` equal to the evaluated references this is exactly pycocoevalcap's ``Cider``.
    Any space-separated tokens work, e.g. word ids as strings for SCST rewards.
    """

    def __init__(self, refs_corpus: Sequence[Sequence[str]], *, sigma: float = SIGMA, max_n: int = MAX_N):
        if isinstance(refs_corpus, str) or not len(refs_corpus):
            raise ValueError("CIDEr-D: the df corpus needs at least one image's reference list")
        self._init(document_frequency(refs_corpus, max_n), len(refs_corpus), sigma, max_n)

    @classmethod
    def from_document_frequency(cls, df: Mapping[str | tuple[str, ...], float], num_images: int, *,
                                sigma: float = SIGMA, max_n: int = MAX_N) -> CiderD:
        """A scorer from precomputed ``df`` (n-gram -> image count) over ``num_images`` images.

        N-grams are space-joined strings or, as in coco-caption and the ruotianluo/ORT df pickles, tuples of
        words: ``df = pkl['document_frequency']``, ``num_images = pkl['ref_len']`` (the pickle stores the image
        count; the scorer takes its log).
        """
        if num_images < 1:
            raise ValueError(f"CIDEr-D: num_images must be >= 1, got {num_images}")
        scorer = cls.__new__(cls)
        scorer._init({g if isinstance(g, str) else " ".join(g): d for g, d in df.items()}, num_images, sigma, max_n)
        return scorer

    def _init(self, df: Mapping[str, float], num_images: int, sigma: float, max_n: int) -> None:
        self.num_images = num_images
        self.sigma = sigma
        self.max_n = max_n
        self._ref_len = math.log(float(num_images))
        # The weight ref_len - log(max(1, df)) of every n-gram of the df corpus; an unseen n-gram gets ref_len.
        self._idf = {g: self._ref_len - (math.log(d) if d > 1.0 else 0.0) for g, d in df.items()}

    def idf(self, ngram: str) -> float:
        """The weight of one occurrence of ``ngram`` (space-joined words): ``log(num_images) - log(max(1, df))``."""
        return self._idf.get(ngram, self._ref_len)

    def _vector(self, caption: str) -> _Vector:
        words = caption.split()
        idf, ref_len = self._idf.get, self._ref_len
        vecs, norms = [], []
        for grams in ngram_lists(words, self.max_n):
            vec = {g: tf * idf(g, ref_len) for g, tf in Counter(grams).items()}
            vecs.append(vec)
            norms.append(math.hypot(*vec.values()))
        # coco-caption's "length" is the number of bigram occurrences (module docstring)
        return vecs, norms, max(0, len(words) - 1)

    def _similarity(self, cand: _Vector, ref: _Vector) -> list[float]:
        """``val_n`` of one candidate against one reference, per order n (module docstring)."""
        cvec, cnorm, clen = cand
        rvec, rnorm, rlen = ref
        penalty = math.exp(-float(clen - rlen) ** 2 / (2 * self.sigma**2))
        out = []
        for k in range(self.max_n):
            c, r = cvec[k], rvec[k]
            small, large = (c, r) if len(c) <= len(r) else (r, c)
            val = 0.0
            for gram in small:
                if gram in large:
                    rw = r[gram]
                    val += min(c[gram], rw) * rw
            if cnorm[k] != 0 and rnorm[k] != 0:
                val /= cnorm[k] * rnorm[k]
            out.append(val * penalty)
        return out

    def scores(self, candidates: Sequence[str], refs: Sequence[Sequence[str]]) -> np.ndarray:
        """Per-caption CIDEr-D, shape ``(N,)`` float64, of ``candidates[i]`` against ``refs[i]``.

        Repeated captions (the several samples of one image share its references in SCST) are vectorised once.
        """
        check_aligned(candidates, refs, "CIDEr-D")
        cache: dict[str, _Vector] = {}

        def vector(caption: str) -> _Vector:
            v = cache.get(caption)
            if v is None:
                v = cache[caption] = self._vector(caption)
            return v

        out = np.empty(len(candidates), np.float64)
        for i, (cand, image_refs) in enumerate(zip(candidates, refs, strict=True)):
            cv = vector(cand)
            total = [0.0] * self.max_n
            for ref in image_refs:
                for k, val in enumerate(self._similarity(cv, vector(ref))):
                    total[k] += val
            out[i] = sum(total) / self.max_n / len(image_refs) * 10.0
        return out


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], *, sigma: float = SIGMA
            ) -> tuple[float, np.ndarray]:
    """Mean and per-image CIDEr-D with the df counted on ``references`` (coco-caption evaluation).

    Args:
      candidates: ``N`` tokenised captions, one per image.
      references: ``N`` non-empty lists of tokenised reference captions (also the df corpus).
      sigma: width of the Gaussian length penalty.

    Returns:
      ``(mean, per_image)`` with ``per_image`` of shape ``(N,)``.
    """
    check_aligned(candidates, references, "CIDEr-D")
    scores = CiderD(references, sigma=sigma).scores(candidates, references)
    return float(np.mean(scores)), scores
