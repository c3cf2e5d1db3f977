"""BLEU-1..4 with coco-caption's conventions (pycocoevalcap ``Bleu(4)``, i.e. ``BleuScorer(option='closest')``).

For every candidate (tokens from ``str.split()``):

- ``guess_k = max(0, len - k + 1)`` and ``correct_k = sum_g min(count_cand(g), max_r count_r(g))`` over its
  k-grams (counts clipped by the largest count in any one reference);
- the effective reference length is the reference length *closest* to the candidate length, ties going to
  the shorter reference.

Corpus BLEU-n sums ``correct``, ``guess``, candidate and reference lengths over all images and returns
``(prod_{k<=n} (correct_k + 1e-15) / (guess_k + 1e-9)) ** (1/n)``, times the brevity penalty
``exp(1 - 1/ratio)`` when ``ratio = (testlen + 1e-15) / (reflen + 1e-9) < 1``. The 1e-15/1e-9 terms are
coco-caption's smoothing: a zero match count gives a (near-)zero score instead of a log(0) error, and a
candidate too short to have k-grams gets precision 1e-6 instead of 0/0 for that order. The per-image scores use
the same formula on one image's counts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from jaxvl.metrics.common import check_aligned, ngram_lists

_TINY = 1e-15  # added to match counts ("so that if guess is 0 still return 0")
_SMALL = 1e-9  # added to guess counts and lengths (avoids division by zero)


def _cumulative_bleu(correct: Sequence[float], guess: Sequence[float], testlen: float, reflen: float) -> list[float]:
    """BLEU-1..n from summed counts: running product of precisions, k-th root, brevity penalty."""
    scores, product = [], 1.0
    for k, (c, g) in enumerate(zip(correct, guess, strict=True)):
        product *= (c + _TINY) / (g + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def corpus_bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4
                ) -> tuple[np.ndarray, np.ndarray]:
    """Corpus and per-image BLEU-1..``max_n``.

    Args:
      candidates: ``N`` tokenised captions, one per image.
      references: ``N`` non-empty lists of tokenised reference captions.
      max_n: highest n-gram order.

    Returns:
      ``(corpus, per_image)``: ``corpus[k]`` (shape ``(max_n,)``) is corpus BLEU-(k+1) and ``per_image[k, i]``
      (shape ``(max_n, N)``) image ``i``'s BLEU-(k+1), as pycocoevalcap's ``Bleu.compute_score`` returns them.
    """
    check_aligned(candidates, references, "BLEU")
    total_correct, total_guess = [0] * max_n, [0] * max_n
    total_testlen = total_reflen = 0
    per_image = np.empty((max_n, len(candidates)), np.float64)
    for i, (cand, refs) in enumerate(zip(candidates, references, strict=True)):
        words = cand.split()
        testlen = len(words)
        max_ref_counts: list[dict[str, int]] = [{} for _ in range(max_n)]
        ref_lens = []
        for ref in refs:
            ref_words = ref.split()
            ref_lens.append(len(ref_words))
            for k, grams in enumerate(ngram_lists(ref_words, max_n)):
                best = max_ref_counts[k]
                for gram, count in Counter(grams).items():
                    if count > best.get(gram, 0):
                        best[gram] = count
        reflen = min((abs(length - testlen), length) for length in ref_lens)[1]
        correct = [sum(min(max_ref_counts[k].get(gram, 0), count) for gram, count in Counter(grams).items())
                   for k, grams in enumerate(ngram_lists(words, max_n))]
        guess = [max(0, testlen - k) for k in range(max_n)]
        per_image[:, i] = _cumulative_bleu(correct, guess, testlen, reflen)
        total_testlen += testlen
        total_reflen += reflen
        for k in range(max_n):
            total_correct[k] += correct[k]
            total_guess[k] += guess[k]
    corpus = np.asarray(_cumulative_bleu(total_correct, total_guess, total_testlen, total_reflen), np.float64)
    return corpus, per_image
