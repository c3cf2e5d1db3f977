"""Task-file readers (jaxvl.data.readers.tasks) on small files in each format's layout, plus a malformed corpus.

Well-formed files are written here in VOLTA's layouts (VQA questions / annotations JSON, ``*_target.pkl``,
answer-vocabulary pickles, GQA questions, retrieval ``*_ann.jsonl`` + ``hard_negative.pkl``, REFER
``refs(unc).p`` + ``instances.json``, NLVR2 and SNLI-VE JSON lines) and read back field by field. The malformed
corpus (truncated JSON, missing keys, wrong types, unknown answers / labels, a pickle naming a forbidden global,
empty files, duplicate ids, ...) must each raise one ``ValueError`` / ``FileNotFoundError`` whose message names
the file and the record.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jaxvl.data.readers.tasks.answers import (
    AnswerVocab,
    normalize_answer,
    read_answer_vocab,
    soft_targets,
    vqa_soft_score,
)
from jaxvl.data.readers.tasks.nlvr2 import read_nlvr2_jsonl
from jaxvl.data.readers.tasks.refer import read_refer, refer_sentences, refs_in_split
from jaxvl.data.readers.tasks.retrieval import caption_entries, read_hard_negatives, read_retrieval_jsonl
from jaxvl.data.readers.tasks.snli_ve import read_snli_ve_jsonl
from jaxvl.data.readers.tasks.vqa import (
    read_answer_targets,
    read_gqa_questions,
    read_vqa_annotations,
    read_vqa_questions,
    read_vqa_split,
    targets_from_annotations,
)
from jaxvl.data.records import BadRecord

ANSWERS = ["net", "nets", "yes", "no", "2", "red white"]
# A protocol-0 pickle whose first opcode names os.system: it must be refused before anything is called.
EVIL_PICKLE = b"cos\nsystem\n(S'echo pwned'\ntR."


# ---------------------------------------------------------------------------------------------------------------
# Writers for each layout


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_pickle(path: Path, obj: Any, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def vocab_files(tmp: Path, answers: list[str] = ANSWERS) -> tuple[Path, Path]:
    return (write_pickle(tmp / "trainval_ans2label.pkl", {a: i for i, a in enumerate(answers)}),
            write_pickle(tmp / "trainval_label2ans.pkl", list(answers)))


def questions_doc() -> dict:
    return {"info": {}, "task_type": "Open-Ended", "questions": [
        {"question_id": 30, "image_id": 3, "question": "How many nets?"},
        {"question_id": 10, "image_id": 1, "question": "What is this?"},
        {"question_id": 20, "image_id": 2, "question": "Is it red?"}]}


def targets_list() -> list[dict]:
    return [{"question_id": 10, "image_id": 1, "labels": [0, 1], "scores": [1.0, 2 / 3]},
            {"question_id": 20, "image_id": 2, "labels": np.array([2], np.int64),
             "scores": np.array([1.0], np.float32)},
            {"question_id": 30, "image_id": 3, "labels": [], "scores": []}]


def annotations_doc() -> dict:
    return {"annotations": [
        {"question_id": 10, "image_id": 1, "answer_type": "other", "multiple_choice_answer": "net",
         "answers": [{"answer": a, "answer_id": i + 1, "answer_confidence": "yes"} for i, a in enumerate(
             ["net", "Net", "the net", "net.", "nets", "nets", "netting", "netting", "netting", "mesh"])]},
        {"question_id": 20, "image_id": 2, "answer_type": "number", "multiple_choice_answer": "2",
         "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(["two"] * 2 + ["2"] + ["three"] * 7)]}]}


def retrieval_rows() -> list[dict]:
    return [{"img_path": "1000092795.jpg", "sentences": ["Two young guys outside.", "Two men in a yard."]},
            {"img_path": "10002456.jpg", "sentences": ["Workers on a building."]},
            {"img_path": "1000268201.jpg", "sentences": ["A child in pink.", "A girl climbs.", "Stairs."]}]


def hard_negatives_doc() -> dict:
    return {"train_image_list": [1000092795, 10002456, 1000268201],
            "train_hard_pool": np.array([[0, 2, 1], [1, 0, 2], [2, 1, 0]], np.int64)}


def instances_doc() -> dict:
    return {"images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 640, "height": 480}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [{"id": 1719310, "image_id": 581857, "bbox": [103.9, 300.0, 135.4, 138.9],
                             "category_id": 1, "area": 1.0, "iscrowd": 0},
                            {"id": 1724819, "image_id": 581857, "bbox": [300, 20, 40, 50], "category_id": 1}]}


def refs_list() -> list[dict]:
    def sent(i: int, raw: str) -> dict:
        return {"sent_id": i, "raw": raw, "sent": raw.lower(), "tokens": raw.lower().split()}
    return [{"ref_id": 0, "ann_id": 1719310, "image_id": 581857, "category_id": 1, "split": "testA",
             "sent_ids": [0, 1], "sentences": [sent(0, "The lady with the blue shirt"), sent(1, "Woman left")],
             "file_name": "COCO_train2014_000000581857_0.jpg"},
            {"ref_id": 1, "ann_id": 1724819, "image_id": 581857, "category_id": 1, "split": "train",
             "sent_ids": [2], "sentences": [sent(2, "Man on the right")], "file_name": "x.jpg"}]


def nlvr2_rows() -> list[dict]:
    return [{"identifier": "dev-850-0-0", "sentence": "The left image has two dogs.", "label": "True",
             "writer": "103"},
            {"identifier": "dev-850-0-1", "sentence": "There are no dogs.", "label": "False"},
            {"identifier": "test1-7-1-2", "sentence": "One bird.", "label": False}]


def snli_rows() -> list[dict]:
    return [{"Flikr30kID": "2248275918.jpg", "sentence2": "A group of people sit.", "gold_label": "entailment",
             "pairID": "2248275918.jpg#1r1e", "sentence1": "People sit on a bench."},
            {"Flikr30kID": "2248275918.jpg", "sentence2": "Nobody is there.", "gold_label": "contradiction",
             "pairID": "2248275918.jpg#1r1c"},
            {"Flikr30kID": "36979.jpg", "sentence2": "A dog runs.", "gold_label": "-", "pairID": "36979.jpg#0r1n"},
            {"Flikr30kID": "36979.jpg", "sentence2": "An animal.", "gold_label": "neutral"}]


# ---------------------------------------------------------------------------------------------------------------
# Answers: normalisation, soft scores, vocabularies


@pytest.mark.parametrize("raw, want", [
    ("Two", "2"), ("the dog.", "dog"), ("yes!", "yes"), ("dont", "don't"), ("1,000", "1000"),
    ("red-white", "red white"), ("a  Red  ball", "red ball"), ("3.5", "3.5"), ("none", "0"), ("(left)", "left"),
])
def test_normalize_answer(raw: str, want: str) -> None:
    assert normalize_answer(raw) == want


def test_vqa_soft_score_is_min_one_count_over_three() -> None:
    assert [vqa_soft_score(n) for n in range(6)] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    with pytest.raises(ValueError):
        vqa_soft_score(-1)


def test_soft_targets_count_normalised_answers_and_drop_unknown() -> None:
    vocab = AnswerVocab.from_answers(ANSWERS)
    answers = ["net", "Net", "the net", "net.", "nets", "nets", "netting", "mesh", "2", "two"]
    labels, scores = soft_targets(answers, vocab)
    counts = Counter(normalize_answer(a) for a in answers)
    want = {vocab.ans2label[a]: min(1.0, n / 3) for a, n in counts.items() if a in vocab.ans2label}
    assert dict(zip(labels, scores, strict=True)) == pytest.approx(want)
    assert want == pytest.approx({0: 1.0, 1: 2 / 3, 4: 2 / 3})  # netting / mesh dropped
    with pytest.raises(ValueError, match="repeated answers"):
        AnswerVocab.from_answers(["a", "b", "a"])


def test_read_answer_vocab(tmp_path: Path) -> None:
    a2l, l2a = vocab_files(tmp_path)
    vocab = read_answer_vocab(a2l, l2a)
    assert len(vocab) == len(ANSWERS) and vocab.answers == tuple(ANSWERS)
    assert all(vocab.ans2label[a] == i for i, a in enumerate(ANSWERS))
    assert read_answer_vocab(a2l) == vocab  # label2ans optional


# ---------------------------------------------------------------------------------------------------------------
# VQA / GQA


def test_read_vqa_split_joins_sorted_by_question_id(tmp_path: Path) -> None:
    q = write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", questions_doc())
    t = write_pickle(tmp_path / "val_target.pkl", targets_list())
    vocab = read_answer_vocab(*vocab_files(tmp_path))
    questions = read_vqa_questions(q)
    assert [x.question_id for x in questions] == [30, 10, 20]  # file order
    assert questions[0].image_id == 3 and questions[0].question == "How many nets?"
    examples = read_vqa_split(q, t, vocab)
    assert [e.question_id for e in examples] == [10, 20, 30]
    by_qid = {x.question_id: x for x in questions}
    for e, raw in zip(examples, targets_list(), strict=True):
        assert e.question == by_qid[e.question_id].question and e.image_id == raw["image_id"]
        assert e.labels.dtype == np.int64 and e.scores.dtype == np.float32
        np.testing.assert_array_equal(e.labels, np.asarray(raw["labels"], np.int64))
        np.testing.assert_allclose(e.scores, np.asarray(raw["scores"], np.float32))
        dense = e.dense(len(vocab))
        assert dense.shape == (len(vocab),) and dense.sum() == pytest.approx(float(np.sum(raw["scores"])))
        assert np.all(dense[e.labels] == e.scores)
    assert not examples[2].dense(len(vocab)).any()  # no label -> VOLTA's all-zero target


def test_targets_from_annotations(tmp_path: Path) -> None:
    anns = read_vqa_annotations(write_json(tmp_path / "v2_mscoco_val2014_annotations.json", annotations_doc()))
    assert [a.question_id for a in anns] == [10, 20] and len(anns[0].answers) == 10
    assert anns[1].multiple_choice_answer == "2" and anns[1].answer_type == "number"
    vocab = AnswerVocab.from_answers(ANSWERS)
    targets = targets_from_annotations(anns, vocab)
    for ann, t in zip(anns, targets, strict=True):
        counts = Counter(normalize_answer(a) for a in ann.answers)
        want = {vocab.ans2label[a]: vqa_soft_score(n) for a, n in counts.items() if a in vocab.ans2label}
        assert dict(zip(t.labels.tolist(), t.scores.tolist(), strict=True)) == pytest.approx(want)
        assert t.question_id == ann.question_id and t.image_id == ann.image_id
    assert targets[1].labels.tolist() == [vocab.ans2label["2"]] and targets[1].scores[0] == pytest.approx(1.0)


def test_gqa_questions_and_targets(tmp_path: Path) -> None:
    q = write_json(tmp_path / "testdev_balanced_questions.json", {
        "20968379": {"imageId": "n288870", "question": "Do the shorts have dark color?", "answer": "yes"},
        "201640614": {"imageId": "n578564", "question": "Who is wearing the shirt?"}})
    qs = read_gqa_questions(q)
    assert [(x.question_id, x.image_id, x.question) for x in qs] == [
        (20968379, "n288870", "Do the shorts have dark color?"), (201640614, "n578564", "Who is wearing the shirt?")]
    t = write_pickle(tmp_path / "train_target.pkl", [
        {"question_id": "7", "image_id": "n1", "question": "x?", "labels": [1], "scores": [1.0]}])
    with pytest.raises(BadRecord, match=r"train_target\.pkl: entry 0: 'question_id' must be an integer"):
        read_answer_targets(t, 3)
    t = write_pickle(tmp_path / "train_target.pkl", [
        {"question_id": 7, "image_id": "n1", "question": "What is it?", "labels": [1], "scores": [1.0]}])
    (target,) = read_answer_targets(t, 3)
    assert (target.question_id, target.image_id, target.question) == (7, "n1", "What is it?")


# ---------------------------------------------------------------------------------------------------------------
# Retrieval


def test_read_retrieval_flickr_and_coco(tmp_path: Path) -> None:
    rows = retrieval_rows()
    images = read_retrieval_jsonl(write_jsonl(tmp_path / "test_ann.jsonl", rows))
    assert [i.image_id for i in images] == [int(r["img_path"].split(".")[0]) for r in rows]
    assert [list(i.captions) for i in images] == [r["sentences"] for r in rows]
    assert [i.line for i in images] == [1, 2, 3]
    entries = caption_entries(images)
    assert entries == [(c, int(r["img_path"].split(".")[0])) for r in rows for c in r["sentences"]]
    coco = read_retrieval_jsonl(write_jsonl(tmp_path / "coco.jsonl", [{"id": 391895, "sentences": ["A man."]}]),
                                id_key="id")
    assert coco[0].image_id == 391895 and coco[0].captions == ("A man.",)
    with pytest.raises(ValueError, match="id_key"):
        read_retrieval_jsonl(tmp_path / "coco.jsonl", id_key="file")


def test_read_hard_negatives(tmp_path: Path) -> None:
    images = read_retrieval_jsonl(write_jsonl(tmp_path / "train_ann.jsonl", retrieval_rows()))
    doc = hard_negatives_doc()
    neg = read_hard_negatives(write_pickle(tmp_path / "hard_negative.pkl", doc), images)
    assert neg.image_ids == tuple(doc["train_image_list"])
    np.testing.assert_array_equal(neg.pool, doc["train_hard_pool"])
    assert neg.negatives_of(10002456) == [1000092795, 1000268201]  # columns 1.. of row 1
    # a list-of-lists pool (an older pickle) reads the same
    listed = dict(doc, train_hard_pool=doc["train_hard_pool"].tolist())
    np.testing.assert_array_equal(read_hard_negatives(write_pickle(tmp_path / "hn2.pkl", listed)).pool, neg.pool)


# ---------------------------------------------------------------------------------------------------------------
# REFER


def test_read_refer(tmp_path: Path) -> None:
    refs_p = write_pickle(tmp_path / "refs(unc).p", refs_list(), protocol=2)
    inst = write_json(tmp_path / "instances.json", instances_doc())
    refs = read_refer(refs_p, inst)
    anns = {a["id"]: a for a in instances_doc()["annotations"]}
    for r, raw in zip(refs, refs_list(), strict=True):
        assert (r.ref_id, r.ann_id, r.image_id, r.category_id, r.split) == (
            raw["ref_id"], raw["ann_id"], raw["image_id"], raw["category_id"], raw["split"])
        assert r.sentences == tuple(s["raw"] for s in raw["sentences"]) and r.sent_ids == tuple(raw["sent_ids"])
        x, y, w, h = anns[raw["ann_id"]]["bbox"]
        assert r.bbox == pytest.approx((x, y, w, h)) and r.box_xyxy == pytest.approx((x, y, x + w, y + h))
    assert [r.ref_id for r in refs_in_split(refs, "testA")] == [0]
    assert [r.ref_id for r in refs_in_split(refs, "test")] == [0]
    assert refs_in_split(refs, "testB") == [] and [r.ref_id for r in refs_in_split(refs, "train")] == [1]
    with pytest.raises(ValueError, match="unknown REFER split"):
        refs_in_split(refs, "dev")
    sents = refer_sentences(refs)
    assert [(s.sent_id, s.ref_id, s.caption) for s in sents] == [
        (0, 0, "The lady with the blue shirt"), (1, 0, "Woman left"), (2, 1, "Man on the right")]
    assert sents[2].bbox == refs[1].bbox and sents[0].image_id == 581857


# ---------------------------------------------------------------------------------------------------------------
# NLVR2, SNLI-VE


def test_read_nlvr2(tmp_path: Path) -> None:
    rows = nlvr2_rows()
    ex = read_nlvr2_jsonl(write_jsonl(tmp_path / "dev.jsonl", rows))
    assert [e.question_id for e in ex] == [0, 1, 2] and [e.line for e in ex] == [1, 2, 3]
    assert [e.label for e in ex] == [1, 0, 0]
    assert (ex[0].image_id_0, ex[0].image_id_1) == ("dev-850-0-img0", "dev-850-0-img1")
    assert ex[2].image_id_1 == "test1-7-1-img1"
    assert [e.sentence for e in ex] == [r["sentence"] for r in rows]


def test_read_snli_ve(tmp_path: Path) -> None:
    rows = snli_rows()
    ex = read_snli_ve_jsonl(write_jsonl(tmp_path / "snli_ve_dev.jsonl", rows))
    assert [e.image_id for e in ex] == [2248275918, 2248275918, 36979, 36979]
    assert [e.label for e in ex] == [2, 0, None, 1]
    assert [e.hypothesis for e in ex] == [r["sentence2"] for r in rows]
    assert [e.pair_id for e in ex] == [r.get("pairID") for r in rows]
    assert [e.question_id for e in ex] == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------------------------
# The malformed-input corpus: (name, build files -> call the reader, words the message must hold)


def _vqa_q(tmp: Path, doc: Any) -> Callable[[], Any]:
    return lambda: read_vqa_questions(write_json(tmp / "q.json", doc))


def _targets(tmp: Path, items: Any, n: int = len(ANSWERS)) -> Callable[[], Any]:
    return lambda: read_answer_targets(write_pickle(tmp / "val_target.pkl", items), n)


def _jsonl(tmp: Path, reader: Callable, rows: list[Any], name: str = "f.jsonl") -> Callable[[], Any]:
    return lambda: reader(write_jsonl(tmp / name, rows))


def _refer(tmp: Path, refs: Any, instances: Any = None) -> Callable[[], Any]:
    def run() -> Any:
        return read_refer(write_pickle(tmp / "refs(unc).p", refs, protocol=2),
                          write_json(tmp / "instances.json", instances or instances_doc()))
    return run


def _hn(tmp: Path, doc: Any, with_images: bool = False) -> Callable[[], Any]:
    def run() -> Any:
        images = read_retrieval_jsonl(write_jsonl(tmp / "train_ann.jsonl", retrieval_rows())) if with_images else None
        return read_hard_negatives(write_pickle(tmp / "hard_negative.pkl", doc), images)
    return run


def _raw(tmp: Path, name: str, data: bytes, reader: Callable) -> Callable[[], Any]:
    def run() -> Any:
        (tmp / name).write_bytes(data)
        return reader(tmp / name)
    return run


def _edit(rows: list[dict], i: int, **changes: Any) -> list[dict]:
    rows = [dict(r) for r in rows]
    for k, v in changes.items():
        if v is KeyError:
            rows[i].pop(k)
        else:
            rows[i][k] = v
    return rows


def _corpus(tmp: Path) -> list[tuple[str, Callable[[], Any], str, tuple[str, ...]]]:
    """(case, reader call, file name, further words the error message must contain)."""
    q, t = questions_doc(), targets_list()
    a2l = {a: i for i, a in enumerate(ANSWERS)}
    truncated = json.dumps(q)[:-40]
    ref_bad_ann = refs_list()
    ref_bad_ann[1] = dict(ref_bad_ann[1], ann_id=99)
    ref_dup_sent = refs_list()
    ref_dup_sent[1] = dict(ref_dup_sent[1], sent_ids=[1], sentences=[dict(ref_dup_sent[1]["sentences"][0], sent_id=1)])
    inst_bad_box = instances_doc()
    inst_bad_box["annotations"][1] = dict(inst_bad_box["annotations"][1], bbox=[1, 2, 3])
    return [
        # generic file problems
        ("missing file", lambda: read_vqa_questions(tmp / "nope.json"), "nope.json", ("no such file",)),
        ("empty json", _raw(tmp, "empty.json", b"", read_vqa_questions), "empty.json", ("empty file",)),
        ("truncated json", _raw(tmp, "trunc.json", truncated.encode(), read_vqa_questions), "trunc.json",
         ("not valid JSON", "line 1")),
        ("empty jsonl", _raw(tmp, "blank.jsonl", b"\n\n", read_nlvr2_jsonl), "blank.jsonl", ("no records",)),
        ("jsonl bad line", _raw(tmp, "bad.jsonl", (json.dumps(nlvr2_rows()[0]) + "\n{\"identifier\": \n").encode(),
                                read_nlvr2_jsonl), "bad.jsonl", ("line 2", "not valid JSON")),
        ("jsonl not object", _jsonl(tmp, read_snli_ve_jsonl, [snli_rows()[0], [1, 2]], "arr.jsonl"), "arr.jsonl",
         ("line 2", "JSON object")),
        ("empty pickle", _raw(tmp, "empty.pkl", b"", lambda p: read_answer_vocab(p)), "empty.pkl", ("empty file",)),
        ("truncated pickle", _raw(tmp, "cut.pkl", pickle.dumps(a2l)[:-7], lambda p: read_answer_vocab(p)),
         "cut.pkl", ("truncated or corrupt",)),
        ("forbidden global", _raw(tmp, "evil.pkl", EVIL_PICKLE, lambda p: read_answer_targets(p, 3)), "evil.pkl",
         ("restricted unpickler", "os.system")),
        ("class instance pickle", _raw(tmp, "cls.pkl", pickle.dumps(Counter(a=1)), lambda p: read_answer_vocab(p)),
         "cls.pkl", ("restricted unpickler", "Counter")),
        # vocabularies
        ("vocab duplicate label", lambda: read_answer_vocab(write_pickle(tmp / "a2l.pkl", {"yes": 0, "no": 0})),
         "a2l.pkl", ("answer 'no'", "duplicate label 0")),
        ("vocab label out of range", lambda: read_answer_vocab(write_pickle(tmp / "a2l.pkl", {"yes": 0, "no": 5})),
         "a2l.pkl", ("answer 'no'", "[0, 2)")),
        ("vocab wrong type", lambda: read_answer_vocab(write_pickle(tmp / "a2l.pkl", {"yes": "0"})),
         "a2l.pkl", ("answer 'yes'", "integer")),
        ("label2ans disagrees", lambda: read_answer_vocab(write_pickle(tmp / "a2l.pkl", a2l),
                                                          write_pickle(tmp / "l2a.pkl", ANSWERS[::-1])),
         "l2a.pkl", ("label 0", "a2l.pkl")),
        # VQA questions / targets
        ("questions missing key", _vqa_q(tmp, {"questions": [{"question_id": 5, "image_id": 1}]}), "q.json",
         ("questions[0]", "question_id 5", "'question'")),
        ("questions wrong type", _vqa_q(tmp, {"questions": [{"question_id": "5", "image_id": 1, "question": "x"}]}),
         "q.json", ("questions[0]", "'question_id' must be an integer")),
        ("questions duplicate id", _vqa_q(tmp, {"questions": q["questions"] + [q["questions"][1]]}), "q.json",
         ("questions[3]", "duplicate question_id 10", "questions[1]")),
        ("questions no list", _vqa_q(tmp, {"annotations": []}), "q.json", ("'questions' list",)),
        ("target unknown answer", _targets(tmp, _edit(t, 1, labels=[len(ANSWERS)])), "val_target.pkl",
         ("entry 1", "question_id 20", f"unknown answer label {len(ANSWERS)}")),
        ("target length mismatch", _targets(tmp, _edit(t, 0, scores=[1.0])), "val_target.pkl",
         ("entry 0", "question_id 10", "2 labels but 1 scores")),
        ("target score range", _targets(tmp, _edit(t, 0, scores=[1.0, 3.0])), "val_target.pkl",
         ("question_id 10", "[0, 1]")),
        ("target missing key", _targets(tmp, _edit(t, 2, labels=KeyError)), "val_target.pkl",
         ("entry 2", "question_id 30", "'labels'")),
        ("target duplicate id", _targets(tmp, t + [t[0]]), "val_target.pkl",
         ("entry 3", "duplicate question_id 10")),
        ("target without question", lambda: read_vqa_split(
            write_json(tmp / "q.json", {"questions": q["questions"][:2]}),
            write_pickle(tmp / "val_target.pkl", t), len(ANSWERS)), "val_target.pkl",
         ("question_id 20", "no question", "q.json")),
        ("target image mismatch", lambda: read_vqa_split(
            write_json(tmp / "q.json", q), write_pickle(tmp / "val_target.pkl", _edit(t, 0, image_id=9)),
            len(ANSWERS)), "val_target.pkl", ("question_id 10", "image_id 9", "q.json")),
        ("annotations empty answers", lambda: read_vqa_annotations(write_json(tmp / "ann.json", {"annotations": [
            dict(annotations_doc()["annotations"][0], answers=[])]})), "ann.json",
         ("annotations[0]", "question_id 10", "'answers'")),
        ("gqa non-numeric id", lambda: read_gqa_questions(write_json(tmp / "gqa.json", {
            "abc": {"imageId": "n1", "question": "x?"}})), "gqa.json", ("question 'abc'", "digits")),
        # retrieval
        ("retrieval duplicate image", _jsonl(tmp, read_retrieval_jsonl, retrieval_rows() + [retrieval_rows()[0]],
                                             "r.jsonl"), "r.jsonl", ("line 4", "duplicate image 1000092795", "line 1")),
        ("retrieval bad img_path", _jsonl(tmp, read_retrieval_jsonl, _edit(retrieval_rows(), 1, img_path="x.jpg"),
                                          "r.jsonl"), "r.jsonl", ("line 2", "'img_path' 'x.jpg'")),
        ("retrieval empty caption", _jsonl(tmp, read_retrieval_jsonl, _edit(retrieval_rows(), 2,
                                                                            sentences=["ok", " "]), "r.jsonl"),
         "r.jsonl", ("line 3", "image 1000268201", "sentences[1]")),
        ("retrieval missing sentences", _jsonl(tmp, read_retrieval_jsonl, _edit(retrieval_rows(), 0,
                                                                                sentences=KeyError), "r.jsonl"),
         "r.jsonl", ("line 1", "'sentences'")),
        ("hard negatives index", _hn(tmp, dict(hard_negatives_doc(), train_hard_pool=np.array(
            [[0, 2], [1, 3], [2, 0]]))), "hard_negative.pkl", ("train_hard_pool[1, 1]", "image 10002456", "= 3")),
        ("hard negatives shape", _hn(tmp, dict(hard_negatives_doc(), train_hard_pool=np.zeros((3, 1), np.int64))),
         "hard_negative.pkl", ("shape (3, 1)", "K >= 2")),
        ("hard negatives float pool", _hn(tmp, dict(hard_negatives_doc(), train_hard_pool=np.zeros((3, 2)))),
         "hard_negative.pkl", ("'train_hard_pool'", "integer")),
        ("hard negatives duplicate", _hn(tmp, dict(hard_negatives_doc(), train_image_list=[1, 2, 1])),
         "hard_negative.pkl", ("train_image_list[2]", "duplicate image 1")),
        ("hard negatives missing key", _hn(tmp, {"train_image_list": [1]}), "hard_negative.pkl",
         ("'train_hard_pool'",)),
        ("hard negatives uncaptioned", _hn(tmp, dict(hard_negatives_doc(), train_image_list=[1000092795, 10002456, 5]),
                                           with_images=True), "hard_negative.pkl", ("1000268201", "line 3")),
        # REFER
        ("refer unknown ann", _refer(tmp, ref_bad_ann), "refs(unc).p", ("ref 1", "ref_id 1", "ann_id 99",
                                                                         "instances.json")),
        ("refer duplicate ref", _refer(tmp, refs_list() + [refs_list()[0]]), "refs(unc).p",
         ("ref 2", "duplicate ref_id 0")),
        ("refer duplicate sentence", _refer(tmp, ref_dup_sent), "refs(unc).p", ("ref_id 1", "duplicate sent_id 1")),
        ("refer sent_ids mismatch", _refer(tmp, _edit(refs_list(), 0, sent_ids=[0])), "refs(unc).p",
         ("ref_id 0", "'sent_ids'")),
        ("refer unknown split", _refer(tmp, _edit(refs_list(), 1, split="dev")), "refs(unc).p",
         ("ref_id 1", "unknown split 'dev'")),
        ("refer image mismatch", _refer(tmp, _edit(refs_list(), 0, image_id=1)), "refs(unc).p",
         ("ref_id 0", "image_id 1", "581857")),
        ("refer wrong type", _refer(tmp, _edit(refs_list(), 0, category_id="person")), "refs(unc).p",
         ("ref_id 0", "'category_id' must be an integer")),
        ("refer bad bbox", _refer(tmp, refs_list(), inst_bad_box), "instances.json",
         ("annotations[1]", "id 1724819", "'bbox'")),
        ("refer not a list", _refer(tmp, {"refs": []}), "refs(unc).p", ("list of refs",)),
        # NLVR2, SNLI-VE
        ("nlvr2 unknown label", _jsonl(tmp, read_nlvr2_jsonl, _edit(nlvr2_rows(), 1, label="maybe"), "n.jsonl"),
         "n.jsonl", ("line 2", "dev-850-0-1", "unknown label 'maybe'")),
        ("nlvr2 duplicate", _jsonl(tmp, read_nlvr2_jsonl, nlvr2_rows() + [nlvr2_rows()[0]], "n.jsonl"), "n.jsonl",
         ("line 4", "duplicate identifier 'dev-850-0-0'", "line 1")),
        ("nlvr2 missing sentence", _jsonl(tmp, read_nlvr2_jsonl, _edit(nlvr2_rows(), 0, sentence=KeyError),
                                          "n.jsonl"), "n.jsonl", ("line 1", "'sentence'")),
        ("nlvr2 bad identifier", _jsonl(tmp, read_nlvr2_jsonl, _edit(nlvr2_rows(), 2, identifier="pair7"),
                                        "n.jsonl"), "n.jsonl", ("line 3", "'pair7'")),
        ("snli unknown label", _jsonl(tmp, read_snli_ve_jsonl, _edit(snli_rows(), 1, gold_label="yes"), "s.jsonl"),
         "s.jsonl", ("line 2", "2248275918.jpg#1r1c", "unknown gold_label 'yes'")),
        ("snli wrong type", _jsonl(tmp, read_snli_ve_jsonl, _edit(snli_rows(), 0, sentence2=7), "s.jsonl"),
         "s.jsonl", ("line 1", "'sentence2' must be a string")),
        ("snli duplicate pair", _jsonl(tmp, read_snli_ve_jsonl, snli_rows() + [snli_rows()[2]], "s.jsonl"),
         "s.jsonl", ("line 5", "duplicate pairID '36979.jpg#0r1n'", "line 3")),
        ("snli bad image", _jsonl(tmp, read_snli_ve_jsonl, _edit(snli_rows(), 3, Flikr30kID="dog.jpg"), "s.jsonl"),
         "s.jsonl", ("line 4", "'dog.jpg'")),
    ]


CASES = [c[0] for c in _corpus(Path("/nonexistent"))]


@pytest.mark.parametrize("case", CASES)
def test_malformed_input_names_file_and_record(tmp_path: Path, case: str) -> None:
    (call,) = [c[1:] for c in _corpus(tmp_path) if c[0] == case]
    run, filename, words = call
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        run()
    message = str(info.value)
    assert str(tmp_path / filename) in message, message
    for w in words:
        assert w in message, (w, message)
    assert "\n" not in message  # one line, not a trace


def test_forbidden_global_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    path = tmp_path / "trainval_ans2label.pkl"
    path.write_bytes(EVIL_PICKLE)
    with pytest.raises(BadRecord, match="refused"):
        read_answer_vocab(path)
    assert calls == []


# ---------------------------------------------------------------------------------------------------------------
# Corrupted bytes: every damaged copy of a good file raises BadRecord naming the file, never another error


def test_corrupted_pickles_raise_bad_record(tmp_path: Path) -> None:
    good = pickle.dumps(targets_list(), protocol=2)
    rng = np.random.default_rng(0)
    path = tmp_path / "val_target.pkl"
    outcomes = Counter()
    for trial in range(300):
        data = bytearray(good)
        if trial % 3 == 0:
            data = data[: rng.integers(1, len(good) - 1)]
        else:
            for i in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[i] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            read_answer_targets(path, len(ANSWERS))
            outcomes["read"] += 1  # a flip inside a float/int payload can leave a valid file
        except BadRecord as e:
            assert str(path) in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100


def test_truncated_json_at_every_point_raises_bad_record(tmp_path: Path) -> None:
    text = json.dumps(questions_doc())
    path = tmp_path / "q.json"
    for cut in range(1, len(text) - 1, 7):
        path.write_text(text[:cut])
        with pytest.raises(BadRecord, match="not valid JSON") as info:
            read_vqa_questions(path)
        assert str(path) in str(info.value)


def test_python2_text_pickle_decodes_as_utf8(tmp_path: Path) -> None:
    """REFER's refs(unc).p is a Python 2 pickle: its byte strings (SHORT_BINSTRING) are read as UTF-8 text."""
    from jaxvl.data.readers.tasks.files import read_pickle
    raw = "café".encode()
    # PROTO 2, EMPTY_LIST, EMPTY_DICT, MARK, 'raw' -> b'caf\xc3\xa9', SETITEMS, APPEND, STOP
    data = b"\x80\x02]}(U\x03rawU" + bytes([len(raw)]) + raw + b"ua."
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    assert read_pickle(path, encoding="utf-8") == [{"raw": "café"}]


def test_jsonl_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "snli_ve_test.jsonl"
    path.write_bytes((json.dumps(snli_rows()[0]) + "\n").encode() + b'{"sentence2": "caf\xe9"}\n')
    with pytest.raises(BadRecord, match=r"snli_ve_test\.jsonl: line 2: not UTF-8"):
        read_snli_ve_jsonl(path)
