"""``jaxvl bench device``: one command that measures everything on one GPU within a time budget.

When a GPU is lent, run this one command from the repository root (the budget includes compile; the
timeout leaves a margin for start-up and a part running over; the cache dir stays outside ``$OUT`` so that
it does not travel back; ``jaxvl/benchmarks/DEVICE.md`` says what to do with the results)::

    PYTHONPATH=$PWD timeout 570 python -m jaxvl.cli bench device --out $OUT/device --cache-dir /tmp/jaxvl_jax_cache \
        --budget 480

It writes ``device.json`` and ``device.md`` under ``--out``, rewritten after every row, so a run cut short
keeps what it measured. ``--smoke`` runs every part at tiny sizes (a CPU check of every code path, not
numbers to report).

Parts, in priority order (``--parts`` picks some; ``jaxvl.benchmarks.device_parts`` drives the existing
benchmark modules): ``pretrain`` (the trainer's step of the five ctrl presets, bf16, batch 256: ms/step,
examples/s, MFU against the measured bf16 matmul peak; then UNITER with bf16 weight gradients, the cost of the
float32 default), ``torch`` (HF LXMERT and VisualBERT fwd+bwd under
CUDA bf16 autocast beside it, as ratios; skipped with the reason without CUDA torch), ``sweep`` (a K=8
vmapped sweep vs 8 sequential runs at tiny and ctrl size: member-steps/s), ``ablate`` (ctrl UNITER and
LXMERT, 6 and 42 members: vmap vs ``member_batch_size=1`` vs the per-condition loop, example-conditions/s
and the projected Flickr30k Entities val time), ``decode`` (beam 5 at ORT size: batched vs per-image loop
vs no-cache loop, captions/s) and ``data`` (the Grain pipeline's examples/s beside the UNITER step's).

The budget: before each part, its estimate (``Sizes.estimates``: seconds on one GPU with a cold compilation
cache, scaled by how the finished parts compared with theirs, within [0.5, 4]) must fit the time left, else
the part is skipped with the reason; inside a part, each unit (a preset, a size, a spec) after the first
must fit as the slowest one so far did. Every part records its wall time and status (done, skipped, error).

Compile time: a persistent compilation cache (``--cache-dir``, default ``OUT/jax_cache``; every program is
written, so a rerun loads instead of compiling and reported compile seconds can be cache loads), XLA's GPU
autotuning lowered (``--xla_gpu_autotune_level``, appended to ``XLA_FLAGS`` when ``run`` starts: the CLI
imports this module without starting JAX's backend, and the JSON records whether it had started; XLA reads
the flag when the backend starts), and ``scan_layers=True`` in the ``pretrain``, ``sweep`` and ``ablate``
parts (the captioner has no scanned layout; ``torch`` and ``data`` compile nothing).
``add_arguments`` and ``run`` are the hooks of ``jaxvl bench device``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax

from jaxvl.benchmarks.common import csv_choices, format_machine, log, machine_info
from jaxvl.benchmarks.device_parts import FULL, PARTS, SMOKE, Budget, Context, Part, Skip

DEFAULT_BUDGET_S = 480.0
DEFAULT_AUTOTUNE_LEVEL = 0  # 0: no autotuning (XLA's default is 4); compile time is what the budget runs out of
SCALE_RANGE = (0.5, 4.0)  # bounds of the factor applied to the estimates of the parts still to run
AUTOTUNE_FLAG = "--xla_gpu_autotune_level"


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench device`` options to ``parser``."""
    names = [p.name for p in PARTS]
    parser.add_argument("--out", required=True, help="directory of device.json, device.md (and jax_cache)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for the whole run, compile included (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--parts", type=csv_choices(names), default=names, metavar="PART[,PART]",
                        help=f"parts to run, in this priority order whatever the order given: {','.join(names)}")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes everywhere: checks every part's code path in minutes on a CPU")
    parser.add_argument("--cache-dir", default=None, help="persistent compilation cache (default: OUT/jax_cache)")
    parser.add_argument("--autotune-level", type=int, choices=range(5), default=DEFAULT_AUTOTUNE_LEVEL,
                        help=f"XLA's GPU autotuning level, 0 (off) to 4 (XLA's default); default "
                             f"{DEFAULT_AUTOTUNE_LEVEL}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the parts of ``args`` within its budget; returns the document written to ``OUT/device.json``."""
    if args.budget <= 0:
        raise SystemExit(f"jaxvl bench device: --budget={args.budget} must be > 0")
    budget = Budget(args.budget)
    os.makedirs(args.out, exist_ok=True)
    with compilation_settings(args.cache_dir or os.path.join(args.out, "jax_cache"), args.autotune_level) as settings:
        device = jax.devices()[0]
        sizes = SMOKE if args.smoke else FULL
        doc: dict[str, Any] = {
            "command": shlex.join(sys.argv), "device_kind": device.device_kind, "smoke": args.smoke,
            "budget_s": args.budget, "elapsed_s": 0.0, "machine": machine_info(device), "settings": settings,
            "sizes": dataclasses.asdict(sizes), "parts": {p.name: {"status": "pending"} for p in PARTS}}
        print(format_machine(doc["machine"]), flush=True)
        save = functools.partial(write_outputs, doc, args.out, budget)
        ctx = Context(sizes, device, budget, doc, save)
        chosen = [p for p in PARTS if p.name in args.parts]
        for p in PARTS:
            if p not in chosen:
                doc["parts"][p.name] = {"status": "skipped", "reason": "not in --parts"}
        save()
        with jax.default_device(device):
            run_parts([(p.name, functools.partial(p.run, ctx)) for p in chosen], sizes.estimates, budget,
                      doc["parts"], save)
    log(f"wrote {os.path.join(args.out, 'device.json')} and device.md in {budget.elapsed():.0f} s")
    return doc


# ---------------------------------------------------------------------------------------- compiling


@contextlib.contextmanager
def compilation_settings(cache_dir: str, autotune_level: int) -> Iterator[dict[str, Any]]:
    """Inside the block: JAX's persistent compilation cache in ``cache_dir`` for every program (no minimum
    compile time or size), and ``--xla_gpu_autotune_level`` in ``XLA_FLAGS`` (replacing one already there),
    effective only if JAX's backend has not started (recorded). ``XLA_PYTHON_CLIENT_PREALLOCATE`` defaults to
    false, so JAX leaves GPU memory to torch. Yields what was set; restores the JAX options afterwards."""
    from jax._src import xla_bridge  # backends_are_initialized: whether XLA has read XLA_FLAGS already
    from jax.experimental.compilation_cache import compilation_cache

    started = xla_bridge.backends_are_initialized()
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(AUTOTUNE_FLAG + "=")]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"{AUTOTUNE_FLAG}={autotune_level}"])
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    options = {"jax_enable_compilation_cache": True, "jax_compilation_cache_dir": os.path.abspath(cache_dir),
               "jax_persistent_cache_min_compile_time_secs": 0.0, "jax_persistent_cache_min_entry_size_bytes": 0}
    before = {k: getattr(jax.config, k) for k in options}
    for key, value in options.items():
        jax.config.update(key, value)
    compilation_cache.reset_cache()  # a cache already set up in this process takes the new directory
    settings = {"xla_flags": os.environ["XLA_FLAGS"], "autotune_level": autotune_level,
                "backend_started_before_flags": started, "autotune_flag_effective": not started,
                "compilation_cache_dir": options["jax_compilation_cache_dir"],
                "scan_layers": {"pretrain": True, "sweep": True, "ablate": True, "decode": False},
                "xla_python_client_preallocate": os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"]}
    if started:
        log(f"JAX's backend had started before {AUTOTUNE_FLAG} was set: the flag has no effect in this process")
    try:
        yield settings
    finally:
        for key, value in before.items():
            jax.config.update(key, value)
        compilation_cache.reset_cache()


# ------------------------------------------------------------------------------------------ the budget


def run_parts(parts: Sequence[tuple[str, Callable[[dict[str, Any]], None]]], estimates: Mapping[str, float],
              budget: Budget, records: dict[str, dict[str, Any]], save: Callable[[], None]) -> None:
    """Runs ``(name, fn)`` parts in order, each ``fn(result)`` filling ``records[name]['result']``.

    Before each, its estimate times the scale (finished parts' wall seconds / their estimates, within
    ``SCALE_RANGE``; 1 before any finished) must fit the budget's time left, else it is skipped with the
    reason. A part raising ``Skip`` is skipped with its message; any other exception is recorded as an error
    and the next part runs. ``save()`` after every change of state.
    """
    spent, planned = 0.0, 0.0
    for name, fn in parts:
        scale = min(max(spent / planned, SCALE_RANGE[0]), SCALE_RANGE[1]) if planned else 1.0
        estimate = estimates[name] * scale
        record = records[name] = {"status": "running", "estimate_s": estimate, "result": {}}
        if not budget.fits(estimate):
            basis = f"{estimates[name]:.0f} s x {scale:.2f}, the pace of the parts so far"
            records[name] = {"status": "skipped", "estimate_s": estimate, "reason": budget.why_not(estimate, basis)}
            log(f"part {name}: skipped: {records[name]['reason']}")
            save()
            continue
        log(f"part {name}: estimated {estimate:.0f} s, {budget.left():.0f} s left")
        save()
        start = budget.elapsed()
        try:
            fn(record["result"])
            record["status"] = "done"
        except Skip as e:
            record.update(status="skipped", reason=str(e))
        except Exception as e:  # noqa: BLE001 -- one failing part must not lose the others' minutes of device time
            record.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
        record["wall_s"] = budget.elapsed() - start
        if record["status"] == "done":
            spent, planned = spent + record["wall_s"], planned + estimates[name]
        log(f"part {name}: {record['status']} in {record['wall_s']:.1f} s"
            + "".join(f"; {record[k]}" for k in ("reason", "error") if k in record))
        save()


# --------------------------------------------------------------------------------------------- output


def write_outputs(doc: dict[str, Any], out: str, budget: Budget) -> None:
    """Writes ``doc`` to ``out/device.json`` and its markdown to ``out/device.md`` (each replaced atomically)."""
    doc["elapsed_s"] = budget.elapsed()
    for name, text in (("device.json", json.dumps(doc, indent=2, default=str)), ("device.md", format_markdown(doc))):
        path = os.path.join(out, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


def _context(doc: dict[str, Any]) -> str:
    """The line under every table: device, jax version, command."""
    return (f"_Device: {doc['device_kind']} (`jax.devices()[0]`); jax {doc['machine']['versions']['jax']}; "
            f"command: `{doc['command']}`._")


def format_markdown(doc: dict[str, Any]) -> str:
    """The header (command, device, versions, settings, budget), the parts' status table, and one section per
    part that ran, each saying what was measured, in which unit, on how many steps."""
    m, s = doc["machine"], doc["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    scanned = ", ".join(k for k, v in s["scan_layers"].items() if v)
    smoke = " (smoke run: tiny sizes, no numbers)" if doc["smoke"] else ""
    lines = [
        f"# jaxvl bench device: {doc['device_kind']}{smoke}",
        "",
        f"- command: `{doc['command']}`",
        f"- device: {m['jax_device']} (x{m['jax_device_count']}); host {m['cpu']}, {m['cores']} cores; {m['date_utc']}",
        f"- versions: {versions}",
        f"- compile: persistent cache `{s['compilation_cache_dir']}` (every program; a compile s can be a cache load); "
        f"XLA_FLAGS=`{s['xla_flags']}` (autotune level {s['autotune_level']}, "
        f"{'set before' if s['autotune_flag_effective'] else 'NOT effective: set after'} JAX's backend started); "
        f"scan_layers=True in {scanned}",
        f"- budget {doc['budget_s']:.0f} s, elapsed {doc['elapsed_s']:.0f} s",
        "",
        "| part | measures | status | wall s | estimate s | reason or error |",
        "|---|---|---|---|---|---|",
    ]
    for part in PARTS:
        r = doc["parts"][part.name]
        lines.append(f"| {part.name} | {part.summary} | {r['status']} | {_seconds(r.get('wall_s'))} | "
                     f"{_seconds(r.get('estimate_s'))} | {r.get('reason', r.get('error', ''))} |")
    for part in PARTS:
        lines += _section(part, doc)
    return "\n".join(lines) + "\n"


def _section(part: Part, doc: dict[str, Any]) -> list[str]:
    """The markdown lines of one part: its tables if it has a result, else nothing."""
    record = doc["parts"][part.name]
    if not record.get("result"):
        return []
    try:
        body = part.markdown(record["result"], doc["sizes"])
    except (KeyError, TypeError, ZeroDivisionError) as e:  # a part cut short mid-row: the JSON has what there is
        body = f"(no table: the result is incomplete, {type(e).__name__}: {e}; see device.json)"
    return ["", f"## {part.name} ({record['status']})", "", body, "", _context(doc)]


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"
