"""Grain pipeline over a prepared synthetic world: fixed shapes, determinism, host sharding, resume, model fit."""

import logging

import grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvl.data.builders import synthetic_builders, synthetic_config
from jaxvl.data.grain import PretrainTransform, open_split, tokenizer_for
from jaxvl.models import get_config, get_model, validate_batch
from jaxvl.models.volta.presets import single_stream_plan
from jaxvl.pretrain.data import PipelineConfig, pretrain_dataset
from jaxvl.runtime.compile import FAST_COMPILE

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()
R, D, K, T = 10, 24, 20, 38
MODEL_KEYS = ("input_ids", "features", "locations", "token_type_ids", "text_mask", "region_mask")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny world (12 train images x 2 captions = 24 pairs, 4 val images), its train split and tokenizer."""
    out = str(tmp_path_factory.mktemp("data"))
    builders = synthetic_builders(synthetic_config(num_images=12, val_images=4), out)
    for b in builders:
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    source, info = open_split(builders[0].data_dir, "train")
    return source, tokenizer_for(info), out


def batches(source, tok, n, **kw):
    shard = kw.pop("shard", grain.sharding.NoSharding())
    it = iter(pretrain_dataset(source, tok, PipelineConfig(**kw), shard=shard))
    return [next(it) for _ in range(n)]


def rows(batch_list):
    """Each example of the batches as hashable bytes (text ids + features), for multiset comparisons."""
    return sorted(b["input_ids"][i].tobytes() + b["features"][i].tobytes() for b in batch_list
                  for i in range(len(b["input_ids"])))


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_fixed_shapes_and_fields(prepared):
    source, tok, _ = prepared
    shapes = {"input_ids": (4, T), "text_mask": (4, T), "token_type_ids": (4, T), "features": (4, R + 1, D),
              "locations": (4, R + 1, 5), "region_mask": (4, R + 1), "boxes": (4, R + 1, 4),
              "region_target_mask": (4, R + 1), "num_boxes": (4,), "cls_prob": (4, R + 1, K + 1),
              "objects_id": (4, R + 1), "objects_conf": (4, R + 1)}
    for b in batches(source, tok, 8, batch_size=4):  # 8 batches of 4 > 24 pairs: crosses an epoch
        assert {k: v.shape for k, v in b.items()} == shapes
        assert b["input_ids"].dtype == np.int32 and b["features"].dtype == np.float32
        assert (b["input_ids"][:, 0] == tok.cls_id).all()
        assert ((b["input_ids"] == tok.pad_id) == (b["text_mask"] == 0)).all()
        # [IMG] first: whole-image location, mask 1, no detector target, no class.
        np.testing.assert_array_equal(b["locations"][:, 0], np.tile([0, 0, 1, 1, 1], (4, 1)))
        assert (b["region_mask"] == 1).all() and (b["region_target_mask"][:, 0] == 0).all()
        assert (b["region_target_mask"][:, 1:] == 1).all() and (b["num_boxes"] == R).all()
        assert (b["objects_id"][:, 0] == -1).all() and not b["cls_prob"][:, 0].any()
        np.testing.assert_allclose(b["features"][:, 0], b["features"][:, 1:].mean(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(b["objects_id"][:, 1:], b["cls_prob"][:, 1:, 1:].argmax(-1))


def test_transform_pads_truncates_and_places_the_global_row_last(prepared):
    source, tok, _ = prepared
    ex = source[0]
    last = PretrainTransform(tok, max_seq_length=8, num_regions=12, add_global_imgfeat="last").map(ex)
    assert last["features"].shape == (13, D) and last["input_ids"].shape == (8,)
    assert list(last["region_mask"]) == [1] * R + [0, 0, 1] and list(last["region_target_mask"]) == [1] * R + [0] * 3
    assert list(last["objects_id"][R:]) == [-1, -1, -1]
    none = PretrainTransform(tok, num_regions=4, add_global_imgfeat=None).map(ex)
    assert none["features"].shape == (4, D) and none["num_boxes"] == 4
    np.testing.assert_array_equal(none["cls_prob"], ex["cls_prob"][:4])


def test_deterministic_by_seed_and_epoch_complete(prepared):
    source, tok, _ = prepared
    a, b = batches(source, tok, 5, batch_size=4, seed=7), batches(source, tok, 5, batch_size=4, seed=7, num_threads=0)
    assert_same(a, b)  # threads do not change the order
    c = batches(source, tok, 5, batch_size=4, seed=8)
    assert not all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c, strict=True))
    # One epoch = every pair once; epoch 2 is a different order of the same pairs.
    epoch = list(pretrain_dataset(source, tok, PipelineConfig(batch_size=4, num_epochs=2, seed=7),
                                  shard=grain.sharding.NoSharding()))
    assert len(epoch) == 12
    unshuffled = list(pretrain_dataset(source, tok, PipelineConfig(batch_size=4, num_epochs=1, shuffle=False),
                                       shard=grain.sharding.NoSharding()))
    assert rows(epoch[:6]) == rows(epoch[6:]) == rows(unshuffled)
    assert not all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(epoch[:6], epoch[6:], strict=True))


def test_hosts_get_disjoint_equal_shares(prepared):
    source, tok, _ = prepared
    cfg = PipelineConfig(batch_size=8, num_epochs=1, seed=3)  # 4 rows per host and step, 3 steps
    hosts = [list(pretrain_dataset(source, tok, cfg, shard=grain.sharding.ShardOptions(p, 2))) for p in range(2)]
    assert [len(h) for h in hosts] == [3, 3] and all(b["input_ids"].shape[0] == 4 for h in hosts for b in h)
    whole = list(pretrain_dataset(source, tok, PipelineConfig(batch_size=8, num_epochs=1, shuffle=False),
                                  shard=grain.sharding.NoSharding()))
    assert rows(hosts[0] + hosts[1]) == rows(whole)  # together exactly one epoch, no row twice
    assert not set(rows(hosts[0])) & set(rows(hosts[1]))
    # Global batch k = host 0's k-th batch then host 1's = rows [8k, 8k + 8) of the one-host stream.
    one_host = list(pretrain_dataset(source, tok, cfg, shard=grain.sharding.NoSharding()))
    for k, batch in enumerate(one_host):
        np.testing.assert_array_equal(batch["input_ids"], np.concatenate([hosts[0][k]["input_ids"],
                                                                          hosts[1][k]["input_ids"]]))
    with pytest.raises(ValueError, match="not divisible"):
        pretrain_dataset(source, tok, PipelineConfig(batch_size=5), shard=grain.sharding.ShardOptions(0, 2))


def test_restored_iterator_continues_exactly(prepared):
    source, tok, _ = prepared
    cfg = PipelineConfig(batch_size=4, seed=11)
    ds = pretrain_dataset(source, tok, cfg, shard=grain.sharding.NoSharding())
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses the epoch boundary (6 batches per epoch)
    restored = iter(pretrain_dataset(source, tok, cfg, shard=grain.sharding.NoSharding()))
    restored.set_state(state)
    assert_same([next(restored) for _ in range(4)], expected)
    fresh = next(iter(pretrain_dataset(source, tok, cfg, shard=grain.sharding.NoSharding())))
    assert not np.array_equal(fresh["input_ids"], expected[0]["input_ids"])  # the state did move it on


def test_first_batch_fits_a_tiny_model_and_compiles_once(prepared):
    source, tok, _ = prepared
    b1, b2 = batches(source, tok, 2, batch_size=4, seed=0)
    one_layer = single_stream_plan(1).to_dict()  # the batch's fit does not depend on depth
    cfg = get_config("uniter", tiny=True, v_feature_size=D, vocab_size=tok.vocab_size, **one_layer)
    validate_batch(b1, cfg, source="synthetic train")
    validate_batch(b2, cfg, source="synthetic train")
    model = get_model("uniter", tiny=True, v_feature_size=D, vocab_size=tok.vocab_size, **one_layer)
    inputs = [{k: b[k] for k in MODEL_KEYS} for b in (b1, b2)]
    params = jax.jit(lambda x: model.init(jax.random.key(0), **x), compiler_options=FAST_COMPILE)(inputs[0])
    forward = jax.jit(lambda p, x: model.apply(p, **x).mlm_logits, compiler_options=FAST_COMPILE)
    outs = [forward(params, x) for x in inputs]
    assert forward._cache_size() == 1
    assert outs[1].shape == (4, T, tok.vocab_size) and bool(np.isfinite(np.asarray(outs[1])).all())


def test_open_split_by_name_and_errors(prepared):
    _, _, out = prepared
    source, info = open_split("jaxvl_synthetic_pretrain/num_images-12+val_images-4", "val", data_dir=out)
    assert len(source) == 8 and info.metadata["split_ranges"]["val"] == [12, 16]
    with pytest.raises(ValueError, match="no split 'test'"):
        open_split("jaxvl_synthetic_pretrain/num_images-12+val_images-4", "test", data_dir=out)


def test_compile_batch_spec_is_the_pipelines_batch(prepared):
    """``jaxvl compile`` lowers the step on ``aot.targets.pretrain_batch_spec``: the same fields, dtypes and
    shapes as the pipeline's batch (without ``num_boxes``, which the trainer drops)."""
    from jaxvl.aot.targets import pretrain_batch_spec
    from jaxvl.models.volta.config import VLConfig

    source, tok, _ = prepared
    batch = batches(source, tok, 1, batch_size=4)[0]
    spec = pretrain_batch_spec(VLConfig(v_feature_size=D, num_object_classes=K), 4, T, R + 1)
    assert set(spec) == set(batch) - {"num_boxes"}
    for key, s in spec.items():
        assert (s.shape, s.dtype) == (batch[key].shape, batch[key].dtype), key


def test_preparing_prints_no_tfds_download_banner(tmp_path, capfd):
    """TFDS's bold "Downloading and preparing dataset Unknown size ..." is not printed for a world that downloads
    nothing (jaxvl's builders log one plain line instead)."""
    builders = synthetic_builders(synthetic_config(num_images=4, val_images=2), str(tmp_path))
    builders[0].download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    out, err = capfd.readouterr()
    assert "Downloading and preparing" not in out + err and "Subsequent calls will reuse" not in out + err
