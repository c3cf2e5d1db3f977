"""What ``jaxvl compile`` compiles: a config's real train step with abstract, sharded inputs.

``pretrain_target(cfg, mesh, batch_size)`` builds the pretraining step exactly as ``jaxvl pretrain`` does
(model from the config at full size, ``make_optimizer``, ``jit_train_step`` with the state's and the batch's
shardings, the state donated) but with ``jax.ShapeDtypeStruct`` inputs carrying their ``NamedSharding``:
nothing is allocated, no data is read, and the mesh may be made of compile-only TPU devices.
``pretrain_batch_spec`` gives the batch the data pipeline yields (``jaxvl.data.grain.PretrainTransform``)
at VOLTA's sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxvl.models import get_model
from jaxvl.models.volta.config import VLConfig
from jaxvl.runtime.sharding import batch_sharding

VOLTA_TEXT_LEN = 38  # VOLTA's max_seq_length in pretraining
VOLTA_REGIONS = 37  # 36 detector boxes + the global [IMG] row


@dataclass
class Target:
    """A step ready to lower: ``jitted(*args)`` with abstract ``args``; ``model_flops`` (analytic FLOPs of one
    call, summed over devices; MaxText's convention: matmuls only), ``params`` (unpadded parameter count)
    and a one-line ``description``."""

    jitted: Any
    args: tuple
    model_flops: float
    params: int
    description: str


def pretrain_batch_spec(cfg: VLConfig, batch_size: int, text_len: int = VOLTA_TEXT_LEN,
                        regions: int = VOLTA_REGIONS) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a global pretraining batch (``PretrainTransform``'s fields without ``num_boxes``,
    which the trainer drops): text [B, T] int32, regions [B, L, ...] with L = ``regions`` (the ``[IMG]`` row
    included), detector classes over ``cfg.num_object_classes + 1``."""
    b, t, r = batch_size, text_len, regions
    i32, f32 = jnp.int32, jnp.float32
    shapes = dict(input_ids=((b, t), i32), text_mask=((b, t), i32), token_type_ids=((b, t), i32),
                  features=((b, r, cfg.v_feature_size), f32), locations=((b, r, cfg.num_locs), f32),
                  region_mask=((b, r), i32), boxes=((b, r, 4), f32), region_target_mask=((b, r), i32),
                  cls_prob=((b, r, cfg.num_object_classes + 1), f32), objects_id=((b, r), i32),
                  objects_conf=((b, r), f32))
    return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}


def abstract(tree: Any, shardings: Any) -> Any:
    """``tree`` of arrays or ``ShapeDtypeStruct`` -> ``ShapeDtypeStruct`` leaves carrying ``shardings``."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def pretrain_target(cfg: ConfigDict, mesh: Mesh, batch_size: int | None = None, text_len: int = VOLTA_TEXT_LEN,
                    regions: int = VOLTA_REGIONS, model_overrides: dict[str, Any] | None = None) -> Target:
    """The pretraining step of ``cfg`` (a ``jaxvl/configs/pretrain.py`` config) on ``mesh`` for a global batch of
    ``batch_size`` (default ``cfg.data.batch_size``). The model is built at the preset's full size (the
    config's ``model.tiny`` keeps the test sizes), with its dtype, scan, padding, remat and weight-gradient settings;
    ``model_overrides``: further ``VLConfig`` fields (e.g. a wider, deeper plan: ``scaled_single_stream``)."""
    from jaxvl.pretrain.flops import train_flops
    from jaxvl.pretrain.loss import ObjectiveConfig
    from jaxvl.pretrain.step import jit_train_step, state_shardings
    from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer

    batch_size = batch_size or cfg.data.batch_size
    model_kwargs: dict[str, Any] = dict(dtype=cfg.model.dtype, scan_layers=cfg.model.scan_layers,
                                        visual_target_weights=dict(cfg.model.visual_target_weights),
                                        pad_to_multiple_of=cfg.model.get("pad_to_multiple_of", 1),
                                        weight_grad_dtype=cfg.model.get("weight_grad_dtype", "float32"))
    if cfg.model.get("remat", "none") != "none":
        model_kwargs["remat"] = cfg.model.remat
    model = get_model(cfg.model.name, cfg.model.tiny, **{**model_kwargs, **(model_overrides or {})})
    if cfg.model.tiny:
        text_len, regions = min(text_len, cfg.data.max_seq_length), min(regions, 6)
    tokens = {"mask_id": 103, "cls_id": 101, "sep_id": 102}  # bert-base-uncased's [MASK], [CLS], [SEP]
    ocfg = ObjectiveConfig(**tokens, **cfg.objective.to_dict())
    tx = make_optimizer(OptimizerConfig(total_steps=max(int(cfg.steps), 1), **cfg.optimizer.to_dict()))
    batch = pretrain_batch_spec(model.cfg, batch_size, text_len, regions)
    shardings = state_shardings(model, tx, batch, mesh)
    step_kwargs = {}
    if int(cfg.get("grad_accum_steps", 1)) > 1:
        step_kwargs["accumulate_steps"] = int(cfg.grad_accum_steps)
    jitted = jit_train_step(model, ocfg, tx, mesh, shardings, batch_sharding(mesh), **step_kwargs)
    state_shapes = jax.eval_shape(lambda: _abstract_state(model, tx, batch))
    state = abstract(state_shapes, shardings)
    batch_in = abstract(batch, jax.tree.map(lambda _: batch_sharding(mesh), batch))
    params = _count(model, state_shapes.params)
    summed_in = model.cfg.dtype if model.cfg.weight_grad_dtype == "compute" else model.cfg.weight_grad_dtype
    grads = "" if model.cfg.dtype == "float32" else f", weight gradients summed in {summed_in}"
    desc = (f"pretrain {cfg.model.name} ({'tiny' if cfg.model.tiny else 'full size'}, {model.cfg.dtype}{grads}), "
            f"global batch {batch_size} x ({text_len} tokens, {regions} regions)")
    return Target(jitted, (state, batch_in), float(train_flops(model.cfg, text_len, regions) * batch_size), params,
                  desc)


ORT_VOCAB = 9488  # ORT's COCO vocabulary (CaptionerConfig's default)
ORT_REGIONS = 100  # the bottom-up detector's most boxes per image (10-100 adaptive)
ORT_MAX_WORDS = 16  # words per caption in ORT's preprocessed COCO


def caption_batch_spec(feature_size: int, images: int, captions: int = 5, regions: int = ORT_REGIONS,
                       max_words: int = ORT_MAX_WORDS) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a global captioning batch (``jaxvl.caption.trainer.DEVICE_FIELDS``; the fields of
    ``jaxvl.caption.data``): per image its regions, size and C captions in ORT's [C, T + 2] layout."""
    b, r, c, t = images, regions, captions, max_words + 2
    i32, f32 = jnp.int32, jnp.float32
    shapes = dict(features=((b, r, feature_size), f32), boxes=((b, r, 4), f32), region_mask=((b, r), i32),
                  image_size=((b, 2), i32), captions=((b, c, t), i32), caption_lengths=((b, c), i32),
                  caption_mask=((b, c), i32))
    return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}


def caption_target(cfg: ConfigDict, mesh: Mesh, batch_size: int | None = None) -> Target:
    """The captioner's cross-entropy step of ``cfg`` (a ``jaxvl/configs/caption.py`` config) on ``mesh`` for
    ``batch_size`` images (default ``cfg.xe.batch_size``) x ``cfg.data.captions_per_image`` captions, at ORT's
    COCO sizes (9488 words, 2048-d features, up to 100 regions, 16 words; ``model.tiny``: the test sizes).
    FLOPs: the matmuls of the traced step (``jaxvl.pretrain.flops.dot_flops``), forward and backward."""
    import functools

    from flax import linen as nn

    from jaxvl.caption.optimizers import xe_optimizer
    from jaxvl.caption.trainer import boxed_init, xe_step
    from jaxvl.models.ort.captioner import Captioner, CaptionerConfig
    from jaxvl.pretrain.flops import dot_flops
    from jaxvl.runtime.compile import jit_step
    from jaxvl.runtime.state import boxed_shardings

    batch_size = batch_size or cfg.xe.batch_size
    fields = dict(legacy_plus_one=cfg.model.legacy_plus_one, legacy_size_ratio=cfg.model.legacy_size_ratio,
                  dtype=cfg.model.dtype, **dict(cfg.model.overrides))
    mcfg = (CaptionerConfig.tiny(**fields) if cfg.model.tiny
            else CaptionerConfig(vocab_size=ORT_VOCAB, feature_size=2048, **fields))
    model = Captioner(mcfg)
    tx = xe_optimizer(mcfg.d_model, cfg.xe.noam_warmup, cfg.xe.noam_factor, cfg.xe.grad_clip)
    regions = 10 if cfg.model.tiny else ORT_REGIONS
    batch = caption_batch_spec(mcfg.feature_size, batch_size, cfg.data.captions_per_image, regions)
    boxed = boxed_init(model, tx, batch)
    shardings = boxed_shardings(boxed, mesh)
    step = functools.partial(xe_step, model=model, tx=tx, label_smoothing=cfg.xe.label_smoothing)
    jitted = jit_step(step, mesh, shardings, batch_sharding(mesh))
    state_shapes = jax.eval_shape(lambda: nn.meta.unbox(boxed(jax.random.key(0))))
    state = abstract(state_shapes, shardings)
    batch_in = abstract(batch, jax.tree.map(lambda _: batch_sharding(mesh), batch))
    with jax.set_mesh(mesh):
        flops = dot_flops(step, state, batch_in)
    params = sum(int(x.size) for x in jax.tree.leaves(state_shapes.params))
    desc = (f"caption XE {'tiny' if cfg.model.tiny else 'ORT size'} ({cfg.model.dtype}), {batch_size} images x "
            f"{cfg.data.captions_per_image} captions x {ORT_MAX_WORDS + 2} tokens, {regions} regions")
    return Target(jitted, (state, batch_in), float(flops), params, desc)


ABLATION_REF_BOXES = 4  # gold boxes per phrase in the compiled batch (most Flickr30k Entities phrases have 1-2)


def ablation_batch_spec(cfg: VLConfig, batch_size: int, text_len: int = VOLTA_TEXT_LEN, regions: int = VOLTA_REGIONS,
                        ref_boxes: int = ABLATION_REF_BOXES) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a global ablation batch (``jaxvl.ablation.data``'s fields the sweep reads, with the
    controls' ``example`` and LabelMatch's ``vg_label``): the pretraining fields plus ``phrase_mask`` [B, T] and
    the phrase's gold boxes ``ref_boxes`` [B, G, 4] / ``ref_mask`` [B, G]."""
    b = batch_size
    i32, f32 = jnp.int32, jnp.float32
    spec = {k: v for k, v in pretrain_batch_spec(cfg, b, text_len, regions).items()}
    extra = dict(phrase_mask=((b, text_len), i32), ref_boxes=((b, ref_boxes, 4), f32), ref_mask=((b, ref_boxes), i32),
                 example=((b,), i32), vg_label=((b,), i32))
    return {**spec, **{k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in extra.items()}}


def ablate_target(cfg: ConfigDict, mesh: Mesh, batch_size: int | None = None, text_len: int = VOLTA_TEXT_LEN,
                  regions: int = VOLTA_REGIONS, model_overrides: dict[str, Any] | None = None) -> Target:
    """The ablation sweep of ``cfg`` (a ``jaxvl/configs/ablate.py`` config: its conditions, thresholds, controls,
    member / model batch sizes and quirks) for ``model.name`` at VOLTA's ctrl size (``model_overrides``: other
    ``VLConfig`` fields) on ``mesh``: K stacked checkpoints (K = the configured ``checkpoints``, at least 1,
    replicated as ``jaxvl ablate`` holds them) x every member, on a global batch of ``batch_size`` phrases
    (default ``cfg.data.batch_size``) sharded over the data axes. FLOPs: the matmuls of the traced sweep."""
    from flax import linen as nn

    from jaxvl.ablation.conditions import Quirks
    from jaxvl.ablation.sweep import AblationSpec, AblationSweep
    from jaxvl.pretrain.flops import dot_flops

    if not cfg.model.name:
        raise ValueError("`jaxvl compile --config ablate` needs the model: --config.model.name=uniter (a preset at "
                         "ctrl size)")
    batch_size = batch_size or cfg.data.batch_size
    model = get_model(cfg.model.name, **(model_overrides or {}))
    k = max(1, len([p for p in str(cfg.checkpoints).split(",") if p]))
    words = {task: tuple(w for w in str(cfg[task]).split(",") if w) for task in ("vis4lang", "lang4vis")}
    thresholds = tuple(float(t) for t in cfg.thresholds)
    spec = AblationSpec(103, **words, thresholds=thresholds, quirks=Quirks(**cfg.quirks.to_dict()),
                        member_batch_size=cfg.member_batch_size, model_batch_size=cfg.model_batch_size,
                        control_threshold=float(cfg.report_threshold) if cfg.controls else None)
    sweep = AblationSweep(model, spec, mesh)
    batch = ablation_batch_spec(model.cfg, batch_size, text_len, regions)
    dummy = model.dummy_inputs(1, text_len, regions)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), **dummy)["params"]))
    stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((k, *x.shape), x.dtype), shapes)
    params = abstract(stacked, jax.tree.map(lambda _: sweep.param_sharding, stacked))
    batch_in = abstract(batch, jax.tree.map(lambda _: sweep.batch_sharding, batch))
    mean = jax.ShapeDtypeStruct((model.cfg.v_feature_size,), jnp.float32, sharding=sweep.param_sharding)

    with jax.set_mesh(mesh):
        flops = dot_flops(sweep.program, params, batch_in, mean)
    members = sum(len(spec.members(task)) for task in ("vis4lang", "lang4vis"))
    desc = (f"ablate {cfg.model.name} ({model.cfg.dtype}), {k} checkpoint(s) x {members} members, global batch "
            f"{batch_size} phrases x ({text_len} tokens, {regions} regions)")
    return Target(sweep, (params, batch_in, mean), float(flops), _count(model, shapes), desc)


def scaled_single_stream(hidden: int, layers: int) -> dict[str, Any]:
    """``VLConfig`` overrides of a single-stream model (UNITER's plan) ``hidden`` wide and ``layers`` deep, BERT's
    proportions: heads of 64, a feed-forward 4x wide, the vision stream the same (it shares the layers)."""
    from jaxvl.models.volta.presets import single_stream_plan

    heads, ffn = hidden // 64, 4 * hidden
    return dict(hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn, v_hidden_size=hidden,
                v_num_attention_heads=heads, v_intermediate_size=ffn, **single_stream_plan(layers).to_dict())


def _abstract_state(model: Any, tx: Any, batch: dict[str, jax.ShapeDtypeStruct]) -> Any:
    from flax import linen as nn

    from jaxvl.pretrain.step import boxed_init

    return nn.meta.unbox(boxed_init(model, tx, batch)(jax.random.key(0)))


def _count(model: Any, params: Any) -> int:
    from jaxvl.models.params import count_params

    return int(count_params(params, model.cfg))


__all__ = ["Target", "VOLTA_REGIONS", "VOLTA_TEXT_LEN", "ablate_target", "ablation_batch_spec", "abstract",
           "caption_batch_spec", "caption_target",
           "pretrain_batch_spec", "pretrain_target", "scaled_single_stream"]
