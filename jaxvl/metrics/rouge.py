"""ROUGE-L with coco-caption's conventions (pycocoevalcap ``Rouge``).

Per image, with tokens from ``str.split(" ")`` (a single space, as coco-caption splits; an empty caption is
then one empty token):

- ``P = max_r LCS(cand, r) / len(cand)`` and ``R = max_r LCS(cand, r) / len(r)``, each maximised over the
  references *separately* (not the F-measure of the best reference);
- ``ROUGE-L = (1 + beta^2) P R / (R + beta^2 P)`` with ``beta = 1.2``, or 0 when ``P`` or ``R`` is 0.

The corpus score is the mean over images. The LCS length uses the bit-parallel recurrence of Allison and
Dix (1986) / Hyyro (2004) on Python integers, which gives exactly the dynamic-programming length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxvl.metrics.common import check_aligned

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit ``i`` of ``v`` is 0 where the LCS of ``a[:i+1]`` and the ``b`` prefix seen so far gains one token; each
    token of ``b`` updates all of ``a``'s positions with one addition (``v + u`` carries the matches along).
    """
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        m = masks.get(token)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_single(candidate: str, refs: Sequence[str], beta: float = BETA) -> float:
    """ROUGE-L F-measure of one candidate against its references (module docstring)."""
    cand = candidate.split(" ")
    prec_max = rec_max = 0.0
    for ref in refs:
        tokens = ref.split(" ")
        lcs = lcs_length(tokens, cand)
        prec_max = max(prec_max, lcs / len(cand))
        rec_max = max(rec_max, lcs / len(tokens))
    if prec_max == 0 or rec_max == 0:
        return 0.0
    return ((1 + beta**2) * prec_max * rec_max) / (rec_max + beta**2 * prec_max)


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = BETA
            ) -> tuple[float, np.ndarray]:
    """Mean and per-image ROUGE-L.

    Args:
      candidates: ``N`` tokenised captions, one per image.
      references: ``N`` non-empty lists of tokenised reference captions.
      beta: recall weight of the F-measure (coco-caption: 1.2).

    Returns:
      ``(mean, per_image)`` with ``per_image`` of shape ``(N,)``.
    """
    check_aligned(candidates, references, "ROUGE-L")
    scores = np.array([rouge_l_single(c, refs, beta) for c, refs in zip(candidates, references, strict=True)],
                      np.float64)
    return float(np.mean(scores)), scores
