"""The fine-tuning trainer behind ``jaxvl finetune`` and the evaluation behind ``jaxvl evaluate``.

``finetune(cfg, workdir)`` runs a ``jaxvl/configs/finetune.py`` config as one stage of the shared stage runner
(``jaxvl.runtime.stage``), in named sections:

1. Data: the task's train and val splits (``jaxvl.finetune.data``; the embedded synthetic worlds for ``tiny``).
2. Model and optimizer: the preset's encoder sized to the data (tiny) with the task's head
   (``VLBertForVLTasks``, VOLTA's ``clfs_dict`` name), VOLTA's fine-tuning AdamW (``jaxvl.runtime.optimizer``).
3. State: resumed from the workdir's latest checkpoint (parameters, optimizer, step, rng and the data iterator:
   exact resume), else created in its shards with ``init.checkpoint``'s encoder (``jaxvl.finetune.pretrained``).
   A ``sweep`` (seeds, learning rates) stacks its members and trains them as one vmapped program.
4. The loop: metrics to JSONL and TensorBoard, the held-out loss and score every ``eval_every`` steps,
   asynchronous checkpoints, SIGTERM = checkpoint and stop.
5. At the last step: ``results.md`` / ``results.json`` (score with its interval, chance, above chance?; retrieval
   with R@K), and a sweep's members exported to ``<workdir>/members/<name>``.

``evaluate(cfg, workdir)`` reads the final parameters of a fine-tuning workdir (every member of a sweep), or a
VOLTA ``BertForVLTasks`` ``.bin`` given as ``init.checkpoint``, and writes ``evaluation.md`` / ``.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from ml_collections import ConfigDict

from jaxvl.finetune import step as ft
from jaxvl.finetune.data import TaskSplit, retrieval_items, synthetic_task_split, train_dataset
from jaxvl.finetune.evaluate import TaskEvaluation, retrieval_scores, task_results, write_results
from jaxvl.finetune.pretrained import initial_task_params, pretrained_parts, with_parts
from jaxvl.models import get_model
from jaxvl.models.volta.task_heads import TaskSpec, VLBertForVLTasks
from jaxvl.runtime.checkpoint import restore_params, save_member
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.loop import LoopConfig, StageResult, log
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import batch_sharding, make_mesh, to_global
from jaxvl.runtime.stage import Stage, example_batch, run_stage
from jaxvl.runtime.state import member_state

# ============================================================================================ data


def task_split(cfg: ConfigDict, split: str) -> TaskSplit:
    """``split`` ("train" or "val") of the config's task data: ``data.dataset`` ``synthetic-<task>`` is the embedded
    world; anything else names VOLTA's task files and their features (``jaxvl.finetune.files``)."""
    d = cfg.data
    if d.dataset == f"synthetic-{cfg.task.name}":
        return synthetic_task_split(cfg.task.name, split, d.train_images, d.val_images, d.num_regions,
                                    d.max_seq_length, d.world_seed)
    if not d.dataset:
        raise ValueError(f"config data.dataset is empty: give the {cfg.task.name} task files (jaxvl.finetune.files), "
                         f"or use the tiny variant's synthetic-{cfg.task.name}")
    from jaxvl.finetune.files import task_files_split

    return task_files_split(cfg.task.name, d.dataset, split, d.max_seq_length, d.num_regions, d.vocab_file,
                            seed=d.seed)


# =================================================================================== model, members


def task_model(cfg: ConfigDict, split: TaskSplit) -> VLBertForVLTasks:
    """The preset with the task's head; a tiny model takes its vocabulary, features and label count from the data,
    a full-size one must match the data (an error names the key)."""
    features = split.examples[0]["features"]
    spec = TaskSpec(cfg.task.volta_task, cfg.task.type,
                    split.num_labels if cfg.model.tiny else cfg.task.num_labels, cfg.task.num_clf_layers)
    overrides = dict(vocab_size=split.tokenizer.vocab_size, v_feature_size=features.shape[-1],
                     max_position_embeddings=max(64, cfg.data.max_seq_length)) if cfg.model.tiny else {}
    base = get_model(cfg.model.name, cfg.model.tiny, dtype=cfg.model.dtype, scan_layers=cfg.model.scan_layers,
                     weight_grad_dtype=cfg.model.get("weight_grad_dtype", "float32"), **overrides)
    if not cfg.model.tiny:
        if base.cfg.v_feature_size != features.shape[-1]:
            raise ValueError(f"model {cfg.model.name}: v_feature_size {base.cfg.v_feature_size} vs data "
                             f"{features.shape[-1]}")
        if spec.type.startswith("VL-classifier") and split.num_labels != spec.num_labels:
            raise ValueError(f"task.num_labels={spec.num_labels} vs the data's answer vocabulary {split.num_labels}")
    return VLBertForVLTasks(base.cfg, (spec,))


def sweep_members(cfg: ConfigDict) -> list[dict[str, Any]]:
    """The ``sweep`` section's members with their seed and learning rate (the run's where left out); ValueError
    naming the member for another key or a duplicate name."""
    members, names = [], set()
    for i, entry in enumerate(cfg.sweep):
        entry = dict(entry)
        name = entry.pop("name", f"member{i}")
        unknown = set(entry) - {"seed", "learning_rate"}
        if unknown:
            raise ValueError(f"sweep member {i} ({name!r}): keys {sorted(unknown)}; a fine-tuning sweep varies "
                             "seed and learning_rate")
        if name in names:
            raise ValueError(f"sweep member {i}: duplicate name {name!r}")
        names.add(name)
        members.append(dict(name=name, seed=int(entry.get("seed", cfg.seed)),
                            learning_rate=float(entry.get("learning_rate", cfg.optimizer.learning_rate))))
    return members


# ========================================================================================= a stage


def finetune_stage(cfg: ConfigDict, workdir: str) -> Stage:
    """The pieces of the fine-tuning stage (module doc, sections 1-5) for ``runtime.stage.run_stage``."""
    compiler_options = FAST_COMPILE if cfg.fast_compile else None
    # ----------------------------------------------------------------------------------- data
    train, val = task_split(cfg, "train"), task_split(cfg, "val")
    steps = int(cfg.steps) or math.ceil(cfg.epochs * len(train) / cfg.data.batch_size)
    # -------------------------------------------------------------------- model and optimizer
    model = task_model(cfg, train)
    task = model.tasks[0]
    members = sweep_members(cfg) if cfg.sweep else None
    tx = make_optimizer(OptimizerConfig(total_steps=steps, **cfg.optimizer.to_dict()), injected_peak=bool(members))
    mesh = make_mesh(**cfg.mesh.to_dict())
    train_ds = train_dataset(train, cfg.data.batch_size, cfg.data.seed, num_threads=cfg.data.num_threads)

    def host_to_global(host):
        return to_global(host, mesh)

    example = example_batch(train_ds, host_to_global)
    # ------------------------------------------------------------------------------ the state
    if members:
        shardings = ft.sweep_state_shardings(model, tx, example, mesh)
        jitted = ft.jit_sweep_step(model, task, tx, mesh, shardings, batch_sharding(mesh), compiler_options)

        def fresh_state():
            return ft.init_sweep_state(model, tx, [m["seed"] for m in members], [m["learning_rate"] for m in members],
                                       example, mesh, compiler_options)
    else:
        shardings = ft.finetune_state_shardings(model, tx, example, mesh)
        jitted = ft.jit_finetune_step(model, task, tx, mesh, shardings, batch_sharding(mesh), compiler_options)

        def fresh_state():
            return ft.init_finetune_state(model, tx, jax.random.key(cfg.seed), example, mesh,
                                          compiler_options=compiler_options)

    def initialise(state):
        if not cfg.init.checkpoint:
            return state, "random encoder and head"
        params = jax.device_get(state.params)
        if not members:
            params, desc = initial_task_params(cfg.init.checkpoint, model, params)
        else:  # the same encoder (read once) in every member; each keeps its own draw of the heads it lacks
            member = [jax.tree.map(lambda x, k=k: x[k], params) for k in range(len(members))]
            parts, desc = pretrained_parts(cfg.init.checkpoint, model, member[0])
            params = jax.tree.map(lambda *xs: np.stack(xs), *[with_parts(p, parts) for p in member])
        return state.replace(params=jax.device_put(params, shardings.params)), desc

    # ------------------------------------------------------------------------------- the loop
    names = [m["name"] for m in members] if members else None
    loop = LoopConfig(steps=steps, checkpoint_every=cfg.checkpoint.every, eval_every=cfg.eval_every,
                      log_every=cfg.log_every, progress=cfg.progress, members=names)
    built: dict[str, TaskEvaluation] = {}

    def make_evaluate():
        built["val"] = TaskEvaluation(model, task, val, cfg.data.eval_batch_size, mesh, names, compiler_options)
        return lambda state: built["val"](state.params)

    def on_done(state):
        results = final_results(cfg, model, built["val"], state.params, mesh, names, compiler_options)
        log(f"{workdir}:\n{write_results(workdir, 'results', results, int(jax.device_get(state.step)))}")
        if members:
            for k, name in enumerate(names):
                save_member(workdir, name, member_state(state, k), {"member": name, **members[k]})

    return Stage(
        description=f"{cfg.task.name} ({task.name}, {task.type}) on {cfg.model.name}, {steps} steps of "
                    f"{cfg.data.batch_size}" + (f", {len(members)} members" if members else ""),
        mesh=mesh, train_data=train_ds, host_to_global=host_to_global, example=example, init_state=fresh_state,
        shardings=shardings, loop=loop, jitted_step=jitted, initialise=initialise, make_evaluate=make_evaluate,
        run_info=dict(config=cfg.to_dict(), task=dataclasses.asdict(task), train_examples=len(train),
                      val_examples=len(val), chance=val.chance),
        on_done=on_done, checkpoint_keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)


def final_results(cfg: ConfigDict, model: VLBertForVLTasks, evaluation: TaskEvaluation, params: Any, mesh,
                  names: list[str] | None, compiler_options: dict[str, Any] | None) -> dict[str, Any]:
    """``task_results`` of ``params`` (stacked for a sweep) on the val split; retrieval adds R@K."""
    task = model.tasks[0]
    _, scores = evaluation.scores(params)
    retrieval = None
    if task.type == "VL-logit" and cfg.data.dataset.startswith("synthetic-"):
        d = cfg.data
        items = retrieval_items(d.train_images, d.val_images, d.num_regions, d.max_seq_length, d.world_seed)
        per = [params] if not names else [jax.tree.map(lambda x, k=k: x[k], params) for k in range(len(names))]
        retrieval = retrieval_scores(model, task, per, items, mesh, compiler_options)
    return task_results(cfg.task.name, task, "val", evaluation.split.chance, scores, names, retrieval)


def finetune(cfg: ConfigDict, workdir: str) -> StageResult:
    """Runs the config's fine-tuning in ``workdir`` (module doc); resumes where a previous run stopped."""
    os.makedirs(workdir, exist_ok=True)
    _, result = run_stage(finetune_stage(cfg, workdir), workdir)
    return result


# ====================================================================================== evaluate


def evaluate(cfg: ConfigDict, workdir: str, export_volta: str | None = None) -> str:
    """``evaluation.md`` / ``.json`` in ``workdir`` for its final parameters (every member of a sweep workdir) or,
    when ``workdir`` has no checkpoint, for ``init.checkpoint`` (a fine-tuned jaxvl workdir or a VOLTA task
    ``.bin``). ``export_volta``: also write those parameters as a VOLTA ``BertForVLTasks`` state dict (``.bin``
    with torch, or ``.safetensors``; a single run only). Returns the markdown."""
    compiler_options = FAST_COMPILE if cfg.fast_compile else None
    val = task_split(cfg, "val")
    model = task_model(cfg, val)
    task, mesh = model.tasks[0], make_mesh(**cfg.mesh.to_dict())
    members_dir = os.path.join(workdir, "members")
    if os.path.isdir(members_dir):
        names = sorted(os.listdir(members_dir))
        trees = [restore_params(os.path.join(members_dir, n, "checkpoints")) for n in names]
        params, step = jax.tree.map(lambda *xs: np.stack(xs), *[t for t, _ in trees]), trees[0][1]
    elif os.path.isdir(os.path.join(workdir, "checkpoints")):
        names, (params, step) = None, restore_params(os.path.join(workdir, "checkpoints"))
    elif cfg.init.checkpoint:
        init = ft.boxed_init(model, make_optimizer(), val.batch([0]))
        shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.key(0)))
        template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes.params)
        (params, desc), names, step = initial_task_params(cfg.init.checkpoint, model, template), None, None
        log(f"evaluating {desc}")
    else:
        raise FileNotFoundError(f"{workdir}: no checkpoints (and no init.checkpoint to evaluate)")
    if export_volta:
        if names:
            raise ValueError(f"--export-volta: {workdir} is a sweep; export one member (--workdir "
                             f"{members_dir}/NAME)")
        from jaxvl.convert.common import save_state_dict
        from jaxvl.convert.volta_tasks import to_volta_tasks

        log(f"wrote {save_state_dict(to_volta_tasks(params, model.cfg, model.tasks), export_volta)} "
            "(VOLTA BertForVLTasks)")
    evaluation = TaskEvaluation(model, task, val, cfg.data.eval_batch_size, mesh, names, compiler_options)
    results = final_results(cfg, model, evaluation, params, mesh, names, compiler_options)
    os.makedirs(workdir, exist_ok=True)
    return write_results(workdir, "evaluation", results, step)


__all__ = ["evaluate", "final_results", "finetune", "finetune_stage", "sweep_members", "task_model", "task_split"]
