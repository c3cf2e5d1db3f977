"""Checkpoints of a training run: Orbax ``CheckpointManager``, asynchronous, keeping the latest N.

One checkpoint (``<workdir>/checkpoints/<step>/``) holds three items:

- ``state``: the ``TrainState`` (params, optimizer state, step, rng as raw key data), every array
  written by the processes that own its shards (OCDBT); restored onto any mesh by passing the target
  shardings (``restore(..., shardings=...)``). One process writes each array whole; several keep
  Orbax's default (replica-parallel saving where Orbax enables it) (``state_handler``). Leaves must be
  arrays or numbers;
- ``data``: the Grain iterator position of every JAX process (one JSON file per process, Grain's own
  checkpoint handler), captured at ``save`` time, so asynchronous writing cannot see a later position;
- ``meta``: JSON (the step, the finite loss that preceded it, free-form run facts).

A save is atomic (Orbax writes to a temporary directory and renames it), so a process killed
mid-write leaves the previous checkpoint as the latest. The caller must never hand ``save`` a state
whose loss was not finite: the trainer checks before it saves. A directory the ``Checkpointer`` created
and never wrote a checkpoint into (an initialisation that was refused, Ctrl-C before the first save) is
removed again by ``close``, so a failed start leaves no empty ``checkpoints/`` behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvl.runtime.state import TrainState


class _FrozenIteratorState:
    """A Grain iterator's state captured now, served to Grain's checkpoint handler later (async save)."""

    def __init__(self, iterator: Any):
        self._state = json.dumps(iterator.get_state(), indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


def _raw_rng(state: TrainState) -> TrainState:
    return state.replace(rng=jax.random.key_data(state.rng))


def _typed_rng(state: TrainState, key_dtype: Any) -> TrainState:
    """Raw uint32 key data back to a typed key of ``key_dtype`` (e.g. ``key<fry>``)."""
    return state.replace(rng=jax.random.wrap_key_data(state.rng, impl=key_dtype._impl))


def state_handler() -> ocp.PyTreeCheckpointHandler:
    """Orbax's PyTree handler for the ``state`` item (the on-disk layout of its ``StandardCheckpointHandler``,
    which reads it back; on one process without its ``array_metadatas`` directory of typed PRNG-key impls and
    per-array write/chunk shapes, which restoring does not need: jaxvl stores raw key data). On one process,
    jax arrays are written whole: Orbax's replica-parallel saving would first slice every replicated array
    into one piece per device, op by op (a compile per array shape and device; 7.6 s of a tiny UNITER's
    first save on 8 CPU devices, 0.35 s without) only for the same process to write all the pieces.
    Several processes keep Orbax's default."""
    if jax.process_count() > 1:
        return ocp.PyTreeCheckpointHandler()
    handlers = ocp.type_handlers
    registry = handlers.create_type_handler_registry(
        *((t, handlers.ScalarHandler()) for t in (int, float, bytes, np.number)), (np.ndarray, handlers.NumpyHandler()),
        (jax.Array, handlers.ArrayHandler(use_replica_parallel=False)))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class Checkpointer:
    """Save / restore ``TrainState`` + data-iterator state + metadata under ``directory``.

    ``keep``: how many of the latest checkpoints to keep; ``async_save``: write in a background thread
    (``wait()`` blocks until it is on disk; ``close()`` waits too).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self._created = not os.path.exists(self.directory)
        # Orbax's preservation policy (its ``max_to_keep`` option is deprecated in favour of it).
        options = ocp.CheckpointManagerOptions(preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
                                               create=True, enable_async_checkpointing=async_save)
        handlers = {"state": state_handler(), "meta": ocp.JsonCheckpointHandler(),
                    "data": grain.checkpoint.CheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # ------------------------------------------------------------------------------------- queries

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    # -------------------------------------------------------------------------------------- saving

    def save(self, state: TrainState, data_iterator: Any | None = None, meta: Mapping[str, Any] | None = None,
             force: bool = True) -> bool:
        """Writes a checkpoint at ``state.step`` (asynchronously unless disabled). ``data_iterator``: a
        Grain iterator (its position now is what is saved). Returns whether a save started."""
        step = int(jax.device_get(state.step))
        items: dict[str, Any] = {"state": ocp.args.PyTreeSave(_raw_rng(state)),
                                 "meta": ocp.args.JsonSave(dict(meta or {}, step=step))}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iterator))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager; removes ``directory`` when this ``Checkpointer``
        created it and it is still empty (process 0; ``os.rmdir`` leaves a directory with anything in it)."""
        self.manager.wait_until_finished()
        self.manager.close()
        if self._created and jax.process_index() == 0:
            with contextlib.suppress(OSError):  # not empty: it holds checkpoints (or someone else's files)
                os.rmdir(self.directory)

    # ------------------------------------------------------------------------------------ restoring

    def restore(self, abstract_state: TrainState, shardings: TrainState, step: int | None = None,
                data_iterator: Any | None = None) -> tuple[TrainState, dict[str, Any]]:
        """The state at ``step`` (default: the latest), laid out by ``shardings`` (a ``TrainState`` of
        ``NamedSharding``: any mesh, not necessarily the one it was saved from), and its metadata.
        ``abstract_state``: a ``TrainState`` of arrays or ``ShapeDtypeStruct``s giving shapes and dtypes
        (e.g. ``jax.eval_shape`` of the init). ``data_iterator``: a fresh Grain iterator of the same
        pipeline, moved to the saved position in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        raw = jax.eval_shape(_raw_rng, abstract_state)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), raw, shardings)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        items: dict[str, Any] = {"state": ocp.args.PyTreeRestore(target, restore_args=restore_args),
                                 "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return _typed_rng(restored["state"], abstract_state.rng.dtype), dict(restored["meta"])


def save_member(workdir: str, name: str, state: TrainState, meta: dict[str, Any]) -> None:
    """A sweep member's final ``state`` as a single run's checkpoint, ``<workdir>/members/<name>/checkpoints`` (the
    layout ``init.checkpoint``, the ablation and the probes read), with ``meta``; nothing when that step is already
    there."""
    target = Checkpointer(os.path.join(workdir, "members", name, "checkpoints"), keep=1, async_save=False)
    try:
        if target.latest_step() == int(jax.device_get(state.step)):
            return  # exported by a run that stopped before finishing (a complete Orbax step is never partial)
        target.save(state, meta=meta)
    finally:
        target.close()


def restore_params(directory: str | os.PathLike, step: int | None = None) -> tuple[Any, int]:
    """The parameter tree (host numpy) of a checkpoint directory's ``step`` (default the latest), whatever
    the optimizer and mesh it was saved with, and that step. For evaluation (e.g. the ablation)."""
    directory = os.path.abspath(os.fspath(directory))
    manager = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return jax.tree.map(lambda x: np.asarray(x), restored["state"]["params"]), step


def params_from_workdir(path: str, state: TrainState, shardings: TrainState) -> Any:
    """The parameters of the latest checkpoint of a jaxvl workdir (or its ``checkpoints`` directory),
    laid out by ``shardings``. The checkpoint must come from the same model (any optimizer schedule)."""
    directory = path if os.path.basename(os.path.normpath(path)) == "checkpoints" else os.path.join(path, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{path}: not a jaxvl workdir (no {directory}) nor a VOLTA checkpoint file")
    source = Checkpointer(directory, async_save=False)
    try:
        restored, _ = source.restore(state, shardings)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{directory}: its checkpoint does not fit this model and optimizer ({e})") from e
    finally:
        source.close()
    return restored.params
