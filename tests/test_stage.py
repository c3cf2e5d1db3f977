"""The one stage runner (``jaxvl.runtime.stage``) on a tiny fake task: linear regression on a Grain dataset.

A fresh run; a run stopped by SIGTERM and resumed gives the parameters of an uninterrupted one bitwise;
a finished stage has nothing to do; ``init_from``; a task-built step; stage chains stop at a stage that
did not finish; a stage stopped before its first checkpoint (refused init, Ctrl-C) leaves no empty
``checkpoints/`` and no half-written ``run.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxvl.runtime.compile import FAST_COMPILE, jit_step
from jaxvl.runtime.loop import LoopConfig, StageResult
from jaxvl.runtime.metrics_log import read_metrics
from jaxvl.runtime.sharding import batch_sharding, make_mesh, to_global
from jaxvl.runtime.stage import Stage, example_batch, run_stage, take_batches
from jaxvl.runtime.state import TrainState, apply_gradients, boxed_shardings, boxed_state_init, init_sharded

FEATURES = 4


def linear_data(seed: int = 0, batch_size: int = 8) -> grain.IterDataset:
    """Batches {x: float32 [B, 4], y: float32 [B, 1]} of y = x . w + 0.5, shuffled, forever."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, FEATURES)).astype(np.float32)
    y = (x @ np.arange(1, FEATURES + 1, dtype=np.float32) + 0.5)[:, None]
    ds = grain.MapDataset.source([{"x": x[i], "y": y[i]} for i in range(len(x))]).shuffle(seed=seed).repeat()
    return ds.batch(batch_size, drop_remainder=True).to_iter_dataset()


def mse(model: nn.Module, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    err = model.apply({"params": params}, batch["x"]) - batch["y"]
    return jnp.mean(err**2), {"mse": jnp.mean(err**2)}


def linear_stage(steps: int, **overrides: Any) -> Stage:
    """The fake task's stage: a Dense(1) trained by SGD, checkpoints every 2 steps, evaluation every 3."""
    mesh = make_mesh(data=-1)
    model = nn.Dense(1)
    tx = optax.sgd(0.05)
    train = linear_data()

    def host_to_global(host):
        return to_global(host, mesh)

    example = example_batch(train, host_to_global)
    boxed = boxed_state_init(lambda r: model.init(r, jnp.zeros((1, FEATURES)))["params"], tx)
    shardings = boxed_shardings(boxed, mesh)
    def step(state: TrainState, batch: dict[str, jax.Array]):
        return apply_gradients(state, batch, functools.partial(mse, model), tx)

    held_out = take_batches(linear_data(seed=5), host_to_global, 2)

    def make_evaluate():
        return lambda state: {"loss": float(np.mean([mse(model, state.params, b, None)[0] for b in held_out]))}

    fields = dict(
        description=f"linear, {steps} steps of 8", mesh=mesh, train_data=train, host_to_global=host_to_global,
        example=example, init_state=lambda: init_sharded(boxed, jax.random.key(0), mesh, compiler_options=FAST_COMPILE),
        shardings=shardings, loop=LoopConfig(steps=steps, checkpoint_every=2, eval_every=3, progress=False),
        jitted_step=jit_step(step, mesh, shardings, batch_sharding(mesh), FAST_COMPILE), make_evaluate=make_evaluate,
        run_info={"task": "linear"}, checkpoint_keep=10, async_save=False)
    return Stage(**{**fields, **overrides})


def params_of(state: TrainState) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """An uninterrupted 6-step run: its workdir and final parameters."""
    workdir = tmp_path_factory.mktemp("straight")
    done = []
    state, result = run_stage(linear_stage(6, on_done=done.append), str(workdir))
    assert (result.status, result.step, result.checkpoint_step, len(done)) == ("done", 6, 6, 1)
    return workdir, params_of(state)


def test_a_fresh_run_writes_the_workdir(straight):
    workdir, _ = straight
    assert [r["step"] for r in read_metrics(workdir, "train")] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in read_metrics(workdir, "eval")] == [3, 6]
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [2, 4, 6]
    info = json.loads((workdir / "run.json").read_text())
    assert info["task"] == "linear" and info["steps"] == 6 and info["init"] == "random"
    assert info["devices"] == jax.device_count() and (workdir / "tensorboard").is_dir()
    losses = [r["loss"] for r in read_metrics(workdir, "train")]
    assert losses[-1] < losses[0]


def test_a_finished_stage_has_nothing_to_do(straight, capsys):
    workdir, params = straight
    done = []
    state, result = run_stage(linear_stage(6, on_done=done.append), str(workdir))
    out = capsys.readouterr().out
    assert "init: resumed from" in out and "already at step 6 of 6; nothing to do" in out
    assert "compiled the" not in out and not done
    assert (result.status, result.step) == ("done", 6)
    for a, b in zip(params, params_of(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_preempted_and_resumed_equals_uninterrupted(straight, tmp_path, capsys):
    """SIGTERM during step 3: a checkpoint there (with the data position), status ``preempted``, no
    ``on_done``; the resumed stage continues to the parameters and losses of the uninterrupted run."""
    workdir, params = straight
    done = []

    def build_step(state, example):
        compiled = linear_stage(6).jitted_step.lower(state, example).compile()

        def step(state, batch):
            if int(state.step) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return compiled(state, batch)

        return step

    stage = linear_stage(6, jitted_step=None, build_step=build_step, step_name="signalling step",
                         on_done=done.append)
    _, result = run_stage(stage, str(tmp_path))
    assert (result.status, result.step, result.checkpoint_step, done) == ("preempted", 3, 3, [])
    assert "compiled the signalling step in" in capsys.readouterr().out
    state, result = run_stage(linear_stage(6, on_done=done.append), str(tmp_path))
    assert "resumed from" in capsys.readouterr().out
    assert (result.status, result.step, len(done)) == ("done", 6, 1)
    for a, b in zip(params, params_of(state), strict=True):
        np.testing.assert_array_equal(a, b)
    losses = [[(r["step"], r["loss"]) for r in read_metrics(d, "train")] for d in (workdir, tmp_path)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]


def test_init_from_another_workdir(straight, tmp_path):
    workdir, params = straight
    state, result = run_stage(linear_stage(0, init_from=str(workdir)), str(tmp_path))
    assert result.step == 0
    for a, b in zip(params, params_of(state), strict=True):
        np.testing.assert_array_equal(a, b)
    state, _ = run_stage(linear_stage(1, init_from=str(workdir), initialise=lambda s: 1 / 0), str(tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "run.json").read_text())["init"] == f"parameters of {workdir}"


def test_task_initialisation_and_stage_checks(tmp_path):
    def initialise(state):
        return state.replace(params=jax.tree.map(jnp.zeros_like, state.params)), "zeros"

    state, _ = run_stage(linear_stage(0, initialise=initialise), str(tmp_path))
    assert not any(p.any() for p in params_of(state))
    with pytest.raises(ValueError, match="exactly one of jitted_step"):
        linear_stage(1, build_step=lambda state, example: None)


class _CtrlCWhenWritten:
    """A run fact whose ``str`` is Ctrl-C: pressed while ``run.json`` is being written."""

    def __str__(self) -> str:
        raise KeyboardInterrupt


def _refuse(state: TrainState):
    raise ValueError("init.checkpoint does not fit the model")


def _ctrl_c_at_first_batch(stage: Stage) -> Stage:
    def host_to_global(host):
        raise KeyboardInterrupt

    return dataclasses.replace(stage, host_to_global=host_to_global)


@pytest.mark.parametrize("stop, error", [
    (lambda: linear_stage(4, initialise=_refuse), ValueError),
    (lambda: linear_stage(4, run_info={"task": "linear", "ctrl-c": _CtrlCWhenWritten()}), KeyboardInterrupt),
    (lambda: _ctrl_c_at_first_batch(linear_stage(4)), KeyboardInterrupt),
], ids=["refused-init", "ctrl-c-writing-run-json", "ctrl-c-before-first-checkpoint"])
def test_a_stage_stopped_before_its_first_checkpoint_leaves_nothing_half_written(tmp_path, stop, error):
    """No empty ``checkpoints/`` (so a refused init leaves no trace of a run), and ``run.json`` is whole or untouched:
    the previous one stays as it was."""
    previous = '{"task": "previous run"}'
    (tmp_path / "run.json").write_text(previous)
    with pytest.raises(error):
        run_stage(stop(), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "run.json.tmp").exists()
    run_json = (tmp_path / "run.json").read_text()
    assert run_json == previous or json.loads(run_json)["task"] == "linear"


def test_stage_chains_stop_at_an_unfinished_stage(monkeypatch, tmp_path):
    """``pretrain`` (vision-only, then V&L) and ``train_captioner`` (XE, then SCST) start no next stage
    after one that did not finish."""
    from jaxvl.caption import trainer as caption_trainer
    from jaxvl.configs import load_config
    from jaxvl.pretrain import trainer as pretrain_trainer

    calls = []

    def stopped(cfg, workdir, *args, **kwargs):
        calls.append(workdir)
        return StageResult(workdir, "interrupted", 1, {}, 1)

    monkeypatch.setattr(pretrain_trainer, "run_stage", stopped)
    monkeypatch.setattr(caption_trainer, "run_caption_stage", stopped)
    results = pretrain_trainer.pretrain(load_config("pretrain:uniter,bert-v-vl,tiny"), str(tmp_path))
    assert [r.status for r in results] == ["interrupted"] and calls == [str(tmp_path / "vision")]
    results = caption_trainer.train_captioner(load_config("caption:ort,tiny"), str(tmp_path))
    assert [r.status for r in results] == ["interrupted"] and calls[-1] == str(tmp_path / "xe")
