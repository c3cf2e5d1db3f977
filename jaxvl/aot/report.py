"""What a step compiled for a target costs: memory per device against HBM, FLOPs, collectives, an estimated time.

``CompileReport.from_compiled`` reads a compiled program (``jax.stages.Compiled``) and its target: the per-device
memory (``runtime.compile.memory_stats``: arguments, outputs, temporaries; donated outputs counted once), whether
the chip's HBM holds it, the analytic step FLOPs (MaxText's convention, ``jaxvl.pretrain.flops``) and XLA's own
count, the collectives per step (``jaxvl.aot.hlo``) and an **estimate** of the step time::

    compute   = model FLOPs / (devices x bf16 peak per chip)
    network   = ICI bytes moved per device / (per-chip ICI bandwidth / 2)  [+ DCN term with several slices]
    estimate  = max(compute, network)        MFU estimate = compute / estimate

The network term assumes each collective streams over all of a chip's outgoing links, with nothing overlapped
and no latency, and the compute term assumes every matmul runs at peak: it is a lower bound on the step time,
not a prediction. With several slices the data-parallel gradient reduction also crosses the data-centre
network: 2(s-1)/s x the gradient bytes per device over the per-chip DCN bandwidth.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from jaxvl.aot.chips import Slice
from jaxvl.aot.hlo import KINDS, CollectiveSummary, collectives
from jaxvl.runtime.compile import memory_stats, xla_flops

GIB = 2**30


@dataclass
class CompileReport:
    """One compiled step on one target (module doc). Bytes are per device; seconds per step."""

    target: str
    description: str
    mesh: dict[str, int]
    devices: int
    params: int
    memory: dict[str, int]
    hbm_bytes: int
    model_flops: float
    xla_flops_per_device: float | None
    collective_counts: dict[str, int]
    collective_bytes: dict[str, float]
    unknown_loops: int
    compute_s: float
    ici_s: float
    dcn_s: float
    compile_s: float
    peak_flops_per_chip: float
    ici_bytes_per_s: float
    sources: str

    @property
    def peak_bytes(self) -> int:
        return int(self.memory.get("peak_estimate_in_bytes", 0))

    @property
    def fits(self) -> bool:
        return 0 < self.peak_bytes <= self.hbm_bytes

    @property
    def estimate_s(self) -> float:
        return max(self.compute_s, self.ici_s + self.dcn_s)

    @property
    def mfu_estimate(self) -> float:
        return self.compute_s / self.estimate_s if self.estimate_s > 0 else 0.0

    @classmethod
    def from_compiled(cls, compiled: Any, *, target: str, description: str, mesh: dict[str, int], params: int,
                      model_flops: float, slice_: Slice | None, num_slices: int = 1, grad_bytes: int = 0,
                      compile_s: float = 0.0, hbm_bytes: int | None = None, peak_flops: float | None = None,
                      ici_bytes_per_s: float | None = None, sources: str = "") -> CompileReport:
        """The report of ``compiled`` (module doc). ``slice_`` gives the chip's HBM, peak and links; without one
        (a local compile) pass ``hbm_bytes``/``peak_flops``/``ici_bytes_per_s``/``sources`` or get zeros (no
        estimate).
        ``grad_bytes``: gradient bytes per device (the multislice DCN term)."""
        devices = 1
        for size in mesh.values():
            devices *= size
        summary: CollectiveSummary = collectives(compiled.as_text(), devices)
        chip = slice_.chip if slice_ else None
        hbm = chip.hbm_bytes if chip else (hbm_bytes or 0)
        peak = chip.bf16_flops if chip else (peak_flops or 0.0)
        ici = chip.ici_bytes_per_s if chip else (ici_bytes_per_s or 0.0)
        dcn = chip.dcn_bytes_per_s if chip else 0.0
        compute_s = model_flops / (devices * peak) if peak else 0.0
        ici_s = summary.total_bytes / (ici / 2) if ici else 0.0
        dcn_s = (2 * (num_slices - 1) / num_slices * grad_bytes / dcn) if (num_slices > 1 and dcn) else 0.0
        if chip:
            sources = f"{chip.source}{' (' + chip.ici_note + ')' if chip.ici_note else ''}"
        return cls(target=target, description=description, mesh=dict(mesh), devices=devices, params=params,
                   memory=memory_stats(compiled), hbm_bytes=hbm, model_flops=model_flops,
                   xla_flops_per_device=xla_flops(compiled), collective_counts=dict(summary.counts),
                   collective_bytes=dict(summary.bytes), unknown_loops=summary.unknown_loops, compute_s=compute_s,
                   ici_s=ici_s, dcn_s=dcn_s, compile_s=compile_s, peak_flops_per_chip=peak, ici_bytes_per_s=ici,
                   sources=sources)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(peak_bytes=self.peak_bytes, fits=self.fits, estimate_s=self.estimate_s,
                   mfu_estimate=self.mfu_estimate)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def format(self) -> str:
        """The human-readable report ``jaxvl compile`` prints."""
        m = self.memory
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
        hbm = f"{self.hbm_bytes / GIB:.1f} GiB" if self.hbm_bytes else "unknown"
        fit = ("FITS" if self.fits else "DOES NOT FIT") if self.hbm_bytes else "unknown (no HBM figure)"
        lines = [f"{self.description}", f"target {self.target}: {self.devices} devices, mesh {mesh}, "
                 f"{self.params:,} parameters (unpadded); compiled in {self.compile_s:.1f} s", "",
                 "memory per device (XLA's memory analysis of the compiled step):"]
        for key in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes"):
            lines.append(f"  {key.removesuffix('_size_in_bytes'):<10} {m.get(key, 0) / GIB:9.3f} GiB")
        lines += [f"  {'total':<10} {self.peak_bytes / GIB:9.3f} GiB  (arguments + outputs - donated + temporaries)",
                  f"  HBM per chip {hbm}: {fit}", "",
                  f"FLOPs per step: {self.model_flops:.4g} (analytic, matmuls; "
                  f"{self.model_flops / self.devices:.4g} per device)"
                  + (f"; XLA's count per device {self.xla_flops_per_device:.4g} (loop bodies counted once)"
                     if self.xla_flops_per_device else ""), "",
                  "collectives per step (executions; bytes one device sends, ring model):"]
        for kind in KINDS:
            if self.collective_counts.get(kind):
                lines.append(f"  {kind:<19} {self.collective_counts[kind]:6d}  "
                             f"{self.collective_bytes[kind] / 2**20:12.1f} MiB")
        if not self.collective_counts:
            lines.append("  none")
        if self.unknown_loops:
            lines.append(f"  ({self.unknown_loops} loops of unknown trip count counted once)")
        if not self.peak_flops_per_chip:
            return "\n".join([*lines, "", "no estimated step time: no chip figures for these devices"])
        lines += ["", "ESTIMATED step time (a lower bound: peak matmul rate, all links busy, no overlap, no latency):",
                  f"  compute {self.compute_s * 1e3:9.2f} ms  = FLOPs / ({self.devices} x "
                  f"{self.peak_flops_per_chip / 1e12:.0f} TFLOP/s bf16 peak)",
                  f"  ICI     {self.ici_s * 1e3:9.2f} ms  = bytes sent / ({self.ici_bytes_per_s / 2e9:.0f} GB/s, "
                  f"half the chip's bidirectional ICI)"]
        if self.dcn_s:
            lines.append(f"  DCN     {self.dcn_s * 1e3:9.2f} ms  = cross-slice gradient all-reduce / per-chip DCN")
        lines += [f"  step  >= {self.estimate_s * 1e3:9.2f} ms, MFU <= {self.mfu_estimate:.0%}",
                  f"  chip figures: {self.sources}"]
        return "\n".join(lines)


__all__ = ["CompileReport"]
