"""TFDS builders writing ArrayRecord: padding, ragged gold boxes, the synthetic world, ``jaxvl prepare``."""

import argparse
import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvl.data import prepare
from jaxvl.data.builders import (
    AblationConfig,
    AblationPhrases,
    PretrainConfig,
    PretrainPairs,
    RegionSpec,
    SyntheticConfig,
    attach_regions,
    decode_ablation,
    decode_regions,
    parse_knobs,
    synthetic_builders,
    synthetic_config,
)
from jaxvl.data.records import AblationExample, BadRecord, CaptionPair, RegionFeatures
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()
D, K = 6, 4


def regions(image_id: str, n: int, seed: int = 0, classes: bool = True) -> RegionFeatures:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2)).astype(np.float32)], 1)
    rec = RegionFeatures(image_id, image_h=100, image_w=120, boxes=boxes,
                         features=rng.normal(size=(n, D)).astype(np.float32))
    if classes:
        p = rng.uniform(size=(n, K + 1)).astype(np.float32)
        rec.cls_prob = p / p.sum(1, keepdims=True)
    return rec


def build(builder_cls, config, data_dir):
    builder = builder_cls(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    # Read back the way the pipeline does: from the directory, no builder class.
    return tfds.builder_from_directory(builder.data_dir)


def by_key(source, key):
    return {(decode_regions(ex).image_id, ex[key]): ex for ex in (source[i] for i in range(len(source)))}


def test_pretrain_pairs_pad_truncate_and_round_trip(tmp_path):
    recs = {"a": regions("a", 3, 1), "b": regions("b", 5, 2), "c": regions("c", 7, 3)}  # c has more than R = 5
    recs["b"].objects_id = np.arange(5) % K  # given ids win over the cls_prob argmax
    pairs = [CaptionPair(recs["a"], "one"), CaptionPair(recs["a"], "two"), CaptionPair(recs["b"], "three"),
             CaptionPair(recs["c"], "four")]
    config = PretrainConfig(name="t", regions=RegionSpec(5, D, K), splits={"train": lambda: pairs},
                            metadata={"note": "hand-made"})
    builder = build(PretrainPairs, config, tmp_path)
    assert builder.info.metadata["regions"] == {"num_regions": 5, "feature_dim": D, "num_classes": K}
    assert builder.info.metadata["note"] == "hand-made"
    source = builder.as_data_source(split="train")
    assert len(source) == 4
    examples = by_key(source, "caption")
    assert set(examples) == {("a", b"one"), ("a", b"two"), ("b", b"three"), ("c", b"four")}
    for (image_id, _), ex in examples.items():
        rec = recs[image_id]
        n = min(rec.num_boxes, 5)
        assert ex["features"].shape == (5, D) and ex["cls_prob"].shape == (5, K + 1) and ex["num_boxes"] == n
        assert (ex["image_h"], ex["image_w"]) == (100, 120)
        np.testing.assert_array_equal(ex["features"][:n], rec.features[:n])
        np.testing.assert_array_equal(ex["boxes"][:n], rec.boxes[:n])
        assert not ex["features"][n:].any() and not ex["cls_prob"][n:].any()
        assert (ex["objects_id"][n:] == -1).all()
        expected_ids = rec.objects_id if rec.objects_id is not None else rec.cls_prob[:, 1:].argmax(1)
        np.testing.assert_array_equal(ex["objects_id"][:n], expected_ids[:n])
        np.testing.assert_allclose(ex["objects_conf"][:n], rec.cls_prob[np.arange(n), expected_ids[:n] + 1])
        back = decode_regions(ex)
        assert back.image_id == image_id and back.num_boxes == n
        np.testing.assert_array_equal(back.cls_prob, rec.cls_prob[:n])


def test_pretrain_pairs_without_classes_and_bad_records(tmp_path):
    pairs = [CaptionPair(regions("a", 2, classes=False), "x")]
    builder = build(PretrainPairs, PretrainConfig(name="nocls", regions=RegionSpec(3, D, None),
                                                  splits={"train": lambda: pairs}), tmp_path)
    ex = builder.as_data_source(split="train")[0]
    assert "cls_prob" not in ex and ex["num_boxes"] == 2
    # A dataset that stores classes refuses a record without them; a NaN feature is refused too.
    with pytest.raises(BadRecord, match="no cls_prob"):
        build(PretrainPairs, PretrainConfig(name="needcls", regions=RegionSpec(3, D, K),
                                            splits={"train": lambda: pairs}), tmp_path)
    bad = regions("bad", 2)
    bad.features[1, 0] = np.nan
    with pytest.raises(BadRecord, match="NaN"):
        build(PretrainPairs, PretrainConfig(name="nan", regions=RegionSpec(3, D, K),
                                            splits={"train": lambda: [CaptionPair(bad, "y")]}), tmp_path)


def test_ablation_phrases_ragged_gold_boxes(tmp_path):
    recs = {"a": regions("a", 4, 1), "b": regions("b", 2, 2)}
    ref = {1: np.array([[1, 2, 30, 40]], np.float32), 3: np.array([[0, 0, 5, 5], [2, 2, 9, 9], [3, 3, 4, 4]],
                                                                  np.float32)}
    examples = [
        AblationExample("a", 0, "a red dog runs", "a red dog", 0, "e1", "animals", ref[1]),
        AblationExample("a", 1, "the cat and a red dog", "a red dog", 3, "e1", "animals", ref[1]),
        AblationExample("b", 0, "three boxes here", "three boxes", 0, "e3", "other", ref[3]),
    ]
    config = AblationConfig(name="t", regions=RegionSpec(4, D, K),
                            splits={"val": lambda: attach_regions(examples, recs)})
    builder = build(AblationPhrases, config, tmp_path)
    assert builder.info.features["ref_boxes"].shape == (None, 4)
    source = builder.as_data_source(split="val")
    got = {(decode_ablation(source[i])[0].sentence_index, decode_ablation(source[i])[0].image_id): source[i]
           for i in range(len(source))}
    assert len(got) == 3
    for want in examples:
        ex, rec = decode_ablation(got[(want.sentence_index, want.image_id)])
        assert (ex.sentence, ex.phrase, ex.first_word_index, ex.entity_id, ex.phrase_type) == (
            want.sentence, want.phrase, want.first_word_index, want.entity_id, want.phrase_type)
        np.testing.assert_array_equal(ex.ref_boxes, want.ref_boxes)  # N = 1 or 3: ragged
        np.testing.assert_array_equal(rec.features, recs[want.image_id].features)
    with pytest.raises(BadRecord, match="no regions for image 'b'"):
        list(attach_regions(examples, {"a": recs["a"]}))


def test_synthetic_builders_match_the_world(tmp_path):
    config = synthetic_config(num_images=6, val_images=3, captions_per_image=2)
    assert config.name == "num_images-6+val_images-3"
    for builder in synthetic_builders(config, str(tmp_path)):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    pretrain, ablation = (tfds.builder_from_directory(b.data_dir) for b in synthetic_builders(config, str(tmp_path)))
    world = World(WorldConfig(num_images=9))
    meta = pretrain.info.metadata
    assert meta["words"] == world.vocabulary() and meta["label_list"] == world.label_list()
    assert meta["split_ranges"] == {"train": [0, 6], "val": [6, 9]}
    assert {k: v.num_examples for k, v in pretrain.info.splits.items()} == {"train": 12, "val": 6}
    val = pretrain.as_data_source(split="val")
    ids = sorted({decode_regions(val[i]).image_id for i in range(len(val))})
    assert ids == ["000006", "000007", "000008"]  # held-out images of the same world
    for i in range(len(val)):
        ex = val[i]
        image = world[int(decode_regions(ex).image_id)]
        assert ex["caption"].decode() in image.captions
        np.testing.assert_array_equal(ex["features"], image.regions.features)
        np.testing.assert_array_equal(ex["cls_prob"], image.regions.cls_prob)
    tok = Tokenizer.from_words(meta["words"])
    assert all(tok.unk_id not in tok.token_ids(c) for i in range(9) for c in world[i].captions)
    n_phrases = {s: sum(len(world[i].phrases) for i in range(*r)) for s, r in meta["split_ranges"].items()}
    assert {k: v.num_examples for k, v in ablation.info.splits.items()} == n_phrases


def test_parse_knobs_and_config_names():
    knobs = parse_knobs("num_images=128, vision_to_language=0.5,image_size=240x320,"
                        "detector_rank_probs=0.2/0.2/0.2/0.2/0.2,val_images=8")
    assert knobs == dict(num_images=128, vision_to_language=0.5, image_size=(240, 320),
                         detector_rank_probs=(0.2,) * 5, val_images=8)
    cfg = synthetic_config(**knobs)
    assert isinstance(cfg, SyntheticConfig) and cfg.world.image_size == (240, 320)
    assert cfg.name.startswith("num_images-128+image_size-240x320")
    assert synthetic_config().name == "default" and synthetic_config(name="mine").name == "mine"
    with pytest.raises(ValueError, match="unknown synthetic knob 'colour'"):
        parse_knobs("colour=red")
    with pytest.raises(ValueError, match="expected int"):
        parse_knobs("num_images=many")


def test_prepare_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    args = parser.parse_args(["--source", "synthetic:num_images=4,val_images=2,name=cli", "--out", str(tmp_path),
                              "--quiet"])
    assert prepare.run(args) == 0
    out = capsys.readouterr().out
    assert "prepared 2 datasets" in out and "train 8, val 4 examples" in out
    for name in ("jaxvl_synthetic_pretrain", "jaxvl_synthetic_ablation"):
        assert (tmp_path / name / "cli" / "1.0.0" / "dataset_info.json").exists()
        assert list((tmp_path / name / "cli" / "1.0.0").glob("*.array_record-*"))
    from jaxvl.cli import main

    assert main(["prepare", "--source", "volta-lmdb:/x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvl: error:") and "available: synthetic" in err and len(err.splitlines()) == 1


def test_cli_prepare_default_and_knobs(tmp_path):
    """``jaxvl prepare`` with the default world (named like the builders' own config) and with knobs."""
    from jaxvl.cli import main

    assert main(["prepare", "--out", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "jaxvl_synthetic_pretrain" / "default" / "1.0.0").is_dir()
    assert main(["prepare", "--source", "synthetic:num_images=8", "--out", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "jaxvl_synthetic_ablation" / "num_images-8" / "1.0.0").is_dir()
    assert main(["prepare", "--source", "synthetic:no_such_knob=1", "--out", str(tmp_path), "--quiet"]) == 2
