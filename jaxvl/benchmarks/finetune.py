"""``jaxvl bench finetune``: fine-tuning steps/s per task, and retrieval pairs/s with the projected Flickr30k test.

Random parameters and inputs (speed does not depend on them) at ``tiny`` (``presets.tiny_overrides``) or ``ctrl``
size (VOLTA's: 768 wide, 12 layers, 2048 features), 36 detector regions plus the global ``[IMG]`` row where the
model has one, on one device:

- **steps** (``--tasks``: VQA, Flickr30k retrieval, RefCOCO+, NLVR2, SNLI-VE): the fine-tuning trainer's own
  update (``jaxvl.finetune.step``: ``init_finetune_state``, ``jit_finetune_step``, compiled ahead of time; dropout
  on; VOLTA's AdamW as ``jaxvl.configs.finetune`` sets it) of ``--step-preset`` with the task's VOLTA head, on
  batches of ``jaxvl.finetune.data``'s layout at the task's ctrl text length and batch size
  (``jaxvl.configs.finetune.TASKS``: VQA 256 x 23 tokens, 3129 answers; retrieval 64 captions x 4 options x 30;
  RefCOCO+ 256 x 20; NLVR2 64 sentences x 2 images x 40; SNLI-VE 128 x 56). ``--batch`` replaces every task's
  batch (ctrl on a CPU defaults to 2; ``--batch 0``: VOLTA's). Reported: ``compile s`` (lowering and compiling
  the step), ``ms / step`` (median of ``--steps`` timed steps after one warm-up, each ended by a sync on the new
  state and metrics), steps/s, examples/s and encoder rows/s (retrieval runs 4 rows per example, NLVR2 2);
- **retrieval**: ``jaxvl.finetune.retrieval.RetrievalProgram`` with VOLTA's Flickr30k head (``VL-logit``, TASK8)
  as the score, top-10 lists and gold ranks on device, over ``--images`` M images with 5 captions each (N = 5 M,
  as Flickr30k; caption lengths drawn from 8 to 30 tokens, padded to VOLTA's 30). UNITER (single-stream) runs the
  whole model per pair; LXMERT twice: ``prefix cached`` (each stream's unimodal prefix once per item, per pair
  the cross layers and the head) and ``whole model per pair``. Beside them the **per-pair loop** a user would
  write: one jitted ``model.apply`` on one (caption, image) pair (batch 1, the same padded shapes, the whole
  model), its score read back as a Python float (one host sync per pair), pair after pair in caption-major order
  for ``--loop-pairs`` pairs; its scores are checked against the program's top-k scores of the same pairs
  (``loop_max_abs_diff``). The cached variant's prefixes are also timed alone (``PairForward.prefixes``, jitted,
  on the same padded items: ``prefix ms / item`` = its median / (N + M)). Rates: program pairs/s = N M / (median
  call s - prefix s) (a call's pair work: blocks, gold band, top-k merges and rank counts; prefix s is 0 without
  the cache); ``call_pairs_per_s`` = N M / median call s; loop pairs/s = loop pairs / median loop s. ``compile
  s``: the first call's JAX tracing, lowering and compiling (``jaxvl.benchmarks.probe.compile_clock``);
- **Flickr30k test projection**: 5,000 captions x 1,000 images = 5 M pairs at each pair rate, plus 6,000 items x
  prefix ms / item (the timed calls hold captions and images 5 : 1 too), then plus the compile time. ``vs loop``:
  the loop's projection over the program's; LXMERT's ``cache speed-up``: the whole-model projection over the
  cached one (a timed call of few pairs per item spends far more on prefixes than Flickr30k does, so the calls'
  own ratio, ``cache_call_speedup``, the median over rounds, understates it).

Calls of one preset's retrieval variants and its loop take turns (``--iters`` rounds), so a change in the
machine's load hits them alike; each row records the load (``jaxvl.benchmarks.common.Probe``). ``add_arguments``
and ``run`` are the hooks of ``jaxvl bench finetune``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxvl.benchmarks.ablate import duration
from jaxvl.benchmarks.common import (
    Probe,
    alternate,
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
from jaxvl.benchmarks.probe import compile_clock, union_seconds
from jaxvl.configs.finetune import TASKS as TASK_CONFIGS
from jaxvl.finetune.retrieval import RetrievalProgram
from jaxvl.finetune.step import finetune_state_shardings, init_finetune_state, jit_finetune_step
from jaxvl.models.volta.model import get_model
from jaxvl.models.volta.pairing import PairForward
from jaxvl.models.volta.presets import PRESETS
from jaxvl.models.volta.task_heads import VOLTA_TASKS, TaskSpec, VLBertForVLTasks
from jaxvl.runtime.compile import FAST_COMPILE, compile_step
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import batch_sharding, make_mesh

SIZES = ("tiny", "ctrl")
PARTS = ("steps", "retrieval")
STEP_TASKS = ("vqa", "retrieval", "refcoco+", "nlvr2", "snli-ve")  # keys of jaxvl.configs.finetune.TASKS
RETRIEVAL_PRESETS = ("uniter", "lxmert")
RETRIEVAL_HEAD = VOLTA_TASKS["retrieval_flickr30k"]
REGIONS = 36  # VOLTA's max_region_num (+ the global [IMG] row)
CAPTIONS_PER_IMAGE = 5  # Flickr30k
MIN_CAPTION = 8  # the shortest caption drawn ([CLS] + 6 sub-words + [SEP])
TOP_K = 10
FLICKR_CAPTIONS, FLICKR_IMAGES = 5000, 1000  # the Flickr30k test split
ROWS_PER_EXAMPLE = {"VL-logit": 4, "VL-binary-classifier": 2}  # encoder rows per example (others 1)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Retrieval images (5 captions each), blocks, loop pairs and timed rounds; fine-tuning steps and batch
    (None: each task's VOLTA batch)."""

    images: int
    text_block: int
    image_block: int
    loop_pairs: int
    iters: int
    steps: int
    batch: int | None


# Defaults per (size, accelerator). ctrl on a CPU is cut down: 2 images (10 captions, 20 pairs) in 5 x 2 blocks,
# 4 loop pairs, fine-tuning batches of 2.
DEFAULTS = {("tiny", False): Settings(16, 16, 8, 32, 3, 5, None), ("tiny", True): Settings(16, 16, 8, 32, 3, 5, None),
            ("ctrl", False): Settings(2, 5, 2, 4, 2, 2, 2), ("ctrl", True): Settings(100, 50, 20, 200, 3, 5, None)}


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench finetune`` options to ``parser``."""
    parser.add_argument("--sizes", type=csv_choices(SIZES), default=["tiny"], metavar="SIZE[,SIZE]",
                        help="tiny (test sizes) and/or ctrl (VOLTA's controlled sizes); default tiny")
    parser.add_argument("--parts", type=csv_choices(PARTS), default=list(PARTS), metavar="P[,P]",
                        help="steps (fine-tuning steps/s per task) and/or retrieval (pairs/s); default both")
    parser.add_argument("--tasks", type=csv_choices(STEP_TASKS), default=list(STEP_TASKS), metavar="T[,T]",
                        help=f"tasks of the steps part (default {','.join(STEP_TASKS)})")
    parser.add_argument("--step-preset", choices=PRESETS, default="uniter", help="the steps part's preset")
    parser.add_argument("--presets", type=csv_choices(PRESETS), default=list(RETRIEVAL_PRESETS),
                        metavar="NAME[,NAME]",
                        help=f"the retrieval part's presets (default {','.join(RETRIEVAL_PRESETS)})")
    default = lambda name: "/".join(str(getattr(DEFAULTS[k], name)) for k in  # noqa: E731
                                    (("tiny", False), ("ctrl", False), ("ctrl", True)))
    for name, text in (("images", "retrieval images M (5 captions each: 5 M x M pairs per call)"),
                       ("text_block", "retrieval captions per compiled block"),
                       ("image_block", "retrieval images per compiled block"),
                       ("loop_pairs", "pairs of the per-pair loop per round"),
                       ("iters", "timed retrieval rounds (median reported)"), ("steps", "timed fine-tuning steps"),
                       ("batch", "fine-tuning examples per step for every task; 0: VOLTA's")):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"{text} (default tiny / ctrl on CPU / ctrl on an accelerator: {default(name)})")
    parser.add_argument("--regions", type=int, default=REGIONS,
                        help=f"detector regions per image, without [IMG] (default VOLTA's {REGIONS})")
    parser.add_argument("--fast-compile", action="store_true",
                        help="compile with jaxvl.runtime.compile.FAST_COMPILE (smoke runs only, not for the numbers)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: jax.devices()[0]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and weights")
    parser.add_argument("--out", default=None, help="write machine info and results as JSON to this path")
    parser.add_argument("--markdown", action="store_true", help="print the markdown tables at the end")


def settings(size: str, accelerator: bool, args: argparse.Namespace) -> Settings:
    """The defaults of ``size`` on this device, explicit options winning; out-of-range values refused."""
    base = DEFAULTS[(size, accelerator)]
    chosen = {f.name: getattr(base, f.name) if getattr(args, f.name) is None else getattr(args, f.name)
              for f in dataclasses.fields(Settings)}
    for name, value in chosen.items():
        least = 0 if name == "batch" else 1
        if value is not None and value < least:
            raise SystemExit(f"jaxvl bench finetune: --{name.replace('_', '-')}={value} must be >= {least}")
    chosen["batch"] = chosen["batch"] or None
    return Settings(**chosen)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by ``args`` (module doc); returns machine and rows (also written to ``--out``
    after every task and preset), and prints the markdown tables with ``--markdown``."""
    if args.regions < 1:
        raise SystemExit(f"jaxvl bench finetune: --regions={args.regions} must be >= 1")
    device = jax_device(args.device)
    chosen = {size: settings(size, device.platform != "cpu", args) for size in args.sizes}  # refusals first
    machine = machine_info(device)
    print(format_machine(machine), flush=True)
    options = {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | list | type(None))}
    result: dict[str, Any] = {"command": " ".join(sys.argv), "options": options, "machine": machine,
                              "device": f"{device.platform}: {device.device_kind}", "rows": []}
    mesh = make_mesh(devices=[device])
    compiler_options = FAST_COMPILE if args.fast_compile else None
    with no_persistent_compile_cache(), jax.default_device(device):
        for size in args.sizes:
            s = chosen[size]
            if "steps" in args.parts:
                for task in args.tasks:
                    result["rows"].append(bench_step(task, size, s, args, mesh, compiler_options, result["device"]))
                    save_json(result, args.out)
                    gc.collect()
            if "retrieval" in args.parts:
                for name in args.presets:
                    result["rows"] += bench_retrieval(name, size, s, args, mesh, compiler_options, result["device"])
                    save_json(result, args.out)
                    gc.collect()
    if args.out:
        log(f"wrote {args.out}")
    if args.markdown:
        print(format_markdown(result), flush=True)
    return result


# ---------------------------------------------------------------------------------------- fine-tuning steps


def task_batch(spec: TaskSpec, cfg: Any, batch: int, text_len: int, regions: int, seed: int) -> dict[str, np.ndarray]:
    """A random batch of ``batch`` examples in ``jaxvl.finetune.data``'s layout for ``spec`` (module doc of that
    module): every text position and region real, targets of the right kind (soft scores, labels, IoUs)."""
    rng = np.random.default_rng(seed)
    rows = regions + (cfg.add_global_imgfeat is not None)
    text_lead = (batch, 4) if spec.type == "VL-logit" else (batch,)
    image_lead = {"VL-logit": (batch, 4), "VL-binary-classifier": (batch, 2)}.get(spec.type, (batch,))
    out = {"input_ids": rng.integers(2, cfg.vocab_size, (*text_lead, text_len)).astype(np.int32),
           "token_type_ids": np.zeros((*text_lead, text_len), np.int32),
           "text_mask": np.ones((*text_lead, text_len), np.int32),
           "features": rng.random((*image_lead, rows, cfg.v_feature_size), np.float32),
           "locations": rng.random((*image_lead, rows, cfg.num_locs), np.float32),
           "region_mask": np.ones((*image_lead, rows), np.int32)}
    if spec.type in ("VL-classifier", "VL-classifier-GQA"):
        target = np.zeros((batch, spec.num_labels), np.float32)
        target[np.arange(batch), rng.integers(spec.num_labels, size=batch)] = 1.0
    elif spec.type == "V-logit":
        target = rng.random((batch, rows), np.float32)
    else:  # labels; retrieval: the positive is option 0
        target = rng.integers(0, spec.num_outputs, batch).astype(np.int32) if spec.type != "VL-logit" else \
            np.zeros(batch, np.int32)
    return {**out, "target": target}


def bench_step(task: str, size: str, s: Settings, args: argparse.Namespace, mesh: Any,
               compiler_options: dict[str, Any] | None, device: str) -> dict[str, Any]:
    """One task's fine-tuning step row: compile, ``s.steps`` timed steps after one warm-up."""
    entry = TASK_CONFIGS[task]
    spec = TaskSpec(entry["volta_task"], entry["type"], entry["num_labels"])
    model = VLBertForVLTasks(get_model(args.step_preset, tiny=size == "tiny").cfg, (spec,))
    batch = s.batch or entry["batch_size"]
    host = task_batch(spec, model.cfg, batch, entry["max_seq_length"], args.regions, args.seed)
    tx = make_optimizer(OptimizerConfig(total_steps=1000, learning_rate=entry["learning_rate"], eps=1e-6,
                                        weight_decay=1e-4, warmup_fraction=0.1, clip_norm=1.0))
    start = time.perf_counter()
    state = init_finetune_state(model, tx, jax.random.key(args.seed), host, mesh, compiler_options=compiler_options)
    init_s = time.perf_counter() - start
    shardings = finetune_state_shardings(model, tx, host, mesh)
    jitted = jit_finetune_step(model, spec, tx, mesh, shardings, batch_sharding(mesh), compiler_options)
    with jax.set_mesh(mesh):
        data = jax.device_put(host, batch_sharding(mesh))
    start = time.perf_counter()
    step = compile_step(jitted, state, data, mesh)
    compile_s = time.perf_counter() - start
    probe, times = Probe(), []
    for i in range(1 + s.steps):
        start = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready((state, metrics))
        if i:
            times.append(time.perf_counter() - start)
    load = probe.finish()
    step_s = statistics.median(times)
    rows_per_example = ROWS_PER_EXAMPLE.get(spec.type, 1)
    row = {"part": "steps", "preset": args.step_preset, "size": size, "task": task, "volta_task": spec.name,
           "type": spec.type, "num_labels": spec.num_labels, "batch": batch, "volta_batch": entry["batch_size"],
           "rows_per_step": batch * rows_per_example, "text_len": entry["max_seq_length"],
           "region_rows": int(host["region_mask"].shape[-1]), "device": device,
           "params": int(sum(x.size for x in jax.tree.leaves(state.params))), "init_s": init_s,
           "compile_s": compile_s, "steps": s.steps, "step_ms": 1e3 * step_s,
           "step_runs_ms": [round(1e3 * t, 4) for t in times], "steps_per_s": 1 / step_s,
           "examples_per_s": batch / step_s, "rows_per_s": batch * rows_per_example / step_s,
           "loss": float(metrics["loss"]), "fast_compile": bool(args.fast_compile), **load}
    log(f"{task} ({spec.type}) {args.step_preset}/{size}, batch {batch}: compile {compile_s:.1f} s, "
        f"{row['step_ms']:.0f} ms / step = {row['steps_per_s']:.2f} steps/s, {row['examples_per_s']:.1f} examples/s")
    return row


# ---------------------------------------------------------------------------------------------- retrieval


def retrieval_items(cfg: Any, images: int, text_len: int, regions: int, seed: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """(texts [5 M, text_len], images [M, rows, ...], caption_image [5 M]): random captions of real lengths
    ``MIN_CAPTION``..``text_len`` and images of ``regions`` real regions (+ ``[IMG]``), image m's captions at rows
    5 m .. 5 m + 4."""
    rng = np.random.default_rng(seed)
    n, rows = CAPTIONS_PER_IMAGE * images, regions + (cfg.add_global_imgfeat is not None)
    lengths = rng.integers(min(MIN_CAPTION, text_len), text_len + 1, n)
    text_mask = (np.arange(text_len)[None] < lengths[:, None]).astype(np.int32)
    texts = {"input_ids": (rng.integers(2, cfg.vocab_size, (n, text_len)) * text_mask).astype(np.int32),
             "token_type_ids": np.zeros((n, text_len), np.int32), "text_mask": text_mask}
    image = {"features": rng.random((images, rows, cfg.v_feature_size), np.float32),
             "locations": rng.random((images, rows, cfg.num_locs), np.float32),
             "region_mask": np.ones((images, rows), np.int32)}
    return texts, image, np.repeat(np.arange(images), CAPTIONS_PER_IMAGE)


def head_score(logits: dict[str, jax.Array]) -> jax.Array:
    """The Flickr30k head's logit of each pair: [B] float32."""
    return logits[RETRIEVAL_HEAD.name][:, 0].astype(jnp.float32)


def per_pair_loop(model: VLBertForVLTasks, variables: Any, texts: dict[str, np.ndarray], images: dict[str, np.ndarray],
                  pairs: list[tuple[int, int]], compiler_options: dict[str, Any] | None):
    """The loop a user would write (module doc): a call scoring ``pairs`` one jitted forward each -> [P] floats."""
    forward = jax.jit(lambda v, t, i: head_score(model.apply(v, t["input_ids"], i["features"], i["locations"],
                                                             t["token_type_ids"], t["text_mask"], i["region_mask"])),
                      compiler_options=compiler_options)

    def call() -> np.ndarray:
        return np.array([float(forward(variables, {k: x[c:c + 1] for k, x in texts.items()},
                                       {k: x[m:m + 1] for k, x in images.items()})[0]) for c, m in pairs])

    return call


def bench_retrieval(name: str, size: str, s: Settings, args: argparse.Namespace, mesh: Any,
                    compiler_options: dict[str, Any] | None, device: str) -> list[dict[str, Any]]:
    """One preset's retrieval rows: each program variant, then the per-pair loop."""
    model = VLBertForVLTasks(get_model(name, tiny=size == "tiny").cfg, (RETRIEVAL_HEAD,))
    text_len = TASK_CONFIGS["retrieval"]["max_seq_length"]
    texts, images, caption_image = retrieval_items(model.cfg, s.images, text_len, args.regions, args.seed)
    n, m, k = len(caption_image), s.images, min(TOP_K, s.images)
    variables = nn.meta.unbox(jax.jit(model.init, compiler_options=compiler_options)(
        jax.random.key(args.seed), texts["input_ids"][:2], images["features"][:1].repeat(2, 0),
        images["locations"][:1].repeat(2, 0)))
    pairs = [(c, i) for c in range(n) for i in range(m)][:s.loop_pairs]
    variants = {"prefix cached": True, "whole model per pair": False} if model.cfg.unimodal_prefix > 0 else \
        {"whole model per pair": False}
    def program_call(cache: bool):
        program = RetrievalProgram(model, mesh, k, s.text_block, s.image_block, head_score, cache,
                                   compiler_options=compiler_options)
        return lambda: program(variables, texts, images, caption_image)

    calls = {v: program_call(cache) for v, cache in variants.items()}
    calls["per-pair loop"] = per_pair_loop(model, variables, texts, images, pairs, compiler_options)
    if "prefix cached" in variants:
        calls["prefixes"] = prefix_call(model, variables, texts, images, s, mesh, compiler_options)
    first, compile_s = {}, {}
    for v, call in calls.items():
        with compile_clock() as spans:
            start = time.perf_counter()
            call()
            first[v] = time.perf_counter() - start
        compile_s[v] = union_seconds(spans)
    probe = Probe()
    times, last = alternate(calls, 0, s.iters, sync=None)
    load = probe.finish()
    common = {"part": "retrieval", "preset": name, "size": size, "device": device, "text_len": text_len,
              "region_rows": int(images["region_mask"].shape[1]), "images": m, "captions": n,
              "params": int(sum(x.size for x in jax.tree.leaves(variables))), "iters": s.iters,
              "fast_compile": bool(args.fast_compile), **load}
    prefix_runs = times.pop("prefixes", None)
    rows = []
    for v, runs in times.items():
        loop = v == "per-pair loop"
        median = statistics.median(runs)
        prefix_s = statistics.median(prefix_runs) if variants.get(v) else 0.0
        pairs_timed = len(pairs) if loop else n * m
        row = {**common, "variant": v, "cache_prefix": variants.get(v), "pairs_per_call": pairs_timed,
               "text_block": None if loop else s.text_block, "image_block": None if loop else s.image_block,
               "k": None if loop else k, "first_call_s": first[v], "compile_s": compile_s[v], "call_s": median,
               "call_runs_s": [round(t, 6) for t in runs], "call_pairs_per_s": pairs_timed / median,
               "prefix_s": prefix_s, "prefix_runs_s": [round(t, 6) for t in prefix_runs] if prefix_s else None,
               "prefix_ms_per_item": 1e3 * prefix_s / (n + m),
               "pairs_per_s": pairs_timed / max(median - prefix_s, 1e-9),
               "projection_pairs": FLICKR_CAPTIONS * FLICKR_IMAGES}
        row["projected_s"] = (row["projection_pairs"] / row["pairs_per_s"]
                              + (FLICKR_CAPTIONS + FLICKR_IMAGES) * row["prefix_ms_per_item"] / 1e3)
        row["projected_with_compile_s"] = row["projected_s"] + row["compile_s"]
        rows.append(row)
    loop_row = rows[-1]
    loop_row.update(loop_check(last["per-pair loop"], pairs, last[next(iter(variants))]))
    for row in rows[:-1]:
        row["speedup_vs_loop"] = loop_row["projected_s"] / row["projected_s"]
    if len(rows) == 3:
        rounds = [w / c for c, w in zip(times["prefix cached"], times["whole model per pair"], strict=True)]
        rows[0]["cache_call_speedup_rounds"] = rounds
        rows[0]["cache_call_speedup"] = statistics.median(rounds)
        rows[0]["cache_speedup"] = rows[1]["projected_s"] / rows[0]["projected_s"]
    for row in rows:
        log("  " + _retrieval_summary(row))
    return rows


def prefix_call(model: VLBertForVLTasks, variables: Any, texts: dict[str, np.ndarray], images: dict[str, np.ndarray],
                s: Settings, mesh: Any, compiler_options: dict[str, Any] | None):
    """A call running the cached program's prefix pass alone (``PairForward.prefixes``, jitted) on the items padded
    to whole blocks as the program pads them; it ends with a sync."""
    forward = PairForward(model, mesh, s.text_block, s.image_block, cache_prefix=True)
    prefixes = jax.jit(forward.prefixes, compiler_options=compiler_options)

    def pad(items: dict[str, np.ndarray], block: int) -> dict[str, np.ndarray]:
        rows = -(-len(next(iter(items.values()))) // block) * block
        return {key: np.concatenate([x, np.repeat(x[:1], rows - len(x), 0)]) for key, x in items.items()}

    text, image = pad(texts, s.text_block), pad(images, s.image_block)

    def call() -> Any:
        with jax.set_mesh(mesh):
            return jax.block_until_ready(prefixes(variables, text, image))

    return call


def loop_check(scores: np.ndarray, pairs: list[tuple[int, int]], result: Any) -> dict[str, Any]:
    """The loop's scores against the program's top-k scores of the same pairs: the largest absolute difference over
    the looped pairs found in the top-k lists, and how many were."""
    diffs = []
    for score, (c, i) in zip(scores, pairs, strict=True):
        hit = np.flatnonzero(result.text_topk_images[c] == i)
        if hit.size:
            diffs.append(abs(float(result.text_topk_scores[c, hit[0]]) - float(score)))
    return {"loop_checked_pairs": len(diffs), "loop_max_abs_diff": max(diffs) if diffs else None}


# ---------------------------------------------------------------------------------------- reporting


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _retrieval_summary(row: dict[str, Any]) -> str:
    text = (f"retrieval {row['preset']}/{row['size']} {row['variant']}: compile {row['compile_s']:.1f} s, "
            f"{_rate(row['pairs_per_s'])} pairs/s; Flickr30k test (5 M pairs) {duration(row['projected_s'])}")
    if "speedup_vs_loop" in row:
        text += f", {row['speedup_vs_loop']:.1f}x the loop"
    if row["prefix_s"]:
        text += f"; prefixes {row['prefix_ms_per_item']:.1f} ms / item"
    return text + (f"; cache speed-up {row['cache_speedup']:.2f}x" if "cache_speedup" in row else "")


def format_markdown(result: dict[str, Any]) -> str:
    """The steps and retrieval rows as markdown tables (with the device and the units) for BENCHMARKS.md."""
    lines = [f"Device: {result['device']}; {result['machine']['cpu']}, {result['machine']['cores']} cores. Random "
             "parameters and inputs; medians of the timed calls; load = 1-min load average at the start / end of "
             "the timing (cores other processes kept busy)."]
    steps = [r for r in result["rows"] if r["part"] == "steps"]
    if steps:
        lines += ["", "Fine-tuning steps (the trainer's compiled update, AdamW, dropout on):", "", markdown_table(
            ["task", "preset", "size", "head", "batch (VOLTA's)", "encoder rows x tokens", "compile s", "ms / step",
             "steps / s", "examples / s", "load (other cores)"],
            [[r["task"], r["preset"], r["size"], r["type"], f"{r['batch']} ({r['volta_batch']})",
              f"{r['rows_per_step']} x ({r['text_len']} + {r['region_rows']})", f"{r['compile_s']:.1f}",
              f"{r['step_ms']:,.0f}", _rate(r["steps_per_s"]), _rate(r["examples_per_s"]), load_cell(r)]
             for r in steps])]
    retrieval = [r for r in result["rows"] if r["part"] == "retrieval"]
    if retrieval:
        lines += ["", f"Retrieval (VOLTA's Flickr30k head; projection: the Flickr30k test, {FLICKR_CAPTIONS:,} "
                  f"captions x {FLICKR_IMAGES:,} images = 5 M pairs):", "", markdown_table(
                      ["preset", "size", "variant", "pairs timed", "block", "compile s", "ms / call",
                       "prefix ms / item", "pairs / s", "Flickr30k test", "+ compile", "vs loop", "cache speed-up",
                       "load (other cores)"],
                      [[r["preset"], r["size"], r["variant"], f"{r['pairs_per_call']:,}",
                        "-" if r["text_block"] is None else f"{r['text_block']} x {r['image_block']}",
                        f"{r['compile_s']:.1f}", f"{1e3 * r['call_s']:,.0f}",
                        f"{r['prefix_ms_per_item']:.1f}" if r["prefix_s"] else "-", _rate(r["pairs_per_s"]),
                        duration(r["projected_s"]), duration(r["projected_with_compile_s"]),
                        fmt(r.get("speedup_vs_loop"), ".1f") + ("x" if "speedup_vs_loop" in r else ""),
                        fmt(r.get("cache_speedup"), ".2f") + ("x" if "cache_speedup" in r else ""), load_cell(r)]
                       for r in retrieval])]
    return "\n".join(lines)


__all__ = ["DEFAULTS", "PARTS", "SIZES", "STEP_TASKS", "Settings", "add_arguments", "format_markdown", "loop_check",
           "retrieval_items", "run", "settings", "task_batch"]
