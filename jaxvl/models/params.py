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


def count_params(params: Params) -> int:
    """Number of scalars in a parameter tree (tied parameters are stored, and counted, once)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(params)))


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
