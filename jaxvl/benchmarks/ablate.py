"""``jaxvl bench ablate``: the cross-modal input ablation as ONE compiled sweep against a per-condition loop.

For each preset and size (``tiny``: ``presets.tiny_overrides``; ``ctrl``: VOLTA's controlled sizes, 768
wide, 12 layers, vocabulary 30522, 1601 detector classes) and each number K of stacked checkpoints
(random weights, one seed each), on one batch of ablation examples of VOLTA's shapes (38 tokens, 36
detector regions + the ``[IMG]`` row x ``v_feature_size``; default 16 rows, VOLTA's TASK18 batch) built
by the real pipeline (``world_ablation_source`` -> ``scan_ablation`` -> ``ablation_dataset``, with
LabelMatch labels) from a synthetic world at the model's feature size and class count:

- **sweep**: ``AblationSweep`` over every member of the spec (default: 3 vis4lang + 3 lang4vis conditions
  over 10 IoT thresholds = 12 + 30 = 42 members) and the K checkpoints, in one program. ``--member-batch``
  lists variants of it, timed side by side: ``vmap`` (every member at once, ``member_batch_size=None``) and
  N (``lax.map`` over chunks of N members inside the same single program); ``--rows`` lists where the heads
  run: ``scored`` (the default: the MLM head at the phrase's sub-words, the visual heads at the target region)
  and ``every`` (at every text position and region, as before), and ``--prefix`` whether dual-stream models
  run each stream's unimodal prefix once per distinct input (``shared``, the default) or per member
  (``each``), also side by side;
- **loop**: the plain alternative, one jitted evaluation per member: an ``AblationSpec`` holding a single
  condition and threshold, each its own ``AblationSweep`` of K = 1, called in Python for every member and
  every checkpoint (42 x K calls per batch). Its executables are compiled once per model and reused for
  every K; one pass ends with ``block_until_ready`` on all its outputs (calls dispatch asynchronously);
- ``--volta-heads``: tiny widths with VOLTA's vocabulary (30,522) and 1,601 detector classes, what a tiny
  model trained on real files carries; there the heads' projections dominate a tiny model's cost;
- compile times: AOT ``lower`` + ``compile`` of the sweep, and the sum over the loop's member programs
  (the persistent compilation cache is off meanwhile); the per-device memory estimate of the compiled
  sweep and of the loop's largest member program (``compiled.memory_analysis()``, where the backend has one);
- rates: examples x members x checkpoints evaluated per second, ``B * M * K / seconds``, the median of the
  timed calls. Sweep calls and loop passes alternate (warm-up first), so both see the same load on a
  shared machine; ``sweep / loop`` is the ratio of the rates;
- the projected time for the Flickr30k Entities validation set (14,433 examples): ceil(14,433 / B)
  batches at the measured time per batch, plus the compile time; data loading is not included;
- ``max |sweep - loop|``: the largest difference (bits) between the two on every metric, which must be
  float noise: both evaluate the same members.

``add_arguments`` and ``run`` are the hooks of ``jaxvl bench ablate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from jaxvl.ablation.conditions import LEVELS, TASKS
from jaxvl.ablation.spec import DEFAULT_THRESHOLDS
from jaxvl.ablation.sweep import (
    AblationSpec,
    AblationSweep,
    Member,
    check_ablation,
    gather_to_host,
    stack_params,
)
from jaxvl.benchmarks.common import (
    Probe,
    alternate,
    aot_compile,
    csv_choices,
    fmt,
    format_machine,
    jax_device,
    load_cell,
    log,
    machine_info,
    markdown_table,
    no_persistent_compile_cache,
    put_times,
    save_json,
)
from jaxvl.models.params import count_params
from jaxvl.models.volta.model import VLBertForPreTraining, get_model
from jaxvl.models.volta.presets import PRESETS
from jaxvl.runtime.compile import FAST_COMPILE, memory_stats
from jaxvl.runtime.sharding import make_mesh

if TYPE_CHECKING:
    from jaxvl.data.tokenizer import Tokenizer

SIZES = ("tiny", "ctrl")
ROWS = ("scored", "every")
PREFIX = ("shared", "each")
VOLTA_VOCAB, VOLTA_CLASSES = 30522, 1600  # BERT's uncased vocabulary; Visual Genome's classes (+ background)
DEFAULT_PRESETS = ("uniter", "lxmert")
FLICKR30K_VAL_EXAMPLES = 14_433  # Flickr30k Entities val phrases the paper ablates
TEXT_LEN = 38  # VOLTA's max_seq_length
REGIONS = 36  # VOLTA's detector boxes (+ the global [IMG] row)
BATCH = 16  # VOLTA's TASK18 (Flickr30k ablation) batch
TINY_CLASSES = 20  # detector classes of the tiny world and model (WorldConfig's default)

Arrays = dict[str, Any]


# --------------------------------------------------------------------------------------------- CLI


def _csv_numbers(kind: type) -> Callable[[str], list]:
    """An argparse ``type``: ``"1,4"`` -> ``[1, 4]`` (``kind`` int or float)."""

    def parse(text: str) -> list:
        try:
            items = [kind(x) for x in text.split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated {kind.__name__}s") from None
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r}: expected at least one {kind.__name__}")
        return items

    return parse


def _member_batches(text: str) -> list[int | None]:
    """An argparse ``type``: ``"vmap,1"`` -> ``[None, 1]`` (``vmap``: every member at once)."""
    items = [x for x in text.split(",") if x]
    try:
        out = [None if x == "vmap" else int(x) for x in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated 'vmap' or member counts") from None
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one value")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench ablate`` options to ``parser``."""
    parser.add_argument("--sizes", type=csv_choices(SIZES), default=list(SIZES), metavar="SIZE[,SIZE]",
                        help="tiny (test sizes) and/or ctrl (VOLTA's controlled sizes); default tiny,ctrl")
    parser.add_argument("--presets", type=csv_choices(PRESETS), default=list(DEFAULT_PRESETS), metavar="NAME[,NAME]",
                        help=f"presets (default {','.join(DEFAULT_PRESETS)}; any of {', '.join(PRESETS)})")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"examples per batch, B (default {BATCH}, VOLTA's)")
    parser.add_argument("--models", type=_csv_numbers(int), default=[1, 4], metavar="K[,K]",
                        help="numbers of stacked checkpoints to time (default 1,4)")
    for task in TASKS:
        parser.add_argument(f"--{task}", type=csv_choices(LEVELS[task]), default=list(LEVELS[task]),
                            metavar="COND[,COND]",
                            help=f"{task} conditions of the spec (default {','.join(LEVELS[task])})")
    parser.add_argument("--thresholds", type=_csv_numbers(float), default=list(DEFAULT_THRESHOLDS), metavar="T[,T]",
                        help="IoT thresholds of the spec (default 0.0,0.1,...,0.9: 42 members)")
    parser.add_argument("--text-len", type=int, default=TEXT_LEN, help=f"text length (default VOLTA's {TEXT_LEN})")
    parser.add_argument("--regions", type=int, default=REGIONS,
                        help=f"detector regions per image, without [IMG] (default VOLTA's {REGIONS})")
    parser.add_argument("--member-batch", type=_member_batches, default=[None], metavar="N[,N]",
                        help="AblationSpec.member_batch_size of the sweep, one sweep variant per value, timed side by "
                             "side against the same loop: 'vmap' (all members at once, the default) or N (lax.map "
                             "over chunks of N members), e.g. vmap,1")
    parser.add_argument("--rows", type=csv_choices(ROWS), default=["scored"], metavar="ROWS[,ROWS]",
                        help="where the MLM / visual heads run, one sweep variant per value, side by side: scored "
                             "(only the phrase's sub-words and the target region, the default) and/or every (every "
                             "row, the slower program)")
    parser.add_argument("--prefix", type=csv_choices(PREFIX), default=["shared"], metavar="P[,P]",
                        help="dual-stream models: shared (each stream's unimodal prefix once per distinct input, the "
                             "default) and/or each (once per member), one sweep variant per value, side by side")
    parser.add_argument("--volta-heads", action="store_true",
                        help="tiny size with VOLTA's vocabulary (30522) and 1601 detector classes")
    parser.add_argument("--model-batch", type=int, default=None,
                        help="AblationSpec.model_batch_size of the sweep: lax.map over checkpoint chunks "
                             "(default: vmap)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="matmul dtype of the model (parameters stay float32)")
    parser.add_argument("--scan-layers", action="store_true",
                        help="scanned layer stacks (scan_layers=True): faster compiles on an accelerator")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed sweep calls and loop passes first (default 2; 0 for ctrl on CPU)")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed sweep calls and loop passes, median reported (default 5; 1 for ctrl on CPU)")
    parser.add_argument("--no-loop", action="store_true", help="time the sweep only")
    parser.add_argument("--fast-compile", action="store_true",
                        help="compile with jaxvl.runtime.compile.FAST_COMPILE (faster CPU compiles, slower "
                             "programs: smoke runs only, not for the numbers)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: jax.devices()[0]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and the weights (default 0)")
    parser.add_argument("--out", default=None, help="write machine info and results as JSON to this path")


def _check_args(args: argparse.Namespace) -> None:
    """Out-of-range options, named, before anything is built or compiled."""
    for flag in ("batch", "iters", "model_batch", "regions"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"jaxvl bench ablate: --{flag.replace('_', '-')}={value} must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        raise SystemExit(f"jaxvl bench ablate: --warmup={args.warmup} must be >= 0")
    if args.text_len < 3:
        raise SystemExit(f"jaxvl bench ablate: --text-len={args.text_len} must be >= 3 ([CLS], a token, [SEP])")
    if any(k < 1 for k in args.models):
        raise SystemExit(f"jaxvl bench ablate: --models={args.models}: every K must be >= 1")
    if any(n is not None and n < 1 for n in args.member_batch):
        raise SystemExit(f"jaxvl bench ablate: --member-batch={args.member_batch}: every N must be >= 1")
    try:
        AblationSpec(0, vis4lang=tuple(args.vis4lang), lang4vis=tuple(args.lang4vis), thresholds=tuple(args.thresholds))
    except ValueError as e:
        raise SystemExit(f"jaxvl bench ablate: {e}") from None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by ``args`` (see ``add_arguments``); returns machine and rows (also
    written to ``--out`` after every row), and prints the markdown table."""
    _check_args(args)
    device = jax_device(args.device)
    machine = machine_info(device)
    print(format_machine(machine), flush=True)
    options = {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | list | type(None))}
    result: dict[str, Any] = {"command": " ".join(sys.argv), "options": options, "machine": machine, "rows": []}
    mesh = make_mesh(devices=[device])
    with no_persistent_compile_cache(), jax.default_device(device):
        for size in args.sizes:
            for name in args.presets:
                bench_model(name, size, args, device, mesh, result, lambda: save_json(result, args.out))
                gc.collect()
    save_json(result, args.out)
    if args.out:
        log(f"wrote {args.out}")
    print(format_markdown(result), flush=True)
    return result


# ------------------------------------------------------------------------------------ model and inputs


def ablation_inputs(size: str, feature_dim: int, num_classes: int, batch: int, text_len: int, regions: int,
                    seed: int, add_global: str | None) -> tuple[Arrays, np.ndarray, Tokenizer]:
    """One host batch of ablation examples (``ablation_dataset``'s fields, LabelMatch ``vg_label`` included),
    the dataset-mean region feature [D] and the tokenizer, from a synthetic world of ``batch`` images with
    ``regions`` detector regions of ``feature_dim`` features and ``num_classes`` classes."""
    import grain  # the data side is imported here: main.py imports this module for every jaxvl command

    from jaxvl.ablation.data import (
        AblationPipelineConfig,
        ablation_dataset,
        scan_ablation,
        world_ablation_source,
    )
    from jaxvl.ablation.labelmatch import LabelMatcher
    from jaxvl.data.synthetic import World, WorldConfig
    from jaxvl.data.tokenizer import Tokenizer

    world = World(WorldConfig(num_images=max(batch, 2), num_regions=regions, feature_dim=feature_dim,
                              num_classes=num_classes, min_objects=min(2, regions), max_objects=min(5, regions),
                              seed=seed))
    tokenizer = Tokenizer.from_words(world.vocabulary())
    source = world_ablation_source(world, range(world.cfg.num_images))
    pcfg = AblationPipelineConfig(batch_size=batch, max_seq_length=text_len, add_global_imgfeat=add_global)
    index = scan_ablation(source, tokenizer, pcfg, label_matcher=LabelMatcher.from_label_list(world.label_list()),
                          source_name=f"synthetic {size} world")
    first = next(iter(ablation_dataset(source, tokenizer, pcfg, index, shard=grain.sharding.NoSharding())))
    return first, index.mean_feature, tokenizer


def build_model(name: str, size: str, dtype: str, tokenizer: Tokenizer | None = None,
                scan_layers: bool = False, volta_heads: bool = False) -> VLBertForPreTraining:
    """``name`` at ``size``: ctrl as VOLTA configures it; tiny with the tiny world's vocabulary and classes, or
    with VOLTA's (``volta_heads``)."""
    if size == "ctrl":
        return get_model(name, dtype=dtype, scan_layers=scan_layers)
    if volta_heads:
        return get_model(name, tiny=True, dtype=dtype, num_object_classes=VOLTA_CLASSES, vocab_size=VOLTA_VOCAB,
                         scan_layers=scan_layers)
    extra = {} if tokenizer is None else {"vocab_size": tokenizer.vocab_size}
    return get_model(name, tiny=True, dtype=dtype, num_object_classes=TINY_CLASSES, scan_layers=scan_layers, **extra)


def init_checkpoints(model: VLBertForPreTraining, batch: Arrays, k: int, seed: int,
                     compiler_options: dict[str, Any] | None = None) -> list[Any]:
    """``k`` random parameter trees (seeds ``seed .. seed + k - 1``), each stacked to a leading axis of 1."""
    inputs = {key: jnp.asarray(batch[key][:1]) for key in ("input_ids", "features", "locations")}
    init = jax.jit(model.init, compiler_options=compiler_options)
    return [stack_params([nn.meta.unbox(init(jax.random.key(seed + i), **inputs)["params"])]) for i in range(k)]


def _concat(trees: Sequence[Any]) -> Any:
    """[1, ...]-stacked trees -> one [K, ...]-stacked tree."""
    return trees[0] if len(trees) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


def member_spec(spec: AblationSpec, member: Member) -> AblationSpec:
    """The spec that evaluates ``member`` of ``spec`` alone (one condition, its one threshold or none)."""
    return dataclasses.replace(spec, vis4lang=(member.condition,) if member.task == "vis4lang" else (),
                               lang4vis=(member.condition,) if member.task == "lang4vis" else (),
                               thresholds=() if member.threshold is None else (member.threshold,),
                               member_batch_size=None, model_batch_size=None, control_threshold=None)


def _defaults(size: str, accelerator: bool, args: argparse.Namespace) -> tuple[int, int]:
    """(warmup, iters) for ``size``: explicit options win."""
    slow = size == "ctrl" and not accelerator
    warmup = args.warmup if args.warmup is not None else (0 if slow else 2)
    iters = args.iters if args.iters is not None else (1 if slow else 5)
    return warmup, iters


# ------------------------------------------------------------------------------------------ timing


def max_difference(sweep_out: Arrays, loop_outs: Sequence[Sequence[Arrays]], members: dict[str, tuple[Member, ...]],
                   ) -> float:
    """max |sweep - loop| over every metric, member and checkpoint. ``loop_outs[m][k]``: the loop's output of the
    m-th member (tasks in ``TASKS`` order) for checkpoint k ([B, 1, 1] per metric)."""
    sweep_out, loop_outs = gather_to_host(sweep_out), gather_to_host(loop_outs)
    worst, m = 0.0, 0
    for task in TASKS:
        for j, _ in enumerate(members[task]):
            for k, out in enumerate(loop_outs[m]):
                for metric, values in out[task].items():
                    diff = np.abs(np.asarray(sweep_out[task][metric])[:, k, j] - np.asarray(values)[:, 0, 0])
                    worst = max(worst, float(diff.max()))
            m += 1
    return worst


# ------------------------------------------------------------------------------------------ a model


def bench_model(name: str, size: str, args: argparse.Namespace, device: jax.Device, mesh: Any,
                result: dict[str, Any], save: Callable[[], None]) -> None:
    """Every K of ``args.models`` for ``name`` at ``size``: appends one row per K to ``result['rows']``."""
    warmup, iters = _defaults(size, device.platform != "cpu", args)
    options = FAST_COMPILE if args.fast_compile else None
    base = build_model(name, size, args.dtype, volta_heads=args.volta_heads).cfg
    classes = TINY_CLASSES if size == "tiny" and not args.volta_heads else base.num_object_classes
    host, mean_feature, tokenizer = ablation_inputs(size, base.v_feature_size, classes, args.batch, args.text_len,
                                                    args.regions, args.seed, base.add_global_imgfeat)
    model = build_model(name, size, args.dtype, tokenizer, args.scan_layers, args.volta_heads)
    longest = max(1, int(np.asarray(host["phrase_mask"]).sum(-1).max()))  # the batch's longest phrase
    spec = AblationSpec(tokenizer.mask_id, vis4lang=tuple(args.vis4lang), lang4vis=tuple(args.lang4vis),
                        thresholds=tuple(args.thresholds), model_batch_size=args.model_batch,
                        max_phrase_tokens=longest)
    members = {task: spec.members(task) for task in TASKS}
    flat = [m for task in TASKS for m in members[task]]
    log(f"{name}/{size}: B={args.batch}, {len(flat)} members ({len(members['vis4lang'])} vis4lang + "
        f"{len(members['lang4vis'])} lang4vis), K in {args.models}, member batch in {args.member_batch}, "
        f"{warmup} warm-up + {iters} timed rounds")
    start = time.perf_counter()
    singles = init_checkpoints(model, host, max(args.models), args.seed, options)
    init_s = time.perf_counter() - start
    check_ablation(model, singles[0], host, spec, mean_feature, mesh)  # refuses bad input before any compile
    replicated = NamedSharding(mesh, PartitionSpec())
    mean = jax.device_put(jnp.asarray(mean_feature, jnp.float32), replicated)
    common = {"preset": name, "size": size, "batch": args.batch, "text_len": args.text_len,
              "regions": args.regions + (model.cfg.add_global_imgfeat is not None), "dtype": args.dtype,
              "device": f"{device.platform}: {device.device_kind}", "warmup": warmup, "iters": iters,
              "members": len(flat), "vis4lang_members": len(members["vis4lang"]),
              "lang4vis_members": len(members["lang4vis"]), "thresholds": list(spec.thresholds),
              "model_batch_size": spec.model_batch_size, "fast_compile": bool(args.fast_compile),
              "scan_layers": args.scan_layers, "volta_heads": bool(args.volta_heads),
              "vocab_size": model.cfg.vocab_size, "max_phrase_tokens": longest,
              "params_per_model": count_params(singles[0]), "init_s": init_s}

    loop: list[Any] = []
    if not args.no_loop:
        loop_compile_s, loop_memory = 0.0, {}
        for member in flat:
            msweep = AblationSweep(model, member_spec(spec, member), mesh, None, options)
            exe, lower_s, compile_s = aot_compile(msweep, singles[0], msweep.device_batch(host), mean)
            loop.append(exe)
            loop_compile_s += lower_s + compile_s
            stats = memory_stats(exe)
            if stats and stats["peak_estimate_in_bytes"] > loop_memory.get("peak_estimate_in_bytes", -1):
                loop_memory = stats
        common.update(loop_programs=len(loop), loop_compile_s=loop_compile_s, loop_memory=loop_memory)
        log(f"  loop: {len(loop)} member programs compiled in {loop_compile_s:.1f} s")

    for k in args.models:
        params = jax.device_put(_concat(singles[:k]), replicated)
        rows, calls = [], {}
        prefixes = args.prefix if model.cfg.unimodal_prefix else ["each"]  # single-stream models have none
        for chunk, where, prefix in [(c, r, p) for c in args.member_batch for r in args.rows for p in prefixes]:
            variant = dataclasses.replace(spec, member_batch_size=chunk, scored_rows_only=where == "scored",
                                          share_prefix=prefix == "shared")
            sweep = AblationSweep(model, variant, mesh, None, options)
            batch = sweep.device_batch(host)
            compiled, lower_s, compile_s = aot_compile(sweep, params, batch, mean)
            log(f"  sweep K={k}, member batch {chunk or 'vmap'}, heads at {where} rows, prefix {prefix}: compiled in "
                f"{lower_s + compile_s:.1f} s (lower {lower_s:.1f} s)")
            rows.append({**common, "k": k, "member_batch_size": chunk, "head_rows": where, "prefix": prefix,
                         "sweep_lower_s": lower_s,
                         "sweep_compile_s": lower_s + compile_s, "sweep_memory": memory_stats(compiled),
                         "evals_per_call": args.batch * len(flat) * k})
            calls[f"sweep{len(rows) - 1}"] = lambda exe=compiled, params=params, batch=batch: exe(params, batch, mean)
        if loop:
            calls["loop"] = lambda models=singles[:k], batch=batch: [[exe(p, batch, mean) for p in models]
                                                                     for exe in loop]
        probe = Probe()
        with jax.set_mesh(mesh):
            times, last = alternate(calls, warmup, iters)
        load = probe.finish()
        for i, row in enumerate(rows):
            row.update(load)
            _put_times(row, "sweep", times[f"sweep{i}"])
            if loop:
                _put_times(row, "loop", times["loop"])
                row["sweep_over_loop"] = row["sweep_evals_per_s"] / row["loop_evals_per_s"]
                row["max_abs_diff_bits"] = max_difference(last[f"sweep{i}"], last["loop"], members)
            add_projection(row)
            result["rows"].append(row)
            log("  " + _summary(row))
        save()
        del params, calls, last
        gc.collect()


def _put_times(row: dict[str, Any], what: str, times: list[float]) -> None:
    """The median time per batch of ``what`` (``sweep`` / ``loop``), every timed run, and the rate."""
    row[f"{what}_evals_per_s"] = row["evals_per_call"] / put_times(row, what, times)


def add_projection(row: dict[str, Any], examples: int = FLICKR30K_VAL_EXAMPLES) -> None:
    """Sets the projected seconds for ``examples`` (ceil(examples / B) batches at the measured time per batch),
    steady state and with the compile time added, for the sweep and (when timed) the loop."""
    batches = math.ceil(examples / row["batch"])
    row["projection_examples"], row["projection_batches"] = examples, batches
    for what in ("sweep", "loop"):
        if f"{what}_ms" in row:
            row[f"{what}_projected_s"] = batches * row[f"{what}_ms"] / 1e3
            row[f"{what}_projected_with_compile_s"] = row[f"{what}_projected_s"] + row[f"{what}_compile_s"]


# ---------------------------------------------------------------------------------------- reporting


def duration(seconds: float | None) -> str:
    """Seconds as '42 s', '3.5 min' or '2.1 h'."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _mib(memory: dict[str, int] | None) -> str:
    if not memory:
        return "-"
    mib = memory["peak_estimate_in_bytes"] / 2**20
    return f"{mib:,.0f}" if mib >= 10 else f"{mib:.2f}"


def _chunk(row: dict[str, Any]) -> str:
    """How the sweep runs its members: ``vmap`` (all at once) or ``map N`` (lax.map over chunks of N), and where
    its heads run (``scored`` rows or ``every`` row)."""
    members = "vmap" if row["member_batch_size"] is None else f"map {row['member_batch_size']}"
    text = members + (", heads at scored rows" if row.get("head_rows") == "scored" else ", heads at every row")
    return text + (", prefix shared" if row.get("prefix") == "shared" else "")


def _summary(row: dict[str, Any]) -> str:
    size = row["size"] + (" (VOLTA heads)" if row.get("volta_heads") else "")
    text = (f"{row['preset']}/{size} K={row['k']} {_chunk(row)}: sweep {row['sweep_ms']:.1f} ms/batch = "
            f"{_rate(row['sweep_evals_per_s'])} example-members/s")
    if "loop_ms" in row:
        text += (f"; loop {row['loop_ms']:.1f} ms/batch = {_rate(row['loop_evals_per_s'])}/s; sweep/loop "
                 f"{row['sweep_over_loop']:.2f}x; max |diff| {row['max_abs_diff_bits']:.2g} bits")
    return text


def format_markdown(result: dict[str, Any]) -> str:
    """The rows as a markdown table to paste into BENCHMARKS.md."""
    cols = ["preset", "size", "K", "B", "members", "sweep members", "compile s sweep / loop (programs)",
            "sweep ms/batch",
            "loop ms/batch", "sweep ex×member×K/s", "loop ex×member×K/s", "sweep / loop",
            f"Flickr30k val ({FLICKR30K_VAL_EXAMPLES:,} ex × members × K) sweep / loop, incl. compile",
            "peak memory MiB sweep / loop", "max abs diff bits", "load start / end (other cores)"]
    rows = []
    for r in result["rows"]:
        looped = "loop_ms" in r
        rows.append([
            r["preset"], r["size"] + (f" (vocab {r['vocab_size']:,})" if r.get("volta_heads") else ""), r["k"],
            r["batch"], r["members"], _chunk(r),
            f"{r['sweep_compile_s']:.1f} / " + (f"{r['loop_compile_s']:.1f} ({r['loop_programs']})" if looped else "-"),
            f"{r['sweep_ms']:,.1f}", fmt(r.get("loop_ms"), ",.1f"), _rate(r["sweep_evals_per_s"]),
            _rate(r.get("loop_evals_per_s")), f"**{r['sweep_over_loop']:.2f}x**" if looped else "-",
            f"{duration(r['sweep_projected_with_compile_s'])} / {duration(r.get('loop_projected_with_compile_s'))}",
            f"{_mib(r['sweep_memory'])} / {_mib(r.get('loop_memory'))}", fmt(r.get("max_abs_diff_bits"), ".1e"),
            load_cell(r)])
    return markdown_table(cols, rows)
