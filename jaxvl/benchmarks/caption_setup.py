"""What the decoding and training halves of ``jaxvl bench caption`` share: the captioner at each size, its
random init, random inputs of ORT's shapes, the per-size defaults and the timing summaries.

Sizes: ``tiny`` (``CaptionerConfig.tiny()``) and ``ort`` (ORT's d_model 512, 6 + 6 layers, 8 heads, d_ff
2048, vocabulary 9488: the ``CaptionerConfig`` defaults). Inputs: 36 regions per image (ORT's fixed boxes),
captions of at most 16 tokens (ORT's ``max_length``), 5 per image (ORT's ``seq_per_img``).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from jaxvl.benchmarks.common import aot_compile
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig
from jaxvl.runtime.compile import FAST_COMPILE

SIZES = ("tiny", "ort")
REGIONS = 36  # ORT's fixed 36 boxes per image
MAX_LEN = 16  # ORT's max_length
CAPTIONS = 5  # ORT's seq_per_img
IMAGE_HW = (480, 640)  # pixel (height, width) of the random training images

Arrays = dict[str, Any]


# ------------------------------------------------------------------------------------ model and inputs


def model_config(size: str, dtype: str) -> CaptionerConfig:
    """``CaptionerConfig.tiny()`` or ORT's sizes (the ``CaptionerConfig`` defaults) in ``dtype``."""
    return CaptionerConfig.tiny(dtype=dtype) if size == "tiny" else CaptionerConfig(dtype=dtype)


def config_summary(cfg: CaptionerConfig) -> dict[str, Any]:
    """The sizes of ``cfg`` that the result records (vocabulary, widths, layers, dtype)."""
    return {k: getattr(cfg, k) for k in ("vocab_size", "feature_size", "d_model", "num_heads", "d_ff",
                                         "num_encoder_layers", "num_decoder_layers", "dtype")}


def init_params(model: Captioner, regions: int, seed: int, compiler_options: dict[str, Any] | None = None) -> Any:
    """ORT's random init (xavier-uniform) of ``model``'s parameters, made by one jitted init (once per size:
    decoding and both training states start from it)."""
    dummy = model.dummy_inputs(1, regions, 2)
    init = jax.jit(lambda key: model.init(key, **dummy)["params"], compiler_options=compiler_options)
    return nn.meta.unbox(init(jax.random.key(seed)))


def random_regions(cfg: CaptionerConfig, batch: int, regions: int, seed: int) -> dict[str, np.ndarray]:
    """``features`` [B, R, F] N(0, 1), relative boxes [B, R, 4] (x_min, y_min, x_max, y_max) inside the image,
    ``mask`` [B, R] all ones (ORT's fixed boxes)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.0, 0.7, (batch, regions, 2))
    boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(0.05, 0.3, (batch, regions, 2)), 1.0)], -1)
    return {"features": rng.standard_normal((batch, regions, cfg.feature_size), np.float32),
            "boxes": boxes.astype(np.float32), "mask": np.ones((batch, regions), np.int32)}


def random_captions(cfg: CaptionerConfig, images: int, captions: int, max_len: int,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """ORT-layout caption rows: ``captions`` [B, C, max_len + 2] (``[0, w_1 .. w_L, 0 ...]``, words drawn from
    ``[1, vocab - 1)``, UNK excluded), ``caption_lengths`` [B, C] (L from ``max_len // 2`` to ``max_len``),
    ``caption_mask`` [B, C] all ones."""
    lengths = rng.integers(max(1, max_len // 2), max_len + 1, (images, captions)).astype(np.int32)
    rows = np.zeros((images, captions, max_len + 2), np.int32)
    words = rng.integers(1, max(2, cfg.vocab_size - 1), (images, captions, max_len))
    positions = np.arange(max_len)
    rows[..., 1:max_len + 1] = np.where(positions < lengths[..., None], words, 0)
    return {"captions": rows, "caption_lengths": lengths, "caption_mask": np.ones((images, captions), np.int32)}


def random_train_batch(cfg: CaptionerConfig, images: int, captions: int, regions: int, max_len: int,
                       seed: int) -> dict[str, np.ndarray]:
    """A ``jaxvl.caption.data`` batch (the trainer's device fields): ``features`` [B, R, F], pixel ``boxes``
    [B, R, 4] in a 640 x 480 image, ``region_mask`` [B, R], ``image_size`` [B, 2] and ``random_captions``."""
    x = random_regions(cfg, images, regions, seed)
    h, w = IMAGE_HW
    return {"features": x["features"], "boxes": (x["boxes"] * np.array([w, h, w, h], np.float32)),
            "region_mask": x["mask"], "image_size": np.tile(np.array([[h, w]], np.int32), (images, 1)),
            **random_captions(cfg, images, captions, max_len, np.random.default_rng(seed + 1))}


# ------------------------------------------------------------------------------------------ settings


def defaults(size: str, accelerator: bool, args: argparse.Namespace) -> dict[str, int]:
    """``batch``, ``loop_images``, ``warmup`` and ``iters`` for ``size``: explicit options win."""
    slow = size == "ort" and not accelerator
    batch = args.batch or (32 if size == "tiny" else 64 if accelerator else 8)
    loop = args.loop_images or (batch if size == "tiny" else 16 if accelerator else 4)
    return {"batch": batch, "loop_images": min(loop, batch),
            "warmup": args.warmup if args.warmup is not None else (1 if slow else 2),
            "iters": args.iters or (5 if slow else 10)}


def compiler_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``FAST_COMPILE`` under ``--fast-compile`` (smoke runs), else XLA's defaults."""
    return FAST_COMPILE if args.fast_compile else None


# ------------------------------------------------------------------------------------------ timing


def aot(fn: Callable, *args: Any, **jit_kwargs: Any) -> tuple[Any, float]:
    """(compiled, lower + compile seconds) of AOT ``jax.jit(fn, **jit_kwargs).lower(*args).compile()``."""
    compiled, lower_s, compile_s = aot_compile(jax.jit(fn, **jit_kwargs), *args)
    return compiled, lower_s + compile_s


def timing(times: Sequence[float], units: int) -> dict[str, Any]:
    """``ms_per_call`` (the median), ``runs_ms`` (every call) and ``per_s``: ``units`` (captions or steps) per
    second at the median."""
    median = statistics.median(times)
    return {"ms_per_call": 1e3 * median, "runs_ms": [round(1e3 * t, 3) for t in times], "per_s": units / median}
