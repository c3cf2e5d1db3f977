"""Answer vocabularies and VQA soft scores: VOLTA's ``trainval_ans2label.pkl`` / ``trainval_label2ans.pkl``.

Files (VQA v2 ``datasets/vqa/annotations/``, GQA ``datasets/gqa/annotations/``; VOLTA's ``vqa_dataset.py`` and
``gqa_dataset.py`` load them with ``cPickle.load``, here through the restricted unpickler)::

    trainval_ans2label.pkl   {"net": 0, "pitcher": 1, ...}      answer -> label, labels 0..N-1 (VQA v2: 3,129)
    trainval_label2ans.pkl   ["net", "pitcher", ...]            label -> answer, the inverse list

:func:`read_answer_vocab` checks that the two agree exactly (every label 0..N-1 once, the list is the inverse);
a label missing, repeated or out of range, or a non-string answer, raises naming the file and the key.

Soft scores. VOLTA ships the targets precomputed (``*_target.pkl``, LXMERT's redistribution); they come from
the ``compute_softscore.py`` of bottom-up-attention-vqa / vilbert-multi-task. For one question with its 10
human answers, each answer is normalised as the official VQA evaluation does (:func:`normalize_answer`:
punctuation, number words to digits, articles dropped, contractions restored, commas removed), the
normalised answers are counted, and an answer in the vocabulary gets ``min(1, count / 3)``
(:func:`vqa_soft_score`: 1 answer -> 1/3, 2 -> 2/3, >= 3 -> 1); answers outside the vocabulary are dropped,
as in VOLTA. (hengyuan-hu's original script rounds to 0.3 / 0.6 / 0.9 / 1.0; ``soft_targets`` here follows
the vilbert-multi-task / VQA-metric values.)
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Iterable

from jaxvl.data.readers.tasks.files import read_pickle
from jaxvl.data.records import BadRecord

__all__ = ["AnswerVocab", "normalize_answer", "read_answer_vocab", "soft_targets", "vqa_soft_score"]

# The official VQA evaluation's normalisation tables (vqaEval.py).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow'sat", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # vqaEval.py passes re.UNICODE (32) as ``count``: at most 32 periods are stripped; kept for parity.
    return _PERIOD_STRIP.sub("", out, count=re.UNICODE)


def _process_digit_article(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """``compute_softscore.py``'s ``preprocess_answer``: VQA-eval punctuation, digits/articles, then no commas."""
    return _process_digit_article(_process_punctuation(answer)).replace(",", "")


def vqa_soft_score(count: int) -> float:
    """The soft score of an answer given by ``count`` of the annotators: ``min(1, count / 3)`` (0 for 0)."""
    if count < 0:
        raise ValueError(f"an answer count must be >= 0; got {count}")
    return min(1.0, count / 3.0)


@dataclasses.dataclass(frozen=True)
class AnswerVocab:
    """The answer classes of a classifier head: ``answers[label]`` is the answer of ``label``."""

    answers: tuple[str, ...]
    ans2label: dict[str, int]

    def __len__(self) -> int:
        return len(self.answers)

    @classmethod
    def from_answers(cls, answers: Iterable[str]) -> AnswerVocab:
        """A vocabulary numbering ``answers`` in order; repeated answers raise ``ValueError``."""
        answers = tuple(answers)
        ans2label = {a: i for i, a in enumerate(answers)}
        if len(ans2label) != len(answers):
            repeated = sorted(a for a, n in Counter(answers).items() if n > 1)
            raise ValueError(f"repeated answers in a vocabulary: {repeated[:5]}")
        return cls(answers, ans2label)


def read_answer_vocab(ans2label_path: str | os.PathLike, label2ans_path: str | os.PathLike | None = None
                      ) -> AnswerVocab:
    """VOLTA's answer vocabulary pickles -> :class:`AnswerVocab`; ``label2ans_path`` is optional but if given
    must be the exact inverse of ``ans2label``. Errors name the file and the answer or label."""
    ans2label_path = os.fspath(ans2label_path)
    ans2label = read_pickle(ans2label_path, encoding="utf-8")
    if not isinstance(ans2label, dict) or not ans2label:
        raise BadRecord(f"{ans2label_path}: expected a non-empty dict answer -> label; got {type(ans2label).__name__}"
                        + (" (empty)" if isinstance(ans2label, dict) else ""))
    n = len(ans2label)
    answers: list[str | None] = [None] * n
    for answer, label in ans2label.items():
        if not isinstance(answer, str):
            raise BadRecord(f"{ans2label_path}: key {answer!r}: answers must be strings; got {type(answer).__name__}")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
            raise BadRecord(f"{ans2label_path}: answer {answer!r}: label must be an integer in [0, {n}); "
                            f"got {label!r}")
        if answers[label] is not None:
            raise BadRecord(f"{ans2label_path}: answer {answer!r}: duplicate label {label} "
                            f"(also answer {answers[label]!r})")
        answers[label] = answer
    vocab = AnswerVocab(tuple(answers), dict(ans2label))  # every slot filled: n distinct labels in [0, n)
    if label2ans_path is not None:
        label2ans_path = os.fspath(label2ans_path)
        label2ans = read_pickle(label2ans_path, encoding="utf-8")
        if not isinstance(label2ans, list | tuple):
            raise BadRecord(f"{label2ans_path}: expected a list label -> answer; got {type(label2ans).__name__}")
        if len(label2ans) != n:
            raise BadRecord(f"{label2ans_path}: {len(label2ans)} answers but {ans2label_path} has {n}")
        for label, answer in enumerate(label2ans):
            if answer != vocab.answers[label]:
                raise BadRecord(f"{label2ans_path}: label {label}: answer {answer!r} but {ans2label_path} "
                                f"maps {vocab.answers[label]!r} to it")
    return vocab


def soft_targets(answers: Iterable[str], vocab: AnswerVocab) -> tuple[list[int], list[float]]:
    """``(labels, scores)`` of one question from its human answers (normalised, counted, scored with
    :func:`vqa_soft_score`; answers outside ``vocab`` dropped), labels in first-seen order as VOLTA's targets."""
    counts = Counter(normalize_answer(a) for a in answers)
    labels, scores = [], []
    for answer, count in counts.items():
        if answer in vocab.ans2label:
            labels.append(vocab.ans2label[answer])
            scores.append(vqa_soft_score(count))
    return labels, scores
