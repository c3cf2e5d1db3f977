"""The training half of ``jaxvl bench caption``: steps per second of the captioning trainer's XE and SCST steps.

Both steps are built from ``jaxvl.caption.trainer``'s public pieces (``xe_step``, ``scst_update``,
``boxed_init``'s shardings) and compiled as the trainer compiles them (``jaxvl.runtime.compile.jit_step``, the
state donated, on a one-device mesh), with ORT's optimisers (``jaxvl.caption.optimizers``), dropout on, on a
random caption batch:

- ``xe``: ``xe_step`` (images encoded once, broadcast to their captions; Noam Adam);
- ``scst``: the trainer's three parts, timed one by one, each ended by ``block_until_ready``: the jitted
  ``sample_and_greedy`` sampler (``--captions`` samples per image and the greedy baseline), the host
  reward (``device_get`` of the samples and the batch's captions, then ``jaxvl.caption.rewards.scst_rewards``
  with CIDEr-D document frequencies of a random reference corpus of ``--df-images`` images plus the batch),
  and the jitted, donated ``scst_update``. The row records each part's median and the reward's share.

Both states start at update 0 from copies of the same parameters.
"""

from __future__ import annotations

import argparse
import functools
import gc
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvl.benchmarks.caption_setup import (
    Arrays,
    aot,
    compiler_options,
    defaults,
    random_captions,
    random_train_batch,
    timing,
)
from jaxvl.benchmarks.common import Probe, aot_compile, log, time_calls
from jaxvl.caption.decoding import sample_and_greedy
from jaxvl.caption.optimizers import scst_optimizer, xe_optimizer
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig
from jaxvl.models.ort.geometry import relative_boxes
from jaxvl.runtime.compile import jit_step, memory_stats
from jaxvl.runtime.sharding import batch_sharding, make_mesh, param_shardings
from jaxvl.runtime.state import TrainState

NOAM_WARMUP = 10000
SCST_LR, SCST_DECAY_EVERY, SCST_DECAY_RATE, SCST_STEPS_PER_EPOCH = 5e-4, 3, 0.8, 11_329  # 113,287 images / 10


def train_state(model: Captioner, tx: Any, params: Any, batch: Arrays, mesh: Any,
                seed: int) -> tuple[TrainState, TrainState]:
    """A trainer state at update 0 holding a copy of ``params`` (the step donates its state) and a fresh ``tx``
    state, placed with the shardings of the trainer's state for ``batch`` (``jaxvl.caption.trainer.boxed_init``),
    and those shardings."""
    from jaxvl.caption.trainer import boxed_init  # the trainer pulls in the data pipeline: imported when training

    shardings = param_shardings(jax.eval_shape(boxed_init(model, tx, batch), jax.random.key(0)), mesh)
    params = jax.tree.map(jnp.copy, params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key(seed))
    return jax.device_put(state, shardings), shardings


def _train_row(size: str, cfg: CaptionerConfig, step: str, images: int, captions: int, compile_s: float,
               times: list[float], memory: dict[str, int], probe: Probe, **extra: Any) -> dict[str, Any]:
    """One training row: the median step time, steps and captions per second, compile time and peak memory."""
    timed = timing(times, 1)
    row = {"size": size, "dtype": cfg.dtype, "step": step, "images": images, "captions_per_image": captions,
           "compile_s": compile_s, "ms_per_step": timed["ms_per_call"], "runs_ms": timed["runs_ms"],
           "steps_per_s": timed["per_s"], "captions_per_s": timed["per_s"] * images * captions,
           "peak_memory_bytes": memory.get("peak_estimate_in_bytes"), **extra, **probe.finish()}
    share = f", host reward {100 * row['reward_share']:.1f}% of the step" if "reward_share" in row else ""
    log(f"  {step}: {row['ms_per_step']:.1f} ms/step = {row['steps_per_s']:.2f} steps/s = "
        f"{row['captions_per_s']:.1f} captions/s; compile {compile_s:.1f} s{share}")
    return row


def bench_training(size: str, model: Captioner, params: Any, args: argparse.Namespace, device: jax.Device,
                   result: dict[str, Any], save: Callable[[], None]) -> None:
    """The XE and SCST step rows (module doc) of ``model`` (``size``) from ``params``, appended to
    ``result['train']`` as measured (``save()`` after each)."""
    d = defaults(size, device.platform != "cpu", args)
    log(f"{size} training: XE {args.xe_batch} x {args.captions}, SCST {args.scst_batch} x {args.captions}, "
        f"{args.dtype}, {d['warmup']} warm-up + {d['iters']} timed steps")
    mesh = make_mesh(1, 1, 1, devices=[device])
    result["train"].append(bench_xe(size, model, params, args, mesh, d["warmup"], d["iters"]))
    save()
    gc.collect()
    result["train"].append(bench_scst(size, model, params, args, mesh, d["warmup"], d["iters"]))
    save()


def bench_xe(size: str, model: Captioner, params: Any, args: argparse.Namespace, mesh: Any, warmup: int,
             iters: int) -> dict[str, Any]:
    """The ``xe`` row: the trainer's ``xe_step`` on ``--xe-batch`` images x ``--captions`` captions."""
    from jaxvl.caption.trainer import xe_step

    probe = Probe()
    cfg, bsharding = model.cfg, batch_sharding(mesh)
    batch = jax.device_put(random_train_batch(cfg, args.xe_batch, args.captions, args.regions, args.max_len,
                                              args.seed), bsharding)
    tx = xe_optimizer(cfg.d_model, NOAM_WARMUP)
    state, shardings = train_state(model, tx, params, batch, mesh, args.seed)
    jitted = jit_step(functools.partial(xe_step, model=model, tx=tx, label_smoothing=0.0), mesh, shardings,
                      bsharding, compiler_options(args))
    with jax.set_mesh(mesh):
        compiled, lower_s, compile_s = aot_compile(jitted, state, batch)
    holder = [state]

    def call() -> Any:
        holder[0], metrics = compiled(holder[0], batch)
        return metrics

    times = time_calls(call, jax.block_until_ready, warmup, iters)
    return _train_row(size, cfg, "xe", args.xe_batch, args.captions, lower_s + compile_s, times,
                      memory_stats(compiled), probe)


def bench_scst(size: str, model: Captioner, params: Any, args: argparse.Namespace, mesh: Any, warmup: int,
               iters: int) -> dict[str, Any]:
    """The ``scst`` row: sampler, host reward and ``scst_update`` on ``--scst-batch`` images x ``--captions``."""
    from jaxvl.caption.rewards import reference_strings, scst_rewards
    from jaxvl.caption.trainer import scst_update
    from jaxvl.metrics import CiderD

    probe = Probe()
    cfg, bsharding, c, max_len = model.cfg, batch_sharding(mesh), args.captions, args.max_len
    batch = jax.device_put(random_train_batch(cfg, args.scst_batch, c, args.regions, max_len, args.seed), bsharding)
    corpus = random_captions(cfg, args.df_images, c, max_len, np.random.default_rng(args.seed + 2))
    host_batch = jax.device_get({k: batch[k] for k in ("captions", "caption_lengths", "caption_mask")})
    cider = CiderD(reference_strings(corpus["captions"], corpus["caption_lengths"], corpus["caption_mask"])
                   + reference_strings(host_batch["captions"], host_batch["caption_lengths"],
                                       host_batch["caption_mask"]))
    tx = scst_optimizer(SCST_LR, SCST_STEPS_PER_EPOCH, SCST_DECAY_EVERY, SCST_DECAY_RATE)
    state, shardings = train_state(model, tx, params, batch, mesh, args.seed)

    def sample(params: Any, batch: Arrays, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The trainer's sampler: [B, c, T] samples and the [B, T] greedy baseline (a key apart from dropout's)."""
        key = jax.random.fold_in(jax.random.fold_in(rng, step), 1)
        boxes = relative_boxes(batch["boxes"], batch["image_size"])
        samples, base = sample_and_greedy(model, params, batch["features"], boxes, batch["region_mask"], key,
                                          num_samples=c, max_len=max_len, temperature=1.0)
        return samples.tokens, base.tokens

    jitted = jit_step(functools.partial(scst_update, model=model, tx=tx), mesh, shardings, bsharding,
                      compiler_options(args), extra_shardings=(bsharding, bsharding))
    with jax.set_mesh(mesh):
        sampler, sampler_s = aot(sample, state.params, batch, state.rng, state.step,
                                 in_shardings=(shardings.params, bsharding, None, None),
                                 compiler_options=compiler_options(args))
        update, lower_s, compile_s = aot_compile(
            jitted, state, batch, jax.ShapeDtypeStruct((args.scst_batch, c, max_len), jnp.int32),
            jax.ShapeDtypeStruct((args.scst_batch, c), jnp.float32))
    holder = [state]
    parts: list[tuple[float, float, float]] = []

    def call() -> Any:
        t0 = time.perf_counter()
        samples, base = jax.block_until_ready(sampler(holder[0].params, batch, holder[0].rng, holder[0].step))
        t1 = time.perf_counter()
        host = jax.device_get({"s": samples, "g": base, "c": batch["captions"], "l": batch["caption_lengths"],
                               "m": batch["caption_mask"]})
        rewards, _, _ = scst_rewards(cider, host["s"], host["g"], host["c"], host["l"], host["m"])
        rewards = jax.device_put(rewards, bsharding)
        t2 = time.perf_counter()
        holder[0], metrics = jax.block_until_ready(update(holder[0], batch, samples, rewards))
        parts.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return metrics

    times = time_calls(call, jax.block_until_ready, warmup, iters)
    timed = np.array(parts[warmup:])
    medians = {f"{name}_ms": 1e3 * float(np.median(timed[:, i]))
               for i, name in enumerate(("sampler", "reward", "update"))}
    update_s = lower_s + compile_s
    return _train_row(size, cfg, "scst", args.scst_batch, c, sampler_s + update_s, times, memory_stats(update),
                      probe, compile_sampler_s=sampler_s, compile_update_s=update_s, **medians,
                      reward_share=float(timed[:, 1].sum() / timed.sum()),
                      df_images=len(corpus["captions"]) + args.scst_batch)
