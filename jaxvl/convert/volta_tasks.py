"""VOLTA ``BertForVLTasks`` state dicts (task heads included) <-> ``VLBertForVLTasks`` parameter trees.

VOLTA's ``BertForVLTasks`` (``volta/encoders.py``) holds ``bert`` (``BertModel``: embeddings, encoder, poolers)
and ``clfs_dict`` (an ``nn.ModuleDict`` keyed by task name, in the order of ``task_ids``); its ``state_dict()``
is the ``bert.*`` tensors of ``BertForVLPreTraining``'s, in the same order and with the same tied aliases
(``cls.*`` is absent), then per task:

- ``VL-classifier``, ``VL-classifier-GQA``, ``VL-binary-classifier`` (``SimpleClassifier.logit_fc``, a
  ``Sequential``): ``clfs_dict.<T>.logit_fc.0`` (Linear, -> ``hidden``), ``.2`` (LayerNorm, -> ``norm``),
  ``.3`` (Linear, -> ``logits``); entry 1 is the parameter-less GeLU;
- ``VL-tri-classifier``, ``VL-logit``, one-layer ``V-logit`` (a bare ``nn.Linear``): ``clfs_dict.<T>.weight``
  / ``.bias`` (-> ``logits``);
- two-layer ``V-logit`` (``Sequential(Linear, GeLU, Dropout, Linear)``): ``clfs_dict.<T>.0`` (-> ``hidden``),
  ``clfs_dict.<T>.3`` (-> ``logits``).

The encoder part goes through ``jaxvl.convert.volta`` (``from_volta`` / ``to_volta``: layouts, tied aliases,
padding, UNITER's derivable alias), so a round trip is bitwise exact here too. jaxvl's side is the tree of
``VLBertForVLTasks(cfg, tasks, clf_hidden_size).init(...)["params"]``: ``bert`` and ``clfs_dict/<T>``,
unscanned (``jaxvl.models.scan_params`` / ``unscan_params`` for the scanned one). A pretraining checkpoint
(``BertForVLPreTraining``, with ``cls.*``) is not a task checkpoint: fine-tuning starts from it as VOLTA's
``from_pretrained`` does, ``from_volta(sd, cfg)["bert"]`` with fresh heads; here its ``cls.*`` keys are
reported as unexpected.

Checked against VOLTA at 62f78cd (``scripts/make_volta_task_golden.py``): names, order, shapes and values of
``BertForVLTasks.state_dict()`` and its logits for every head type on the five presets.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax.linen import meta

from jaxvl.convert.common import (
    Params,
    Path,
    Shape,
    StateDict,
    StateDictError,
    check_state_dict,
    kernel_to_linear,
    linear_to_kernel,
    load_state_dict,
)
from jaxvl.convert.volta import MODULE_PREFIX, from_volta, to_volta, volta_state_dict_shapes
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import VLBertForPreTraining
from jaxvl.models.volta.task_heads import CLF_HIDDEN_SIZE, TaskSpec, check_tasks

HEADS_PREFIX = "clfs_dict."
PRETRAINING_HEADS_PREFIX = "cls."  # BertForVLPreTraining's heads: not part of a task model


@dataclasses.dataclass(frozen=True)
class HeadTensor:
    """One task-head tensor: VOLTA name and shape, jaxvl path and shape; ``linear`` marks a torch
    ``Linear.weight`` ([out, in] <-> kernel [in, out]), anything else is copied as it is."""

    name: str
    shape: Shape
    path: Path
    jax_shape: Shape
    linear: bool = False

    def to_jax(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return np.ascontiguousarray(linear_to_kernel(x) if self.linear else x)

    def to_volta(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.shape != self.jax_shape:
            raise ValueError(f"{'/'.join(self.path)}: shape {x.shape}, expected {self.jax_shape}")
        return np.ascontiguousarray(kernel_to_linear(x) if self.linear else x)


def _linear(name: str, path: Path, n_in: int, n_out: int) -> list[HeadTensor]:
    return [HeadTensor(f"{name}.weight", (n_out, n_in), path + ("kernel",), (n_in, n_out), linear=True),
            HeadTensor(f"{name}.bias", (n_out,), path + ("bias",), (n_out,))]


def _layer_norm(name: str, path: Path, size: int) -> list[HeadTensor]:
    return [HeadTensor(f"{name}.weight", (size,), path + ("scale",), (size,)),
            HeadTensor(f"{name}.bias", (size,), path + ("bias",), (size,))]


def head_tensors(cfg: VLConfig, tasks: tuple[TaskSpec, ...], clf_hidden_size: int = CLF_HIDDEN_SIZE
                 ) -> list[HeadTensor]:
    """Every ``clfs_dict.*`` tensor of VOLTA's ``BertForVLTasks(cfg, tasks)``, in its ``state_dict()`` order."""
    check_tasks(cfg, tasks)
    out: list[HeadTensor] = []
    for t in tasks:
        name, path = f"{HEADS_PREFIX}{t.name}", ("clfs_dict", t.name)
        if t.type in ("VL-classifier", "VL-classifier-GQA", "VL-binary-classifier"):
            n_in = 2 * cfg.pooler_size if t.type == "VL-binary-classifier" else cfg.pooler_size
            out += _linear(f"{name}.logit_fc.0", path + ("hidden",), n_in, clf_hidden_size)
            out += _layer_norm(f"{name}.logit_fc.2", path + ("norm",), clf_hidden_size)
            out += _linear(f"{name}.logit_fc.3", path + ("logits",), clf_hidden_size, t.num_outputs)
        elif t.type == "V-logit" and t.num_clf_layers == 2:
            out += _linear(f"{name}.0", path + ("hidden",), cfg.v_hidden_size, cfg.v_hidden_size)
            out += _linear(f"{name}.3", path + ("logits",), cfg.v_hidden_size, 1)
        else:
            n_in = cfg.v_hidden_size if t.type == "V-logit" else cfg.pooler_size
            out += _linear(name, path + ("logits",), n_in, t.num_outputs)
    return out


def _encoder_shapes(cfg: VLConfig) -> dict[str, Shape]:
    """The ``bert.*`` part of VOLTA's pretraining state dict: names, order, shapes (aliases included)."""
    return {k: s for k, s in volta_state_dict_shapes(cfg).items() if not k.startswith(PRETRAINING_HEADS_PREFIX)}


def volta_task_state_dict_shapes(cfg: VLConfig, tasks: tuple[TaskSpec, ...],
                                 clf_hidden_size: int = CLF_HIDDEN_SIZE) -> dict[str, Shape]:
    """Name -> shape of every tensor of VOLTA's ``BertForVLTasks(config, task_cfg, task_ids).state_dict()``, in
    its order, every alias of a tied tensor included (torch layouts)."""
    return {**_encoder_shapes(cfg), **{t.name: t.shape for t in head_tensors(cfg, tasks, clf_hidden_size)}}


def _set(tree: Params, path: Path, value: np.ndarray) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _get(tree: Mapping, path: Path) -> Any:
    node = tree
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(f"parameter {'/'.join(path[:i + 1])} is missing from the jaxvl tree")
        node = node[key]
    return node


def from_volta_tasks(state_dict: Mapping[str, Any], cfg: VLConfig, tasks: tuple[TaskSpec, ...],
                     clf_hidden_size: int = CLF_HIDDEN_SIZE, source: str = "VOLTA task state dict") -> Params:
    """VOLTA ``BertForVLTasks`` state dict -> ``VLBertForVLTasks`` parameter tree (``bert``, ``clfs_dict``).

    ``state_dict`` maps VOLTA names (optionally prefixed ``module.``) to torch tensors or numpy arrays. Raises
    ``StateDictError`` (a ValueError) listing every missing, unexpected and mis-shaped tensor, of the heads and
    of the encoder, or naming both keys of a tied pair that differ.
    """
    state = {k.removeprefix(MODULE_PREFIX): v for k, v in state_dict.items()}
    heads = head_tensors(cfg, tasks, clf_hidden_size)
    head_part = {k: v for k, v in state.items() if k.startswith((HEADS_PREFIX, PRETRAINING_HEADS_PREFIX))}
    problems = []
    try:
        check_state_dict(head_part, {t.name: t.shape for t in heads}, source=f"{source} (task heads)")
    except StateDictError as e:
        problems.append(str(e))
    try:
        encoder = _encoder_from_volta({k: v for k, v in state.items() if k not in head_part}, cfg,
                                      f"{source} (encoder)")
    except StateDictError as e:
        problems.append(str(e))
    if problems:
        raise StateDictError("\n".join(problems))
    params: Params = {"bert": encoder}
    for t in heads:
        value = state[t.name]
        _set(params, t.path, t.to_jax(value.detach().cpu().numpy() if hasattr(value, "detach") else value))
    return params


def _encoder_from_volta(state: dict[str, Any], cfg: VLConfig, source: str) -> Params:
    """``bert.*`` tensors -> the ``bert`` tree, through ``from_volta``: the pretraining heads it also expects
    are stand-ins (zeros; the tied MLM decoder is the given word table, so its alias check passes)."""
    full = volta_state_dict_shapes(cfg)
    stand_ins = {k: np.zeros(s, np.float32) for k, s in full.items() if k.startswith(PRETRAINING_HEADS_PREFIX)}
    words = state.get("bert.embeddings.word_embeddings.weight")
    if words is not None and tuple(np.shape(words)) == full["cls.predictions.decoder.weight"]:
        stand_ins["cls.predictions.decoder.weight"] = words
    return from_volta({**state, **stand_ins}, cfg, source=source)["bert"]


def to_volta_tasks(params: Mapping[str, Any], cfg: VLConfig, tasks: tuple[TaskSpec, ...],
                   clf_hidden_size: int = CLF_HIDDEN_SIZE) -> StateDict:
    """``VLBertForVLTasks`` parameter tree (unscanned, boxed or unboxed) -> VOLTA ``BertForVLTasks`` state dict
    of numpy arrays, in VOLTA's order with every tied alias written."""
    params = meta.unbox(params)
    if "params" in params and "bert" not in params:
        params = params["params"]
    heads = head_tensors(cfg, tasks, clf_hidden_size)
    stub = _pretraining_heads_stub(cfg)
    full = to_volta({**stub, "bert": _get(params, ("bert",))}, cfg)
    encoder = {k: v for k, v in full.items() if not k.startswith(PRETRAINING_HEADS_PREFIX)}
    return {**encoder, **{t.name: t.to_volta(np.asarray(_get(params, t.path))) for t in heads}}


def _pretraining_heads_stub(cfg: VLConfig) -> Params:
    """Zeros shaped like ``VLBertForPreTraining``'s head parameters (everything but ``bert``), for ``to_volta``,
    whose ``cls.*`` output is then dropped. Shapes come from ``jax.eval_shape`` (nothing is run)."""
    model = VLBertForPreTraining(cfg.replace(scan_layers=False))
    shapes = meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), **model.dummy_inputs(1, 2, 2))["params"])
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                  {k: v for k, v in shapes.items() if k != "bert"})


def load_volta_task_checkpoint(path: str | os.PathLike, cfg: VLConfig, tasks: tuple[TaskSpec, ...],
                               clf_hidden_size: int = CLF_HIDDEN_SIZE) -> Params:
    """Reads a VOLTA task checkpoint (``pytorch_model_*.bin``, weights-only, or ``.safetensors``; ``module.``
    stripped) and converts it with ``from_volta_tasks``."""
    return from_volta_tasks(load_state_dict(path, prefix_strip=MODULE_PREFIX), cfg, tasks, clf_hidden_size,
                            source=os.fspath(path))


__all__ = ["HeadTensor", "from_volta_tasks", "head_tensors", "load_volta_task_checkpoint", "to_volta_tasks",
           "volta_task_state_dict_shapes"]
