"""``jaxvl bench caption``: decoding and training speed of the geometry-aware captioner (ORT).

For each size (``tiny``: ``CaptionerConfig.tiny()``; ``ort``: ORT's d_model 512, 6 + 6 layers, 8 heads,
d_ff 2048, vocabulary 9488), random weights, on 36 regions x the feature size with random relative boxes,
captions of at most ``--max-len`` (ORT's 16) tokens, on one device:

- **decoding**, greedy and beam search (``--beam``, default 5), in captions per second (one caption
  per image: the best beam), three ways in the same run:

  - ``batched``: jaxvl's fixed-shape decoding (``jaxvl.caption.decoding.greedy`` / ``beam_search``) of a batch
    of B images, one compiled program per batch;
  - ``per-image``: the same functions at batch 1 in a Python loop over images (the way ORT decodes
    with beam search: ``_sample_beam`` loops over the images), one compiled program called per image,
    each image encoded on its own. The loop waits for each image's result before the next call, as
    ORT's loop does: otherwise the CPU client runs the independent calls side by side on its cores;
  - ``ort-style``: no key/value cache. The teacher-forced decoder re-runs over the whole prefix at
    every step, cross-attention keys and values of the memory included, and only the last position
    goes through the generator: ORT's ``get_logprobs_state``. Each prefix length is its own compiled
    program. Greedy is batched over the images, as ORT's ``_sample``. Beam search encodes the batch
    once, then loops over the images, as ORT's ``_sample_beam``, with the beam bookkeeping in numpy on
    the host. The bookkeeping is jaxvl's algorithm, so the captions must come out the same.

  Every timed call ends with the best captions on the host. The three ways are timed interleaved (one
  call of each per round), so a change in the machine's load hits them alike. Each non-batched row
  records the ratio batched captions/s / its own, and the share of its images whose best caption equals
  the batched one (a check that the baselines decode the same thing). Compile time (AOT ``lower`` +
  ``compile``, the persistent cache off; for ``ort-style`` the encoder and every prefix length) is
  reported apart from run time.
- **training**, steps per second of the trainer's steps (``jaxvl.caption.trainer``) on a random
  caption batch with ORT's optimisers (dropout on):

  - ``xe``: ``xe_step`` (images encoded once, broadcast to their captions; Noam Adam, clamp 0.1), jitted
    with the state donated; ORT's batch 15 images x 5 captions;
  - ``scst``: the three parts of ``_scst_step_fn``, timed one by one: the jitted ``sample_and_greedy``
    sampler (5 samples per image and the greedy baseline), the host reward (``device_get`` of the
    samples and the batch's captions, ``token_strings`` / ``reference_strings``, CIDEr-D with document
    frequencies of a random reference corpus of ``--df-images`` images), and the jitted, donated
    ``scst_update``; ORT's batch 10 images x 5 captions. The host reward's share of the step is reported.
    Each part ends with ``block_until_ready``. The trainer does not block after the update, but the next
    step's sampler waits for its parameters, so only host work (the data pipeline) would overlap it.

The weights are ORT's random init (xavier-uniform), drawn once per size. Decoding uses them, and both
training states start from copies at update 0.

Timings are the median of N timed calls after warm-up calls, each ended by ``block_until_ready`` or a
host copy of its result. Each row
records the 1-minute load average at its start and end and the cores other processes kept busy
(``jaxvl.benchmarks.data.Probe``). ``add_arguments`` and ``run`` are the CLI hooks;
``scripts/bench_caption.py`` wraps them.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxvl.benchmarks.common import csv_choices, save_json
from jaxvl.benchmarks.data import Probe
from jaxvl.benchmarks.models import (
    _jax_device,
    _log,
    _no_persistent_compile_cache,
    format_machine,
    machine_info,
    time_calls,
)
from jaxvl.caption.decoding import EOS, beam_search, greedy, sample_and_greedy
from jaxvl.caption.optimizers import scst_optimizer, xe_optimizer
from jaxvl.metrics import CiderD
from jaxvl.models.ort.captioner import NEG_INF, Captioner, CaptionerConfig
from jaxvl.models.ort.geometry import relative_boxes
from jaxvl.models.params import count_params
from jaxvl.runtime.compile import FAST_COMPILE, jit_step, memory_stats
from jaxvl.runtime.sharding import batch_sharding, make_mesh, param_shardings
from jaxvl.runtime.state import TrainState

SIZES = ("tiny", "ort")
PARTS = ("decode", "train")
METHODS = ("greedy", "beam")
MODES = ("batched", "per-image", "ort-style")
REGIONS = 36  # ORT's fixed 36 boxes per image
MAX_LEN = 16  # ORT's max_length
CAPTIONS = 5  # ORT's seq_per_img
IMAGE_HW = (480, 640)  # pixel (height, width) of the random training images
NOAM_WARMUP = 10000
SCST_LR, SCST_DECAY_EVERY, SCST_DECAY_RATE, SCST_STEPS_PER_EPOCH = 5e-4, 3, 0.8, 11_329  # 113,287 images / 10

Arrays = dict[str, Any]


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench caption`` options to ``parser``."""
    parser.add_argument("--sizes", type=csv_choices(SIZES), default=list(SIZES), metavar="SIZE[,SIZE]",
                        help="tiny (CaptionerConfig.tiny()) and/or ort (ORT's sizes); default tiny,ort")
    parser.add_argument("--parts", type=csv_choices(PARTS), default=list(PARTS), metavar="PART[,PART]",
                        help="decode and/or train (default both)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per decoding batch (default: 32 for tiny; for ort 8 on CPU, 64 on an accelerator)")
    parser.add_argument("--loop-images", type=int, default=None,
                        help="images through each per-image / ort-style loop (default: the batch for tiny; for ort "
                             "4 on CPU, 16 on an accelerator; at most the batch)")
    parser.add_argument("--beam", type=int, default=5, help="beam size (default 5, ORT's SCST evaluation)")
    parser.add_argument("--max-len", type=int, default=MAX_LEN, help="caption length limit (default ORT's 16)")
    parser.add_argument("--regions", type=int, default=REGIONS, help="regions per image (default ORT's 36)")
    parser.add_argument("--xe-batch", type=int, default=15, help="images per XE step (default ORT's 15)")
    parser.add_argument("--scst-batch", type=int, default=10, help="images per SCST step (default ORT's 10)")
    parser.add_argument("--captions", type=int, default=CAPTIONS, help="captions (samples) per image (default 5)")
    parser.add_argument("--df-images", type=int, default=1000,
                        help="images of the random reference corpus behind the CIDEr-D document frequencies")
    parser.add_argument("--no-ort-style", action="store_true", help="skip the no-cache ORT-style decoding rows")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="matmul dtype of the model (parameters and optimizer state stay float32)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls first (default: 2; 1 for ort on CPU)")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed calls, median reported (default: 10; 5 for ort on CPU)")
    parser.add_argument("--fast-compile", action="store_true",
                        help="compile with jaxvl.runtime.compile.FAST_COMPILE (faster CPU compiles, slower programs: smoke "
                             "runs only, not for the numbers)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: jax.devices()[0]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    parser.add_argument("--out", default=None, help="write machine info and results as JSON to this path")


def _check_args(args: argparse.Namespace) -> None:
    """Out-of-range options, named, before anything compiles."""
    for flag in ("batch", "loop_images", "iters"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"jaxvl bench caption: --{flag.replace('_', '-')}={value} must be >= 1")
    for flag in ("beam", "max_len", "regions", "xe_batch", "scst_batch", "captions", "df_images"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"jaxvl bench caption: --{flag.replace('_', '-')}={getattr(args, flag)} must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        raise SystemExit(f"jaxvl bench caption: --warmup={args.warmup} must be >= 0")
    if "tiny" in args.sizes and args.max_len > CaptionerConfig.tiny().max_len:
        raise SystemExit(f"jaxvl bench caption: --max-len={args.max_len} exceeds the tiny model's position table "
                         f"({CaptionerConfig.tiny().max_len})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by ``args`` (see ``add_arguments``); returns machine, models, decode and
    train rows (also written to ``--out`` after every row), and prints the markdown tables."""
    _check_args(args)
    device = _jax_device(args.device)
    machine = machine_info(device)
    print(format_machine(machine), flush=True)
    options = {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | list | type(None))}
    result: dict[str, Any] = {"command": " ".join(sys.argv), "options": options, "machine": machine, "models": {},
                              "decode": [], "train": []}
    with _no_persistent_compile_cache(), jax.default_device(device):
        for size in args.sizes:
            model = Captioner(model_config(size, args.dtype))
            start = time.perf_counter()
            params = jax.block_until_ready(init_params(model, args.regions, args.seed, _options(args)))
            result["models"][size] = {"config": _config_summary(model.cfg), "params": count_params(params),
                                      "init_s": time.perf_counter() - start}
            if "decode" in args.parts:
                bench_decoding(size, model, params, args, device, result, lambda: save_json(result, args.out))
                gc.collect()
            if "train" in args.parts:
                bench_training(size, model, params, args, device, result, lambda: save_json(result, args.out))
                gc.collect()
            del params
    save_json(result, args.out)
    if args.out:
        _log(f"wrote {args.out}")
    print(format_markdown(result), flush=True)
    return result


# ------------------------------------------------------------------------------------ model and inputs


def model_config(size: str, dtype: str) -> CaptionerConfig:
    """``CaptionerConfig.tiny()`` or ORT's sizes (the ``CaptionerConfig`` defaults) in ``dtype``."""
    return CaptionerConfig.tiny(dtype=dtype) if size == "tiny" else CaptionerConfig(dtype=dtype)


def _config_summary(cfg: CaptionerConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ("vocab_size", "feature_size", "d_model", "num_heads", "d_ff",
                                         "num_encoder_layers", "num_decoder_layers", "dtype")}


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
    """A ``jaxvl.caption.data`` batch (the trainer's device fields): pixel boxes in a 640 x 480 image."""
    x = random_regions(cfg, images, regions, seed)
    h, w = IMAGE_HW
    return {"features": x["features"], "boxes": (x["boxes"] * np.array([w, h, w, h], np.float32)),
            "region_mask": x["mask"], "image_size": np.tile(np.array([[h, w]], np.int32), (images, 1)),
            **random_captions(cfg, images, captions, max_len, np.random.default_rng(seed + 1))}


def init_params(model: Captioner, regions: int, seed: int, compiler_options: dict[str, Any] | None = None) -> Any:
    """ORT's random init (xavier-uniform) of ``model``'s parameters, made by one jitted init (once per size:
    decoding and both training states start from it)."""
    dummy = model.dummy_inputs(1, regions, 2)
    init = jax.jit(lambda key: model.init(key, **dummy)["params"], compiler_options=compiler_options)
    return nn.meta.unbox(init(jax.random.key(seed)))


# ------------------------------------------------------------------------------------------ helpers


def _defaults(size: str, accelerator: bool, args: argparse.Namespace) -> dict[str, int]:
    """Batch, loop images, warm-up and timed calls for ``size``: explicit options win."""
    slow = size == "ort" and not accelerator
    batch = args.batch or (32 if size == "tiny" else 64 if accelerator else 8)
    loop = args.loop_images or (batch if size == "tiny" else 16 if accelerator else 4)
    return {"batch": batch, "loop_images": min(loop, batch),
            "warmup": args.warmup if args.warmup is not None else (1 if slow else 2),
            "iters": args.iters or (5 if slow else 10)}


def _options(args: argparse.Namespace) -> dict[str, Any] | None:
    return FAST_COMPILE if args.fast_compile else None


def aot(fn: Callable, *args: Any, **jit_kwargs: Any) -> tuple[Any, float]:
    """(compiled, seconds) of AOT ``jax.jit(fn, **jit_kwargs).lower(*args).compile()``."""
    start = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _timing(times: Sequence[float], units: int) -> dict[str, Any]:
    """Median call time, every call, and ``units`` (captions or steps) per second at the median."""
    median = statistics.median(times)
    return {"ms_per_call": 1e3 * median, "runs_ms": [round(1e3 * t, 3) for t in times], "per_s": units / median}


def _best(out: Any) -> np.ndarray:
    """The best (first) caption of each image of a ``DecodeOutput``: [B, T] int."""
    return np.asarray(out.tokens)[:, 0]


def _length(tokens: np.ndarray) -> float:
    """Mean generated length of [N, T] caption rows (tokens through the first EOS; T without one)."""
    ended = tokens == EOS
    return float(np.where(ended.any(-1), ended.argmax(-1) + 1, tokens.shape[-1]).mean())


# ------------------------------------------------------------------------------------------ ORT-style


def _ort_next_log_probs(module: Captioner, memory: jax.Array, mask: jax.Array, ys: jax.Array) -> jax.Array:
    """ORT's ``get_logprobs_state``: the teacher-forced decoder over the whole prefix ``ys`` [R, t] (BOS first;
    cross-attention keys and values projected from ``memory`` [R, N, d] again, as ORT's ``decode``), and the
    generator on the last position only -> next-token log-probs [R, V] float32. ``Captioner.decode`` with
    ORT's ``subsequent_mask`` alone, without the generator over the other positions."""
    t = ys.shape[1]
    self_bias = jnp.where(jnp.tril(jnp.ones((t, t), bool)), 0.0, NEG_INF).astype(jnp.float32)[None, None]
    cross_bias = jnp.where(mask.astype(bool)[:, None, None, :], 0.0, NEG_INF).astype(jnp.float32)
    x = module._embed_tokens(ys, jnp.arange(t), True)
    x, _ = module.decoder(x, module.precompute_cross_kv(memory), self_bias, cross_bias, True)
    return module._log_probs(x[:, -1])


class OrtStyleDecoder:
    """No-cache decoding as ORT does it: a batched encoder, then one compiled full-prefix decoder program per
    prefix length (``_ort_next_log_probs``), driven step by step from Python. ``compile(x, rows)`` first."""

    def __init__(self, model: Captioner, variables: dict[str, Any], max_len: int,
                 compiler_options: dict[str, Any] | None = None):
        self.model, self.variables, self.max_len, self.options = model, variables, max_len, compiler_options
        self.encode: Any = None
        self.steps: dict[int, Any] = {}

    def compile(self, x: Arrays, rows: int) -> float:
        """AOT-compiles the encoder for ``x``'s batch and the step programs for ``rows`` rows; returns seconds."""
        model, v = self.model, self.variables
        self.encode, seconds = aot(lambda v, f, b, m: model.apply(v, f, b, m, method="encode"), v, x["features"],
                                   x["boxes"], x["mask"], compiler_options=self.options)
        memory = jax.ShapeDtypeStruct((rows, x["features"].shape[1], model.cfg.d_model), jnp.float32)
        mask = jax.ShapeDtypeStruct((rows, x["features"].shape[1]), jnp.int32)
        for t in range(1, self.max_len + 1):
            ys = jax.ShapeDtypeStruct((rows, t), jnp.int32)
            self.steps[t], s = aot(lambda v, mem, m, y: model.apply(v, mem, m, y, method=_ort_next_log_probs),
                                   v, memory, mask, ys, compiler_options=self.options)
            seconds += s
        return seconds

    def _next(self, memory: jax.Array, mask: jax.Array, ys: np.ndarray) -> np.ndarray:
        """Host log-probs [R, V] of the next token after prefixes ``ys`` [R, t], UNK blocked (-inf)."""
        lp = np.array(self.steps[ys.shape[1]](self.variables, memory, mask, jnp.asarray(ys)))
        lp[:, -1] = -np.inf
        return lp

    def greedy(self, x: Arrays) -> tuple[np.ndarray, int]:
        """ORT's ``_sample`` with ``sample_max=1``, all images at once: (tokens [B, T], steps run)."""
        memory = self.encode(self.variables, x["features"], x["boxes"], x["mask"])
        b = x["features"].shape[0]
        tokens = np.zeros((b, self.max_len), np.int32)
        done = np.zeros(b, bool)
        for t in range(self.max_len):
            ys = np.concatenate([np.zeros((b, 1), np.int32), tokens[:, :t]], 1)
            word = np.where(done, EOS, self._next(memory, x["mask"], ys).argmax(-1))
            tokens[:, t] = word
            done |= word == EOS
            if done.all():
                return tokens, t + 1
        return tokens, self.max_len

    def beam(self, x: Arrays, images: int, k: int) -> tuple[np.ndarray, list[int]]:
        """ORT's ``_sample_beam``: the encoder over the batch, then per image its memory tiled to ``k`` rows and
        beam search over full-prefix steps -> (best caption of each of the first ``images`` images [n, T],
        steps run per image)."""
        memory = self.encode(self.variables, x["features"], x["boxes"], x["mask"])
        best, steps = [], []
        for i in range(images):
            tokens, n = self._beam_one(jnp.repeat(memory[i:i + 1], k, 0), jnp.repeat(x["mask"][i:i + 1], k, 0), k)
            best.append(tokens)
            steps.append(n)
        return np.stack(best), steps

    def _beam_one(self, memory: jax.Array, mask: jax.Array, k: int) -> tuple[np.ndarray, int]:
        """jaxvl's beam algorithm (``jaxvl.caption.decoding`` module doc, length penalty 0) in numpy for one image."""
        t_max = self.max_len
        live = np.zeros((k, t_max), np.int32)
        live_lp = np.full(k, -np.inf, np.float32)
        live_lp[0] = 0.0
        fin = np.zeros((k, t_max), np.int32)
        fin_scores = np.full(k, -np.inf, np.float32)
        for t in range(t_max):
            ys = np.concatenate([np.zeros((k, 1), np.int32), live[:, :t]], 1)
            lp = self._next(memory, mask, ys)
            flat = (live_lp[:, None] + lp).ravel()
            top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
            top = top[np.lexsort((top, -flat[top]))]  # best first, lower index first on ties (lax.top_k)
            cand_lp, parent, word = flat[top], top // lp.shape[1], (top % lp.shape[1]).astype(np.int32)
            seqs = live[parent].copy()
            seqs[:, t] = word
            ends = (word == EOS) | (t == t_max - 1)
            new_scores = np.where(ends & (cand_lp > -np.inf), cand_lp, -np.inf).astype(np.float32)
            both = np.concatenate([fin_scores, new_scores])
            pick = np.argsort(-both, kind="stable")[:k]
            fin_scores, fin = both[pick], np.concatenate([fin, seqs])[pick]
            live, live_lp = seqs, np.where(ends, -np.inf, cand_lp).astype(np.float32)
            best_live = live_lp.max()
            if not (best_live > -np.inf and best_live >= fin_scores[-1]):
                return fin[0], t + 1
        return fin[0], t_max


# ------------------------------------------------------------------------------------------ decoding


def _decode_fn(model: Captioner, method: str, k: int, max_len: int) -> Callable:
    """``(variables, features, boxes, mask) -> DecodeOutput`` through jaxvl's public decoding functions."""
    if method == "greedy":
        return lambda v, f, b, m: greedy(model, v, f, b, m, max_len=max_len)
    return lambda v, f, b, m: beam_search(model, v, f, b, m, beam_size=k, max_len=max_len)


def _decode_row(size: str, cfg: CaptionerConfig, method: str, k: int, mode: str, program_batch: int, images: int,
                compile_s: float, times: list[float], tokens: np.ndarray, steps: float, reference: np.ndarray | None,
                probe: Probe) -> dict[str, Any]:
    timing = _timing(times, images)
    row = {"size": size, "dtype": cfg.dtype, "method": method, "beam": k, "mode": mode, "program_batch": program_batch,
           "images_per_call": images, "compile_s": compile_s, "ms_per_call": timing["ms_per_call"],
           "runs_ms": timing["runs_ms"], "captions_per_s": timing["per_s"],
           "ms_per_caption": timing["ms_per_call"] / images, "decoder_steps": steps, "mean_length": _length(tokens),
           "same_as_batched": None if reference is None else float((tokens == reference[:len(tokens)]).all(-1).mean()),
           "batched_over_this": None, **probe.finish()}
    agree = "" if reference is None else f", same captions as batched {100 * row['same_as_batched']:.0f}%"
    _log(f"  {method} {mode}: {row['captions_per_s']:.2f} captions/s ({row['ms_per_caption']:.2f} ms each), "
         f"compile {compile_s:.1f} s, {steps:g} steps{agree}")
    return row


def bench_decoding(size: str, model: Captioner, params: Any, args: argparse.Namespace, device: jax.Device,
                   result: dict[str, Any], save: Callable[[], None]) -> None:
    """Greedy and beam decoding rows (module doc) of ``model`` (``size``) with ``params``, appended to
    ``result['decode']`` as measured."""
    cfg = model.cfg
    d = _defaults(size, device.platform != "cpu", args)
    _log(f"{size} decoding: batch {d['batch']}, {d['loop_images']} images per loop, {args.dtype}, max_len "
         f"{args.max_len}, {d['warmup']} warm-up + {d['iters']} timed calls")
    variables = {"params": params}
    x = {k: jax.device_put(v, device) for k, v in random_regions(cfg, d["batch"], args.regions, args.seed).items()}
    ort = OrtStyleDecoder(model, variables, args.max_len, _options(args))
    for method in METHODS:
        rows = bench_method(size, cfg, method, 1 if method == "greedy" else args.beam, model, variables, x,
                            None if args.no_ort_style else ort, args, d)
        for row in rows[1:]:
            row["batched_over_this"] = rows[0]["captions_per_s"] / row["captions_per_s"]
        result["decode"] += rows
        save()


def bench_method(size: str, cfg: CaptionerConfig, method: str, k: int, model: Captioner, variables: dict[str, Any],
                 x: Arrays, ort: OrtStyleDecoder | None, args: argparse.Namespace,
                 d: dict[str, int]) -> list[dict[str, Any]]:
    """The batched, per-image and (``ort`` given) ORT-style rows of one method on the batch ``x``.

    Every timed call ends with the best captions on the host. The ways are compiled first, then timed
    interleaved (one call of each per round, warm-up rounds first), so a change in the machine's load
    hits them alike and the ratios stay meaningful on a shared machine.
    """
    batch, n, warmup, iters = d["batch"], d["loop_images"], d["warmup"], d["iters"]
    fn = _decode_fn(model, method, k, args.max_len)
    args_of = lambda a: (variables, a["features"], a["boxes"], a["mask"])  # noqa: E731
    singles = [{key: value[i:i + 1] for key, value in x.items()} for i in range(n)]
    batched, batched_s = aot(fn, *args_of(x), compiler_options=_options(args))
    one, one_s = aot(fn, *args_of(singles[0]), compiler_options=_options(args))

    def run_batched() -> tuple[np.ndarray, float]:
        out = batched(*args_of(x))
        return _best(out), float(out.steps)

    def run_per_image() -> tuple[np.ndarray, float]:
        best, steps = [], []
        for single in singles:  # each image's caption fetched before the next call, as ORT's loop
            out = one(*args_of(single))
            best.append(_best(out))
            steps.append(int(out.steps))
        return np.concatenate(best), float(np.mean(steps))

    # (mode, program batch, images per call, compile seconds, call)
    ways: list[tuple[str, int, int, float, Callable[[], tuple[np.ndarray, float]]]] = [
        ("batched", batch, batch, batched_s, run_batched), ("per-image", 1, n, one_s, run_per_image)]
    if ort is not None:
        rows_per_step = batch if method == "greedy" else k
        compile_s = ort.compile(x, rows_per_step)
        if method == "greedy":
            ways.append(("ort-style", rows_per_step, batch, compile_s, lambda: ort.greedy(x)))
        else:
            def run_ort_beam() -> tuple[np.ndarray, float]:
                tokens, steps = ort.beam(x, n, k)
                return tokens, float(np.mean(steps))

            ways.append(("ort-style", rows_per_step, n, compile_s, run_ort_beam))

    probe = Probe()
    times: dict[str, list[float]] = {way[0]: [] for way in ways}
    outputs: dict[str, tuple[np.ndarray, float]] = {}
    for i in range(warmup + iters):
        for mode, *_, call in ways:
            start = time.perf_counter()
            outputs[mode] = call()
            if i >= warmup:
                times[mode].append(time.perf_counter() - start)
    reference = outputs["batched"][0]
    return [_decode_row(size, cfg, method, k, mode, program_batch, images, compile_s, times[mode], *outputs[mode],
                        None if mode == "batched" else reference, probe)
            for mode, program_batch, images, compile_s, _ in ways]


# ------------------------------------------------------------------------------------------ training


def _train_state(model: Captioner, tx: Any, params: Any, batch: Arrays, mesh: Any,
                 seed: int) -> tuple[TrainState, Any]:
    """A trainer state at update 0 holding a copy of ``params`` (the step donates its state) and a fresh ``tx``
    state, placed with the shardings of ``caption_trainer``'s state (returned too)."""
    from jaxvl.caption.trainer import _boxed_init

    example = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch)
    shardings = param_shardings(jax.eval_shape(_boxed_init(model, tx, example), jax.random.key(0)), mesh)
    params = jax.tree.map(jnp.copy, params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key(seed))
    return jax.device_put(state, shardings), shardings


def _train_row(size: str, cfg: CaptionerConfig, step: str, images: int, captions: int, compile_s: float,
               times: list[float], memory: dict[str, int], probe: Probe, **extra: Any) -> dict[str, Any]:
    timing = _timing(times, 1)
    row = {"size": size, "dtype": cfg.dtype, "step": step, "images": images, "captions_per_image": captions,
           "compile_s": compile_s, "ms_per_step": timing["ms_per_call"], "runs_ms": timing["runs_ms"],
           "steps_per_s": timing["per_s"], "captions_per_s": timing["per_s"] * images * captions,
           "peak_memory_bytes": memory.get("peak_estimate_in_bytes"), **extra, **probe.finish()}
    share = f", host reward {100 * row['reward_share']:.1f}% of the step" if "reward_share" in row else ""
    _log(f"  {step}: {row['ms_per_step']:.1f} ms/step = {row['steps_per_s']:.2f} steps/s = "
         f"{row['captions_per_s']:.1f} captions/s; compile {compile_s:.1f} s{share}")
    return row


def bench_training(size: str, model: Captioner, params: Any, args: argparse.Namespace, device: jax.Device,
                   result: dict[str, Any], save: Callable[[], None]) -> None:
    """The XE and SCST step rows (module doc) of ``model`` (``size``) from ``params``, appended to
    ``result['train']`` as measured."""
    # imported here: the trainer pulls in the data pipeline (grain, tensorflow_datasets), which decoding does not need
    from jaxvl.caption.rewards import reference_strings, token_strings
    from jaxvl.caption.trainer import scst_update, xe_step

    d = _defaults(size, device.platform != "cpu", args)
    warmup, iters, c = d["warmup"], d["iters"], args.captions
    _log(f"{size} training: XE {args.xe_batch} x {c}, SCST {args.scst_batch} x {c}, {args.dtype}, "
         f"{warmup} warm-up + {iters} timed steps")
    cfg = model.cfg
    mesh = make_mesh(1, 1, 1, devices=[device])
    bsharding = batch_sharding(mesh)

    # ------------------------------------------------------------------------------------------ XE
    probe = Probe()
    batch = jax.device_put(random_train_batch(cfg, args.xe_batch, c, args.regions, args.max_len, args.seed), bsharding)
    tx = xe_optimizer(cfg.d_model, NOAM_WARMUP)
    state, shardings = _train_state(model, tx, params, batch, mesh, args.seed)
    fn = functools.partial(xe_step, model=model, tx=tx, label_smoothing=0.0)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        compiled = jit_step(fn, mesh, shardings, bsharding, _options(args)).lower(state, batch).compile()
        compile_s = time.perf_counter() - start
    holder = [state]

    def xe_call():
        holder[0], metrics = compiled(holder[0], batch)
        return metrics

    times = time_calls(xe_call, jax.block_until_ready, warmup, iters)
    result["train"].append(_train_row(size, cfg, "xe", args.xe_batch, c, compile_s, times, memory_stats(compiled),
                                      probe))
    save()
    del holder, state, batch
    gc.collect()

    # ---------------------------------------------------------------------------------------- SCST
    probe = Probe()
    rng = np.random.default_rng(args.seed + 2)
    batch = jax.device_put(random_train_batch(cfg, args.scst_batch, c, args.regions, args.max_len, args.seed),
                           bsharding)
    corpus = random_captions(cfg, args.df_images, c, args.max_len, rng)
    host_batch = jax.device_get({k: batch[k] for k in ("captions", "caption_lengths", "caption_mask")})
    cider = CiderD(reference_strings(corpus["captions"], corpus["caption_lengths"], corpus["caption_mask"])
                   + reference_strings(host_batch["captions"], host_batch["caption_lengths"],
                                       host_batch["caption_mask"]))
    tx = scst_optimizer(SCST_LR, SCST_STEPS_PER_EPOCH, SCST_DECAY_EVERY, SCST_DECAY_RATE)
    state, shardings = _train_state(model, tx, params, batch, mesh, args.seed)
    max_len = args.max_len

    def sample(params, batch, rng, step):  # as caption_trainer._scst_step_fn's sampler
        key = jax.random.fold_in(jax.random.fold_in(rng, step), 1)
        boxes = relative_boxes(batch["boxes"], batch["image_size"])
        samples, base = sample_and_greedy(model, params, batch["features"], boxes, batch["region_mask"], key,
                                          num_samples=c, max_len=max_len, temperature=1.0)
        return samples.tokens, base.tokens

    with jax.set_mesh(mesh):
        sampler, sampler_s = aot(sample, state.params, batch, state.rng, state.step,
                                 in_shardings=(shardings.params, bsharding, None, None),
                                 compiler_options=_options(args))
        start = time.perf_counter()
        update = jit_step(functools.partial(scst_update, model=model, tx=tx), mesh, shardings, bsharding,
                          _options(args), extra_shardings=(bsharding, bsharding)).lower(
                              state, batch, jax.ShapeDtypeStruct((args.scst_batch, c, max_len), jnp.int32),
                              jax.ShapeDtypeStruct((args.scst_batch, c), jnp.float32)).compile()
        update_s = time.perf_counter() - start

    holder = [state]
    parts: list[tuple[float, float, float]] = []

    def scst_call():
        t0 = time.perf_counter()
        samples, base = jax.block_until_ready(sampler(holder[0].params, batch, holder[0].rng, holder[0].step))
        t1 = time.perf_counter()
        host = jax.device_get({"s": samples, "g": base, "c": batch["captions"], "l": batch["caption_lengths"],
                               "m": batch["caption_mask"]})
        refs = reference_strings(host["c"], host["l"], host["m"])
        per_sample = [r for r in refs for _ in range(c)]
        sample_scores = cider.scores(token_strings(host["s"]), per_sample).reshape(host["s"].shape[:2])
        greedy_scores = cider.scores(token_strings(host["g"]), refs)
        rewards = jax.device_put((sample_scores - greedy_scores[:, None]).astype(np.float32), bsharding)
        t2 = time.perf_counter()
        holder[0], metrics = jax.block_until_ready(update(holder[0], batch, samples, rewards))
        parts.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return metrics

    times = time_calls(scst_call, jax.block_until_ready, warmup, iters)
    timed = np.array(parts[warmup:])
    medians = {f"{name}_ms": 1e3 * float(np.median(timed[:, i])) for i, name in enumerate(("sampler", "reward",
                                                                                           "update"))}
    result["train"].append(_train_row(size, cfg, "scst", args.scst_batch, c, sampler_s + update_s, times,
                                      memory_stats(update), probe, compile_sampler_s=sampler_s,
                                      compile_update_s=update_s, **medians,
                                      reward_share=float(timed[:, 1].sum() / timed.sum()),
                                      df_images=len(corpus["captions"]) + args.scst_batch))
    save()


# ------------------------------------------------------------------------------------------- output


def _f(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _load(row: dict[str, Any]) -> str:
    return (f"{_f(row.get('loadavg_1m_start'), '.1f')} / {_f(row.get('loadavg_1m_end'), '.1f')} "
            f"({_f(row.get('other_cores'), '.2f')})")


def _table(cols: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *("| " + " | ".join(r) + " |" for r in rows)]


def format_markdown(result: dict[str, Any]) -> str:
    """The model sizes, the decoding table and the training table, as markdown to paste into BENCHMARKS.md."""
    lines = [f"- {size}: {_f(m['params'], ',')} parameters; " + ", ".join(f"{k} {v}" for k, v in m["config"].items())
             for size, m in result["models"].items()]
    if result["decode"]:
        cols = ["size", "dtype", "method", "mode", "program batch", "images per call", "compile s", "captions/s",
                "ms/caption", "decoder steps", "batched / this", "same captions as batched",
                "load start / end (other cores)"]
        rows = [[r["size"], r["dtype"], r["method"] if r["method"] == "greedy" else f"beam {r['beam']}", r["mode"],
                 str(r["program_batch"]), str(r["images_per_call"]), f"{r['compile_s']:.1f}",
                 f"{r['captions_per_s']:,.2f}", f"{r['ms_per_caption']:.2f}", f"{r['decoder_steps']:g}",
                 "-" if r["batched_over_this"] is None else f"**{r['batched_over_this']:.1f}x**",
                 "-" if r["same_as_batched"] is None else f"{100 * r['same_as_batched']:.0f}%", _load(r)]
                for r in result["decode"]]
        lines += ["", *_table(cols, rows)]
    if result["train"]:
        cols = ["size", "dtype", "step", "images x captions", "compile s", "ms/step", "steps/s", "captions/s",
                "sampler / host reward / update ms", "host reward share", "load start / end (other cores)"]
        rows = [[r["size"], r["dtype"], r["step"], f"{r['images']} x {r['captions_per_image']}",
                 f"{r['compile_s']:.1f}", f"{r['ms_per_step']:.1f}", f"{r['steps_per_s']:.2f}",
                 f"{r['captions_per_s']:.1f}",
                 (f"{r['sampler_ms']:.1f} / {r['reward_ms']:.1f} / {r['update_ms']:.1f}" if r["step"] == "scst"
                  else "-"), f"{100 * r['reward_share']:.1f}%" if r["step"] == "scst" else "-", _load(r)]
                for r in result["train"]]
        lines += ["", *_table(cols, rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m jaxvl.benchmarks.caption ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
