"""Per-step metrics of a run: one JSON line per record in ``metrics.jsonl`` and TensorBoard event files.

Only JAX process 0 writes. ``MetricsLog(workdir, resume_step=n)`` first drops the records past step
``n`` (a run killed after its last checkpoint logged steps that the resumed run repeats), so the
JSONL of an interrupted-and-resumed run reads like an uninterrupted one; the kept records are written to a
temporary file that replaces the log, so a kill during that rewrite loses nothing. A last line without its
newline (a run killed while appending it) is dropped when the log is read; any other line that is not a JSON
object is a ``ValueError`` naming the file and line. TensorBoard events go through ``tensorboardX`` (no
TensorFlow) into ``<workdir>/tensorboard/<split>``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax

JSONL = "metrics.jsonl"


def read_metrics(workdir: str | os.PathLike, split: str | None = None, member: str | None = None,
                 ) -> list[dict[str, Any]]:
    """The records of ``<workdir>/metrics.jsonl``: all, or those of one ``split`` (``train``, ``eval``)
    and/or one sweep ``member``."""
    path = os.path.join(os.fspath(workdir), JSONL)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.readlines()
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # cut short by a kill while it was appended
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {number} is not JSON ({e.msg}); remove or repair it") from e
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}: line {number} is not a metrics record (a JSON object with an int step)")
        records.append(record)
    return [r for r in records if (split is None or r.get("split") == split)
            and (member is None or r.get("member") == member)]


def _finite_or_str(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no NaN / Infinity


class MetricsLog:
    """Appends ``{"split", "step", **scalars}`` records; ``tensorboard=False`` writes the JSONL only."""

    def __init__(self, workdir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(os.fspath(workdir), JSONL)
        self._writers: dict[str, Any] = {}
        self._tb_dir = os.path.join(os.fspath(workdir), "tensorboard") if tensorboard else None
        if not self.active:
            return
        os.makedirs(os.fspath(workdir), exist_ok=True)
        kept = [r for r in read_metrics(workdir) if resume_step is not None and r["step"] <= resume_step]
        partial = f"{self.path}.partial-{os.getpid()}"
        with open(partial, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(partial, self.path)

    def write(self, split: str, step: int, scalars: Mapping[str, float], member: str | None = None) -> None:
        """One record; ``member`` names a sweep member (its own TensorBoard run ``<split>/<member>``)."""
        if not self.active:
            return
        values = {k: float(v) for k, v in scalars.items()}
        head = {"split": split, "step": int(step), **({} if member is None else {"member": member})}
        with open(self.path, "a") as f:
            f.write(json.dumps({**head, **{k: _finite_or_str(v) for k, v in values.items()}}) + "\n")
        if self._tb_dir is not None:
            run = split if member is None else os.path.join(split, member)
            writer = self._writers.get(run)
            if writer is None:
                from tensorboardX import SummaryWriter

                writer = self._writers[run] = SummaryWriter(os.path.join(self._tb_dir, run))
            for key, value in values.items():
                writer.add_scalar(key, value, int(step))

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
