"""The ablation pipeline over stored examples: spans, gold boxes, labels, the mean feature, order, hosts, errors."""

import logging

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvl.ablation.data import (
    AblationPipelineConfig,
    ablation_dataset,
    scan_ablation,
    stored_ablation_example,
    world_ablation_source,
)
from jaxvl.ablation.labelmatch import LabelMatcher
from jaxvl.data.builders import RegionSpec, synthetic_builders, synthetic_config
from jaxvl.data.grain import open_split, tokenizer_for
from jaxvl.data.records import AblationExample, BadRecord
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()
NO_SHARD = grain.sharding.NoSharding()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared synthetic world: 2 train + 3 val images, the val split, its tokenizer and the world."""
    out = str(tmp_path_factory.mktemp("data"))
    config = synthetic_config(num_images=2, val_images=3)
    ablation = synthetic_builders(config, out)[1]
    ablation.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    source, info = open_split(ablation.data_dir, "val")
    world = World(WorldConfig(num_images=5))
    return source, tokenizer_for(info), info, world


def all_rows(ds):
    batches = list(ds)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, batches


def test_every_example_once_in_order_with_fields_of_fixed_shape(prepared):
    source, tok, info, world = prepared
    cfg = AblationPipelineConfig(batch_size=4, max_seq_length=20)
    matcher = LabelMatcher.from_label_list(info.metadata["label_list"])
    index = scan_ablation(source, tok, cfg, label_matcher=matcher)
    phrases = [p for i in range(2, 5) for p in world[i].phrases]
    assert len(index) == len(source) == len(phrases)
    rows, batches = all_rows(ablation_dataset(source, tok, cfg, index, shard=NO_SHARD))
    assert len(batches) == -(-len(index) // 4) and all(len(b["valid"]) == 4 for b in batches)
    n = len(index)
    np.testing.assert_array_equal(rows["valid"], (np.arange(len(rows["valid"])) < n).astype(np.int32))
    np.testing.assert_array_equal(rows["example"][:n], np.arange(n))
    t, lv, g = 20, 11, index.max_ref_boxes
    assert rows["input_ids"].shape[1:] == (t,) and rows["phrase_mask"].shape[1:] == (t,)
    assert rows["features"].shape[1:] == (lv, 24) and rows["boxes"].shape[1:] == (lv, 4)
    assert rows["ref_boxes"].shape[1:] == (g, 4) and rows["cls_prob"].shape[1:] == (lv, 21)
    by_key = {(p.image_id, p.sentence_index, p.phrase, p.first_word_index): p for p in phrases}
    for j in range(n):
        rec = source[int(index.records[j])]
        ph = by_key[(rec["image_id"].decode(), int(rec["sentence_index"]), rec["phrase"].decode(),
                     int(rec["first_word_index"]))]
        # the masked positions spell the phrase; the rest of the sentence is intact
        assert tok.decode(rows["input_ids"][j][rows["phrase_mask"][j] == 1]) == ph.phrase
        ids, _ = tok.encode(ph.sentence, t)
        np.testing.assert_array_equal(rows["input_ids"][j], ids)
        assert rows["ref_mask"][j].sum() == len(ph.ref_boxes)
        np.testing.assert_allclose(rows["ref_boxes"][j][:len(ph.ref_boxes)], ph.ref_boxes)
        # the LabelMatch label of "a <attribute> <class>" is the gold object's class (+1: background first)
        obj = world[int(ph.image_id)].objects[int(ph.entity_id.split("-")[1])]
        assert rows["vg_label"][j] == obj.label + 1
        # [IMG] first: never a target row, box = the whole image
        assert rows["region_target_mask"][j, 0] == 0 and rows["region_mask"][j, 0] == 1
        np.testing.assert_array_equal(rows["boxes"][j, 0], [0, 0, 640, 480])
    # VOLTA's _avg_feature: the mean over examples of each example's mean region feature
    want = np.mean([world[int(p.image_id)].regions.features.mean(0) for p in phrases], axis=0)
    np.testing.assert_allclose(index.mean_feature, want, rtol=1e-5)


def test_hosts_share_the_examples_and_global_batches_are_contiguous():
    world = World(WorldConfig(num_images=4))
    source = world_ablation_source(world, range(4))
    tok = Tokenizer.from_words(world.vocabulary())
    cfg = AblationPipelineConfig(batch_size=6, max_seq_length=20)
    index = scan_ablation(source, tok, cfg)
    hosts = [list(ablation_dataset(source, tok, cfg, index, shard=grain.sharding.ShardOptions(p, 2)))
             for p in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == -(-len(index) // 6)
    seen = []
    for k in range(len(hosts[0])):
        block = np.concatenate([hosts[p][k]["example"][hosts[p][k]["valid"] == 1] for p in range(2)])
        assert set(block) == set(range(6 * k, min(6 * k + 6, len(index))))
        seen.extend(block)
    assert sorted(seen) == list(range(len(index)))


def test_truncation_counts_and_masks_only_what_survives():
    world = World(WorldConfig(num_images=3))
    source = world_ablation_source(world, range(3))
    tok = Tokenizer.from_words(world.vocabulary())
    cfg = AblationPipelineConfig(batch_size=2, max_seq_length=6)  # [CLS] + 4 sub-words + [SEP]
    index = scan_ablation(source, tok, cfg)
    rows, _ = all_rows(ablation_dataset(source, tok, cfg, index, shard=NO_SHARD))
    spans = index.spans
    assert index.truncated == int((spans[:, 1] > 5).sum()) > 0
    assert index.fully_truncated == int((spans[:, 0] >= 5).sum()) > 0
    for j in range(len(index)):
        want = np.zeros(6, np.int32)
        want[spans[j, 0]:min(spans[j, 1], 5)] = 1
        np.testing.assert_array_equal(rows["phrase_mask"][j], want)


def test_bad_records_name_the_record_and_skip_bad_counts_them():
    world = World(WorldConfig(num_images=2))
    tok = Tokenizer.from_words(world.vocabulary())
    spec = RegionSpec(10, 24, 20)
    image = world[0]
    good = image.phrases[0]
    bad = AblationExample(good.image_id, 0, good.sentence, good.phrase, good.first_word_index + 1, "e", "x",
                          good.ref_boxes)
    source = [stored_ablation_example(good, image.regions, spec), stored_ablation_example(bad, image.regions, spec)]
    cfg = AblationPipelineConfig(batch_size=2, max_seq_length=20)
    with pytest.raises(BadRecord, match="record 1"):
        scan_ablation(source, tok, cfg, source_name="val split")
    index = scan_ablation(source, tok, cfg, skip_bad=True)
    assert len(index) == 1 and len(index.skipped) == 1 and "record 1" in index.skipped[0]
    with pytest.raises(ValueError, match="empty evaluation set"):
        scan_ablation(source[1:], tok, cfg, skip_bad=True)
    with pytest.raises(ValueError, match="empty evaluation set"):
        scan_ablation([], tok, cfg)
    many = AblationExample(good.image_id, 0, good.sentence, good.phrase, good.first_word_index, "e", "x",
                           np.tile(good.ref_boxes, (3, 1)))
    with pytest.raises(ValueError, match="3 gold boxes, more than max_ref_boxes=2"):
        scan_ablation([stored_ablation_example(many, image.regions, spec)], tok,
                      AblationPipelineConfig(max_ref_boxes=2))
    no_classes = {k: v for k, v in source[0].items() if k not in ("cls_prob", "objects_id", "objects_conf")}
    with pytest.raises(BadRecord, match="cls_prob"):
        scan_ablation([no_classes], tok, cfg)
