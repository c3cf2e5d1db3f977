"""What every ``jaxvl bench`` command shares: options, the machine, timing, what else ran meanwhile, and output.

- options: ``csv_choices`` (an argparse ``type``), ``jax_device`` (``--device auto|cpu|gpu``);
- the machine: ``machine_info`` / ``format_machine`` (CPU, cores, JAX device, library versions, the
  settings that change timings), ``cpu_cores``, ``loadavg``;
- timing: ``no_persistent_compile_cache`` (compile times must be real compiles), ``aot_compile``
  (lower + compile seconds), ``time_calls`` (warm-up, then timed calls each ended by a sync),
  ``alternate`` (several calls timed taking turns), ``put_times`` (the median and every timed call into a result row);
- what else ran: ``Probe`` (load average and the cores other processes kept busy during a timing);
- output: ``log`` (progress to stderr), ``save_json``, ``markdown_table`` (the one table formatter of
  every benchmark), ``fmt`` (a cell, ``-`` for missing) and ``load_cell`` (a row's ``Probe`` figures).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

# --------------------------------------------------------------------------------------------- options


def csv_choices(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse ``type``: ``"a,b"`` -> ``["a", "b"]``, every item one of ``choices``."""

    def parse(text: str) -> list[str]:
        items = [x for x in text.split(",") if x]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {', '.join(choices)}")
        return items

    return parse


def jax_device(choice: str) -> jax.Device:
    """``--device``: ``auto`` -> ``jax.devices()[0]``; ``cpu`` / ``gpu`` -> the first device of that platform."""
    if choice == "auto":
        return jax.devices()[0]
    return jax.devices(choice)[0]


# ------------------------------------------------------------------------------------------ the machine


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    import flax

    out = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}
    try:
        import jaxlib

        out["jaxlib"] = jaxlib.__version__
    except (ImportError, AttributeError):
        pass
    for mod in ("torch", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def loadavg() -> float | None:
    """The 1-minute load average (other processes competing for the cores skew CPU timings), where known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info(device: jax.Device) -> dict[str, Any]:
    """CPU model and cores, the JAX device, library versions, the date, and settings that change timings."""
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": cpu_cores(),
        "jax_device": f"{device.platform}: {device.device_kind}",
        "jax_device_count": jax.device_count(),
        "versions": _versions(),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
        "loadavg_1m": loadavg(),
    }


def format_machine(machine: dict[str, Any]) -> str:
    """The machine (``machine_info``) as a few human-readable ``#`` lines."""
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [(f"# machine: {machine['cpu']}, {machine['cores']} cores; jax device {machine['jax_device']} "
              f"(x{machine['jax_device_count']}); torch device {machine.get('torch_device', 'none')}"),
             f"# versions: {versions}",
             (f"# date: {machine['date_utc']}; load average (1 min) {machine['loadavg_1m']}; "
              f"jax_default_matmul_precision={machine['jax_default_matmul_precision']}")]
    if machine["xla_flags"]:
        lines.append(f"# XLA_FLAGS={machine['xla_flags']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- timing


@contextlib.contextmanager
def no_persistent_compile_cache() -> Iterator[None]:
    """Compile times must be real compiles: JAX's persistent compilation cache is off inside the block."""
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


def aot_compile(lowerable: Any, *args: Any) -> tuple[Any, float, float]:
    """(compiled, lower seconds, compile seconds) of ``lowerable.lower(*args).compile()`` (a ``jax.jit`` result or
    anything with the same ``lower``)."""
    start = time.perf_counter()
    lowered = lowerable.lower(*args)
    mid = time.perf_counter()
    compiled = lowered.compile()
    return compiled, mid - start, time.perf_counter() - mid


def time_calls(call: Callable[[], Any], sync: Callable[[Any], Any], warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``call`` (each ended by ``sync`` on its result), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        sync(call())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return times


def alternate(calls: dict[str, Callable[[], Any]], warmup: int, iters: int,
              sync: Callable[[Any], Any] | None = jax.block_until_ready
              ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds per call of each of ``calls`` (each ended by ``sync`` on its result, unless None: calls that end on
    the host), the calls taking turns so that a change in the machine's load hits them alike: ``warmup`` untimed
    rounds, then ``iters`` timed ones. Returns the times and each call's last result."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    last: dict[str, Any] = {}
    for i in range(warmup + iters):
        for name, call in calls.items():
            start = time.perf_counter()
            last[name] = call() if sync is None else sync(call())
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times, last


def put_times(row: dict[str, Any], key: str, times: Sequence[float], per: int = 1) -> float:
    """Stores in ``row`` the median ms per call / ``per`` (e.g. per example) as ``{key}_ms`` and every timed call
    as ``{key}_runs_ms`` (the same unit); returns the median seconds per call."""
    scaled = [1e3 * t / per for t in times]
    row[f"{key}_ms"] = statistics.median(scaled)
    row[f"{key}_runs_ms"] = [round(t, 4) for t in scaled]
    return statistics.median(times)


# ---------------------------------------------------------------------------------------- what else ran


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its descendants), from /proc."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait (steal included)
        parents, times = {}, {}
        for path in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(path, encoding="utf-8") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            pid = int(path.split("/")[2])
            parents[pid] = int(rest[1])
            times[pid] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
        own, tree, frontier = 0, set(), [os.getpid()]
        while frontier:
            pid = frontier.pop()
            tree.add(pid)
            own += times.get(pid, 0)
            frontier += [c for c, p in parents.items() if p == pid and c not in tree]
        return busy / tick, own / tick
    except (OSError, ValueError, IndexError, AttributeError):
        return None  # not Linux


class Probe:
    """What else ran during a timing: the 1-min load average at the start and end, and the CPU cores that
    *other* processes kept busy meanwhile (machine-wide busy CPU time minus this process tree's, per second).
    Started when made; ``finish()`` returns ``loadavg_1m_start``, ``loadavg_1m_end`` and ``other_cores``."""

    def __init__(self):
        self.load = loadavg()
        self.cpu = _cpu_seconds()
        self.start = time.perf_counter()

    def finish(self) -> dict[str, float | None]:
        """The figures since the probe was made (``other_cores`` None under 0.5 s or without /proc)."""
        wall, cpu = time.perf_counter() - self.start, _cpu_seconds()
        others = None
        if self.cpu is not None and cpu is not None and wall >= 0.5:  # CPU times tick in 10 ms steps
            others = max(0.0, ((cpu[0] - self.cpu[0]) - (cpu[1] - self.cpu[1])) / wall)
        return {"loadavg_1m_start": self.load, "loadavg_1m_end": loadavg(), "other_cores": others}


# ----------------------------------------------------------------------------------------------- output


def log(msg: str) -> None:
    """Progress to stderr (stdout carries the machine lines and the tables)."""
    print(msg, file=sys.stderr, flush=True)


def save_json(result: dict[str, Any], path: str | None) -> None:
    """Writes ``result`` as JSON to ``path`` (after every row, so a run cut short keeps what it measured)."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


def fmt(value: Any, spec: str) -> str:
    """``format(value, spec)``, or ``-`` for a missing (None) value."""
    return "-" if value is None else format(value, spec)


def load_cell(row: dict[str, Any], others: bool = True) -> str:
    """A row's ``Probe`` figures as ``start / end`` load average, with ``(other cores)`` unless ``others`` is off."""
    text = f"{fmt(row.get('loadavg_1m_start'), '.1f')} / {fmt(row.get('loadavg_1m_end'), '.1f')}"
    return f"{text} ({fmt(row.get('other_cores'), '.2f')})" if others else text


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: a header of ``columns``, then one line per row of cells (``str`` of each)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
