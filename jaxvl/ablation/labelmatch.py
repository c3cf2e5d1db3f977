"""LabelMatch (reference section 5.4): phrases whose head nouns name exactly one detector label.

The paper (``notebooks/Data-MakeLabelMatch.ipynb``) tags each phrase with stanza and keeps its
NOUN/PROPN words, lower-cased; the phrase matches a Visual Genome label when that word list equals the
word list of one of the label's comma-separated synonyms, and it enters LabelMatch when exactly one
label matches (10,159 of Flickr30k Entities' 14,433 val phrases). On that subset the report gives the
detector's agreement with the label at the lang4vis target region (top-1/3/5/10, rank, probability)
and the models' MRC-XE against it (MRC-XE-VG); LabelMatch-agree is the part where the detector's top
class is the label.

No part-of-speech tagger works offline here: stanza and spaCy download their models at run time
(stanza from the Hugging Face hub, spaCy from GitHub releases; the spaCy "models" on PyPI are
unofficial re-uploads), and NLTK's averaged-perceptron tagger data is fetched by ``nltk.download``
from GitHub, which fails without that host. So the nouns come from a documented rule
(``rule_nouns``), unless a tagger is passed in (``LabelMatcher(..., nouns=fn)``):

1. lower-case the phrase, split on whitespace, strip punctuation around each word;
2. cut it before the first post-modifier after its first word (a preposition, conjunction or
   relative pronoun: ``POST_MODIFIERS``), so "a man in a blue shirt" keeps "a man";
3. the head noun is the last word left; the nouns are the longest run of words ending at the head
   that is a synonym of some label ("a tennis racket" -> "tennis racket" when that is a label), else
   the head alone.

Where it differs from stanza: a compound whose modifier is a noun but whose whole is no label
("orange safety vest") gives the head ("vest") where stanza's ["safety", "vest"] matches nothing, and
a phrase whose head is no noun at all (a pronoun, "the left") matches only if that word is a label.
On the synthetic world (phrases "a <attribute> <class>") the rule is exact.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

from jaxvl.data.readers.visual_genome import VGVocab

POST_MODIFIERS = frozenset({
    "of", "with", "in", "on", "at", "near", "next", "by", "from", "under", "over", "behind", "beside", "between",
    "into", "onto", "through", "across", "against", "along", "around", "among", "above", "below", "beneath",
    "inside", "outside", "toward", "towards", "while", "who", "which", "that", "whose", "and", "or", "but", "as",
    "for", "to", "wearing", "holding", "sitting", "standing",
})
TOP_K = (1, 3, 5, 10)


def _words(phrase: str) -> list[str]:
    out = [w.strip(string.punctuation) for w in phrase.lower().split()]
    return [w for w in out if w]


class LabelMatcher:
    """Matches phrases to detector labels. ``synonyms[i]``: the synonyms of (K+1)-space label ``i``
    (index 0, the background, never matches). ``nouns``: a tagger ``phrase -> noun words``; default
    the rule of the module doc. ``tagger`` names which one was used (for the report)."""

    def __init__(self, synonyms: Sequence[Sequence[str]], nouns: Callable[[str], Sequence[str]] | None = None,
                 tagger: str | None = None):
        self.by_synonym: dict[str, set[int]] = {}
        for i, syns in enumerate(synonyms):
            if i == 0:
                continue
            for s in syns:
                key = " ".join(_words(s))
                if key:
                    self.by_synonym.setdefault(key, set()).add(i)
        self.num_labels = len(synonyms)
        self._nouns = nouns
        self.tagger = tagger or ("rule" if nouns is None else getattr(nouns, "__name__", "custom tagger"))
        self._cache: dict[str, int] = {}

    @classmethod
    def from_vocab(cls, vocab: VGVocab, **kwargs: Any) -> LabelMatcher:
        """From a Visual Genome ``objects_vocab.txt`` (``jaxvl.data.readers.visual_genome.load_objects_vocab``)."""
        return cls(vocab.synonyms, **kwargs)

    @classmethod
    def from_label_list(cls, labels: Sequence[str], **kwargs: Any) -> LabelMatcher:
        """From label strings in (K+1)-space order, background first, each a comma-separated synonym list
        (a dataset's ``label_list`` metadata, e.g. the synthetic world's)."""
        return cls([[s for s in label.split(",")] for label in labels], **kwargs)

    def nouns(self, phrase: str) -> tuple[str, ...]:
        """The phrase's noun words: the tagger's, or ``rule_nouns``."""
        if self._nouns is not None:
            return tuple(w.lower() for w in self._nouns(phrase))
        return rule_nouns(phrase, self.by_synonym)

    def matches(self, phrase: str) -> set[int]:
        """Every label one of whose synonyms equals the phrase's nouns."""
        return set(self.by_synonym.get(" ".join(self.nouns(phrase)), set()))

    def match(self, phrase: str) -> int:
        """The (K+1)-space label when exactly one label matches, else -1."""
        if phrase not in self._cache:
            found = self.matches(phrase)
            self._cache[phrase] = found.pop() if len(found) == 1 else -1
        return self._cache[phrase]


def rule_nouns(phrase: str, synonyms: Sequence[str] | dict[str, Any]) -> tuple[str, ...]:
    """The module doc's rule: the longest label synonym ending at the head noun, else the head alone."""
    words = _words(phrase)
    for i, w in enumerate(words[1:], start=1):
        if w in POST_MODIFIERS:
            words = words[:i]
            break
    if not words:
        return ()
    for start in range(len(words)):
        if " ".join(words[start:]) in synonyms:
            return tuple(words[start:])
    return (words[-1],)


def detector_rows(result: Any) -> list[dict[str, Any]]:
    """Detector agreement with the LabelMatch labels at the lang4vis target region, per IoT threshold:
    examples in LabelMatch, those with a target, top-1/3/5/10 agreement, mean 0-based rank and mean
    probability of the label, and the size of LabelMatch-agree. ``result``: an ``AblationResult``."""
    if result.vg_label is None or "lang4vis" not in result.values:
        return []
    labelled = result.vg_label >= 0
    rows, seen = [], set()
    for m, member in enumerate(result.members["lang4vis"]):
        if member.threshold in seen:
            continue  # the detector does not depend on the text condition
        seen.add(member.threshold)
        rank = result.stats["detector_rank"][m]
        ok = labelled & result.stats["has_target"][m].astype(bool)
        n = int(ok.sum())
        row: dict[str, Any] = dict(threshold=member.threshold, labelmatch=int(labelled.sum()), with_target=n)
        for k in TOP_K:
            row[f"top{k}"] = float((rank[ok] < k).mean()) if n else None
        row["mean_rank"] = float(rank[ok].mean()) if n else None
        row["mean_prob"] = float(result.stats["detector_prob"][m][ok].mean()) if n else None
        row["agree"] = int((rank[ok] == 0).sum())
        rows.append(row)
    return rows
