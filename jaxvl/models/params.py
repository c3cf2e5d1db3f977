"""Parameter-tree utilities: counting, and converting between unscanned and scanned layouts.

Unscanned encoders name sub-layers ``layer_{n}``; scanned ones group them as
``segment_{k}/sub_{j}`` with a leading axis of length ``repeats`` (see ``find_segments``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import linen as nn

from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.plan import find_segments

Params = dict[str, Any]


def count_params(params: Params, cfg: VLConfig | None = None) -> int:
    """Number of scalars in a parameter tree (tied parameters are stored, and counted, once).

    With ``cfg``, the padding of ``cfg.pad_to_multiple_of`` is left out (the word table's and MLM bias's rows
    past ``vocab_size``, the class decoders' columns past their true widths; see ``padding_axis``), so a
    padded model counts as its unpadded self, e.g. VOLTA's numbers. Leaves may carry leading axes (scanned
    layers, sweep members); trees without padding count the same with or without ``cfg``.
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))
    total = 0
    for path, x in leaves:
        shape = list(x.shape)
        padded = None if cfg is None else padding_axis(tuple(str(getattr(k, "key", k)) for k in path), cfg)
        if padded is not None and len(shape) >= -padded[0] and shape[padded[0]] == padded[2]:
            shape[padded[0]] = padded[1]
        total += int(np.prod(shape))
    return total


def padding_axis(path: tuple[str, ...], cfg: VLConfig) -> tuple[int, int, int] | None:
    """``(axis, true size, padded size)`` of the padded dim of the ``VLBertForPreTraining`` parameter at
    ``path`` (names from the root or any prefix of it), or None when it has none under ``cfg``.

    Padded: ``.../word_embeddings/embedding`` [.., padded_vocab_size, hidden] (axis -2), ``mlm/bias``
    [.., padded_vocab_size] and ``decoder_{key}/kernel`` / ``bias`` [.., padded_visual_targets[key]] of the
    class targets (axis -1).
    """
    if path[-2:] == ("word_embeddings", "embedding"):
        found = (-2, cfg.vocab_size, cfg.padded_vocab_size)
    elif path[-2:] == ("mlm", "bias"):
        found = (-1, cfg.vocab_size, cfg.padded_vocab_size)
    elif len(path) >= 2 and path[-2].startswith("decoder_") and path[-1] in ("kernel", "bias") \
            and path[-2].removeprefix("decoder_") in cfg.visual_targets:
        key = path[-2].removeprefix("decoder_")
        found = (-1, cfg.visual_targets[key], cfg.padded_visual_targets[key])
    else:
        return None
    return None if found[1] == found[2] else found


def _encoder_path(params: Params) -> list[str]:
    """Path to the dict holding ``layer_*`` / ``segment_*`` entries."""
    for path in (["bert", "encoder"], ["encoder"], []):
        node = params
        try:
            for key in path:
                node = node[key]
        except (KeyError, TypeError):
            continue
        if any(k.startswith(("layer_", "segment_")) for k in node):
            return path
    raise KeyError("no encoder (layer_* or segment_* entries) found in the parameter tree")


def _replace_encoder(params: Params, path: list[str], new: Params) -> Params:
    if not path:
        return new
    return {**params, path[0]: _replace_encoder(params[path[0]], path[1:], new)}


def scan_params(params: Params, cfg: VLConfig) -> Params:
    """Unscanned (``layer_{n}``) parameters -> the layout of ``cfg.replace(scan_layers=True)``."""
    params = nn.meta.unbox(params)
    path = _encoder_path(params)
    enc = dict(params)
    for key in path:
        enc = enc[key]
    out = {k: v for k, v in enc.items() if not k.startswith("layer_")}
    for k, seg in enumerate(find_segments(cfg.sublayers)):
        block = {}
        for j in range(len(seg.sublayers)):
            layers = [enc[f"layer_{seg.start + r * len(seg.sublayers) + j}"] for r in range(seg.repeats)]
            block[f"sub_{j}"] = jax.tree.map(lambda *xs: np.stack(xs), *layers) if seg.repeats > 1 else layers[0]
        out[f"segment_{k}"] = block
    return _replace_encoder(params, path, out)


def unscan_params(params: Params, cfg: VLConfig) -> Params:
    """Inverse of ``scan_params``."""
    params = nn.meta.unbox(params)
    path = _encoder_path(params)
    enc = params
    for key in path:
        enc = enc[key]
    out = {k: v for k, v in enc.items() if not k.startswith("segment_")}
    for k, seg in enumerate(find_segments(cfg.sublayers)):
        for j in range(len(seg.sublayers)):
            sub = enc[f"segment_{k}"][f"sub_{j}"]
            for r in range(seg.repeats):
                n = seg.start + r * len(seg.sublayers) + j
                out[f"layer_{n}"] = jax.tree.map(lambda x, r=r: x[r], sub) if seg.repeats > 1 else sub
    return _replace_encoder(params, path, out)
