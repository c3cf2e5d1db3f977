"""VOLTA's downstream task heads (``BertForVLTasks``) on jaxvl's encoder: one model, any set of tasks.

``VLBertForVLTasks(cfg, tasks)`` is VOLTA's ``volta/encoders.py`` ``BertForVLTasks``: the encoder and poolers
(``VLBertModel``, parameters under ``bert``, the same tree as pretraining's) and one classifier per task under
``clfs_dict/<task name>`` (VOLTA's ``clfs_dict`` keys: ``"TASK1"`` ...). A task is a ``TaskSpec``; VOLTA's
``type`` picks the head (``BertForVLTasks.__init__``):

- ``VL-classifier``, ``VL-classifier-GQA``: ``SimpleClassifier(pooler, clf_hidden, num_labels)`` on the fused
  pooled vector -> [B, num_labels] (VQA 3129, GQA 1842);
- ``VL-binary-classifier``: ``SimpleClassifier(2 pooler, clf_hidden, 2)`` on two rows' fused pooled vectors,
  concatenated -> [B / 2, 2] (NLVR2: rows 2i and 2i+1 are one example's two images);
- ``VL-tri-classifier``: ``Linear(pooler, 3)`` on the fused pooled vector -> [B, 3] (SNLI-VE);
- ``VL-logit``: ``Linear(pooler, 1)`` on the fused pooled vector -> [B, 1] (retrieval);
- ``V-logit``: ``Linear(v_hidden, 1)`` on every row of the vision stream (with ``num_clf_layers: 2``: Linear,
  GeLU, Dropout(``v_attention_probs_dropout_prob``), Linear) -> [B, Lv, 1] (RefCOCO/+/g), padded regions
  + (-10000).

``SimpleClassifier`` (``volta/encoders.py``) is Linear -> GeLU (erf) -> LayerNorm(``layer_norm_eps``) -> Linear.
The fused pooled vector is VOLTA's ``fusion_method`` of the two poolers (``mul``: ``pooled_t * pooled_v``, the
ctrl configs' choice; ``sum``; ``text``: ``pooled_t``) through ``Dropout(0.1)``; ``V-logit`` heads read the
last vision stream through the same dropout, and add ``(1 - region_mask) * -10000`` to the logits (VOLTA's
``forward``). Sizes at VOLTA's ctrl configs (``config/ctrl_*.json``): pooler_size 1024, clf_hidden_size 1536;
``VLConfig`` does not model ``clf_hidden_size`` (its VOLTA reader accepts and drops it), so it is this
module's field, default 1536. Heads start as VOLTA's do: ``BertForVLTasks`` re-initialises every Linear it
holds (``SimpleClassifier``'s own xavier init included) with normal(0, ``initializer_range``), zero bias.
Task types, label counts and ids: ``config_tasks/all_trainval_tasks.yml`` (``VOLTA_TASKS``).

Deliberate differences from VOLTA: ``fusion_method: vl-bert_vqa`` (``VLBertTextPooler``) is not modelled
(``VLConfig`` refuses it; no ctrl config uses it); ``V-logit-mc`` (Visual7W, GuessWhatPointing) and VOLTA's
``embed_clf`` (answer-embedding init of the VQA decoder; unused by the ctrl configs) are not offered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxvl.models.layers import activation, dense, dropout, layer_norm
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import VLBertModel, VLOutput

# VOLTA's task types that read the fused pooled vector, and all types offered here.
POOLED_TYPES = ("VL-classifier", "VL-classifier-GQA", "VL-binary-classifier", "VL-tri-classifier", "VL-logit")
TASK_TYPES = POOLED_TYPES + ("V-logit",)
CLF_HIDDEN_SIZE = 1536  # VOLTA's ctrl configs' clf_hidden_size
TASK_DROPOUT = 0.1  # BertForVLTasks(dropout_prob=0.1): on the fused pooled vector and the vision stream
REGION_PAD_LOGIT = -10000.0  # added to a padded region's V-logit


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One VOLTA task: ``name`` is its ``clfs_dict`` key (VOLTA's ``"TASK<id>"``), ``type`` one of
    ``TASK_TYPES``; ``num_labels`` is read by the ``VL-classifier`` types only, ``num_clf_layers`` (1 or 2) by
    ``V-logit`` only."""

    name: str
    type: str
    num_labels: int = 1
    num_clf_layers: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "." in self.name or "/" in self.name:
            raise ValueError(f"task name {self.name!r}: expected a non-empty string without '.' or '/'")
        if self.type not in TASK_TYPES:
            raise ValueError(f"task {self.name}: type={self.type!r}; expected one of {TASK_TYPES}")
        if not isinstance(self.num_labels, int) or isinstance(self.num_labels, bool) or self.num_labels < 1:
            raise ValueError(f"task {self.name}: num_labels={self.num_labels!r}; expected an int >= 1")
        if self.num_clf_layers not in (1, 2):
            raise ValueError(f"task {self.name}: num_clf_layers={self.num_clf_layers!r}; expected 1 or 2")

    @property
    def num_outputs(self) -> int:
        """Width of the head's last layer: ``num_labels``, 2, 3 or 1."""
        return {"VL-binary-classifier": 2, "VL-tri-classifier": 3, "VL-logit": 1, "V-logit": 1}.get(
            self.type, self.num_labels)


# The tasks of issue 15 as ``config_tasks/all_trainval_tasks.yml`` defines them (ctrl_trainval_tasks.yml: 1, 8, 10, 12).
VOLTA_TASKS: dict[str, TaskSpec] = {
    "vqa": TaskSpec("TASK1", "VL-classifier", 3129),
    "retrieval_coco": TaskSpec("TASK7", "VL-logit"),
    "retrieval_flickr30k": TaskSpec("TASK8", "VL-logit"),
    "refcoco": TaskSpec("TASK9", "V-logit"),
    "refcoco+": TaskSpec("TASK10", "V-logit"),
    "refcocog": TaskSpec("TASK11", "V-logit"),
    "nlvr2": TaskSpec("TASK12", "VL-binary-classifier", 2),
    "snli-ve": TaskSpec("TASK13", "VL-tri-classifier", 3),
    "gqa": TaskSpec("TASK15", "VL-classifier-GQA", 1842),
}


def task_spec_from_volta(name: str, entry: Mapping[str, Any]) -> TaskSpec:
    """One entry of a VOLTA ``config_tasks/*.yml`` (``name`` its key, e.g. ``"TASK1"``) as a ``TaskSpec``."""
    if "type" not in entry:
        raise ValueError(f"task {name}: no 'type' key")
    return TaskSpec(name, entry["type"], entry.get("num_labels", 1), entry.get("num_clf_layers", 1))


def check_tasks(cfg: VLConfig, tasks: tuple[TaskSpec, ...]) -> None:
    """Raises ValueError for duplicate task names or pooled-vector heads on a model without a fused pooled
    vector (``fusion_method: none``)."""
    names = [t.name for t in tasks]
    if not tasks or len(set(names)) != len(names):
        raise ValueError(f"tasks {names}: expected one or more, each name once")
    if cfg.fusion_method == "none":
        pooled = [t.name for t in tasks if t.type in POOLED_TYPES]
        if pooled:
            raise ValueError(f"tasks {pooled} read the fused pooled vector; fusion_method='none' has none")


class SimpleClassifier(nn.Module):
    """VOLTA's ``SimpleClassifier``: [B, in] -> Linear ``hidden`` -> GeLU -> LayerNorm -> Linear ``out`` ->
    [B, out] (float32); parameters ``hidden``, ``norm``, ``logits``."""

    hidden: int
    out: int
    eps: float
    stddev: float
    dtype: str = "float32"
    weight_grad_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, stddev=self.stddev, weight_grad_dtype=self.weight_grad_dtype)
        h = dense(self.hidden, ("pooler", "mlp"), name="hidden", **kw)(x)
        h = layer_norm(self.eps, axis_name="mlp", name="norm")(activation("gelu")(h))
        return dense(self.out, ("mlp", "classes"), name="logits", **kw)(h).astype(jnp.float32)


class LinearHead(nn.Module):
    """VOLTA's ``nn.Linear(pooler_size, out)`` heads (``VL-tri-classifier``, ``VL-logit``): [B, pooler] -> [B, out]
    (float32); parameter ``logits``."""

    out: int
    stddev: float
    dtype: str = "float32"
    weight_grad_dtype: str = "float32"

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        return dense(self.out, ("pooler", "classes"), dtype=self.dtype, name="logits", stddev=self.stddev,
                     weight_grad_dtype=self.weight_grad_dtype)(pooled).astype(jnp.float32)


class RegionLogit(nn.Module):
    """VOLTA's ``V-logit`` head: [B, Lv, v_hidden] -> [B, Lv, 1] (float32), before the padding term; one
    Linear (``logits``), or with ``num_clf_layers=2`` Linear (``hidden``) -> GeLU -> Dropout -> Linear."""

    cfg: VLConfig
    num_clf_layers: int = 1

    @nn.compact
    def __call__(self, vision: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.cfg
        kw = dict(dtype=c.dtype, stddev=c.initializer_range, weight_grad_dtype=c.weight_grad_dtype)
        if self.num_clf_layers == 2:
            vision = dense(c.v_hidden_size, ("embed", "embed"), name="hidden", **kw)(vision)
            vision = dropout(self, activation("gelu")(vision), c.v_attention_probs_dropout_prob, deterministic)
        return dense(1, ("embed", "classes"), name="logits", **kw)(vision).astype(jnp.float32)


class TaskHeads(nn.Module):
    """The classifiers of ``tasks``, each under its task name. Called with ``task=None`` (as ``init`` is) every
    head runs and a dict ``{name: logits}`` comes back; with a task name, that head's logits."""

    cfg: VLConfig
    tasks: tuple[TaskSpec, ...]
    clf_hidden_size: int = CLF_HIDDEN_SIZE

    @nn.compact
    def __call__(self, pooled: jax.Array | None, vision: jax.Array, region_mask: jax.Array, task: str | None = None,
                 deterministic: bool = True) -> jax.Array | dict[str, jax.Array]:
        """``pooled`` [B, pooler_size] (fused, after dropout), ``vision`` [B, Lv, v_hidden] (after dropout),
        ``region_mask`` [B, Lv] (1 = real). Logits as in the module docstring."""
        c = self.cfg
        out = {}
        for t in self.tasks:
            if task is not None and t.name != task:
                continue
            std = c.initializer_range
            if t.type == "V-logit":
                logits = RegionLogit(c, t.num_clf_layers, name=t.name)(vision, deterministic)
                out[t.name] = logits + ((1.0 - region_mask.astype(jnp.float32)) * REGION_PAD_LOGIT)[..., None]
            elif t.type == "VL-binary-classifier":
                pairs = pooled.reshape(pooled.shape[0] // 2, 2 * pooled.shape[1])
                out[t.name] = SimpleClassifier(self.clf_hidden_size, 2, c.layer_norm_eps, std, c.dtype,
                                               c.weight_grad_dtype, name=t.name)(pairs)
            elif t.type in ("VL-classifier", "VL-classifier-GQA"):
                out[t.name] = SimpleClassifier(self.clf_hidden_size, t.num_labels, c.layer_norm_eps, std, c.dtype,
                                               c.weight_grad_dtype, name=t.name)(pooled)
            else:  # VL-tri-classifier, VL-logit: one Linear
                out[t.name] = LinearHead(t.num_outputs, std, c.dtype, c.weight_grad_dtype, name=t.name)(pooled)
        return out if task is None else out[task]


class VLBertForVLTasks(nn.Module):
    """VOLTA's ``BertForVLTasks``: ``bert`` (``VLBertModel``) and ``clfs_dict`` (``TaskHeads``).

    Inputs as ``VLBertForPreTraining`` (``jaxvl.models.volta.model``): ``input_ids`` [B, Lt], ``features``
    [B, Lv, v_feature_size], ``locations`` [B, Lv, num_locs], optional ``token_type_ids``, ``text_mask``,
    ``region_mask``. ``task``: a task name for that head's logits, None for all of them (a dict). NLVR2-type
    heads need B even: rows 2i and 2i+1 hold one example's two images with its sentence (VOLTA's ``nlvr``
    batch layout). Dropout draws from the ``dropout`` rng stream when ``deterministic`` is False.
    """

    cfg: VLConfig
    tasks: tuple[TaskSpec, ...]
    clf_hidden_size: int = CLF_HIDDEN_SIZE
    dropout_prob: float = TASK_DROPOUT

    def setup(self):
        check_tasks(self.cfg, self.tasks)
        self.bert = VLBertModel(self.cfg)
        self.clfs_dict = TaskHeads(self.cfg, self.tasks, self.clf_hidden_size)

    def __call__(self, input_ids: jax.Array, features: jax.Array, locations: jax.Array,
                 token_type_ids: jax.Array | None = None, text_mask: jax.Array | None = None,
                 region_mask: jax.Array | None = None, task: str | None = None,
                 deterministic: bool = True) -> jax.Array | dict[str, jax.Array]:
        self.check_call(task, input_ids.shape[0])
        region_mask = jnp.ones(features.shape[:2], jnp.int32) if region_mask is None else region_mask
        out = self.bert(input_ids, features, locations, token_type_ids, text_mask, region_mask, deterministic)
        return self.heads(out, region_mask, task, deterministic)

    def heads(self, out: VLOutput, region_mask: jax.Array, task: str | None = None,
              deterministic: bool = True) -> jax.Array | dict[str, jax.Array]:
        """The task logits from ``VLBertModel``'s output (its final streams and poolers)."""
        fused = {"mul": lambda: out.pooled_text * out.pooled_vision, "sum": lambda: out.pooled_text + out.pooled_vision,
                 "text": lambda: out.pooled_text, "none": lambda: None}[self.cfg.fusion_method]()
        pooled = None if fused is None else dropout(self, fused, self.dropout_prob, deterministic)
        vision = out.vision
        if any(t.type == "V-logit" and task in (None, t.name) for t in self.tasks):
            vision = dropout(self, vision, self.dropout_prob, deterministic)
        return self.clfs_dict(pooled, vision, region_mask, task, deterministic)

    def check_call(self, task: str | None, batch: int) -> None:
        """ValueError for a task name this model lacks, or an odd batch for an NLVR2-type head."""
        names = [t.name for t in self.tasks]
        if task is not None and task not in names:
            raise ValueError(f"task={task!r}: this model's tasks are {names}")
        pairs = [t.name for t in self.tasks if t.type == "VL-binary-classifier" and task in (None, t.name)]
        if pairs and batch % 2:
            raise ValueError(f"task {pairs[0]} (VL-binary-classifier) pairs rows 2i, 2i+1: batch {batch} is odd")

    # Dual-stream models, unimodal prefix apart (``VLBertForPreTraining`` has the same three): a caller scoring
    # many (text, image) pairings, as retrieval does, computes each stream's prefix once.

    def text_prefix(self, input_ids: jax.Array, token_type_ids: jax.Array | None = None,
                    text_mask: jax.Array | None = None) -> jax.Array:
        """[B, Lt] ids -> the text stream [B, Lt, hidden] after ``cfg.unimodal_prefix`` sub-layers (deterministic)."""
        self.check_prefix()
        token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        text_mask = jnp.ones(input_ids.shape, jnp.int32) if text_mask is None else text_mask
        return self.bert.text_prefix(input_ids, token_type_ids, text_mask)

    def vision_prefix(self, features: jax.Array, locations: jax.Array, region_mask: jax.Array | None = None
                      ) -> jax.Array:
        """[B, Lv, D] features -> the vision stream [B, Lv, v_hidden] after the unimodal prefix (deterministic)."""
        self.check_prefix()
        region_mask = jnp.ones(features.shape[:2], jnp.int32) if region_mask is None else region_mask
        return self.bert.vision_prefix(features, locations, region_mask)

    def from_prefix(self, text: jax.Array, vision: jax.Array, text_mask: jax.Array | None = None,
                    region_mask: jax.Array | None = None, task: str | None = None) -> jax.Array | dict[str, jax.Array]:
        """The rest of the encoder, the poolers and the task heads from the two prefix streams (deterministic)."""
        self.check_prefix()
        self.check_call(task, text.shape[0])
        text_mask = jnp.ones(text.shape[:2], jnp.int32) if text_mask is None else text_mask
        region_mask = jnp.ones(vision.shape[:2], jnp.int32) if region_mask is None else region_mask
        return self.heads(self.bert.from_prefix(text, vision, text_mask, region_mask), region_mask, task)

    def check_prefix(self) -> None:
        """ValueError unless the model has a unimodal prefix (dual-stream embeddings)."""
        if self.cfg.unimodal_prefix == 0:
            raise ValueError("this model has no unimodal prefix (cfg.unimodal_prefix == 0: single-stream embeddings "
                             "mix the two inputs); run the whole model")

    def dummy_inputs(self, batch: int = 2, text_len: int = 8, regions: int = 5) -> dict[str, jax.Array]:
        """Zero-filled inputs of the right shapes and dtypes, for ``init`` (all heads) and shape checks."""
        c = self.cfg
        return dict(input_ids=jnp.zeros((batch, text_len), jnp.int32),
                    features=jnp.zeros((batch, regions, c.v_feature_size), jnp.float32),
                    locations=jnp.zeros((batch, regions, c.num_locs), jnp.float32))
