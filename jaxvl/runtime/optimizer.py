"""VOLTA's optimiser (``examples/ctrl_*/concap/train.sh``, and ``train_task.py`` for fine-tuning) as one optax
transformation.

AdamW (lr 1e-4, betas (0.9, 0.999), eps 1e-6, weight decay 0.01 on everything but biases and
LayerNorm parameters), a linear warmup over the first 10% of the steps then a linear decay to 0
(``WarmupLinearSchedule``), and gradients clipped to global norm 5.0 before the Adam moments.

The update is ``torch.optim.AdamW``'s (and ``optax.adamw``'s): ``p -= lr * (m_hat / (sqrt(v_hat) + eps)
+ wd * p)``. VOLTA's ``pytorch_transformers.AdamW`` differs in two negligible ways: its eps is added
to the bias-uncorrected ``sqrt(v)`` (an effective ``eps / sqrt(1 - b2^t)``) and it decays the already
updated weight (an ``O(lr^2 wd)`` term). The schedule matches ``WarmupLinearSchedule`` as torch steps
it: update ``k`` (0-based) uses ``lr * k / warmup`` during warmup, so the very first update has lr 0.

Sweeps (``jaxvl.pretrain.sweep``) need the peak learning rate as data, one per member: with
``make_optimizer(cfg, injected_peak=True)`` the last transformation injects two hyper-parameters, the
numeric ``peak_learning_rate`` (in the state, so it can be stacked, vmapped and changed with
``set_peak_learning_rate``) and the schedule ``schedule_factor(count)`` (the warmup/decay shape at peak
1), and scales by ``-peak_learning_rate * schedule_factor``. That product is the same float32
multiplication as the static schedule's ``peak * shape(count)`` (``1.0 * shape`` is exact), so the
updates are bitwise those of ``make_optimizer(replace(cfg, learning_rate=peak))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxvl.runtime.state import is_injected

# Module names of jaxvl's LayerNorms (``jaxvl.models.layers.layer_norm`` call sites and VL-BERT's
# zero-initialised ones); their ``scale`` and ``bias`` are not decayed, nor is any ``bias`` leaf.
LAYER_NORM_NAMES = frozenset({"norm", "v_norm", "img_norm", "loc_norm", "image_norm", "image_location_norm",
                              "visual_ln_text", "visual_ln_object"})


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW + warmup/linear decay + clipping; the defaults are VOLTA's. ``total_steps``: optimizer updates
    in the whole run (the schedule reaches 0 there). ``clip_norm`` None or <= 0 turns clipping off."""

    total_steps: int = 1000
    learning_rate: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    clip_norm: float | None = 5.0

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps}; need at least 1")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction={self.warmup_fraction}; expected a fraction in [0, 1]")

    @property
    def warmup_steps(self) -> float:
        """``warmup_fraction * total_steps``, kept fractional as VOLTA passes it to the schedule."""
        return self.warmup_fraction * self.total_steps


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """``count -> lr``: ``lr * count / warmup`` while ``count < warmup``, then
    ``lr * max(0, (total - count) / (total - warmup))`` (VOLTA's ``WarmupLinearSchedule``)."""
    warmup, total, peak = cfg.warmup_steps, float(cfg.total_steps), cfg.learning_rate

    def schedule(count: jax.Array | int) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        rising = count / max(1.0, warmup)
        falling = jnp.maximum(0.0, (total - count) / max(1.0, total - warmup))
        return peak * jnp.where(count < warmup, rising, falling)

    return schedule


def decay_mask(params: Any) -> Any:
    """A tree of bools like ``params`` (boxed or not): True where weight decay applies. False for every
    leaf named ``bias`` and for every leaf of a module named in ``LAYER_NORM_NAMES``."""

    def decays(path: tuple, _: Any) -> bool:
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]  # skips boxes' `.value`
        if not names:
            return True
        return not (names[-1] == "bias" or (len(names) > 1 and names[-2] in LAYER_NORM_NAMES))

    return jax.tree_util.tree_map_with_path(decays, params)


def _scale_by_peak_times_factor(peak_learning_rate: jax.Array, schedule_factor: jax.Array,
                                ) -> optax.GradientTransformation:
    """``-peak_learning_rate * schedule_factor`` times the updates (the inner factory of the injected peak)."""
    return optax.scale_by_learning_rate(peak_learning_rate * schedule_factor)


def make_optimizer(cfg: OptimizerConfig = OptimizerConfig(), injected_peak: bool = False,
                   ) -> optax.GradientTransformation:
    """Clip by global norm -> Adam moments -> masked decoupled weight decay -> ``-lr(count)``.

    The learning rate of the latest update sits in the optimizer state (``current_learning_rate``).
    ``injected_peak``: keep the peak (``cfg.learning_rate`` at init) in the state as the
    ``peak_learning_rate`` hyper-parameter, for per-member learning rates in a sweep (module docstring);
    same updates, a different state tree.
    """
    parts = []
    if cfg.clip_norm is not None and cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts += [
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
    ]
    if injected_peak:
        factor = learning_rate_schedule(dataclasses.replace(cfg, learning_rate=1.0))
        parts.append(optax.inject_hyperparams(_scale_by_peak_times_factor)(peak_learning_rate=cfg.learning_rate,
                                                                          schedule_factor=factor))
    else:
        parts.append(optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=learning_rate_schedule(cfg)))
    return optax.chain(*parts)


def set_peak_learning_rate(opt_state: Any, peak: float | jax.Array) -> Any:
    """``opt_state`` of ``make_optimizer(cfg, injected_peak=True)`` with its peak learning rate set to ``peak``
    (a python float or a float32 [] array; traceable, e.g. a sweep member's value under ``vmap``)."""
    found = []

    def replace(state: Any) -> Any:
        if is_injected(state) and "peak_learning_rate" in state.hyperparams:
            found.append(True)
            old = state.hyperparams["peak_learning_rate"]
            return state._replace(hyperparams={**state.hyperparams,
                                               "peak_learning_rate": jnp.asarray(peak, old.dtype).reshape(old.shape)})
        return state

    out = jax.tree.map(replace, opt_state, is_leaf=is_injected)
    if not found:
        raise ValueError("no peak_learning_rate in this optimizer state; build it with "
                         "make_optimizer(cfg, injected_peak=True)")
    return out
