"""``jaxvl.finetune.files``: VOLTA's task files joined to a per-image feature LMDB, on a tiny corpus in VOLTA's formats.

The corpus is a synthetic world written out as VOLTA's files (``feature_row`` rows in a per-image LMDB; VQA
questions + ``*_target.pkl``, REFER refs + instances, NLVR2 / retrieval JSON lines, ``hard_negative.pkl``); the
examples are checked against values computed here from the world itself.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest

from jaxvl.data.records import BadRecord
from jaxvl.data.synthetic.tasks import task_vocabulary
from jaxvl.data.synthetic.volta_files import feature_row
from jaxvl.data.synthetic.world import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.finetune.files import parse_dataset, retrieval_options, task_files_split

R, T = 8, 12  # the split's regions (the world detects 6: rows 7..8 are padding) and text length
ANSWERS = ["yes", "no", "red", "blue"]


def write_lmdb(path: Path, rows: dict[str, dict]) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, row in rows.items():
            txn.put(key.encode(), pickle.dumps(row, protocol=3))
        txn.put(b"keys", pickle.dumps([k.encode() for k in rows], protocol=3))
    env.close()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("volta")
    world = World(WorldConfig(num_images=12, num_regions=6, feature_dim=16, num_classes=12, num_attributes=4,
                              max_objects=3, seed=3))
    vocab = tmp / "vocab.txt"
    Tokenizer.from_words(task_vocabulary(world)).save_vocab(vocab)
    rows = {str(i): feature_row(world, world[i]) for i in range(12)}
    for s in range(2):  # NLVR2's image keys: pair s = world images 2s, 2s + 1
        for side in range(2):
            rows[f"dev-{s}-0-img{side}"] = {**feature_row(world, world[2 * s + side]), "img_id": f"dev-{s}-0-img{side}"}
    write_lmdb(tmp / "feat.lmdb", rows)
    # VQA: two questions per image of images 0..5 (train) and 6..11 (val)
    vqa = tmp / "vqa"
    dump(vqa / "trainval_ans2label.pkl", {a: i for i, a in enumerate(ANSWERS)})
    dump(vqa / "trainval_label2ans.pkl", ANSWERS)
    for split, imgs in (("train", range(6)), ("val", range(6, 12))):
        qs = [dict(question_id=100 * i + k, image_id=i, question=f"is there a {world.class_names[k]}")
              for i in imgs for k in range(2)]
        write(vqa / f"v2_OpenEnded_mscoco_{split}2014_questions.json", json.dumps({"questions": qs[::-1]}))
        dump(vqa / "cache" / f"{split}_target.pkl",
             [dict(question_id=q["question_id"], image_id=q["image_id"], labels=[q["question_id"] % 2, 2],
                   scores=[1.0, 1 / 3]) for q in qs])
    # RefCOCO+: one ref per image, the image's first gold object (COCO xywh)
    ref = tmp / "refcoco+" / "refcoco+"
    anns, refs = [], []
    for i in range(12):
        x1, y1, x2, y2 = (float(v) for v in world[i].objects[0].box)
        anns.append(dict(id=1000 + i, image_id=i, bbox=[x1, y1, x2 - x1, y2 - y1], category_id=1))
        refs.append(dict(ref_id=i, ann_id=1000 + i, image_id=i, category_id=1, split="train" if i < 8 else "val",
                         sent_ids=[i], sentences=[dict(sent_id=i, raw=f"the {world.class_names[1]}")]))
    write(ref / "instances.json", json.dumps({"annotations": anns}))
    dump(ref / "refs(unc).p", refs)
    # NLVR2 (dev) and retrieval (train: images 0..3 with their captions, and their hard-negative pools)
    write(tmp / "nlvr2" / "dev.jsonl", jsonl([dict(identifier=f"dev-{s}-0-{k}", sentence="there are two a",
                                                    label=["True", "False"][(s + k) % 2]) for s in range(2)
                                               for k in range(2)]))
    flickr = tmp / "flickr30k"
    write(flickr / "annotations" / "train_ann.jsonl",
          jsonl([dict(img_path=f"{i}.jpg", sentences=list(world[i].captions)) for i in range(4)]))
    dump(flickr / "hard_negative.pkl", dict(train_image_list=[3, 2, 1, 0],
                                            train_hard_pool=np.array([[0, 1], [1, 2], [2, 3], [3, 0]])))
    write(flickr / "annotations" / "valid_ann.jsonl",
          jsonl([dict(img_path=f"{i}.jpg", sentences=list(world[i].captions)) for i in range(4, 7)]))
    # SNLI-VE (dev; one unlabelled pair) and GQA (train: string image ids, the questions in the targets)
    labels = ["entailment", "-", "contradiction", "neutral", "contradiction"]
    write(tmp / "snli_ve" / "dev.jsonl", jsonl([dict(Flikr30kID=f"{i}.jpg", sentence2="there is a red",
                                                     gold_label=g, pairID=f"p{i}") for i, g in enumerate(labels)]))
    dump(tmp / "gqa" / "trainval_ans2label.pkl", {a: i for i, a in enumerate(ANSWERS)})
    dump(tmp / "gqa" / "train_target.pkl", [dict(question_id=9 - i, image_id=str(i), question="is it red",
                                                 labels=[i % 4], scores=[1.0]) for i in range(5)])
    return dict(world=world, tmp=tmp, vocab=str(vocab), features=str(tmp / "feat.lmdb"))


def split_of(corpus: dict, task: str, root: str, split: str = "train", features: str | None = None):
    dataset = f"volta:{corpus['tmp'] / root},features={features or corpus['features']}"
    return task_files_split(task, dataset, split, T, R, corpus["vocab"])


def expected_rows(world: World, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """features [L, D], region_mask [L], pixel boxes [L, 4] of world image i, computed here."""
    reg = world[i].regions
    n = min(reg.num_boxes, R)
    feats = np.zeros((R + 1, reg.features.shape[1]), np.float32)
    feats[1:n + 1] = reg.features[:n]
    feats[0] = reg.features[:n].mean(0)
    boxes = np.zeros((R + 1, 4))
    boxes[0] = [0, 0, reg.image_w, reg.image_h]
    boxes[1:n + 1] = reg.boxes[:n]
    return feats, (np.arange(R + 1) <= n).astype(np.int32), boxes


def test_vqa_examples_and_targets(corpus: dict) -> None:
    world = corpus["world"]
    split = split_of(corpus, "vqa", "vqa", "val")
    assert len(split) == 12 and split.num_labels == len(ANSWERS)
    ex = split.examples[3]  # sorted by question id: image 7's second question (id 701)
    assert {k: (v.shape, v.dtype) for k, v in ex.items()} == {
        "input_ids": ((T,), np.int32), "token_type_ids": ((T,), np.int32), "text_mask": ((T,), np.int32),
        "features": ((R + 1, 16), np.float32), "locations": ((R + 1, 5), np.float32),
        "region_mask": ((R + 1,), np.int32), "target": ((4,), np.float32)}
    np.testing.assert_allclose(ex["target"], [0, 1, 1 / 3, 0], rtol=1e-6)
    feats, mask, _ = expected_rows(world, 7)
    np.testing.assert_allclose(ex["features"], feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ex["region_mask"], mask)
    np.testing.assert_allclose(ex["locations"][0], [0, 0, 1, 1, 1])
    tok = Tokenizer.from_vocab_file(corpus["vocab"])
    ids, text_mask = tok.encode(f"is there a {world.class_names[1]}", T)
    np.testing.assert_array_equal(ex["input_ids"], ids)
    np.testing.assert_array_equal(ex["text_mask"], text_mask)
    assert split.chance == pytest.approx(0.5)  # "no" and "yes" each score 1 on half the questions
    batch = split.batch([0, 5, 11])
    assert batch["features"].shape == (3, R + 1, 16) and batch["target"].shape == (3, 4)


def test_refer_iou_targets(corpus: dict) -> None:
    world = corpus["world"]
    split = split_of(corpus, "refcoco+", "refcoco+", "val")
    assert len(split) == 4 and split.num_labels == 1
    hits = []
    for k, i in enumerate(range(8, 12)):
        ex = split.examples[k]
        _, mask, boxes = expected_rows(world, i)
        gold = np.asarray(world[i].objects[0].box, np.float64)
        iw = np.clip(np.minimum(boxes[:, 2], gold[2]) - np.maximum(boxes[:, 0], gold[0]) + 1, 0, None)
        ih = np.clip(np.minimum(boxes[:, 3], gold[3]) - np.maximum(boxes[:, 1], gold[1]) + 1, 0, None)
        union = ((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
                 + (gold[2] - gold[0] + 1) * (gold[3] - gold[1] + 1) - iw * ih)
        want = np.where(mask > 0, iw * ih / union, 0)
        assert ex["target"].shape == (R + 1,) and ex["target"].dtype == np.float32
        np.testing.assert_allclose(ex["target"], want, rtol=1e-5, atol=1e-6)
        hits.append(((want > 0.5) & (mask > 0)).sum() / mask.sum())
        assert want.max() > 0.5  # the sharp-ish detector found the object
    assert split.chance == pytest.approx(float(np.mean(hits)))


def test_nlvr2_two_images_per_example(corpus: dict) -> None:
    world = corpus["world"]
    split = split_of(corpus, "nlvr2", "nlvr2", "val")
    assert len(split) == 4 and split.chance == pytest.approx(0.5)
    for e in range(4):
        ex = split.examples[e]
        assert ex["features"].shape == (2, R + 1, 16) and ex["region_mask"].shape == (2, R + 1)
        assert ex["target"].dtype == np.int32 and int(ex["target"]) == int((e // 2 + e % 2) % 2 == 0)
        for side in range(2):
            np.testing.assert_allclose(ex["features"][side], expected_rows(world, 2 * (e // 2) + side)[0],
                                       rtol=1e-5, atol=1e-6)


def test_retrieval_options(corpus: dict) -> None:
    world = corpus["world"]
    split = split_of(corpus, "retrieval", "flickr30k")
    m = len(world[0].captions)
    assert len(split) == 4 * m and split.chance == pytest.approx(0.25)
    options = split.examples.options
    image_of = np.repeat(np.arange(4), m)
    pool = {3: 2, 2: 1, 1: 0, 0: 3}  # each image's only drawable hard image (train_hard_pool column 1)
    for c in range(4 * m):
        p = image_of[c]
        assert options[c, 0].tolist() == [c, p] and options[c, 2, 0] == c and options[c, 2, 1] != p
        assert options[c, 1, 1] == p and image_of[options[c, 1, 0]] != p
        assert options[c, 3, 1] == p and image_of[options[c, 3, 0]] == pool[p]
    ex = split.examples[1]
    assert ex["input_ids"].shape == (4, T) and ex["features"].shape == (4, R + 1, 16) and int(ex["target"]) == 0
    np.testing.assert_allclose(ex["features"][2], expected_rows(world, int(options[1, 2, 1]))[0], rtol=1e-5,
                               atol=1e-6)
    again = retrieval_options(image_of, None, seed=1)
    np.testing.assert_array_equal(again, retrieval_options(image_of, None, seed=1))  # deterministic per seed
    assert not np.array_equal(again, retrieval_options(image_of, None, seed=2))


def test_snli_ve_gqa_and_retrieval_val(corpus: dict) -> None:
    snli = split_of(corpus, "snli-ve", "snli_ve", "val")
    assert len(snli) == 4 and snli.num_labels == 3 and snli.chance == pytest.approx(0.5)  # "-" left out
    assert [int(snli.examples[k]["target"]) for k in range(4)] == [2, 0, 1, 0]  # VOLTA's LABEL_MAP
    np.testing.assert_allclose(snli.examples[1]["features"], expected_rows(corpus["world"], 2)[0], rtol=1e-5,
                               atol=1e-6)
    gqa = split_of(corpus, "gqa", "gqa")
    assert len(gqa) == 5 and gqa.chance == pytest.approx(0.4)  # answer 0 for images 0 and 4
    np.testing.assert_array_equal(gqa.examples[0]["target"], np.eye(4, dtype=np.float32)[0])  # qid 5 = image 4
    np.testing.assert_allclose(gqa.examples[0]["features"], expected_rows(corpus["world"], 4)[0], rtol=1e-5,
                               atol=1e-6)
    val = split_of(corpus, "retrieval", "flickr30k", "val")  # valid_ann.jsonl: no hard negatives
    image_of = np.repeat(np.arange(3), len(corpus["world"][4].captions))
    options = val.examples.options
    assert len(val) == len(image_of) and np.all(options[:, 3, 1] == image_of)
    assert np.all(image_of[options[:, 3, 0]] != image_of)


def test_missing_image_names_lmdb_and_id(corpus: dict, tmp_path: Path) -> None:
    world = corpus["world"]
    small = tmp_path / "small.lmdb"
    write_lmdb(small, {str(i): feature_row(world, world[i]) for i in range(12) if i != 9})
    with pytest.raises(BadRecord, match=rf"{small}: no image '9' in the feature LMDB \(needed by .*val_target.pkl "
                                        r"question_id 900\)"):
        split_of(corpus, "vqa", "vqa", "val", features=str(small))
    with pytest.raises(ValueError, match="missing features="):
        parse_dataset(f"volta:{corpus['tmp']}")
    assert parse_dataset("volta:a/b,features=f.lmdb,val_features=v") == ("a/b", {"features": "f.lmdb",
                                                                                 "val_features": "v"})


def test_examples_pickle_for_grain_workers(corpus: dict) -> None:
    split = split_of(corpus, "vqa", "vqa")
    split.examples[0]  # the environment is open in this process
    copy = pickle.loads(pickle.dumps(split.examples))
    for k, v in split.examples[4].items():
        np.testing.assert_array_equal(copy[4][k], v)


@pytest.mark.slow
def test_finetune_on_task_files(corpus: dict, tmp_path: Path) -> None:
    from jaxvl.configs.finetune import get_config
    from jaxvl.finetune.trainer import finetune

    cfg = get_config("vqa,uniter,tiny")
    cfg.data.dataset = f"volta:{corpus['tmp'] / 'vqa'},features={corpus['features']}"
    cfg.data.vocab_file, cfg.data.num_regions, cfg.data.max_seq_length = corpus["vocab"], R, T
    cfg.data.batch_size, cfg.data.eval_batch_size, cfg.data.num_threads = 8, 8, 1
    cfg.steps, cfg.eval_every, cfg.log_every, cfg.checkpoint.every = 4, 4, 2, 4
    cfg.checkpoint.async_save, cfg.progress = False, False
    finetune(cfg, str(tmp_path / "run"))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert os.path.exists(tmp_path / "run" / "results.md")
    assert results["n"] == 12 and results["chance"] == pytest.approx(50.0)  # the val split of the VQA files
    assert 0.0 <= results["rows"][0]["score"] <= 100.0
