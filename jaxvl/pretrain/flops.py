"""Analytic model FLOPs of the pretraining step, for model FLOPs utilisation (MFU).

The convention is MaxText's (``calculate_tflops_training_per_device``; reference ``jax_anchors.md``
section 6):

- a multiply-add is 2 FLOPs, so an ``[m, k] x [k, n]`` matmul is ``2 m k n``;
- only matmuls count: the learnable-weight ones (projections, feed-forwards, the region and box
  embeddings, the heads) and attention's ``QK^T`` and ``AV``, counted in full (jaxvl's encoders are
  bidirectional: no causal halving);
- embedding gathers are not counted; the tied MLM decoder (hidden -> vocab on the word table) is;
- the training step is 3x the forward (``TRAIN_MULTIPLIER``: forward, and a backward of twice the
  forward), for every counted matmul. Masking, softmax, LayerNorm, activations and the optimizer
  update are not counted. (The traced step is a hair under 3x: nothing asks for the input gradient
  of the region and box projections, whose inputs are data; ``tests/test_flops.py`` pins that.)

What runs is read off the ``VLConfig`` and its sub-layer plan, sub-layer by sub-layer, as
``jaxvl.models.volta.encoder`` computes it: per attention sub-layer a stream's queries and output
projection exist when that stream is updated there (``has_text`` / ``has_vision``), its keys and
values when some stream reads them (text: ``tt`` or ``vt``; vision: ``vv`` or ``tv``), and its
queries attend over ``[text ; vision]`` keys jointly when both directions are active. A shared
(tied) sub-layer, such as LXMERT's cross-attention, runs its one set of weights once per direction,
so it is counted per stream. The heads run on every position: MLM transform + decoder on all text
positions, the visual transform and each visual-target decoder on all regions (``[IMG]`` row
included), the poolers on the first row, ITM on the fused pooled vector.

``dot_flops`` counts the same quantity on a traced program (every ``dot_general`` of a jaxpr), the
ground truth the tests compare the analytic count with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core

from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.plan import Sublayer

TRAIN_MULTIPLIER = 3  # forward + backward (input and weight gradients) = 3 x forward
PARTS = ("embeddings", "attention_projections", "attention_scores", "feed_forward", "mlm_head", "visual_heads",
         "pooler_itm")

Breakdown = dict[str, int]


def matmul(m: int, k: int, n: int) -> int:
    """FLOPs of an ``[m, k] x [k, n]`` matmul: ``2 m k n``."""
    return 2 * m * k * n


def embedding_flops(cfg: VLConfig, regions: int) -> int:
    """Forward FLOPs per example of the region and box projections (the word, position and token-type
    tables are gathers: 0). ``regions``: region rows including ``[IMG]``."""
    hv, feat = cfg.v_hidden_size, cfg.v_feature_size
    kind = cfg.image_embeddings
    if kind == "visualbert":  # W_p f only: VisualBERT ignores boxes
        return matmul(regions, feat, hv)
    if kind == "vl-bert":  # one projection of [sincos(box) ; f]
        return matmul(regions, 8 * cfg.v_coordinate_embeddings_dim + feat, hv)
    return matmul(regions, feat, hv) + matmul(regions, cfg.num_locs, hv)  # W_f f + W_l l


def sublayer_flops(cfg: VLConfig, spec: Sublayer, text_len: int, regions: int) -> Breakdown:
    """Forward FLOPs per example of one sub-layer: ``attention_projections`` (Q, K, V, output),
    ``attention_scores`` (``QK^T`` and ``AV``) and ``feed_forward``."""
    lt, lv, ht, hv = text_len, regions, cfg.hidden_size, cfg.v_hidden_size
    out = {"attention_projections": 0, "attention_scores": 0, "feed_forward": 0}
    if spec.kind == "ff":
        if spec.t_ff:
            out["feed_forward"] += matmul(lt, ht, spec.t_width) + matmul(lt, spec.t_width, ht)
        if spec.v_ff:
            out["feed_forward"] += matmul(lv, hv, spec.v_width) + matmul(lv, spec.v_width, hv)
        return out
    wt, wv = spec.t_width, spec.v_width
    proj = 0
    if spec.tt or spec.vt:  # text keys and values
        proj += 2 * matmul(lt, ht, wt)
    if spec.vv or spec.tv:  # vision keys and values
        proj += 2 * matmul(lv, hv, wv)
    scores = 0
    if spec.has_text:  # text queries, output projection, scores against [text if tt ; vision if tv]
        proj += matmul(lt, ht, wt) + matmul(lt, wt, ht)
        keys = lt * spec.tt + lv * spec.tv
        scores += matmul(lt, wt, keys) + matmul(lt, keys, wt)
    if spec.has_vision:
        proj += matmul(lv, hv, wv) + matmul(lv, wv, hv)
        keys = lt * spec.vt + lv * spec.vv
        scores += matmul(lv, wv, keys) + matmul(lv, keys, wv)
    out["attention_projections"], out["attention_scores"] = proj, scores
    return out


def head_flops(cfg: VLConfig, text_len: int, regions: int) -> Breakdown:
    """Forward FLOPs per example of the heads: ``mlm_head`` (transform + tied decoder on every text
    position), ``visual_heads`` (transform + one decoder per visual target on every region row) and
    ``pooler_itm`` (the poolers on row 0, ITM on the fused vector)."""
    ht, hv = cfg.hidden_size, cfg.v_hidden_size
    mlm = matmul(text_len, ht, ht) + matmul(text_len, ht, cfg.vocab_size)
    visual = matmul(regions, hv, hv) + sum(matmul(regions, hv, size) for size in cfg.visual_targets.values())
    pooler = 0
    if cfg.fusion_method != "none":
        pooler += matmul(1, ht, cfg.pooler_size) + matmul(1, cfg.pooler_size, cfg.itm_dim)
    if cfg.fusion_method in ("mul", "sum"):
        pooler += matmul(1, hv, cfg.v_pooler_size)
    return {"mlm_head": mlm, "visual_heads": visual, "pooler_itm": pooler}


def forward_breakdown(cfg: VLConfig, text_len: int, regions: int) -> Breakdown:
    """Forward FLOPs per example by part (``PARTS``), for ``text_len`` tokens and ``regions`` region rows
    (including the global ``[IMG]`` row: VOLTA's 38 and 37)."""
    if text_len < 1 or regions < 1:
        raise ValueError(f"text_len={text_len}, regions={regions}: both must be >= 1")
    out = dict.fromkeys(PARTS, 0)
    out["embeddings"] = embedding_flops(cfg, regions)
    for spec in cfg.sublayers:
        for key, value in sublayer_flops(cfg, spec, text_len, regions).items():
            out[key] += value
    out.update(head_flops(cfg, text_len, regions))
    return out


def forward_flops(cfg: VLConfig, text_len: int, regions: int) -> int:
    """Forward FLOPs per example (the sum of ``forward_breakdown``)."""
    return sum(forward_breakdown(cfg, text_len, regions).values())


def train_flops(cfg: VLConfig, text_len: int, regions: int) -> int:
    """Model FLOPs per example of one training step: ``TRAIN_MULTIPLIER`` x ``forward_flops``."""
    return TRAIN_MULTIPLIER * forward_flops(cfg, text_len, regions)


# ------------------------------------------------------------------------------- traced programs


def _dot_general_flops(eqn: Any) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    shared = math.prod(lhs[d] for d in (*lhs_contract, *lhs_batch))
    return 2 * math.prod(lhs) * math.prod(rhs) // shared


def _sub_jaxprs(value: Any) -> list[jex_core.Jaxpr]:
    if isinstance(value, jex_core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jex_core.Jaxpr):
        return [value]
    if isinstance(value, tuple | list):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def jaxpr_dot_flops(jaxpr: jex_core.Jaxpr) -> int:
    """FLOPs of every ``dot_general`` in ``jaxpr`` (``2 x`` the multiply-adds), recursing into sub-programs
    (jit, custom derivatives, remat); a ``scan`` body counts ``length`` times, a ``cond`` its costliest
    branch. A ``while`` loop has no static trip count: ValueError."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_general_flops(eqn)
        elif name == "while":
            raise ValueError("jaxpr_dot_flops: a while loop has no static trip count")
        elif name == "cond":
            total += max(jaxpr_dot_flops(b) for b in _sub_jaxprs(eqn.params["branches"]))
        else:
            inner = sum(jaxpr_dot_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def dot_flops(fn: Callable, *args: Any, **kwargs: Any) -> int:
    """FLOPs of the matmuls ``fn(*args, **kwargs)`` traces to (``jaxpr_dot_flops`` of ``jax.make_jaxpr``).
    Arguments may be arrays or ``jax.ShapeDtypeStruct``s; nothing runs."""
    return jaxpr_dot_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
