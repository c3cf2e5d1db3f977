"""Boundary checks on a model batch, run on the host before anything is compiled.

Every entry point calls ``validate_batch`` on its first batch (and readers on every record), so bad
input fails with the field's name instead of an XLA trace or silently wrong numbers.

Normalised locations: values up to ``LOCATION_TOLERANCE`` (0.05) outside [0, 1] are accepted and counted in
one warning per call. Detector boxes overshoot the image border by a pixel or two, so a box divided by the
image size reads e.g. 1.02, and VOLTA computes with such values as they are (its loaders do not clip);
the batch is not changed here, so a model given VOLTA's inputs computes what VOLTA computes. jaxvl's own
pipeline clips to [0, 1] when it normalises (``jaxvl.data.regions.normalised_locations``). A value further
out is not a rounding of the border but a box that is not normalised (pixels, or the wrong image size):
a ``BatchError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import NoReturn

import numpy as np

from jaxvl.models.volta.config import VLConfig

log = logging.getLogger(__name__)

REQUIRED = ("input_ids", "features", "locations")
LOCATION_TOLERANCE = 0.05
"""How far outside [0, 1] a normalised location may lie and still be accepted (with a warning): module doc."""


class BatchError(ValueError):
    """A batch does not fit the model config; the message names the field (and the source)."""


def validate_batch(batch: Mapping, cfg: VLConfig, source: str = "batch") -> None:
    """Checks shapes, ranges and finiteness of a V&L batch against ``cfg``; raises ``BatchError``.

    Expected: ``input_ids`` [B, Lt] ints in [0, vocab_size); ``features`` [B, Lv, v_feature_size]
    finite; ``locations`` [B, Lv, num_locs] in [0, 1] (within ``LOCATION_TOLERANCE``, with a warning: module
    doc) with x2 >= x1 and y2 >= y1; optional
    ``token_type_ids`` [B, Lt] in [0, type_vocab_size), ``text_mask`` [B, Lt], ``region_mask`` [B, Lv].
    """
    def fail(field: str, msg: str):
        raise BatchError(f"{source}: field '{field}' {msg}")

    for key in REQUIRED:
        if key not in batch:
            fail(key, "is missing")
    arrays = {k: np.asarray(v) for k, v in batch.items()}
    ids, feats, locs = arrays["input_ids"], arrays["features"], arrays["locations"]

    if ids.ndim != 2:
        fail("input_ids", f"must be [batch, text_len]; got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        fail("input_ids", f"must hold integers; got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
        bad = int(ids.max()) if ids.max() >= cfg.vocab_size else int(ids.min())
        fail("input_ids", f"holds token id {bad} outside [0, vocab_size={cfg.vocab_size})")
    batch_size, text_len = ids.shape

    if feats.ndim != 3 or feats.shape[0] != batch_size:
        fail("features", f"must be [batch={batch_size}, regions, {cfg.v_feature_size}]; got shape {feats.shape}")
    if feats.shape[-1] != cfg.v_feature_size:
        fail("features", f"has last dim {feats.shape[-1]}, but the model config expects v_feature_size="
                         f"{cfg.v_feature_size}")
    if not np.all(np.isfinite(feats)):
        rows = np.argwhere(~np.isfinite(feats))[0]
        fail("features", f"holds NaN or Inf (first at example {rows[0]}, region {rows[1]})")
    num_regions = feats.shape[1]

    if locs.shape != (batch_size, num_regions, cfg.num_locs):
        fail("locations", f"must be [{batch_size}, {num_regions}, num_locs={cfg.num_locs}]; got shape {locs.shape}")
    if not np.all(np.isfinite(locs)):
        fail("locations", "holds NaN or Inf")
    _check_location_range(locs, source, fail)
    if cfg.num_locs >= 4:
        flipped = (locs[..., 2] < locs[..., 0]) | (locs[..., 3] < locs[..., 1])
        if flipped.any():
            b, r = np.argwhere(flipped)[0]
            fail("locations", f"box at example {b}, region {r} has x2 < x1 or y2 < y1: {locs[b, r, :4].tolist()}")

    for key, shape in (("text_mask", (batch_size, text_len)), ("token_type_ids", (batch_size, text_len)),
                       ("region_mask", (batch_size, num_regions))):
        if key in arrays and arrays[key].shape != shape:
            fail(key, f"must have shape {shape} to match the other fields; got {arrays[key].shape}")
    for key in ("text_mask", "region_mask"):
        if key in arrays and not np.isin(arrays[key], (0, 1)).all():
            fail(key, "must hold only 0 and 1")
    if "token_type_ids" in arrays:
        types = arrays["token_type_ids"]
        if types.size and (types.min() < 0 or types.max() >= cfg.type_vocab_size):
            fail("token_type_ids", f"must lie in [0, type_vocab_size={cfg.type_vocab_size})")

    longest = text_len + (num_regions + 1 if cfg.image_embeddings == "vl-bert" else 0)
    if longest > cfg.max_position_embeddings:
        fail("input_ids", f"needs {longest} positions but max_position_embeddings={cfg.max_position_embeddings}")


def _check_location_range(locs: np.ndarray, source: str, fail: Callable[[str, str], NoReturn]) -> None:
    """Locations in [0, 1]; up to ``LOCATION_TOLERANCE`` outside: one warning counting them; further: ``fail``."""
    outside = (locs < 0) | (locs > 1)
    if not outside.any():
        return
    far = (locs < -LOCATION_TOLERANCE) | (locs > 1 + LOCATION_TOLERANCE)
    if far.any():
        b, r = np.argwhere(far)[0][:2]
        fail("locations", f"must be normalised to [0, 1] (within {LOCATION_TOLERANCE}); example {b}, region {r} "
                          f"holds {locs[b, r].tolist()}")
    worst = float(np.max(np.maximum(-locs, locs - 1)))
    log.warning("%s: field 'locations' holds %d value(s) outside [0, 1] by at most %.3g (within the tolerance %s); "
                "used as they are, as VOLTA does", source, int(outside.sum()), worst, LOCATION_TOLERANCE)
