"""``jaxvl bench models``: speed, compile time and size of the five presets, with the PyTorch originals beside them.

For each preset and size (``tiny``: the test sizes of ``presets.tiny_overrides``; ``ctrl``: VOLTA's
controlled sizes) at VOLTA's input sizes (38 tokens, 37 regions incl. the global ``[IMG]`` row):

- jitted forward (MLM, visual-target and ITM logits) and forward+backward (``value_and_grad`` of a
  scalar loss over those logits) time per example: warm-up calls, then the median of N timed calls,
  each ended by ``block_until_ready``;
- compile time: wall time of AOT ``jax.jit(f).lower(...)`` plus ``.compile()``, with
  ``scan_layers`` False and True (the persistent compilation cache is switched off meanwhile);
- the parameter count.

Where a PyTorch original exists in ``transformers`` (``LxmertModel`` for lxmert, ``VisualBertModel``
for visualbert), the same is timed for it at matching sizes, random init, with heads and loss built
to match jaxvl's (tied MLM decoder, visual-target decoders, two poolers fused into ITM), and the
ratio torch time / jax time is reported. Torch runs eagerly, on CUDA when JAX runs on a GPU and CUDA
is there, else on CPU with as many threads as the cores JAX sees (``jaxvl.benchmarks.models_torch``).

``add_arguments`` and ``run`` are the hooks of ``jaxvl bench models``; ``bench_jax`` times one preset
(``jaxvl bench data`` uses it for the step rate).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxvl.benchmarks.common import (
    aot_compile,
    fmt,
    format_machine,
    jax_device,
    loadavg,
    log,
    machine_info,
    markdown_table,
    no_persistent_compile_cache,
    put_times,
    save_json,
    time_calls,
)
from jaxvl.benchmarks.models_torch import TORCH_ORIGINALS, bench_torch, torch_device, torch_device_name
from jaxvl.models.params import count_params, scan_params
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import VLBertForPreTraining, get_model
from jaxvl.models.volta.presets import PRESETS

SIZES = ("tiny", "ctrl")
TEXT_LEN = 38  # VOLTA's max_seq_length
REGIONS = 37  # VOLTA's 36 boxes + the global [IMG] row

Batch = dict[str, Any]


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench models`` options to ``parser``."""
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS), metavar="NAME",
                        help=f"presets to run (default: all of {', '.join(PRESETS)})")
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES),
                        help="model sizes: tiny (test sizes) and/or ctrl (VOLTA's controlled sizes)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: 8 for tiny; 2 for ctrl on CPU, 32 for ctrl on an accelerator)")
    parser.add_argument("--text-len", type=int, default=TEXT_LEN, help="text length (default: VOLTA's 38)")
    parser.add_argument("--regions", type=int, default=REGIONS, help="regions incl. [IMG] (default: VOLTA's 37)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="jaxvl matmul dtype (params stay float32); torch uses bf16 autocast on CUDA, "
                             "and is skipped for bfloat16 on CPU")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="auto: jax.devices()[0], and torch on CUDA when JAX is on a GPU")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls before timing (default: 3; 2 for ctrl on CPU)")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed calls, median reported (default: 20; 5 for ctrl on CPU)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch originals")
    parser.add_argument("--no-scan-compile", action="store_true",
                        help="skip compiling the scan_layers=True variant")
    parser.add_argument("--time-scan", action="store_true",
                        help="also time forward+backward of the scan_layers=True variant")
    parser.add_argument("--dropout", action="store_true",
                        help="time with dropout on (jax deterministic=False, torch .train()); default: off on both")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and the random init (default: 0)")
    parser.add_argument("--out", default=None, help="write machine info and results as JSON to this path")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table of the results")


def run(args: argparse.Namespace) -> list[dict]:
    """Runs the benchmark described by ``args`` (see ``add_arguments``); returns one dict per preset and size."""
    # JAX would otherwise take 75% of GPU memory up front and starve torch; only effective before JAX's first use.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    device = jax_device(args.device)
    machine = machine_info(device)
    torch_on = None if args.no_torch else torch_device(device)
    if torch_on is not None:
        machine["torch_device"] = torch_device_name(torch_on)
    print(format_machine(machine), flush=True)
    rows = []
    with no_persistent_compile_cache(), jax.default_device(device):
        for size in args.sizes:
            for name in args.presets:
                row = bench_one(name, size, args, device, torch_on)
                rows.append(row)
                log(_summary(row))
                gc.collect()
    if args.out:
        save_json({"command": " ".join(sys.argv), "machine": machine, "results": rows}, args.out)
        log(f"wrote {args.out}")
    if args.markdown:
        print(format_markdown(rows), flush=True)
    return rows


# ---------------------------------------------------------------------------------------- helpers


def _defaults(size: str, accelerator: bool, args: argparse.Namespace) -> tuple[int, int, int]:
    """(batch, warmup, iters) for ``size``: explicit options win."""
    slow = size == "ctrl" and not accelerator
    batch = args.batch or (8 if size == "tiny" else (32 if accelerator else 2))
    warmup = args.warmup if args.warmup is not None else (2 if slow else 3)
    iters = args.iters if args.iters is not None else (5 if slow else 20)
    return batch, warmup, iters


def make_inputs(cfg: VLConfig, batch: int, text_len: int, regions: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs of VOLTA's shapes: token ids, region features, 5-d box locations, all-ones masks."""
    rng = np.random.default_rng(seed)
    x1y1 = rng.uniform(0.0, 0.5, (batch, regions, 2))
    x2y2 = x1y1 + rng.uniform(0.1, 0.5, (batch, regions, 2))
    area = (x2y2 - x1y1).prod(-1, keepdims=True)
    locations = np.concatenate([x1y1, x2y2, area], -1)[..., : cfg.num_locs]
    return {
        "input_ids": rng.integers(1, cfg.vocab_size, (batch, text_len)).astype(np.int32),
        "features": rng.standard_normal((batch, regions, cfg.v_feature_size)).astype(np.float32),
        "locations": locations.astype(np.float32),
        "token_type_ids": np.zeros((batch, text_len), np.int32),
        "text_mask": np.ones((batch, text_len), np.int32),
        "region_mask": np.ones((batch, regions), np.int32),
    }


# ------------------------------------------------------------------------------------------- JAX


def _logits(out) -> tuple[jax.Array, dict[str, jax.Array], jax.Array | None]:
    return out.mlm_logits, out.visual_logits, out.itm_logits


def scalar_loss(mlm: jax.Array, visual: dict[str, jax.Array], itm: jax.Array | None) -> jax.Array:
    """A cross-entropy-shaped scalar over every head: the mean log-sum-exp of each set of logits."""
    terms = [jax.nn.logsumexp(mlm, -1).mean()] + [jax.nn.logsumexp(x, -1).mean() for x in visual.values()]
    if itm is not None:
        terms.append(jax.nn.logsumexp(itm, -1).mean())
    return sum(terms)


def _jax_fns(model: VLBertForPreTraining, dropout: bool) -> tuple[Callable, Callable]:
    """(forward, forward+backward) as pure functions of (params, batch, dropout key)."""

    def apply(params, batch, key):
        rngs = {"dropout": key} if dropout else None
        return model.apply({"params": params}, **batch, deterministic=not dropout, rngs=rngs)

    def forward(params, batch, key):
        return _logits(apply(params, batch, key))

    def loss(params, batch, key):
        return scalar_loss(*_logits(apply(params, batch, key)))

    def forward_backward(params, batch, key):
        return jax.value_and_grad(loss)(params, batch, key)

    return forward, forward_backward


def bench_jax(name: str, size: str, batch: int, args: argparse.Namespace, warmup: int,
              iters: int) -> tuple[dict[str, Any], VLConfig]:
    """Times, compile times and parameter count of jaxvl's ``name`` at ``size``."""
    tiny = size == "tiny"
    model = get_model(name, tiny=tiny, dtype=args.dtype)
    cfg = model.cfg
    inputs = {k: jnp.asarray(v) for k, v in make_inputs(cfg, batch, args.text_len, args.regions, args.seed).items()}
    key = jax.random.key(args.seed)
    init_key, drop_key = jax.random.split(key)
    dummy = model.dummy_inputs(batch, args.text_len, args.regions)
    params = nn.meta.unbox(jax.jit(model.init)(init_key, **dummy)["params"])
    row: dict[str, Any] = {"params": count_params(params)}

    forward, forward_backward = _jax_fns(model, args.dropout)
    fwd, lower_s, compile_s = aot_compile(jax.jit(forward), params, inputs, drop_key)
    row["compile_fwd_s"] = lower_s + compile_s
    step, lower_s, compile_s = aot_compile(jax.jit(forward_backward), params, inputs, drop_key)
    row["lower_fwdbwd_s"], row["compile_fwdbwd_s"] = lower_s, lower_s + compile_s
    log(f"  jax {name}/{size}: compiled (fwd {row['compile_fwd_s']:.1f}s, fwd+bwd {row['compile_fwdbwd_s']:.1f}s)")

    put_times(row, "fwd", time_calls(lambda: fwd(params, inputs, drop_key), jax.block_until_ready, warmup, iters),
              batch)
    put_times(row, "fwdbwd", time_calls(lambda: step(params, inputs, drop_key), jax.block_until_ready, warmup, iters),
              batch)

    if not args.no_scan_compile or args.time_scan:
        scan_model = get_model(name, tiny=tiny, dtype=args.dtype, scan_layers=True)
        abstract = nn.meta.unbox(jax.eval_shape(scan_model.init, init_key, **dummy)["params"])
        _, scan_forward_backward = _jax_fns(scan_model, args.dropout)
        scan_step, lower_s, compile_s = aot_compile(jax.jit(scan_forward_backward), abstract, inputs, drop_key)
        row["lower_fwdbwd_scan_s"], row["compile_fwdbwd_scan_s"] = lower_s, lower_s + compile_s
        log(f"  jax {name}/{size}: scan compiled (fwd+bwd {row['compile_fwdbwd_scan_s']:.1f}s)")
        if args.time_scan:
            scanned = jax.device_put(scan_params(params, cfg))
            put_times(row, "fwdbwd_scan", time_calls(lambda: scan_step(scanned, inputs, drop_key),
                                                     jax.block_until_ready, warmup, iters), batch)
    return row, cfg


# ----------------------------------------------------------------------------------------- a row


def bench_one(name: str, size: str, args: argparse.Namespace, device: jax.Device,
              torch_on: str | None) -> dict[str, Any]:
    """All measurements for one preset at one size."""
    batch, warmup, iters = _defaults(size, device.platform != "cpu", args)
    log(f"{name}/{size}: batch {batch}, {warmup} warm-up + {iters} timed calls")
    row: dict[str, Any] = {"preset": name, "size": size, "batch": batch, "text_len": args.text_len,
                           "regions": args.regions, "dtype": args.dtype, "dropout": args.dropout,
                           "device": f"{device.platform}: {device.device_kind}", "warmup": warmup, "iters": iters,
                           "loadavg_1m_start": loadavg()}
    jax_row, cfg = bench_jax(name, size, batch, args, warmup, iters)
    row.update(jax_row)
    if name in TORCH_ORIGINALS and torch_on is not None:
        if args.dtype == "bfloat16" and torch_on == "cpu":
            row["torch_skipped"] = "bfloat16 on CPU"
        else:
            row["torch_model"] = TORCH_ORIGINALS[name]
            row["torch_device"] = torch_on
            try:
                inputs = make_inputs(cfg, batch, args.text_len, args.regions, args.seed)
                row.update(bench_torch(name, cfg, inputs, args, torch_on, warmup, iters))
            except Exception as e:  # noqa: BLE001 -- a broken torch side must not lose the jax numbers already measured
                row["torch_error"] = f"{type(e).__name__}: {e}"
                log(f"  torch {name}/{size} failed: {row['torch_error']}")
            else:
                row["ratio_fwd"] = row["torch_fwd_ms"] / row["fwd_ms"]
                row["ratio_fwdbwd"] = row["torch_fwdbwd_ms"] / row["fwdbwd_ms"]
    row["loadavg_1m_end"] = loadavg()
    return row


def _summary(row: dict[str, Any]) -> str:
    text = (f"{row['preset']}/{row['size']}: fwd {row['fwd_ms']:.2f} ms/ex, fwd+bwd {row['fwdbwd_ms']:.2f} ms/ex, "
            f"compile fwd+bwd {row['compile_fwdbwd_s']:.1f}s")
    if "compile_fwdbwd_scan_s" in row:
        text += f" (scan {row['compile_fwdbwd_scan_s']:.1f}s)"
    if "torch_fwdbwd_ms" in row:
        text += f"; torch fwd+bwd {row['torch_fwdbwd_ms']:.2f} ms/ex (x{row['ratio_fwdbwd']:.2f})"
    return text


def format_markdown(rows: list[dict]) -> str:
    """A markdown table of ``run``'s rows: times per example, compile times of the fwd+bwd step, and the
    1-minute load average at the start of each row (a load above the core count means contended CPU timings)."""
    time_scan = any("fwdbwd_scan_ms" in r for r in rows)
    cols = ["preset", "size", "B", "fwd ms/ex", "fwd+bwd ms/ex"] + (["fwd+bwd scan ms/ex"] if time_scan else []) + [
        "compile fwd+bwd s (no scan / scan)", "params", "torch fwd ms/ex", "torch fwd+bwd ms/ex", "torch/jax fwd",
        "torch/jax fwd+bwd", "load"]
    cells = []
    for r in rows:
        scan = [fmt(r.get("fwdbwd_scan_ms"), ".2f")] if time_scan else []
        cells.append([r["preset"], r["size"], r["batch"], f"{r['fwd_ms']:.2f}", f"{r['fwdbwd_ms']:.2f}", *scan,
                      f"{r['compile_fwdbwd_s']:.1f} / {fmt(r.get('compile_fwdbwd_scan_s'), '.1f')}",
                      f"{r['params']:,}", fmt(r.get("torch_fwd_ms"), ".2f"), fmt(r.get("torch_fwdbwd_ms"), ".2f"),
                      fmt(r.get("ratio_fwd"), ".2f"), fmt(r.get("ratio_fwdbwd"), ".2f"),
                      fmt(r.get("loadavg_1m_start"), ".1f")])
    return markdown_table(cols, cells)
