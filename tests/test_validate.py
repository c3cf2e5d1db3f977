"""validate_batch: every kind of bad input is refused with the field's name, before any compilation."""

import numpy as np
import pytest

from jaxvl.models import BatchError, get_config, validate_batch


@pytest.fixture
def cfg():
    return get_config("uniter", tiny=True)


def good_batch(cfg, batch=2, text_len=6, regions=4):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 0.5, (batch, regions, 2))
    wh = rng.uniform(0.1, 0.4, (batch, regions, 2))
    return dict(input_ids=rng.integers(0, cfg.vocab_size, (batch, text_len)),
                features=rng.normal(size=(batch, regions, cfg.v_feature_size)).astype(np.float32),
                locations=np.concatenate([xy, xy + wh, wh[..., :1] * wh[..., 1:]], -1),
                text_mask=np.ones((batch, text_len), np.int32), region_mask=np.ones((batch, regions), np.int32),
                token_type_ids=np.zeros((batch, text_len), np.int32))


def test_good_batch_passes(cfg):
    validate_batch(good_batch(cfg), cfg)


def mutate(cfg, key, fn):
    batch = good_batch(cfg)
    batch[key] = fn(batch[key])
    return batch


@pytest.mark.parametrize("key, fn, message", [
    ("features", lambda f: f[..., :-1], "'features' has last dim 23, but the model config expects v_feature_size=24"),
    ("features", lambda f: np.where(np.arange(f.shape[-1]) == 3, np.nan, f), "'features' holds NaN or Inf"),
    ("features", lambda f: np.where(np.arange(f.shape[-1]) == 3, np.inf, f), "'features' holds NaN or Inf"),
    ("locations", lambda b: b * 3, "'locations' must be normalised to \\[0, 1\\]"),
    ("locations", lambda b: b - 1, "'locations' must be normalised"),
    ("locations", lambda b: b[..., [2, 1, 0, 3, 4]], "'locations' box at example 0, region 0 has x2 < x1"),
    ("locations", lambda b: b[..., :4], "'locations' must be \\[2, 4, num_locs=5\\]"),
    ("input_ids", lambda i: i + 99, "'input_ids' holds token id .* outside \\[0, vocab_size=99\\)"),
    ("input_ids", lambda i: i - 100, "'input_ids' holds token id -"),
    ("input_ids", lambda i: i.astype(np.float32), "'input_ids' must hold integers"),
    ("text_mask", lambda m: m[:, :-1], "'text_mask' must have shape \\(2, 6\\)"),
    ("region_mask", lambda m: m[:1], "'region_mask' must have shape \\(2, 4\\)"),
    ("region_mask", lambda m: m * 2, "'region_mask' must hold only 0 and 1"),
    ("token_type_ids", lambda t: t + 2, "'token_type_ids' must lie in \\[0, type_vocab_size=2\\)"),
])
def test_bad_fields_are_named(cfg, key, fn, message):
    with pytest.raises(BatchError, match=message):
        validate_batch(mutate(cfg, key, fn), cfg, source="val.arrayrecord")


def test_source_is_in_the_message(cfg):
    batch = good_batch(cfg)
    del batch["features"]
    with pytest.raises(BatchError, match="^val.arrayrecord: field 'features' is missing"):
        validate_batch(batch, cfg, source="val.arrayrecord")


def test_too_long_for_position_table(cfg):
    batch = good_batch(cfg, text_len=cfg.max_position_embeddings + 1)
    with pytest.raises(BatchError, match="max_position_embeddings=64"):
        validate_batch(batch, cfg)


@pytest.mark.parametrize("over", [0.02, 0.05])
def test_locations_just_outside_the_unit_box_are_accepted_with_one_warning(cfg, caplog, over):
    """A box that overshoots the image border (VOLTA's loaders do not clip: 1.02 happens) is used as it is, and
    every such value is counted in one warning; the batch itself is not changed."""
    batch = good_batch(cfg)
    batch["locations"][0, 1, 2] = 1 + over
    batch["locations"][1, 3, 0] = -over / 2
    before = batch["locations"].copy()
    with caplog.at_level("WARNING", logger="jaxvl.models.validate"):
        validate_batch(batch, cfg, source="f30k")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("f30k: field 'locations' holds 2 value(s) outside [0, 1]")
    np.testing.assert_array_equal(batch["locations"], before)


@pytest.mark.parametrize("value", [1.06, -0.06])
def test_locations_beyond_the_tolerance_are_refused(cfg, caplog, value):
    batch = good_batch(cfg)
    batch["locations"][1, 2, 1] = value
    with pytest.raises(BatchError, match=r"'locations' must be normalised to \[0, 1\] \(within 0.05\); example 1, "
                                         r"region 2"):
        validate_batch(batch, cfg)
    assert not caplog.records
