"""The timed stages of ``jaxvl bench data`` (``jaxvl.benchmarks.data``'s module doc), each returning result rows
(``stage_row``): **prepare** (``bench_prepare_parts``, ``bench_prepare``, ``prepare_image_store``), **read**
(``bench_read``: the data source, the transform and the Grain pipeline per workers x threads), the image stores
prepared and read (``bench_image_store``), and the VOLTA Conceptual Captions LMDB that ``--in-place`` reads
(``write_cc_lmdb``); and ``remove_datasets``, which removes what they wrote.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import shutil
import time
from typing import Any

import numpy as np

from jaxvl.benchmarks.common import Probe, fmt, log

CC_DIR = "conceptual_captions"
VOLTA_ATTRIBUTES = 401  # columns of VOLTA's attr_scores (400 Visual Genome attributes + none)


def remove_datasets(data_dir: str, args: argparse.Namespace) -> None:
    """Removes the datasets written under ``data_dir`` (all of it when it is the temporary one), unless ``--keep``."""
    if args.keep:
        log(f"kept the dataset under {data_dir}")
        return
    for name in ("jaxvl_synthetic_pretrain", "jaxvl_synthetic_pretrain_images", CC_DIR):
        shutil.rmtree(data_dir if args.data_dir is None else os.path.join(data_dir, name), ignore_errors=True)


def _quiet_tfds() -> None:
    import tensorflow_datasets as tfds

    logging.getLogger("absl").setLevel(logging.ERROR)  # tfds warns about every custom config
    tfds.disable_progress_bar()


def stage_row(stage: str, what: str, examples: int, seconds: float, probe: Probe, **extra: Any) -> dict[str, Any]:
    """The result row of ``examples`` through ``stage`` in ``seconds``: their rate, the load and the other
    processes' cores (``probe``, finished here), and ``extra``; logged as one line."""
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
    rows = [stage_row("prepare", "generate the synthetic world only", examples, seconds, probe, images=images)]

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
    rows.append(stage_row("prepare", "encode_regions + tf.Example serialise only", examples, seconds, probe,
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
    row = stage_row("prepare", "jaxvl_synthetic_pretrain download_and_prepare (generate + encode + write)", examples,
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
        rows.append(stage_row("prepare", f"image store ({dtype}): encode_regions + raw-bytes encode only", examples,
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
    row = stage_row("prepare", f"image store ({dtype}) download_and_prepare (generate + encode + write)", examples,
                    seconds, probe, images=knobs["num_images"], layout="images", features_dtype=dtype,
                    stored_bytes=stored, stored_bytes_per_example=stored / examples, mb_per_s=stored / seconds / 1e6)
    return row, builder.data_dir


# ------------------------------------------------------------------------------------------- read


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


def batch_bytes(batch: dict[str, np.ndarray]) -> int:
    """The bytes of ``batch``, all its fields."""
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
    rows.append(stage_row("read", f"data source only: source[i] ({reading}), shuffled order", part,
                          time.perf_counter() - start, probe, threads=1, workers=0, path=path,
                          cpu_ms_per_example=(time.process_time() - cpu) * 1e3 / part))
    if path == "ArrayRecord":
        transform = PretrainTransform(tokenizer, args.text_len)
        probe = Probe()
        start, cpu = time.perf_counter(), time.process_time()
        for example in decoded:
            transform.map(example)
        rows.append(stage_row("read", "PretrainTransform only (tokenise, pad, [IMG] row), on decoded examples", part,
                              time.perf_counter() - start, probe, threads=1, workers=0, path=path,
                              cpu_ms_per_example=(time.process_time() - cpu) * 1e3 / part))
    del decoded

    epochs = max(1, math.ceil(args.read_examples / n))
    if any(w > 0 for w in args.workers):
        mark_absl_flags_parsed()
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
            per_example_bytes = batch_bytes(first) / args.batch
            count, start, cpu = 0, time.perf_counter(), time.process_time()
            for batch in it:
                count += len(batch["input_ids"])
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            what = (f"Grain pipeline ({path}), {threads} read thread{'s' if threads > 1 else ''}"
                    + (f" x {workers} worker process{'es' if workers > 1 else ''}" if workers else ""))
            rows.append(stage_row("read", what, count, seconds, probe, path=path, threads=threads, workers=workers,
                                  epochs=epochs, batch=args.batch, first_batch_s=first_s,
                                  batch_bytes_per_example=per_example_bytes,
                                  mb_per_s=count * per_example_bytes / seconds / 1e6,
                                  cpu_ms_per_example=None if workers else cpu * 1e3 / count,
                                  batch_shapes={k: list(np.shape(v)) for k, v in first.items()}))
            del it, ds
    return rows


def mark_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app nothing parses them, so mark them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
