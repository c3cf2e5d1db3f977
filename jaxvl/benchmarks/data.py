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

This module holds the hooks, the step timing and the summary; the prepare and read stages are timed by
``jaxvl.benchmarks.data_stages``, the feed rows by ``jaxvl.benchmarks.data_feed``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

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
from jaxvl.benchmarks.data_feed import H200_VISUALBERT_BF16_MS, run_feed
from jaxvl.benchmarks.data_stages import (
    bench_image_store,
    bench_prepare,
    bench_prepare_parts,
    bench_read,
    remove_datasets,
    write_cc_lmdb,
)
from jaxvl.benchmarks.models import bench_jax

CAPTIONS_PER_IMAGE = 2  # WorldConfig's default: two pretraining examples per image


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
        remove_datasets(data_dir, args)
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
    for dist in ("grain", "tensorflow-datasets", "array-record", "numpy", "protobuf"):  # protobuf: tf.Example decoding
        try:
            from importlib.metadata import version

            out[dist] = version(dist)
        except Exception:  # noqa: BLE001 -- a missing version must not stop the benchmark
            out[dist] = "?"
    return out


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
