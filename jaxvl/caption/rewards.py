"""SCST rewards on the host: CIDEr-D of sampled and greedy captions as ORT computes them.

Captions are compared as token-id strings with the end token kept (ORT's ``get_self_critical_reward``),
against document frequencies of the training references (ORT's ``prepro_ngrams.py`` on
``coco-train-idxs``). The reward of sample ``j`` of image ``i`` is CIDEr-D(sample) - CIDEr-D(greedy).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def token_strings(tokens: np.ndarray) -> list[str]:
    """Rows of token ids (0 from the end on) -> ORT's reward strings: the ids through the first 0, kept."""
    out = []
    for row in np.asarray(tokens).reshape(-1, tokens.shape[-1]):
        ends = np.flatnonzero(row == 0)
        kept = row[: ends[0] + 1] if len(ends) else row
        out.append(" ".join(str(int(t)) for t in kept))
    return out


def reference_strings(captions: np.ndarray, lengths: np.ndarray, mask: np.ndarray) -> list[list[str]]:
    """Per image [C, T + 2] caption rows -> its real captions as id strings with the end token (``"w1 .. wL 0"``)."""
    refs = []
    for rows, lens, real in zip(captions, lengths, mask, strict=True):
        refs.append([" ".join(str(int(t)) for t in row[1:1 + n]) + " 0" for row, n, r in zip(rows, lens, real,
                                                                                            strict=True) if r])
    return refs


def training_cider(source: Any, max_images: int | None = None):
    """``CiderD`` with document frequencies of the training split's references (id strings, ORT's
    ``prepro_ngrams.py`` on ``coco-train-idxs``)."""
    from jaxvl.metrics import CiderD

    refs = []
    for i in range(len(source) if max_images is None else min(max_images, len(source))):
        ex = source[i]
        n = int(ex["num_captions"])
        caps, lens = np.asarray(ex["captions"])[:n], np.asarray(ex["caption_lengths"])[:n]
        refs.append([" ".join(str(int(t)) for t in row[:k]) + " 0" for row, k in zip(caps, lens, strict=True)])
    return CiderD(refs)


def scst_rewards(cider: Any, samples: np.ndarray, greedy: np.ndarray, captions: np.ndarray, lengths: np.ndarray,
                 caption_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Self-critical rewards of one batch, on the host.

    ``samples`` [B, S, T] and ``greedy`` [B, T] decoded token ids; ``captions`` [B, C, T + 2],
    ``lengths`` [B, C], ``caption_mask`` [B, C] the references (``jaxvl.caption.data`` fields); ``cider`` a
    ``CiderD`` (``training_cider``). Returns (rewards [B, S] float32 = CIDEr-D(sample) - CIDEr-D(greedy),
    sample scores [B, S], greedy scores [B]).
    """
    refs = reference_strings(captions, lengths, caption_mask)
    per_sample = [r for r in refs for _ in range(samples.shape[1])]
    sample_scores = cider.scores(token_strings(samples), per_sample).reshape(samples.shape[:2])
    greedy_scores = cider.scores(token_strings(greedy), refs)
    return (sample_scores - greedy_scores[:, None]).astype(np.float32), sample_scores, greedy_scores
