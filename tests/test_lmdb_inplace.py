"""VOLTA's Conceptual Captions LMDBs read in place (``jaxvl.data.inplace``): the prepared dataset's records in
every layout, pretraining with no prepare step, resume, host shards, worker processes and bad records."""

from __future__ import annotations

import json
import logging
import os
import pickle

import grain
import lmdb
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvl.cli import main
from jaxvl.data.builders.pretrain import PretrainPairs
from jaxvl.data.grain import PretrainTransform, open_split
from jaxvl.data.readers.volta_lmdb import NumberedKeys, compact_keys
from jaxvl.data.records import BadRecord
from jaxvl.data.resolve import resolve_dataset
from jaxvl.data.sources import build_source
from jaxvl.data.synthetic.volta_files import CC_TRAIN_LMDB, CC_VAL_LMDB, export_world
from jaxvl.data.synthetic.world import WorldConfig
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.pretrain.data import PipelineConfig, pretrain_dataset
from jaxvl.runtime.metrics_log import read_metrics

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()

WORLD = WorldConfig(num_images=16, num_regions=4, feature_dim=6, num_classes=12, min_objects=1, max_objects=2)
VAL_IMAGES = 4  # 32 train pairs, 8 val pairs (the tests run on 8 CPU devices)


def _export(root, serializer: str = "msgpack", directory: bool = False):
    """The world in VOLTA's files; ``directory``: each CC LMDB moved to the directory layout (``data.mdb``)."""
    world = export_world(WORLD, VAL_IMAGES, root, serializer)
    if directory:
        for name in (CC_TRAIN_LMDB, CC_VAL_LMDB):
            path = os.path.join(world.cc_dir, name)
            os.replace(path, path + ".tmp")
            os.remove(path + "-lock")
            os.makedirs(path)
            os.replace(path + ".tmp", os.path.join(path, "data.mdb"))
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("world"))


def _prepared(world, out) -> str:
    builder = next(b for b in build_source(f"volta-cc:{world.cc_dir}", str(out)).builders
                   if isinstance(b, PretrainPairs))
    builder.download_and_prepare()
    return builder.data_dir


def _identity(record) -> tuple:
    return record["image_id"], record["caption"], np.asarray(record["features"]).tobytes()


def _rows(batches) -> list[tuple]:
    """Each batch row as (input_ids, features) bytes: one pair's identity after the transform."""
    return [(b["input_ids"][i].tobytes(), b["features"][i].tobytes()) for b in batches
            for i in range(len(b["input_ids"]))]


def _tokenizer(world) -> Tokenizer:
    return Tokenizer.from_vocab_file(world.vocab)


def _corrupt(path: str, key: bytes, value: bytes = b"\x93not a datapoint") -> None:
    """Overwrite one value of a single-file LMDB (before anything in this process opened it)."""
    env = lmdb.open(path, subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        assert txn.get(key) is not None
        txn.put(key, value)
    env.close()


# ------------------------------------------------------------------------------------------ same records


@pytest.mark.parametrize("serializer,directory", [("msgpack", False), ("pickle", False), ("msgpack", True),
                                                  ("pickle", True)])
def test_records_equal_the_prepared_records(tmp_path, serializer, directory):
    """Every split read in place holds the prepared split's records (same fields, dtypes, types and values;
    order aside: TFDS shuffles what it writes)."""
    world = _export(tmp_path / "world", serializer, directory)
    assert os.path.isdir(os.path.join(world.cc_dir, CC_TRAIN_LMDB)) == directory
    prepared = _prepared(world, tmp_path / "data")
    for split, count in (("train", world.train_pairs), ("val", world.val_pairs)):
        stored, stored_info = open_split(prepared, split)
        source, info = open_split(f"volta-cc:{world.cc_dir}", split)
        assert len(source) == len(stored) == count
        assert info.metadata["regions"] == stored_info.metadata["regions"]
        ours = sorted((source[i] for i in range(len(source))), key=_identity)
        theirs = sorted((stored[i] for i in range(len(stored))), key=_identity)
        for a, b in zip(ours, theirs, strict=True):
            assert a.keys() == b.keys()
            for k in a:
                assert type(a[k]) is type(b[k]), k
                if isinstance(a[k], np.ndarray):
                    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
                    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
                else:
                    assert a[k] == b[k], k


def test_region_options_apply_in_place(world):
    """``num_regions=`` pads (or cuts) every record to R as the prepared dataset would."""
    source, info = open_split(f"volta-cc:{world.cc_dir},num_regions=7", "train")
    assert info.metadata["regions"]["num_regions"] == 7
    rec = source[3]
    assert rec["features"].shape == (7, WORLD.feature_dim) and rec["cls_prob"].shape == (7, WORLD.num_classes + 1)
    assert not rec["features"][rec["num_boxes"]:].any() and (rec["objects_id"][rec["num_boxes"]:] == -1).all()


def test_numbered_keys_are_held_as_a_count(world):
    keys = [b"%08d" % i for i in range(12)]
    compact = compact_keys(keys)
    assert isinstance(compact, NumberedKeys) and list(compact) == keys and len(compact) == 12
    assert compact[-1] == b"00000011" and compact[5] == b"00000005"
    with pytest.raises(IndexError):
        compact[12]
    assert compact_keys([b"b", b"a"]) == [b"b", b"a"]
    source, _ = open_split(f"volta-cc:{world.cc_dir}", "train")
    assert isinstance(pickle.loads(pickle.dumps(source)).reader.key(4), str)
    with pytest.raises(IndexError):
        source[len(source)]


# ------------------------------------------------------------------------------------- the pipeline


def test_resume_gives_the_uninterrupted_batches(world):
    """An iterator restored from ``get_state`` in a freshly opened source continues exactly."""
    cfg = PipelineConfig(batch_size=4, max_seq_length=12, seed=3, num_threads=2)
    text = f"volta-cc:{world.cc_dir}"
    source, _ = open_split(text, "train")
    it = iter(pretrain_dataset(source, _tokenizer(world), cfg, shard=grain.sharding.NoSharding()))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]  # past the 4-batch epoch: the reshuffled second epoch too
    fresh, _ = open_split(text, "train")
    restored = iter(pretrain_dataset(fresh, _tokenizer(world), cfg, shard=grain.sharding.NoSharding()))
    restored.set_state(state)
    got = [next(restored) for _ in range(6)]
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_two_host_shards_cover_every_record_once(world):
    source, _ = open_split(f"volta-cc:{world.cc_dir}", "train")
    tok = _tokenizer(world)
    cfg = PipelineConfig(batch_size=4, max_seq_length=12, seed=1, num_epochs=1, num_threads=1)
    hosts = [_rows(pretrain_dataset(source, tok, cfg, shard=grain.sharding.ShardOptions(p, 2))) for p in (0, 1)]
    transform = PretrainTransform(tok, 12)
    every = sorted(_rows([{k: v[None] for k, v in transform.map(source[i]).items()} for i in range(len(source))]))
    assert len(hosts[0]) == len(hosts[1]) == len(source) // 2
    assert sorted(hosts[0] + hosts[1]) == every


def test_worker_processes_open_their_own_environment(world):
    """Grain worker processes get the source pickled without an LMDB handle, open their own and yield the
    batches of the in-process pipeline."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    source, _ = open_split(f"volta-cc:{world.cc_dir}", "train")
    cfg = PipelineConfig(batch_size=4, max_seq_length=12, seed=2, num_epochs=1, num_threads=1)
    local = _rows(pretrain_dataset(source, _tokenizer(world), cfg, shard=grain.sharding.NoSharding()))
    ds = pretrain_dataset(source, _tokenizer(world), cfg, shard=grain.sharding.NoSharding())
    workers = _rows(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=1)))
    assert workers == local and len(local) == len(source)


@pytest.fixture(scope="module")
def pretrained(world, tmp_path_factory):
    """``jaxvl pretrain`` on ``volta-cc:PATH`` (2 steps, one evaluation on validation_feat_all.lmdb): its run dir."""
    run = tmp_path_factory.mktemp("pretrain") / "run"
    args = ["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(run),
            f"--config.data.dataset=volta-cc:{world.cc_dir}", f"--config.data.vocab_file={world.vocab}",
            "--config.fast_compile=True", "--config.progress=False", "--config.data.batch_size=8",
            "--config.data.max_seq_length=12", "--config.steps=2", "--config.eval_every=2", "--config.eval_batches=1",
            "--config.checkpoint.every=2"]
    assert main(args) == 0
    return run


# The two commands end to end on the LMDBs read in place (-m slow: the fixture's pretraining compiles a train step on
# 8 devices). Not slow: what they read (test_records_equal_the_prepared_records, in every layout, and
# test_ablation_phrases_equal_the_prepared_records), resume, host shards and workers above, and the commands end to
# end on prepared data (tests/test_pretrain.py::test_pretrain_command_end_to_end,
# tests/test_ablate_command.py::test_ablate_writes_the_report).
@pytest.mark.slow
def test_pretrain_reads_in_place_with_no_prepare_step(world, pretrained, tmp_path):
    """Pretraining on ``volta-cc:PATH`` trains and evaluates with no dataset written: no ``<workdir>/data``, and
    ``resolve_dataset`` returns the source string as it is."""
    text = f"volta-cc:{world.cc_dir}"
    assert resolve_dataset(text, "", str(tmp_path / "elsewhere"), PretrainPairs) == text
    assert not (tmp_path / "elsewhere").exists() and not (pretrained / "data").exists()
    assert json.loads((pretrained / "run.json").read_text())["dataset"] == text
    assert [r["step"] for r in read_metrics(pretrained, "train")] == [1, 2]
    assert [r["step"] for r in read_metrics(pretrained, "eval")] == [2]


# ------------------------------------------------------------------------ ablation: per-image feature LMDB


def _f30k(world, *options: str) -> str:
    return ",".join([f"flickr30k-entities:{world.flickr30k_entities}", f"features={world.features}", *options])


def _phrase_key(record) -> tuple:
    return record["image_id"], record["sentence_index"], record["first_word_index"], record["phrase"]


def test_ablation_phrases_equal_the_prepared_records(world, tmp_path):
    """Flickr30k Entities with VOLTA's per-image feature LMDB (directory layout, pickled rows) read in place: the
    prepared split's records, order aside."""
    builder = build_source(_f30k(world), str(tmp_path / "data")).builders[0]
    builder.download_and_prepare()
    stored, stored_info = open_split(builder.data_dir, "val")
    source, info = open_split(_f30k(world), "val")
    assert len(source) == len(stored) == world.val_phrases
    assert info.metadata["regions"] == stored_info.metadata["regions"]
    ours = sorted((source[i] for i in range(len(source))), key=_phrase_key)
    theirs = sorted((stored[i] for i in range(len(stored))), key=_phrase_key)
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert type(a[k]) is type(b[k]), k
            if isinstance(a[k], np.ndarray):
                assert a[k].dtype == b[k].dtype
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
            else:
                assert a[k] == b[k], k
    assert pickle.loads(pickle.dumps(source))[len(source) - 1].keys() == ours[0].keys()
    with pytest.raises(ValueError, match="no split 'train'; it has \\['val'\\]"):
        open_split(_f30k(world), "train")


@pytest.mark.slow  # end to end, as test_pretrain_reads_in_place_with_no_prepare_step
def test_ablate_reads_in_place_with_no_prepare_step(world, pretrained, tmp_path):
    from jaxvl.data.builders.ablation import AblationPhrases

    text = _f30k(world)
    assert resolve_dataset(text, "", str(tmp_path / "elsewhere"), AblationPhrases) == text
    out = tmp_path / "ablation"
    args = ["ablate", "--config", "ablate:tiny", "--workdir", str(out), f"--config.checkpoints={pretrained}",
            f"--config.data.dataset={text}", f"--config.data.vocab_file={world.vocab}",
            f"--config.labelmatch.objects_vocab={world.objects_vocab}", "--config.data.max_seq_length=12",
            "--config.thresholds=(0.0,0.5)", "--config.attention=False", "--config.n_boot=20",
            "--config.fast_compile=True", "--config.progress=False"]
    assert main(args) == 0
    assert (out / "results.csv").stat().st_size > 0 and not (out / "data").exists()
    assert not (tmp_path / "elsewhere").exists()


def test_bad_image_features_are_named_or_left_out(tmp_path):
    """A feature row that does not decode: reading one of its image's phrases names the LMDB and the image; with
    skip_bad the image's phrases are left out when the source opens and counted, as ``jaxvl prepare --skip-bad``
    leaves them out."""
    world = _export(tmp_path / "world")
    source, _ = open_split(_f30k(world), "val")
    bad = source[0]["image_id"]
    n_bad = sum(source[i]["image_id"] == bad for i in range(len(source)))
    del source
    env = lmdb.open(world.features, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(bad, b"\x80\x03not a row")
    env.close()
    source, _ = open_split(_f30k(world, "probe=1"), "val")
    with pytest.raises(BadRecord, match=rf"{world.features}: record '{bad.decode()}': cannot decode"):
        source[0]
    kept, info = open_split(_f30k(world), "val", skip_bad=True)
    assert len(kept) == world.val_phrases - n_bad and all(kept[i]["image_id"] != bad for i in range(len(kept)))
    builder = build_source(_f30k(world, "skip_bad=1"), str(tmp_path / "data")).builders[0]
    builder.download_and_prepare()
    assert builder.info.splits["val"].num_examples == len(kept)
    assert info.metadata["skipped"] == builder.info.metadata["skipped"]


# ------------------------------------------------------------------------------------------ bad records


@pytest.fixture
def corrupted(tmp_path):
    """A copy of a world whose train record ``00000005`` does not decode."""
    world = _export(tmp_path / "world")
    _corrupt(os.path.join(world.cc_dir, CC_TRAIN_LMDB), b"00000005")
    return world


def test_a_bad_record_is_named_when_opened_or_read(corrupted):
    path = os.path.join(corrupted.cc_dir, CC_TRAIN_LMDB)
    with pytest.raises(BadRecord, match=rf"{path}: record '00000005': cannot decode"):
        open_split(f"volta-cc:{corrupted.cc_dir}", "train")  # among the records probed for the region sizes
    source, _ = open_split(f"volta-cc:{corrupted.cc_dir},probe=2", "train")
    source[4]
    with pytest.raises(BadRecord, match=rf"{path}: record '00000005': cannot decode"):
        source[5]


def test_a_bad_record_stops_pretrain_with_one_line(corrupted, tmp_path, capsys):
    args = ["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(tmp_path / "run"),
            f"--config.data.dataset=volta-cc:{corrupted.cc_dir},probe=2", f"--config.data.vocab_file={corrupted.vocab}",
            "--config.fast_compile=True", "--config.progress=False", "--config.data.batch_size=32",
            "--config.data.max_seq_length=12", "--config.steps=1", "--config.eval_every=0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jaxvl: error: ")
    assert f"{os.path.join(corrupted.cc_dir, CC_TRAIN_LMDB)}: record '00000005'" in err


@pytest.mark.parametrize("how", ["option", "argument"])
def test_skip_bad_replaces_and_counts(corrupted, how, caplog):
    """With skip_bad the bad record is logged once naming file and key, counted, and replaced by the next good
    one, so a whole epoch of batches still comes out."""
    text = f"volta-cc:{corrupted.cc_dir},probe=2" + (",skip_bad=1" if how == "option" else "")
    source, info = open_split(text, "train", skip_bad=how == "argument")
    assert info.metadata["skip_bad"] is True
    with caplog.at_level(logging.WARNING):
        assert _identity(source[5]) == _identity(source[6])
        source[5]
    assert source.skipped == 1
    assert sum("'00000005'" in r.getMessage() for r in caplog.records) == 1
    cfg = PipelineConfig(batch_size=4, max_seq_length=12, seed=0, num_epochs=1, num_threads=2)
    assert len(_rows(pretrain_dataset(source, _tokenizer(corrupted), cfg,
                                      shard=grain.sharding.NoSharding()))) == len(source)


def test_prepare_takes_the_skip_bad_option(corrupted, tmp_path):
    """``skip_bad=1`` in the source string is ``--skip-bad`` for ``jaxvl prepare`` too."""
    builder = build_source(f"volta-cc:{corrupted.cc_dir},skip_bad=1", str(tmp_path / "data")).builders[0]
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == corrupted.train_pairs - 1


def test_a_truncated_store_is_refused_naming_the_file(tmp_path):
    world = _export(tmp_path / "world")
    path = os.path.join(world.cc_dir, CC_TRAIN_LMDB)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=rf"{path}: truncated LMDB"):
        open_split(f"volta-cc:{world.cc_dir}", "train")
