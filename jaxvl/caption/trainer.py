"""The captioning trainer behind ``jaxvl caption train``: cross-entropy, then self-critical training.

``train_captioner(cfg, workdir)`` runs ``jaxvl/configs/caption.py``: stage ``xe`` in ``<workdir>/xe``, then
(unless ``scst.enabled`` is off) stage ``scst`` in ``<workdir>/scst`` starting from the XE parameters.
Both stages run on the shared machinery of pretraining: the mesh, parameters created in their
shards, Orbax checkpoints with the Grain position (exact resume), the NaN guard, SIGTERM, JSONL and
TensorBoard metrics and the progress bar (``jaxvl.runtime.loop``).

- XE step: one jitted, donated update of ``caption_objective.xe_loss`` (images encoded once).
- SCST step: a jitted ``sample_and_greedy`` (5 samples per image and the greedy baseline, one encoder
  pass, fixed-shape decoding), CIDEr-D rewards on the host (``jaxvl.metrics.CiderD`` with document
  frequencies of the training references, on token-id strings with the end token kept, as ORT),
  then a jitted, donated update of ``caption_objective.scst_loss``. Deliberate difference: ORT keeps
  the sampling pass's log-probabilities (dropout on while sampling); jaxvl samples without dropout
  and recomputes the samples' log-probabilities teacher-forced with dropout on (the same gradient
  estimator, and it keeps the sampler a pure evaluation-mode program).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
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
from jaxvl.runtime.checkpoint import Checkpointer, params_from_workdir
from jaxvl.runtime.compile import FAST_COMPILE, jit_step, memory_summary
from jaxvl.runtime.loop import LoopConfig, StageResult, log, train_loop
from jaxvl.runtime.metrics_log import MetricsLog
from jaxvl.runtime.sharding import batch_sharding, make_mesh, param_shardings, to_global
from jaxvl.runtime.state import TrainState, apply_gradients, init_sharded

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


def device_batch(host: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """A caption pipeline batch (host) -> the global arrays the compiled steps read (no image ids)."""
    return to_global({k: host[k] for k in DEVICE_FIELDS}, mesh)


# ============================================================================================ steps


def _boxed_init(model: Captioner, tx: optax.GradientTransformation, example: Mapping[str, Any]):
    shapes = {k: example[k].shape[1:] for k in ("features", "boxes", "region_mask")}

    def init(rng: jax.Array) -> TrainState:
        init_rng, step_rng = jax.random.split(rng)
        feats = jnp.zeros((1, *shapes["features"]), jnp.float32)
        boxes = jnp.zeros((1, *shapes["boxes"]), jnp.float32)
        mask = jnp.ones((1, *shapes["region_mask"]), jnp.int32)
        tokens = jnp.zeros((1, 2), jnp.int32)
        params = model.init(init_rng, feats, boxes, mask, tokens)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=step_rng)

    return init


def xe_step(state: TrainState, batch, *, model: Captioner, tx, label_smoothing: float):
    return apply_gradients(state, batch, lambda p, b, r: xe_loss(model, p, b, r, label_smoothing), tx)


def scst_update(state: TrainState, batch, samples, rewards, *, model: Captioner, tx):
    def loss_fn(params, batch, rng):
        return scst_loss(model, params, batch, samples, rewards, rng)

    return apply_gradients(state, batch, loss_fn, tx)


# ============================================================================================ stages


def _stage_steps(stage_cfg: ConfigDict, n_images: int) -> int:
    return int(stage_cfg.steps) or math.ceil(stage_cfg.epochs * n_images / stage_cfg.batch_size)


def run_caption_stage(cfg: ConfigDict, workdir: str, stage: str, init_from: str | None = None,
                      run_dir: str | None = None) -> StageResult:
    """One stage (``xe`` or ``scst``) in ``workdir`` (module doc); ``run_dir``: the run's top directory
    (where a source string's data is prepared; default ``workdir``)."""
    os.makedirs(workdir, exist_ok=True)
    compiler_options = FAST_COMPILE if cfg.fast_compile else None
    stage_cfg = cfg.xe if stage == "xe" else cfg.scst

    # ----------------------------------------------------------------------------------- data
    data = open_caption_data(cfg, run_dir or workdir)
    pipeline = CaptionPipelineConfig(batch_size=stage_cfg.batch_size, captions_per_image=cfg.data.captions_per_image,
                                     seed=cfg.seed, num_threads=cfg.data.num_threads)
    train_ds = caption_dataset(data.source, pipeline)
    mesh = make_mesh(**cfg.mesh.to_dict())

    # -------------------------------------------------------------------- model and optimizer
    mcfg = model_config(cfg, data)
    model = Captioner(mcfg)
    steps = _stage_steps(stage_cfg, len(data.source))
    if stage == "xe":
        tx = xe_optimizer(mcfg.d_model, cfg.xe.noam_warmup, cfg.xe.noam_factor, cfg.xe.grad_clip)
    else:
        per_epoch = max(1, len(data.source) // stage_cfg.batch_size)
        tx = scst_optimizer(stage_cfg.learning_rate, per_epoch, stage_cfg.decay_every_epochs, stage_cfg.decay_rate,
                            stage_cfg.grad_clip)
    example = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                           device_batch(next(iter(train_ds)), mesh))

    # ------------------------------------------------------------------------------ the state
    boxed_init = _boxed_init(model, tx, example)
    shardings = param_shardings(jax.eval_shape(boxed_init, jax.random.key(0)), mesh)
    state = init_sharded(boxed_init, jax.random.key(cfg.seed), mesh, compiler_options=compiler_options)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep,
                        async_save=cfg.checkpoint.async_save)
    data_iter = iter(train_ds)
    resumed = ckpt.latest_step()
    if resumed is not None:
        state, _ = ckpt.restore(state, shardings, data_iterator=data_iter)
        init_desc = f"resumed from {ckpt.directory} step {resumed}"
    elif init_from:
        state = state.replace(params=params_from_workdir(init_from, state, shardings))
        init_desc = f"parameters of {init_from}"
    else:
        init_desc = "random (ORT's xavier-uniform init)"
    start = int(jax.device_get(state.step))
    _write_run_info(workdir, cfg, mcfg, data, stage, steps, init_desc)
    log(f"{workdir}: captioner {stage} stage, {steps} steps of {stage_cfg.batch_size} images on mesh "
        f"{dict(mesh.shape)}; init: {init_desc}")
    if start >= steps:
        ckpt.close()
        return StageResult(workdir, "done", start, {}, ckpt.latest_step())

    # ---------------------------------------------------------------------------- compile
    bsharding = batch_sharding(mesh)
    t0 = time.perf_counter()
    if stage == "xe":
        fn = functools.partial(xe_step, model=model, tx=tx, label_smoothing=cfg.xe.label_smoothing)
        with jax.set_mesh(mesh):
            step_fn = jit_step(fn, mesh, shardings, bsharding, compiler_options).lower(state, example).compile()
        log(f"compiled the XE step in {time.perf_counter() - t0:.1f} s\n{memory_summary(step_fn)}")
    else:
        step_fn = _scst_step_fn(cfg, model, tx, mesh, shardings, bsharding, state, example, data, compiler_options)
        log(f"compiled the SCST sampler and update in {time.perf_counter() - t0:.1f} s")

    # ------------------------------------------------------------------------------- loop
    evaluate = _evaluation(cfg, model, data, mesh, compiler_options)
    metrics_log = MetricsLog(workdir, resume_step=start)
    loop = LoopConfig(steps=steps, checkpoint_every=cfg.checkpoint.every, eval_every=cfg.eval_every,
                      log_every=cfg.log_every, progress=cfg.progress)
    try:
        _, result = train_loop(loop, step_fn, state, data_iter, lambda h: device_batch(h, mesh), ckpt, metrics_log,
                               start, workdir, evaluate)
    finally:
        metrics_log.close()
        ckpt.close()
    return result


def _scst_step_fn(cfg, model, tx, mesh, shardings, bsharding, state, example, data, compiler_options):
    """The SCST step as one host function: jitted sampler -> host CIDEr-D rewards -> jitted update."""
    from jaxvl.caption.decoding import sample_and_greedy

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

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        samples, greedy = sampler(state.params, batch, state.rng, state.step)
        host = jax.device_get({"s": samples, "g": greedy, "c": batch["captions"], "l": batch["caption_lengths"],
                               "m": batch["caption_mask"]})
        rewards, sample_scores, greedy_scores = scst_rewards(cider, host["s"], host["g"], host["c"], host["l"],
                                                             host["m"])
        state, metrics = update(state, batch, samples, jax.device_put(rewards, bsharding))
        return state, {**metrics, "cider_sample": float(sample_scores.mean()),
                       "cider_greedy": float(greedy_scores.mean())}

    return step


def _evaluation(cfg, model, data: CaptionData, mesh, compiler_options):
    """``evaluate(state) -> {val_xe, val_cider_greedy}`` on fixed held-out batches, or None without a split."""
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
    batches = []
    for host in caption_dataset(source, pipeline):
        batches.append(device_batch(host, mesh))
        if len(batches) == cfg.eval_batches:
            break

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


def _write_run_info(workdir, cfg, mcfg: CaptionerConfig, data: CaptionData, stage: str, steps: int, init: str):
    if jax.process_index() != 0:
        return
    info = dict(config=cfg.to_dict(), model_config=dataclasses.asdict(mcfg), stage=stage, steps=steps, init=init,
                dataset=data.dataset, vocab_fingerprint=data.vocab.fingerprint())
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump(info, f, indent=1, default=str)
    data.vocab.save(os.path.join(workdir, "vocab.json"))


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
    boxed = _boxed_init(model, tx, example)
    abstract = nn.meta.unbox(jax.eval_shape(boxed, jax.random.key(0)))
    shardings = param_shardings(jax.eval_shape(boxed, jax.random.key(0)), mesh)
    return model, params_from_workdir(stage_dir, abstract, shardings), data, stage_dir


def train_captioner(cfg: ConfigDict, workdir: str) -> list[StageResult]:
    """XE in ``<workdir>/xe``, then SCST in ``<workdir>/scst`` from its parameters (module doc)."""
    xe_dir = os.path.join(workdir, "xe")
    first = run_caption_stage(cfg, xe_dir, "xe", run_dir=workdir)
    if first.status != "done" or not cfg.scst.enabled:
        return [first]
    return [first, run_caption_stage(cfg, os.path.join(workdir, "scst"), "scst", init_from=xe_dir, run_dir=workdir)]


__all__ = ["CaptionData", "load_captioner", "model_config", "open_caption_data", "train_captioner"]
