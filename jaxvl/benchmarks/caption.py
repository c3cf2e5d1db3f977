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
  - ``scst``: the three parts of the trainer's SCST step, timed one by one: the jitted ``sample_and_greedy``
    sampler (5 samples per image and the greedy baseline), the host reward (``device_get`` of the
    samples and the batch's captions, then ``jaxvl.caption.rewards.scst_rewards``: CIDEr-D with document
    frequencies of a random reference corpus of ``--df-images`` images), and the jitted, donated
    ``scst_update``; ORT's batch 10 images x 5 captions. The host reward's share of the step is reported.
    Each part ends with ``block_until_ready``. The trainer does not block after the update, but the next
    step's sampler waits for its parameters, so only host work (the data pipeline) would overlap it.

The weights are ORT's random init (xavier-uniform), drawn once per size. Decoding uses them, and both
training states start from copies at update 0.

Timings are the median of N timed calls after warm-up calls, each ended by ``block_until_ready`` or a
host copy of its result. Each row records the 1-minute load average at its start and end and the cores
other processes kept busy (``jaxvl.benchmarks.common.Probe``). ``add_arguments`` and ``run`` are the hooks
of ``jaxvl bench caption``; ``caption_decode`` and ``caption_train`` measure, ``caption_setup`` holds the
models, inputs and defaults they share.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import jax

from jaxvl.benchmarks.caption_decode import METHODS, MODES, bench_decoding
from jaxvl.benchmarks.caption_setup import (
    CAPTIONS,
    MAX_LEN,
    REGIONS,
    SIZES,
    compiler_options,
    config_summary,
    init_params,
    model_config,
    random_regions,
)
from jaxvl.benchmarks.caption_train import bench_training
from jaxvl.benchmarks.common import (
    csv_choices,
    fmt,
    format_machine,
    jax_device,
    load_cell,
    log,
    machine_info,
    markdown_table,
    no_persistent_compile_cache,
    save_json,
)
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig
from jaxvl.models.params import count_params

PARTS = ("decode", "train")

__all__ = ["METHODS", "MODES", "PARTS", "SIZES", "add_arguments", "format_markdown", "random_regions", "run"]


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
                        help="compile with jaxvl.runtime.compile.FAST_COMPILE (faster CPU compiles, slower "
                             "programs: smoke runs only, not for the numbers)")
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
    device = jax_device(args.device)
    machine = machine_info(device)
    print(format_machine(machine), flush=True)
    options = {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | list | type(None))}
    result: dict[str, Any] = {"command": " ".join(sys.argv), "options": options, "machine": machine, "models": {},
                              "decode": [], "train": []}
    with no_persistent_compile_cache(), jax.default_device(device):
        for size in args.sizes:
            model = Captioner(model_config(size, args.dtype))
            start = time.perf_counter()
            params = jax.block_until_ready(init_params(model, args.regions, args.seed, compiler_options(args)))
            result["models"][size] = {"config": config_summary(model.cfg), "params": count_params(params),
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
        log(f"wrote {args.out}")
    print(format_markdown(result), flush=True)
    return result


# ------------------------------------------------------------------------------------------- output


def format_markdown(result: dict[str, Any]) -> str:
    """The model sizes, the decoding table and the training table, as markdown to paste into BENCHMARKS.md."""
    lines = [f"- {size}: {fmt(m['params'], ',')} parameters; " + ", ".join(f"{k} {v}" for k, v in m["config"].items())
             for size, m in result["models"].items()]
    if result["decode"]:
        cols = ["size", "dtype", "method", "mode", "program batch", "images per call", "compile s", "captions/s",
                "ms/caption", "decoder steps", "batched / this", "same captions as batched",
                "load start / end (other cores)"]
        rows = [[r["size"], r["dtype"], r["method"] if r["method"] == "greedy" else f"beam {r['beam']}", r["mode"],
                 r["program_batch"], r["images_per_call"], f"{r['compile_s']:.1f}", f"{r['captions_per_s']:,.2f}",
                 f"{r['ms_per_caption']:.2f}", f"{r['decoder_steps']:g}",
                 "-" if r["batched_over_this"] is None else f"**{r['batched_over_this']:.1f}x**",
                 "-" if r["same_as_batched"] is None else f"{100 * r['same_as_batched']:.0f}%", load_cell(r)]
                for r in result["decode"]]
        lines += ["", markdown_table(cols, rows)]
    if result["train"]:
        cols = ["size", "dtype", "step", "images x captions", "compile s", "ms/step", "steps/s", "captions/s",
                "sampler / host reward / update ms", "host reward share", "load start / end (other cores)"]
        rows = [[r["size"], r["dtype"], r["step"], f"{r['images']} x {r['captions_per_image']}",
                 f"{r['compile_s']:.1f}", f"{r['ms_per_step']:.1f}", f"{r['steps_per_s']:.2f}",
                 f"{r['captions_per_s']:.1f}",
                 (f"{r['sampler_ms']:.1f} / {r['reward_ms']:.1f} / {r['update_ms']:.1f}" if r["step"] == "scst"
                  else "-"), f"{100 * r['reward_share']:.1f}%" if r["step"] == "scst" else "-", load_cell(r)]
                for r in result["train"]]
        lines += ["", markdown_table(cols, rows)]
    return "\n".join(lines)
