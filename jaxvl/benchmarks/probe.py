"""``jaxvl bench probe``: speed of the compiled EMAP and MM-SHAP programs, projected to 1000 items.

Random parameters (speed does not depend on training) of each preset (default UNITER and LXMERT) at ``tiny``
(``presets.tiny_overrides``) or ``ctrl`` size (VOLTA's: 768 wide, 12 layers, 2048 features), on synthetic
items of VOLTA's compiled shapes: 38 text positions (real caption lengths drawn from 8 to 38, the rest
padding; padded positions cost the same compute) and 36 detector regions plus the global ``[IMG]`` row
(37 region rows) of random features and boxes, on one device:

- **EMAP** (``jaxvl.probes.pairs.PairProgram``): all N x N (text, image) pairings of ``--items`` N items, in
  blocks of ``--text-block`` x ``--image-block`` pairs per compiled call. Dual-stream presets (LXMERT) run
  twice, side by side: ``prefix cached`` (``cache_prefix=True``: each stream's unimodal prefix once per item,
  per pair only the cross layers and heads) and ``whole model per pair`` (``cache_prefix=False``). Each program
  call reports every block as it lands on the host (its progress callback, after the block's sums were
  added), so a call splits into blocks: ``block ms`` is the median over the timed calls of the time between
  two consecutive blocks (the first block of a call excluded), and ``setup ms / item`` the rest of a call's
  first interval (items to the device, the prefixes when cached) per item. Rates: pairs per second,
  ``text_block x image_block / block s`` (steady state);
- **MM-SHAP** (``jaxvl.probes.mmshap.MMShapProgram``, the ITM match score, regions removed by the mean
  feature): one compiled call per example, ``--permutations`` K antithetic permutation pairs, i.e. the
  program's ``C = 2 + 2 K (S - 1)`` coalitions for S = 36 text + 36 region player slots, in model batches of
  ``--chunk`` coalitions (the last padded: ``ceil(C / chunk)`` batches). Rates: coalitions per second,
  ``C / example s``; ``batch ms`` = example s / batches per example;
- **compile**: each program's first call (``first call s``: compilation and one run) comes first, untimed;
  ``compile s`` is the wall time JAX spent inside it tracing, lowering and compiling (the union of its
  ``jax.monitoring`` time spans of those three events; the persistent compilation cache off);
- **projections** at the measured steady-state rates, then plus the compile time: EMAP of N = 1000 items
  (10^6 pairs): ``ceil(1000 / text_block) x ceil(1000 / image_block)`` blocks x ``block s`` + 1000 x ``setup
  s / item`` (an upper bound: the per-call part of the setup, the parameters put on the device, is counted per
  item too) + the host's EMAP analysis at N = 1000 (``jaxvl.probes.emap.emap_metrics`` on random sums, timed
  once per run); MM-SHAP of 1000 examples at 10 permutation pairs: 1000 x ``ceil(C_10 / chunk)`` batches x
  ``batch s``, with ``C_10`` the program's coalitions per example at K = 10 (``jaxvl.probes.mmshap.coalitions``);
- LXMERT's **cache speed-up**: the whole-model-per-pair block time over the cached one (same block shape), per
  round (each round's median block of each, the two calls of a round back to back) and the median over rounds,
  so that load changing between rounds cancels; and the ratio of the two projections.

Calls of the programs of one preset and probe take turns (``--iters`` rounds), so a change in the machine's
load hits them alike; each row records the load (``jaxvl.benchmarks.common.Probe``). ``add_arguments`` and
``run`` are the hooks of ``jaxvl bench probe``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvl.benchmarks.ablate import duration
from jaxvl.benchmarks.common import (
    Probe,
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
from jaxvl.models.volta.model import VLBertForPreTraining, get_model
from jaxvl.models.volta.presets import PRESETS
from jaxvl.probes.emap import emap_metrics
from jaxvl.probes.mmshap import MMShapProgram, coalitions, player_mask, sample_ranks, slot_layout
from jaxvl.probes.pairs import PairItems, PairProgram, PairSums
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.sharding import make_mesh

SIZES = ("tiny", "ctrl")
PROBES = ("emap", "mmshap")
DEFAULT_PRESETS = ("uniter", "lxmert")
TEXT_LEN = 38  # VOLTA's max_seq_length
REGIONS = 36  # VOLTA's detector boxes (+ the global [IMG] row)
MIN_CAPTION = 8  # the shortest real text drawn ([CLS] + 6 sub-words + [SEP])
PROJECTED_ITEMS = 1000  # EMAP: N items, N^2 pairs
PROJECTED_EXAMPLES = 1000  # MM-SHAP examples
PROJECTED_PERMUTATIONS = 10  # the published MM-SHAP code's antithetic permutation pairs
MASK_ID = 1  # any id: speed does not depend on it
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")  # jax.monitoring's time spans of a compilation


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one size times: EMAP blocks and items, MM-SHAP permutations, chunk and examples, timed rounds."""

    text_block: int
    image_block: int
    items: int
    permutations: int
    chunk: int
    examples: int
    iters: int


# Defaults per (size, accelerator): ctrl on a CPU is cut down to ~6 minutes on 2 cores (4 x 4 blocks, one
# permutation pair in batches of 16 coalitions); tiny takes ~35 s there.
DEFAULTS = {("tiny", False): Settings(8, 8, 32, 10, 64, 3, 3), ("tiny", True): Settings(8, 8, 32, 10, 64, 3, 3),
            ("ctrl", False): Settings(4, 4, 8, 1, 16, 2, 3), ("ctrl", True): Settings(32, 32, 128, 10, 256, 3, 3)}


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench probe`` options to ``parser``."""
    parser.add_argument("--sizes", type=csv_choices(SIZES), default=["tiny"], metavar="SIZE[,SIZE]",
                        help="tiny (test sizes) and/or ctrl (VOLTA's controlled sizes); default tiny")
    parser.add_argument("--presets", type=csv_choices(PRESETS), default=list(DEFAULT_PRESETS), metavar="NAME[,NAME]",
                        help=f"presets (default {','.join(DEFAULT_PRESETS)}; any of {', '.join(PRESETS)})")
    parser.add_argument("--probes", type=csv_choices(PROBES), default=list(PROBES), metavar="P[,P]",
                        help="emap and/or mmshap (default both)")
    help_default = {f.name: "/".join(str(getattr(DEFAULTS[k], f.name)) for k in
                                     (("tiny", False), ("ctrl", False), ("ctrl", True)))
                    for f in dataclasses.fields(Settings)}
    for name, text in (("text_block", "EMAP texts per compiled call"), ("image_block", "EMAP images per call"),
                       ("items", "EMAP items N timed (N x N pairs per call)"),
                       ("permutations", "MM-SHAP antithetic permutation pairs K timed"),
                       ("chunk", "MM-SHAP coalitions per model batch"),
                       ("examples", "MM-SHAP examples timed per round"),
                       ("iters", "timed rounds (median reported)")):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"{text} (default tiny / ctrl on CPU / ctrl on an accelerator: {help_default[name]})")
    parser.add_argument("--text-len", type=int, default=TEXT_LEN, help=f"text positions (default VOLTA's {TEXT_LEN})")
    parser.add_argument("--regions", type=int, default=REGIONS,
                        help=f"detector regions per image, without [IMG] (default VOLTA's {REGIONS})")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="matmul dtype of the model (parameters stay float32)")
    parser.add_argument("--fast-compile", action="store_true",
                        help="compile with jaxvl.runtime.compile.FAST_COMPILE (smoke runs only, not for the numbers)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: jax.devices()[0]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the items, weights and permutations")
    parser.add_argument("--out", default=None, help="write machine info and results as JSON to this path")
    parser.add_argument("--markdown", action="store_true", help="print the markdown tables at the end")


def settings(size: str, accelerator: bool, args: argparse.Namespace) -> Settings:
    """The defaults of ``size`` on this device, explicit options winning; out-of-range values refused."""
    base = DEFAULTS[(size, accelerator)]
    chosen = Settings(**{f.name: getattr(base, f.name) if getattr(args, f.name) is None else getattr(args, f.name)
                         for f in dataclasses.fields(Settings)})
    for f in dataclasses.fields(Settings):
        if getattr(chosen, f.name) < 1:
            raise SystemExit(f"jaxvl bench probe: --{f.name.replace('_', '-')}={getattr(chosen, f.name)} must be >= 1")
    if _blocks(chosen.items, chosen) < 2:
        raise SystemExit(f"jaxvl bench probe: --items={chosen.items} gives one block of {chosen.text_block} x "
                         f"{chosen.image_block}: the block time needs at least 2 blocks per call")
    return chosen


def _check_args(args: argparse.Namespace) -> None:
    if args.text_len < 3:
        raise SystemExit(f"jaxvl bench probe: --text-len={args.text_len} must be >= 3 ([CLS], a token, [SEP])")
    if args.regions < 1:
        raise SystemExit(f"jaxvl bench probe: --regions={args.regions} must be >= 1")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by ``args`` (module doc); returns machine and rows (also written to ``--out``
    after every preset), and prints the markdown tables with ``--markdown``."""
    _check_args(args)
    device = jax_device(args.device)
    chosen = {size: settings(size, device.platform != "cpu", args) for size in args.sizes}  # refusals first
    machine = machine_info(device)
    print(format_machine(machine), flush=True)
    options = {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | list | type(None))}
    result: dict[str, Any] = {"command": " ".join(sys.argv), "options": options, "machine": machine,
                              "device": f"{device.platform}: {device.device_kind}", "rows": []}
    if "emap" in args.probes:
        result["emap_analysis_s"] = emap_analysis_seconds(PROJECTED_ITEMS, args.seed)
        log(f"EMAP analysis on the host at N = {PROJECTED_ITEMS}: {result['emap_analysis_s']:.2f} s")
    mesh = make_mesh(devices=[device])
    with no_persistent_compile_cache(), jax.default_device(device):
        for size in args.sizes:
            for name in args.presets:
                bench_preset(name, size, chosen[size], args, mesh, result)
                save_json(result, args.out)
                gc.collect()
    if args.out:
        log(f"wrote {args.out}")
    if args.markdown:
        print(format_markdown(result), flush=True)
    return result


# ------------------------------------------------------------------------------------ model and inputs


def synthetic_items(model: VLBertForPreTraining, n: int, text_len: int, regions: int, seed: int) -> PairItems:
    """``n`` items of ``text_len`` text positions (real lengths drawn from ``MIN_CAPTION`` to ``text_len``) and
    ``regions`` detector regions (+ ``[IMG]`` where the model has one), random ids, features and boxes."""
    cfg, rng = model.cfg, np.random.default_rng(seed)
    rows = regions + (cfg.add_global_imgfeat is not None)
    lengths = rng.integers(min(MIN_CAPTION, text_len), text_len + 1, n)
    text_mask = (np.arange(text_len)[None] < lengths[:, None]).astype(np.int32)
    return PairItems.from_batch(dict(
        input_ids=rng.integers(2, cfg.vocab_size, (n, text_len)) * text_mask, text_mask=text_mask,
        features=rng.random((n, rows, cfg.v_feature_size), np.float32),
        locations=rng.random((n, rows, cfg.num_locs), np.float32), region_mask=np.ones((n, rows), np.int32)))


def init_params(model: VLBertForPreTraining, items: PairItems, seed: int, options: dict[str, Any] | None) -> Any:
    """Random parameters of ``model`` (jitted ``init`` on the first item)."""
    init = jax.jit(model.init, compiler_options=options)
    return init(jax.random.key(seed), input_ids=jnp.asarray(items.input_ids[:1]),
                features=jnp.asarray(items.features[:1]), locations=jnp.asarray(items.locations[:1]))


def emap_analysis_seconds(n: int, seed: int) -> float:
    """Seconds of the host's EMAP metrics (``emap_metrics``: every pair's additive score) for ``n`` items of the
    2 ITM classes, on random sums."""
    rng = np.random.default_rng(seed)
    sums = PairSums.empty(n, 2)
    sums.row_sum[:], sums.col_sum[:] = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    start = time.perf_counter()
    emap_metrics(sums)
    return time.perf_counter() - start


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) spans in seconds (nested and overlapping spans counted once)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@contextlib.contextmanager
def compile_clock() -> Iterator[list[tuple[float, float]]]:
    """Collects the (start, end) time spans of JAX's tracing, lowering and compiling (``COMPILE_EVENTS``) inside
    the block; ``union_seconds`` of them is the compile time."""
    spans: list[tuple[float, float]] = []

    def listen(event: str, start: float, end: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            spans.append((start, end))

    jax.monitoring.register_event_time_span_listener(listen)
    try:
        yield spans
    finally:
        jax.monitoring.unregister_event_time_span_listener(listen)


def _blocks(n: int, s: Settings) -> int:
    """Blocks of the pair program for ``n`` items."""
    return math.ceil(n / s.text_block) * math.ceil(n / s.image_block)


def coalitions_per_example(permutations: int, slots: int) -> int:
    """C: the coalitions the MM-SHAP program evaluates per example for ``permutations`` pairs over ``slots``
    player slots (the shape of ``jaxvl.probes.mmshap.coalitions``)."""
    shape = jax.eval_shape(coalitions, jax.ShapeDtypeStruct((permutations, slots), jnp.int32),
                           jax.ShapeDtypeStruct((slots,), jnp.bool_))
    return int(shape.shape[0])


# ------------------------------------------------------------------------------------------ a preset


def bench_preset(name: str, size: str, s: Settings, args: argparse.Namespace, mesh: Any,
                 result: dict[str, Any]) -> None:
    """Every probe of ``args.probes`` for ``name`` at ``size``: appends its rows to ``result['rows']``."""
    options = FAST_COMPILE if args.fast_compile else None
    model = get_model(name, tiny=size == "tiny", dtype=args.dtype)
    items = synthetic_items(model, max(s.items, s.examples + 1), args.text_len, args.regions, args.seed)
    start = time.perf_counter()
    params = init_params(model, items, args.seed, options)
    common = {"preset": name, "size": size, "dtype": args.dtype, "device": result["device"],
              "text_len": args.text_len, "region_rows": int(items.region_mask.shape[1]),
              "params": int(sum(x.size for x in jax.tree.leaves(params))), "init_s": time.perf_counter() - start,
              "fast_compile": bool(args.fast_compile), "iters": s.iters}
    log(f"{name}/{size}: {common['params']:,} parameters, {args.text_len} text positions x "
        f"{common['region_rows']} region rows")
    if "emap" in args.probes:
        result["rows"] += bench_emap(model, params, items, s, mesh, options, common, result["emap_analysis_s"])
    if "mmshap" in args.probes:
        result["rows"].append(bench_mmshap(model, params, items, s, mesh, options, args.seed, common))


def _timed_call(program: PairProgram, params: Any, items: PairItems) -> tuple[float, list[float]]:
    """One program call: (seconds, the intervals between its start and each block's arrival on the host)."""
    stamps: list[float] = []
    start = time.perf_counter()
    program(params, items, lambda _pairs: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    return total, np.diff([start, *stamps]).tolist()


def bench_emap(model: VLBertForPreTraining, params: Any, all_items: PairItems, s: Settings, mesh: Any,
               options: dict[str, Any] | None, common: dict[str, Any], analysis_s: float) -> list[dict[str, Any]]:
    """The EMAP rows of one preset: one per prefix variant (cached and not, for dual-stream models)."""
    items = PairItems(**{k: v[:s.items] for k, v in dataclasses.asdict(all_items).items()})
    variants = [True, False] if model.cfg.unimodal_prefix > 0 else [False]
    programs = {cache: PairProgram(model, mesh, s.text_block, s.image_block, cache_prefix=cache,
                                   compiler_options=options) for cache in variants}
    first, compile_s = {}, {}
    for cache, program in programs.items():
        with compile_clock() as spans:
            first[cache] = _timed_call(program, params, items)[0]
        compile_s[cache] = union_seconds(spans)
    probe = Probe()
    calls: dict[bool, list[tuple[float, list[float]]]] = {cache: [] for cache in variants}
    for _ in range(s.iters):
        for cache, program in programs.items():
            calls[cache].append(_timed_call(program, params, items))
    load = probe.finish()
    rows = []
    for cache in variants:
        totals = [t for t, _ in calls[cache]]
        blocks = [b for _, intervals in calls[cache] for b in intervals[1:]]
        block_s = statistics.median(blocks)
        call_s = statistics.median(totals)
        setup_s = max(0.0, statistics.median(i[0] for _, i in calls[cache]) - block_s) / s.items
        row = {**common, **load, "probe": "emap", "variant": "prefix cached" if cache else "whole model per pair",
               "cache_prefix": cache, "items": s.items, "pairs_per_call": s.items ** 2,
               "text_block": s.text_block, "image_block": s.image_block,
               "pairs_per_block": s.text_block * s.image_block,
               "blocks_per_call": _blocks(s.items, s), "first_call_s": first[cache], "call_s": call_s,
               "call_runs_s": [round(t, 6) for t in totals],
               "compile_s": compile_s[cache], "block_ms": 1e3 * block_s,
               "block_runs_ms": [round(1e3 * b, 4) for b in blocks],
               "block_round_ms": [1e3 * statistics.median(i[1:]) for _, i in calls[cache]],
               "setup_ms_per_item": 1e3 * setup_s,
               "pairs_per_s": s.text_block * s.image_block / block_s, "call_pairs_per_s": s.items ** 2 / call_s,
               "analysis_s": analysis_s}
        add_emap_projection(row)
        rows.append(row)
    if len(rows) == 2:
        cached, whole = rows
        cached["cache_speedup_rounds"] = [w / c for w, c in zip(whole["block_round_ms"], cached["block_round_ms"],
                                                                strict=True)]
        cached["cache_speedup"] = statistics.median(cached["cache_speedup_rounds"])
        cached["cache_projected_speedup"] = whole["projected_s"] / cached["projected_s"]
    for row in rows:
        log("  " + _emap_summary(row))
    return rows


def add_emap_projection(row: dict[str, Any], n: int = PROJECTED_ITEMS) -> None:
    """The projected seconds for EMAP of ``n`` items (module doc), steady state and with the compile time."""
    blocks = math.ceil(n / row["text_block"]) * math.ceil(n / row["image_block"])
    row.update(projection_items=n, projection_pairs=n * n, projection_blocks=blocks)
    row["projected_s"] = (blocks * row["block_ms"] + n * row["setup_ms_per_item"]) / 1e3 + row["analysis_s"]
    row["projected_with_compile_s"] = row["projected_s"] + row["compile_s"]


def bench_mmshap(model: VLBertForPreTraining, params: Any, items: PairItems, s: Settings, mesh: Any,
                 options: dict[str, Any] | None, seed: int, common: dict[str, Any]) -> dict[str, Any]:
    """The MM-SHAP row of one preset: ``s.examples`` timed examples per round after one compiling example."""
    mean = items.features.reshape(-1, items.features.shape[-1]).mean(0)
    program = MMShapProgram(model, MASK_ID, "mean", mean, chunk=s.chunk, mesh=mesh, compiler_options=options)
    text_pos, rows = slot_layout(items.input_ids.shape[1], items.region_mask.shape[1], program.add_global)
    slots = len(text_pos) + len(rows)
    rng = np.random.default_rng(seed)

    def example(i: int) -> Callable[[], Any]:
        player = player_mask(items.text_mask[i], items.region_mask[i], program.add_global)
        ranks = sample_ranks(rng, player, s.permutations)
        return lambda: program.example(params, items, i, ranks)

    start = time.perf_counter()
    with compile_clock() as spans:
        example(0)()
    first_s = time.perf_counter() - start
    calls = [example(1 + i) for i in range(s.examples)]
    probe = Probe()
    times = []
    for _ in range(s.iters):
        for call in calls:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    load = probe.finish()
    c = coalitions_per_example(s.permutations, slots)
    example_s = statistics.median(times)
    row = {**common, **load, "probe": "mmshap", "variant": f"K = {s.permutations}, chunk {s.chunk}",
           "permutations": s.permutations, "slots": slots, "coalitions_per_example": c, "chunk": s.chunk,
           "batches_per_example": math.ceil(c / s.chunk), "examples": s.examples, "first_call_s": first_s,
           "example_ms": 1e3 * example_s, "example_runs_ms": [round(1e3 * t, 4) for t in times],
           "compile_s": union_seconds(spans), "coalitions_per_s": c / example_s,
           "batch_ms": 1e3 * example_s / math.ceil(c / s.chunk)}
    add_mmshap_projection(row, coalitions_per_example(PROJECTED_PERMUTATIONS, slots))
    log("  " + _mmshap_summary(row))
    return row


def add_mmshap_projection(row: dict[str, Any], coalitions_10: int, n: int = PROJECTED_EXAMPLES) -> None:
    """The projected seconds for MM-SHAP of ``n`` examples of ``coalitions_10`` coalitions each (module doc)."""
    batches = math.ceil(coalitions_10 / row["chunk"])
    row.update(projection_examples=n, projection_permutations=PROJECTED_PERMUTATIONS,
               projection_coalitions_per_example=coalitions_10, projection_batches_per_example=batches)
    row["projected_s"] = n * batches * row["batch_ms"] / 1e3
    row["projected_with_compile_s"] = row["projected_s"] + row["compile_s"]


# ---------------------------------------------------------------------------------------- reporting


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _emap_summary(row: dict[str, Any]) -> str:
    text = (f"emap {row['variant']}: compile {row['compile_s']:.1f} s, {row['block_ms']:.1f} ms per "
            f"{row['pairs_per_block']}-pair block = {_rate(row['pairs_per_s'])} pairs/s; N = 1000 "
            f"{duration(row['projected_s'])}")
    return text + (f"; cache speed-up {row['cache_speedup']:.2f}x" if "cache_speedup" in row else "")


def _mmshap_summary(row: dict[str, Any]) -> str:
    return (f"mmshap {row['variant']}: compile {row['compile_s']:.1f} s, {row['example_ms']:.0f} ms per example of "
            f"{row['coalitions_per_example']} coalitions = {_rate(row['coalitions_per_s'])} coalitions/s; 1000 "
            f"examples at K = {PROJECTED_PERMUTATIONS}: {duration(row['projected_s'])}")


def format_markdown(result: dict[str, Any]) -> str:
    """The EMAP and MM-SHAP rows as markdown tables (with the device and what the units are) for BENCHMARKS.md."""
    lines = [f"Device: {result['device']}; {result['machine']['cpu']}, {result['machine']['cores']} cores. Random "
             "parameters; median of the timed calls; compile = JAX's tracing, lowering and compiling in the first "
             "call; load = 1-min load average "
             "at the start / end of the timing (cores other processes kept busy)."]
    emap = [r for r in result["rows"] if r["probe"] == "emap"]
    if emap:
        lines += ["", f"EMAP (N x N pairs of the ITM head; host EMAP analysis at N = {PROJECTED_ITEMS}: "
                  f"{result['emap_analysis_s']:.2f} s, included in the projection):", "", markdown_table(
                      ["preset", "size", "variant", "N timed (pairs)", "block (pairs)", "compile s", "ms / block",
                       "setup ms / item", "pairs / s", "cache speed-up", "N = 1000 (10^6 pairs)", "+ compile",
                       "load (other cores)"],
                      [[r["preset"], r["size"], r["variant"], f"{r['items']} ({r['pairs_per_call']:,})",
                        f"{r['text_block']} x {r['image_block']}", f"{r['compile_s']:.1f}", f"{r['block_ms']:,.1f}",
                        f"{r['setup_ms_per_item']:.2f}", _rate(r["pairs_per_s"]),
                        fmt(r.get("cache_speedup"), ".2f") + ("x" if "cache_speedup" in r else ""),
                        duration(r["projected_s"]), duration(r["projected_with_compile_s"]), load_cell(r)]
                       for r in emap])]
    shap = [r for r in result["rows"] if r["probe"] == "mmshap"]
    if shap:
        lines += ["", f"MM-SHAP (one compiled call per example; projection: {PROJECTED_EXAMPLES} examples at "
                  f"K = {PROJECTED_PERMUTATIONS} permutation pairs):", "", markdown_table(
                      ["preset", "size", "K timed", "player slots", "coalitions / example", "chunk",
                       "examples timed x rounds", "compile s", "ms / example", "coalitions / s",
                       f"coalitions / example at K = {PROJECTED_PERMUTATIONS}", "1000 examples", "+ compile",
                       "load (other cores)"],
                      [[r["preset"], r["size"], r["permutations"], r["slots"], f"{r['coalitions_per_example']:,}",
                        r["chunk"], f"{r['examples']} x {r['iters']}", f"{r['compile_s']:.1f}",
                        f"{r['example_ms']:,.0f}", _rate(r["coalitions_per_s"]),
                        f"{r['projection_coalitions_per_example']:,}", duration(r["projected_s"]),
                        duration(r["projected_with_compile_s"]), load_cell(r)] for r in shap])]
    return "\n".join(lines)


__all__ = ["DEFAULTS", "PROBES", "SIZES", "Settings", "add_arguments", "add_emap_projection", "add_mmshap_projection",
           "coalitions_per_example", "compile_clock", "format_markdown", "run", "settings", "synthetic_items",
           "union_seconds"]
