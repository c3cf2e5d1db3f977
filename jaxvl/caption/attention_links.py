"""Noun-phrase -> region links by label matching (``LabelLinker``), for the grounding analysis of
``jaxvl.caption.attention`` on data without gold links (COCO with detector classes): pass a ``LabelLinker``
as ``analyze(..., links=...)``. The rule is in the class docstring.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

import numpy as np

from jaxvl.data.caption_vocab import CaptionVocab

# Appendix B of Ilinykh & Dobnik (2022): spatial words never linked to an object; and pronouns.
SPATIAL_WORDS = frozenset({"right", "left", "top", "bottom", "back", "front", "far", "close", "side", "background",
                           "foreground", "middle", "corner"})
PRONOUNS = frozenset({"i", "me", "you", "he", "him", "she", "her", "it", "we", "us", "they", "them", "this", "that",
                      "these", "those", "one", "ones", "something", "someone", "itself", "themselves"})


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(w for w in (t.strip(string.punctuation) for t in text.lower().split()) if w)


class LabelLinker:
    """Noun-phrase -> region links by label matching, for data without gold links (COCO with detector classes).

    Rule (jaxvl's; no parser works offline here, see ``jaxvl.ablation.labelmatch``):

    1. a head noun is a run of caption words equal to a synonym of a detector label (the longest run
       ending at a word; the last word may also match in the singular: ``-s``, ``-es``, ``-ies`` -> ``-y``);
       a run inside a longer one, and a run directly followed by another (a noun-noun compound: the head
       is the last noun), are dropped; spatial words (the paper's Appendix B) and pronouns are never heads;
    2. the phrase's tokens are the head noun's words (determiners and adjectives are not attached);
    3. it is linked to every valid region whose detector class (``objects_id``) is a label it matches, with
       confidence ``objects_conf >= min_conf`` (ties link to all, as in the paper).

    Phrases without a linked region are dropped; past ``max_phrases`` per caption too (counted in
    ``dropped``). ``labels``: the detector's labels in (K+1)-space order, background first, each a
    comma-separated synonym list (Visual Genome's ``objects_vocab.txt`` lines, a dataset's ``label_list``).
    ``__call__(batch)`` -> ``phrase_spans`` [B, C, P, 2] int32, ``phrase_regions`` [B, C, P, R] bool.
    """

    def __init__(self, vocab: CaptionVocab, labels: Sequence[str], max_phrases: int = 8, min_conf: float = 0.0):
        if max_phrases < 1:
            raise ValueError(f"max_phrases={max_phrases} must be >= 1")
        self.vocab, self.max_phrases, self.min_conf = vocab, max_phrases, min_conf
        self.by_synonym: dict[tuple[str, ...], set[int]] = {}
        for index, label in enumerate(labels):
            for synonym in label.split(",") if index else ():
                words = _tokens(synonym)
                if words and not (len(words) == 1 and words[0] in SPATIAL_WORDS | PRONOUNS):
                    self.by_synonym.setdefault(words, set()).add(index - 1)  # K-space
        if not self.by_synonym:
            raise ValueError("LabelLinker: no usable label (expected background first, then the detector's labels)")
        self.longest = max(map(len, self.by_synonym))
        self.dropped = 0

    def _lookup(self, words: tuple[str, ...]) -> set[int]:
        found = self.by_synonym.get(words)
        if found:
            return found
        last = words[-1]
        for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
            if last.endswith(suffix) and len(last) > len(suffix) + 1:
                found = self.by_synonym.get((*words[:-1], last[:-len(suffix)] + repl))
                if found:
                    return found
        return set()

    def heads(self, words: Sequence[str]) -> list[tuple[int, int, frozenset[int]]]:
        """Head nouns of a caption's words: (start, end, K-space labels), rule steps 1-2."""
        words = tuple(w.lower() for w in words)
        found = []
        for end in range(1, len(words) + 1):
            for start in range(max(0, end - self.longest), end):
                labels = self._lookup(words[start:end])
                if labels:
                    found.append((start, end, frozenset(labels)))
                    break
        out = []
        for i, (start, end, labels) in enumerate(found):
            inside = any(s <= start and end <= e and (s, e) != (start, end) for s, e, _ in found)
            compound = i + 1 < len(found) and found[i + 1][0] == end
            if not inside and not compound:
                out.append((start, end, labels))
        return out

    def __call__(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        for key in ("objects_id", "objects_conf"):
            if key not in batch:
                raise ValueError(f"LabelLinker needs the batch's {key!r} (a dataset with detector classes, read with "
                                 "CaptionPipelineConfig(analysis_fields=True))")
        captions, lengths = np.asarray(batch["captions"]), np.asarray(batch["caption_lengths"])
        ids, conf = np.asarray(batch["objects_id"]), np.asarray(batch["objects_conf"])
        valid = np.asarray(batch["region_mask"]).astype(bool) & (conf >= self.min_conf)
        b, c = captions.shape[:2]
        spans = np.zeros((b, c, self.max_phrases, 2), np.int32)
        regions = np.zeros((b, c, self.max_phrases, ids.shape[1]), bool)
        for i in range(b):
            for j in range(c):
                words = [self.vocab.word_of(int(t)) for t in captions[i, j, 1:1 + lengths[i, j]]]
                p = 0
                for start, end, labels in self.heads(words):
                    linked = valid[i] & np.isin(ids[i], list(labels))
                    if not linked.any():
                        continue
                    if p == self.max_phrases:
                        self.dropped += 1
                        continue
                    spans[i, j, p] = start, end
                    regions[i, j, p] = linked
                    p += 1
        return spans, regions
