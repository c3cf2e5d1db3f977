"""``jaxvl prepare --workers N`` with ``layout=images`` (issue 16, parts 2 + 3): each Beam worker writes its
shards' tables (``jaxvl.data.builders.images_shards``), and the store reads back exactly the single-process
store's pairs, in the same order: the synthetic world and a VOLTA-style CC LMDB (whose images' captions cross
shard boundaries). A corrupted LMDB record fails with one line naming the file and key and leaves no store; with
``--skip-bad`` it is counted. The sharded reader: a shard file missing, holding the wrong count, or a caption
naming a row beyond its shard's images, each one error naming the shard's file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from lmdb_fixtures import corrupt_record

from jaxvl.cli import main
from jaxvl.data.builders.common import RegionSpec
from jaxvl.data.builders.images import ImagePairsBuilder
from jaxvl.data.imagestore import MANIFEST, open_image_store
from jaxvl.data.imagestore.layout import captions_file, images_file, split_entry, write_manifest
from jaxvl.data.imagestore.writer import SplitWriter
from jaxvl.data.records import BadRecord, CaptionPair, RegionFeatures
from jaxvl.data.sources import build_source
from jaxvl.data.synthetic.volta_files import CC_TRAIN_LMDB, export_world
from jaxvl.data.synthetic.world import WorldConfig

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()

SYNTHETIC = "synthetic:num_images=12,val_images=4,num_regions=5,feature_dim=8,num_classes=12,max_objects=3"
WORLD = WorldConfig(num_images=16, num_regions=4, feature_dim=6, num_classes=12, min_objects=1, max_objects=2)
VAL_IMAGES = 4  # 32 train pairs (2 captions per image), 8 val pairs
BAD_KEY = b"00000005"


def prepare(capsys, source: str, out: Path | str, *flags: str) -> tuple[int, str, str]:
    """``jaxvl prepare --source SOURCE --out OUT --quiet FLAGS`` -> (exit status, stdout, stderr)."""
    rc = main(["prepare", "--source", source, "--out", str(out), "--quiet", *flags])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def store(out: Path) -> Path:
    (path,) = out.glob("*_images/*/1.0.0")
    return path


def assert_same_pairs_in_order(a: Path, b: Path, splits: tuple[str, ...]) -> None:
    for split in splits:
        ours, theirs = open_image_store(a, split)[0], open_image_store(b, split)[0]
        assert len(ours) == len(theirs) > 0
        for i in range(len(ours)):
            x, y = ours[i], theirs[i]
            assert x.keys() == y.keys()
            for key in x:
                assert np.array_equal(x[key], y[key]) and np.asarray(x[key]).dtype == np.asarray(y[key]).dtype, \
                    (split, i, key)


def manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The small world in VOLTA's files, its train record ``00000005`` corrupted in a copy."""
    pytest.importorskip("apache_beam", reason="apache-beam is not installed (the beam extra)")
    root = tmp_path_factory.mktemp("images_beam")
    good = export_world(WORLD, VAL_IMAGES, root / "good")
    bad = export_world(WORLD, VAL_IMAGES, root / "bad")
    corrupt_record(os.path.join(bad.cc_dir, CC_TRAIN_LMDB), BAD_KEY)
    return good, bad


# ------------------------------------------------------------------------------------------ same pairs


def test_volta_lmdb_workers_write_the_single_process_store(exported, tmp_path, capsys):
    good, _ = exported
    source = f"volta-cc:{good.cc_dir},layout=images,features_dtype=float16"
    assert prepare(capsys, source, tmp_path / "one")[0] == 0
    rc, out, _ = prepare(capsys, source, tmp_path / "two", "--workers", "2", "--shard-size", "5")
    assert rc == 0 and "on DirectRunner" in out
    one, two = store(tmp_path / "one"), store(tmp_path / "two")
    assert_same_pairs_in_order(one, two, ("train", "val"))
    train = manifest(two)["splits"]["train"]
    assert [m for _, m in train["shards"]] == [5, 5, 5, 5, 5, 5, 2] and train["captions"] == good.train_pairs
    # 5-pair shards split some images' 2 captions: such an image is stored in both shards
    assert train["images"] > manifest(one)["splits"]["train"]["images"]
    assert not list(two.glob("*summary*")) and not list(two.glob("*partial*"))


@pytest.mark.slow  # a second Beam pipeline (the grounded phrases go through TFDS's): ~15 s here
def test_synthetic_workers_write_the_single_process_store(tmp_path, capsys):
    pytest.importorskip("apache_beam", reason="apache-beam is not installed (the beam extra)")
    source = f"{SYNTHETIC},layout=images"
    assert prepare(capsys, source, tmp_path / "one")[0] == 0
    assert prepare(capsys, source, tmp_path / "two", "--workers", "2", "--shard-size", "6")[0] == 0
    one, two = store(tmp_path / "one"), store(tmp_path / "two")
    assert_same_pairs_in_order(one, two, ("train", "val"))
    # image ranges never split an image's captions: each image stored once, as in one process
    assert manifest(two)["splits"]["train"]["shards"] == [[3, 6]] * 4
    assert manifest(two)["splits"]["train"]["images"] == manifest(one)["splits"]["train"]["images"] == 12


def _tsv_region(i: int) -> RegionFeatures:
    rng = np.random.default_rng(i)
    n = 2 + i % 3
    xy = rng.uniform(0, 30, (n, 2))
    p = rng.uniform(size=(n, 13))
    return RegionFeatures(str(100 + i), image_h=60, image_w=80,
                          boxes=np.concatenate([xy, xy + rng.uniform(1, 30, (n, 2))], 1).astype(np.float32),
                          features=rng.normal(size=(n, 8)).astype(np.float32),
                          cls_prob=(p / p.sum(1, keepdims=True)).astype(np.float32))


@pytest.fixture(scope="module")
def tsv_source(tmp_path_factory) -> tuple[str, Path]:
    """A bottom-up-attention TSV of 11 images (line 7 corrupted in a copy) with 1-3 captions each, 20 in all."""
    from jaxvl.data.readers.tsv import format_row

    root = tmp_path_factory.mktemp("tsv")
    lines = [format_row(_tsv_region(i)) + "\n" for i in range(11)]
    (root / "feats.tsv").write_text("".join(lines))
    (root / "bad.tsv").write_text("".join(lines[:6] + ["107\t60\tnot a record\n"] + lines[7:]))
    captions = {str(100 + i): [f"caption {j} of image {i}" for j in range(1 + i % 3)] for i in range(11)}
    captions["104"] = "the one caption of image 4"
    (root / "captions.json").write_text(json.dumps(captions))
    return f"tsv:{root / 'feats.tsv'},captions={root / 'captions.json'}", root


def test_tsv_line_ranges_read_as_one_pass(tsv_source):
    from jaxvl.data.readers.tsv import TsvFeatureReader, line_ranges

    path = tsv_source[1] / "feats.tsv"
    whole = list(TsvFeatureReader(path).numbered())
    ranges = line_ranges(path, 4)
    assert [(r.first, r.count) for r in ranges] == [(1, 4), (5, 4), (9, 3)]
    parts = [item for r in ranges for item in TsvFeatureReader(path).numbered(r)]
    assert [line for line, _ in parts] == [line for line, _ in whole] == list(range(1, 12))
    for (_, a), (_, b) in zip(parts, whole, strict=True):
        assert a.image_id == b.image_id and np.array_equal(a.features, b.features)


@pytest.mark.parametrize("layout", ["pairs", "images"])
def test_tsv_workers_write_the_single_process_records(tsv_source, layout, tmp_path, capsys):
    pytest.importorskip("apache_beam", reason="apache-beam is not installed (the beam extra)")
    from jaxvl.data.grain import open_split

    source = f"{tsv_source[0]},layout={layout}"
    assert prepare(capsys, source, tmp_path / "one")[0] == 0
    assert prepare(capsys, source, tmp_path / "two", "--workers", "2", "--shard-size", "3")[0] == 0
    if layout == "images":
        assert_same_pairs_in_order(store(tmp_path / "one"), store(tmp_path / "two"), ("train",))
        assert [n for n, _ in manifest(store(tmp_path / "two"))["splits"]["train"]["shards"]] == [3, 3, 3, 2]
        return
    (one,), (two,) = (tmp_path / "one").glob("*/*/1.0.0"), (tmp_path / "two").glob("*/*/1.0.0")
    key = lambda r: (r["image_id"], r["caption"])  # noqa: E731 - a TFDS split is stored shuffled by key
    ours, theirs = (sorted((s[i] for i in range(len(s))), key=key) for s in (open_split(one, "train")[0],
                                                                             open_split(two, "train")[0]))
    assert len(ours) == len(theirs) == 20
    for x, y in zip(ours, theirs, strict=True):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_tsv_bad_line_fails_naming_file_and_line_or_is_counted(tsv_source, tmp_path, capsys):
    pytest.importorskip("apache_beam", reason="apache-beam is not installed (the beam extra)")
    source = f"tsv:{tsv_source[1] / 'bad.tsv'},captions={tsv_source[1] / 'captions.json'},layout=images"
    rc, _, err = prepare(capsys, source, tmp_path / "a", "--workers", "2", "--shard-size", "3")
    (line,) = [line for line in err.splitlines() if line.startswith("jaxvl: error:")]
    assert rc == 2 and f"{tsv_source[1] / 'bad.tsv'}: line 7" in line and "--skip-bad" in line
    rc, out, _ = prepare(capsys, source, tmp_path / "b", "--workers", "2", "--shard-size", "3", "--skip-bad")
    assert rc == 0 and f"1 train: bad records in {tsv_source[1] / 'bad.tsv'}" in out
    assert len(open_image_store(store(tmp_path / "b"), "train")[0]) == 20 - 1  # image 6 had 1 caption


# ------------------------------------------------------------------------------------------ bad records


def test_a_bad_record_fails_naming_file_and_key_and_leaves_no_store(exported, tmp_path, capsys):
    _, bad = exported
    rc, _, err = prepare(capsys, f"volta-cc:{bad.cc_dir},probe=2,layout=images", tmp_path, "--workers", "2",
                         "--shard-size", "8")
    (line,) = [line for line in err.splitlines() if line.startswith("jaxvl: error:")]
    assert rc == 2
    assert f"{os.path.join(bad.cc_dir, CC_TRAIN_LMDB)}: record '{BAD_KEY.decode()}'" in line and "--skip-bad" in line
    assert not list(tmp_path.glob("*_images/*/*"))  # neither a store nor its staging directory


def test_skip_bad_counts_the_bad_record(exported, tmp_path, capsys):
    _, bad = exported
    rc, out, _ = prepare(capsys, f"volta-cc:{bad.cc_dir},probe=2,layout=images", tmp_path, "--workers", "2",
                         "--shard-size", "8", "--skip-bad")
    what = f"train: bad records in {os.path.join(bad.cc_dir, CC_TRAIN_LMDB)}"
    assert rc == 0 and f"1 {what}" in out
    path = store(tmp_path)
    assert manifest(path)["metadata"]["skipped"] == {what: 1}
    assert len(open_image_store(path, "train")[0]) == bad.train_pairs - 1


@pytest.mark.parametrize("flags,message", [
    (["--shard-size", "4"], "--shard-size sets the shards of a parallel build"),
    (["--workers", "2", "--shard-size", "0"], "must be >= 1"),
])
def test_unusable_shard_flags_fail_before_anything_is_written(tmp_path, capsys, flags, message):
    rc, _, err = prepare(capsys, f"{SYNTHETIC},layout=images", tmp_path, *flags)
    assert rc == 2 and message in err and not list(tmp_path.glob("*/*/*"))


def test_an_object_store_url_is_refused_for_writing_an_image_store(tmp_path):
    pairs = build_source(f"{SYNTHETIC},layout=images", str(tmp_path)).builders[0].pairs
    with pytest.raises(ValueError, match="gs://bucket/data/.*: layout=images writes to a local or shared filesystem"):
        ImagePairsBuilder(pairs, "gs://bucket/data").download_and_prepare()


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs installed: it would go to the network")
def test_an_unreachable_out_url_is_one_error(capsys):
    rc, _, err = prepare(capsys, SYNTHETIC, "gs://bucket/data")
    (line,) = [line for line in err.splitlines() if line.startswith("jaxvl: error:")]
    assert rc == 2 and "gs://bucket/data: cannot read this URL here" in line


# ------------------------------------------------------------------------------------------ the sharded reader

SPEC = RegionSpec(num_regions=3, feature_dim=4, num_classes=None)


def _pair(image: int, caption: str) -> CaptionPair:
    rng = np.random.default_rng(image)
    regions = RegionFeatures(image_id=f"img{image}", image_h=10, image_w=20,
                             boxes=np.array([[0, 0, 5, 5], [1, 1, 9, 9]], np.float32),
                             features=rng.normal(size=(2, 4)).astype(np.float32))
    return CaptionPair(regions=regions, caption=caption)


def _write_sharded(directory: Path, shards: list[list[CaptionPair]]) -> None:
    """A store of one split ``train`` in ``len(shards)`` shards, written as the parallel build writes them."""
    counts = []
    for i, pairs in enumerate(shards):
        with SplitWriter(str(directory), "train", SPEC, shard=(i, len(shards))) as writer:
            writer.add_all(pairs, "test")
        counts.append((writer.images, writer.captions))
    write_manifest(str(directory), {"name": "t", "config": "c", "version": "1.0.0", "description": "",
                                    "features_dtype": "float32", "regions": SPEC.to_dict(),
                                    "splits": {"train": split_entry(counts)}, "metadata": {}})


@pytest.fixture
def sharded(tmp_path) -> tuple[Path, list[CaptionPair]]:
    shards = [[_pair(0, "a"), _pair(0, "b"), _pair(1, "c")], [_pair(1, "d"), _pair(2, "e")], [_pair(3, "f")]]
    _write_sharded(tmp_path, shards)
    return tmp_path, [pair for shard in shards for pair in shard]


def test_shards_read_as_one_split_in_order(sharded):
    directory, pairs = sharded
    source, info = open_image_store(directory, "train")
    assert len(source) == 6 and info.splits["train"].num_images == 5  # image 1 is in shards 0 and 1
    copy = pickle.loads(pickle.dumps(source))  # as Grain hands it to a worker process
    for i, pair in enumerate(pairs):
        record = source[i]
        assert all(np.array_equal(record[k], v) for k, v in copy[i].items())
        assert record["caption"] == pair.caption.encode() and record["image_id"] == pair.regions.image_id.encode()
        np.testing.assert_array_equal(record["features"][:2], pair.regions.features)


def test_a_missing_or_short_shard_file_is_one_error_naming_it(sharded):
    directory, _ = sharded
    entry = manifest(directory)
    entry["splits"]["train"]["shards"][1] = [2, 3]  # the file holds 2 captions
    entry["splits"]["train"]["captions"] += 1
    (directory / MANIFEST).write_text(json.dumps(entry))
    with pytest.raises(ValueError, match=f"{captions_file('train', 1, 3)}: 2 records, but the manifest says 3"):
        open_image_store(directory, "train")
    os.remove(directory / images_file("train", 2, 3))
    with pytest.raises(ValueError, match=f"{images_file('train', 2, 3)}: no such file"):
        open_image_store(directory, "train")


def test_shard_counts_that_disagree_with_the_split_are_refused(sharded):
    directory, _ = sharded
    entry = manifest(directory)
    entry["splits"]["train"]["images"] = 4
    (directory / MANIFEST).write_text(json.dumps(entry))
    with pytest.raises(ValueError, match="its shards hold 5 images and 6 captions, but it lists 4 and 6"):
        open_image_store(directory, "train")


def test_a_caption_naming_a_row_beyond_its_shard_names_the_shard_file(tmp_path):
    """Shard 1's caption names row 1, but shard 1 holds one image: row 1 of the whole table is shard 0's second
    image, which a reader ignoring the shards would return."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from jaxvl.data.imagestore.layout import WRITER_OPTIONS
    from jaxvl.data.imagestore.writer import caption_record

    _write_sharded(tmp_path, [[_pair(0, "a"), _pair(1, "b")], [_pair(2, "c")]])
    path = tmp_path / captions_file("train", 1, 2)
    writer = ArrayRecordWriter(str(path), WRITER_OPTIONS)
    writer.write(caption_record(1, "img2", "c"))
    writer.close()
    source, _ = open_image_store(tmp_path, "train")
    with pytest.raises(BadRecord, match=f"{path} \\[record 0\\]: the caption of image 'img2' refers to image row 1, "
                                        f"but .*{images_file('train', 1, 2)} holds 1 images"):
        source[2]

