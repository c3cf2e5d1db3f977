"""VQA v2 and GQA question / answer files as VOLTA's ``vqa_dataset.py`` and ``gqa_dataset.py`` read them.

Files (VOLTA ``datasets/vqa/annotations/`` and ``datasets/gqa/annotations/``)::

    v2_OpenEnded_mscoco_{train,val}2014_questions.json, ..._test{,-dev}2015_questions.json
        {"questions": [{"question_id": 458752000, "image_id": 458752, "question": "What is ...?"}, ...], ...}
    v2_mscoco_{train,val}2014_annotations.json          (the official answers, for building targets)
        {"annotations": [{"question_id": ..., "image_id": ..., "multiple_choice_answer": "net",
                          "answer_type": "other", "answers": [{"answer": "net", "answer_id": 1, ...}, x10]}, ...]}
    {train,val,trainval}_target.pkl   (VOLTA's cache: VQA under cache/, GQA beside the questions)
        [{"question_id": 458752000, "image_id": 458752, "labels": [0, 7], "scores": [1.0, 0.333]}, ...]
        (GQA entries also carry "question"; image ids are strings such as "n161313")
    testdev_balanced_questions.json   (GQA test)
        {"20968379": {"imageId": "n288870", "question": "Do the shorts have dark color?", ...}, ...}

:func:`read_vqa_split` is VOLTA's ``_load_dataset`` for ``train`` / ``val``: questions joined with their targets
by question id, sorted by question id; VOLTA asserts the two sorted lists line up, here a question without a
target, a target without a question or an image-id mismatch raises naming both files and the question id.
VOLTA's ``trainval`` / ``minval`` splits (``val[:-3000]`` / ``val[-3000:]`` of the sorted list) are slices of
these lists. :func:`targets_from_annotations` computes targets from the official annotations
(:func:`~jaxvl.data.readers.tasks.answers.soft_targets`).

Errors (``BadRecord``, a ``ValueError``) name the file and the record (its index and question id): a missing
or mistyped field, a repeated question id, a label outside the answer vocabulary ("unknown answer"), labels
and scores of different lengths, a score outside [0, 1].
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from jaxvl.data.readers.tasks.answers import AnswerVocab, soft_targets
from jaxvl.data.readers.tasks.files import claim_id, get_field, get_int, get_str, read_json, read_pickle
from jaxvl.data.records import BadRecord

__all__ = ["AnswerTarget", "VqaAnnotation", "VqaQuestion", "read_answer_targets", "read_gqa_questions",
           "read_vqa_annotations", "read_vqa_questions", "read_vqa_split", "targets_from_annotations"]


@dataclasses.dataclass(frozen=True)
class VqaQuestion:
    """One question: ``image_id`` is an int for VQA (COCO id) and a string for GQA (``"n161313"``)."""

    question_id: int
    image_id: int | str
    question: str


@dataclasses.dataclass(frozen=True)
class VqaAnnotation:
    """The official answers of one question: ``answers`` the raw human answers (10 in VQA v2)."""

    question_id: int
    image_id: int
    answers: tuple[str, ...]
    multiple_choice_answer: str
    answer_type: str


@dataclasses.dataclass(frozen=True)
class AnswerTarget:
    """A classifier target: ``labels`` [n] int64 answer classes with ``scores`` [n] float32 soft scores (n may
    be 0: VOLTA's all-zero target); ``question`` set once joined with the questions (or read from GQA)."""

    question_id: int
    image_id: int | str
    labels: np.ndarray
    scores: np.ndarray
    question: str | None = None

    def dense(self, num_labels: int) -> np.ndarray:
        """The [num_labels] float32 target VOLTA scatters ``scores`` into."""
        target = np.zeros(num_labels, np.float32)
        target[self.labels] = self.scores
        return target


def _image_id(record: Any, key: str, where: str) -> int | str:
    value = get_field(record, key, where)
    if isinstance(value, str) and value.strip():
        return value
    return get_int(record, key, where)


def _records(doc: Any, key: str, path: str) -> list:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise BadRecord(f"{path}: expected an object with a {key!r} list")
    if not doc[key]:
        raise BadRecord(f"{path}: {key!r} is empty")
    return doc[key]


def read_vqa_questions(path: str | os.PathLike) -> list[VqaQuestion]:
    """A VQA ``*_questions.json`` -> questions in file order; errors name the file, index and question id."""
    path = os.fspath(path)
    seen: dict[int, str] = {}
    out = []
    for i, rec in enumerate(_records(read_json(path), "questions", path)):
        where = f"{path}: questions[{i}]"
        qid = get_int(rec, "question_id", where)
        where = f"{where} (question_id {qid})"
        claim_id(seen, qid, "question_id", where)
        out.append(VqaQuestion(qid, _image_id(rec, "image_id", where), get_str(rec, "question", where)))
    return out


def read_gqa_questions(path: str | os.PathLike) -> list[VqaQuestion]:
    """GQA's ``*_balanced_questions.json`` (a dict question id -> entry) -> questions in file order."""
    path = os.fspath(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or not doc:
        raise BadRecord(f"{path}: expected a non-empty object question id -> question")
    out = []
    for key, rec in doc.items():
        where = f"{path}: question {key!r}"
        if not key.isdigit():
            raise BadRecord(f"{where}: question ids must be decimal digits (VOLTA takes int(id))")
        out.append(VqaQuestion(int(key), _image_id(rec, "imageId", where), get_str(rec, "question", where)))
    return out


def read_vqa_annotations(path: str | os.PathLike) -> list[VqaAnnotation]:
    """A VQA ``*_annotations.json`` -> per-question human answers, in file order."""
    path = os.fspath(path)
    seen: dict[int, str] = {}
    out = []
    for i, rec in enumerate(_records(read_json(path), "annotations", path)):
        where = f"{path}: annotations[{i}]"
        qid = get_int(rec, "question_id", where)
        where = f"{where} (question_id {qid})"
        claim_id(seen, qid, "question_id", where)
        answers = get_field(rec, "answers", where)
        if not isinstance(answers, list) or not answers:
            raise BadRecord(f"{where}: 'answers' must be a non-empty list")
        texts = tuple(get_str(a, "answer", f"{where}: answers[{j}]", allow_empty=True) for j, a in enumerate(answers))
        out.append(VqaAnnotation(qid, get_int(rec, "image_id", where), texts,
                                 get_str(rec, "multiple_choice_answer", where, allow_empty=True),
                                 get_str(rec, "answer_type", where)))
    return out


def targets_from_annotations(annotations: Iterable[VqaAnnotation], vocab: AnswerVocab) -> list[AnswerTarget]:
    """VQA soft-score targets from the official answers (``compute_softscore.py``'s ``compute_target``)."""
    out = []
    for ann in annotations:
        labels, scores = soft_targets(ann.answers, vocab)
        out.append(AnswerTarget(ann.question_id, ann.image_id, np.asarray(labels, np.int64),
                                np.asarray(scores, np.float32)))
    return out


def _int_list(value: Any, key: str, where: str) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu":
        return value.astype(np.int64)
    if not isinstance(value, list | tuple) or any(isinstance(v, bool) or not isinstance(v, int | np.integer)
                                                   for v in value):
        raise BadRecord(f"{where}: {key!r} must be a list of integers; got {value!r:.80}")
    return np.asarray(value, np.int64).reshape(-1)


def _score_list(value: Any, where: str) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iuf":
        scores = value.astype(np.float64)
    elif isinstance(value, list | tuple) and all(
            not isinstance(v, bool) and isinstance(v, int | float | np.integer | np.floating) for v in value):
        scores = np.asarray(value, np.float64).reshape(-1)
    else:
        raise BadRecord(f"{where}: 'scores' must be a list of numbers; got {value!r:.80}")
    if not np.all(np.isfinite(scores)) or np.any(scores < 0) or np.any(scores > 1):
        raise BadRecord(f"{where}: scores must lie in [0, 1]; got {scores.tolist()!r:.80}")
    return scores.astype(np.float32)


def read_answer_targets(path: str | os.PathLike, vocab: AnswerVocab | int) -> list[AnswerTarget]:
    """VOLTA's ``*_target.pkl`` (VQA or GQA) -> targets in file order, checked against ``vocab`` (or a label count).

    A label outside ``[0, len(vocab))`` is an unknown answer and raises naming the file, index and question
    id; so do repeated labels within one question and a repeated question id.
    """
    path = os.fspath(path)
    num_labels = vocab if isinstance(vocab, int) else len(vocab)
    items = read_pickle(path, encoding="utf-8")
    if not isinstance(items, list | tuple) or not items:
        raise BadRecord(f"{path}: expected a non-empty list of target dicts; got {type(items).__name__}")
    seen: dict[int, str] = {}
    out = []
    for i, rec in enumerate(items):
        where = f"{path}: entry {i}"
        qid = get_int(rec, "question_id", where)
        where = f"{where} (question_id {qid})"
        claim_id(seen, qid, "question_id", where)
        labels = _int_list(get_field(rec, "labels", where), "labels", where)
        scores = _score_list(get_field(rec, "scores", where), where)
        if len(labels) != len(scores):
            raise BadRecord(f"{where}: {len(labels)} labels but {len(scores)} scores")
        bad = labels[(labels < 0) | (labels >= num_labels)]
        if bad.size:
            raise BadRecord(f"{where}: unknown answer label {int(bad[0])} (the vocabulary has {num_labels} answers)")
        if len(np.unique(labels)) != len(labels):
            raise BadRecord(f"{where}: repeated labels {labels.tolist()}")
        question = get_str(rec, "question", where) if "question" in rec else None
        out.append(AnswerTarget(qid, _image_id(rec, "image_id", where), labels, scores, question))
    return out


def read_vqa_split(questions_path: str | os.PathLike, targets_path: str | os.PathLike,
                   vocab: AnswerVocab | int) -> list[AnswerTarget]:
    """Questions joined with their targets (VOLTA's ``train`` / ``val`` entries), sorted by question id."""
    questions_path, targets_path = os.fspath(questions_path), os.fspath(targets_path)
    questions = {q.question_id: q for q in read_vqa_questions(questions_path)}
    targets = {t.question_id: t for t in read_answer_targets(targets_path, vocab)}
    orphans = sorted(targets.keys() - questions.keys())
    if orphans:
        raise BadRecord(f"{targets_path}: question_id {orphans[0]} has a target but no question in {questions_path}")
    out = []
    for qid in sorted(questions):
        q = questions[qid]
        if qid not in targets:
            raise BadRecord(f"{questions_path}: question_id {qid} has no target in {targets_path}")
        t = targets[qid]
        if t.image_id != q.image_id:
            raise BadRecord(f"{targets_path}: question_id {qid}: image_id {t.image_id!r} but {questions_path} "
                            f"says {q.image_id!r}")
        out.append(dataclasses.replace(t, question=q.question))
    return out
