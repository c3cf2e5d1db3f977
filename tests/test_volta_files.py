"""``jaxvl world export`` (``jaxvl.data.synthetic.volta_files``): a synthetic world written in VOLTA's file formats
reads back through the real readers and ``jaxvl prepare`` sources with the content the embedded world has."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvl.cli import main
from jaxvl.data.builders.ablation import decode_ablation
from jaxvl.data.builders.common import as_str, decode_regions
from jaxvl.data.grain import open_split, tokenizer_for
from jaxvl.data.readers.flickr30k_entities import load_examples
from jaxvl.data.readers.visual_genome import load_objects_vocab
from jaxvl.data.readers.volta_lmdb import ConceptualCaptionsLMDB, FeatureLMDB, read_caption_json
from jaxvl.data.synthetic import World
from jaxvl.data.synthetic.volta_files import export_world, world_from_source
from jaxvl.data.tokenizer import Tokenizer

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()

# Several objects per image and half the mentions of nothing in the image: notvisual phrases, two phrases a caption.
KNOBS = "num_images=12,val_images=4,vision_to_language=0.5,ambiguous_fraction=0.5"
FIELDS = ("features", "boxes", "cls_prob", "objects_id", "objects_conf")


def _world() -> tuple[World, int, int]:
    cfg, val = world_from_source(f"synthetic:{KNOBS}")
    return World(dataclasses.replace(cfg, num_images=cfg.num_images + val)), cfg.num_images, val


def _same_regions(got, want) -> None:
    assert (got.image_h, got.image_w, got.num_boxes) == (want.image_h, want.image_w, want.num_boxes)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg, val = world_from_source(KNOBS)
    return export_world(cfg, val, out)


@pytest.mark.parametrize("serializer", ["msgpack", "pickle"])
def test_cc_lmdbs_read_back(tmp_path, serializer):
    """Every (image, caption) pair of each split, in order, with the world's regions; the caption json beside."""
    world, n, val = _world()
    cfg, _ = world_from_source(KNOBS)
    done = export_world(cfg, val, tmp_path, serializer)
    for name, images in (("training_feat_all.lmdb", range(n)), ("validation_feat_all.lmdb", range(n, n + val))):
        with ConceptualCaptionsLMDB(Path(done.cc_dir) / name, feature_dim=None, num_classes=None) as reader:
            pairs = list(reader)
        want = [(world[i], c) for i in images for c in world[i].captions]
        assert len(pairs) == len(want)
        for pair, (image, caption) in zip(pairs, want, strict=True):
            assert (pair.regions.image_id, pair.caption) == (str(int(image.image_id)), caption)
            _same_regions(pair.regions, image.regions)
    captions = read_caption_json(Path(done.cc_dir) / "annotations" / "caption_valid.json")
    assert captions == {str(i): world[i].captions for i in range(n, n + val)}


def test_flickr30k_entities_and_features_read_back(exported):
    """The reader finds exactly the world's phrases (mentions of nothing are notvisual and dropped), boxes
    rounded to whole pixels; the per-image feature LMDB holds every image's regions."""
    world, n, val = _world()
    examples = load_examples(exported.flickr30k_entities, "val")
    want = [p for i in range(n, n + val) for p in world[i].phrases]
    assert len(examples) == len(want) == exported.val_phrases
    assert any(len(world[i].phrases) < sum(len(m) for m in world[i].mentions) for i in range(n, n + val))
    for got, p in zip(examples, want, strict=True):
        assert (got.image_id, got.sentence_index, got.sentence, got.phrase, got.first_word_index) == \
               (str(int(p.image_id)), p.sentence_index, p.sentence, p.phrase, p.first_word_index)
        assert got.phrase_type == "other"
        np.testing.assert_allclose(got.ref_boxes, p.ref_boxes, atol=0.51)
    assert len(load_examples(exported.flickr30k_entities, "train")) == sum(len(world[i].phrases) for i in range(n))
    features = FeatureLMDB(exported.features, feature_dim=None, num_classes=None)
    assert features.keys() == [str(i) for i in range(n + val)]
    for i in (0, n + val - 1):
        _same_regions(features[str(i)], world[i].regions)
    vocab = load_objects_vocab(exported.objects_vocab, world.cfg.num_classes)
    assert list(vocab.labels) == world.label_list()


def _stored(out: Path, name: str, split: str) -> list[dict]:
    (path,) = (out / name).glob("*/1.0.0")
    source, _ = open_split(path, split)
    return [source[i] for i in range(len(source))]


def test_prepared_exports_equal_the_embedded_world(exported, tmp_path, capsys):
    """``jaxvl prepare`` of the exported files (``volta-cc``, ``flickr30k-entities``) stores what ``jaxvl prepare
    --source synthetic`` stores for the same world: the same pairs and phrases with the same regions."""
    sources = exported.sources()
    for source in (sources["pretrain"], sources["ablation"], f"synthetic:{KNOBS}"):
        assert main(["prepare", "--source", source, "--out", str(tmp_path), "--quiet"]) == 0, capsys.readouterr().err
    for split in ("train", "val"):
        exported_pairs = {(str(as_str(e["image_id"])), as_str(e["caption"])): e
                          for e in _stored(tmp_path, "jaxvl_pretrain_pairs", split)}
        embedded = {(str(int(as_str(e["image_id"]))), as_str(e["caption"])): e
                    for e in _stored(tmp_path, "jaxvl_synthetic_pretrain", split)}
        assert sorted(exported_pairs) == sorted(embedded)
        for key, e in embedded.items():
            _same_regions(decode_regions(exported_pairs[key]), decode_regions(e))
    phrases = {}
    for name in ("jaxvl_ablation_phrases", "jaxvl_synthetic_ablation"):
        rows = [decode_ablation(e) for e in _stored(tmp_path, name, "val")]
        phrases[name] = {(str(int(ex.image_id)), ex.sentence_index, ex.first_word_index): (ex, regions)
                         for ex, regions in rows}
    assert sorted(phrases["jaxvl_ablation_phrases"]) == sorted(phrases["jaxvl_synthetic_ablation"])
    for key, (ex, regions) in phrases["jaxvl_synthetic_ablation"].items():
        got, got_regions = phrases["jaxvl_ablation_phrases"][key]
        assert (got.sentence, got.phrase) == (ex.sentence, ex.phrase)
        np.testing.assert_allclose(got.ref_boxes, ex.ref_boxes, atol=0.51)
        _same_regions(got_regions, regions)
    # the exported vocab.txt is the embedded dataset's word list: the same token ids
    (path,) = (tmp_path / "jaxvl_synthetic_pretrain").glob("*/1.0.0")
    embedded_tok = tokenizer_for(open_split(path, "train")[1])
    exported_tok = Tokenizer.from_vocab_file(exported.vocab)
    sentence = _world()[0][0].captions[0]
    assert exported_tok.vocab_size == embedded_tok.vocab_size
    np.testing.assert_array_equal(exported_tok.encode(sentence, 16)[0], embedded_tok.encode(sentence, 16)[0])


def test_world_export_command(tmp_path, capsys):
    """``jaxvl world export`` writes the files and ``planted.md``, prints the prepare sources; a second export into
    the same directory and a bad knob are one-line user errors."""
    out = tmp_path / "w"
    assert main(["world", "export", "--out", str(out), "--world", f"synthetic:{KNOBS}"]) == 0
    printed = capsys.readouterr().out
    assert f"volta-cc:{out}/conceptual_captions" in printed and "What the world plants" in printed
    assert (out / "planted.md").read_text().startswith("What the world plants (12 training images")
    assert main(["world", "export", "--out", str(out), "--world", f"synthetic:{KNOBS}"]) == 2
    assert "already holds an exported world" in capsys.readouterr().err
    assert main(["world", "export", "--out", str(tmp_path / "x"), "--world", "synthetic:nope=1"]) == 2
    assert "unknown synthetic knob 'nope'" in capsys.readouterr().err
