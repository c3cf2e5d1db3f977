"""Where a fine-tuning run starts: the encoder (and maybe the task head) of a pretrained or fine-tuned model.

``initial_task_params(path, model, params)`` returns ``params`` (a ``VLBertForVLTasks`` tree, host numpy) with the
parts ``path`` holds put in (``pretrained_parts`` reads them once, ``with_parts`` puts them into any tree):

- a jaxvl workdir (``<path>/checkpoints``), a checkpoint directory, or a sweep member (``<sweep>/members/<name>``):
  its latest parameters; a pretraining run gives ``bert`` (its pretraining heads are dropped), a fine-tuning run
  of the same task ``bert`` and the task's head;
- a VOLTA ``.bin`` / ``.safetensors``: ``BertForVLPreTraining`` (``bert.*`` and ``cls.*``: the encoder) or
  ``BertForVLTasks`` (``clfs_dict.*`` present: the encoder and this task's head, under the task's VOLTA name).

Every replaced part must have exactly the model's tree and shapes; otherwise a ValueError names the path and the
first parameter that differs (e.g. a tiny checkpoint for a ctrl model, or ``scan_layers`` differing).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxvl.models.volta.task_heads import VLBertForVLTasks
from jaxvl.runtime.checkpoint import restore_params

HEADS = "clfs_dict"


def _check_same_tree(path: str, what: str, got: Any, want: Any) -> None:
    got_leaves = dict(jax.tree_util.tree_leaves_with_path(got))
    want_leaves = dict(jax.tree_util.tree_leaves_with_path(want))
    for key in sorted(set(got_leaves) | set(want_leaves), key=jax.tree_util.keystr):
        name = f"{what}{jax.tree_util.keystr(key)}"
        if key not in got_leaves:
            raise ValueError(f"{path}: no parameter {name} (the checkpoint is of another model or layout)")
        if key not in want_leaves:
            raise ValueError(f"{path}: parameter {name} is not in this model (another model or layout)")
        if np.shape(got_leaves[key]) != np.shape(want_leaves[key]):
            raise ValueError(f"{path}: parameter {name} has shape {np.shape(got_leaves[key])}, this model "
                             f"{np.shape(want_leaves[key])} (another size: tiny vs ctrl, vocabulary, scan_layers?)")


def _checkpoint_directory(path: str) -> str:
    if os.path.basename(os.path.normpath(path)) == "checkpoints":
        return path
    directory = os.path.join(path, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{path}: neither a file (a VOLTA .bin) nor a jaxvl workdir / sweep member "
                                f"(no {directory})")
    return directory


def pretrained_parts(path: str, model: VLBertForVLTasks, params: Mapping[str, Any]) -> tuple[dict, str]:
    """What ``path`` holds for ``model`` (module doc), read once: ``{"bert": tree}`` and, where it has them, this
    model's heads ``{"clfs_dict": {task name: tree}}``, each checked against ``params``' tree and shapes; and a
    description. ``with_parts`` puts them into any fresh parameter tree (e.g. each member of a sweep)."""
    if os.path.isfile(path):
        from jaxvl.convert.common import load_state_dict

        state = load_state_dict(path, prefix_strip="module.")
        if any(k.startswith(f"{HEADS}.") for k in state):
            from jaxvl.convert.volta_tasks import from_volta_tasks

            loaded = from_volta_tasks(state, model.cfg, model.tasks, model.clf_hidden_size, source=path)
            _check_same_tree(path, "", loaded, params)
            return {"bert": loaded["bert"], HEADS: loaded[HEADS]}, f"VOLTA task checkpoint {path} (encoder and heads)"
        from jaxvl.convert.volta import from_volta

        bert = from_volta(state, model.cfg, source=path)["bert"]
        _check_same_tree(path, "bert", bert, params["bert"])
        return {"bert": bert}, f"VOLTA pretrained encoder {path} (heads random)"
    directory = _checkpoint_directory(path)
    restored, step = restore_params(directory)
    if "bert" not in restored:
        raise ValueError(f"{directory}: its parameters have no 'bert' encoder (not a V&L BERT run)")
    _check_same_tree(directory, "bert", restored["bert"], params["bert"])
    heads = {name: tree for name, tree in restored.get(HEADS, {}).items() if name in params[HEADS]}
    for name, tree in heads.items():
        _check_same_tree(directory, f"{HEADS}.{name}", tree, params[HEADS][name])
    what = "encoder and task head" if heads else "encoder (heads random)"
    return {"bert": restored["bert"], **({HEADS: heads} if heads else {})}, f"{what} of {directory} step {step}"


def with_parts(params: Mapping[str, Any], parts: Mapping[str, Any]) -> dict:
    """``params`` with ``pretrained_parts``' encoder and heads put in (the other heads kept)."""
    out = {**params, "bert": parts["bert"]}
    if HEADS in parts:
        out[HEADS] = {**params[HEADS], **parts[HEADS]}
    return out


def initial_task_params(path: str, model: VLBertForVLTasks, params: Mapping[str, Any]) -> tuple[dict, str]:
    """``params`` with what ``path`` holds put in (module doc), and a description of it."""
    parts, desc = pretrained_parts(path, model, params)
    return with_parts(params, parts), desc


__all__ = ["initial_task_params", "pretrained_parts", "with_parts"]
