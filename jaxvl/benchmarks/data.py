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
- **feed** (``--feed``, instead of all the above): can one host feed its accelerators? The pair layout and the
  image stores (float32, float16) are prepared, then the pretraining pipeline reads each in a steady state (after
  the first batch, stopped after ``--read-examples``) per (``--workers``, ``--threads``): Grain read threads in this
  process, and Grain worker processes (``mp_prefetch``) each with those threads. Each row records the wall rate,
  the CPU seconds this process and its worker processes spent (``/proc``, per process), and so examples per
  CPU-second: examples/s per core actually used. The summary projects that per-core rate to a 16-core host
  (``FEED_HOST_CORES``; linear scaling assumed, which a small machine cannot test) against the ctrl step's
  consumption on one accelerator (``H200_VISUALBERT_BF16_MS``, the only accelerator figure so far; ``jaxvl bench
  device`` would measure an H100's), with 1 and 8 accelerators per host, and names the configurations that reach
  ``FEED_TARGET`` (5) times the host's consumption.

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
FEED_HOST_CORES = 16  # the host the feed projection is for
FEED_ACCELERATORS = (1, 8)  # accelerators per host in the feed projection
FEED_TARGET = 5  # the feed projection asks for this many times the host's consumption

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
    parser.add_argument("--feed", action="store_true",
                        help="only the feed rows: the pair layout and the image stores (float32, float16) read by the "
                             "pretraining pipeline per --workers x --threads, with CPU time per example of this "
                             "process and its workers, projected to a 16-core host against an accelerator's step")
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
    if args.feed:
        return run_feed(args, machine, knobs, data_dir)
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
        _clean(data_dir, args)
    summary = summarise(rows, step, machine)
    result = {"command": " ".join(sys.argv), "machine": machine, "world": knobs, "rows": rows, "step": step,
              "summary": summary}
    save_json(result, args.out)
    if args.out:
        log(f"wrote {args.out}")
    if args.markdown:
        print(format_markdown(result), flush=True)
    return result


def _clean(data_dir: str, args: argparse.Namespace) -> None:
    """Removes the datasets written under ``data_dir`` (all of it when it is the temporary one), unless ``--keep``."""
    if args.keep:
        log(f"kept the dataset under {data_dir}")
        return
    for name in ("jaxvl_synthetic_pretrain", "jaxvl_synthetic_pretrain_images", CC_DIR):
        shutil.rmtree(data_dir if args.data_dir is None else os.path.join(data_dir, name), ignore_errors=True)


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
    from jaxvl.data.builders.synthetic import synthetic_builders, synthetic_config
    from jaxvl.data.imagestore.writer import caption_record, image_record

    _quiet_tfds()
    rows = []
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
        row, store = prepare_image_store(knobs, data_dir, dtype)
        rows.append(row)
        cast = " + float16 -> float32" if dtype == "float16" else ""
        rows += bench_read(store, args, path=f"image store {dtype}",
                           reading=f"caption + image ArrayRecord reads, raw-bytes decode, pad to R{cast}")
    return rows


def prepare_image_store(knobs: dict[str, Any], data_dir: str, dtype: str) -> tuple[dict[str, Any], str]:
    """The image store (``dtype`` features) of the synthetic pairs, rebuilt by ``ImagePairsBuilder``'s
    ``download_and_prepare`` and timed end to end; its row and its directory."""
    import tensorflow_datasets as tfds

    from jaxvl.data.builders.images import ImagePairsBuilder
    from jaxvl.data.builders.synthetic import synthetic_builders, synthetic_config

    _quiet_tfds()
    config = tfds.download.DownloadConfig(download_mode=tfds.GenerateMode.FORCE_REDOWNLOAD, try_download_gcs=False)
    builder = ImagePairsBuilder(synthetic_builders(synthetic_config(val_images=0, **knobs), data_dir)[0],
                                data_dir, dtype)
    probe = Probe()
    start = time.perf_counter()
    builder.download_and_prepare(download_config=config)
    seconds = time.perf_counter() - start
    examples = builder.info.splits["train"].num_examples
    stored = sum(os.path.getsize(p) for p in glob.glob(os.path.join(builder.data_dir, "*array_record*")))
    row = _row("prepare", f"image store ({dtype}) download_and_prepare (generate + encode + write)", examples,
               seconds, probe, images=knobs["num_images"], layout="images", features_dtype=dtype, stored_bytes=stored,
               stored_bytes_per_example=stored / examples, mb_per_s=stored / seconds / 1e6)
    return row, builder.data_dir


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


# ------------------------------------------------------------------------------------------- feed


def run_feed(args: argparse.Namespace, machine: dict[str, Any], knobs: dict[str, Any],
             data_dir: str) -> dict[str, Any]:
    """``--feed``: prepares the pair layout and both image stores, times ``feed_row`` per store x workers x
    threads, then ``feed_summary``; returns machine, rows and summary (printed as markdown with ``--markdown``)."""
    from jaxvl.data.grain import open_split, tokenizer_for

    rows: list[dict[str, Any]] = []
    result = {"command": " ".join(sys.argv), "machine": machine, "world": knobs, "rows": rows, "step": None}
    try:
        prep_row, pairs_dir = bench_prepare(knobs, data_dir)
        rows.append(prep_row)
        stores = [("pairs", pairs_dir)]
        for dtype in ("float32", "float16"):
            prep_row, store = prepare_image_store(knobs, data_dir, dtype)
            rows.append(prep_row)
            stores.append((f"images {dtype}", store))
        for layout, directory in stores:
            source, info = open_split(directory, "train")
            tokenizer = tokenizer_for(info)
            for workers in args.workers:
                for threads in args.threads:
                    rows.append(feed_row(source, tokenizer, layout, workers, threads, args))
                    save_json(result, args.out)
            del source
    finally:
        _clean(data_dir, args)
    result["summary"] = feed_summary(rows)
    save_json(result, args.out)
    if args.out:
        log(f"wrote {args.out}")
    if args.markdown:
        print(format_feed_markdown(result), flush=True)
    return result


def process_tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process (with its reaped children's) and of each live descendant, by
    pid, from ``/proc``; off Linux, this process and its reaped children only (``resource.getrusage``)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, list[str]] = {}
        for path in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(path, encoding="utf-8") as f:
                    stats[int(path.split("/")[2])] = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
        me = os.getpid()
        out = {me: sum(int(x) for x in stats[me][11:15]) / tick}  # utime stime cutime cstime
        frontier = [me]
        while frontier:
            parent = frontier.pop()
            for pid, fields in stats.items():
                if int(fields[1]) == parent and pid not in out:
                    out[pid] = sum(int(x) for x in fields[11:13]) / tick
                    frontier.append(pid)
        return out
    except (OSError, ValueError, KeyError, AttributeError):
        import resource

        usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return {os.getpid(): sum(u.ru_utime + u.ru_stime for u in usage)}


def cpu_seconds_since(before: dict[int, float]) -> float:
    """CPU seconds this process tree spent since ``before`` (``process_tree_cpu``): per pid, a process born
    meanwhile counted whole; a descendant that ended meanwhile is lost unless this process reaped it."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in process_tree_cpu().items())


def feed_row(source: Any, tokenizer: Any, layout: str, workers: int, threads: int,
             args: argparse.Namespace) -> dict[str, Any]:
    """The pretraining pipeline over ``source`` (endless epochs) with ``threads`` read threads and ``workers``
    Grain worker processes: the first batch timed apart, then ``--read-examples`` (whole batches) timed in wall
    and in CPU seconds of this process and its workers; the iterator is closed before the workers could exit."""
    import grain

    from jaxvl.pretrain.data import PipelineConfig, pretrain_dataset

    cfg = PipelineConfig(batch_size=args.batch, max_seq_length=args.text_len, seed=args.seed, num_threads=threads)
    ds = pretrain_dataset(source, tokenizer, cfg, shard=grain.sharding.NoSharding())
    if workers:
        _absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    probe = Probe()
    start = time.perf_counter()
    it = iter(ds)
    first = next(it)
    first_s = time.perf_counter() - start
    count, cpu, start = 0, process_tree_cpu(), time.perf_counter()
    while count < args.read_examples:
        count += len(next(it)["input_ids"])
    seconds, cpu_s = time.perf_counter() - start, cpu_seconds_since(cpu)
    it.close()
    per_core = count / cpu_s if cpu_s > 0 else None
    what = (f"{layout}: {threads} read thread{'s' if threads > 1 else ''}"
            + (f" in each of {workers} worker process{'es' if workers > 1 else ''}" if workers else ""))
    return _row("feed", what, count, seconds, probe, layout=layout, threads=threads, workers=workers, batch=args.batch,
                first_batch_s=first_s, cpu_s=cpu_s, cores_used=cpu_s / seconds,
                cpu_ms_per_example=cpu_s * 1e3 / count, examples_per_core_s=per_core,
                batch_bytes_per_example=_batch_bytes(first) / args.batch,
                batch_shapes={k: list(np.shape(v)) for k, v in first.items()})


def feed_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The projection of each feed row to a ``FEED_HOST_CORES``-core host (per-core rate x cores: linear scaling
    assumed) against the consumption of ``FEED_ACCELERATORS`` accelerators per host at the H200 ctrl step rate,
    and the configurations reaching ``FEED_TARGET`` x that consumption (fastest per core first): those with worker
    processes (one per core spreads the work by construction) apart from those with read threads only, which
    reach it only if one Python process's threads could keep every core busy (the GIL serialises Python code)."""
    consumption = 1e3 / H200_VISUALBERT_BF16_MS
    projections = []
    for r in rows:
        if r["stage"] != "feed" or not r["examples_per_core_s"]:
            continue
        host = r["examples_per_core_s"] * FEED_HOST_CORES
        projections.append({
            "what": r["what"], "layout": r["layout"], "threads": r["threads"], "workers": r["workers"],
            "processes": r["workers"] > 0, "examples_per_core_s": r["examples_per_core_s"], "host_examples_per_s": host,
            **{f"over_{n}_accelerators": host / (n * consumption) for n in FEED_ACCELERATORS},
            **{f"cores_for_{FEED_TARGET}x_{n}_accelerators": FEED_TARGET * n * consumption / r["examples_per_core_s"]
               for n in FEED_ACCELERATORS}})
    projections.sort(key=lambda p: -p["examples_per_core_s"])
    return {
        "host_cores": FEED_HOST_CORES, "target": FEED_TARGET, "accelerators_per_host": list(FEED_ACCELERATORS),
        "consumer": "visualbert ctrl fwd+bwd, bfloat16, B=32, one H200 (BENCHMARKS.md; a stand-in for an H100)",
        "consumer_examples_per_s": consumption,
        "needed_examples_per_s": {str(n): FEED_TARGET * n * consumption for n in FEED_ACCELERATORS},
        "projections": projections,
        "reaching_target": {str(n): [p["what"] for p in projections
                                     if p["processes"] and p[f"over_{n}_accelerators"] >= FEED_TARGET]
                            for n in FEED_ACCELERATORS},
        "reaching_target_threads_only": {str(n): [p["what"] for p in projections if not p["processes"]
                                                  and p[f"over_{n}_accelerators"] >= FEED_TARGET]
                                         for n in FEED_ACCELERATORS},
        "assumption": f"per-core rate x {FEED_HOST_CORES} cores: linear scaling, not measured beyond this machine's "
                      "cores; the consumer is an H200 figure standing in for an H100 (jaxvl bench device measures "
                      "one)"}


def format_feed_markdown(result: dict[str, Any]) -> str:
    """The feed rows, then the projection (labelled as one) and the configurations reaching the target."""
    s = result["summary"]
    cols = ["layout", "threads x workers", "examples", "s", "examples/s", "cores used", "CPU ms/example",
            "examples/s per core", "first batch s", "load start / end", "other procs, cores"]
    rows = [[r["layout"], f"{r['threads']} x {r['workers']}", r["examples"], f"{r['seconds']:.2f}",
             fmt(r["examples_per_s"], ".1f"), fmt(r["cores_used"], ".2f"), fmt(r["cpu_ms_per_example"], ".2f"),
             fmt(r["examples_per_core_s"], ",.0f"), fmt(r["first_batch_s"], ".2f"), load_cell(r, others=False),
             fmt(r.get("other_cores"), ".2f")] for r in result["rows"] if r["stage"] == "feed"]
    n1, n8 = FEED_ACCELERATORS
    proj_cols = ["configuration", f"projected ex/s per {s['host_cores']}-core host",
                 f"x {n1} accelerator", f"x {n8} accelerators",
                 f"cores for {s['target']}x ({n1} acc.)", f"cores for {s['target']}x ({n8} acc.)"]
    proj = [[p["what"], fmt(p["host_examples_per_s"], ",.0f"), fmt(p[f"over_{n1}_accelerators"], ".1f"),
             fmt(p[f"over_{n8}_accelerators"], ".2f"), fmt(p[f"cores_for_{s['target']}x_{n1}_accelerators"], ".1f"),
             fmt(p[f"cores_for_{s['target']}x_{n8}_accelerators"], ".0f")] for p in s["projections"]]
    lines = [markdown_table(cols, rows), "",
             f"**Projection** ({s['assumption']}); consumer: {s['consumer']}, {s['consumer_examples_per_s']:,.0f} "
             "examples/s per accelerator.", "", markdown_table(proj_cols, proj), ""]
    for n in FEED_ACCELERATORS:
        reach, threads = s["reaching_target"][str(n)], s["reaching_target_threads_only"][str(n)]
        lines.append(f"- {s['target']}x the consumption of {n} accelerator{'s' if n > 1 else ''} per host "
                     f"({s['needed_examples_per_s'][str(n)]:,.0f} examples/s), with worker processes: "
                     + ("; ".join(reach) if reach else f"no configuration reaches it on {s['host_cores']} cores")
                     + (f"; with read threads only, if one process's threads kept {s['host_cores']} cores busy "
                        f"(the GIL serialises Python code): {'; '.join(threads)}" if threads else ""))
    return "\n".join(lines)


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
