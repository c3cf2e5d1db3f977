"""The collectives of a compiled program, read from its optimized HLO text, with how often each one runs.

``collectives(hlo_text, num_devices)`` lists every all-reduce, all-gather, reduce-scatter, all-to-all and
collective-permute (synchronous or the ``-start`` half of an asynchronous pair) with its per-device result
bytes, its group size and how many times it runs per step: an instruction inside a ``while`` body runs once
per iteration (scanned layers, XLA's windowed matmuls), so its count is the product of the trip counts of
the loops around it. A trip count is XLA's ``known_trip_count`` where the backend writes one (CPU, GPU), else
read from the loop condition (``compare(i, constant(N)), direction=LT``, as TPU programs have it); a loop
whose count is neither counts once and is reported in
``CollectiveSummary.unknown_loops``.

``bytes_moved`` is what one device sends per execution under the ring algorithm, from the result size S
and group size n: all-reduce 2(n-1)/n S, all-gather (n-1)/n S, reduce-scatter (n-1) S, all-to-all
(n-1)/n S, collective-permute S.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}

_COMPUTATION = re.compile(r"^(?:ENTRY )?%([^\s(]+) \(.*\{\s*$")
_OP = re.compile(r"^\s*(?:ROOT )?%[^\s=]+ = (.*?) (" + "|".join(KINDS) + r")(-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\dm\d(?:fn)?)?)\[([\d,]*)\]")
_CALLEE = re.compile(r"\b(?:body|condition|calls|to_apply|true_computation|false_computation)=%([^\s,}]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


@dataclass
class Collective:
    """One collective instruction: ``kind``, per-device ``result_bytes`` (one execution), ``group`` size,
    ``count`` (executions per step) and ``bytes_moved`` per device per execution (ring model)."""

    kind: str
    result_bytes: int
    group: int
    count: int
    computation: str

    @property
    def bytes_moved(self) -> float:
        n, s = self.group, self.result_bytes
        if n <= 1:
            return 0.0
        return {"all-reduce": 2 * (n - 1) / n * s, "all-gather": (n - 1) / n * s, "reduce-scatter": (n - 1) * s,
                "all-to-all": (n - 1) / n * s, "collective-permute": float(s)}[self.kind]


@dataclass
class CollectiveSummary:
    """Per kind: ``counts`` (executions per step) and ``bytes`` (bytes moved per device per step); the list
    of ``ops``; ``unknown_loops``: while loops whose trip count could not be read (counted once)."""

    ops: list[Collective]
    counts: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, float] = field(default_factory=dict)
    unknown_loops: int = 0

    @property
    def total_bytes(self) -> float:
        return float(sum(self.bytes.values()))


def _split_computations(text: str) -> tuple[dict[str, list[str]], str | None]:
    """HLO module text -> {computation name: its instruction lines}, and the ENTRY computation's name."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps, entry


def _trip_count(condition: list[str]) -> int | None:
    """N of a loop condition whose root is ``compare(counter, constant(N)), direction=LT``, else None."""
    constants = {}
    for line in condition:
        m = re.match(r"\s*%([^\s=]+) = \S+ constant\((\d+)\)", line)
        if m:
            constants[m.group(1)] = int(m.group(2))
    for line in condition:
        if line.lstrip().startswith("ROOT") and "compare(" in line and "direction=LT" in line:
            args = re.search(r"compare\(([^)]*)\)", line).group(1)
            for arg in args.split(","):
                name = arg.strip().lstrip("%").split(" ")[-1].lstrip("%")
                if name in constants:
                    return constants[name]
    return None


def _multiplicities(comps: dict[str, list[str]], entry: str) -> tuple[dict[str, int], int]:
    """How many times each computation runs per execution of ``entry`` (loop bodies times their trip
    counts), and the number of loops whose trip count was unknown."""
    calls: dict[str, list[tuple[str, int]]] = defaultdict(list)
    unknown = 0
    for name, lines in comps.items():
        for line in lines:
            factor = 1
            if " while(" in line:
                known = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                cond = re.search(r"condition=%([^\s,]+)", line)
                trips = int(known.group(1)) if known else _trip_count(comps.get(cond.group(1), [])) if cond else None
                if trips is None:
                    unknown += 1
                factor = trips or 1
            callees = _CALLEE.findall(line)
            for group in _BRANCHES.findall(line):
                callees += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
            for callee in callees:
                if callee in comps:
                    calls[name].append((callee, factor if " while(" in line else 1))
    mult: dict[str, int] = defaultdict(int)

    def visit(comp: str, times: int, depth: int = 0) -> None:
        mult[comp] += times
        if depth < 64:
            for callee, factor in calls.get(comp, ()):
                visit(callee, times * factor, depth + 1)

    visit(entry, 1)
    return dict(mult), unknown


def _result_bytes(result: str, kind: str, is_start: bool) -> int:
    """Per-device bytes of a collective's result type text (a shape or a tuple of shapes). The ``-start``
    half of an async op returns its operands too: keep the outputs only."""
    arrays = [DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
              for dt, dims in _ARRAY.findall(result)]
    if is_start and kind == "all-gather" and len(arrays) >= 2:
        arrays = arrays[len(arrays) // 2:]
    elif is_start and kind == "collective-permute" and arrays:
        arrays = arrays[1:2]
    return sum(arrays)


def _group_size(line: str, num_devices: int) -> int:
    """Participants per group, from ``replica_groups`` in any of XLA's three spellings, or
    ``source_target_pairs`` (2 for a permute)."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line)
    if m:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        axes = re.findall(r"'([^']+)'", m.group(2))
        return math.prod(int(sizes[a]) for a in axes if a in sizes)
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([^}]*)\}", line)
    if m:
        return len([x for x in m.group(1).split(",") if x.strip()])
    if "source_target_pairs" in line:
        return 2
    return num_devices


def collectives(hlo_text: str, num_devices: int) -> CollectiveSummary:
    """Every collective of a compiled module's HLO text (``compiled.as_text()``), counted per step."""
    comps, entry = _split_computations(hlo_text)
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    mult, unknown = _multiplicities(comps, entry)
    ops = []
    for name, lines in comps.items():
        if not mult.get(name):
            continue
        for line in lines:
            m = _OP.match(line)
            if m:
                kind, is_start = m.group(2), bool(m.group(3))
                ops.append(Collective(kind, _result_bytes(m.group(1), kind, is_start),
                                      _group_size(line, num_devices), mult[name], name))
    summary = CollectiveSummary(ops, unknown_loops=unknown)
    for op in ops:
        summary.counts[op.kind] = summary.counts.get(op.kind, 0) + op.count
        summary.bytes[op.kind] = summary.bytes.get(op.kind, 0.0) + op.count * op.bytes_moved
    return summary


__all__ = ["Collective", "CollectiveSummary", "KINDS", "collectives"]
