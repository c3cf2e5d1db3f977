"""The captioning trainer behind ``jaxvl caption train``: cross-entropy, then self-critical training.

``train_captioner(cfg, workdir)`` runs ``jaxvl/configs/caption.py``: stage ``xe`` in ``<workdir>/xe``, then
(unless ``scst.enabled`` is off) stage ``scst`` in ``<workdir>/scst`` starting from the XE parameters.
``caption_stage`` builds a stage's pieces (data, model, optimizer, state init, step, evaluation) and the
stage runner of pretraining runs them (``jaxvl.runtime.stage``): the mesh, parameters created in their
shards, Orbax checkpoints with the Grain position (exact resume), the NaN guard, SIGTERM, JSONL and
TensorBoard metrics and the progress bar. A stage that did not finish starts no SCST stage.

- XE step: one jitted, donated update of ``jaxvl.caption.loss.xe_loss`` (images encoded once).
- SCST step: a jitted ``sample_and_greedy`` (5 samples per image and the greedy baseline, one encoder
  pass, fixed-shape decoding), CIDEr-D rewards on the host (``jaxvl.metrics.CiderD`` with document
  frequencies of the training references, on token-id strings with the end token kept, as ORT),
  then a jitted, donated update of ``jaxvl.caption.loss.scst_loss``. Deliberate difference: ORT keeps
  the sampling pass's log-probabilities (dropout on while sampling); jaxvl samples without dropout
  and recomputes the samples' log-probabilities teacher-forced with dropout on (the same gradient
  estimator, and it keeps the sampler a pure evaluation-mode program).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxvl.caption.data import CaptionPipelineConfig, caption_dataset, caption_vocab_for
from jaxvl.caption.loss import scst_loss, xe_loss
from jaxvl.caption.optimizers import scst_optimizer, xe_optimizer
from jaxvl.caption.rewards import scst_rewards, training_cider
from jaxvl.data.caption_vocab import CaptionVocab
from jaxvl.data.grain import open_split
from jaxvl.data.resolve import resolve_dataset
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig
from jaxvl.models.ort.geometry import relative_boxes
from jaxvl.runtime import stage as stage_runner
from jaxvl.runtime.checkpoint import params_from_workdir
from jaxvl.runtime.compile import FAST_COMPILE, jit_step
from jaxvl.runtime.loop import LoopConfig, StageResult
from jaxvl.runtime.sharding import batch_sharding, make_mesh, to_global
from jaxvl.runtime.stage import Stage, example_batch, take_batches
from jaxvl.runtime.state import Batch, TrainState, apply_gradients, boxed_shardings, boxed_state_init, init_sharded

DEVICE_FIELDS = ("features", "boxes", "region_mask", "image_size", "captions", "caption_lengths", "caption_mask")


# ============================================================================================ data


@dataclasses.dataclass
class CaptionData:
    """A captioning dataset's version directory, its train split source, vocabulary and region sizes."""

    dataset: str
    source: Any
    vocab: CaptionVocab
    feature_dim: int
    num_regions: int
    max_length: int


def open_caption_data(cfg: ConfigDict, workdir: str) -> CaptionData:
    """The run's dataset (a source string is prepared once under ``data.prepare_dir`` or ``<workdir>/data``,
    ``workdir`` being the run's top directory, shared by its stages and by decode / evaluate)."""
    from jaxvl.data.builders.captions import CaptionImages

    dataset = resolve_dataset(cfg.data.dataset, cfg.data.prepare_dir, workdir, CaptionImages)
    source, info = open_split(dataset, cfg.data.train_split)
    features = info.features["features"].shape
    return CaptionData(dataset, source, caption_vocab_for(info), int(features[-1]), int(features[0]),
                       int(info.features["captions"].shape[-1]))


def model_config(cfg: ConfigDict, data: CaptionData) -> CaptionerConfig:
    """ORT's sizes (or tiny ones) with the data's vocabulary and feature sizes and the geometry flags."""
    fields = dict(vocab_size=len(data.vocab), feature_size=data.feature_dim,
                  legacy_plus_one=cfg.model.legacy_plus_one, legacy_size_ratio=cfg.model.legacy_size_ratio,
                  dtype=cfg.model.dtype, **dict(cfg.model.overrides))
    if cfg.model.tiny:
        return CaptionerConfig.tiny(**fields, max_len=max(64, data.max_length + 2))
    return CaptionerConfig(**fields)


def device_batch(host: Mapping[str, np.ndarray], mesh: Mesh) -> Batch:
    """A caption pipeline batch (host) -> the global arrays the compiled steps read (no image ids)."""
    return to_global({k: host[k] for k in DEVICE_FIELDS}, mesh)


# ============================================================================================ steps


def boxed_init(model: Captioner, tx: optax.GradientTransformation, example: Mapping[str, Any]
               ) -> Callable[[jax.Array], TrainState]:
    """``rng -> TrainState`` with ``nn.LogicallyPartitioned`` boxes (``runtime.state.boxed_state_init``); only
    the shapes of ``example``'s ``features`` [B, R, F], ``boxes`` [B, R, 4] and ``region_mask`` [B, R] are
    used (one image of zeros and a two-token caption)."""
    shapes = {k: example[k].shape[1:] for k in ("features", "boxes", "region_mask")}

    def init_params(rng: jax.Array) -> Any:
        feats = jnp.zeros((1, *shapes["features"]), jnp.float32)
        boxes = jnp.zeros((1, *shapes["boxes"]), jnp.float32)
        mask = jnp.ones((1, *shapes["region_mask"]), jnp.int32)
        tokens = jnp.zeros((1, 2), jnp.int32)
        return model.init(rng, feats, boxes, mask, tokens)["params"]

    return boxed_state_init(init_params, tx)


def xe_step(state: TrainState, batch: Batch, *, model: Captioner, tx: optax.GradientTransformation,
            label_smoothing: float) -> tuple[TrainState, dict[str, jax.Array]]:
    """One XE update (``caption.loss.xe_loss``, dropout on) on a global caption batch (``DEVICE_FIELDS``)."""
    return apply_gradients(state, batch, lambda p, b, r: xe_loss(model, p, b, r, label_smoothing), tx)


def scst_update(state: TrainState, batch: Batch, samples: jax.Array, rewards: jax.Array, *, model: Captioner,
                tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SCST update (``caption.loss.scst_loss``) given the sampled tokens int32 [B, K, L] and their
    baseline-subtracted rewards float32 [B, K]."""
    def loss_fn(params, batch, rng):
        return scst_loss(model, params, batch, samples, rewards, rng)

    return apply_gradients(state, batch, loss_fn, tx)


def scst_step(cfg: ConfigDict, model: Captioner, tx: optax.GradientTransformation, mesh: Mesh, shardings: TrainState,
              state: TrainState, example: Batch, data: CaptionData, compiler_options: dict[str, Any] | None
              ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Any]]]:
    """The SCST step as one host function: compiled sampler (K samples per image [B, K, L] and the greedy
    caption [B, L]) -> host CIDEr-D rewards -> compiled update. Metrics: the update's, ``cider_sample`` and
    ``cider_greedy`` (host floats)."""
    from jaxvl.caption.decoding import sample_and_greedy

    bsharding = batch_sharding(mesh)
    captions_per_image = example["captions"].shape[1]

    def sample(params, batch, rng, step):
        key = jax.random.fold_in(jax.random.fold_in(rng, step), 1)  # apart from the update's dropout key
        boxes = relative_boxes(batch["boxes"], batch["image_size"])
        samples, greedy = sample_and_greedy(model, params, batch["features"], boxes, batch["region_mask"], key,
                                            num_samples=captions_per_image, max_len=cfg.decode.max_len,
                                            temperature=cfg.scst.temperature)
        return samples.tokens, greedy.tokens

    with jax.set_mesh(mesh):
        sampler = jax.jit(sample, in_shardings=(shardings.params, bsharding, None, None),
                          compiler_options=compiler_options).lower(state.params, example, state.rng,
                                                                   state.step).compile()
        token_shape = jax.ShapeDtypeStruct((*example["captions"].shape[:2], cfg.decode.max_len), jnp.int32)
        reward_shape = jax.ShapeDtypeStruct(example["captions"].shape[:2], jnp.float32)
        update = jit_step(functools.partial(scst_update, model=model, tx=tx), mesh, shardings, bsharding,
                          compiler_options, extra_shardings=(bsharding, bsharding)).lower(
                              state, example, token_shape, reward_shape).compile()
    cider = training_cider(data.source)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Any]]:
        samples, greedy = sampler(state.params, batch, state.rng, state.step)
        host = jax.device_get({"s": samples, "g": greedy, "c": batch["captions"], "l": batch["caption_lengths"],
                               "m": batch["caption_mask"]})
        rewards, sample_scores, greedy_scores = scst_rewards(cider, host["s"], host["g"], host["c"], host["l"],
                                                             host["m"])
        state, metrics = update(state, batch, samples, jax.device_put(rewards, bsharding))
        return state, {**metrics, "cider_sample": float(sample_scores.mean()),
                       "cider_greedy": float(greedy_scores.mean())}

    return step


# ======================================================================================== evaluation


def caption_evaluation(cfg: ConfigDict, model: Captioner, data: CaptionData, mesh: Mesh,
                       compiler_options: dict[str, Any] | None) -> Callable[[TrainState], dict[str, float]] | None:
    """``evaluate(state) -> {loss, cider_greedy}`` (deterministic XE loss and greedy CIDEr-D) on
    ``cfg.eval_batches`` fixed held-out batches; None without evaluation or without an eval split."""
    from jaxvl.caption.decoding import greedy
    from jaxvl.metrics import cider_d

    if not cfg.eval_every or not cfg.eval_batches:
        return None
    try:
        source, _ = open_split(data.dataset, cfg.data.eval_split)
    except ValueError:
        return None
    pipeline = CaptionPipelineConfig(batch_size=min(cfg.xe.batch_size, len(source)), shuffle=False, num_epochs=1,
                                     caption_window="first", captions_per_image=cfg.data.captions_per_image,
                                     num_threads=1)
    batches = take_batches(caption_dataset(source, pipeline), lambda host: device_batch(host, mesh), cfg.eval_batches)

    def evaluate_batch(params, batch):
        loss, _ = xe_loss(model, params, batch, jax.random.key(0), deterministic=True)
        out = greedy(model, params, batch["features"], relative_boxes(batch["boxes"], batch["image_size"]),
                     batch["region_mask"], max_len=cfg.decode.max_len)
        return loss, out.tokens[:, 0]

    fn = jax.jit(evaluate_batch, compiler_options=compiler_options)

    def evaluate(state: TrainState) -> dict[str, float]:
        losses, cands, refs = [], [], []
        for batch in batches:
            loss, tokens = jax.device_get(fn(state.params, batch))
            losses.append(float(loss))
            cands += [data.vocab.decode(row) for row in tokens]
            host = jax.device_get({k: batch[k] for k in ("captions", "caption_lengths", "caption_mask")})
            for rows, lens, real in zip(host["captions"], host["caption_lengths"], host["caption_mask"], strict=True):
                refs.append([data.vocab.decode(row[1:1 + n]) for row, n, r in zip(rows, lens, real, strict=True) if r])
        return {"loss": float(np.mean(losses)), "cider_greedy": float(cider_d(cands, refs)[0])}

    return evaluate


# ============================================================================================ stages


def caption_stage(cfg: ConfigDict, workdir: str, stage: str, init_from: str | None = None,
                  run_dir: str | None = None) -> Stage:
    """The pieces of stage ``xe`` or ``scst`` in ``workdir`` for ``runtime.stage.run_stage`` (module doc).
    ``init_from``: a workdir whose parameters start the stage (else ORT's random init); ``run_dir``: the run's
    top directory (where a source string's data is prepared; default ``workdir``)."""
    compiler_options = FAST_COMPILE if cfg.fast_compile else None
    stage_cfg = cfg.xe if stage == "xe" else cfg.scst

    # ----------------------------------------------------------------------------------- data
    data = open_caption_data(cfg, run_dir or workdir)
    pipeline = CaptionPipelineConfig(batch_size=stage_cfg.batch_size, captions_per_image=cfg.data.captions_per_image,
                                     seed=cfg.seed, num_threads=cfg.data.num_threads)
    train_ds = caption_dataset(data.source, pipeline)
    mesh = make_mesh(**cfg.mesh.to_dict())

    def host_to_global(host: Mapping[str, np.ndarray]) -> Batch:
        return device_batch(host, mesh)

    example = example_batch(train_ds, host_to_global)

    # -------------------------------------------------------------------- model and optimizer
    mcfg = model_config(cfg, data)
    model = Captioner(mcfg)
    steps = int(stage_cfg.steps) or math.ceil(stage_cfg.epochs * len(data.source) / stage_cfg.batch_size)
    if stage == "xe":
        tx = xe_optimizer(mcfg.d_model, cfg.xe.noam_warmup, cfg.xe.noam_factor, cfg.xe.grad_clip)
    else:
        per_epoch = max(1, len(data.source) // stage_cfg.batch_size)
        tx = scst_optimizer(stage_cfg.learning_rate, per_epoch, stage_cfg.decay_every_epochs, stage_cfg.decay_rate,
                            stage_cfg.grad_clip)

    # ----------------------------------------------------------------------- state and step
    boxed = boxed_init(model, tx, example)
    shardings = boxed_shardings(boxed, mesh)
    jitted, build = None, None
    if stage == "xe":
        fn = functools.partial(xe_step, model=model, tx=tx, label_smoothing=cfg.xe.label_smoothing)
        jitted = jit_step(fn, mesh, shardings, batch_sharding(mesh), compiler_options)
    else:
        def build(state: TrainState, example: Batch) -> Callable:
            return scst_step(cfg, model, tx, mesh, shardings, state, example, data, compiler_options)

    loop = LoopConfig(steps=steps, checkpoint_every=cfg.checkpoint.every, eval_every=cfg.eval_every,
                      log_every=cfg.log_every, progress=cfg.progress)
    return Stage(
        description=f"captioner {stage} stage, {steps} steps of {stage_cfg.batch_size} images",
        mesh=mesh, train_data=train_ds, host_to_global=host_to_global, example=example,
        init_state=lambda: init_sharded(boxed, jax.random.key(cfg.seed), mesh, compiler_options=compiler_options),
        shardings=shardings, loop=loop, jitted_step=jitted, build_step=build,
        step_name="XE step" if stage == "xe" else "SCST sampler and update", init_from=init_from,
        initialise=lambda state: (state, "random (ORT's xavier-uniform init)"),
        make_evaluate=lambda: caption_evaluation(cfg, model, data, mesh, compiler_options),
        run_info=dict(config=cfg.to_dict(), model_config=dataclasses.asdict(mcfg), stage=stage,
                      dataset=data.dataset, vocab_fingerprint=data.vocab.fingerprint()),
        write_files=lambda workdir: data.vocab.save(os.path.join(workdir, "vocab.json")),
        checkpoint_keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)


def run_caption_stage(cfg: ConfigDict, workdir: str, stage: str, init_from: str | None = None,
                      run_dir: str | None = None) -> StageResult:
    """One stage (``xe`` or ``scst``) in ``workdir``: ``caption_stage`` run by ``runtime.stage.run_stage``."""
    os.makedirs(workdir, exist_ok=True)
    _, result = stage_runner.run_stage(caption_stage(cfg, workdir, stage, init_from, run_dir), workdir)
    return result


def load_captioner(cfg: ConfigDict, workdir: str) -> tuple[Captioner, Any, CaptionData, str]:
    """The trained captioner of ``workdir``: (model, params, data, the stage directory read), from the
    SCST stage's latest checkpoint if there is one, else the XE stage's. The dataset's vocabulary must
    equal the one the run saved (``vocab.json``)."""
    data = open_caption_data(cfg, workdir)
    stage_dir = next((os.path.join(workdir, s) for s in ("scst", "xe")
                      if os.path.isdir(os.path.join(workdir, s, "checkpoints"))), None)
    if stage_dir is None:
        raise FileNotFoundError(f"{workdir}: no xe/ or scst/ checkpoints (run `jaxvl caption train` first)")
    saved = os.path.join(stage_dir, "vocab.json")
    if os.path.exists(saved):
        data.vocab.check_matches(CaptionVocab.load(saved), what=f"the checkpoint's vocabulary ({saved})")
    model = Captioner(model_config(cfg, data))
    mesh = make_mesh(**cfg.mesh.to_dict())
    tx = xe_optimizer(model.cfg.d_model, cfg.xe.noam_warmup)
    example = {"features": jax.ShapeDtypeStruct((1, data.num_regions, data.feature_dim), jnp.float32),
               "boxes": jax.ShapeDtypeStruct((1, data.num_regions, 4), jnp.float32),
               "region_mask": jax.ShapeDtypeStruct((1, data.num_regions), jnp.int32)}
    boxed = boxed_init(model, tx, example)
    abstract = nn.meta.unbox(jax.eval_shape(boxed, jax.random.key(0)))
    shardings = boxed_shardings(boxed, mesh)
    return model, params_from_workdir(stage_dir, abstract, shardings), data, stage_dir


def train_captioner(cfg: ConfigDict, workdir: str) -> list[StageResult]:
    """XE in ``<workdir>/xe``, then SCST in ``<workdir>/scst`` from its parameters (module doc)."""
    xe_dir = os.path.join(workdir, "xe")
    first = run_caption_stage(cfg, xe_dir, "xe", run_dir=workdir)
    if first.status != "done" or not cfg.scst.enabled:
        return [first]
    return [first, run_caption_stage(cfg, os.path.join(workdir, "scst"), "scst", init_from=xe_dir, run_dir=workdir)]


__all__ = ["CaptionData", "boxed_init", "caption_evaluation", "caption_stage", "device_batch", "load_captioner",
           "model_config", "open_caption_data", "run_caption_stage", "scst_step", "scst_update", "train_captioner",
           "xe_step"]
