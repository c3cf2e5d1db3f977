"""The training loop every jaxvl trainer shares (pretraining, sweeps, captioning).

``train_loop`` steps a compiled ``step_fn(state, batch) -> (state, metrics)`` from ``start`` to
``steps`` and around it does what every run needs:

- a progress bar (process 0);
- per-step metrics to ``MetricsLog`` (JSONL + TensorBoard), fetched one step late so the host never
  waits on the step it has just dispatched; ``metrics`` is a dict of float32 scalars, or of [K]
  vectors for a K-member sweep (then one record per member, with a ``member`` field);
- periodic evaluation (``evaluate(state) -> {name: scalar}`` or a list of those per member);
- asynchronous checkpoints every ``checkpoint_every`` steps and at the end, with the data iterator's
  position; before each save every pending metric is checked, so a state that followed a
  non-finite loss or gradient norm is never written: the run stops with ``TrainingDiverged`` naming
  the step and the last good checkpoint;
- SIGTERM (or a multi-host preemption notice): a checkpoint where it stands, then status ``preempted``;
- Ctrl-C (``KeyboardInterrupt``): no new checkpoint (a save being started is let through); pending
  saves finish, then ``TrainingInterrupted`` (a ``KeyboardInterrupt``, so callers' ``finally`` blocks
  still run) names the step reached and the latest checkpoint. ``jaxvl`` prints it and exits 130.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxvl.runtime.checkpoint import Checkpointer
from jaxvl.runtime.metrics_log import MetricsLog

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect of a terminated job


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm: the message names the step and the last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C in ``train_loop``, raised once pending checkpoint saves are on disk: ``step`` reached,
    ``checkpoint_step`` (the latest checkpoint's step, None if there is none) in ``directory``."""

    def __init__(self, step: int, checkpoint_step: int | None, directory: str):
        super().__init__(step, checkpoint_step, directory)
        self.step, self.checkpoint_step, self.directory = step, checkpoint_step, directory

    def __str__(self) -> str:
        last = "none" if self.checkpoint_step is None else f"step {self.checkpoint_step}"
        return (f"stopped at step {self.step}; last checkpoint: {last} in {self.directory}; "
                f"rerun the same command to resume")


@dataclasses.dataclass
class StageResult:
    """How a run ended: ``status`` ``done`` or ``preempted``, the step reached, the last logged train
    metrics (per member for sweeps) and the latest checkpoint's step."""

    workdir: str
    status: str
    step: int
    last_metrics: dict[str, float] | list[dict[str, float]]
    checkpoint_step: int | None


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int
    checkpoint_every: int
    eval_every: int = 0
    log_every: int = 1
    progress: bool = True
    members: Sequence[str] | None = None  # sweep member names: metrics are [K] vectors


def log(msg: str) -> None:
    """Prints on process 0 only."""
    if jax.process_index() == 0:
        print(msg, flush=True)


class Preemption:
    """SIGTERM -> a flag the loop polls.

    One process: a Python SIGTERM handler sets it. Several processes (``jax.distributed``): every process must
    stop at the same step, or the others wait forever in the next step's collectives (measured: a SIGTERM to one
    of two processes hung both). So no Python handler is installed there: JAX's preemption service (on by
    default, ``jax_enable_preemption_service``) catches SIGTERM in any process and
    ``multihost_utils.reached_preemption_sync_point(step)`` turns true in all of them at one step. With the
    service off, a multi-process run is warned that SIGTERM is not handled.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self.synced = jax.process_count() > 1
        if self.synced:
            if not jax.config.jax_enable_preemption_service:
                log("warning: jax_enable_preemption_service is off: a SIGTERM to one process cannot stop all "
                    "processes at one step, so this multi-process run does not checkpoint on SIGTERM")
                self.synced = False
            return  # JAX's preemption notifier owns SIGTERM (a Python handler would replace it)
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: the caller manages signals
            self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def check(self, step: int) -> bool:
        """Whether to checkpoint and stop after ``step`` (the same answer in every process)."""
        if self.synced:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@contextlib.contextmanager
def _ctrl_c_deferred():
    """Holds a Ctrl-C that arrives while a checkpoint save is being started and raises it once the save is
    under way: an Orbax save interrupted half-way leaves background threads writing at interpreter exit."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def _per_member(values: Mapping[str, Any], members: Sequence[str] | None) -> list[dict[str, float]]:
    """Host metrics -> one dict of floats (single run) or one per member (``[K]`` vectors)."""
    host = {k: np.asarray(v) for k, v in jax.device_get(dict(values)).items()}
    if members is None:
        return [{k: float(v) for k, v in host.items()}]
    return [{k: float(v[i]) for k, v in host.items()} for i in range(len(members))]


def _write(metrics_log: MetricsLog, split: str, step: int, rows: list[dict[str, float]],
           members: Sequence[str] | None) -> None:
    if members is None:
        metrics_log.write(split, step, rows[0])
    else:
        for name, row in zip(members, rows, strict=True):
            metrics_log.write(split, step, row, member=name)


def train_loop(cfg: LoopConfig, step_fn: Callable, state: Any, data_iter: Any,
               host_to_global: Callable[[Any], Any], ckpt: Checkpointer, metrics_log: MetricsLog, start: int,
               workdir: str, evaluate: Callable[[Any], Any] | None = None) -> tuple[Any, StageResult]:
    """Steps ``start`` .. ``cfg.steps`` (module doc). Returns the final state and how the run ended."""
    from tqdm import tqdm

    members = None if cfg.members is None else list(cfg.members)
    bar = tqdm(total=cfg.steps, initial=start, desc=os.path.basename(os.path.normpath(workdir)) or "train",
               unit="step", disable=not cfg.progress or jax.process_index() != 0, dynamic_ncols=True)
    pending: list[tuple[int, Any]] = []  # (step number after the update, device metrics) not yet logged
    last: list[dict[str, float]] = []
    t_last = time.perf_counter()
    preemption = Preemption()

    def flush(keep_latest: bool) -> None:
        nonlocal last, t_last
        while len(pending) > (1 if keep_latest else 0):
            n, metrics = pending.pop(0)
            rows = _per_member(metrics, members)
            for i, row in enumerate(rows):
                if not (math.isfinite(row["loss"]) and math.isfinite(row.get("grad_norm", 0.0))):
                    ckpt.wait()
                    good = ckpt.latest_step()
                    where = f"{ckpt.directory}/{good} (step {good})" if good is not None else "none (no checkpoint)"
                    who = "" if members is None else f" (member {members[i]!r})"
                    raise TrainingDiverged(f"{workdir}: non-finite loss {row['loss']} / gradient norm "
                                           f"{row.get('grad_norm')}{who} at step {n}; stopping. Last good "
                                           f"checkpoint: {where}")
            now = time.perf_counter()
            for row in rows:
                row["seconds"] = now - t_last
            t_last = now
            if n % cfg.log_every == 0 or n == cfg.steps:
                _write(metrics_log, "train", n, rows, members)
            bar.set_postfix(loss=" ".join(f"{r['loss']:.4f}" for r in rows))
            last = rows

    status = "done"
    reached = start  # the last step whose update was dispatched
    try:
        for step in range(start, cfg.steps):
            state, metrics = step_fn(state, host_to_global(next(data_iter)))
            n = reached = step + 1
            pending.append((n, metrics))
            flush(keep_latest=True)
            bar.update(1)
            if evaluate is not None and cfg.eval_every and (n % cfg.eval_every == 0 or n == cfg.steps):
                result = evaluate(state)
                _write(metrics_log, "eval", n, result if isinstance(result, list) else [result], members)
            stop = preemption.check(n)
            if n % cfg.checkpoint_every == 0 or n == cfg.steps or stop:
                flush(keep_latest=False)  # never save a state whose loss was not checked
                with _ctrl_c_deferred():
                    ckpt.save(state, data_iter, meta=dict(loss=[r["loss"] for r in last]))
            if stop:
                ckpt.wait()
                log(f"\nSIGTERM: checkpoint written at step {n} in {ckpt.directory}; rerun the command to resume")
                status = "preempted"
                break
        flush(keep_latest=False)
    except KeyboardInterrupt as e:
        ckpt.wait()  # a save under way is finished: it is the checkpoint a rerun resumes from
        raise TrainingInterrupted(reached, ckpt.latest_step(), ckpt.directory) from e
    finally:
        bar.close()
        preemption.restore()
        ckpt.wait()
    end = int(jax.device_get(state.step if hasattr(state, "step") else 0).reshape(-1)[0])
    return state, StageResult(workdir, status, end, last[0] if members is None and last else last,
                              ckpt.latest_step())
