"""``jaxvl prepare`` over the file sources, end to end on small files in each exact layout.

Each source is prepared from files written under tmp_path, read back with ``open_split`` and compared,
example by example, with the records its reader yields when read directly. Also: the region spec read
off the first records (R = most boxes, or ``num_regions``), ``--skip-bad`` counts, and errors for bad
source strings.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from lmdb_fixtures import cc_datapoint, feature_entries, tensorpack_entries, tsv_row, write_lmdb
from test_readers_files import ANN_100, ANN_200, SENTENCES_100, SENTENCES_200, region, write_flickr

from jaxvl.cli import main
from jaxvl.data import prepare
from jaxvl.data.builders import RegionSpec, decode_ablation, decode_regions
from jaxvl.data.builders.common import as_str
from jaxvl.data.grain import open_split
from jaxvl.data.readers.flickr30k_entities import load_examples
from jaxvl.data.readers.npz import NpzFeatureReader
from jaxvl.data.readers.tsv import FIELDS_LXMERT, TsvFeatureReader, format_row
from jaxvl.data.readers.volta_lmdb import FeatureLMDB, read_cc_lmdb
from jaxvl.data.records import CaptionPair, RegionFeatures
from jaxvl.data.sources import SOURCES, SourceError, build_source, feature_format, parse_source

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()
D, K1 = 8, 5  # CC fixtures: feature size, classes incl. background


def run(capsys, source: str, out: Path, *flags: str) -> tuple[int, str, str]:
    """``jaxvl prepare --source SOURCE --out OUT --quiet FLAGS`` -> (exit status, stdout, stderr)."""
    rc = main(["prepare", "--source", source, "--out", str(out), "--quiet", *flags])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def dataset_dir(out: Path, name: str) -> Path:
    (path,) = (out / name).glob("*/1.0.0")
    return path


def examples(path: Path, split: str) -> list[dict]:
    source, _ = open_split(path, split)
    return [source[i] for i in range(len(source))]


def assert_regions(example: dict, rec: RegionFeatures, spec: RegionSpec) -> None:
    """The stored example holds ``rec``'s first R regions, zero-padded to R, with the classes when K is set."""
    got = decode_regions(example)
    n = min(rec.num_boxes, spec.num_regions)
    assert (got.image_id, got.image_h, got.image_w, got.num_boxes) == (rec.image_id, rec.image_h, rec.image_w, n)
    assert example["features"].shape == (spec.num_regions, spec.feature_dim)
    assert not example["features"][n:].any() and not example["boxes"][n:].any()
    np.testing.assert_array_equal(got.features, rec.features[:n])
    np.testing.assert_array_equal(got.boxes, rec.boxes[:n])
    if spec.num_classes is None:
        assert "cls_prob" not in example
        return
    np.testing.assert_array_equal(got.cls_prob, rec.cls_prob[:n])
    np.testing.assert_array_equal(got.objects_id, rec.objects_id[:n])
    np.testing.assert_array_equal(got.objects_conf, rec.objects_conf[:n])


def assert_pairs(path: Path, split: str, pairs: list, spec: RegionSpec) -> None:
    """The split holds exactly ``pairs`` (TFDS shuffles the order, so they are matched by image and caption)."""
    stored = {(as_str(ex["image_id"]), as_str(ex["caption"])): ex for ex in examples(path, split)}
    assert sorted(stored) == sorted((p.regions.image_id, p.caption) for p in pairs)
    for p in pairs:
        assert_regions(stored[p.regions.image_id, p.caption], p.regions, spec)


# ---------------------------------------------------------------------------------------------- volta-cc


def cc_lmdb(path: Path, boxes: list[int], serializer: str = "msgpack", subdir: bool = False, seed: int = 0,
            first_id: int = 1000) -> Path:
    """A tensorpack LMDBSerializer LMDB of CC datapoints with the given box counts (str scalars, like VOLTA's)."""
    rng = np.random.default_rng(seed)
    dps = [cc_datapoint(rng, str(first_id + i), num_boxes=n, feature_dim=D, num_classes=K1)
           for i, n in enumerate(boxes)]
    return write_lmdb(path, tensorpack_entries(dps, serializer).items(), subdir)


def test_volta_cc_train_and_val(tmp_path, capsys):
    train = cc_lmdb(tmp_path / "training_feat_all.lmdb", [3, 5, 2])  # one file + -lock, msgpack (tensorpack 0.9)
    val = cc_lmdb(tmp_path / "val_lmdb", [4, 1], "pickle", subdir=True, seed=1, first_id=2000)  # a directory
    rc, out, err = run(capsys, f"volta-cc:{train},val={val}", tmp_path / "data")
    assert rc == 0, err
    spec = RegionSpec(5, D, K1 - 1)  # R: the most boxes seen; D, K: the first record's
    assert "train 3, val 2 examples; regions R=5 D=8 K=4" in out
    path = dataset_dir(tmp_path / "data", "jaxvl_pretrain_pairs")
    assert path.parent.name == "volta_cc-training_feat_all"
    assert_pairs(path, "train", list(read_cc_lmdb(train, feature_dim=None, num_classes=None)), spec)
    assert_pairs(path, "val", list(read_cc_lmdb(val, feature_dim=None, num_classes=None)), spec)
    _, info = open_split(path, "val")
    assert info.metadata["files"] == {"train": str(train), "val": str(val)} and info.metadata["source"] == "volta-cc"


def test_volta_cc_directory_num_regions_and_no_classes(tmp_path, capsys):
    cc = tmp_path / "conceptual_captions"
    cc.mkdir()
    train = cc_lmdb(cc / "training_feat_all.lmdb", [3, 2])
    val = cc_lmdb(cc / "validation_feat_all.lmdb", [4], seed=2, first_id=3000)
    rc, out, err = run(capsys, f"volta-cc:{cc},num_regions=2,num_classes=none", tmp_path / "data")
    assert rc == 0, err
    assert "train 2, val 1 examples; regions R=2 D=8 K=None" in out
    path = dataset_dir(tmp_path / "data", "jaxvl_pretrain_pairs")
    assert path.parent.name == "volta_cc-training_feat_all+num_regions-2+num_classes-none"
    spec = RegionSpec(2, D, None)  # images with more boxes keep their first two
    assert_pairs(path, "train", list(read_cc_lmdb(train, feature_dim=None, num_classes=None)), spec)
    assert_pairs(path, "val", list(read_cc_lmdb(val, feature_dim=None, num_classes=None)), spec)


def test_region_spec_probe(tmp_path):
    lmdb = cc_lmdb(tmp_path / "cc.lmdb", [3, 5, 2])

    def spec(options: str) -> RegionSpec:
        return build_source(f"volta-cc:{lmdb}{options}", str(tmp_path / "data")).builders[0].region_spec()

    assert spec("") == spec(",probe=all") == RegionSpec(5, D, 4)
    assert spec(",probe=1") == RegionSpec(3, D, 4)  # only the first record was read
    assert spec(",num_regions=36,feature_dim=8,num_classes=4") == RegionSpec(36, D, 4)
    with pytest.raises(ValueError, match="expected 2048"):  # the reader checks a given feature_dim
        spec(",feature_dim=2048")


def test_volta_cc_skip_bad(tmp_path, capsys):
    rng = np.random.default_rng(3)
    dps = [cc_datapoint(rng, str(i), num_boxes=3, feature_dim=D, num_classes=K1) for i in range(5)]
    dps[2][0][1, 1] = np.nan  # NaN features
    dps[3] = cc_datapoint(rng, "3", num_boxes=2, feature_dim=D + 2, num_classes=K1)  # another feature size
    entries = tensorpack_entries(dps)
    entries[b"00000001"] = b"\xc1 not msgpack"  # undecodable
    lmdb = write_lmdb(tmp_path / "cc.lmdb", entries.items(), subdir=False)
    rc, _, err = run(capsys, f"volta-cc:{lmdb}", tmp_path / "data")
    assert rc == 2 and str(lmdb) in err and "'00000001'" in err and "--skip-bad" in err
    rc, out, err = run(capsys, f"volta-cc:{lmdb}", tmp_path / "data", "--skip-bad")
    assert rc == 0, err
    assert "train 2 examples" in out and "skipped 3 (--skip-bad):" in out
    assert f"2 train: bad records in {lmdb}" in out
    assert f"1 train: records not fitting the region sizes in {lmdb}" in out
    path = dataset_dir(tmp_path / "data", "jaxvl_pretrain_pairs")
    direct = read_cc_lmdb(lmdb, skip_bad=True, feature_dim=D, num_classes=K1)  # the reader skips 1 and 2 itself
    good = [p for p in direct if p.regions.image_id != "3"]
    assert_pairs(path, "train", good, RegionSpec(3, D, 4))
    _, info = open_split(path, "train")
    assert info.metadata["skipped"] == {f"train: bad records in {lmdb}": 2,
                                        f"train: records not fitting the region sizes in {lmdb}": 1}


# ---------------------------------------------------------------------------------------------- tsv


def write_tsv(path: Path, recs: list[RegionFeatures], fields=None) -> Path:
    path.write_text("".join((format_row(r) if fields is None else format_row(r, fields)) + "\n" for r in recs),
                    encoding="utf-8")
    return path


def test_tsv_with_caption_json(tmp_path, capsys):
    tsv = write_tsv(tmp_path / "flickr30k_obj36.tsv", [region("1001", 0), region("1002", 1, n=2),
                                                      region("1003", 2, n=3)])
    val_tsv = write_tsv(tmp_path / "val.tsv", [region("2001", 3, n=1)])
    captions = tmp_path / "caption_train.json"
    captions.write_text(json.dumps({"1001": "a cat on a mat", "1002": ["two dogs", "a dog"], "1003": "x",
                                    "9999": "an image without features", "2001": "the val image"}))
    rc, out, err = run(capsys, f"tsv:{tsv},captions={captions},val={val_tsv}", tmp_path / "data")
    assert rc == 0, err
    assert "train 4, val 1 examples; regions R=4 D=8 K=1600" in out
    path = dataset_dir(tmp_path / "data", "jaxvl_pretrain_pairs")
    assert path.parent.name == "tsv-flickr30k_obj36"
    caps = json.loads(captions.read_text())

    def pairs(tsv_path):
        return [(r, c) for r in TsvFeatureReader(tsv_path) for c in np.atleast_1d(caps[r.image_id]).tolist()]

    spec = RegionSpec(4, D, 1600)
    assert_pairs(path, "train", [CaptionPair(r, c) for r, c in pairs(tsv)], spec)
    assert_pairs(path, "val", [CaptionPair(r, c) for r, c in pairs(val_tsv)], spec)


def test_tsv_without_classes_and_missing_captions(tmp_path, capsys):
    """LXMERT's 10-field TSV has no cls_prob (K = None); a TSV image without a caption is a bad record."""
    tsv = write_tsv(tmp_path / "obj36.tsv", [region("1", 0, n=2), region("2", 1, n=3), region("3", 2)], FIELDS_LXMERT)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"1": "one", "3": "three"}))
    rc, _, err = run(capsys, f"tsv:{tsv},captions={captions}", tmp_path / "data")
    assert rc == 2 and f"{tsv}: record '2' has no caption in {captions}" in err
    rc, out, err = run(capsys, f"tsv:{tsv},captions={captions}", tmp_path / "data", "--skip-bad")
    assert rc == 0, err
    assert "train 2 examples; regions R=4 D=8 K=None" in out
    assert f"    skipped 1 (--skip-bad):\n      1 train: images without a caption in {tsv}" in out
    recs = {r.image_id: r for r in TsvFeatureReader(tsv)}
    assert_pairs(dataset_dir(tmp_path / "data", "jaxvl_pretrain_pairs"), "train",
                 [CaptionPair(recs["1"], "one"), CaptionPair(recs["3"], "three")], RegionSpec(4, D, None))


# ---------------------------------------------------------------------------------------------- flickr30k


def lmdb_features(path: Path, boxes: dict[str, int]) -> Path:
    """VOLTA's per-image feature LMDB (convert_flickr30k_lmdb.py: pickled csv rows, protocol 3), one file."""
    rng = np.random.default_rng(0)
    rows = [(i, tsv_row(rng, i, num_boxes=n, feature_dim=D, num_classes=K1, h=375, w=500)[0])
            for i, n in boxes.items()]
    return write_lmdb(path, feature_entries(rows).items(), subdir=False)


def tsv_features(path: Path, boxes: dict[str, int]) -> Path:
    return write_tsv(path, [region(i, k, n=n) for k, (i, n) in enumerate(boxes.items())])


def npz_features(path: Path, boxes: dict[str, int]) -> Path:
    path.mkdir()
    for k, (i, n) in enumerate(boxes.items()):
        r = region(i, k, n=n)
        np.savez(path / f"{i}.npz", features=r.features, boxes=r.boxes, num_boxes=n, image_h=r.image_h,
                 image_w=r.image_w, cls_prob=r.cls_prob, objects_id=r.objects_id, objects_conf=r.objects_conf)
    return path


FEATURES = {  # format -> (writer, file name, how to read one image directly)
    "lmdb": (lmdb_features, "flickr30k_feat.lmdb", lambda p: FeatureLMDB(p, feature_dim=None, num_classes=None)),
    "tsv": (tsv_features, "flickr30k_obj36.tsv", lambda p: {r.image_id: r for r in TsvFeatureReader(p)}),
    "npz": (npz_features, "features", NpzFeatureReader),
}


@pytest.mark.parametrize("fmt", sorted(FEATURES))
def test_flickr30k_entities(tmp_path, capsys, fmt):
    write, name, reader = FEATURES[fmt]
    root = write_flickr(tmp_path / "flickr30k_entities", {"100": (SENTENCES_100, ANN_100),
                                                          "200": (SENTENCES_200, ANN_200)})
    features = write(tmp_path / name, {"100": 3, "200": 4, "300": 6})  # 300 is not in the split: R stays 4
    assert feature_format(str(features)) == fmt
    rc, out, err = run(capsys, f"flickr30k-entities:{root},features={features}", tmp_path / "data")
    assert rc == 0, err
    k = K1 - 1 if fmt == "lmdb" else 1600
    assert f"val 7 examples; regions R=4 D=8 K={k}" in out
    path = dataset_dir(tmp_path / "data", "jaxvl_ablation_phrases")
    assert path.parent.name == f"flickr30k_entities-val-{Path(name).stem}"
    direct = reader(features)
    expected = {(e.image_id, e.sentence_index, e.first_word_index): e for e in load_examples(root, "val")}
    stored = [decode_ablation(ex) + (ex,) for ex in examples(path, "val")]
    assert sorted((e.image_id, e.sentence_index, e.first_word_index) for e, _, _ in stored) == sorted(expected)
    for ex, regions, raw in stored:
        want = expected[ex.image_id, ex.sentence_index, ex.first_word_index]
        assert (ex.sentence, ex.phrase, ex.entity_id, ex.phrase_type) == (want.sentence, want.phrase, want.entity_id,
                                                                          want.phrase_type)
        np.testing.assert_array_equal(ex.ref_boxes, want.ref_boxes)
        assert regions.image_id == ex.image_id
        assert_regions(raw, direct[ex.image_id], RegionSpec(4, D, k))


def test_flickr30k_missing_features_and_split(tmp_path, capsys):
    root = write_flickr(tmp_path / "f30k", {"100": (SENTENCES_100, ANN_100), "200": (SENTENCES_200, ANN_200)},
                        split="test")
    features = lmdb_features(tmp_path / "feat.lmdb", {"100": 3})
    source = f"flickr30k-entities:{root},features={features},split=test"
    rc, _, err = run(capsys, source, tmp_path / "data")
    assert rc == 2 and f"{features}: no features for image '200'" in err
    rc, out, err = run(capsys, source, tmp_path / "data", "--skip-bad")
    assert rc == 0, err
    assert "test 5 examples" in out and "skipped 3 (--skip-bad):" in out
    assert f"1 test: images without usable features in {features}" in out
    assert "2 test: phrases whose image has no usable features" in out
    rc, again, _ = run(capsys, source, tmp_path / "data")  # reused: the counts come from the dataset's metadata
    assert rc == 0 and "skipped 3 (--skip-bad):" in again
    stored = [decode_ablation(ex)[0].image_id for ex in examples(dataset_dir(tmp_path / "data",
                                                                             "jaxvl_ablation_phrases"), "test")]
    assert stored == ["100"] * 5


# ---------------------------------------------------------------------------------------------- errors


@pytest.fixture()
def inputs(tmp_path) -> dict[str, str]:
    lmdb = cc_lmdb(tmp_path / "cc.lmdb", [2])
    tsv = write_tsv(tmp_path / "f.tsv", [region("1", n=2)])
    (tmp_path / "captions.json").write_text(json.dumps({"1": "one"}))
    (tmp_path / "bad.json").write_text("[1, 2")
    (tmp_path / "empty").mkdir()
    root = write_flickr(tmp_path / "f30k", {"100": (SENTENCES_100, ANN_100)})
    return {"lmdb": str(lmdb), "tsv": str(tsv), "json": str(tmp_path / "captions.json"), "tmp": str(tmp_path),
            "bad_json": str(tmp_path / "bad.json"), "empty": str(tmp_path / "empty"), "root": str(root)}


BAD_SOURCES = [
    ("", ["empty --source"]),
    ("  :x", ["empty --source"]),
    ("nope:/x", ["unknown --source 'nope'", "available: synthetic, volta-cc, tsv, flickr30k-entities"]),
    ("volta-cc", ["--source volta-cc: no path given", "usage: volta-cc:LMDB_DIR_OR_FILE"]),
    ("volta-cc:{tmp}/missing.lmdb", ["LMDB {tmp}/missing.lmdb: no such file or directory"]),
    ("volta-cc:{empty}", ["neither an LMDB (no data.mdb) nor a directory holding training_feat_all.lmdb"]),
    ("volta-cc:{tsv}", ["volta-cc", "cannot open as an LMDB"]),
    ("volta-cc:{lmdb},colour=red",
     ["unknown option 'colour'; known: feature_dim, features_dtype, layout, name, num_classes"]),
    ("volta-cc:{lmdb},val={lmdb},val={lmdb}", ["option val= given twice"]),
    ("volta-cc:{lmdb},num_regions=", ["option num_regions= has no value"]),
    ("volta-cc:{lmdb},num_regions=many", ["option num_regions='many' must be an integer >= 1"]),
    ("volta-cc:{lmdb},num_regions=0", ["num_regions='0' must be an integer >= 1"]),
    ("volta-cc:{lmdb},probe=some", ["probe='some' must be an integer >= 1 or all"]),
    ("volta-cc:{lmdb},num_classes=-3", ["num_classes='-3' must be an integer >= 1 or none or auto"]),
    ("volta-cc:{lmdb},{lmdb}", ["a second path", "paths cannot contain commas"]),
    ("volta-cc:{lmdb},name=a/b", ["name='a/b' may only hold letters"]),
    ("volta-cc:{lmdb},val={tmp}/nothing", ["val LMDB {tmp}/nothing: no such file or directory"]),
    ("tsv:{tsv}", ["--source tsv: missing option captions=", "usage: tsv:FEATURES.tsv,captions=CAPTIONS.json"]),
    ("tsv:{tmp},captions={json}", ["features {tmp}: no such file"]),
    ("tsv:{tsv},captions={json},val_captions={json}", ["val_captions= without val="]),
    ("tsv:{tsv},captions={bad_json}", ["bad.json: not valid JSON"]),
    ("flickr30k-entities:{root}", ["missing option features="]),
    ("flickr30k-entities:{tsv},features={tsv}", ["Flickr30k Entities root {tsv}: no such directory"]),
    ("flickr30k-entities:{root},features={tsv},format=hdf5", ["format='hdf5'; expected one of lmdb, tsv, npz"]),
    ("flickr30k-entities:{root},features={tsv},split=test", ["split file not found", "test.txt"]),
    ("flickr30k-entities:{root},features={empty}", ["neither data.mdb (an LMDB) nor .npz feature files"]),
    ("synthetic:colour=red", ["unknown synthetic knob 'colour'"]),
]


@pytest.mark.parametrize("source,needles", BAD_SOURCES, ids=[s for s, _ in BAD_SOURCES])
def test_bad_source_strings(inputs, source, needles):
    with pytest.raises(ValueError) as info:
        build_source(source.format(**inputs), inputs["tmp"])
    for needle in needles:
        assert needle.format(**inputs) in str(info.value)


def test_bad_source_exit_status_and_help(inputs, capsys):
    rc, _, err = run(capsys, f"tsv:{inputs['tsv']}", Path(inputs["tmp"]) / "data")
    assert rc == 2 and err.startswith("jaxvl: error: --source tsv: missing option captions=")
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    text = parser.format_help()
    for entry in SOURCES.values():
        assert entry.usage in text
    assert "--skip-bad" in text


def test_parse_source():
    src = parse_source("volta-cc:/data/cc.lmdb, val=/data/v.lmdb ,num-regions=36,")
    assert (src.name, src.path, dict(src.options)) == ("volta-cc", "/data/cc.lmdb",
                                                       {"val": "/data/v.lmdb", "num_regions": "36"})
    assert parse_source("volta-cc:/data/a=b.lmdb").path == "/data/a=b.lmdb"  # '=' after a '/' is a path
    assert parse_source("synthetic:num_images=4").args == "num_images=4"  # synthetic parses its own knobs
    with pytest.raises(SourceError, match="--source tsv: unknown option 'val_caption'"):
        parse_source("tsv:/x.tsv,val-caption=y")


def test_cli_entry_point(tmp_path):
    """``jaxvl prepare`` (the main entry point) takes the new sources and ``--skip-bad``."""
    from jaxvl.cli import main

    lmdb = cc_lmdb(tmp_path / "cc.lmdb", [2, 3])
    assert main(["prepare", "--source", f"volta-cc:{lmdb},name=mine", "--out", str(tmp_path / "d"), "--quiet",
                 "--skip-bad"]) == 0
    assert (tmp_path / "d" / "jaxvl_pretrain_pairs" / "mine" / "1.0.0" / "dataset_info.json").is_file()
