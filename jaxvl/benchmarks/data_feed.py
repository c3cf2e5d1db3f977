"""``jaxvl bench data --feed``: can one host feed its accelerators? (``jaxvl.benchmarks.data``'s module doc.)

``run_feed`` prepares the pair layout and both image stores, then times the pretraining pipeline over each per
(workers, threads) (``feed_row``: wall time, and CPU seconds of this process and its Grain workers from ``/proc``,
``process_tree_cpu``); ``feed_summary`` projects the per-core rates to a ``FEED_HOST_CORES``-core host against the
accelerators' consumption, and ``format_feed_markdown`` prints it all.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from typing import Any

import numpy as np

from jaxvl.benchmarks.common import Probe, fmt, load_cell, log, markdown_table, save_json
from jaxvl.benchmarks.data_stages import (
    batch_bytes,
    bench_prepare,
    mark_absl_flags_parsed,
    prepare_image_store,
    remove_datasets,
    stage_row,
)

H200_VISUALBERT_BF16_MS = 0.56  # BENCHMARKS.md: ctrl VisualBERT fwd+bwd, bf16, batch 32, one H200
FEED_HOST_CORES = 16  # the host the feed projection is for
FEED_ACCELERATORS = (1, 8)  # accelerators per host in the feed projection
FEED_TARGET = 5  # the feed projection asks for this many times the host's consumption


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
        remove_datasets(data_dir, args)
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
        mark_absl_flags_parsed()
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
    return stage_row("feed", what, count, seconds, probe, layout=layout, threads=threads, workers=workers,
                     batch=args.batch, first_batch_s=first_s, cpu_s=cpu_s, cores_used=cpu_s / seconds,
                     cpu_ms_per_example=cpu_s * 1e3 / count, examples_per_core_s=per_core,
                     batch_bytes_per_example=batch_bytes(first) / args.batch,
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
