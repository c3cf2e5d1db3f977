"""Flickr30k Entities -> ``AblationExample`` (the cross-modal ablation's data, reference section 5.1).

On disk (github.com/BryanPlummer/flickr30k_entities):

- ``train.txt`` / ``val.txt`` / ``test.txt``: one image id per line (val: 1000 images);
- ``Sentences/<id>.txt``: five captions, one per line, each annotated phrase written
  ``[/EN#<chain id>/<type 1>/.../<type n> <word 1> ... <word n>]`` (the ``[/EN#...`` token holds no
  word; the phrase closes at the first word token ending in ``]``). Chain id ``0`` marks ``notvisual``
  phrases, which have no boxes;
- ``Annotations/<id>.xml``: PASCAL-VOC-like; ``<size>`` with ``<width>``/``<height>``, and ``<object>``
  elements each naming one or more chain ids (``<name>``) and holding either a ``<bndbox>`` (1-based
  ``xmin ymin xmax ymax``) or the ``<nobndbox>`` / ``<scene>`` flags.

As in VOLTA's ``load_annotations`` (``flickr30ke_ablation_dataset.py``): a sentence is the caption's
words (brackets and entity tags removed) joined by single spaces; every annotated phrase whose chain
has at least one box gives one example (scene-only / no-box / notvisual phrases are dropped; the val
split yields 14,433); ``ref_boxes`` holds every box of that chain converted to 0-based
``[xmin-1, ymin-1, xmax-1, ymax-1]``; ``first_word_index`` is the phrase's first word in
``sentence.split(" ")``; ``sentence_index`` counts the file's non-empty lines from 0.

``phrase_token_span`` maps a phrase to its sub-word positions the way VOLTA builds the masked-phrase
input (section 5.1), in the coordinates of ``Tokenizer.encode(sentence)`` (``[CLS]`` at 0).

Bad input (missing or empty sentence/annotation file, malformed XML, non-integer or flipped
coordinates, a bracket that never closes, an unknown ``[/EN#...`` tag, a phrase that does not occur in
its sentence) raises ``BadRecord`` naming the file and the image / line; with ``skip_bad=True`` a bad
image or a bad caption line is logged, counted (``Flickr30kEntities.skipped``) and skipped.
"""

from __future__ import annotations

import dataclasses
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence

import numpy as np

from jaxvl.data.records import AblationExample, BadRecord, RecordErrors, check_ablation_example
from jaxvl.data.tokenizer import Tokenizer

SPLITS = ("train", "val", "test")
_ENTITY_TAG = re.compile(r"\[/EN#(\d+)((?:/[A-Za-z_]+)+)")


@dataclasses.dataclass
class Phrase:
    """One annotated phrase of a caption."""

    first_word_index: int
    phrase: str
    entity_id: str
    phrase_types: tuple[str, ...]


@dataclasses.dataclass
class Caption:
    """One caption line: the plain sentence and its annotated phrases."""

    sentence: str
    phrases: list[Phrase]


@dataclasses.dataclass
class ImageAnnotation:
    """One ``Annotations/<id>.xml``: image size and, per chain id, 0-based boxes / scene / no-box flags."""

    width: int | None
    height: int | None
    boxes: dict[str, list[list[int]]]
    scene: list[str]
    nobox: list[str]


def parse_caption(line: str, where: str) -> Caption:
    """One line of ``Sentences/<id>.txt`` -> ``Caption`` (``where`` names file and line in errors)."""
    words: list[str] = []
    phrases: list[Phrase] = []
    current: list[str] | None = None
    tag: tuple[int, str, tuple[str, ...]] | None = None
    for token in line.split():
        if current is None:
            if token.startswith("["):
                m = _ENTITY_TAG.fullmatch(token)
                if m is None:
                    raise BadRecord(f"{where}: unknown entity format {token!r} (expected '[/EN#<id>/<type>...')")
                tag = (len(words), m.group(1), tuple(m.group(2)[1:].split("/")))
                current = []
            else:
                words.append(token)
            continue
        if token.startswith("["):
            raise BadRecord(f"{where}: {token!r} opens a bracket inside the phrase {' '.join(current)!r}")
        closes = token.endswith("]")
        word = token[:-1] if closes else token
        if not word:
            raise BadRecord(f"{where}: empty word before ']' in the phrase {' '.join(current)!r}")
        current.append(word)
        words.append(word)
        if closes:
            assert tag is not None
            phrases.append(Phrase(tag[0], " ".join(current), tag[1], tag[2]))
            current = None
    if current is not None:
        assert tag is not None
        raise BadRecord(f"{where}: the bracket of [/EN#{tag[1]} ... never closes (phrase {' '.join(current)!r})")
    return Caption(" ".join(words), phrases)


def read_captions(path: str | os.PathLike) -> list[tuple[int, Caption | BadRecord]]:
    """``Sentences/<id>.txt`` -> ``(line number, Caption or the BadRecord of that line)`` per non-empty line.

    Raises ``BadRecord`` if the file is missing or holds no caption.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadRecord(f"{path}: sentence file not found")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out: list[tuple[int, Caption | BadRecord]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((n, parse_caption(line, f"{path}: line {n}")))
        except BadRecord as e:
            out.append((n, e))
    if not out:
        raise BadRecord(f"{path}: the sentence file is empty")
    return out


def _int_text(el: ET.Element | None, where: str, what: str) -> int:
    text = None if el is None else (el.text or "").strip()
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRecord(f"{where}: {what} is not an integer: {text!r}") from None


def read_annotation(path: str | os.PathLike) -> ImageAnnotation:
    """``Annotations/<id>.xml`` -> ``ImageAnnotation`` with boxes converted to 0-based coordinates.

    An ``<object>`` may carry several ``<name>`` chain ids; its box is added to each (as VOLTA's copy of
    ``get_annotations`` does). Raises ``BadRecord`` for a missing/empty/malformed file, a non-integer
    coordinate, a flipped box, or an object without a chain id.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadRecord(f"{path}: annotation file not found")
    if os.path.getsize(path) == 0:
        raise BadRecord(f"{path}: the annotation file is empty")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise BadRecord(f"{path}: malformed XML ({e})") from None
    size = root.find("size")
    width = _int_text(size.find("width"), path, "<size><width>") if size is not None else None
    height = _int_text(size.find("height"), path, "<size><height>") if size is not None else None
    ann = ImageAnnotation(width, height, {}, [], [])
    for k, obj in enumerate(root.findall("object")):
        names = [(n.text or "").strip() for n in obj.findall("name")]
        if not names or not all(names):
            raise BadRecord(f"{path}: <object> {k} has no chain id in <name>")
        where = f"{path}: <object> {k} (chain {names[0]})"
        box = obj.find("bndbox")
        if box is not None:
            xmin, ymin, xmax, ymax = (_int_text(box.find(t), where, f"<{t}>") - 1
                                      for t in ("xmin", "ymin", "xmax", "ymax"))
            if xmax < xmin or ymax < ymin:
                raise BadRecord(f"{where}: box has xmax < xmin or ymax < ymin: {[xmin, ymin, xmax, ymax]}")
            for name in names:
                ann.boxes.setdefault(name, []).append([xmin, ymin, xmax, ymax])
            continue
        flags = {t: (_int_text(obj.find(t), where, f"<{t}>") if obj.find(t) is not None else 0)
                 for t in ("nobndbox", "scene")}
        for name in names:
            if flags["nobndbox"] > 0:
                ann.nobox.append(name)
            if flags["scene"] > 0:
                ann.scene.append(name)
    return ann


def read_split(path: str | os.PathLike) -> list[str]:
    """Image ids of a split file (``val.txt``...), one per line; ``FileNotFoundError`` if absent."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file not found: {path}")
    with open(path, encoding="utf-8") as f:
        ids = [line.strip() for line in f.read().split("\n") if line.strip()]
    if not ids:
        raise ValueError(f"{path}: the split file lists no images")
    return ids


class Flickr30kEntities:
    """The ablation examples of one split, lazily: ``for ex in Flickr30kEntities(root, "val")``.

    ``root`` holds ``<split>.txt``, ``Sentences/`` and ``Annotations/``; ``image_ids`` overrides the
    split file. With ``skip_bad`` a bad image (missing/malformed annotation or sentence file) or bad
    caption line is logged and counted in ``skipped`` instead of raising.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", image_ids: Sequence[str] | None = None,
                 skip_bad: bool = False):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"Flickr30k Entities directory not found: {self.root}")
        self.split = split
        self.image_ids = list(image_ids) if image_ids is not None else read_split(
            os.path.join(self.root, f"{split}.txt"))
        self.errors = RecordErrors(self.root, skip_bad=skip_bad)

    @property
    def skipped(self) -> int:
        return self.errors.skipped

    def sentence_path(self, image_id: str) -> str:
        return os.path.join(self.root, "Sentences", f"{image_id}.txt")

    def annotation_path(self, image_id: str) -> str:
        return os.path.join(self.root, "Annotations", f"{image_id}.xml")

    def _load_image(self, image_id: str) -> tuple[str, ImageAnnotation, list[tuple[int, int, Caption | BadRecord]]]:
        ann = read_annotation(self.annotation_path(image_id))
        captions = read_captions(self.sentence_path(image_id))
        return image_id, ann, [(i, n, c) for i, (n, c) in enumerate(captions)]

    def _caption_examples(self, image_id: str, ann: ImageAnnotation,
                          item: tuple[int, int, Caption | BadRecord]) -> list[AblationExample]:
        sentence_index, line, caption = item
        if isinstance(caption, BadRecord):
            raise caption
        source = f"{self.sentence_path(image_id)}: line {line}"
        out = []
        for p in caption.phrases:
            boxes = ann.boxes.get(p.entity_id)
            if not boxes:
                continue  # scene / no box / notvisual: not part of the ablation
            ex = AblationExample(image_id=image_id, sentence_index=sentence_index, sentence=caption.sentence,
                                 phrase=p.phrase, first_word_index=p.first_word_index, entity_id=p.entity_id,
                                 phrase_type="/".join(p.phrase_types),
                                 ref_boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
            out.append(check_ablation_example(ex, source))
        return out

    def __iter__(self) -> Iterator[AblationExample]:
        self.errors = RecordErrors(self.root, skip_bad=self.errors.skip_bad)  # a fresh count per pass
        for image_id, ann, captions in self.errors.filter(self.image_ids, self._load_image):
            for examples in self.errors.filter(captions, lambda c, i=image_id, a=ann: self._caption_examples(i, a, c)):
                yield from examples
        self.errors.report()


def load_examples(root: str | os.PathLike, split: str = "val", skip_bad: bool = False) -> list[AblationExample]:
    """All examples of a split as a list (``list(Flickr30kEntities(root, split, skip_bad=skip_bad))``)."""
    return list(Flickr30kEntities(root, split, skip_bad=skip_bad))


def word_first_subwords(tokenizer: Tokenizer, sentence: str, source: str = "<sentence>") -> tuple[list[str], list[int]]:
    """Sub-words of ``sentence`` and, for each word of ``sentence.lower().split()``, its first sub-word.

    VOLTA's alignment: walk the sub-words, concatenating them with ``##`` removed, and close a word
    when the concatenation equals it. Two deliberate differences, which only matter where VOLTA's own
    walk derails (it then raises ``KeyError`` or masks to the end of the sentence): the word is
    compared in the tokenizer's normal form (accents stripped, as the sub-words are), and only a
    leading ``##`` is removed (VOLTA's ``lstrip('##')`` also eats a literal ``#``); an ``[UNK]`` sub-word
    stands for the text it covers. Raises ``BadRecord`` when the sub-words do not spell the words.
    """
    words = sentence.lower().split()
    pieces = tokenizer.tokenize_with_offsets(sentence)

    def norm(text: str) -> str:
        return "".join(tokenizer.normalize(text).split())

    targets = [norm(w) for w in words]
    first: list[int] = []
    w, rec = 0, ""
    for i, (tok, (start, end)) in enumerate(pieces):
        while w < len(words) and not targets[w] and not rec:  # a word the normaliser erases entirely
            first.append(i)
            w += 1
        if w >= len(words):
            raise BadRecord(f"{source}: sub-word {tok!r} left over after the last word of {sentence!r}")
        piece = norm(sentence[start:end]) if tok == tokenizer.unk_token else tok.removeprefix("##")
        if not rec:
            first.append(i)
        rec += piece
        if rec == targets[w]:
            w, rec = w + 1, ""
        elif not targets[w].startswith(rec):
            raise BadRecord(f"{source}: sub-words {rec!r} do not spell word {w} {words[w]!r} of {sentence!r}")
    while w < len(words) and not targets[w]:
        first.append(len(pieces))
        w += 1
    if w != len(words):
        raise BadRecord(f"{source}: the sub-words end inside word {w} {words[w]!r} of {sentence!r}")
    return [t for t, _ in pieces], first


def phrase_token_span(tokenizer: Tokenizer, sentence: str, first_word_index: int, phrase: str,
                      source: str = "<sentence>") -> tuple[int, int]:
    """Sub-word positions ``[start, end)`` of ``phrase`` in ``tokenizer.encode(sentence)`` (``[CLS]`` at 0).

    Reference section 5.1: the sentence is lower-cased, split on spaces and BERT-tokenised; the phrase
    starts at the first sub-word of word ``first_word_index`` and runs until the accumulated sub-words
    equal ``tokenizer.tokenize(phrase)``. So ``end - start == len(tokenize(phrase))`` and
    ``tokenize(sentence)[start - 1:end - 1] == tokenize(phrase)``.

    The span is not truncated: with ``encode(sentence, max_len)`` only positions below ``max_len - 1``
    exist (VOLTA silently drops the phrase's sub-words past ``max_seq_length - 2``); callers check
    ``end <= max_len - 1``. Raises ``BadRecord`` (naming ``source``) when the phrase does not occur in
    the sentence at ``first_word_index``.
    """
    where = f"{source}: phrase {phrase!r} at word {first_word_index}"
    words, phrase_words = sentence.lower().split(), phrase.lower().split()
    if not phrase_words or words[first_word_index:first_word_index + len(phrase_words)] != phrase_words:
        raise BadRecord(f"{where}: the phrase does not occur in the sentence {sentence!r}")
    subwords, first = word_first_subwords(tokenizer, sentence, source)
    target = tokenizer.tokenize(phrase)
    start = first[first_word_index]
    if not target or subwords[start:start + len(target)] != target:
        raise BadRecord(f"{where}: sub-words {subwords[start:start + len(target)]} differ from the phrase's "
                        f"{target} in {sentence!r}")
    return start + 1, start + 1 + len(target)
