"""The captioner's training objectives and optimisers, ORT's recipe (reference captioning.md 1.4), as pure functions.

- ``xe_loss``: teacher-forced cross-entropy, each image encoded ONCE and its memory broadcast to its
  C captions (ORT replicates the image C times through the encoder); ORT's target mask (the words and
  the end token); optional label smoothing in ORT's form (KL to a target of ``1 - s`` on the gold word
  and ``s / (V - 1)`` elsewhere, pad column included), averaged over target tokens.
- ``scst_loss``: self-critical policy gradient ``-sum_t logp_t * r * mask_t / sum mask`` over sampled
  captions (mask: first token through the end token inclusive), ``r`` = CIDEr-D(sample) -
  CIDEr-D(greedy), computed on the host.
- ``xe_optimizer``: Adam (0.9, 0.98, eps 1e-9) under the Noam schedule
  ``factor * d_model^-0.5 * min(n^-0.5, n * warmup^-1.5)`` with n = update number from 1, after an
  element-wise gradient clamp (``optax.clip``); ``scst_optimizer``: Adam (0.9, 0.999, 1e-8), lr
  ``lr0 * rate^floor(epoch / every)``, the same clamp.

Batches are ``jaxvl.caption.data`` batches (``features``, ``boxes`` in pixels, ``region_mask``,
``image_size``, ``captions`` [B, C, T + 2], ``caption_lengths``, ``caption_mask``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxvl.models.ort.captioner import Captioner, ort_token_mask
from jaxvl.models.ort.geometry import relative_boxes

Batch = dict[str, jax.Array]


def encode_images(model: Captioner, params: Any, batch: Batch, deterministic: bool, rng: jax.Array | None
                  ) -> tuple[jax.Array, jax.Array]:
    """Each image once: (memory [B, N, d], region mask [B, N])."""
    mask = batch["region_mask"]
    rngs = None if deterministic else {"dropout": rng}
    memory = model.apply({"params": params}, batch["features"], relative_boxes(batch["boxes"], batch["image_size"]),
                         mask, deterministic=deterministic, rngs=rngs, method=Captioner.encode)
    return memory, mask


def target_mask(lengths: jax.Array, caption_mask: jax.Array, positions: int) -> jax.Array:
    """[B, C] lengths and caption mask -> [B, C, positions] float32: target t trained iff t <= length
    (the words and the end token) on a real caption."""
    t = jnp.arange(positions)
    return ((t[None, None, :] <= lengths[..., None]) & (caption_mask[..., None] > 0)).astype(jnp.float32)


def _teacher_forced(model: Captioner, params: Any, memory: jax.Array, mask: jax.Array, tokens: jax.Array,
                    deterministic: bool, rng: jax.Array | None) -> jax.Array:
    """memory [B, N, d] and per-image token rows [B, C, T] -> log-probs [B, C, T, V] (memory broadcast)."""
    b, c, t = tokens.shape
    memory = jnp.repeat(memory, c, axis=0)
    mask = jnp.repeat(mask, c, axis=0)
    flat = jnp.asarray(tokens).reshape(b * c, t)
    rngs = None if deterministic else {"dropout": rng}
    logp = model.apply({"params": params}, memory, mask, flat, ort_token_mask(flat), deterministic=deterministic,
                       rngs=rngs, method=Captioner.decode)
    return logp.reshape(b, c, t, -1)


def xe_loss(model: Captioner, params: Any, batch: Batch, rng: jax.Array, label_smoothing: float = 0.0,
            deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy (nats) per target token; parts ``xe`` (always the plain NLL) and ``tokens``."""
    enc_key, dec_key = jax.random.split(rng)
    memory, mask = encode_images(model, params, batch, deterministic, enc_key)
    captions = batch["captions"]
    logp = _teacher_forced(model, params, memory, mask, captions[..., :-1], deterministic, dec_key)
    targets = captions[..., 1:]
    weights = target_mask(batch["caption_lengths"], batch["caption_mask"], targets.shape[-1])
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    count = jnp.maximum(weights.sum(), 1.0)
    xe = jnp.sum(nll * weights) / count
    if label_smoothing > 0.0:
        v = logp.shape[-1]
        off = label_smoothing / (v - 1)
        on = 1.0 - label_smoothing
        # KL(q || p) = sum_k q_k (log q_k - log p_k), q = off everywhere but `on` at the target.
        entropy = on * jnp.log(on) + (v - 1) * off * jnp.log(off)
        cross = -(off * logp.sum(-1) + (on - off) * -nll)
        loss = jnp.sum((entropy + cross) * weights) / count
    else:
        loss = xe
    return loss, {"xe": xe, "tokens": weights.sum()}


def sample_mask(tokens: jax.Array) -> jax.Array:
    """Sampled rows [..., T] (0 after the end) -> float32 mask over the first token through the first 0
    inclusive (ORT's ``RewardCriterion`` mask)."""
    ended_before = jnp.cumsum(tokens == 0, axis=-1) - (tokens == 0)
    return (ended_before == 0).astype(jnp.float32)


def scst_loss(model: Captioner, params: Any, batch: Batch, samples: jax.Array, rewards: jax.Array, rng: jax.Array,
              deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Self-critical loss on ``samples`` [B, C, T] (tokens after BOS, 0-padded) with ``rewards`` [B, C]
    (advantage over the greedy baseline); log-probs recomputed teacher-forced with dropout."""
    enc_key, dec_key = jax.random.split(rng)
    memory, mask = encode_images(model, params, batch, deterministic, enc_key)
    inputs = jnp.concatenate([jnp.zeros_like(samples[..., :1]), samples[..., :-1]], axis=-1)  # BOS first
    logp = _teacher_forced(model, params, memory, mask, inputs, deterministic, dec_key)
    token_logp = jnp.take_along_axis(logp, samples[..., None], axis=-1)[..., 0]
    weights = sample_mask(samples)
    loss = -jnp.sum(token_logp * rewards[..., None] * weights) / jnp.maximum(weights.sum(), 1.0)
    return loss, {"reward": rewards.mean(), "sample_logp": jnp.sum(token_logp * weights) / rewards.size}


