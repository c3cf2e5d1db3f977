"""``jaxvl bench topologies``: the five ctrl pretraining steps compiled for TPU slices, and the largest model that fits.

For each preset x slice x strategy the pretraining step (``jaxvl compile``'s target: bf16 matmuls, vocabulary and
classes padded to 128, scanned layers, the config's optimizer) is compiled ahead of time on this machine for the
slice's compile-only devices (libtpu, the ``tpu`` extra), and its ``jaxvl.aot.report.CompileReport`` is recorded:
memory per chip against HBM, collective bytes per step, the estimated step time (a lower bound) and MFU.
Strategies: ``dp`` (data=N), ``fsdp`` (fsdp=N), ``fsdp+tp`` (fsdp=N/4, tensor=4). The global batch is
``--per-chip-batch`` x chips, clipped to [256, 4096].

``--largest``: per slice, the widest/deepest single-stream model (UNITER's plan at BERT proportions, from
``--ladder``) whose FSDP step still fits HBM at the same global batch; the ladder is searched by bisection.

    jaxvl bench topologies --out /tmp/topo.json --markdown
    jaxvl bench topologies --presets uniter --topologies v5e-16 --strategies fsdp --largest
    jaxvl bench topologies --topologies v5e-256 --largest-only --ladder 2560x32,4096x32,5120x40
    jaxvl bench topologies --topologies v5e-256 --largest-only --remat full --ladder 4096x32,5120x40,6144x48
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable
from typing import Any

from jaxvl.benchmarks.common import csv_choices, log, markdown_table, save_json
from jaxvl.models.volta.config import REMAT_POLICIES

PRESETS = ("visualbert", "uniter", "vl-bert", "lxmert", "vilbert")
TOPOLOGIES = ("v5e-16", "v5e-256", "v5p-128", "v6e-64")
STRATEGIES = ("dp", "fsdp", "fsdp+tp")
# (hidden, layers): BERT-base, BERT-large, then wider and deeper (about 0.1, 0.3, 0.7, 1.2, 2.6, 6.5, 13 B).
LADDER = ((768, 12), (1024, 24), (1536, 24), (2048, 24), (2560, 32), (4096, 32), (5120, 40))
COLUMNS = ("preset", "slice", "strategy", "mesh (d,f,t)", "global batch", "fits?", "GiB / chip (HBM)",
           "collective GiB / step", "est. step ms", "est. MFU", "compile s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", type=csv_choices(PRESETS), default=list(PRESETS), help="comma-separated presets")
    p.add_argument("--topologies", type=lambda s: s.split(","), default=list(TOPOLOGIES),
                   help="comma-separated slices (default v5e-16,v5e-256,v5p-128,v6e-64)")
    p.add_argument("--strategies", type=csv_choices(STRATEGIES), default=list(STRATEGIES))
    p.add_argument("--per-chip-batch", type=int, default=16)
    p.add_argument("--largest", action="store_true", help="also search the largest model that fits per slice")
    p.add_argument("--largest-only", action="store_true", help="only the largest-model search")
    p.add_argument("--ladder", type=parse_ladder, default=LADDER,
                   help="the largest-model search's rungs, smallest first: comma-separated HIDDENxLAYERS "
                        "(default 768x12,1024x24,1536x24,2048x24,2560x32,4096x32,5120x40)")
    p.add_argument("--remat", choices=REMAT_POLICIES, default="none",
                   help="model.remat of every compiled step (default none: every activation kept)")
    p.add_argument("--out", default=None, help="JSON results, rewritten after every row")
    p.add_argument("--hlo-dir", default=None, help="keep each compiled program's HLO text here (gzipped)")
    p.add_argument("--markdown", action="store_true", help="print the markdown tables at the end")


def parse_ladder(text: str) -> tuple[tuple[int, int], ...]:
    """``--ladder``: ``"4096x32,5120x40"`` -> ((4096, 32), (5120, 40)); rungs must grow (the bisection assumes a
    rung that does not fit is followed by none that does) and widths be multiples of 64 (heads of 64)."""
    try:
        rungs = tuple((int(h), int(n)) for h, n in (item.lower().split("x") for item in text.split(",") if item))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated HIDDENxLAYERS, e.g. 4096x32,5120x40") from None
    if not rungs or any(h % 64 or h <= 0 or n <= 0 for h, n in rungs):
        raise argparse.ArgumentTypeError(f"{text!r}: every rung needs a positive width divisible by 64 and layers > 0")
    if any(b[0] < a[0] or b[1] < a[1] or b == a for a, b in zip(rungs, rungs[1:], strict=False)):
        raise argparse.ArgumentTypeError(f"{text!r}: rungs must grow in width and depth, smallest first")
    return rungs


def global_batch(chips: int, per_chip: int) -> int:
    """``per_chip`` x ``chips`` clipped to [256, 4096]."""
    return max(256, min(4096, per_chip * chips))


def _config(preset: str, remat: str = "none") -> Any:
    from jaxvl.configs import load_config

    return load_config(f"pretrain:{preset}", ["model.dtype=bfloat16", "model.pad_to_multiple_of=128",
                                               "model.scan_layers=True", f"model.remat={remat}"])


def compile_row(preset: str, topology: str, strategy: str, per_chip: int,
                model_overrides: dict[str, Any] | None = None, hlo_dir: str | None = None,
                remat: str = "none") -> dict[str, Any]:
    """One compile (module doc) -> its row: the report's fields, or ``error`` where it did not compile.
    ``hlo_dir``: the compiled HLO text is kept there, gzipped, one file per row; ``remat``: ``model.remat``."""
    from jaxvl.aot.chips import parse_slice
    from jaxvl.aot.run import compile_report

    slice_ = parse_slice(topology)
    batch = global_batch(slice_.chips, per_chip)
    row: dict[str, Any] = dict(preset=preset, slice=topology, strategy=strategy, batch=batch, remat=remat,
                               model_overrides=model_overrides or {})
    hlo = None
    if hlo_dir:
        size = "" if not model_overrides else f"_{model_overrides['hidden_size']}w"
        hlo = os.path.join(hlo_dir, f"{preset}{size}_{topology}_{strategy.replace('+', '_')}.hlo.gz")
    start = time.perf_counter()
    try:
        report = compile_report(_config(preset, remat), f"pretrain:{preset}", slice_, 1, strategy, batch,
                                model_overrides, hlo_path=hlo)
    except Exception as e:  # noqa: BLE001 -- a row that does not compile is a result (recorded), not a crash
        message = (str(e).splitlines() or [""])[0]
        row.update(error=f"{type(e).__name__}: {message[:300]}", wall_s=time.perf_counter() - start)
        if "RESOURCE_EXHAUSTED" in message and "HBM" in message:  # XLA refused it: it does not fit the HBM
            row["fits"] = False
        return row
    row.update(report.to_dict(), wall_s=time.perf_counter() - start)
    return row


def largest_that_fits(topology: str, per_chip: int, ladder: tuple = LADDER, strategy: str = "fsdp",
                      rows: list | None = None, remat: str = "none",
                      on_row: Callable[[], None] | None = None) -> dict[str, Any]:
    """Bisection over ``ladder`` for the last rung whose ``strategy`` step (``model.remat`` ``remat``) fits HBM;
    every compile is appended to ``rows``, then ``on_row()`` is called (the command saves its JSON: a rung can
    take half an hour). Returns {slice, remat, largest: (hidden, layers) or None, params, tried}."""
    from jaxvl.aot.targets import scaled_single_stream

    lo, hi, best = 0, len(ladder) - 1, None
    tried = []
    while lo <= hi:
        mid = (lo + hi) // 2
        hidden, layers = ladder[mid]
        row = compile_row("uniter", topology, strategy, per_chip, scaled_single_stream(hidden, layers), remat=remat)
        row.update(hidden=hidden, layers=layers)
        tried.append(row)
        if rows is not None:
            rows.append(row)
        if on_row is not None:
            on_row()
        log(f"  {topology} {hidden}x{layers}: {_fit_text(row)}")
        if row.get("fits"):
            best, lo = row, mid + 1
        else:
            hi = mid - 1
    return dict(slice=topology, strategy=strategy, remat=remat,
                largest=None if best is None else (best["hidden"], best["layers"]),
                params=None if best is None else best["params"],
                gib=None if best is None else best["peak_bytes"] / 2**30, tried=len(tried))


def _error_text(row: dict[str, Any]) -> str:
    """A failed row's error, short: for a program the compiler refused for memory its own figures ("... required
    for HLO temporaries (99.23G) exceeds available HBM (95.74G)" -> "HLO temporaries 99.23G > HBM 95.74G"),
    else the error's start."""
    m = re.search(r"required for (.*?) \((\S+)\) exceeds available HBM \((\S+)\)", row["error"])
    return f"{m.group(1)} {m.group(2)} > HBM {m.group(3)}" if m else row["error"][:60]


def _fit_text(row: dict[str, Any]) -> str:
    if "error" in row and row.get("fits") is False:
        return f"does not fit (compiler: {_error_text(row)})"
    if "error" in row:
        return f"error ({row['error'][:80]})"
    return f"{'fits' if row['fits'] else 'does not fit'}, {row['peak_bytes'] / 2**30:.2f} GiB"


def table_row(row: dict[str, Any]) -> list[str]:
    """A row of ``COLUMNS``."""
    mesh = row.get("mesh") or {}
    head = [row["preset"], row["slice"], row["strategy"],
            f"({mesh.get('data', '-')},{mesh.get('fsdp', '-')},{mesh.get('tensor', '-')})", str(row["batch"])]
    if "error" in row:
        fit = "**no** (compile refused)" if row.get("fits") is False else "error"
        return [*head, fit, _error_text(row), "-", "-", "-", f"{row['wall_s']:.0f}"]
    coll = sum(row["collective_bytes"].values()) / 2**30
    return [*head, "yes" if row["fits"] else "**no**",
            f"{row['peak_bytes'] / 2**30:.2f} ({row['hbm_bytes'] / 2**30:.0f})", f"{coll:.2f}",
            f"{row['estimate_s'] * 1e3:.1f}", f"{row['mfu_estimate']:.0%}", f"{row['compile_s']:.0f}"]


def format_markdown(result: dict[str, Any]) -> str:
    out = [markdown_table(COLUMNS, [table_row(r) for r in result["rows"]])]
    if result.get("largest"):
        rows = [[r["slice"], r["strategy"], r.get("remat", "none"),
                 "none" if r["largest"] is None else f"{r['largest'][0]} x {r['largest'][1]}",
                 "-" if r["params"] is None else f"{r['params'] / 1e9:.2f} B",
                 "-" if r["gib"] is None else f"{r['gib']:.2f}", str(r["tried"])] for r in result["largest"]]
        out += ["", markdown_table(("slice", "strategy", "remat", "largest (hidden x layers)", "params",
                                    "GiB / chip", "compiles"), rows)]
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from jaxvl.aot.chips import parse_slice

    for t in args.topologies:
        parse_slice(t)  # a bad name fails before any compile
    result: dict[str, Any] = dict(command="jaxvl bench topologies", rows=[], largest=[], largest_rows=[])
    if not args.largest_only:
        for preset in args.presets:
            for topology in args.topologies:
                for strategy in args.strategies:
                    log(f"{preset} {topology} {strategy} ...")
                    row = compile_row(preset, topology, strategy, args.per_chip_batch, hlo_dir=args.hlo_dir,
                                      remat=args.remat)
                    result["rows"].append(row)
                    save_json(result, args.out)
                    log("  " + " | ".join(table_row(row)[5:]))
    if args.largest or args.largest_only:
        for topology in args.topologies:
            log(f"largest model on {topology} ...")
            result["largest"].append(largest_that_fits(topology, args.per_chip_batch, args.ladder,
                                                       rows=result["largest_rows"], remat=args.remat,
                                                       on_row=lambda: save_json(result, args.out)))
            save_json(result, args.out)
    if args.markdown:
        print(format_markdown(result))
    return result
