"""Matched controls of the ablation conditions: remove as much input, none of it aligned with the phrase.

A condition that removes the phrase's aligned input also removes *input*: the loss can rise because the
model sees an input it was not trained on, whatever the removed units meant. On a world with nothing
planted, removing all text moved MRC-KL by +0.22 bits under one recipe (issue 13), as much as a planted
effect. So every condition is evaluated beside a control that removes units NOT aligned with the phrase,
and the effect is read relative to it (``jaxvl.ablation.verdicts``):

- vis4lang ``object`` (the regions aligned at IoT > t replaced by the mean feature): as many regions per
  example, drawn at random among its real regions not aligned at t (never ``[IMG]`` or padding);
- lang4vis ``phrase`` (the phrase's sub-words ``[MASK]``): as many sub-words per example, drawn at random
  among the caption's sub-words outside the phrase (never ``[CLS]``, ``[SEP]`` or padding);
- ``all`` (every region / every sub-word): no draw can remove as many non-aligned units as ``all``
  removes, since ``all`` removes every unit. Its control removes every unit EXCEPT the aligned ones
  (vis4lang: every real region not aligned at t; lang4vis: every caption sub-word outside the phrase).
  It controls for the shift to an input the model never saw (a caption of ``[MASK]`` only, an image of
  mean features only) while keeping what the phrase needs; the effect is what removing the aligned
  units adds once everything else is gone. An example with nothing aligned at t gets control ==
  condition (effect 0).

Shortfall: where an example has fewer non-aligned units than its condition removes (a 3-sub-word phrase
in ``there is a red ball``), the ``object`` / ``phrase`` control removes all of them, i.e. fewer units
than the condition; the report counts those examples (``control_shortfall``).

The draw is fixed per example: unit ``u`` of example ``e`` gets the priority
``uniform(fold_in(fold_in(key(CONTROL_SEED, impl='threefry2x32'), stream), e))[u]`` (``stream``
``REGION_STREAM`` or ``TOKEN_STREAM``; ``e`` the example's ordinal in the ablation index, the batch's
``example`` field), and the control takes the eligible units of lowest priority. The same example gets
the same draw whatever its batch, host, device or threshold (so the draws at two thresholds are nested
where the eligible sets are).

Shapes: ``eligible`` / units bool [B, U]; ``count`` int [B]; ``example`` int [B].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONTROL_SEED = 13
REGION_STREAM, TOKEN_STREAM = 0, 1


def unit_priorities(example: jax.Array, num_units: int, stream: int) -> jax.Array:
    """float32 [B, U]: each example's fixed uniform priorities of its ``num_units`` units (module doc)."""
    base = jax.random.fold_in(jax.random.key(CONTROL_SEED, impl="threefry2x32"), stream)
    return jax.vmap(lambda e: jax.random.uniform(jax.random.fold_in(base, e), (num_units,)))(example)


def draw_matched(eligible: jax.Array, count: jax.Array, priority: jax.Array) -> jax.Array:
    """bool [B, U]: per row, the ``count`` eligible units of lowest ``priority`` (every eligible unit when
    there are fewer)."""
    score = jnp.where(eligible, priority, jnp.inf)
    rank = jnp.argsort(jnp.argsort(score, axis=-1), axis=-1)
    return eligible & (rank < count[..., None])


def matched_control(units: jax.Array, aligned: jax.Array, level: jax.Array | int, example: jax.Array,
                    stream: int) -> jax.Array:
    """bool [B, U]: the units the control of ``level`` removes (0 ``none``: nothing; 1 ``object`` /
    ``phrase``: as many random non-aligned ``units`` as ``aligned`` holds; 2 ``all``: every non-aligned
    unit). ``units``: the removable units (real regions / caption sub-words); ``aligned`` ⊆ ``units``."""
    free = units & ~aligned
    drawn = draw_matched(free, aligned.sum(-1), unit_priorities(example, units.shape[-1], stream))
    return jnp.where(level == 2, free, jnp.where(level == 1, drawn, False))
