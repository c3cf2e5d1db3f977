"""``jaxvl bench data``: can the input pipeline keep a training step busy?

Records per second through each stage of jaxvl's data path, on the synthetic world at VOLTA's ctrl
shapes (36 regions x 2048 features, 1600 detector classes so ``cls_prob`` has 1601 columns, 38
tokens), beside the rate a ctrl-size training step consumes:

- **prepare**: the synthetic ``jaxvl_synthetic_pretrain`` dataset (one example per image-caption
  pair) written as ArrayRecord by its TFDS builder (``download_and_prepare``, as ``jaxvl prepare``
  does), timed end to end; plus two of its parts timed alone on the first images: generating the
  synthetic world, and encoding + ``tf.Example`` serialisation (``encode_regions`` and the dataset's
  ``features.serialize_example``), which is what real data would pay too;
- **read**: the Grain pipeline (``open_split`` + ``pretrain_dataset``: global shuffle, random-access
  ArrayRecord reads, ``tf.Example`` decoding, tokenising, padding to fixed shapes, batching), with
  ``PipelineConfig.num_threads`` read threads, and optionally Grain worker processes
  (``IterDataset.mp_prefetch``, applied by this benchmark on top of ``pretrain_dataset``: the
  pipeline itself has no option for them). The first batch (thread / process start-up) is timed
  apart from the steady-state rate. Two parts are timed alone too: the data source read + decode
  (``source[i]`` in shuffled order, one thread) and ``PretrainTransform`` on already-decoded examples.
- **read in place** (``--in-place``): the same world's train pairs written as a VOLTA Conceptual Captions LMDB
  (one file, msgpack values as tensorpack 0.9.4 writes them, ``attr_scores`` at VOLTA's 401 columns so a record
  has real CC's size) and read through ``jaxvl.data.inplace`` (``open_split("volta-cc:...")``): the data source
  alone (LMDB read, restricted msgpack decode, checks, padding to R) and the same Grain pipeline rows, with the
  ArrayRecord split's tokenizer. No prepare step precedes them: the LMDB stands in for the user's store;
- **image store** (``--image-store``): the same pairs prepared as image stores (``layout=images``,
  ``jaxvl.data.imagestore``: one record per image, captions referring to it, arrays as raw bytes), with float32
  and with float16 features: the write timed end to end (``ImagePairsBuilder.download_and_prepare``) and the
  encoding alone, then read through the same rows as ArrayRecord (``open_split`` of the store joins each
  caption to its image record);
- **step**: the forward+backward time per example of a ctrl model (default UNITER), measured with
  ``jaxvl.benchmarks.models.bench_jax`` on ``jax.devices()[0]`` at a small batch.

Each row records the 1-minute load average at its start and end and the CPU cores other processes
kept busy meanwhile (``jaxvl.benchmarks.common.Probe``), since a shared machine skews every rate here. The read
rows also record this process's CPU time per example (all its threads; not for rows with worker processes),
which other processes on the machine skew far less than the wall-clock rate.

The dataset goes to a temporary directory (removed afterwards unless ``--keep``) and is always
rebuilt, so the prepare time is a real write. It is read right after it was written, so reads come
from the page cache, not from disk. ``add_arguments`` and ``run`` are the hooks of ``jaxvl bench data``.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

from jaxvl.benchmarks.common import (
    Probe,
    fmt,
    format_machine,
    jax_device,
    load_cell,
    log,
    machine_info,
    markdown_table,
    save_json,
)
from jaxvl.benchmarks.models import bench_jax

CAPTIONS_PER_IMAGE = 2  # WorldConfig's default: two pretraining examples per image
H200_VISUALBERT_BF16_MS = 0.56  # BENCHMARKS.md: ctrl VisualBERT fwd+bwd, bf16, batch 32, one H200

# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench data`` options to ``parser``."""
    parser.add_argument("--images", type=int, default=512,
                        help=f"synthetic train images to prepare ({CAPTIONS_PER_IMAGE} examples each; default 512)")
    parser.add_argument("--regions", type=int, default=36, help="regions per image, R (default: VOLTA's 36)")
    parser.add_argument("--feature-dim", type=int, default=2048, help="region feature size, D (default 2048)")
    parser.add_argument("--classes", type=int, default=1600,
                        help="detector classes, K; cls_prob has K+1 columns (default: Visual Genome's 1600)")
    parser.add_argument("--text-len", type=int, default=38, help="max_seq_length (default: VOLTA's 38)")
    parser.add_argument("--part-images", type=int, default=32,
                        help="images for the generation-only and serialise-only timings (default 32)")
    parser.add_argument("--part-examples", type=int, default=512,
                        help="examples for the source-only and transform-only timings (default 512)")
    parser.add_argument("--batch", type=int, default=32, help="pipeline batch size (default 32)")
    parser.add_argument("--read-examples", type=int, default=2048,
                        help="examples each pipeline row reads at least, in whole epochs of the split (default 2048)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="PipelineConfig.num_threads values to time (default: 1 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="Grain worker processes (mp_prefetch; 0 = none) to time with each thread count "
                             "(default: 0 2)")
    parser.add_argument("--model", default="uniter", help="preset whose ctrl fwd+bwd rate is measured (default uniter)")
    parser.add_argument("--model-batch", type=int, default=None,
                        help="batch of the step timing (default: 2 on CPU, 32 on an accelerator)")
    parser.add_argument("--model-iters", type=int, default=None,
                        help="timed step calls, median reported (default: 3 on CPU, 20 on an accelerator)")
    parser.add_argument("--model-warmup", type=int, default=None,
                        help="untimed step calls first (default: 1 on CPU, 3 on an accelerator)")
    parser.add_argument("--model-dtype", choices=("float32", "bfloat16"), default=None,
                        help="matmul dtype of the step (default: float32 on CPU, bfloat16 on an accelerator)")
    parser.add_argument("--no-model", action="store_true", help="skip the step timing")
    parser.add_argument("--in-place", action="store_true",
                        help="also read the same pairs in place from a VOLTA Conceptual Captions LMDB (msgpack) "
                             "through jaxvl.data.inplace, beside the ArrayRecord rows")
    parser.add_argument("--image-store", action="store_true",
                        help="also prepare and read the same pairs as image stores (layout=images, float32 and "
                             "float16 features), beside the pair layout's rows")
    parser.add_argument("--data-dir", default=None,
                        help="where to write the dataset (default: a temporary directory); rebuilt every run")
    parser.add_argument("--keep", action="store_true", help="keep the written dataset")
    parser.add_argument("--seed", type=int, default=0, help="world and shuffle seed (default 0)")
    parser.add_argument("--out", default=None, help="write machine info and results as JSON to this path")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables of the results")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by ``args`` (see ``add_arguments``); returns machine, rows and summary."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    device = jax_device("auto")
    machine = machine_info(device)
    machine["versions"].update(_data_versions())
    print(format_machine(machine), flush=True)

    knobs = dict(num_images=args.images, num_regions=args.regions, feature_dim=args.feature_dim,
                 num_classes=args.classes, captions_per_image=CAPTIONS_PER_IMAGE, seed=args.seed)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="jaxvl_bench_data_")
    rows: list[dict[str, Any]] = []
    try:
        rows += bench_prepare_parts(knobs, min(args.part_images, args.images), data_dir)
        prep_row, dataset_dir = bench_prepare(knobs, data_dir)
        rows.append(prep_row)
        rows += bench_read(dataset_dir, args)
        if args.image_store:
            rows += bench_image_store(knobs, data_dir, args)
        if args.in_place:
            from jaxvl.data.grain import open_split, tokenizer_for

            lmdb_path = write_cc_lmdb(knobs, data_dir)
            rows += bench_read(f"volta-cc:{lmdb_path}", args, tokenizer_for(open_split(dataset_dir, "train")[1]),
                               path="in place", reading="LMDB read + msgpack decode + checks + pad to R")
        step = None if args.no_model else bench_step(args, device)
    finally:
        if not args.keep:
            for name in ("jaxvl_synthetic_pretrain", "jaxvl_synthetic_pretrain_images", CC_DIR):
                shutil.rmtree(data_dir if args.data_dir is None else os.path.join(data_dir, name),
                              ignore_errors=True)
        else:
            log(f"kept the dataset under {data_dir}")
    summary = summarise(rows, step, machine)
    result = {"command": " ".join(sys.argv), "machine": machine, "world": knobs, "rows": rows, "step": step,
              "summary": summary}
    save_json(result, args.out)
    if args.out:
        log(f"wrote {args.out}")
    if args.markdown:
        print(format_markdown(result), flush=True)
    return result


def _data_versions() -> dict[str, str]:
    out = {}
    for dist in ("grain", "tensorflow-datasets", "array-record", "numpy"):
        try:
            from importlib.metadata import version

            out[dist] = version(dist)
        except Exception:  # noqa: BLE001 -- a missing version must not stop the benchmark
            out[dist] = "?"
    return out


def _quiet_tfds() -> None:
    import tensorflow_datasets as tfds

    logging.getLogger("absl").setLevel(logging.ERROR)  # tfds warns about every custom config
    tfds.disable_progress_bar()


def _row(stage: str, what: str, examples: int, seconds: float, probe: Probe, **extra: Any) -> dict[str, Any]:
    row = {"stage": stage, "what": what, "examples": examples, "seconds": seconds,
           "examples_per_s": examples / seconds if seconds > 0 else None, **probe.finish()}
    row.update(extra)
    log(f"{stage}: {what}: {examples} examples in {seconds:.2f} s = {row['examples_per_s']:.1f} ex/s "
        f"(load {row['loadavg_1m_start']} -> {row['loadavg_1m_end']}; other processes busy "
        f"{fmt(row['other_cores'], '.2f')} cores)")
    return row


# ---------------------------------------------------------------------------------------- prepare


def bench_prepare_parts(knobs: dict[str, Any], images: int, data_dir: str) -> list[dict[str, Any]]:
    """Generation alone and encode + serialise alone, on the world's first ``images`` images."""
    _quiet_tfds()
    from jaxvl.data.builders.common import encode_regions
    from jaxvl.data.builders.synthetic import synthetic_builders, synthetic_config
    from jaxvl.data.synthetic import World, WorldConfig

    world = World(WorldConfig(**knobs))
    probe = Probe()
    start = time.perf_counter()
    generated = [world[i] for i in range(images)]
    seconds = time.perf_counter() - start
    examples = sum(len(img.captions) for img in generated)
    rows = [_row("prepare", "generate the synthetic world only", examples, seconds, probe, images=images)]

    builder = synthetic_builders(synthetic_config(val_images=0, **knobs), data_dir)[0]
    spec, features = builder.region_spec(), builder.info.features
    probe = Probe()
    start = time.perf_counter()
    nbytes = 0
    for img in generated:
        for caption in img.captions:
            example = {"image_id": img.image_id, "caption": caption, **encode_regions(img.regions, spec, "bench")}
            nbytes += len(features.serialize_example(example))
    seconds = time.perf_counter() - start
    rows.append(_row("prepare", "encode_regions + tf.Example serialise only", examples, seconds, probe,
                     images=images, serialized_bytes_per_example=nbytes / examples))
    return rows


def bench_prepare(knobs: dict[str, Any], data_dir: str) -> tuple[dict[str, Any], str]:
    """``download_and_prepare`` of the synthetic pretraining dataset (rebuilt), timed end to end."""
    import tensorflow_datasets as tfds

    from jaxvl.data.builders.synthetic import synthetic_builders, synthetic_config

    _quiet_tfds()
    builder = synthetic_builders(synthetic_config(val_images=0, **knobs), data_dir)[0]
    config = tfds.download.DownloadConfig(download_mode=tfds.GenerateMode.FORCE_REDOWNLOAD, try_download_gcs=False)
    probe = Probe()
    start = time.perf_counter()
    builder.download_and_prepare(download_config=config, download_dir=os.path.join(data_dir, "downloads"))
    seconds = time.perf_counter() - start
    examples = builder.info.splits["train"].num_examples
    stored = sum(os.path.getsize(p) for p in glob.glob(os.path.join(builder.data_dir, "*array_record*")))
    row = _row("prepare", "jaxvl_synthetic_pretrain download_and_prepare (generate + encode + write)", examples,
               seconds, probe, images=knobs["num_images"], stored_bytes=stored,
               stored_bytes_per_example=stored / examples, mb_per_s=stored / seconds / 1e6)
    return row, builder.data_dir


def bench_image_store(knobs: dict[str, Any], data_dir: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per features dtype: the image-store encoding alone (first ``--part-images`` images), the store's
    ``download_and_prepare`` (generate + encode + write, timed end to end), then ``bench_read`` of it."""
    import tensorflow_datasets as tfds

    from jaxvl.data.builders.images import ImagePairsBuilder
    from jaxvl.data.builders.synthetic import synthetic_builders, synthetic_config
    from jaxvl.data.imagestore.writer import caption_record, image_record

    _quiet_tfds()
    rows = []
    config = tfds.download.DownloadConfig(download_mode=tfds.GenerateMode.FORCE_REDOWNLOAD, try_download_gcs=False)
    for dtype in ("float32", "float16"):
        pairs = synthetic_builders(synthetic_config(val_images=0, **knobs), data_dir)[0]  # a fresh world each time
        images = [pairs.world[i] for i in range(min(args.part_images, args.images))]
        spec, nbytes, examples = pairs.region_spec(), 0, sum(len(img.captions) for img in images)
        probe = Probe()
        start = time.perf_counter()
        for img in images:
            nbytes += len(image_record(img.regions, spec, dtype, "bench"))
            nbytes += sum(len(caption_record(0, img.image_id, c)) for c in img.captions)
        rows.append(_row("prepare", f"image store ({dtype}): encode_regions + raw-bytes encode only", examples,
                         time.perf_counter() - start, probe, images=len(images), layout="images",
                         features_dtype=dtype, serialized_bytes_per_example=nbytes / examples))
        builder = ImagePairsBuilder(synthetic_builders(synthetic_config(val_images=0, **knobs), data_dir)[0],
                                    data_dir, dtype)
        probe = Probe()
        start = time.perf_counter()
        builder.download_and_prepare(download_config=config)
        seconds = time.perf_counter() - start
        examples = builder.info.splits["train"].num_examples
        stored = sum(os.path.getsize(p) for p in glob.glob(os.path.join(builder.data_dir, "*array_record*")))
        rows.append(_row("prepare", f"image store ({dtype}) download_and_prepare (generate + encode + write)",
                         examples, seconds, probe, images=knobs["num_images"], layout="images", features_dtype=dtype,
                         stored_bytes=stored, stored_bytes_per_example=stored / examples,
                         mb_per_s=stored / seconds / 1e6))
        cast = " + float16 -> float32" if dtype == "float16" else ""
        rows += bench_read(builder.data_dir, args, path=f"image store {dtype}",
                           reading=f"caption + image ArrayRecord reads, raw-bytes decode, pad to R{cast}")
    return rows


# ------------------------------------------------------------------------------------------- read

CC_DIR = "conceptual_captions"
VOLTA_ATTRIBUTES = 401  # columns of VOLTA's attr_scores (400 Visual Genome attributes + none)


def write_cc_lmdb(knobs: dict[str, Any], data_dir: str) -> str:
    """The world's train pairs as a VOLTA Conceptual Captions LMDB (single file, msgpack), for ``--in-place``.

    Records as ``jaxvl world export`` writes them (``cc_datapoint``), with ``attr_scores`` widened to VOLTA's 401
    columns so that a record is as large as a real one. Returns the LMDB's path.
    """
    import lmdb

    from jaxvl.data.synthetic import World, WorldConfig
    from jaxvl.data.synthetic.volta_files import CC_TRAIN_LMDB, cc_datapoint, dumps_value

    world = World(WorldConfig(**knobs))
    os.makedirs(os.path.join(data_dir, CC_DIR), exist_ok=True)
    path = os.path.join(data_dir, CC_DIR, CC_TRAIN_LMDB)
    start, keys = time.perf_counter(), []
    env = lmdb.open(path, subdir=False, map_size=1 << 40, meminit=False)
    try:
        with env.begin(write=True) as txn:
            for i in range(knobs["num_images"]):
                image = world[i]
                for caption in image.captions:
                    dp = cc_datapoint(world, image, caption)
                    scores = np.zeros((dp[6].shape[0], VOLTA_ATTRIBUTES), np.float32)
                    scores[:, :dp[6].shape[1]] = dp[6]
                    dp[6] = scores
                    keys.append(b"%08d" % len(keys))
                    txn.put(keys[-1], dumps_value(dp))
            txn.put(b"__keys__", dumps_value(keys))
    finally:
        env.close()
    log(f"wrote {len(keys)} pairs as a VOLTA CC LMDB ({os.path.getsize(path) / 1e6:.0f} MB) in "
        f"{time.perf_counter() - start:.1f} s: {path}")
    return path


def _batch_bytes(batch: dict[str, np.ndarray]) -> int:
    return sum(np.asarray(v).nbytes for v in batch.values())


def bench_read(dataset: str, args: argparse.Namespace, tokenizer: Any = None, path: str = "ArrayRecord",
               reading: str = "ArrayRecord read + tf.Example decode") -> list[dict[str, Any]]:
    """The data source alone, the transform alone (ArrayRecord only), then the Grain pipeline per (workers,
    threads). ``dataset``: what ``open_split`` opens (a prepared directory, or a source string read in place,
    ``path="in place"``, which needs ``tokenizer``); ``reading``: what ``source[i]`` does, for the row."""
    import grain

    from jaxvl.data.grain import PretrainTransform, open_split, tokenizer_for
    from jaxvl.pretrain.data import PipelineConfig, pretrain_dataset

    source, info = open_split(dataset, "train")
    tokenizer = tokenizer_for(info) if tokenizer is None else tokenizer
    n = len(source)
    rows = []

    part = min(n, args.part_examples)
    order = np.random.default_rng(args.seed).permutation(n)[:part]
    probe = Probe()
    start, cpu = time.perf_counter(), time.process_time()
    decoded = [source[int(i)] for i in order]
    rows.append(_row("read", f"data source only: source[i] ({reading}), shuffled order", part,
                     time.perf_counter() - start, probe, threads=1, workers=0, path=path,
                     cpu_ms_per_example=(time.process_time() - cpu) * 1e3 / part))
    if path == "ArrayRecord":
        transform = PretrainTransform(tokenizer, args.text_len)
        probe = Probe()
        start, cpu = time.perf_counter(), time.process_time()
        for example in decoded:
            transform.map(example)
        rows.append(_row("read", "PretrainTransform only (tokenise, pad, [IMG] row), on decoded examples", part,
                         time.perf_counter() - start, probe, threads=1, workers=0, path=path,
                         cpu_ms_per_example=(time.process_time() - cpu) * 1e3 / part))
    del decoded

    epochs = max(1, math.ceil(args.read_examples / n))
    if any(w > 0 for w in args.workers):
        _absl_flags_parsed()
    for workers in args.workers:
        for threads in args.threads:
            cfg = PipelineConfig(batch_size=args.batch, max_seq_length=args.text_len, seed=args.seed,
                                 num_epochs=epochs, num_threads=threads)
            ds = pretrain_dataset(source, tokenizer, cfg, shard=grain.sharding.NoSharding())
            if workers:
                ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
            probe = Probe()
            start = time.perf_counter()
            it = iter(ds)
            first = next(it)
            first_s = time.perf_counter() - start
            per_example_bytes = _batch_bytes(first) / args.batch
            count, start, cpu = 0, time.perf_counter(), time.process_time()
            for batch in it:
                count += len(batch["input_ids"])
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            what = (f"Grain pipeline ({path}), {threads} read thread{'s' if threads > 1 else ''}"
                    + (f" x {workers} worker process{'es' if workers > 1 else ''}" if workers else ""))
            rows.append(_row("read", what, count, seconds, probe, path=path, threads=threads, workers=workers,
                             epochs=epochs, batch=args.batch, first_batch_s=first_s,
                             batch_bytes_per_example=per_example_bytes,
                             mb_per_s=count * per_example_bytes / seconds / 1e6,
                             cpu_ms_per_example=None if workers else cpu * 1e3 / count,
                             batch_shapes={k: list(np.shape(v)) for k, v in first.items()}))
            del it, ds
    return rows


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app nothing parses them, so mark them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# ------------------------------------------------------------------------------------------- step


def bench_step(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Forward+backward time per example of the ctrl ``args.model`` (``jaxvl.benchmarks.models.bench_jax``)."""
    import gc

    import jax

    accelerator = device.platform != "cpu"
    batch = args.model_batch or (32 if accelerator else 2)
    warmup = args.model_warmup if args.model_warmup is not None else (3 if accelerator else 1)
    iters = args.model_iters if args.model_iters is not None else (20 if accelerator else 3)
    dtype = args.model_dtype or ("bfloat16" if accelerator else "float32")
    margs = argparse.Namespace(batch=batch, warmup=warmup, iters=iters, text_len=args.text_len,
                               regions=args.regions + 1, dtype=dtype, dropout=False, seed=args.seed,
                               no_scan_compile=True, time_scan=False)
    probe = Probe()
    log(f"step: {args.model}/ctrl, batch {batch}, {dtype}, {warmup} warm-up + {iters} timed calls")
    with jax.default_device(device):
        row, _ = bench_jax(args.model, "ctrl", batch, margs, warmup, iters)
    gc.collect()
    out = {"preset": args.model, "size": "ctrl", "batch": batch, "dtype": dtype, "warmup": warmup, "iters": iters,
           "device": f"{device.platform}: {device.device_kind}",
           "fwdbwd_ms": row["fwdbwd_ms"], "fwdbwd_runs_ms": row["fwdbwd_runs_ms"], "fwd_ms": row["fwd_ms"],
           "compile_fwdbwd_s": row["compile_fwdbwd_s"], "examples_per_s": 1e3 / row["fwdbwd_ms"],
           **probe.finish()}  # the probe spans init, compiles and the fwd timing too
    log(f"step: fwd+bwd {out['fwdbwd_ms']:.1f} ms/ex = {out['examples_per_s']:.2f} ex/s "
        f"(load {out['loadavg_1m_start']} -> {out['loadavg_1m_end']}; other processes busy "
        f"{fmt(out['other_cores'], '.2f')} cores)")
    return out


# ---------------------------------------------------------------------------------------- summary


def summarise(rows: list[dict[str, Any]], step: dict[str, Any] | None, machine: dict[str, Any]) -> dict[str, Any]:
    """Bytes per example, the best pipeline rate, and how it compares with the step rates."""
    pipeline = [r for r in rows if r["stage"] == "read" and "first_batch_s" in r]
    best = max(pipeline, key=lambda r: r["examples_per_s"]) if pipeline else None
    prep = next((r for r in rows if "stored_bytes" in r), None)
    h200_rate = 1e3 / H200_VISUALBERT_BF16_MS
    out: dict[str, Any] = {
        "batch_bytes_per_example": best["batch_bytes_per_example"] if best else None,
        "stored_bytes_per_example": prep["stored_bytes_per_example"] if prep else None,
        "best_pipeline": best["what"] if best else None,
        "best_pipeline_examples_per_s": best["examples_per_s"] if best else None,
        "h200_visualbert_bf16_ms_per_example": H200_VISUALBERT_BF16_MS,
        "h200_needed_examples_per_s": h200_rate,
    }
    if best:
        out["h200_needed_mb_per_s"] = h200_rate * best["batch_bytes_per_example"] / 1e6
        out["pipeline_over_h200"] = best["examples_per_s"] / h200_rate
    if step and best:
        out["pipeline_over_step"] = best["examples_per_s"] / step["examples_per_s"]
    out["cores"] = machine["cores"]
    return out


def format_markdown(result: dict[str, Any]) -> str:
    """The rows as a markdown table, then the step and the summary as a second one."""
    cols = ["stage", "what", "threads x workers", "examples", "s", "examples/s", "CPU ms/example", "MB/s",
            "first batch s", "load start / end", "other procs, cores"]
    rows = [[r["stage"], r["what"], "-" if "threads" not in r else f"{r['threads']} x {r['workers']}", r["examples"],
             f"{r['seconds']:.2f}", fmt(r["examples_per_s"], ".1f"), fmt(r.get("cpu_ms_per_example"), ".2f"),
             fmt(r.get("mb_per_s"), ".0f"), fmt(r.get("first_batch_s"), ".2f"), load_cell(r, others=False),
             fmt(r.get("other_cores"), ".2f")] for r in result["rows"]]
    s, step = result["summary"], result["step"]
    consumers = []
    if step:
        consumers.append([f"{step['preset']} ctrl fwd+bwd, {step['dtype']}, B={step['batch']}, {step['device']} "
                          f"(measured; load {load_cell(step, others=False)}, other procs "
                          f"{fmt(step.get('other_cores'), '.2f')} cores)", f"{step['fwdbwd_ms']:.1f}",
                          f"{step['examples_per_s']:.2f}", f"{fmt(s.get('pipeline_over_step'), '.0f')}x"])
    consumers.append(["visualbert ctrl fwd+bwd, bfloat16, B=32, one H200 (BENCHMARKS.md)",
                      f"{s['h200_visualbert_bf16_ms_per_example']:.2f}", f"{s['h200_needed_examples_per_s']:.0f}",
                      f"{fmt(s.get('pipeline_over_h200'), '.2f')}x"])
    return "\n".join([
        markdown_table(cols, rows), "",
        markdown_table(["consumer", "ms/example", "examples/s", "best pipeline / consumer"], consumers), "",
        f"- batch bytes per example (all fields): {fmt(s['batch_bytes_per_example'], ',.0f')}; "
        f"stored ArrayRecord bytes per example: {fmt(s['stored_bytes_per_example'], ',.0f')}",
        f"- an H200 step needs {s['h200_needed_examples_per_s']:.0f} examples/s = "
        f"{fmt(s.get('h200_needed_mb_per_s'), ',.0f')} MB/s of batches"])
