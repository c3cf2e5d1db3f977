"""The captioner's optimisers, ORT's recipe (reference captioning.md 1.4).

- ``xe_optimizer``: Adam (0.9, 0.98, eps 1e-9) under the Noam schedule
  ``factor * d_model^-0.5 * min(n^-0.5, n * warmup^-1.5)`` with n = update number from 1, after an
  element-wise gradient clamp (``optax.clip``);
- ``scst_optimizer``: Adam (0.9, 0.999, 1e-8), lr ``lr0 * rate^floor(epoch / every)``, the same clamp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def noam_schedule(d_model: int, warmup: int, factor: float = 1.0) -> optax.Schedule:
    """ORT's ``NoamOpt`` rate for optax's 0-based update ``count`` (ORT's step n = count + 1)."""

    def schedule(count: jax.Array | int) -> jax.Array:
        n = jnp.asarray(count, jnp.float32) + 1.0
        return factor * d_model ** -0.5 * jnp.minimum(n ** -0.5, n * warmup ** -1.5)

    return schedule


def staircase_schedule(learning_rate: float, steps_per_epoch: int, every_epochs: float, rate: float) -> optax.Schedule:
    """``lr * rate ** floor(epoch / every)`` (ORT's ``learning_rate_decay_every`` / ``_rate``)."""

    def schedule(count: jax.Array | int) -> jax.Array:
        epoch = jnp.floor(jnp.asarray(count, jnp.float32) / max(1, steps_per_epoch))
        return learning_rate * rate ** jnp.floor(epoch / every_epochs)

    return schedule


def _adam(schedule: optax.Schedule, b1: float, b2: float, eps: float, clamp: float) -> optax.GradientTransformation:
    parts = [optax.clip(clamp)] if clamp and clamp > 0 else []
    parts += [optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
              optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=schedule)]
    return optax.chain(*parts)


def xe_optimizer(d_model: int, warmup: int, factor: float = 1.0, clamp: float = 0.1) -> optax.GradientTransformation:
    return _adam(noam_schedule(d_model, warmup, factor), 0.9, 0.98, 1e-9, clamp)


def scst_optimizer(learning_rate: float, steps_per_epoch: int, every_epochs: float, rate: float,
                   clamp: float = 0.1) -> optax.GradientTransformation:
    return _adam(staircase_schedule(learning_rate, steps_per_epoch, every_epochs, rate), 0.9, 0.999, 1e-8, clamp)
