"""The fine-tuning trainer (``jaxvl finetune`` / ``jaxvl evaluate``): configs, starting points, learning above chance
on the planted synthetic tasks, exact resume, sweeps equal to their single runs."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import linen as nn

from jaxvl.configs import load_config
from jaxvl.configs.finetune import SYNTHETIC_TASKS
from jaxvl.finetune import step as ft
from jaxvl.finetune.data import eval_batches, model_rows, synthetic_task_split
from jaxvl.finetune.pretrained import initial_task_params
from jaxvl.finetune.trainer import evaluate, finetune, sweep_members, task_model, task_split
from jaxvl.models import VLBertForPreTraining
from jaxvl.models.volta.task_heads import TaskSpec, VLBertForVLTasks
from jaxvl.runtime.checkpoint import Checkpointer, restore_params
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.state import TrainState

SMALL = ["data.train_images=64", "data.val_images=32", "progress=False", "checkpoint.async_save=False"]


def config(arg: str, *overrides: str):
    return load_config(f"finetune:{arg}", [*SMALL, *overrides])


# ------------------------------------------------------------------------------------------- configs


def test_configs_carry_voltas_ctrl_values():
    vqa, ret = load_config("finetune:vqa,uniter", []), load_config("finetune:retrieval,lxmert", [])
    assert (vqa.task.volta_task, vqa.task.num_labels, vqa.optimizer.learning_rate, vqa.data.batch_size) == (
        "TASK1", 3129, 1e-4, 256)
    assert (ret.task.type, ret.optimizer.learning_rate, ret.data.batch_size, ret.data.max_seq_length) == (
        "VL-logit", 2e-5, 64, 30)
    assert (vqa.optimizer.weight_decay, vqa.optimizer.clip_norm, vqa.optimizer.eps) == (1e-4, 1.0, 1e-6)
    with pytest.raises(ValueError, match="task 'okvqa'"):
        load_config("finetune:okvqa,uniter", [])
    with pytest.raises(ValueError, match="no synthetic world"):
        load_config("finetune:gqa,uniter,tiny", [])
    lrs = load_config("finetune:nlvr2,uniter,tiny,sweep=lrs", [])
    assert [m["learning_rate"] for m in sweep_members(lrs)] == [1e-3, 2e-3, 4e-3]
    lrs.sweep = [dict(name="a", token_prob=0.1)]
    with pytest.raises(ValueError, match="member 0 .'a'.: keys \\['token_prob'\\]"):
        sweep_members(lrs)


def test_an_empty_dataset_is_one_line():
    cfg = config("vqa,uniter,tiny", "data.dataset=")
    with pytest.raises(ValueError, match="data.dataset is empty"):
        finetune(cfg, "/nonexistent/never_made")


# --------------------------------------------------------------------------------------- the batches


@pytest.mark.parametrize("task", ["retrieval", "nlvr2"])
def test_model_rows_fold_options_and_image_pairs(task):
    split = synthetic_task_split(task, "val", 48, 16, 4, 12)
    spec = task_model(config(f"{task},uniter,tiny"), split).tasks[0]
    batch = eval_batches(split, 4)[0]
    rows = model_rows(spec, batch)
    per = 4 if task == "retrieval" else 2
    assert rows["input_ids"].shape[0] == rows["features"].shape[0] == 4 * per
    if task == "retrieval":  # caption c's options are rows 4c .. 4c + 3
        np.testing.assert_array_equal(rows["features"][5], batch["features"][1, 1])
    else:  # rows 2i, 2i + 1: example i's left and right image with its statement
        np.testing.assert_array_equal(rows["features"][3], batch["features"][1, 1])
        np.testing.assert_array_equal(rows["input_ids"][2], rows["input_ids"][3])


# ----------------------------------------------------------------------------------- starting points


def _pretraining_checkpoint(tmp_path, model_cfg, seed=3):
    pre = VLBertForPreTraining(model_cfg)
    params = jax.device_get(nn.meta.unbox(pre.init(jax.random.key(seed), **pre.dummy_inputs(2, 8, 5))["params"]))
    tx = make_optimizer(OptimizerConfig(total_steps=2))
    state = TrainState(step=np.int32(7), params=params, opt_state=tx.init(params), rng=jax.random.key(0))
    ckpt = Checkpointer(str(tmp_path / "pre" / "checkpoints"), async_save=False)
    ckpt.save(state, meta={})
    ckpt.close()
    return params


@pytest.mark.slow
def test_encoder_comes_from_a_pretraining_workdir_and_mismatches_are_named(tmp_path):
    split = synthetic_task_split("refcoco+", "val", 48, 16, 4, 12)
    model = task_model(config("refcoco+,uniter,tiny"), split)
    params = jax.device_get(nn.meta.unbox(
        ft.boxed_init(model, make_optimizer(), split.batch([0]))(jax.random.key(0)).params))
    pre = _pretraining_checkpoint(tmp_path, model.cfg)
    loaded, desc = initial_task_params(str(tmp_path / "pre"), model, params)
    assert "encoder (heads random)" in desc and "step 7" in desc
    for a, b in zip(jax.tree.leaves(loaded["bert"]), jax.tree.leaves(pre["bert"]), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(loaded["clfs_dict"]), jax.tree.leaves(params["clfs_dict"]), strict=True):
        np.testing.assert_array_equal(a, b)
    other = VLBertForVLTasks(model.cfg.replace(hidden_size=2 * model.cfg.hidden_size,
                                               v_hidden_size=2 * model.cfg.v_hidden_size), model.tasks)
    _pretraining_checkpoint(tmp_path / "big", other.cfg)
    with pytest.raises(ValueError, match="has shape .* this model"):
        initial_task_params(str(tmp_path / "big" / "pre"), model, params)
    with pytest.raises(FileNotFoundError, match="neither a file"):
        initial_task_params(str(tmp_path / "nothing"), model, params)


def test_a_volta_task_checkpoint_gives_encoder_and_head(tmp_path):
    torch = pytest.importorskip("torch", reason="writing a VOLTA .bin needs torch")
    from jaxvl.convert.volta_tasks import to_volta_tasks

    split = synthetic_task_split("vqa", "val", 48, 16, 4, 12)
    model = task_model(config("vqa,uniter,tiny"), split)
    init = lambda seed: jax.device_get(nn.meta.unbox(  # noqa: E731
        ft.boxed_init(model, make_optimizer(), split.batch([0]))(jax.random.key(seed)).params))
    source, fresh = init(1), init(2)
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in to_volta_tasks(source, model.cfg, model.tasks).items()}
    torch.save(state_dict, tmp_path / "pytorch_model_19.bin")
    loaded, desc = initial_task_params(str(tmp_path / "pytorch_model_19.bin"), model, fresh)
    assert "encoder and heads" in desc
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(source), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_refcoco_finetune_learns_above_chance_resumes_exactly_and_evaluates(tmp_path):
    """RefCOCO+'s planted world (the ``ATTR CLASS on the SIDE``, 2-3 objects): after 240 steps the held-out accuracy's
    95% interval lies above the uniform-pick chance; a run whose last checkpoint is removed resumes from the middle
    one (parameters, optimizer, rng, data position) and ends bitwise equal; ``evaluate`` reproduces the score."""
    cfg = config("refcoco+,uniter,tiny", "data.train_images=384", "data.val_images=96", "steps=240",
                 "checkpoint.every=120", "eval_every=120", "log_every=40", "mesh.data=1")  # one of the 8 devices
    straight = tmp_path / "straight"
    result = finetune(cfg, str(straight))
    assert result.status == "done" and result.step == 240
    results = json.loads((straight / "results.json").read_text())
    row = results["rows"][0]
    print((straight / "results.md").read_text())
    assert row["above_chance"] and row["low"] > results["chance"] + 10, results
    assert "95% percentile bootstrap" in (straight / "results.md").read_text()
    first, _ = restore_params(straight / "checkpoints")

    shutil.rmtree(straight / "checkpoints" / "240")  # as if stopped after step 120
    again = finetune(cfg, str(straight))
    assert again.status == "done" and again.step == 240
    resumed, _ = restore_params(straight / "checkpoints")
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert json.loads((straight / "results.json").read_text())["rows"][0]["score"] == row["score"]
    table = evaluate(cfg, str(straight), export_volta=str(tmp_path / "refcoco.safetensors"))
    assert f"| {row['score']:.1f} |" in table and os.path.isfile(straight / "evaluation.json")
    # the exported VOLTA state dict, evaluated from init.checkpoint in an empty workdir: the same score
    cfg.init.checkpoint = str(tmp_path / "refcoco.safetensors")
    assert f"| {row['score']:.1f} |" in evaluate(cfg, str(tmp_path / "from_volta"))


@pytest.mark.slow
def test_a_sweep_of_seeds_equals_its_single_runs(tmp_path):
    """Two seeds as one vmapped program vs two single runs: the same parameters (float32 tolerance), members
    exported, one results row per member."""
    common = ("steps=6", "checkpoint.every=6", "eval_every=6", "log_every=3", "data.batch_size=16")
    cfg = config("vqa,uniter,tiny", *common)
    cfg.sweep = [dict(name="s0", seed=0), dict(name="s1", seed=1, learning_rate=1e-3)]
    finetune(cfg, str(tmp_path / "sweep"))
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())["rows"]
    assert [r["member"] for r in rows] == ["s0", "s1"]
    for name, seed, lr in (("s1", 1, 1e-3),):
        single = config("vqa,uniter,tiny", *common, f"seed={seed}", f"optimizer.learning_rate={lr}")
        finetune(single, str(tmp_path / name))
        a, _ = restore_params(tmp_path / name / "checkpoints")
        b, _ = restore_params(tmp_path / "sweep" / "members" / name / "checkpoints")
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_retrieval_results_carry_recall_at_k(tmp_path):
    cfg = config("retrieval,uniter,tiny", "steps=4", "checkpoint.every=4", "eval_every=4", "data.batch_size=8")
    finetune(cfg, str(tmp_path))
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert {"ir_r1", "ir_r5", "tr_r10", "ir_meanr"} <= set(row) and 0 <= row["ir_r5"] <= 100


def test_task_spec_of_a_tiny_classifier_fits_the_answers():
    split = synthetic_task_split("vqa", "val", 48, 16, 4, 12)
    model = task_model(config("vqa,uniter,tiny"), split)
    assert model.tasks[0] == TaskSpec("TASK1", "VL-classifier", split.num_labels)
    assert split.batch([0, 1])["target"].shape == (2, split.num_labels)


@pytest.mark.slow
@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_every_tiny_task_builds_its_splits_and_head(task):
    """Each embedded task world gives both splits, a head of the right type and width, and targets it can score."""
    cfg = config(f"{task},uniter,tiny")
    train, val = task_split(cfg, "train"), task_split(cfg, "val")
    assert len(train) > len(val) > 0 and 0 < val.chance < 1
    model = task_model(cfg, val)
    spec = model.tasks[0]
    assert (spec.name, spec.type) == (cfg.task.volta_task, cfg.task.type)
    batch = val.batch([0, 1])
    rows = model_rows(spec, batch)
    logits = model.apply(model.init(jax.random.key(0), **{k: rows[k] for k in ("input_ids", "features", "locations")}),
                         rows["input_ids"], rows["features"], rows["locations"], rows["token_type_ids"],
                         rows["text_mask"], rows["region_mask"], task=spec.name)
    want = {"VL-classifier": (2, val.num_labels), "V-logit": (2, batch["features"].shape[1], 1),
            "VL-binary-classifier": (2, 2), "VL-tri-classifier": (2, 3), "VL-logit": (8, 1)}[spec.type]
    assert logits.shape == want
