"""Attention analyses of the geometry-aware captioner (Ilinykh & Dobnik 2021, 2022; reference captioning.md 2.2).

The model runs teacher-forced on the reference captions (as the papers extract attention): one
parallel forward pass per batch, each image encoded once and broadcast to its C captions, every
attention's probabilities sown (``Captioner(sow_weights=True)``, ``collect_attention``). Per layer and
head of the three families (``encoder_self``, ``decoder_self``, ``cross``):

- **entropy** (Eq. 5): ``-sum_k p log p / log n`` (natural log; the ratio is the same in any base),
  ``n`` = the keys the query can see: the image's valid regions (encoder self-attention and
  cross-attention) or the causal prefix ``0..t`` (decoder self-attention). Queries with ``n < 2`` are
  skipped (decoder position 0; images with one region). Decoder queries are the positions ``0..L`` of a
  real caption of L words (those with a training target: the words and the end token); encoder
  queries are the valid regions. The value is the mean over every counted query of the dataset;
- **grounding** (Eq. 3, cross-attention): ``sum linked mass / sum total mass`` over the dataset, where
  a noun phrase's tokens are the targets T and the regions linked to it the sources S; ``count`` is
  the number of phrase tokens. Beside it ``grounding_chance``: the share a uniform attention over
  the valid regions would give. Only phrases with at least one linked valid region count;
- **spearman_proximity** / **spearman_label** (encoder self-attention): Spearman's rho between the
  attention weight of each valid (query, key) region pair of the dataset and the boxes' proximity
  (minus the distance between the box centres over the image diagonal, so higher = closer) or the
  labels' similarity (1 when both regions have the same detector class, else 0; the cosine of the
  classes' embeddings when ``label_embeddings`` are given).

These are **jaxvl's operationalisations** (reference 2.2: the proximity and similarity formulas of the
Frontiers paper could not be verified); ``NOTES`` states them and the report repeats them.

Query alignment of a phrase token: ``align="predict"`` (default) takes, for word ``j`` of a caption,
the decoder query that predicts it (input position ``j``: the step that generates the word, our reading
of Ilinykh's teacher-forced ``_sample``, which records attention per generation step); ``align="input"``
the query that reads it (position ``j + 1``).

Links: the synthetic captioning world carries them (``CaptionPipelineConfig(analysis_fields=True)``:
``phrase_spans`` [B, C, P, 2], ``phrase_regions`` [B, C, P, R]). For data without them (COCO)
``LabelLinker`` applies the label-matching rule of its docstring on the host; pass it as ``links=``.

Computation: one jitted program per batch shape adds each batch's sums to device accumulators (no
per-image Python loop); the encoder weights of the valid region pairs come back to the host, where
the Spearman ranks are taken over the whole dataset at the end (host memory: 4 bytes x layers x heads
per pair, about 250 MB per 1000 images at ORT's 36 regions, 6 layers and 8 heads; ``pair_images``
caps the images whose pairs are kept).

API: ``analyze(model, params, batches, out_dir=None) -> dict`` (``write_report`` when ``out_dir`` is
given) and ``write_report(results, out_dir)`` (``jaxvl.caption.attention_report``): ``caption_attention.csv``
/ ``.jsonl`` (tidy rows: analysis, family, layer, head, value, count; layers and heads counted from 1 as in
the papers, ``grounding_chance`` without layer/head), ``caption_attention.md`` (the notes and per-layer
means) and the plots ``entropy.png``, ``grounding.png``, ``correlations.png``. ``LabelLinker`` lives in
``jaxvl.caption.attention_links``; both modules' public names are importable from here too.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxvl.caption.attention_links import PRONOUNS, SPATIAL_WORDS, LabelLinker
from jaxvl.caption.attention_report import FAMILIES, ROW_FIELDS, tidy_rows, write_report
from jaxvl.models.ort.captioner import Captioner, collect_attention, ort_token_mask
from jaxvl.models.ort.geometry import relative_boxes

log = logging.getLogger(__name__)

ALIGNS = ("predict", "input")
REQUIRED = ("features", "boxes", "region_mask", "image_size", "captions", "caption_lengths", "caption_mask")
NOTES = (
    "jaxvl operationalisations of Ilinykh & Dobnik (2021, 2022); reference captioning.md section 2.2.",
    "Teacher forcing on the reference captions: one forward pass per batch, images encoded once per caption set.",
    "Entropy (Eq. 5): natural log, normalised by log(n), n = keys visible to the query (valid regions; the causal "
    "prefix for decoder self-attention); queries with n < 2 skipped; decoder queries = positions 0..L of real "
    "captions; mean over all counted queries of the dataset.",
    "Grounding (Eq. 3): cross-attention mass from a noun phrase's tokens on its linked regions, summed over the "
    "dataset, over the total mass from those tokens; phrases without a linked valid region skipped; "
    "grounding_chance = the share of a uniform attention.",
    "Spearman (encoder self-attention, all valid region pairs of the dataset): proximity = -(distance between box "
    "centres) / image diagonal; label similarity = same detector class (1/0), or the cosine of class embeddings.",
)


# ---------------------------------------------------------------------------------------------- measures


def attention_entropy(weights: jax.Array, query_mask: jax.Array, key_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed normalised entropy of attention rows.

    weights [L, B, H, Q, K] probabilities; query_mask [B, Q] bool (queries to count); key_mask [B, K] or
    [B, Q, K] bool (the keys each query sees). Returns (sum over counted queries of
    ``-sum_k p log p / log n`` [L, H] float32, number of counted queries int32), ``n`` = visible keys;
    queries with ``n < 2`` are not counted. Mass on invisible keys is ignored (it is 0 under the model's masks).
    """
    if key_mask.ndim == 2:
        key_mask = jnp.broadcast_to(key_mask[:, None, :], query_mask.shape + key_mask.shape[-1:])
    p = jnp.where(key_mask[None, :, None], weights.astype(jnp.float32), 0.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    n = key_mask.sum(-1)  # [B, Q]
    counted = query_mask & (n >= 2)
    norm = jnp.where(counted, 1.0 / jnp.log(jnp.maximum(n, 2).astype(jnp.float32)), 0.0)
    entropy = -plogp.sum(-1) * norm[None, :, None]  # [L, B, H, Q]
    return entropy.sum((1, 3)), counted.sum().astype(jnp.int32)


def causal_key_mask(token_mask: jax.Array) -> jax.Array:
    """[B, T] bool key mask -> [B, T, T] bool: query t sees keys k <= t that the mask keeps (the decoder's mask)."""
    t = token_mask.shape[-1]
    return jnp.tril(jnp.ones((t, t), bool))[None] & token_mask.astype(bool)[:, None, :]


def phrase_query_mask(phrase_spans: jax.Array, length: int, align: str = "predict") -> jax.Array:
    """[B, P, 2] word spans ``[start, end)`` -> [B, P, length] bool decoder query positions of the phrases' words:
    word j is predicted at position j (``align="predict"``) and read at position j + 1 (``"input"``)."""
    if align not in ALIGNS:
        raise ValueError(f"align={align!r}; expected one of {', '.join(ALIGNS)}")
    shift = 0 if align == "predict" else 1
    t = jnp.arange(length)[None, None, :]
    return (t >= phrase_spans[..., :1] + shift) & (t < phrase_spans[..., 1:] + shift)


def grounding_mass(cross: jax.Array, phrase_queries: jax.Array, phrase_regions: jax.Array,
                   key_mask: jax.Array) -> dict[str, jax.Array]:
    """Eq. 3's sums for cross-attention cross [L, B, H, T, N], phrase token queries [B, P, T] bool, linked
    regions [B, P, N] bool and valid regions key_mask [B, N] bool.

    Phrases with no linked valid region are left out. Returns ``linked`` and ``total`` [L, H] float32 (mass
    from the phrase tokens on the linked regions / on all valid regions), ``chance`` (summed over the phrase
    tokens: linked valid regions / valid regions, the share of a uniform attention) and ``tokens`` int32.
    """
    key_mask = key_mask.astype(bool)
    linked = phrase_regions.astype(bool) & key_mask[:, None, :]
    q = (phrase_queries.astype(bool) & linked.any(-1, keepdims=True)).astype(jnp.float32)
    w = cross.astype(jnp.float32)
    linked_mass = jnp.einsum("lbhtn,bpt,bpn->lh", w, q, linked.astype(jnp.float32))
    total_mass = jnp.einsum("lbhtn,bpt,bn->lh", w, q, key_mask.astype(jnp.float32))
    share = linked.sum(-1) / jnp.maximum(key_mask.sum(-1), 1)[:, None]  # [B, P]
    return {"linked": linked_mass, "total": total_mass, "chance": jnp.einsum("bpt,bp->", q, share),
            "tokens": q.sum().astype(jnp.int32)}


def box_proximity(boxes: jax.Array, image_size: jax.Array) -> jax.Array:
    """Pixel boxes [B, N, 4] and (height, width) [B, 2] -> [B, N, N] float32: minus the distance between box
    centres over the image diagonal (0 for a box with itself; higher = closer)."""
    centres = (boxes[..., :2] + boxes[..., 2:]).astype(jnp.float32) / 2
    diag = jnp.sqrt(jnp.sum(image_size.astype(jnp.float32) ** 2, -1))
    dist = jnp.sqrt(jnp.sum((centres[:, :, None] - centres[:, None, :]) ** 2, -1))
    return -dist / diag[:, None, None]


def label_similarity(objects_id: jax.Array, label_embeddings: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
    """Detector classes [B, N] int (K-space, < 0 = none) -> (similarity [B, N, N] float32, defined [B, N, N] bool):
    1 for the same class else 0, or with ``label_embeddings`` [K, d] the cosine of the two classes' rows."""
    known = objects_id >= 0
    defined = known[:, :, None] & known[:, None, :]
    if label_embeddings is None:
        return (objects_id[:, :, None] == objects_id[:, None, :]).astype(jnp.float32), defined
    e = label_embeddings.astype(jnp.float32)
    e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    rows = e[jnp.maximum(objects_id, 0)]  # [B, N, d]
    return jnp.einsum("bnd,bmd->bnm", rows, rows), defined


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties given their average rank (``scipy.stats.rankdata``'s default)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of x [..., n] with y [n] (Pearson correlation of average ranks; NaN where a
    row or y is constant or n < 2)."""
    x = np.asarray(x)
    rows = x.reshape(-1, x.shape[-1])
    if y.shape != rows.shape[-1:]:
        raise ValueError(f"spearman: x has {rows.shape[-1]} values per row, y {y.shape}")
    out = np.full(len(rows), np.nan)
    if len(y) < 2:
        return out.reshape(x.shape[:-1])
    ry = average_ranks(y)
    ry -= ry.mean()
    for i, row in enumerate(rows):
        rx = average_ranks(row)
        rx -= rx.mean()
        denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
        if denom > 0:
            out[i] = float(rx @ ry) / denom
    return out.reshape(x.shape[:-1])


# ---------------------------------------------------------------------------------------------- compiled step


def _teacher_forced(module: Captioner, features: jax.Array, boxes: jax.Array, mask: jax.Array, tokens: jax.Array,
                    token_mask: jax.Array) -> jax.Array:
    """Each of the B images encoded once, its memory repeated for its C = rows / B caption rows [B * C, T]."""
    c = tokens.shape[0] // features.shape[0]
    memory = jnp.repeat(module.encode(features, boxes, mask), c, axis=0)
    return module.decode(memory, jnp.repeat(mask, c, axis=0), tokens, token_mask)


def _batch_stats(model: Captioner, align: str, self_pairs: bool, params: Any, batch: dict[str, jax.Array],
                 label_embeddings: jax.Array | None) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """One batch: (its sums, the encoder weights [L, H, B, N, N] and the pair fields for the host)."""
    captions = batch["captions"]
    b, c, t2 = captions.shape
    regions = batch["region_mask"].astype(bool)
    tokens = captions[:, :, :-1].reshape(b * c, t2 - 1)
    token_mask = ort_token_mask(tokens)
    _, state = model.apply({"params": params}, batch["features"], relative_boxes(batch["boxes"], batch["image_size"]),
                           regions, tokens, token_mask, method=_teacher_forced, mutable=["intermediates"])
    att = collect_attention(state["intermediates"])
    t = jnp.arange(t2 - 1)
    queries = (t[None] <= batch["caption_lengths"].reshape(-1, 1)) & (batch["caption_mask"].reshape(-1, 1) > 0)
    caption_regions = jnp.repeat(regions, c, axis=0)
    sums = {}
    for family, q, k in (("encoder_self", regions, regions), ("decoder_self", queries, causal_key_mask(token_mask)),
                         ("cross", queries, caption_regions)):
        sums[f"{family}/entropy"], sums[f"{family}/queries"] = attention_entropy(att[family], q, k)
    if "phrase_spans" in batch:
        p = batch["phrase_spans"].shape[2]
        phrase_queries = phrase_query_mask(batch["phrase_spans"].reshape(b * c, p, 2), t2 - 1, align)
        linked = batch["phrase_regions"].reshape(b * c, p, -1)
        for key, value in grounding_mass(att["cross"], phrase_queries & queries[:, None], linked,
                                         caption_regions).items():
            sums[f"grounding/{key}"] = value
    pairs = regions[:, :, None] & regions[:, None, :]
    if not self_pairs:
        pairs &= ~jnp.eye(regions.shape[1], dtype=bool)[None]
    host = {"weights": jnp.moveaxis(att["encoder_self"], 2, 1), "pairs": pairs,
            "proximity": box_proximity(batch["boxes"], batch["image_size"])}
    if "objects_id" in batch:
        host["similarity"], defined = label_similarity(batch["objects_id"], label_embeddings)
        host["label_pairs"] = pairs & defined
    return sums, host


def _accumulate(stats: Callable, params: Any, acc: dict[str, jax.Array], batch: dict[str, jax.Array],
                label_embeddings: jax.Array | None) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """``stats`` of one batch added to the running sums ``acc`` (the compiled step; ``acc`` is donated)."""
    sums, host = stats(params, batch, label_embeddings)
    return jax.tree.map(jnp.add, acc, sums), host


@functools.lru_cache(maxsize=8)
def _compiled(model: Captioner, align: str, self_pairs: bool) -> tuple[Callable, Callable]:
    """(the per-batch statistics, the jitted accumulating step) of one sowing model; cached, so analyses of
    several checkpoints of one model compile once per batch shape."""
    stats = functools.partial(_batch_stats, model, align, self_pairs)
    return stats, jax.jit(functools.partial(_accumulate, stats), donate_argnums=(1,))


# ---------------------------------------------------------------------------------------------- analyze


def _check_required(batch: Mapping[str, Any], index: int) -> None:
    missing = [k for k in REQUIRED if k not in batch]
    if missing:
        raise ValueError(f"caption attention batch {index}: missing {missing} (a jaxvl.caption.data batch "
                         "is expected)")


def _check_batch(batch: Mapping[str, Any], index: int, cfg: Any, fields: frozenset[str] | None,
                 label_embeddings: np.ndarray | None) -> None:
    """Shapes, vocabulary and fields of one batch (its keys passed ``_check_required``), before it is compiled or
    run; raises ValueError naming the batch."""
    where = f"caption attention batch {index}"
    if fields is not None and fields != {k for k in ("phrase_spans", "objects_id") if k in batch}:
        raise ValueError(f"{where}: carries other analysis fields than batch 0 ({sorted(fields)})")
    b, r = np.shape(batch["region_mask"])
    captions = np.asarray(batch["captions"])
    expect = {"features": (b, r, cfg.feature_size), "boxes": (b, r, 4), "image_size": (b, 2)}
    if captions.ndim != 3 or captions.shape[0] != b:
        raise ValueError(f"{where}: captions must be [{b}, captions, length + 2]; got {captions.shape}")
    c = captions.shape[1]
    expect.update(caption_lengths=(b, c), caption_mask=(b, c))
    if "phrase_spans" in batch:
        p = np.shape(batch["phrase_spans"])[2] if np.ndim(batch["phrase_spans"]) == 4 else -1
        expect.update(phrase_spans=(b, c, p, 2), phrase_regions=(b, c, p, r))
    if "objects_id" in batch:
        expect["objects_id"] = (b, r)
    for key, shape in expect.items():
        if np.shape(batch[key]) != shape:
            raise ValueError(f"{where}: {key} must be {list(shape)}; got {list(np.shape(batch[key]))}")
    if captions.shape[2] - 1 > cfg.max_len:
        raise ValueError(f"{where}: captions of {captions.shape[2] - 1} positions exceed the model's "
                         f"max_len={cfg.max_len}")
    if captions.min() < 0 or captions.max() >= cfg.vocab_size:
        raise ValueError(f"{where}: caption token ids span [{captions.min()}, {captions.max()}], outside the model's "
                         f"vocab_size={cfg.vocab_size}: the vocabulary does not match the checkpoint")
    if label_embeddings is not None and "objects_id" in batch and np.max(batch["objects_id"]) >= len(label_embeddings):
        raise ValueError(f"{where}: detector class {np.max(batch['objects_id'])} has no row in label_embeddings "
                         f"({len(label_embeddings)} rows)")


def analyze(model: Captioner, params: Any, batches: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike | None
            = None, *, align: str = "predict", self_pairs: bool = True, label_embeddings: np.ndarray | None = None,
            links: Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]] | None = None,
            pair_images: int | None = None) -> dict[str, Any]:
    """The attention analyses of the module doc over ``batches`` (``jaxvl.caption.data`` batches, read with
    ``analysis_fields=True`` for the links and detector classes; one compiled program per batch shape).

    ``params``: the captioner's parameter tree (or ``{"params": tree}``); ``model`` is cloned with
    ``sow_weights=True``. ``align``: the decoder query of a phrase word (module doc). ``self_pairs``: count a
    region's attention to itself in the Spearman pairs. ``label_embeddings`` [K, d]: class embeddings for the
    label similarity (default: same class = 1). ``links(batch) -> (phrase_spans, phrase_regions)`` (e.g. a
    ``LabelLinker``) for batches without stored links; without either, grounding is skipped. ``pair_images``:
    only the region pairs of the first that many images enter the Spearman correlations (None: all).

    Returns ``rows`` (tidy: analysis, family, layer, head, value, count), ``entropy`` {family: [L, H]},
    ``queries`` {family: int}, ``grounding`` [L_dec, H] or None, ``grounding_chance``, ``phrase_tokens``,
    ``spearman`` {"proximity", "label": [L_enc, H] or None}, ``pairs``, ``images``, ``captions``, ``align``, ``notes``.
    """
    if align not in ALIGNS:
        raise ValueError(f"align={align!r}; expected one of {', '.join(ALIGNS)}")
    if not isinstance(model, Captioner):
        raise ValueError(f"analyze needs a jaxvl.models.ort.captioner.Captioner; got {type(model).__name__}")
    model = model.clone(sow_weights=True)
    params = nn.meta.unbox(params["params"] if "params" in params and len(params) == 1 else params)
    embeddings = None if label_embeddings is None else np.asarray(label_embeddings, np.float32)
    if pair_images is not None and pair_images < 1:
        raise ValueError(f"pair_images={pair_images} must be >= 1 or None")
    if embeddings is not None and embeddings.ndim != 2:
        raise ValueError(f"label_embeddings must be [classes, dim]; got shape {embeddings.shape}")
    stats, step = _compiled(model, align, self_pairs)
    acc = None
    fields: frozenset[str] | None = None
    host: dict[str, list[np.ndarray]] = {"proximity": [], "label": [], "w_proximity": [], "w_label": []}
    images = captions = 0
    for index, batch in enumerate(batches):
        batch = dict(batch)
        _check_required(batch, index)
        if "phrase_spans" not in batch and links is not None:
            batch["phrase_spans"], batch["phrase_regions"] = links(batch)
        _check_batch(batch, index, model.cfg, fields, embeddings)
        fields = frozenset(k for k in ("phrase_spans", "objects_id") if k in batch)
        keys = REQUIRED + tuple(k for k in ("phrase_spans", "phrase_regions", "objects_id") if k in batch)
        device_batch = {k: jnp.asarray(batch[k]) for k in keys}
        if acc is None:
            shapes = jax.eval_shape(stats, params, device_batch, embeddings)[0]
            acc = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        acc, out = step(params, acc, device_batch, embeddings)
        out = jax.device_get(out)
        keep = np.ones(len(batch["region_mask"]), bool) if pair_images is None else \
            np.arange(len(batch["region_mask"])) < pair_images - images  # [B]: images whose pairs are kept
        for name, pairs, values in (("proximity", "pairs", "proximity"), ("label", "label_pairs", "similarity")):
            if pairs in out:
                chosen = out[pairs] & keep[:, None, None]
                host[name].append(out[values][chosen])
                host[f"w_{name}"].append(out["weights"][:, :, chosen])
        images += len(batch["region_mask"])
        captions += int(np.asarray(batch["caption_mask"]).sum())
    if acc is None:
        raise ValueError("analyze: no batches")
    acc = jax.device_get(acc)
    results: dict[str, Any] = {"entropy": {}, "queries": {}, "images": images, "captions": captions, "align": align,
                               "notes": list(NOTES)}
    for family in FAMILIES:
        n = int(acc[f"{family}/queries"])
        results["queries"][family] = n
        results["entropy"][family] = np.asarray(acc[f"{family}/entropy"], np.float64) / n if n else \
            np.full(acc[f"{family}/entropy"].shape, np.nan)
    results["grounding"], results["grounding_chance"], results["phrase_tokens"] = None, None, 0
    if "grounding/linked" in acc:
        tokens = int(acc["grounding/tokens"])
        results["phrase_tokens"] = tokens
        total = np.asarray(acc["grounding/total"], np.float64)
        results["grounding"] = np.where(total > 0, np.asarray(acc["grounding/linked"], np.float64) /
                                        np.where(total > 0, total, 1.0), np.nan)
        results["grounding_chance"] = float(acc["grounding/chance"]) / tokens if tokens else float("nan")
        results["notes"].append(f"Grounding: phrase tokens aligned to decoder queries by align={align!r}"
                                + ("; links by label matching (LabelLinker)" if isinstance(links, LabelLinker) else ""))
    else:
        log.warning("caption attention: the batches carry no noun-phrase links; grounding skipped")
        results["notes"].append("Grounding skipped: the batches carry no noun-phrase links (pass links=LabelLinker).")
    results["notes"].append(f"Spearman pairs {'include' if self_pairs else 'exclude'} a region with itself"
                            + (f", from the first {pair_images} images" if pair_images else "") + "; label similarity: "
                            + ("cosine of the given label embeddings" if embeddings is not None else "same class"))
    results["spearman"], results["pairs"] = {}, {}
    for name in ("proximity", "label"):
        if host[name]:
            y = np.concatenate(host[name])
            results["spearman"][name] = spearman(np.concatenate(host[f"w_{name}"], axis=-1), y)
            results["pairs"][name] = len(y)
        else:
            results["spearman"][name], results["pairs"][name] = None, 0
    results["rows"] = tidy_rows(results)
    if out_dir is not None:
        write_report(results, out_dir)
    return results


__all__ = ["ALIGNS", "FAMILIES", "NOTES", "PRONOUNS", "REQUIRED", "ROW_FIELDS", "SPATIAL_WORDS", "LabelLinker",
           "analyze", "attention_entropy", "average_ranks", "box_proximity", "causal_key_mask", "grounding_mass",
           "label_similarity", "phrase_query_mask", "spearman", "tidy_rows", "write_report"]
