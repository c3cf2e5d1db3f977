"""What every caption scorer shares: the check of aligned candidate/reference lists and n-gram extraction.

Scorers take already tokenised strings (tokens separated by spaces, as :func:`jaxvl.metrics.ptb.ptb_tokenize`
or pycocoevalcap's PTBTokenizer produce them): ``candidates[i]`` is the one caption for image ``i`` and
``references[i]`` its non-empty list of reference captions.
"""

from __future__ import annotations

from collections.abc import Sequence


def check_aligned(candidates: Sequence[str], references: Sequence[Sequence[str]], metric: str) -> None:
    """Raise ``ValueError``/``TypeError`` naming the offending index unless the inputs are aligned captions."""
    if isinstance(candidates, str) or isinstance(references, str):
        raise TypeError(f"{metric}: candidates and references must be sequences of captions, not one string")
    if len(candidates) != len(references):
        raise ValueError(f"{metric}: {len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError(f"{metric}: no captions to score")
    for i, (cand, refs) in enumerate(zip(candidates, references, strict=True)):
        if not isinstance(cand, str):
            raise TypeError(f"{metric}: candidate {i} is {type(cand).__name__}, expected str")
        if isinstance(refs, str) or not len(refs):
            raise ValueError(f"{metric}: references {i} must be a non-empty list of captions, got {refs!r}")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise TypeError(f"{metric}: reference {j} of caption {i} is {type(ref).__name__}, expected str")


def ngram_lists(words: Sequence[str], max_n: int) -> list[list[str]]:
    """The 1..``max_n``-grams of ``words`` in order, one list per order (index ``k - 1`` holds the k-grams).

    An n-gram is its words joined by single spaces (unambiguous: tokens never contain whitespace), which hashes
    faster than coco-caption's tuples; an order longer than ``words`` has an empty list.
    """
    grams = list(words)
    out = [grams]
    for k in range(2, max_n + 1):
        grams = [g + " " + w for g, w in zip(grams, words[k - 1:], strict=False)]
        out.append(grams)
    return out
