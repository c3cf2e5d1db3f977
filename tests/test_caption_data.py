"""The captioning data layer: vocabulary, Karpathy reader and feature join, synthetic captioning world,
the ``CaptionImages`` builders through ``jaxvl prepare``, and the Grain caption pipeline.

The Karpathy fixture is a six-image ``dataset_coco.json`` whose word counts are worked out by hand
below, so the vocabulary (ORT's rule: count <= 5 -> UNK) is checked against known values.
"""

from __future__ import annotations

import base64
import collections
import copy
import json
import logging
from pathlib import Path

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from lmdb_fixtures import feature_entries, write_lmdb

from jaxvl.caption.data import CaptionPipelineConfig, CaptionTransform, caption_dataset, caption_vocab_for
from jaxvl.cli import main
from jaxvl.data.builders.captions import (
    CaptionConfig,
    CaptionExample,
    CaptionImages,
    parse_caption_knobs,
    synthetic_caption_builder,
    synthetic_caption_config,
)
from jaxvl.data.builders.common import RegionSpec, as_str
from jaxvl.data.caption_vocab import CaptionVocab, VocabMismatch
from jaxvl.data.grain import open_split
from jaxvl.data.readers.coco_karpathy import KarpathyCaptions, RegionJoin, caption_stats
from jaxvl.data.readers.tsv import FIELDS_LXMERT, format_row
from jaxvl.data.records import BadRecord, RegionFeatures
from jaxvl.data.sources import build_source
from jaxvl.data.synthetic import WorldConfig
from jaxvl.data.synthetic.captions import CaptionWorld, CaptionWorldConfig, relation

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()
D = 6
NO_SHARD = grain.sharding.NoSharding()

# ---------------------------------------------------------------------------------------------- vocabulary


def test_vocab_threshold_ids_encode_decode():
    caps = [["a", "dog"], ["a", "cat"], ["a", "dog", "runs"], ["the", "dog"]]  # a 3, dog 3, cat 1, runs 1, the 1
    vocab = CaptionVocab.build(caps, count_threshold=2)  # kept iff count > 2
    assert vocab.words == ("a", "dog", "UNK") and len(vocab) == 4 and vocab.unk_id == 3
    assert CaptionVocab.build(caps, count_threshold=3).words == ("UNK",)  # count 3 is not > 3
    assert CaptionVocab.build(caps, count_threshold=0).words == ("a", "dog", "cat", "runs", "the", "UNK")
    np.testing.assert_array_equal(vocab.encode(["a", "cat", "dog"]), [1, 3, 2])
    np.testing.assert_array_equal(vocab.encode("a dog a dog", max_length=3), [1, 2, 1])
    assert vocab.encode([]).shape == (0,) and vocab.encode(["a"]).dtype == np.int32
    assert vocab.decode([1, 2, 3, 0, 2, 2]) == "a dog UNK"  # stops at the end token
    assert vocab.decode([0, 1]) == "" and vocab.word_of(0) == "<end>"
    with pytest.raises(IndexError, match="caption token id 4 outside"):
        vocab.decode([4])
    with pytest.raises(ValueError, match="lists 'a' twice"):
        CaptionVocab(["a", "b", "a"])
    with pytest.raises(ValueError, match="without spaces"):
        CaptionVocab(["a b"])


def test_vocab_files_cocotalk_and_checkpoint_check(tmp_path):
    vocab = CaptionVocab(["a", "dog", "ünï"])
    vocab.save(tmp_path / "vocab.json")
    loaded = CaptionVocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.fingerprint() == vocab.fingerprint()
    (tmp_path / "cocotalk.json").write_text(json.dumps({"ix_to_word": vocab.ix_to_word(), "images": []}))
    assert CaptionVocab.load(tmp_path / "cocotalk.json") == vocab  # ORT's released vocabulary keeps its ids
    assert vocab.ix_to_word() == {"1": "a", "2": "dog", "3": "ünï", "4": "UNK"}
    vocab.check_matches(vocab.to_json())
    with pytest.raises(VocabMismatch, match="id 2 is 'cat' in the checkpoint but 'dog' in the data"):
        vocab.check_matches(CaptionVocab(["a", "cat", "ünï"]))
    with pytest.raises(VocabMismatch, match="the checkpoint has 4 caption ids, the data 5"):
        vocab.check_matches(CaptionVocab(["a", "dog"]).to_json())
    (tmp_path / "bad.json").write_text(json.dumps({"ix_to_word": {"1": "UNK", "2": "a"}}))
    with pytest.raises(ValueError, match="bad.json: 'UNK' must be the last id"):
        CaptionVocab.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1]")
    with pytest.raises(ValueError, match="other.json: a caption vocabulary must be a JSON object"):
        CaptionVocab.load(tmp_path / "other.json")


# ---------------------------------------------------------------------------------------------- Karpathy json


def sent(*tokens: str) -> dict:
    return {"tokens": list(tokens), "raw": " ".join(tokens).capitalize() + ".", "sentid": 0}


LONG = ["a"] + ["very"] * 18 + ["bird"]  # 20 tokens > 16
IMAGES = [  # (cocoid, split, captions); counts by hand below
    (101, "train", [["a", "dog"]] * 3 + [["a", "cat"]] * 2),
    (102, "restval", [["a", "dog", "runs"]] * 3 + [["a", "cat", "runs"]] * 3),
    (103, "val", [["a", "zebra"]] * 4 + [["zebra", "zebra", "cat"]]),
    (104, "test", [["a", "dog"], ["a", "cat"], ["a", "bird"]]),
    (105, "train", [["the", "bird"]] * 6 + [LONG]),
]
# train + restval: a 12, dog 6, cat 5, runs 6, the 6, bird 7, very 18 -> count > 5 keeps all but cat
TRAIN_WORDS = ("a", "dog", "runs", "the", "bird", "very", "UNK")
# train alone (restval not folded): a 6, dog 3, cat 2, the 6, bird 7, very 18
TRAIN_ONLY_WORDS = ("a", "the", "bird", "very", "UNK")
# every split: a 19, dog 7, cat 7, runs 6, zebra 6, bird 8 (first in test image 104), the 6, very 18
ALL_WORDS = ("a", "dog", "cat", "runs", "zebra", "bird", "the", "very", "UNK")
BOXES = {"101": 3, "102": 2, "103": 4, "104": 1, "105": 2}  # R = 3, the most among the train images


def karpathy_json(path: Path, images=IMAGES) -> Path:
    entries = [{"filepath": "val2014", "filename": f"COCO_val2014_{cocoid:012d}.jpg", "imgid": i, "cocoid": cocoid,
                "split": split, "sentids": list(range(len(caps))), "sentences": [sent(*c) for c in caps]}
               for i, (cocoid, split, caps) in enumerate(images)]
    path.write_text(json.dumps({"dataset": "coco", "images": entries}))
    return path


def region(image_id: str, n: int, seed: int, degenerate: bool = False) -> RegionFeatures:
    """n boxes inside a 60x80 image (all of zero width with ``degenerate``), D-dim features, no classes."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 30, (n, 2))
    wh = np.zeros((n, 2)) if degenerate else rng.uniform(1, 30, (n, 2))
    return RegionFeatures(image_id, image_h=60, image_w=80, boxes=np.concatenate([xy, xy + wh], 1).astype(np.float32),
                          features=rng.normal(size=(n, D)).astype(np.float32))


def write_features(path: Path, fmt: str, recs: list[RegionFeatures]) -> Path:
    """``recs`` as a directory of flat npz files, a 10-column TSV or a VOLTA per-image feature LMDB."""
    if fmt == "npz":
        path.mkdir()
        for r in recs:
            np.savez(path / f"{r.image_id}.npz", features=r.features, boxes=r.boxes, num_boxes=r.num_boxes,
                     image_h=r.image_h, image_w=r.image_w)
    elif fmt == "tsv":
        path.write_text("".join(format_row(r, FIELDS_LXMERT) + "\n" for r in recs))
    else:
        def b64(a):
            return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()

        rows = [(r.image_id, {"img_id": r.image_id, "img_h": str(r.image_h), "img_w": str(r.image_w),
                              "num_boxes": str(r.num_boxes), "boxes": b64(r.boxes), "features": b64(r.features)})
                for r in recs]
        write_lmdb(path, feature_entries(rows).items(), subdir=False)
    return path


def feature_records(boxes=BOXES, degenerate=()) -> list[RegionFeatures]:
    return [region(i, n, seed=int(i), degenerate=i in degenerate) for i, n in boxes.items()]


def test_karpathy_splits_counts_and_vocab(tmp_path):
    path = karpathy_json(tmp_path / "dataset_coco.json")
    data = KarpathyCaptions(path)
    assert {s: [im.image_id for im in imgs] for s, imgs in data.splits.items()} == {
        "train": ["101", "102", "105"], "val": ["103"], "test": ["104"]}
    assert data.images[1].original_split == "restval" and data.images[1].split == "train"
    assert data.images[0].file_path == "val2014/COCO_val2014_000000000101.jpg"
    assert data.images[4].captions[-1] == LONG  # every caption kept, tokens unchanged
    assert data.caption_counts() == {"train": {5: 1, 6: 1, 7: 1}, "val": {5: 1}, "test": {3: 1}}
    vocab = data.build_vocab()
    assert vocab.words == TRAIN_WORDS
    assert data.build_vocab(splits=("train", "restval", "val", "test")).words == ALL_WORDS
    assert caption_stats(data.splits["train"], vocab, 16) == {
        "images": 3, "captions": 18, "truncated_captions": 1, "tokens": 12 + 6 + 5 + 6 + 6 + 7 + 18, "unk_tokens": 5}
    assert caption_stats(data.splits["val"], vocab, 16)["unk_tokens"] == 7  # zebra x 6, cat
    separate = KarpathyCaptions(path, fold_restval=False)
    assert list(separate.splits) == ["train", "restval", "val", "test"]
    assert separate.build_vocab().words == TRAIN_ONLY_WORDS
    assert [im.image_id for im in KarpathyCaptions(path, id_key="filename").images][:1] == ["COCO_val2014_000000000101"]


def _mutate(index: int, change):
    """The fixture's images with ``change(entry)`` applied to image ``index`` (its JSON object)."""
    def apply(entries: list) -> list:
        entries = copy.deepcopy(entries)
        result = change(entries[index])
        if result is not None:
            entries[index] = result
        return entries
    return apply


def _set(key, value):
    def change(img):
        img[key] = value
    return change


def _drop(key):
    def change(img):
        del img[key]
    return change


def _sentence(j, tokens):
    def change(img):
        img["sentences"][j]["tokens"] = tokens
    return change


MALFORMED = {  # name -> (mutation of the images list, needles of the message after "<file>: ")
    "not_an_object": (_mutate(2, lambda img: ["x"]), ["image 2: must be a JSON object; got list"]),
    "no_cocoid": (_mutate(2, _drop("cocoid")), ["image 2: no 'cocoid'"]),
    "bool_cocoid": (_mutate(2, _set("cocoid", True)), ["image 2: 'cocoid' must be an integer"]),
    "unknown_split": (_mutate(2, _set("split", "dev")), ["image 2 (cocoid 103): split 'dev' is not one of"]),
    "no_split": (_mutate(2, _drop("split")), ["image 2 (cocoid 103): split None"]),
    "no_sentences": (_mutate(2, _drop("sentences")), ["image 2 (cocoid 103): 'sentences' must be a list"]),
    "sentences_dict": (_mutate(2, _set("sentences", {"tokens": []})), ["(cocoid 103): 'sentences' must be a list"]),
    "zero_captions": (_mutate(2, _set("sentences", [])), ["image 2 (cocoid 103): has zero captions"]),
    "sentence_not_dict": (_mutate(2, _set("sentences", ["a dog"])), ["(cocoid 103): sentence 0 has no 'tokens'"]),
    "no_tokens": (_mutate(2, _sentence(1, None)), ["image 2 (cocoid 103): sentence 1 has no 'tokens' list"]),
    "tokens_str": (_mutate(2, _sentence(1, "a zebra")), ["sentence 1 has no 'tokens' list"]),
    "empty_tokens": (_mutate(2, _sentence(3, [])), ["image 2 (cocoid 103): sentence 3 has no tokens"]),
    "token_int": (_mutate(2, _sentence(0, ["a", 7])), ["sentence 0 holds tokens that are not single words: [7]"]),
    "token_space": (_mutate(2, _sentence(0, ["a zebra"])), ["not single words: ['a zebra']"]),
    "repeated_id": (_mutate(2, _set("cocoid", 101)), ["image 2 (cocoid '101') repeats the id of image 0"]),
}


def test_malformed_corpus_is_large_enough():
    assert len(MALFORMED) >= 15


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_karpathy_names_file_and_image(tmp_path, name):
    mutate, needles = MALFORMED[name]
    path = karpathy_json(tmp_path / "dataset_coco.json")
    data = json.loads(path.read_text())
    data["images"] = mutate(data["images"])
    path.write_text(json.dumps(data))
    with pytest.raises(BadRecord) as info:
        KarpathyCaptions(path)
    for needle in needles:
        assert f"{path}: " in str(info.value) and needle in str(info.value)
    skipped = KarpathyCaptions(path, skip_bad=True)  # the bad image is left out and counted
    assert skipped.skipped == 1 and len(skipped.images) == len(IMAGES) - 1


def test_karpathy_file_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{1")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        KarpathyCaptions(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="list.json: expected a JSON object with an 'images' list"):
        KarpathyCaptions(tmp_path / "list.json")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        KarpathyCaptions(tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="id_key='sentid'"):
        KarpathyCaptions(tmp_path / "list.json", id_key="sentid")


@pytest.mark.parametrize("fmt", ["lmdb", "npz", "tsv"])
def test_region_join_missing_and_zero_valid_boxes(tmp_path, fmt):
    data = KarpathyCaptions(karpathy_json(tmp_path / "dataset_coco.json"))
    recs = {r.image_id: r for r in feature_records({"101": 3, "102": 2, "105": 2}, degenerate={"102"})}
    features = [write_features(tmp_path / f"a.{fmt}", fmt, [recs["105"]]),  # two stores, looked up in turn
                write_features(tmp_path / f"b.{fmt}", fmt, [recs["101"], recs["102"]])]
    train = data.splits["train"]
    with pytest.raises(BadRecord, match=r"b\.\w+: record '102' \(train image 1 of the split file\) has zero valid"):
        list(RegionJoin(features, fmt).pairs(train))
    join = RegionJoin(features, fmt, skip_bad=True)
    pairs = list(join.pairs(train + data.splits["test"]))  # 104 has no features
    order = [("105", "105"), ("101", "101")] if fmt == "tsv" else [("101", "101"), ("105", "105")]  # TSV line order
    assert [(im.image_id, rec.image_id) for im, rec in pairs] == order
    assert join.counts == {"images with zero valid boxes": 1, "images without usable features": 1}
    for _, rec in pairs:
        np.testing.assert_array_equal(rec.features, recs[rec.image_id].features)
        np.testing.assert_array_equal(rec.boxes, recs[rec.image_id].boxes)
    with pytest.raises(BadRecord) as info:
        list(RegionJoin(features, fmt).pairs(data.splits["test"]))
    assert f"{features[0]} + {features[1]}: no features for image '104' (test image 3" in str(info.value)


# ---------------------------------------------------------------------------------------------- prepare


def run(capsys, source: str, out: Path, *flags: str) -> tuple[int, str, str]:
    rc = main(["prepare", "--source", source, "--out", str(out), "--quiet", *flags])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def stored_examples(path: Path, split: str) -> dict[str, dict]:
    source, _ = open_split(path, split)
    return {as_str(source[i]["image_id"]): source[i] for i in range(len(source))}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """The Karpathy fixture prepared by ``jaxvl prepare`` from two TSVs, as LXMERT ships COCO (R = 3, from train)."""
    tmp = tmp_path_factory.mktemp("coco")
    path = karpathy_json(tmp / "dataset_coco.json")
    recs = feature_records()
    val = write_features(tmp / "val2014_obj36.tsv", "tsv", [r for r in recs if r.image_id in ("103", "104", "102")])
    train = write_features(tmp / "train2014_obj36.tsv", "tsv", [r for r in recs if r.image_id in ("101", "105")])
    rc = main(["prepare", "--source", f"coco-karpathy:{path},features={train}+{val}", "--out", str(tmp / "data"),
                       "--quiet"])
    assert rc == 0
    (data_dir,) = (tmp / "data" / "jaxvl_caption_images").glob("*/1.0.0")
    return data_dir, {r.image_id: r for r in recs}


def test_prepare_coco_karpathy_stores_regions_and_captions(coco):
    data_dir, recs = coco
    assert data_dir.parent.name == "coco_karpathy-dataset_coco-train2014_obj36"
    source, info = open_split(data_dir, "train")
    vocab = caption_vocab_for(info)
    assert vocab.words == TRAIN_WORDS and info.metadata["max_length"] == 16
    assert info.metadata["regions"] == {"num_regions": 3, "feature_dim": D, "num_classes": None}
    stats = info.metadata["caption_stats"]
    assert stats["train"] == {"images": 3, "captions": 18, "captions_per_image": {"5": 1, "6": 1, "7": 1},
                              "truncated_captions": 1, "tokens": 60, "unk_tokens": 5, "images_over_R_boxes": 0}
    assert stats["val"]["images_over_R_boxes"] == 1 and stats["test"]["captions_per_image"] == {"3": 1}
    assert info.metadata["split_file_stats"]["val"]["unk_tokens"] == 7
    captions = {str(c): caps for c, _, caps in IMAGES}
    for split, ids in (("train", ["101", "102", "105"]), ("val", ["103"]), ("test", ["104"])):
        stored = stored_examples(data_dir, split)
        assert sorted(stored) == ids
        for image_id, ex in stored.items():
            caps, rec = captions[image_id], recs[image_id]
            n, r = min(rec.num_boxes, 3), rec.num_boxes
            assert ex["captions"].shape == (len(caps), 16) and ex["num_captions"] == len(caps)
            assert as_str(ex["references"]).split("\n") == [" ".join(c) for c in caps]
            for row, length, tokens in zip(ex["captions"], ex["caption_lengths"], caps, strict=True):
                assert length == min(len(tokens), 16) and not row[length:].any()
                assert vocab.decode(row) == " ".join(t if t in vocab else "UNK" for t in tokens[:16])
            np.testing.assert_array_equal(ex["features"][:n], rec.features[:n])
            assert list(ex["region_mask"]) == [1] * n + [0] * (3 - n) and ex["num_boxes"] == min(r, 3)
    long_row = stored_examples(data_dir, "train")["105"]["captions"][-1]
    np.testing.assert_array_equal(long_row, [1] + [6] * 15)  # "a" + 15 x "very": cut at 16


def test_prepare_coco_karpathy_skip_bad_and_vocab_options(tmp_path, capsys):
    path = karpathy_json(tmp_path / "dataset_coco.json")
    recs = feature_records({"101": 3, "102": 2, "103": 4, "105": 2}, degenerate={"102"})  # 104 missing, 102 no box
    features = write_features(tmp_path / "feat", "npz", recs)
    source = f"coco-karpathy:{path},features={features},vocab_splits=all,name=mine"
    rc, _, err = run(capsys, source, tmp_path / "data")
    assert rc == 2 and "record '102' (train image 1 of the split file) has zero valid boxes" in err
    rc, _, err = run(capsys, source, tmp_path / "data", "--skip-bad")
    assert rc == 2 and "split 'test': no usable images (every image was skipped" in err
    rc, out, err = run(capsys, source + ",splits=train+val", tmp_path / "data", "--skip-bad")
    assert rc == 0, err
    assert "train 2, val 1 examples; regions R=3 D=6 K=None" in out
    assert f"1 train: images with zero valid boxes in {features}" in out
    assert "train: 12 captions (per image: {'5': 1, '7': 1}), 1 truncated, 0 of 42 tokens UNK" in out  # 10+12+20
    _, info = open_split(tmp_path / "data" / "jaxvl_caption_images" / "mine" / "1.0.0", "val")
    assert caption_vocab_for(info).words == ALL_WORDS and info.metadata["fold_restval"] is True
    assert info.metadata["skipped"] == {f"train: images with zero valid boxes in {features}": 1}
    CaptionVocab(["a", "dog"]).save(tmp_path / "vocab.json")
    rc, out, err = run(capsys, f"coco-karpathy:{path},features={features},vocab={tmp_path / 'vocab.json'},"
                               "max_length=4,name=given,splits=val", tmp_path / "data")
    assert rc == 0, err
    source, info = open_split(tmp_path / "data" / "jaxvl_caption_images" / "given" / "1.0.0", "val")
    assert caption_vocab_for(info) == CaptionVocab(["a", "dog"]) and info.metadata["max_length"] == 4
    assert list(info.splits) == ["val"] and info.metadata["caption_stats"]["val"]["unk_tokens"] == 7  # zebra x 6, cat
    np.testing.assert_array_equal(source[0]["captions"][-1], [3, 3, 3, 0])  # zebra zebra cat: all UNK


BAD_SOURCES = [
    ("coco-karpathy:{json}", ["--source coco-karpathy: missing option features="]),
    ("coco-karpathy:{json},features={feat},colour=red", ["unknown option 'colour'"]),
    ("coco-karpathy:{tmp}/nothing.json,features={feat}", ["Karpathy split file", "no such file"]),
    ("coco-karpathy:{json},features={feat},fold_restval=maybe", ["fold_restval='maybe' must be 1 or 0"]),
    ("coco-karpathy:{json},features={feat},vocab_splits=val", ["vocab_splits='val' must be train or all"]),
    ("coco-karpathy:{json},features={feat},count_threshold=-1", ["count_threshold='-1' must be an integer >= 0"]),
    ("coco-karpathy:{json},features={feat},vocab={json},count_threshold=3", ["vocab= loads a vocabulary"]),
    ("coco-karpathy:{json},features={feat},vocab={json}", ["neither a jaxvl-caption-vocab file"]),
    ("coco-karpathy:{json},features={feat},id_key=sentid", ["id_key='sentid'"]),
    ("coco-karpathy:{json},features={feat},format=hdf5", ["format='hdf5'"]),
    ("coco-karpathy:{json},features={feat}+{json}", ["features= mixes formats"]),
    ("coco-karpathy:{json},features={feat}+{tmp}/none", ["features {tmp}/none: no such file"]),
    ("coco-karpathy:{json},features={feat},splits=train+dev", ["has no images in ['dev']; it has train+val+test"]),
    ("synthetic-captions:colour=red", ["unknown synthetic-captions knob 'colour'", "grounding"]),
    ("synthetic-captions:grounding=lots", ["synthetic-captions knob grounding='lots': expected float"]),
    ("synthetic-captions:num_images=x", ["synthetic knob num_images='x'"]),
    ("synthetic-captions:grounding=2", ["grounding=2.0 must lie in [0, 1]"]),
]


@pytest.mark.parametrize("source,needles", BAD_SOURCES, ids=[s for s, _ in BAD_SOURCES])
def test_bad_caption_sources(tmp_path, source, needles):
    path = karpathy_json(tmp_path / "dataset_coco.json")
    feat = write_features(tmp_path / "feat", "npz", feature_records())
    fmt = {"json": path, "feat": feat, "tmp": tmp_path}
    with pytest.raises(ValueError) as info:
        build_source(source.format(**fmt), str(tmp_path / "out"))
    for needle in needles:
        assert needle.format(**fmt) in str(info.value)


# ---------------------------------------------------------------------------------------------- synthetic world


def test_relation_rule_hand_cases():
    box = np.array
    a, far_right, far_below = box([0, 0, 10, 10]), box([100, 0, 110, 10]), box([0, 100, 10, 110])
    assert relation(a, far_right) == "left of" and relation(far_right, a) == "right of"
    assert relation(a, far_below) == "above" and relation(far_below, a) == "below"
    assert relation(a, box([2, 2, 12, 12])) == "next to"  # offsets 0.2 of the mean size on both axes
    assert relation(a, box([4, 4, 14, 14])) == "next to" and relation(a, box([6, 2, 16, 12])) == "left of"
    cup, table = box([10, 0, 20, 10]), box([0, 10, 40, 30])  # the cup's bottom edge rests on the table's top
    assert relation(cup, table) == "on" and relation(table, cup) == "below"
    assert relation(cup, table, on_band=0.0) == "on" and relation(box([10, 0, 20, 7]), table) == "on"  # 3 <= 5 px
    assert relation(box([10, 0, 20, 4]), table) == "above"  # 6 px above the table: beyond the band of 20 / 4
    assert relation(box([35, 0, 50, 10]), table) == "above"  # overlaps the table by 5 < half its width


def test_caption_world_deterministic_distinct_and_grounded():
    small = CaptionWorld(CaptionWorldConfig(world=WorldConfig(num_images=4)))
    big = CaptionWorld(CaptionWorldConfig(world=WorldConfig(num_images=40)))
    assert [small[i].captions for i in range(4)] == [big[i].captions for i in range(4)]
    assert big[5].captions != big[6].captions
    words = set(big.vocabulary())
    for im in big:
        assert len(set(im.captions)) == len(im.captions) == 5 and im.image_id == f"{int(im.image_id):06d}"
        for text, objs, rel in zip(im.captions, im.mentions, im.relations, strict=True):
            assert set(text.split()) <= words
            for o in objs:  # every noun phrase names a gold object of the image: its class word
                assert big.world.class_names[im.objects[o].label] in text.split()
            if rel is not None:
                assert f" {rel} " in text and rel == relation(im.objects[objs[0]].box, im.objects[objs[1]].box)
    with pytest.raises(IndexError):
        big[40]
    with pytest.raises(ValueError, match="grounding=1.5"):
        CaptionWorldConfig(grounding=1.5)
    # Two identical objects, relation captions only, one noun-phrase form: still 5 different captions.
    same = CaptionWorld(CaptionWorldConfig(world=WorldConfig(num_images=20, max_objects=2, num_classes=11,
                                                             num_attributes=1), relation_prob=1.0, attribute_prob=1.0))
    assert all(len(set(im.captions)) == 5 for im in same)
    with pytest.raises(ValueError, match="an image may have only 5 distinct captions"):
        CaptionWorldConfig(captions_per_image=6, attribute_prob=0.0, world=WorldConfig(min_objects=1))


def _sighted_vs_blind(grounding: float, n: int = 160) -> tuple[float, float, float, float]:
    """(class recall of a reader of region features, of a blind guesser with as many guesses;
    relation accuracy from the detected boxes, of always guessing the most common relation)."""
    cw = CaptionWorld(CaptionWorldConfig(world=WorldConfig(num_images=n), grounding=grounding))
    w = cw.world
    k, a = w.cfg.num_classes, w.cfg.num_attributes
    means = (w.prototypes[w.prototype_of][:, None] + w.attribute_vectors[None]).reshape(k * a, -1)
    means = np.concatenate([means, w.clutter[None]])  # the last row: clutter
    index = {name: i for i, name in enumerate(w.class_names)}
    seen_hits, mentioned, sizes, rel_hits, rels = 0, [], [], 0, collections.Counter()
    for im in cw:
        nearest = ((im.regions.features[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        seen = {int(j) // a for j in nearest if j < k * a}  # classes read off the regions
        sizes.append(len(seen))
        for text, objs, rel in zip(im.captions, im.mentions, im.relations, strict=True):
            classes = [index[t] for t in text.split() if t in index]
            seen_hits += sum(c in seen for c in classes)
            mentioned += classes
            if rel is not None:
                rels[rel] += 1
                if objs[0] >= 0:  # the boxes of the regions detecting the two objects
                    boxes = [im.regions.boxes[im.region_objects == o].mean(0) for o in objs]
                    rel_hits += relation(boxes[0], boxes[1]) == rel
    top = {c for c, _ in collections.Counter(mentioned).most_common(round(float(np.mean(sizes))))}
    blind = sum(c in top for c in mentioned) / len(mentioned)
    return seen_hits / len(mentioned), blind, rel_hits / sum(rels.values()), max(rels.values()) / sum(rels.values())


def test_regions_and_boxes_determine_the_captions():
    sighted, blind, rel, majority = _sighted_vs_blind(1.0)
    assert sighted == 1.0 and blind < 0.3  # class words: read off the features vs best blind guesses
    assert rel > 0.85 and majority < 0.3  # relation words: from the detected boxes vs the most common relation
    sighted0, blind0, rel0, _ = _sighted_vs_blind(0.0)  # ungrounded captions: the regions do not help
    assert abs(sighted0 - blind0) < 0.1 and rel0 == 0.0


def test_caption_knobs_and_config_names():
    knobs = parse_caption_knobs("num_images=8,grounding=0.5,captions_per_image=3,val_images=2,test_images=0")
    assert knobs == {"num_images": 8, "val_images": 2, "grounding": 0.5, "captions_per_image": 3, "test_images": 0}
    cfg = synthetic_caption_config(**knobs)
    assert cfg.name == "num_images-8+captions_per_image-3+grounding-0.5+test_images-0+val_images-2"
    assert cfg.world.captions_per_image == 3 and cfg.world.world.num_images == 8
    assert cfg.split_ranges == {"train": (0, 8), "val": (8, 10)}
    assert synthetic_caption_config().name == "default"


# ---------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A tiny synthetic captioning world (12 train, 4 val, 4 test images; R = 10, D = 24), prepared."""
    out = tmp_path_factory.mktemp("captions")
    rc = main(["prepare", "--source", "synthetic-captions:num_images=12,val_images=4,test_images=4", "--out", str(out),
                       "--quiet"])
    assert rc == 0
    source, info = open_split(out / "jaxvl_synthetic_captions" / "num_images-12+test_images-4+val_images-4" / "1.0.0",
                              "train")
    world = CaptionWorld(CaptionWorldConfig(world=WorldConfig(num_images=20)))
    return source, info, world


def batches(source, n, shard=NO_SHARD, **kw):
    kw.setdefault("num_threads", 0)  # the same batches as with threads (checked below), and faster on 2 cores
    it = iter(caption_dataset(source, CaptionPipelineConfig(**kw), shard=shard))
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_pipeline_shapes_layout_and_decoding(synthetic):
    source, info, world = synthetic
    vocab = caption_vocab_for(info)
    assert vocab == CaptionVocab(world.vocabulary())
    shapes = {"features": ((4, 10, 24), np.float32), "boxes": ((4, 10, 4), np.float32),
              "region_mask": ((4, 10), np.int32), "num_boxes": ((4,), np.int32), "image_size": ((4, 2), np.int32),
              "captions": ((4, 5, 18), np.int32), "caption_lengths": ((4, 5), np.int32),
              "caption_mask": ((4, 5), np.int32)}
    for b in batches(source, 4, batch_size=4):  # 4 batches of 4 > 12 images: crosses an epoch
        assert {k: (v.shape, v.dtype) for k, v in b.items() if k != "image_id"} == shapes
        assert b["image_id"].shape == (4,)
        assert (b["captions"][:, :, 0] == 0).all() and (b["caption_mask"] == 1).all()
        np.testing.assert_array_equal(b["image_size"], np.tile([480, 640], (4, 1)))
        lengths = b["caption_lengths"]
        np.testing.assert_array_equal((b["captions"] != 0).sum(-1), lengths)  # words are never id 0
        t = np.arange(18)
        assert (b["captions"][(t[None, None] > lengths[..., None])] == 0).all()  # end token, then padding
        x1, y1, x2, y2 = np.moveaxis(b["boxes"], -1, 0)
        np.testing.assert_array_equal(b["region_mask"], (x2 > x1) & (y2 > y1))
    first = batches(source, 1, batch_size=4, seed=3)[0]
    for image_id, rows, feats in zip(first["image_id"], first["captions"], first["features"], strict=True):
        image = world[int(image_id)]
        assert [vocab.decode(row[1:]) for row in rows] == image.captions  # 5 of 5 captions: the window is all
        np.testing.assert_array_equal(feats, image.regions.features)


def test_pipeline_deterministic_sharded_and_resumable(synthetic):
    source, _, _ = synthetic
    a = batches(source, 4, batch_size=4, seed=7)
    assert_same(a, batches(source, 4, batch_size=4, seed=7, num_threads=4))  # threads do not change the order
    c = batches(source, 4, batch_size=4, seed=8)
    assert not all(np.array_equal(x["image_id"], y["image_id"]) for x, y in zip(a, c, strict=True))
    hosts = [list(caption_dataset(source, CaptionPipelineConfig(batch_size=4, num_epochs=1, seed=1),
                                  shard=grain.sharding.ShardOptions(p, 2))) for p in range(2)]
    ids = [sorted(i for b in h for i in b["image_id"]) for h in hosts]
    assert [len(h) for h in hosts] == [3, 3] and not set(ids[0]) & set(ids[1])  # 12 images: 3 batches of 2 each
    assert sorted(ids[0] + ids[1]) == [f"{i:06d}" for i in range(12)]
    cfg = CaptionPipelineConfig(batch_size=4, seed=11)
    it = iter(caption_dataset(source, cfg, shard=NO_SHARD))
    for _ in range(2):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]  # crosses the epoch boundary (3 batches per epoch)
    restored = iter(caption_dataset(source, cfg, shard=NO_SHARD))
    restored.set_state(state)
    assert_same([next(restored) for _ in range(3)], expected)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        caption_dataset(source, CaptionPipelineConfig(batch_size=16), shard=NO_SHARD)


def test_pipeline_caption_windows_and_padding(coco):
    data_dir, _ = coco
    source, _ = open_split(data_dir, "train")
    stored = {as_str(source[i]["image_id"]): source[i] for i in range(len(source))}
    windows = collections.Counter()
    for b in batches(source, 20, batch_size=3, seed=5):  # 20 epochs over the 3 train images
        for image_id, rows, mask in zip(b["image_id"], b["captions"], b["caption_mask"], strict=True):
            caps = stored[image_id]["captions"]  # [N, 16]
            assert (mask == 1).all()
            start = next(s for s in range(len(caps) - 4) if np.array_equal(rows[:, 1:17], caps[s:s + 5]))
            windows[image_id, start] += 1  # 5 consecutive captions of the image (ORT's window)
    starts = {image_id: {s for i, s in windows if i == image_id} for image_id in stored}
    assert starts == {"101": {0}, "102": {0, 1}, "105": {0, 2}}  # 105's windows at 0 and 1 hold the same captions
    first = CaptionTransform(caption_window="first").random_map(stored["105"], np.random.default_rng(0))
    np.testing.assert_array_equal(first["captions"][:, 1:17], stored["105"]["captions"][:5])
    test = stored_examples(data_dir, "test")["104"]  # 3 captions: 2 zero rows, masked
    row = CaptionTransform(num_regions=5).random_map(test, np.random.default_rng(0))
    assert list(row["caption_mask"]) == [1, 1, 1, 0, 0] and not row["captions"][3:].any()
    assert list(row["caption_lengths"]) == [2, 2, 2, 0, 0] and row["features"].shape == (5, D)
    assert list(row["region_mask"]) == [1, 0, 0, 0, 0]


def test_caption_builder_direct_config(tmp_path):
    """``CaptionImages`` from a plain ``CaptionConfig``: an empty caption is refused naming the image."""
    rec = region("7", 2, 0)
    config = CaptionConfig(name="direct", regions=RegionSpec(2, D, None), vocab=CaptionVocab(["a"]), max_length=3,
                           splits={"train": lambda: [CaptionExample(rec, [["a", "b"], []])]})
    builder = CaptionImages(config=config, data_dir=str(tmp_path), file_format="array_record")
    with pytest.raises(BadRecord, match="image '7' has no captions or an empty caption"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def test_synthetic_builder_registered_default(tmp_path):
    builder = synthetic_caption_builder(synthetic_caption_config(), str(tmp_path))
    assert builder.builder_config.name == "default" and builder.info.metadata["max_length"] == 16
    assert set(builder.info.features) >= {"captions", "caption_lengths", "references", "region_mask", "features"}
