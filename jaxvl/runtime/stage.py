"""One stage runner for every jaxvl trainer: pretraining (single runs and sweeps, the vision-only and the
V&L stage), caption XE and SCST. A task fills a ``Stage`` with its pieces; ``run_stage(stage, workdir)``
runs the skeleton they share, in named sections:

1. The workdir and its ``Checkpointer`` (``<workdir>/checkpoints``, removed again if the stage ends before
   its first checkpoint, e.g. a refused initialisation or Ctrl-C).
2. The state: created in its shards (``stage.init_state()``), then resumed from the latest checkpoint
   (parameters, optimizer state, step, rng and the data iterator's position: exact resume), else
   initialised: from another workdir's parameters (``stage.init_from``) or the task's own way
   (``stage.initialise``: random, BERT in the text stream, a VOLTA state dict, ...). One line logs it.
3. A stage whose checkpoint is already at its last step has nothing to do and returns at once, unless its
   ``on_done`` did not finish (``finished.json`` is written when it has: a run stopped while exporting its
   sweep members, say); then it builds the evaluation and runs ``on_done`` again without training.
4. The step: the task's jitted step compiled ahead of time (``compile_step``), its per-device memory
   printed; or, where the step is not one XLA program (SCST's host-side rewards between a compiled
   sampler and a compiled update), whatever callable ``stage.build_step`` returns.
5. ``run.json`` (the task's facts plus steps, init, processes, devices), evaluation
   (``stage.make_evaluate``), ``MetricsLog`` and ``train_loop``; the metrics log and the checkpointer
   are closed however the loop ends. ``stage.on_done`` runs only when the loop reached the last step
   (not when preempted or interrupted): e.g. a sweep exports its members.

A run of stages (``pretrain``, ``train_captioner``) starts the next stage only when the previous one's
``StageResult.status`` is ``done``.

Typical use (a task's ``run_*`` function)::

    train_ds = my_dataset(...)                                  # a Grain IterDataset (checkpointable iterator)
    to_device = lambda host: to_global(host, mesh)
    example = example_batch(train_ds, to_device)                # ShapeDtypeStructs [B, ...]
    boxed = boxed_state_init(lambda r: model.init(r, *dummies)["params"], tx)
    stage = Stage(description=f"my task, {steps} steps of {batch_size}", mesh=mesh, train_data=train_ds,
                  host_to_global=to_device, example=example,
                  init_state=lambda: init_sharded(boxed, jax.random.key(seed), mesh),
                  shardings=boxed_shardings(boxed, mesh), loop=LoopConfig(steps=steps, checkpoint_every=100),
                  jitted_step=jit_step(my_step, mesh, shardings, batch_sharding(mesh)))
    state, result = run_stage(stage, workdir)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
from jax.sharding import Mesh

from jaxvl.runtime.checkpoint import Checkpointer, params_from_workdir
from jaxvl.runtime.compile import compile_step, memory_summary
from jaxvl.runtime.loop import LoopConfig, StageResult, log, train_loop
from jaxvl.runtime.metrics_log import MetricsLog
from jaxvl.runtime.state import Batch

StepFn = Callable[[Any, Batch], tuple[Any, Mapping[str, Any]]]


@dataclasses.dataclass
class Stage:
    """What a task supplies for one stage (module doc). ``state`` below is whatever the task steps: a
    ``TrainState``, a sweep's stacked ``SweepState``, ...

    - ``description``: the start-up line's middle, e.g. ``"uniter (V&L stage), 6 steps of 8"``.
    - ``mesh``: the device mesh the state and batches live on.
    - ``train_data``: the train split's Grain dataset; ``iter(train_data)`` gives the iterator the loop
      reads and whose position every checkpoint saves (dicts of host numpy arrays, [B_host, ...]).
    - ``host_to_global``: a host batch -> the global batch the step reads ({field: jax.Array [B, ...]}).
    - ``example``: one global batch as ``jax.ShapeDtypeStruct``s (``example_batch``), for compiling.
    - ``init_state()``: a fresh state created in its shards (random parameters, step 0).
    - ``shardings``: the state's tree of ``NamedSharding``s (restoring lays the checkpoint out by it).
    - ``loop``: the loop's settings (steps, checkpoint / eval / log periods, sweep member names).
    - ``jitted_step``: the ``jax.jit`` step ``(state, batch) -> (state, metrics)``, compiled here ahead of
      time; or ``build_step(state, example) -> step``: any callable step, built (and compiled) by the
      task. Exactly one of the two. ``step_name`` names it in the "compiled the ..." line.
    - ``init_from``: a jaxvl workdir whose latest parameters start the stage when it is not resuming.
    - ``initialise(state) -> (state, description)``: otherwise, the task's initialisation of the fresh
      state (default: as created, ``"random"``).
    - ``make_evaluate() -> evaluate(state) | None``: built once the step is compiled; ``evaluate``
      returns ``{name: float}`` (a list of those for a sweep) every ``loop.eval_every`` steps.
    - ``run_info``: facts for ``run.json`` (config, model config, dataset, stage, ...).
    - ``write_files(workdir)``: further files beside ``run.json`` (process 0 only), e.g. a vocabulary.
    - ``on_done(state)``: after the loop reached ``loop.steps`` (not when stopped early).
    - ``checkpoint_keep`` / ``async_save``: the ``Checkpointer``'s settings.
    """

    description: str
    mesh: Mesh
    train_data: Iterable[Mapping[str, Any]]
    host_to_global: Callable[[Mapping[str, Any]], Batch]
    example: Batch
    init_state: Callable[[], Any]
    shardings: Any
    loop: LoopConfig
    jitted_step: Any | None = None
    build_step: Callable[[Any, Batch], StepFn] | None = None
    step_name: str = "train step"
    init_from: str | None = None
    initialise: Callable[[Any], tuple[Any, str]] | None = None
    make_evaluate: Callable[[], Callable[[Any], Any] | None] | None = None
    run_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    write_files: Callable[[str], None] | None = None
    on_done: Callable[[Any], None] | None = None
    checkpoint_keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        if (self.jitted_step is None) == (self.build_step is None):
            raise ValueError("a Stage needs exactly one of jitted_step (compiled ahead of time by run_stage) "
                             "and build_step (a step the task builds itself)")


# =========================================================================================== helpers


def example_batch(train_data: Iterable[Mapping[str, Any]], host_to_global: Callable[[Mapping[str, Any]], Batch]
                  ) -> Batch:
    """The first batch of a fresh iterator of ``train_data``, placed by ``host_to_global``, as
    ``jax.ShapeDtypeStruct``s ({field: [B, ...]}): what ``Stage.example`` holds."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host_to_global(next(iter(train_data))))


def take_batches(data: Iterable[Mapping[str, Any]], host_to_global: Callable[[Mapping[str, Any]], Batch],
                 count: int) -> list[Batch]:
    """The first ``count`` batches of ``data`` (fewer if it ends first), placed by ``host_to_global``: e.g. a
    stage's fixed held-out evaluation batches."""
    batches: list[Batch] = []
    for host in data:
        batches.append(host_to_global(host))
        if len(batches) == count:
            break
    return batches


def write_run_info(workdir: str, info: Mapping[str, Any]) -> None:
    """``<workdir>/run.json`` (process 0 only): ``info`` as indented JSON, anything else as its ``str``. Written
    whole or not at all (a temporary file renamed into place), so Ctrl-C never leaves half a ``run.json``."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "run.json")
    text = json.dumps(dict(info), indent=1, default=str)
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


FINISHED = "finished.json"
"""Written (process 0) once a stage's ``on_done`` has run at its last step: ``{"step": N}``."""


def finished_step(workdir: str) -> int | None:
    """The step whose ``on_done`` completed in ``workdir`` (``FINISHED``), or None."""
    try:
        with open(os.path.join(workdir, FINISHED)) as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finish(stage: Stage, state: Any, workdir: str, step: int) -> None:
    """``stage.on_done(state)``, then ``FINISHED`` (whole or not at all), so a stopped ``on_done`` runs again."""
    stage.on_done(state)
    if jax.process_index() == 0:
        path = os.path.join(workdir, FINISHED)
        with open(f"{path}.tmp", "w") as f:
            json.dump({"step": int(step)}, f)
        os.replace(f"{path}.tmp", path)


def resume_or_initialise(stage: Stage, ckpt: Checkpointer, data_iter: Any) -> tuple[Any, str]:
    """The stage's starting state and how it came about: the latest checkpoint of ``ckpt`` (``data_iter``
    moved to its position in place), else ``stage.init_from``'s parameters, else ``stage.initialise``."""
    state = stage.init_state()
    resumed = ckpt.latest_step()
    if resumed is not None:
        state, _ = ckpt.restore(state, stage.shardings, data_iterator=data_iter)
        return state, f"resumed from {ckpt.directory} step {resumed}"
    if stage.init_from:
        return (state.replace(params=params_from_workdir(stage.init_from, state, stage.shardings)),
                f"parameters of {stage.init_from}")
    if stage.initialise is not None:
        return stage.initialise(state)
    return state, "random"


def compile_stage_step(stage: Stage, state: Any) -> StepFn:
    """The stage's step, built and compiled (timed and logged; with the per-device memory of an
    ahead-of-time compiled step)."""
    t0 = time.perf_counter()
    if stage.jitted_step is not None:
        step_fn = compile_step(stage.jitted_step, state, stage.example, stage.mesh)
        log(f"compiled the {stage.step_name} in {time.perf_counter() - t0:.1f} s\n"
            f"{memory_summary(step_fn, verbose=os.environ.get('JAXVL_VERBOSE', '') not in ('', '0'))}")
        return step_fn
    step_fn = stage.build_step(state, stage.example)
    log(f"compiled the {stage.step_name} in {time.perf_counter() - t0:.1f} s")
    return step_fn


# ============================================================================================ runner


def run_stage(stage: Stage, workdir: str) -> tuple[Any, StageResult]:
    """Runs ``stage`` in ``workdir`` (module doc, sections 1-5). Returns the final state and how the stage
    ended (``StageResult.status``: ``done``, or e.g. ``preempted``: the caller starts no next stage)."""
    # ------------------------------------------------------------------------- workdir, checkpoints
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=stage.checkpoint_keep,
                        async_save=stage.async_save)
    metrics_log = None
    try:
        # ------------------------------------------------------------------------------- the state
        data_iter = iter(stage.train_data)
        state, init_desc = resume_or_initialise(stage, ckpt, data_iter)
        start = int(jax.device_get(state.step))
        steps = stage.loop.steps
        log(f"{workdir}: {stage.description} on mesh {dict(stage.mesh.shape)}; init: {init_desc}")
        if start >= steps:
            if stage.on_done is not None and finished_step(workdir) != start:
                log(f"{workdir}: at step {start} of {steps}, but its last run stopped before finishing: finishing")
                if stage.make_evaluate is not None:
                    stage.make_evaluate()
                finish(stage, state, workdir, start)
            else:
                log(f"{workdir}: already at step {start} of {steps}; nothing to do")
            return state, StageResult(workdir, "done", start, {}, ckpt.latest_step())

        metrics_log = MetricsLog(workdir, resume_step=start)  # a damaged log stops the run before compiling

        # -------------------------------------------------------------------------------- the step
        step_fn = compile_stage_step(stage, state)
        evaluate = stage.make_evaluate() if stage.make_evaluate is not None else None

        # -------------------------------------------------------------------------------- the loop
        write_run_info(workdir, {**stage.run_info, "steps": steps, "init": init_desc,
                                 "processes": jax.process_count(), "devices": stage.mesh.size})
        if stage.write_files is not None and jax.process_index() == 0:
            stage.write_files(workdir)
        state, result = train_loop(stage.loop, step_fn, state, data_iter, stage.host_to_global, ckpt, metrics_log,
                                   start, workdir, evaluate)
    finally:
        if metrics_log is not None:
            metrics_log.close()
        ckpt.close()
    if result.status == "done" and stage.on_done is not None:
        finish(stage, state, workdir, result.step)
    return state, result


__all__ = ["Stage", "StepFn", "compile_stage_step", "example_batch", "resume_or_initialise", "run_stage",
           "take_batches", "write_run_info"]
