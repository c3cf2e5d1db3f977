"""The word vocabulary of the captioning model (ORT / self-critical.pytorch conventions).

Ids: 0 is the end token ``<end>``, which also pads and (as in ORT) starts a caption; words take ids
1..N in order; ``UNK`` is the last id, N + 1 (ORT appends it last, so beam search can penalise "the
last index"). The model predicts ``len(vocab)`` = N + 2 classes.

``CaptionVocab.build`` follows ``scripts/prepro_labels.py`` of ruotianluo/self-critical.pytorch (the
ORT copy is identical): count every token of the given captions; a word is kept iff its count is
**strictly greater** than ``count_threshold`` (default 5, ORT's ``--word_count_threshold 5``), so
words seen 5 times or fewer become ``UNK``; kept words are numbered in order of first appearance
(Python 3 dict order, which is what ``prepro_labels.py`` does under Python 3). Two deliberate
differences: ORT counts over every split of ``dataset_coco.json`` (val and test included) while the
callers here pass the training captions (``jaxvl.data.readers.coco_karpathy`` can count all splits
to match ``cocotalk.json``'s 9487 words); and ``UNK`` is always present, where ORT adds it only if
some word was dropped (captions of held-out images may hold words training never saw).

A vocabulary saves to / loads from JSON (``save`` / ``load``; ``load`` also reads ORT's
``cocotalk.json`` ``ix_to_word`` so released checkpoints keep their ids), and ``check_matches``
refuses a checkpoint trained with other ids, naming the first id that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

END = "<end>"
UNK = "UNK"
END_ID = 0
ORT_COUNT_THRESHOLD = 5  # prepro_labels.py --word_count_threshold: count <= 5 -> UNK
ORT_MAX_LENGTH = 16  # prepro_labels.py --max_length: longer captions are clipped
FORMAT = "jaxvl-caption-vocab"


class VocabMismatch(ValueError):
    """A vocabulary that differs from the one a checkpoint (or dataset) was made with."""


class CaptionVocab:
    """word <-> id for captions: ``<end>`` 0, ``words`` 1..N, ``UNK`` N + 1 (see the module doc)."""

    def __init__(self, words: Sequence[str], unk: str = UNK):
        words = list(words)
        if words and words[-1] == unk:
            words = words[:-1]  # a word list that already ends with UNK (ORT's ix_to_word)
        bad = [w for w in words if not isinstance(w, str) or not w or w == END or w == unk or " " in w]
        if bad:
            raise ValueError(f"caption vocabulary words must be non-empty strings without spaces, other than "
                             f"{END!r} and {unk!r} (UNK only last); got {bad[:5]}")
        self.words: tuple[str, ...] = (*words, unk)  # ids 1..N + 1
        self.unk = unk
        self._ids = {w: i + 1 for i, w in enumerate(self.words)}
        if len(self._ids) != len(self.words):
            dup = next(w for i, w in enumerate(self.words) if self._ids[w] != i + 1)
            raise ValueError(f"caption vocabulary lists {dup!r} twice")

    # ------------------------------------------------------------------------------------------ build

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], count_threshold: int = ORT_COUNT_THRESHOLD) -> CaptionVocab:
        """The vocabulary of tokenised ``captions``: words counted more than ``count_threshold`` times."""
        counts = word_counts(captions)
        return cls([w for w, n in counts.items() if n > count_threshold and w not in (END, UNK)])

    @classmethod
    def from_ix_to_word(cls, ix_to_word: Mapping[str | int, str], source: str = "ix_to_word") -> CaptionVocab:
        """ORT's ``cocotalk.json`` table ``{"1": word, ..., "N+1": "UNK"}`` (ids must be 1..M, UNK last)."""
        try:
            table = {int(k): v for k, v in ix_to_word.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: ix_to_word keys must be integers ({e})") from None
        if sorted(table) != list(range(1, len(table) + 1)):
            raise ValueError(f"{source}: ix_to_word ids must be exactly 1..{len(table)}")
        words = [table[i] for i in range(1, len(table) + 1)]
        if UNK in words[:-1]:
            raise ValueError(f"{source}: {UNK!r} must be the last id (ORT's layout); it is id {words.index(UNK) + 1}")
        return cls(words)

    # ------------------------------------------------------------------------------------------ ids

    def __len__(self) -> int:
        """Number of ids, 0 included: the size of the model's output layer."""
        return len(self.words) + 1

    @property
    def unk_id(self) -> int:
        return len(self.words)

    @property
    def end_id(self) -> int:
        return END_ID

    def __contains__(self, word: str) -> bool:
        return word in self._ids

    def id_of(self, word: str) -> int:
        """A word's id; ``UNK``'s for a word not in the vocabulary."""
        return self._ids.get(word, self.unk_id)

    def word_of(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(f"caption token id {index} outside [0, {len(self)})")
        return END if index == END_ID else self.words[index - 1]

    def encode(self, tokens: Sequence[str] | str, max_length: int | None = None) -> np.ndarray:
        """Tokens (or a space-separated string) -> int32 ids [n] (unknown words -> ``unk_id``; no end token),
        cut to ``max_length`` when given."""
        if isinstance(tokens, str):
            tokens = tokens.split()
        ids = np.fromiter((self.id_of(t) for t in tokens), np.int32, count=len(tokens))
        return ids if max_length is None else ids[:max_length]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> space-separated words, stopping at the first end token (0), as ORT's ``decode_sequence``.

        A pipeline caption row starts with the start token (also 0): decode ``row[1:]``.
        """
        words = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            words.append(self.word_of(i))
        return " ".join(words)

    # ------------------------------------------------------------------------------------------ files

    def ix_to_word(self) -> dict[str, str]:
        """ORT's ``cocotalk.json`` table: ``{"1": word, ..., str(unk_id): "UNK"}``."""
        return {str(i + 1): w for i, w in enumerate(self.words)}

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "end": END, "end_id": END_ID, "unk": self.unk,
                "unk_id": self.unk_id, "size": len(self), "words": list(self.words[:-1])}

    @classmethod
    def from_json(cls, data: Any, source: str = "vocabulary") -> CaptionVocab:
        """A vocabulary from ``to_json``'s dict, or from a dict holding ORT's ``ix_to_word``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a caption vocabulary must be a JSON object; got {type(data).__name__}")
        if "ix_to_word" in data and "words" not in data:
            return cls.from_ix_to_word(data["ix_to_word"], source)
        if data.get("format") != FORMAT or not isinstance(data.get("words"), list):
            raise ValueError(f"{source}: neither a {FORMAT} file (format, words) nor a cocotalk.json (ix_to_word)")
        try:
            vocab = cls(data["words"], unk=data.get("unk", UNK))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        if "size" in data and data["size"] != len(vocab):
            raise ValueError(f"{source}: says size {data['size']} but lists {len(vocab)} ids")
        return vocab

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, ensure_ascii=False, indent=0)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CaptionVocab:
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_json(data, path)

    # ------------------------------------------------------------------------------------------ checks

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CaptionVocab) and self.words == other.words

    def __hash__(self) -> int:
        return hash(self.words)

    def __repr__(self) -> str:
        return f"CaptionVocab({len(self)} ids: {END!r}, {len(self.words) - 1} words, {self.unk!r})"

    def fingerprint(self) -> str:
        """sha256 of the id -> word table (store it with a checkpoint; equal fingerprints = same ids)."""
        return hashlib.sha256(json.dumps(self.words, ensure_ascii=False).encode()).hexdigest()

    def check_matches(self, other: CaptionVocab | Mapping[str, Any], what: str = "checkpoint") -> None:
        """Raises ``VocabMismatch`` unless ``other`` (a vocabulary or its ``to_json`` dict, e.g. from a
        checkpoint's metadata) gives every id the same word; the message names the first difference."""
        if not isinstance(other, CaptionVocab):
            other = CaptionVocab.from_json(other, what)
        if other == self:
            return
        if len(other) != len(self):
            msg = f"the {what} has {len(other)} caption ids, the data {len(self)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(self.words, other.words, strict=True)) if a != b) + 1
            msg = f"id {i} is {other.word_of(i)!r} in the {what} but {self.word_of(i)!r} in the data"
        raise VocabMismatch(f"caption vocabulary mismatch: {msg} (fingerprints {other.fingerprint()[:12]} vs "
                            f"{self.fingerprint()[:12]}); decode with the vocabulary the {what} was trained with")


def word_counts(captions: Iterable[Sequence[str]]) -> dict[str, int]:
    """Token -> count over tokenised captions, in order of first appearance."""
    counts: dict[str, int] = {}
    for tokens in captions:
        for w in tokens:
            counts[w] = counts.get(w, 0) + 1
    return counts
