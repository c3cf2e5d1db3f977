"""``jaxvl bench pretrain``: the full pretraining step per preset, its model FLOPs utilisation, and sweeps.

For each preset and size (``tiny``: ``presets.tiny_overrides``; ``ctrl``: VOLTA's controlled sizes) at
VOLTA's input sizes (38 tokens, 36 regions + the global ``[IMG]`` row, 2048-d features at ctrl,
1601-way MRC-KL targets), on one device:

- the trainer's step (``jaxvl.pretrain.step``: ITM negatives, token and region masking with co-masking,
  forward, backward, clipped AdamW; dropout on), jitted with the state donated, on a random batch
  with every field the data pipeline yields;
- compile time: wall time of AOT ``lower`` plus ``compile`` (the persistent compilation cache is off),
  and the compiled step's per-device memory estimate (``step.memory_stats``);
- steps/s and examples/s: the median of N timed steps after warm-up steps, each ended by
  ``block_until_ready``;
- model FLOPs utilisation: analytic FLOPs of the step (``jaxvl.pretrain.flops``, MaxText's convention)
  / step time / the machine's matmul peak, which this benchmark measures itself (a large square
  matmul in float32, and in bfloat16 on a GPU or when ``--dtype bfloat16``; the best of several
  calls, measured again before every row, since other processes on a shared CPU pull any single
  measurement down; the best of the whole run is the peak). MFU is taken against the peak of the
  step's matmul dtype. XLA's own FLOP count of the compiled step (``cost_analysis``: matmuls plus
  elementwise work, masking, RNG and the optimizer) is recorded beside it;
- a K-member sweep (``jaxvl.pretrain.sweep``, members differing in seed) against K sequential single
  runs of the same model in the same process, which reuse the single step compiled above (timed
  interleaved with the sweep, ``bench_sweep``): each run's median step time and the sweep's, their
  throughput in member-steps/s, the ratio, and the sweep step's compile time and memory.

Each row records the 1-minute load average at its start and end, and the cores other processes kept
busy meanwhile (``jaxvl.benchmarks.common.Probe``): a shared machine skews every timing here.
``add_arguments`` and ``run`` are the hooks of ``jaxvl bench pretrain``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvl.benchmarks.common import (
    Probe,
    aot_compile,
    csv_choices,
    fmt,
    format_machine,
    jax_device,
    load_cell,
    loadavg,
    log,
    machine_info,
    markdown_table,
    no_persistent_compile_cache,
    put_times,
    save_json,
    time_calls,
)
from jaxvl.models.layers import WEIGHT_GRAD_DTYPES
from jaxvl.models.params import count_params
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import VLBertForPreTraining, get_model
from jaxvl.models.volta.presets import PRESETS
from jaxvl.pretrain.flops import forward_flops, train_flops
from jaxvl.pretrain.loss import ObjectiveConfig
from jaxvl.pretrain.step import init_state, jit_train_step, state_shardings
from jaxvl.pretrain.sweep import init_sweep_state, jit_sweep_step, members_from_config, sweep_state_shardings
from jaxvl.runtime.compile import FAST_COMPILE, memory_stats, xla_flops
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import batch_sharding, make_mesh

SIZES = ("tiny", "ctrl")
DTYPES = ("float32", "bfloat16")
TEXT_LEN = 38  # VOLTA's max_seq_length
REGIONS = 37  # VOLTA's 36 boxes + the global [IMG] row
PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3  # special ids of the random batch; words are drawn from [5, vocab)
IMAGE_SIZE = 600.0  # pixel side of the random images the boxes lie in

Batch = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------- CLI


class _Flatten(argparse.Action):
    """``--x a,b c``: the lists of every value joined (replacing the default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [x for value in values for x in value])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench pretrain`` options to ``parser``."""
    lists = dict(nargs="+", action=_Flatten)
    parser.add_argument("--presets", type=csv_choices(PRESETS), default=list(PRESETS), metavar="NAME[,NAME]", **lists,
                        help=f"presets to run (default: all of {','.join(PRESETS)})")
    parser.add_argument("--sizes", type=csv_choices(SIZES), default=list(SIZES), metavar="SIZE[,SIZE]", **lists,
                        help="tiny (test sizes) and/or ctrl (VOLTA's controlled sizes); default tiny,ctrl")
    parser.add_argument("--batch", type=int, default=None,
                        help="global batch size (default: 8 for tiny; for ctrl 8 on CPU, 256 on an accelerator)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps, median reported (default: 20; 3 for ctrl on CPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default: 3; 1 for ctrl on CPU)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="matmul dtype of the model (parameters and optimizer state stay float32)")
    parser.add_argument("--weight-grad-dtype", choices=WEIGHT_GRAD_DTYPES, default="float32",
                        help="below float32: the dtype the dense layers' weight gradients come out in, float32 "
                             "(default) or compute (the matmul dtype; model.weight_grad_dtype)")
    parser.add_argument("--scan-layers", action="store_true",
                        help="scanned layer stacks (scan_layers=True): faster compiles on an accelerator")
    parser.add_argument("--fast-compile", action="store_true",
                        help="compile with jaxvl.runtime.compile.FAST_COMPILE (faster CPU compiles, slower "
                             "programs: smoke runs only, not for the numbers)")
    parser.add_argument("--text-len", type=int, default=TEXT_LEN, help="text length (default: VOLTA's 38)")
    parser.add_argument("--regions", type=int, default=REGIONS, help="regions incl. [IMG] (default: VOLTA's 37)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="auto: jax.devices()[0]")
    parser.add_argument("--sweep-k", type=int, default=4, help="sweep members (default 4; 0 skips the sweep)")
    parser.add_argument("--sweep-presets", type=csv_choices(PRESETS), default=None, metavar="NAME[,NAME]", **lists,
                        help="presets whose sweep is measured (default: every preset run)")
    parser.add_argument("--sweep-sizes", type=csv_choices(SIZES), default=["tiny"], metavar="SIZE[,SIZE]", **lists,
                        help="sizes at which the sweep is measured (default: tiny)")
    parser.add_argument("--sweep-steps", type=int, default=None,
                        help="timed steps of the sweep and of each sequential run (default: --steps' value)")
    parser.add_argument("--peak-n", type=int, default=None,
                        help="side of the square matmul that measures the peak (default: 4096 on an "
                             "accelerator, 2048 on CPU)")
    parser.add_argument("--peak-tries", type=int, default=10, help="timed peak matmul calls, best kept (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch and of the single runs (default 0)")
    parser.add_argument("--out", default=None, help="write machine info and results as JSON to this path")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by ``args`` (see ``add_arguments``); returns machine, peaks, rows, sweeps."""
    for flag in ("batch", "steps", "warmup", "sweep_steps", "peak_n"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "warmup" else 1):
            raise SystemExit(f"jaxvl bench pretrain: --{flag.replace('_', '-')}={value} is out of range")
    if args.sweep_k < 0 or args.text_len < 3 or args.regions < 2:
        raise SystemExit("jaxvl bench pretrain: need --sweep-k >= 0, --text-len >= 3 and --regions >= 2")
    device = jax_device(args.device)
    machine = machine_info(device)
    print(format_machine(machine), flush=True)
    sweep_presets = args.presets if args.sweep_presets is None else args.sweep_presets
    accelerator = device.platform != "cpu"
    dtypes = ["float32", *(["bfloat16"] if accelerator or args.dtype == "bfloat16" else [])]
    result: dict[str, Any] = {"command": " ".join(sys.argv), "machine": machine, "peaks": {},
                              "peak_measurements": [], "rows": [], "sweeps": []}
    n, reps = args.peak_n or (4096 if accelerator else 2048), 10 if accelerator else 1

    def save() -> None:  # after every row, so that a run cut short keeps what it measured
        add_mfu(result)
        save_json(result, args.out)

    with no_persistent_compile_cache(), jax.default_device(device):
        for size in args.sizes:
            for name in args.presets:
                for dtype in dtypes:
                    update_peak(result, measure_matmul_peak(dtype, n, reps, args.peak_tries))
                sweep_k = args.sweep_k if name in sweep_presets and size in args.sweep_sizes else 0
                bench_one(name, size, args, device, sweep_k, result, save)
                gc.collect()
    save()
    print(format_markdown(result), flush=True)
    return result


# ------------------------------------------------------------------------------------- the peak


def measure_matmul_peak(dtype: str, n: int, reps: int, tries: int) -> dict[str, Any]:
    """The best FLOP/s of ``reps`` chained ``[n, n] x [n, n]`` matmuls in ``dtype`` (one jitted call, float32
    accumulation as the model's; ``b`` scaled by ``1/sqrt(n)`` so values stay O(1)) over ``tries`` timed calls
    after one warm-up, on the default device."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
    b = (jax.random.normal(kb, (n, n), jnp.float32) / np.sqrt(n)).astype(dtype)

    def chain(a, b):
        return jax.lax.fori_loop(0, reps, lambda _, x: jnp.dot(x, b, preferred_element_type=jnp.float32)
                                 .astype(x.dtype), a)

    fn = jax.jit(chain)
    times = time_calls(lambda: fn(a, b), jax.block_until_ready, 1, tries)
    flops = 2 * n**3 * reps
    best = min(times)
    return {"dtype": dtype, "n": n, "reps": reps, "tries": tries, "flops": flops, "best_s": best,
            "flops_per_s": flops / best, "runs_s": [round(t, 6) for t in times]}


def update_peak(result: dict[str, Any], peak: dict[str, Any]) -> None:
    """Records a ``measure_matmul_peak`` result; ``result['peaks'][dtype]`` keeps the best so far."""
    result["peak_measurements"].append({**peak, "loadavg_1m": loadavg()})
    best = result["peaks"].get(peak["dtype"])
    if best is None or peak["flops_per_s"] > best["flops_per_s"]:
        result["peaks"][peak["dtype"]] = peak
    log(f"matmul peak, {peak['dtype']}: {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s now, "
        f"{result['peaks'][peak['dtype']]['flops_per_s'] / 1e9:,.1f} GFLOP/s best so far")


# ---------------------------------------------------------------------------------------- the batch


def make_batch(cfg: VLConfig, batch: int, text_len: int, regions: int, seed: int) -> Batch:
    """A random pretraining batch with every field of ``jaxvl.data.grain`` (``num_boxes`` aside).

    Text: ``[CLS] words [SEP]`` of random lengths, padded. Regions: the ``[IMG]`` row first (the mean of
    the others), then ``regions - 1`` real boxes (VOLTA's fixed 36) in a square image, random features,
    and a detector distribution over ``cfg.num_object_classes + 1`` classes with its argmax and confidence.
    """
    rng = np.random.default_rng(seed)
    boxes_n, classes = regions - 1, cfg.num_object_classes + 1
    ids = np.full((batch, text_len), PAD_ID, np.int32)
    for i, n in enumerate(rng.integers(1, text_len - 1, batch)):
        ids[i, :n + 2] = [CLS_ID, *rng.integers(5, cfg.vocab_size, n), SEP_ID]
    xy = rng.uniform(0, IMAGE_SIZE / 2, (batch, boxes_n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, IMAGE_SIZE / 2, (batch, boxes_n, 2))], -1)
    loc = boxes / IMAGE_SIZE
    locations = np.concatenate([loc, ((loc[..., 2] - loc[..., 0]) * (loc[..., 3] - loc[..., 1]))[..., None]], -1)
    feats = rng.standard_normal((batch, boxes_n, cfg.v_feature_size), np.float32)
    logits = rng.standard_normal((batch, boxes_n, classes), np.float32) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ones, zeros = np.ones((batch, 1)), np.zeros((batch, 1))
    out = dict(
        input_ids=ids, text_mask=(ids != PAD_ID).astype(np.int32), token_type_ids=np.zeros_like(ids),
        features=np.concatenate([feats.mean(1, keepdims=True), feats], 1),
        locations=np.concatenate([np.tile([[[0.0, 0.0, 1.0, 1.0, 1.0]]], (batch, 1, 1)), locations], 1),
        region_mask=np.ones((batch, regions), np.int32),
        region_target_mask=np.concatenate([zeros, np.ones((batch, boxes_n))], 1).astype(np.int32),
        boxes=np.concatenate([np.tile([[[0.0, 0.0, IMAGE_SIZE, IMAGE_SIZE]]], (batch, 1, 1)), boxes], 1),
        cls_prob=np.concatenate([np.zeros((batch, 1, classes)), probs], 1),
        objects_id=np.concatenate([-ones, probs[..., 1:].argmax(-1)], 1).astype(np.int32),
        objects_conf=np.concatenate([zeros, probs[..., 1:].max(-1)], 1),
    )
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in out.items()}


# ------------------------------------------------------------------------------------------ helpers


def _defaults(size: str, accelerator: bool, args: argparse.Namespace) -> tuple[int, int, int]:
    """(batch, warmup, steps) for ``size``: explicit options win."""
    slow = size == "ctrl" and not accelerator
    batch = args.batch or (8 if size == "tiny" or not accelerator else 256)
    warmup = args.warmup if args.warmup is not None else (1 if slow else 3)
    steps = args.steps or (3 if slow else 20)
    return batch, warmup, steps


def _aot(jitted: Any, state: Any, batch: Any, mesh: Any) -> tuple[Any, float, float]:
    """(compiled, lower seconds, compile seconds) of ``jitted.lower(state, batch).compile()`` under ``mesh``."""
    with jax.set_mesh(mesh):
        return aot_compile(jitted, state, batch)


def time_steps(compiled: Any, state: Any, batch: Any, warmup: int, steps: int) -> tuple[list[float], Any]:
    """Seconds per call of the donating ``compiled(state, batch) -> (state, metrics)``, each ended by
    ``block_until_ready``, after ``warmup`` untimed calls. Returns the times and the final state."""
    holder = [state]

    def call():
        holder[0], metrics = compiled(holder[0], batch)
        return holder[0], metrics

    times = time_calls(call, jax.block_until_ready, warmup, steps)
    return times, holder[0]


def add_mfu(result: dict[str, Any]) -> None:
    """Sets every row's and sweep's achieved FLOP/s and MFU against the best peak of its dtype so far."""
    for row in result["rows"]:
        peak = result["peaks"][row["dtype"]]["flops_per_s"]
        row["achieved_flops_per_s"] = row["train_flops_per_step"] / (row["step_ms"] / 1e3)
        row["mfu"] = row["achieved_flops_per_s"] / peak
    for sweep in result["sweeps"]:
        peak = result["peaks"][sweep["dtype"]]["flops_per_s"]
        member_flops = sweep["train_flops_per_step"]
        sweep["sequential_mfu"] = member_flops * sweep["sequential_member_steps_per_s"] / peak
        sweep["sweep_mfu"] = member_flops * sweep["sweep_member_steps_per_s"] / peak


# --------------------------------------------------------------------------------------------- a row


def bench_one(name: str, size: str, args: argparse.Namespace, device: jax.Device, sweep_k: int,
              result: dict[str, Any], save: Callable[[], None]) -> None:
    """The single-run step of preset ``name`` at ``size``, then (``sweep_k`` > 0) the sweep comparison; each
    appended to ``result['rows']`` / ``result['sweeps']`` as soon as measured, then ``save()`` called."""
    batch_size, warmup, steps = _defaults(size, device.platform != "cpu", args)
    log(f"{name}/{size}: batch {batch_size}, {args.dtype}, {warmup} warm-up + {steps} timed steps")
    probe = Probe()
    model = get_model(name, tiny=size == "tiny", dtype=args.dtype, scan_layers=args.scan_layers,
                      weight_grad_dtype=args.weight_grad_dtype)
    cfg = model.cfg
    mesh = make_mesh(1, 1, 1, devices=[device])
    batch = jax.device_put(make_batch(cfg, batch_size, args.text_len, args.regions, args.seed), batch_sharding(mesh))
    ocfg = ObjectiveConfig(mask_id=MASK_ID, cls_id=CLS_ID, sep_id=SEP_ID)
    opt_cfg = OptimizerConfig()
    tx = make_optimizer(opt_cfg)
    shardings = state_shardings(model, tx, batch, mesh)

    options = FAST_COMPILE if args.fast_compile else None
    start = time.perf_counter()
    state = jax.block_until_ready(init_state(model, tx, jax.random.key(args.seed), batch, mesh,
                                             compiler_options=options))
    init_s = time.perf_counter() - start
    jitted = jit_train_step(model, ocfg, tx, mesh, shardings, batch_sharding(mesh), options)
    compiled, lower_s, compile_s = _aot(jitted, state, batch, mesh)
    log(f"  compiled in {lower_s + compile_s:.1f} s (lower {lower_s:.1f} s)")
    fwd = forward_flops(cfg, args.text_len, args.regions)
    step_flops = train_flops(cfg, args.text_len, args.regions) * batch_size
    xla = xla_flops(compiled)
    row: dict[str, Any] = {
        "preset": name, "size": size, "batch": batch_size, "dtype": args.dtype,
        "weight_grad_dtype": args.weight_grad_dtype, "text_len": args.text_len,
        "regions": args.regions, "scan_layers": args.scan_layers, "fast_compile": args.fast_compile,
        "device": f"{device.platform}: {device.device_kind}", "warmup": warmup,
        "steps": steps, "params": count_params(state.params), "init_s": init_s, "lower_s": lower_s,
        "compile_s": lower_s + compile_s, "memory": memory_stats(compiled),
        "forward_flops_per_example": fwd, "train_flops_per_step": step_flops, "xla_flops_per_step": xla,
        "xla_over_analytic": None if xla is None else xla / step_flops,
    }
    times, state = time_steps(compiled, state, batch, warmup, steps)
    step_s = put_times(row, "step", times)
    row.update(steps_per_s=1 / step_s, examples_per_s=batch_size / step_s, **probe.finish())
    result["rows"].append(row)
    save()
    log(_summary(row))
    del state
    if sweep_k:
        result["sweeps"].append(bench_sweep(model, ocfg, opt_cfg, compiled, row, batch, mesh, sweep_k, args))
        save()


def bench_sweep(model: VLBertForPreTraining, ocfg: ObjectiveConfig, opt_cfg: OptimizerConfig, single: Any,
                row: dict[str, Any], batch: Any, mesh: Any, k: int, args: argparse.Namespace) -> dict[str, Any]:
    """K sequential single runs (seeds ``args.seed + i``, each a fresh state through the compiled ``single``
    step) against one K-member sweep (members ``seed<i>``: the same seeds) of ``model`` on ``batch``.

    The two are interleaved so that a change in the machine's load hits both alike: the sweep is compiled
    and warmed up, then each single run (warm-up + N timed steps) is followed by ``ceil(N / K)`` timed
    sweep steps. Throughput: K / (sum of the runs' median step times) against K / (the sweep's median).
    """
    warmup, steps = row["warmup"], args.sweep_steps or row["steps"]
    block = -(-steps // k)
    log(f"  sweep: {k} sequential single runs ({warmup} warm-up + {steps} timed steps each), interleaved with "
        f"{block} timed step(s) of one {k}-member sweep after each")
    probe = Probe()
    members = members_from_config([{"name": f"seed{args.seed + i}", "seed": args.seed + i} for i in range(k)],
                                  model.cfg, ocfg, opt_cfg, seed=args.seed)
    sweep_tx = make_optimizer(opt_cfg, injected_peak=True)
    shardings = sweep_state_shardings(model, sweep_tx, batch, mesh, k)
    options = FAST_COMPILE if args.fast_compile else None
    sweep_state = jax.block_until_ready(init_sweep_state(model, sweep_tx, members, batch, mesh,
                                                         compiler_options=options))
    jitted = jit_sweep_step(model, ocfg, sweep_tx, mesh, shardings, batch_sharding(mesh), options)
    compiled, lower_s, compile_s = _aot(jitted, sweep_state, batch, mesh)
    log(f"  sweep compiled in {lower_s + compile_s:.1f} s")
    _, sweep_state = time_steps(compiled, sweep_state, batch, 0, warmup)

    tx = make_optimizer(opt_cfg)
    run_ms, sweep_times = [], []
    for i in range(k):
        state = init_state(model, tx, jax.random.key(args.seed + i), batch, mesh, compiler_options=options)
        times, state = time_steps(single, state, batch, warmup, steps)
        run_ms.append(1e3 * statistics.median(times))
        del state
        times, sweep_state = time_steps(compiled, sweep_state, batch, 0, block)
        sweep_times += times
    del sweep_state
    timing: dict[str, Any] = {}
    sweep_s, sequential_s = put_times(timing, "step", sweep_times), sum(run_ms) / 1e3
    out = {
        "preset": row["preset"], "size": row["size"], "batch": row["batch"], "dtype": row["dtype"], "k": k,
        "warmup": warmup, "steps": steps, "sweep_steps": len(sweep_times), "single_compile_s": row["compile_s"],
        "sweep_lower_s": lower_s, "sweep_compile_s": lower_s + compile_s, "sequential_run_step_ms": run_ms,
        "sequential_member_steps_per_s": k / sequential_s, "sweep_step_ms": timing["step_ms"],
        "sweep_step_runs_ms": timing["step_runs_ms"], "sweep_member_steps_per_s": k / sweep_s,
        "throughput_ratio": sequential_s / sweep_s, "sweep_memory": memory_stats(compiled),
        "train_flops_per_step": row["train_flops_per_step"], **probe.finish(),
    }
    log(f"  sweep: {out['sweep_member_steps_per_s']:.2f} member-steps/s vs sequential "
        f"{out['sequential_member_steps_per_s']:.2f} (x{out['throughput_ratio']:.2f}); compile "
        f"{out['sweep_compile_s']:.1f} s vs {out['single_compile_s']:.1f} s")
    return out


# ------------------------------------------------------------------------------------------- output


def _summary(row: dict[str, Any]) -> str:
    return (f"{row['preset']}/{row['size']}: {row['step_ms']:.1f} ms/step = {row['steps_per_s']:.2f} steps/s = "
            f"{row['examples_per_s']:.1f} ex/s; {row['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s = MFU "
            f"{100 * row['mfu']:.1f}% (best peak so far); compile {row['compile_s']:.1f} s")


def _dtype_cell(row: dict[str, Any]) -> str:
    """The matmul dtype; below float32 with ``weight_grad_dtype=compute``, also that the weight gradients are too."""
    if row["dtype"] != "float32" and row.get("weight_grad_dtype") == "compute":
        return f"{row['dtype']} (weight grads {row['dtype']})"
    return row["dtype"]


def _mib(memory: dict[str, int], key: str = "peak_estimate_in_bytes") -> str:
    return fmt(memory.get(key) / 2**20 if key in memory else None, ",.0f")


def _gflops(value: float) -> str:
    return f"{value / 1e9:,.1f}"


def format_markdown(result: dict[str, Any]) -> str:
    """The peaks, the step table and the sweep table, as markdown to paste into BENCHMARKS.md."""
    lines = [f"- matmul peak, {dtype}: {_gflops(p['flops_per_s'])} GFLOP/s ({p['reps']} x {p['n']}^3 per call; the "
             f"best of {p['tries']} calls x {sum(m['dtype'] == dtype for m in result['peak_measurements'])} "
             f"measurements, one before each row)" for dtype, p in result["peaks"].items()]
    cols = ["preset", "size", "B", "dtype", "compile s", "ms/step", "steps/s", "examples/s", "GFLOP/example",
            "GFLOP/s", "MFU %", "XLA / analytic FLOPs", "peak memory MiB", "load start / end (other cores)"]
    rows = [[r["preset"], r["size"], r["batch"], _dtype_cell(r), f"{r['compile_s']:.1f}", f"{r['step_ms']:.1f}",
             f"{r['steps_per_s']:.2f}", f"{r['examples_per_s']:.1f}",
             f"{r['train_flops_per_step'] / r['batch'] / 1e9:.3g}", _gflops(r["achieved_flops_per_s"]),
             f"{100 * r['mfu']:.1f}", fmt(r["xla_over_analytic"], ".2f"), _mib(r["memory"]), load_cell(r)]
            for r in result["rows"]]
    lines += ["", markdown_table(cols, rows)]
    if result["sweeps"]:
        cols = ["preset", "size", "K", "B", "compile s single / sweep", "sequential member-steps/s",
                "sweep member-steps/s", "sweep / sequential", "MFU % sequential / sweep", "sweep peak memory MiB",
                "load start / end (other cores)"]
        rows = [[s["preset"], s["size"], s["k"], s["batch"],
                 f"{s['single_compile_s']:.1f} / {s['sweep_compile_s']:.1f}",
                 f"{s['sequential_member_steps_per_s']:.2f}", f"{s['sweep_member_steps_per_s']:.2f}",
                 f"**{s['throughput_ratio']:.2f}x**", f"{100 * s['sequential_mfu']:.1f} / {100 * s['sweep_mfu']:.1f}",
                 _mib(s["sweep_memory"]), load_cell(s)] for s in result["sweeps"]]
        lines += ["", markdown_table(cols, rows)]
    return "\n".join(lines)
