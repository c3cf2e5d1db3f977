"""Jit with shardings and donation, ahead-of-time compile, and the compiled program's memory report.

``jit_step`` puts any ``step_fn(state, batch, *extra) -> (state, metrics)`` under ``jax.jit`` with the
state donated and its shardings in and out; ``compile_step`` lowers and compiles it once (an
executable called every step, never retraced); ``memory_stats`` / ``memory_summary`` read the
compiled program's per-device footprint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.runtime.state import Batch, TrainState

# XLA options that cut CPU compile time 2-4x (most of it goes to the threefry bits of dropout and
# masking) at some cost in run time: for tests and CPU smoke runs, not for training.
FAST_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_step(step_fn: Callable, mesh: Mesh, state_shardings: Any, batch_sharding: Any,
             compiler_options: dict[str, Any] | None = None, extra_shardings: tuple = ()) -> Callable:
    """Any ``step_fn(state, batch, *extra) -> (state, metrics)`` under ``jax.jit`` with the state donated,
    in/out shardings as ``jit_train_step`` (``extra_shardings`` for further arguments) and metrics replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding, *extra_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=0, compiler_options=compiler_options)


def compile_step(jitted: Any, state: TrainState, batch: Batch, mesh: Mesh) -> jax.stages.Compiled:
    """Ahead-of-time ``jitted.lower(state, batch).compile()`` under ``mesh`` (arrays or ``ShapeDtypeStruct``s).
    The result is called like ``jitted`` (same donation) and never retraces."""
    with jax.set_mesh(mesh):
        return jitted.lower(state, batch).compile()


MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes")


def memory_stats(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Per-device byte counts of a compiled program (``compiled.memory_analysis()``): arguments, outputs,
    outputs aliased to donated arguments, temporaries, code; and ``peak_estimate_in_bytes`` =
    arguments + outputs - aliased + temporaries. Empty where the backend reports nothing."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    out = {f: int(getattr(analysis, f, 0) or 0) for f in MEMORY_FIELDS}
    out["peak_estimate_in_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                     - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


def xla_flops(compiled: jax.stages.Compiled) -> float | None:
    """XLA's own FLOP count of a compiled program (``cost_analysis()['flops']``, per device; loop bodies counted
    once), where the backend reports one."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 -- an optional figure: some backends do not implement it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def memory_summary(compiled: jax.stages.Compiled, verbose: bool = False) -> str:
    """The compiled step's memory per device for a start-up log: one line (the total and its parts), or with
    ``verbose`` one line per ``memory_stats`` entry."""
    stats = memory_stats(compiled)
    if not stats:
        return "memory analysis: not available on this backend"
    if not verbose:
        parts = ", ".join(f"{k.removesuffix('_size_in_bytes')} {_mib(stats[k])}" for k in
                          ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                           "temp_size_in_bytes"))
        return f"memory per device: {_mib(stats['peak_estimate_in_bytes'])} ({parts}; alias = donated)"
    lines = [f"  {k.removesuffix('_in_bytes'):<22} {_mib(v):>12}  ({v} B)" for k, v in stats.items()]
    return "\n".join(["memory per device (compiled step):", *lines])
