"""`jaxvl pretrain`: the trainer end to end on the synthetic world, checkpoints, resume, NaN stop, stages.

The end-to-end runs go through the real command (in-process, or as subprocesses where a process must
be killed); they use `fast_compile` and tiny step counts. The synthetic dataset is prepared once per
module and shared.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxvl.cli import main
from jaxvl.configs import load_config
from jaxvl.pretrain.trainer import initial_params, pretrain, vision_only_batch
from jaxvl.runtime.checkpoint import Checkpointer
from jaxvl.runtime.loop import TrainingDiverged
from jaxvl.runtime.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = "pretrain"
FAST = ["fast_compile=True", "progress=False", "eval_batches=1", "data.batch_size=8", "data.max_seq_length=12"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """A prepared synthetic world (64 train images), its pretraining dataset's version directory."""
    from jaxvl.data.builders.pretrain import PretrainPairs
    from jaxvl.data.sources import build_source

    out = tmp_path_factory.mktemp("data")
    builder = next(b for b in build_source("synthetic:num_images=64", str(out)).builders
                   if isinstance(b, PretrainPairs))
    builder.download_and_prepare()
    return str(builder.data_dir)


def config(dataset: str, arg: str = "uniter,tiny", *overrides: str):
    return load_config(f"{PRETRAIN}:{arg}", [f"data.dataset={dataset!r}", *FAST, *overrides])


def _cli(dataset: str, workdir: Path, arg: str, *overrides: str) -> list[str]:
    return ["pretrain", "--config", f"{PRETRAIN}:{arg}", "--workdir", str(workdir),
            f"--config.data.dataset={dataset}", *[f"--config.{o}" for o in (*FAST, *overrides)]]


def final_params(workdir: Path) -> list[np.ndarray]:
    """The parameter leaves of the latest checkpoint (host arrays, restored without a target)."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(str(workdir / "checkpoints"),
                                    item_handlers={"state": ocp.StandardCheckpointHandler()})
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return [np.asarray(x) for x in jax.tree.leaves(restored["state"]["params"])]


# ------------------------------------------------------------------------------------------ configs


def test_every_variant_config_builds():
    for model in ("visualbert", "uniter", "vl-bert", "lxmert", "vilbert"):
        for variant in ("ctrl", "xent", "rnd-vl", "bert-v-vl", "rnd-v-vl", "thr02", "thr06iot", "thr10", "xent+rnd-vl"):
            for tiny in ("", ",tiny"):
                cfg = load_config(f"{PRETRAIN}:{model},{variant}{tiny}")
                assert cfg.model.name == model
    cfg = load_config(f"{PRETRAIN}:uniter,xent")
    assert dict(cfg.model.visual_target_weights) == {"3": 1.0} and cfg.init.kind == "bert"
    cfg = load_config(f"{PRETRAIN}:uniter,rnd-v-vl")
    assert cfg.init.kind == "random" and cfg.vision_stage.enabled
    cfg = load_config(f"{PRETRAIN}:uniter,thr06iot")
    assert (cfg.objective.overlap_threshold, cfg.objective.overlap_kind) == (0.6, "iot")
    assert load_config(f"{PRETRAIN}:uniter,thr10").objective.overlap_threshold == 2.0
    with pytest.raises(ValueError, match="thr05"):
        load_config(f"{PRETRAIN}:uniter,thr05")
    with pytest.raises(ValueError, match="bert-large"):
        load_config(f"{PRETRAIN}:bert-large")


def test_full_size_model_must_match_the_data(dataset, tmp_path):
    cfg = config(dataset, "uniter")
    with pytest.raises(ValueError, match=r"v_feature_size: model 2048 vs data 24.*vocab_size"):
        pretrain(cfg, str(tmp_path))


def test_full_size_bert_init_needs_a_checkpoint():
    from jaxvl.models import get_model

    cfg = load_config(f"{PRETRAIN}:uniter")
    with pytest.raises(ValueError, match="init.bert_checkpoint"):
        initial_params(cfg, get_model("uniter", tiny=True), {})


def test_warnings_repeated_by_members_are_said_once(caplog):
    """A sweep's members (and a run's stages) each start the same way: ``warn_once`` says it once per process,
    as the tiny run without a BERT checkpoint does (``initial_params``)."""
    from jaxvl.pretrain.trainer import warn_once

    message = f"said once {id(caplog)}"
    with caplog.at_level("WARNING", logger="jaxvl.pretrain.trainer"):
        for _ in range(4):
            warn_once(message)
    assert [r.message for r in caplog.records].count(message) == 1


def test_bert_initialisation_through_the_converter(tmp_path):
    """init.kind=bert loads a HF BertModel (here a random one of the tiny text stream's shape) into the text
    stream: word table, attention and FFN of BERT layer 0 land where the plan maps them."""
    torch = pytest.importorskip("torch", reason="needs torch to write a HF BertModel: pip install -e '.[test]'")
    transformers = pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[test]'")
    from jaxvl.models import get_model

    model = get_model("uniter", tiny=True)
    c = model.cfg
    layers = len(dict(c.plan.bert_layer2attn_sublayer))
    bert_cfg = transformers.BertConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                                       num_attention_heads=c.num_attention_heads, num_hidden_layers=layers,
                                       intermediate_size=c.intermediate_size,
                                       max_position_embeddings=c.max_position_embeddings,
                                       type_vocab_size=c.type_vocab_size)
    torch.manual_seed(0)
    bert = transformers.BertModel(bert_cfg, add_pooling_layer=False)
    path = tmp_path / "bert.bin"
    torch.save(bert.state_dict(), path)
    cfg = load_config(f"{PRETRAIN}:uniter,tiny", [f"init.bert_checkpoint={str(path)!r}"])
    params = jax.device_get(model.init(jax.random.key(0), **model.dummy_inputs())["params"])
    params = jax.tree.map(np.asarray, params)
    out, desc = initial_params(cfg, model, params)
    assert desc.startswith("BERT ")
    words = bert.embeddings.word_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(out["bert"]["embeddings"]["word_embeddings"]["embedding"], words)
    assert not np.array_equal(params["bert"]["embeddings"]["word_embeddings"]["embedding"], words)


def test_vision_only_batch():
    batch = dict(input_ids=np.ones((3, 7), np.int32), text_mask=np.ones((3, 7), np.int32),
                 token_type_ids=np.zeros((3, 7), np.int32), features=np.ones((3, 4, 2), np.float32))
    out = vision_only_batch(batch, pad_id=0)
    assert out["input_ids"].shape == (3, 1) and not out["input_ids"].any() and not out["text_mask"].any()
    assert out["features"] is batch["features"]


# ----------------------------------------------------------------------------------- end to end


def test_pretrain_command_end_to_end(dataset, tmp_path, capsys):
    """Metrics per step (JSONL + TensorBoard), periodic eval, checkpoints every N keeping 2, the AOT memory
    line; then the same command on the finished workdir resumes at the end and trains nothing more."""
    args = _cli(dataset, tmp_path, "uniter,tiny", "steps=6", "checkpoint.every=2", "checkpoint.keep=2",
                "eval_every=3")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "memory per device: " in out and "done at step 6" in out
    train = read_metrics(tmp_path, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and {"mlm", "mrc_kl", "itm", "lr", "grad_norm"} <= set(r) for r in train)
    assert abs(train[-1]["loss"] - (train[-1]["mlm"] + train[-1]["mrc_kl"] + train[-1]["itm"])) < 1e-4
    assert [r["step"] for r in read_metrics(tmp_path, "eval")] == [3, 6]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard" / "train"))
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["steps"] == 6 and run["model_config"]["v_feature_size"] == 24
    assert main(args) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_naming_the_step_and_saves_no_nan(dataset, tmp_path):
    """A learning rate of 1e30 blows the parameters up after the first updates: the run stops at the first
    non-finite step, names it and the last good checkpoint, and every checkpoint on disk is finite."""
    cfg = config(dataset, "uniter,tiny", "steps=8", "checkpoint.every=1", "eval_every=0",
                 "optimizer.learning_rate=1e30", "optimizer.warmup_fraction=0.0", "optimizer.clip_norm=0.0")
    with pytest.raises(TrainingDiverged, match=r"at step (\d+); stopping. Last good checkpoint") as err:
        pretrain(cfg, str(tmp_path))
    bad_step = int(str(err.value).split("at step ")[1].split(";")[0])
    saved = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert saved and max(saved) < bad_step
    assert f"(step {max(saved)})" in str(err.value)
    assert all(np.isfinite(x).all() for x in final_params(tmp_path))


@pytest.mark.slow
def test_vision_first_stages(dataset, tmp_path):
    """bert-v-vl: a vision-only stage (text = one padding token: no MLM targets, no ITM, MRC-KL only), then
    the V&L stage starting from its parameters."""
    cfg = config(dataset, "uniter,bert-v-vl,tiny", "steps=2", "vision_stage.steps=2", "eval_every=0",
                 "checkpoint.every=2")
    first, second = pretrain(cfg, str(tmp_path))
    assert (first.status, second.status) == ("done", "done")
    vision = read_metrics(tmp_path / "vision", "train")
    assert all(r["mlm"] == 0.0 and "itm" not in r and r["mrc_kl"] > 0 for r in vision)
    assert {"mlm", "itm", "mrc_kl"} <= set(read_metrics(tmp_path / "vl", "train")[0])
    run = json.loads((tmp_path / "vl" / "run.json").read_text())
    assert run["init"] == f"parameters of {tmp_path / 'vision'}"


# -------------------------------------------------------------------------- kill, SIGTERM, resume


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return env


def _start(dataset: str, workdir: Path, cache: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jaxvl.cli", *_cli(dataset, workdir, "uniter,tiny", *overrides)]
    return subprocess.Popen(cmd, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(workdir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not (workdir / "checkpoints" / str(step) / "commit_success.txt").exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before checkpoint {step}:\n{proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint {step} after {timeout} s")
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_and_sigtermed_run_resumes_bitwise(dataset, tmp_path):
    """An uninterrupted run vs. one killed with SIGKILL after checkpoint 10, resumed, stopped with SIGTERM
    (which checkpoints where it stands and exits 143), and resumed to the end: bitwise equal parameters
    and identical per-step losses."""
    cache = tmp_path / "xla_cache"
    steps = ("steps=60", "checkpoint.every=10", "eval_every=0")
    straight = tmp_path / "straight"
    proc = _start(dataset, straight, cache, *steps)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    run = tmp_path / "interrupted"
    proc = _start(dataset, run, cache, *steps)
    _wait_for_checkpoint(run, 10, proc)
    proc.kill()
    proc.wait()
    proc = _start(dataset, run, cache, *steps)
    _wait_for_checkpoint(run, 30, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert "SIGTERM: checkpoint written at step" in proc.stdout.read()
    stopped = max(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit())
    assert stopped >= 30
    proc = _start(dataset, run, cache, *steps)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    for a, b in zip(final_params(straight), final_params(run), strict=True):
        np.testing.assert_array_equal(a, b)
    losses = [[r["loss"] for r in read_metrics(d, "train")] for d in (straight, run)]
    assert len(losses[0]) == 60 and losses[0] == losses[1]


# ----------------------------------------------------------------------------------- other meshes


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    """Saved from a data-parallel mesh of 8, restored under FSDP over 8 and under (2, 1, 4): same values,
    each leaf laid out by the new mesh's shardings."""
    from jaxvl.models import get_model
    from jaxvl.pretrain.step import init_state, state_shardings
    from jaxvl.runtime.compile import FAST_COMPILE
    from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
    from jaxvl.runtime.sharding import make_mesh

    model = get_model("uniter", tiny=True, hidden_size=64, v_hidden_size=64, intermediate_size=128,
                      v_intermediate_size=128)
    tx = make_optimizer(OptimizerConfig(total_steps=10))
    example = {k: jax.ShapeDtypeStruct((8, *v.shape[1:]), v.dtype) for k, v in model.dummy_inputs().items()}
    data_mesh = make_mesh(8, 1, 1)
    state = init_state(model, tx, jax.random.key(3), example, data_mesh, compiler_options=FAST_COMPILE)
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=True)
    ckpt.save(state, meta={"note": "x"})
    ckpt.wait()
    saved = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    for shape in ((1, 8, 1), (2, 1, 4)):
        mesh = make_mesh(*shape)
        shardings = state_shardings(model, tx, example, mesh)
        restored, meta = ckpt.restore(state, shardings)
        assert meta == {"note": "x", "step": 0}
        assert jax.random.key_data(restored.rng).tolist() == jax.random.key_data(state.rng).tolist()
        for a, b, s in zip(saved, jax.tree.leaves(restored.params), jax.tree.leaves(shardings.params), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))
            assert b.sharding.is_equivalent_to(s, b.ndim)
        assert any(not b.sharding.is_fully_replicated for b in jax.tree.leaves(restored.params))
    ckpt.close()


def test_one_process_writes_replicated_arrays_whole(tmp_path):
    """A replicated state on 8 devices of one process is saved without compiling anything (Orbax's default,
    replica-parallel saving, first slices every array into one piece per device, op by op: the control) and
    reads back equal."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec
    from test_diagnostics_sweep import compile_counter

    from jaxvl.runtime.checkpoint import state_handler
    from jaxvl.runtime.sharding import make_mesh
    from jaxvl.runtime.state import TrainState

    replicated = NamedSharding(make_mesh(8, 1, 1), PartitionSpec())
    params = {f"w{n}": jnp.arange(n * 16, dtype=jnp.float32).reshape(n, 16) for n in (3, 5, 7)}
    state = jax.device_put(TrainState(step=jnp.int32(4), params=params, opt_state=(), rng=jax.random.key(0)),
                           replicated)
    compiles, listener = compile_counter()
    try:
        ckpt = Checkpointer(tmp_path / "ours", async_save=False)
        ckpt.save(state)
        ckpt.close()
        ours = len(compiles)
        jax.clear_caches()  # the control compiles its slices afresh, whatever ran before on this worker
        control = ocp.CheckpointManager(tmp_path / "orbax", item_handlers={"state": ocp.PyTreeCheckpointHandler()})
        control.save(4, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state.params)))
        control.wait_until_finished()
        control.close()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert ours == 0 and len(compiles) > ours, (ours, len(compiles))
    assert isinstance(state_handler(), ocp.PyTreeCheckpointHandler)
    restored, meta = Checkpointer(tmp_path / "ours").restore(state, jax.tree.map(lambda _: replicated, state))
    assert meta == {"step": 4} and int(restored.step) == 4
    assert jax.random.key_data(restored.rng).tolist() == jax.random.key_data(state.rng).tolist()
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------- sweeps


@pytest.mark.slow
def test_sweep_members_equal_their_single_runs(dataset, tmp_path):
    """`sweep=objectives` trains MRC-KL and MRC-XE members as one program; each member's per-step losses equal
    the single run with its settings (uniter,tiny and uniter,xent,tiny), and each member is exported as its
    own checkpoint beside a summary table."""
    common = ("steps=3", "eval_every=3", "checkpoint.every=3")
    (sweep_result,) = pretrain(config(dataset, "uniter,tiny,sweep=objectives", *common), str(tmp_path / "sweep"))
    assert sweep_result.status == "done" and len(sweep_result.last_metrics) == 2
    for name, arg in (("mrc-kl", "uniter,tiny"), ("mrc-xe", "uniter,xent,tiny")):
        pretrain(config(dataset, arg, *common), str(tmp_path / name))
        single = read_metrics(tmp_path / name, "train")
        member = read_metrics(tmp_path / "sweep", "train", name)
        np.testing.assert_allclose([r["loss"] for r in member], [r["loss"] for r in single], rtol=1e-5)
        np.testing.assert_allclose([r["mlm"] for r in member], [r["mlm"] for r in single], rtol=1e-5)
        part = "mrc_kl" if name == "mrc-kl" else "mrc_xe"
        np.testing.assert_allclose([r[part] for r in member], [r[part] for r in single], rtol=1e-5)
        assert [r["step"] for r in read_metrics(tmp_path / "sweep", "eval", name)] == [3]
        assert (tmp_path / "sweep" / "members" / name / "checkpoints" / "3").is_dir()
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "mrc-kl" in summary and "mrc-xe" in summary and "final loss" in summary
    header = summary.splitlines()[0]  # the members' training time, not the last step's seconds
    assert "training s" in header and "| seconds |" not in header
