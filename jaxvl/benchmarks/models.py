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
is there, else on CPU with as many threads as the cores JAX sees.

``add_arguments`` and ``run`` are the CLI hooks; ``scripts/bench_models.py`` wraps them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxvl.models.params import count_params, scan_params
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import VLBertForPreTraining, get_model
from jaxvl.models.volta.presets import PRESETS

SIZES = ("tiny", "ctrl")
TORCH_ORIGINALS = {"lxmert": "transformers.LxmertModel", "visualbert": "transformers.VisualBertModel"}
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
    device = _jax_device(args.device)
    machine = machine_info(device)
    torch_device = None if args.no_torch else _torch_device(device)
    if torch_device is not None:
        machine["torch_device"] = _torch_device_name(torch_device)
    print(format_machine(machine), flush=True)
    rows = []
    with _no_persistent_compile_cache(), jax.default_device(device):
        for size in args.sizes:
            for name in args.presets:
                row = bench_one(name, size, args, device, torch_device)
                rows.append(row)
                _log(_summary(row))
                gc.collect()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"command": " ".join(sys.argv), "machine": machine, "results": rows}, f, indent=2)
        _log(f"wrote {args.out}")
    if args.markdown:
        print(format_markdown(rows), flush=True)
    return rows


# ------------------------------------------------------------------------------------ the machine


def _jax_device(choice: str) -> jax.Device:
    if choice == "auto":
        return jax.devices()[0]
    if choice == "cpu":
        return jax.devices("cpu")[0]
    return jax.devices("gpu")[0]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    import flax

    out = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}
    try:
        import jaxlib

        out["jaxlib"] = jaxlib.__version__
    except (ImportError, AttributeError):
        pass
    for mod in ("torch", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def machine_info(device: jax.Device) -> dict[str, Any]:
    """CPU model and cores, the JAX device, library versions, the date, and settings that change timings."""
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": _cores(),
        "jax_device": f"{device.platform}: {device.device_kind}",
        "jax_device_count": jax.device_count(),
        "versions": _versions(),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
        "loadavg_1m": _loadavg(),
    }


def format_machine(machine: dict[str, Any]) -> str:
    """The machine as a few human-readable lines."""
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [(f"# machine: {machine['cpu']}, {machine['cores']} cores; jax device {machine['jax_device']} "
              f"(x{machine['jax_device_count']}); torch device {machine.get('torch_device', 'none')}"),
             f"# versions: {versions}",
             (f"# date: {machine['date_utc']}; load average (1 min) {machine['loadavg_1m']}; "
              f"jax_default_matmul_precision={machine['jax_default_matmul_precision']}")]
    if machine["xla_flags"]:
        lines.append(f"# XLA_FLAGS={machine['xla_flags']}")
    return "\n".join(lines)


@contextlib.contextmanager
def _no_persistent_compile_cache() -> Iterator[None]:
    """Compile times must be real compiles: switch off JAX's persistent compilation cache meanwhile."""
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- helpers


def _defaults(size: str, accelerator: bool, args: argparse.Namespace) -> tuple[int, int, int]:
    """(batch, warmup, iters) for ``size``: explicit options win."""
    slow = size == "ctrl" and not accelerator
    batch = args.batch or (8 if size == "tiny" else (32 if accelerator else 2))
    warmup = args.warmup if args.warmup is not None else (2 if slow else 3)
    iters = args.iters if args.iters is not None else (5 if slow else 20)
    return batch, warmup, iters


def time_calls(call: Callable[[], Any], sync: Callable[[Any], Any], warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``call`` (each ended by ``sync`` on its result), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        sync(call())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return times


def _put_times(row: dict[str, Any], key: str, times: list[float], batch: int) -> None:
    """Stores the median as ``{key}_ms`` and every timed call as ``{key}_runs_ms``, both in ms per example."""
    per_example = [1e3 * t / batch for t in times]
    row[f"{key}_ms"] = statistics.median(per_example)
    row[f"{key}_runs_ms"] = [round(t, 4) for t in per_example]


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


def aot_compile(fn: Callable, *args: Any) -> tuple[Any, float, float]:
    """(compiled, lower seconds, compile seconds) of ``jax.jit(fn).lower(*args).compile()``."""
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    mid = time.perf_counter()
    compiled = lowered.compile()
    return compiled, mid - start, time.perf_counter() - mid


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
    fwd, lower_s, compile_s = aot_compile(forward, params, inputs, drop_key)
    row["compile_fwd_s"] = lower_s + compile_s
    step, lower_s, compile_s = aot_compile(forward_backward, params, inputs, drop_key)
    row["lower_fwdbwd_s"], row["compile_fwdbwd_s"] = lower_s, lower_s + compile_s
    _log(f"  jax {name}/{size}: compiled (fwd {row['compile_fwd_s']:.1f}s, fwd+bwd {row['compile_fwdbwd_s']:.1f}s)")

    _put_times(row, "fwd", time_calls(lambda: fwd(params, inputs, drop_key), jax.block_until_ready, warmup, iters),
               batch)
    _put_times(row, "fwdbwd",
               time_calls(lambda: step(params, inputs, drop_key), jax.block_until_ready, warmup, iters), batch)

    if not args.no_scan_compile or args.time_scan:
        scan_model = get_model(name, tiny=tiny, dtype=args.dtype, scan_layers=True)
        abstract = nn.meta.unbox(jax.eval_shape(scan_model.init, init_key, **dummy)["params"])
        _, scan_forward_backward = _jax_fns(scan_model, args.dropout)
        scan_step, lower_s, compile_s = aot_compile(scan_forward_backward, abstract, inputs, drop_key)
        row["lower_fwdbwd_scan_s"], row["compile_fwdbwd_scan_s"] = lower_s, lower_s + compile_s
        _log(f"  jax {name}/{size}: scan compiled (fwd+bwd {row['compile_fwdbwd_scan_s']:.1f}s)")
        if args.time_scan:
            scanned = jax.device_put(scan_params(params, cfg))
            _put_times(row, "fwdbwd_scan", time_calls(lambda: scan_step(scanned, inputs, drop_key),
                                                      jax.block_until_ready, warmup, iters), batch)
    return row, cfg


# ----------------------------------------------------------------------------------------- torch


def _torch_device(jax_device: jax.Device) -> str | None:
    """'cuda' when JAX is on a GPU and torch sees CUDA, 'cpu' when JAX is on CPU, None without torch."""
    try:
        import torch
    except ImportError:
        return None
    if jax_device.platform == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_device_name(device: str) -> str:
    """'cuda: <GPU name> (tf32 matmul on|off)' or 'cpu (N threads)'."""
    import torch

    if device == "cuda":
        tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
        return f"cuda: {torch.cuda.get_device_name()} (tf32 matmul {tf32})"
    return f"cpu ({_cores()} threads)"


def _torch_layer_counts(name: str, cfg: VLConfig) -> dict[str, int]:
    """The original's layer counts, read off the jaxvl plan so tiny and ctrl stay in step with presets.py."""
    plan = cfg.plan
    if name == "lxmert":
        x = len(plan.tv_attn_sublayers)
        return {"l_layers": len(plan.tt_attn_sublayers) - x, "x_layers": x, "r_layers": len(plan.vv_attn_sublayers) - x}
    return {"num_hidden_layers": len(plan.tt_attn_sublayers)}


def build_torch_model(name: str, cfg: VLConfig):
    """The PyTorch original of ``name`` at ``cfg``'s sizes, random init, with heads matching jaxvl's.

    Returns a ``torch.nn.Module`` whose forward takes the ``make_inputs`` tensors and returns
    (MLM logits, {target: visual logits}, ITM logits).
    """
    import torch
    from torch import nn as tnn
    from transformers import LxmertConfig, LxmertModel, VisualBertConfig, VisualBertModel

    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                  intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act,
                  hidden_dropout_prob=cfg.hidden_dropout_prob,
                  attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
                  max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
                  initializer_range=cfg.initializer_range, **_torch_layer_counts(name, cfg))
    act = {"relu": torch.relu, "tanh": torch.tanh}[cfg.fusion_act]

    class Heads(tnn.Module):
        """jaxvl's heads: tied MLM decoder, visual-target decoders, two poolers fused into ITM."""

        def __init__(self, word_embeddings: tnn.Embedding):
            super().__init__()
            self.word_embeddings = word_embeddings
            self.mlm_transform = tnn.Linear(cfg.hidden_size, cfg.hidden_size)
            self.mlm_norm = tnn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
            self.mlm_bias = tnn.Parameter(torch.zeros(cfg.vocab_size))
            self.v_transform = tnn.Linear(cfg.v_hidden_size, cfg.v_hidden_size)
            self.v_norm = tnn.LayerNorm(cfg.v_hidden_size, eps=cfg.layer_norm_eps) if cfg.image_head_ln else None
            self.decoders = tnn.ModuleDict({f"t{k}": tnn.Linear(cfg.v_hidden_size, n)
                                            for k, n in cfg.visual_targets.items()})
            self.t_pooler = tnn.Linear(cfg.hidden_size, cfg.pooler_size)
            self.v_pooler = tnn.Linear(cfg.v_hidden_size, cfg.v_pooler_size)
            self.itm = tnn.Linear(cfg.pooler_size, cfg.itm_dim)

        def forward(self, t, v):
            h = self.mlm_norm(tnn.functional.gelu(self.mlm_transform(t)))
            mlm = tnn.functional.linear(h, self.word_embeddings.weight, self.mlm_bias)
            h = tnn.functional.gelu(self.v_transform(v))
            h = self.v_norm(h) if self.v_norm is not None else h
            visual = {k[1:]: dec(h) for k, dec in self.decoders.items()}
            pooled_t, pooled_v = act(self.t_pooler(t[:, 0])), act(self.v_pooler(v[:, 0]))
            fused = {"mul": lambda: pooled_t * pooled_v, "sum": lambda: pooled_t + pooled_v}.get(
                cfg.fusion_method, lambda: pooled_t)()
            return mlm, visual, self.itm(fused)

    class Original(tnn.Module):
        """``LxmertModel`` or ``VisualBertModel`` plus ``Heads``."""

        def __init__(self):
            super().__init__()
            if name == "lxmert":
                self.body = LxmertModel(LxmertConfig(visual_feat_dim=cfg.v_feature_size, visual_pos_dim=cfg.num_locs,
                                                     **common))
            else:
                self.body = VisualBertModel(VisualBertConfig(visual_embedding_dim=cfg.v_feature_size,
                                                             layer_norm_eps=cfg.layer_norm_eps, **common),
                                            add_pooling_layer=False)
            self.heads = Heads(self.body.embeddings.word_embeddings)

        def forward(self, input_ids, features, locations, token_type_ids, text_mask, region_mask):
            if name == "lxmert":
                out = self.body(input_ids=input_ids, visual_feats=features, visual_pos=locations,
                                attention_mask=text_mask, visual_attention_mask=region_mask,
                                token_type_ids=token_type_ids)
                t, v = out.language_output, out.vision_output
            else:
                out = self.body(input_ids=input_ids, attention_mask=text_mask, token_type_ids=token_type_ids,
                                visual_embeds=features, visual_attention_mask=region_mask)
                t, v = out.last_hidden_state[:, : input_ids.shape[1]], out.last_hidden_state[:, input_ids.shape[1]:]
            return self.heads(t, v)

    return Original()


def bench_torch(name: str, cfg: VLConfig, batch: int, args: argparse.Namespace, device: str, warmup: int,
                iters: int) -> dict[str, Any]:
    """Forward and forward+backward time per example and parameter count of the PyTorch original."""
    import torch

    torch.manual_seed(args.seed)
    if device == "cpu":
        torch.set_num_threads(_cores())
    model = build_torch_model(name, cfg).to(device)
    model.train(args.dropout)
    inputs = {k: torch.from_numpy(v).to(device) for k, v in
              make_inputs(cfg, batch, args.text_len, args.regions, args.seed).items()}
    inputs["input_ids"] = inputs["input_ids"].long()
    inputs["token_type_ids"] = inputs["token_type_ids"].long()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else contextlib.nullcontext())

    def sync(_: Any) -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def forward():
        with torch.inference_mode(), autocast:
            return model(**inputs)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast:
            mlm, visual, itm = model(**inputs)
            loss = sum([torch.logsumexp(mlm.float(), -1).mean()]
                       + [torch.logsumexp(x.float(), -1).mean() for x in visual.values()]
                       + [torch.logsumexp(itm.float(), -1).mean()])
        loss.backward()
        return loss

    row: dict[str, Any] = {"torch_params": sum(p.numel() for p in model.parameters()),
                           "torch_threads": torch.get_num_threads() if device == "cpu" else None}
    _put_times(row, "torch_fwd", time_calls(forward, sync, warmup, iters), batch)
    _put_times(row, "torch_fwdbwd", time_calls(forward_backward, sync, warmup, iters), batch)
    return row


# ----------------------------------------------------------------------------------------- a row


def bench_one(name: str, size: str, args: argparse.Namespace, device: jax.Device,
              torch_device: str | None) -> dict[str, Any]:
    """All measurements for one preset at one size."""
    batch, warmup, iters = _defaults(size, device.platform != "cpu", args)
    _log(f"{name}/{size}: batch {batch}, {warmup} warm-up + {iters} timed calls")
    row: dict[str, Any] = {"preset": name, "size": size, "batch": batch, "text_len": args.text_len,
                           "regions": args.regions, "dtype": args.dtype, "dropout": args.dropout,
                           "device": f"{device.platform}: {device.device_kind}", "warmup": warmup, "iters": iters,
                           "loadavg_1m_start": _loadavg()}
    jax_row, cfg = bench_jax(name, size, batch, args, warmup, iters)
    row.update(jax_row)
    if name in TORCH_ORIGINALS and torch_device is not None:
        if args.dtype == "bfloat16" and torch_device == "cpu":
            row["torch_skipped"] = "bfloat16 on CPU"
        else:
            row["torch_model"] = TORCH_ORIGINALS[name]
            row["torch_device"] = torch_device
            try:
                row.update(bench_torch(name, cfg, batch, args, torch_device, warmup, iters))
            except Exception as e:  # noqa: BLE001 -- a broken torch side must not lose the jax numbers already measured
                row["torch_error"] = f"{type(e).__name__}: {e}"
                _log(f"  torch {name}/{size} failed: {row['torch_error']}")
            else:
                row["ratio_fwd"] = row["torch_fwd_ms"] / row["fwd_ms"]
                row["ratio_fwdbwd"] = row["torch_fwdbwd_ms"] / row["fwdbwd_ms"]
    row["loadavg_1m_end"] = _loadavg()
    return row


def _loadavg() -> float | None:
    """The 1-minute load average (other processes competing for the cores skew CPU timings), where known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _summary(row: dict[str, Any]) -> str:
    text = (f"{row['preset']}/{row['size']}: fwd {row['fwd_ms']:.2f} ms/ex, fwd+bwd {row['fwdbwd_ms']:.2f} ms/ex, "
            f"compile fwd+bwd {row['compile_fwdbwd_s']:.1f}s")
    if "compile_fwdbwd_scan_s" in row:
        text += f" (scan {row['compile_fwdbwd_scan_s']:.1f}s)"
    if "torch_fwdbwd_ms" in row:
        text += f"; torch fwd+bwd {row['torch_fwdbwd_ms']:.2f} ms/ex (x{row['ratio_fwdbwd']:.2f})"
    return text


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_markdown(rows: list[dict]) -> str:
    """A markdown table of ``run``'s rows: times per example, compile times of the fwd+bwd step, and the
    1-minute load average at the start of each row (a load above the core count means contended CPU timings)."""
    time_scan = any("fwdbwd_scan_ms" in r for r in rows)
    cols = ["preset", "size", "B", "fwd ms/ex", "fwd+bwd ms/ex"] + (["fwd+bwd scan ms/ex"] if time_scan else []) + [
        "compile fwd+bwd s (no scan / scan)", "params", "torch fwd ms/ex", "torch fwd+bwd ms/ex", "torch/jax fwd",
        "torch/jax fwd+bwd", "load"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["preset"], r["size"], str(r["batch"]), f"{r['fwd_ms']:.2f}", f"{r['fwdbwd_ms']:.2f}"]
        if time_scan:
            cells.append(_fmt(r.get("fwdbwd_scan_ms"), ".2f"))
        cells += [f"{r['compile_fwdbwd_s']:.1f} / {_fmt(r.get('compile_fwdbwd_scan_s'), '.1f')}", f"{r['params']:,}",
                  _fmt(r.get("torch_fwd_ms"), ".2f"), _fmt(r.get("torch_fwdbwd_ms"), ".2f"),
                  _fmt(r.get("ratio_fwd"), ".2f"), _fmt(r.get("ratio_fwdbwd"), ".2f"),
                  _fmt(r.get("loadavg_1m_start"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """``python -m jaxvl.benchmarks.models ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
