"""The image store (issue 16, part 2): one record per image, captions referring to it, raw little-endian arrays.

Same records as the pair layout (field by field, synthetic and volta-cc), fewer bytes, float16 features cast
back within float16 rounding, the old pair datasets still read, the pipeline deterministic and resumable on it,
and bad input (a corrupted image record, a caption naming a missing image, a damaged manifest or table) as one
error line naming the file and the record, or skipped and counted with ``skip_bad``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pickle

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvl.data.builders.ablation import AblationPhrases
from jaxvl.data.builders.pretrain import PretrainPairs
from jaxvl.data.grain import open_split, tokenizer_for
from jaxvl.data.imagestore import MANIFEST, ImageStorePairs, is_image_store
from jaxvl.data.imagestore.codec import decode_record, encode_record
from jaxvl.data.imagestore.writer import caption_record
from jaxvl.data.records import BadRecord
from jaxvl.data.resolve import resolve_dataset
from jaxvl.data.sources import SourceError, build_source, parse_source
from jaxvl.data.synthetic.volta_files import export_world
from jaxvl.data.synthetic.world import WorldConfig
from jaxvl.pretrain.data import PipelineConfig, pretrain_dataset

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()

KNOBS = "num_images=8,val_images=2,num_regions=6,feature_dim=64,num_classes=12,captions_per_image=3"


def _prepare(source: str, out) -> str:
    builder = build_source(source, str(out)).builders[0]
    builder.download_and_prepare()
    return builder.data_dir


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, str]:
    """The same world in the pair layout and in the image layout (float32 and float16 features)."""
    out = tmp_path_factory.mktemp("data")
    return {"pairs": _prepare(f"synthetic:{KNOBS}", out),
            "float32": _prepare(f"synthetic:{KNOBS},layout=images", out),
            "float16": _prepare(f"synthetic:{KNOBS},layout=images,features_dtype=float16", out)}


def _key(record) -> tuple:
    return record["image_id"], record["caption"]


def _records(source) -> list[dict]:
    """The records sorted by (image id, caption): a TFDS split is stored shuffled; a caption may repeat."""
    return sorted((source[i] for i in range(len(source))), key=_key)


def _assert_same_records(ours, theirs) -> None:
    """The same records: per (image id, caption) the same fields with the same types, dtypes, shapes and values."""
    assert len(ours) == len(theirs)
    for rec, other_rec in zip(_records(ours), _records(theirs), strict=True):
        assert rec.keys() == other_rec.keys() and _key(rec) == _key(other_rec)
        for field, value in rec.items():
            other = other_rec[field]
            assert type(value) is type(other), field
            if isinstance(value, np.ndarray):
                assert value.dtype == other.dtype and value.shape == other.shape, field
                np.testing.assert_array_equal(value, other, err_msg=field)
            else:
                assert value == other, field


def _record_bytes(directory: str) -> int:
    """The bytes of every record of the dataset's ArrayRecord files, as the readers return them (uncompressed,
    without the container's chunk and block overhead, which dwarfs these tiny worlds' records)."""
    from array_record.python.array_record_module import ArrayRecordReader

    total = 0
    for path in glob.glob(os.path.join(directory, "*array_record*")):
        reader = ArrayRecordReader(path)
        total += sum(len(r) for r in reader.read_all())
        reader.close()
    return total


# ------------------------------------------------------------------------------------------ same records


def test_image_layout_holds_the_pair_records(synthetic):
    for split in ("train", "val"):
        pairs, pairs_info = open_split(synthetic["pairs"], split)
        images, info = open_split(synthetic["float32"], split)
        assert isinstance(images, ImageStorePairs) and is_image_store(synthetic["float32"])
        _assert_same_records(images, pairs)
        assert info.metadata["regions"] == pairs_info.metadata["regions"]
        assert info.metadata["words"] == pairs_info.metadata["words"]
        assert tokenizer_for(info).vocab_size == tokenizer_for(pairs_info).vocab_size
    assert info.splits["train"].num_examples == 24 and info.splits["train"].num_images == 8


def test_one_copy_per_image_takes_fewer_bytes(synthetic):
    pairs, f32, f16 = (_record_bytes(synthetic[k]) for k in ("pairs", "float32", "float16"))
    assert f32 < pairs / 2.5  # 3 captions per image: the regions once instead of 3 times
    assert f16 < 0.8 * f32  # features are [6, 64] of each image's [6, 64 + 4 + 13 + 2] stored values


def test_float16_features_are_cast_back_within_float16_rounding(synthetic):
    full, _ = open_split(synthetic["float32"], "train")
    half, info = open_split(synthetic["float16"], "train")
    assert info.features_dtype == "float16" and info.full_name.endswith("+features_dtype-float16/1.0.0")
    for i in range(len(full)):
        a, b = full[i], half[i]
        assert b["features"].dtype == np.float32 and b["features"].shape == a["features"].shape
        np.testing.assert_array_equal(b["features"], a["features"].astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(b["features"], a["features"], rtol=2.0 ** -11, atol=0)
        for field in ("boxes", "cls_prob", "objects_id", "objects_conf", "num_boxes", "caption"):
            np.testing.assert_array_equal(b[field], a[field], err_msg=field)


def test_volta_cc_pairs_and_images_agree(tmp_path):
    world = export_world(WorldConfig(num_images=6, num_regions=4, feature_dim=6, num_classes=12, min_objects=1,
                                     max_objects=2), 2, tmp_path / "world")
    pairs = _prepare(f"volta-cc:{world.cc_dir}", tmp_path / "data")
    images = _prepare(f"volta-cc:{world.cc_dir},layout=images", tmp_path / "data")
    assert os.path.basename(os.path.dirname(os.path.dirname(images))) == "jaxvl_pretrain_pairs_images"
    for split in ("train", "val"):
        _assert_same_records(open_split(images, split)[0], open_split(pairs, split)[0])
    assert json.load(open(os.path.join(images, MANIFEST)))["splits"]["train"] == {"images": 6, "captions": 12}


def _region(image_id: str, n: int, seed: int):
    from jaxvl.data.records import RegionFeatures

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 30, (n, 2))
    p = rng.uniform(size=(n, 13))
    return RegionFeatures(image_id, image_h=60, image_w=80,
                          boxes=np.concatenate([xy, xy + rng.uniform(1, 30, (n, 2))], 1).astype(np.float32),
                          features=rng.normal(size=(n, 8)).astype(np.float32),
                          cls_prob=(p / p.sum(1, keepdims=True)).astype(np.float32))


def test_tsv_through_jaxvl_prepare(tmp_path, capsys):
    from jaxvl.cli import main
    from jaxvl.data.readers.tsv import format_row

    tsv = tmp_path / "feats.tsv"
    tsv.write_text("".join(format_row(_region(i, n, s)) + "\n" for s, (i, n) in enumerate([("1", 2), ("2", 3)])))
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"1": ["a cat", "a cat on a mat", "one cat"], "2": "two dogs"}))
    dirs = []
    for layout in ("pairs", "images"):
        source = f"tsv:{tsv},captions={captions},layout={layout}"
        assert main(["prepare", "--source", source, "--out", str(tmp_path / "data"), "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "train 4 examples; regions R=3 D=8 K=12" in out
        dirs.append(out.split("\n")[1].strip())
    assert dirs[1].endswith("jaxvl_pretrain_pairs_images/tsv-feats/1.0.0") and is_image_store(dirs[1])
    _assert_same_records(open_split(dirs[1], "train")[0], open_split(dirs[0], "train")[0])
    assert json.load(open(os.path.join(dirs[1], MANIFEST)))["splits"]["train"] == {"images": 2, "captions": 4}


# ------------------------------------------------------------------------------------- old data, wiring


def test_resolve_and_the_old_layout(synthetic, tmp_path):
    assert resolve_dataset(synthetic["float32"], "", str(tmp_path), PretrainPairs) == synthetic["float32"]
    assert resolve_dataset(synthetic["pairs"], "", str(tmp_path), PretrainPairs) == synthetic["pairs"]
    assert not isinstance(open_split(synthetic["pairs"], "train")[0], ImageStorePairs)  # TFDS, as before
    with pytest.raises(ValueError, match="holds an image store .*not the AblationPhrases dataset"):
        resolve_dataset(synthetic["float32"], "", str(tmp_path), AblationPhrases)
    spec = "synthetic:num_images=4,val_images=1,num_regions=5,feature_dim=8,num_classes=12,layout=images"
    resolved = resolve_dataset(spec, str(tmp_path / "prep"), str(tmp_path), PretrainPairs)
    assert is_image_store(resolved) and "jaxvl_synthetic_pretrain_images" in resolved
    assert len(open_split(resolved, "train")[0]) == 8


def test_layout_options_are_checked():
    with pytest.raises(SourceError, match="features_dtype=float16 needs layout=images"):
        build_source("synthetic:num_images=4,features_dtype=float16", "/nonexistent")
    with pytest.raises(SourceError, match="layout='rows' must be one of pairs, images"):
        build_source("synthetic:layout=rows", "/nonexistent")
    with pytest.raises(SourceError, match="features_dtype='bfloat16' must be one of"):
        build_source("volta-cc:/nonexistent,layout=images,features_dtype=bfloat16", "/nonexistent")
    assert parse_source("tsv:x.tsv,captions=c.json,layout=images").options["layout"] == "images"


def test_pipeline_is_deterministic_resumable_and_sharded(synthetic):
    source, info = open_split(synthetic["float32"], "train")
    tok = tokenizer_for(info)
    cfg = PipelineConfig(batch_size=4, max_seq_length=12, seed=3, num_epochs=1, num_threads=2)
    whole = list(pretrain_dataset(source, tok, cfg, shard=grain.sharding.NoSharding()))
    assert len(whole) == 6 and whole[0]["features"].shape == (4, 7, 64) and whole[0]["features"].dtype == np.float32
    it = iter(pretrain_dataset(source, tok, cfg, shard=grain.sharding.NoSharding()))
    next(it)
    state = it.get_state()
    resumed = iter(pretrain_dataset(source, tok, cfg, shard=grain.sharding.NoSharding()))
    resumed.set_state(state)
    for expected in whole[1:]:
        np.testing.assert_array_equal(next(resumed)["input_ids"], expected["input_ids"])
    copy = pickle.loads(pickle.dumps(source))  # what a Grain worker process gets: paths, readers reopened there
    np.testing.assert_array_equal(copy[5]["features"], source[5]["features"])
    hosts = [list(pretrain_dataset(source, tok, cfg, shard=grain.sharding.ShardOptions(p, 2))) for p in range(2)]
    for k, batch in enumerate(whole):  # host p holds slice p of each global batch
        np.testing.assert_array_equal(np.concatenate([hosts[p][k]["features"] for p in range(2)]), batch["features"])


# ------------------------------------------------------------------------------------------ bad input


def test_codec_refuses_what_it_cannot_decode():
    record = encode_record({"image_id": "x", "num_boxes": 2}, {"a": np.arange(6, dtype=np.float16).reshape(2, 3),
                                                               "b": np.array([1, 2, 3], np.int32)})
    scalars, arrays = decode_record(record, "f [record 0]")
    assert scalars == {"image_id": "x", "num_boxes": 2} and arrays["a"].dtype == np.float16
    np.testing.assert_array_equal(arrays["b"], [1, 2, 3])
    for bad, match in ((record[:-8], "needs 12 bytes"), (b"XXXX" + record[4:], "not an image-store record"),
                       (record[:6], "too short"), (record + b"\0" * 8, "8 bytes left over")):
        with pytest.raises(BadRecord, match=r"^f \[record 0\]: .*" + match):
            decode_record(bad, "f [record 0]")
    with pytest.raises(ValueError, match="cannot be stored"):
        encode_record({}, {"c": np.zeros(2, np.complex64)})


def test_features_beyond_float16_are_a_bad_record():
    from jaxvl.data.builders.common import RegionSpec
    from jaxvl.data.imagestore.writer import image_record
    from jaxvl.data.records import RegionFeatures

    rec = RegionFeatures(image_id="big", image_h=10, image_w=10, boxes=np.array([[0, 0, 5, 5]], np.float32),
                         features=np.array([[1.0, 7e4]], np.float32))
    spec = RegionSpec(num_regions=2, feature_dim=2, num_classes=None)
    assert len(image_record(rec, spec, "float32", "src"))
    with pytest.raises(BadRecord, match=r"^src: record 'big' has features up to 70000, beyond float16's 65504"):
        image_record(rec, spec, "float16", "src")


def _copy_store(src: str, dst) -> str:
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_a_corrupted_image_record_names_file_and_image(synthetic, tmp_path):
    store = _copy_store(synthetic["float32"], tmp_path / "store")
    path = os.path.join(store, "train-images.array_record")
    image_id = open_split(store, "train")[0][9]["image_id"].decode()  # the fourth image (3 captions each)
    data = bytearray(open(path, "rb").read())
    at = data.find(f'"image_id":"{image_id}"'.encode())  # records are stored raw: the header is in the file
    assert at > 0
    data[at + 400] ^= 0xFF  # inside the record's features: ArrayRecord's chunk hash no longer matches
    open(path, "wb").write(bytes(data))
    source, _ = open_split(store, "train")  # the first pair is another image's
    errors = []
    for i in range(len(source)):
        try:
            source[i]
        except BadRecord as e:
            errors.append(str(e))
    assert len(errors) == 3  # the image's 3 captions
    assert all("\n" not in e and f"{path} [record " in e and f"image {image_id!r}]: unreadable" in e for e in errors)
    skipping, _ = open_split(store, "train", skip_bad=True)
    ids = {skipping[i]["image_id"].decode() for i in range(len(skipping))}
    assert image_id not in ids and skipping.skipped == 3 and len(ids) == 7


def test_a_caption_of_a_missing_image_is_a_bad_record(synthetic, tmp_path):
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    store = _copy_store(synthetic["float32"], tmp_path / "store")
    path = os.path.join(store, "train-captions.array_record")
    reader = ArrayRecordReader(path)
    records = reader.read_all()
    reader.close()
    writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
    for record in [*records[:5], caption_record(99, "ghost", "a red ball"), *records[5:]]:
        writer.write(record)
    writer.close()
    manifest = json.load(open(os.path.join(store, MANIFEST)))
    with pytest.raises(ValueError, match=r"train-captions.array_record: 25 records, but the manifest says 24"):
        open_split(store, "train")
    manifest["splits"]["train"]["captions"] = 25
    json.dump(manifest, open(os.path.join(store, MANIFEST), "w"))
    source, _ = open_split(store, "train")
    with pytest.raises(BadRecord, match=r"train-captions.array_record \[record 5\]: the caption of image 'ghost' "
                                        r"refers to image row 99, but .*train-images.array_record holds 8 images$"):
        source[5]
    skipping, _ = open_split(store, "train", skip_bad=True)
    assert _key(skipping[5]) == _key(source[6]) and skipping.skipped == 1  # replaced by the next good pair


def test_damaged_manifest_and_tables_fail_when_opened(synthetic, tmp_path):
    store = _copy_store(synthetic["float32"], tmp_path / "store")
    with pytest.raises(ValueError, match=r"no split 'test'; it has \['train', 'val'\]"):
        open_split(store, "test")
    images = os.path.join(store, "val-images.array_record")
    with open(images, "r+b") as f:
        f.truncate(os.path.getsize(images) // 2)
    with pytest.raises(ValueError, match=r"val-images.array_record: not a readable ArrayRecord file"):
        open_split(store, "val")
    with open(os.path.join(store, MANIFEST), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match=f"{MANIFEST}: not a readable image-store manifest"):
        open_split(store, "train")


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_pretrain_trains_and_evaluates_on_an_image_store(tmp_path):
    """``jaxvl pretrain`` with a ``layout=images`` source string: the store is prepared on first use, trained on
    for 2 steps and evaluated on its val split."""
    from jaxvl.cli import main
    from jaxvl.runtime.metrics_log import read_metrics

    source = "synthetic:num_images=16,val_images=4,layout=images,features_dtype=float16"
    run = tmp_path / "run"
    args = ["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(run), f"--config.data.dataset={source}",
            f"--config.data.prepare_dir={tmp_path / 'data'}", "--config.fast_compile=True", "--config.progress=False",
            "--config.data.batch_size=8", "--config.data.max_seq_length=12", "--config.steps=2",
            "--config.eval_every=2", "--config.eval_batches=1", "--config.checkpoint.every=2"]
    assert main(args) == 0
    dataset = json.loads((run / "run.json").read_text())["dataset"]
    assert is_image_store(dataset) and dataset.endswith("+features_dtype-float16/1.0.0")
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2]
    assert [r["step"] for r in read_metrics(run, "eval")] == [2]
    assert all(np.isfinite(r["loss"]) for r in read_metrics(run, "train"))
