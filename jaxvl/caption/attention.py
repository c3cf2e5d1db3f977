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
given) and ``write_report(results, out_dir)``: ``caption_attention.csv`` / ``.jsonl`` (tidy rows:
analysis, family, layer, head, value, count; layers and heads counted from 1 as in the papers,
``grounding_chance`` without layer/head), ``caption_attention.md`` (the notes and per-layer means) and
the plots ``entropy.png``, ``grounding.png``, ``correlations.png``.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxvl.data.caption_vocab import CaptionVocab
from jaxvl.models.ort.captioner import Captioner, collect_attention, ort_token_mask
from jaxvl.models.ort.geometry import relative_boxes

log = logging.getLogger(__name__)

FAMILIES = ("encoder_self", "decoder_self", "cross")
ALIGNS = ("predict", "input")
ROW_FIELDS = ("analysis", "family", "layer", "head", "value", "count")
REQUIRED = ("features", "boxes", "region_mask", "image_size", "captions", "caption_lengths", "caption_mask")
# Appendix B of Ilinykh & Dobnik (2022): spatial words never linked to an object; and pronouns.
SPATIAL_WORDS = frozenset({"right", "left", "top", "bottom", "back", "front", "far", "close", "side", "background",
                           "foreground", "middle", "corner"})
PRONOUNS = frozenset({"i", "me", "you", "he", "him", "she", "her", "it", "we", "us", "they", "them", "this", "that",
                      "these", "those", "one", "ones", "something", "someone", "itself", "themselves"})
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


# ---------------------------------------------------------------------------------------------- links for COCO


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(w for w in (t.strip(string.punctuation) for t in text.lower().split()) if w)


class LabelLinker:
    """Noun-phrase -> region links by label matching, for data without gold links (COCO with detector classes).

    Rule (jaxvl's; no parser works offline here, see ``jaxvl.ablation.labelmatch``):

    1. a head noun is a run of caption words equal to a synonym of a detector label (the longest run
       ending at a word; the last word may also match in the singular: ``-s``, ``-es``, ``-ies`` -> ``-y``);
       a run inside a longer one, and a run directly followed by another (a noun-noun compound: the head
       is the last noun), are dropped; spatial words (the paper's Appendix B) and pronouns are never heads;
    2. the phrase's tokens are the head noun's words (determiners and adjectives are not attached);
    3. it is linked to every valid region whose detector class (``objects_id``) is a label it matches, with
       confidence ``objects_conf >= min_conf`` (ties link to all, as in the paper).

    Phrases without a linked region are dropped; past ``max_phrases`` per caption too (counted in
    ``dropped``). ``labels``: the detector's labels in (K+1)-space order, background first, each a
    comma-separated synonym list (Visual Genome's ``objects_vocab.txt`` lines, a dataset's ``label_list``).
    ``__call__(batch)`` -> ``phrase_spans`` [B, C, P, 2] int32, ``phrase_regions`` [B, C, P, R] bool.
    """

    def __init__(self, vocab: CaptionVocab, labels: Sequence[str], max_phrases: int = 8, min_conf: float = 0.0):
        if max_phrases < 1:
            raise ValueError(f"max_phrases={max_phrases} must be >= 1")
        self.vocab, self.max_phrases, self.min_conf = vocab, max_phrases, min_conf
        self.by_synonym: dict[tuple[str, ...], set[int]] = {}
        for index, label in enumerate(labels):
            for synonym in label.split(",") if index else ():
                words = _tokens(synonym)
                if words and not (len(words) == 1 and words[0] in SPATIAL_WORDS | PRONOUNS):
                    self.by_synonym.setdefault(words, set()).add(index - 1)  # K-space
        if not self.by_synonym:
            raise ValueError("LabelLinker: no usable label (expected background first, then the detector's labels)")
        self.longest = max(map(len, self.by_synonym))
        self.dropped = 0

    def _lookup(self, words: tuple[str, ...]) -> set[int]:
        found = self.by_synonym.get(words)
        if found:
            return found
        last = words[-1]
        for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
            if last.endswith(suffix) and len(last) > len(suffix) + 1:
                found = self.by_synonym.get((*words[:-1], last[:-len(suffix)] + repl))
                if found:
                    return found
        return set()

    def heads(self, words: Sequence[str]) -> list[tuple[int, int, frozenset[int]]]:
        """Head nouns of a caption's words: (start, end, K-space labels), rule steps 1-2."""
        words = tuple(w.lower() for w in words)
        found = []
        for end in range(1, len(words) + 1):
            for start in range(max(0, end - self.longest), end):
                labels = self._lookup(words[start:end])
                if labels:
                    found.append((start, end, frozenset(labels)))
                    break
        out = []
        for i, (start, end, labels) in enumerate(found):
            inside = any(s <= start and end <= e and (s, e) != (start, end) for s, e, _ in found)
            compound = i + 1 < len(found) and found[i + 1][0] == end
            if not inside and not compound:
                out.append((start, end, labels))
        return out

    def __call__(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        for key in ("objects_id", "objects_conf"):
            if key not in batch:
                raise ValueError(f"LabelLinker needs the batch's {key!r} (a dataset with detector classes, read with "
                                 "CaptionPipelineConfig(analysis_fields=True))")
        captions, lengths = np.asarray(batch["captions"]), np.asarray(batch["caption_lengths"])
        ids, conf = np.asarray(batch["objects_id"]), np.asarray(batch["objects_conf"])
        valid = np.asarray(batch["region_mask"]).astype(bool) & (conf >= self.min_conf)
        b, c = captions.shape[:2]
        spans = np.zeros((b, c, self.max_phrases, 2), np.int32)
        regions = np.zeros((b, c, self.max_phrases, ids.shape[1]), bool)
        for i in range(b):
            for j in range(c):
                words = [self.vocab.word_of(int(t)) for t in captions[i, j, 1:1 + lengths[i, j]]]
                p = 0
                for start, end, labels in self.heads(words):
                    linked = valid[i] & np.isin(ids[i], list(labels))
                    if not linked.any():
                        continue
                    if p == self.max_phrases:
                        self.dropped += 1
                        continue
                    spans[i, j, p] = start, end
                    regions[i, j, p] = linked
                    p += 1
        return spans, regions


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


def _rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []

    def grid(analysis: str, family: str, values: np.ndarray, count: int) -> None:
        for (layer, head), v in np.ndenumerate(values):
            rows.append(dict(analysis=analysis, family=family, layer=layer + 1, head=head + 1, value=float(v),
                             count=int(count)))

    for family in FAMILIES:
        grid("entropy", family, results["entropy"][family], results["queries"][family])
    if results["grounding"] is not None:
        grid("grounding", "cross", results["grounding"], results["phrase_tokens"])
        rows.append(dict(analysis="grounding_chance", family="cross", layer=None, head=None,
                         value=results["grounding_chance"], count=results["phrase_tokens"]))
    for name, values in results["spearman"].items():
        if values is not None:
            grid(f"spearman_{name}", "encoder_self", values, results["pairs"][name])
    return rows


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
    results["rows"] = _rows(results)
    if out_dir is not None:
        write_report(results, out_dir)
    return results


# ---------------------------------------------------------------------------------------------- report


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Writes the tidy rows (CSV, JSONL), a markdown summary with the notes, and the PNG plots; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f) for name, f in (
        ("csv", "caption_attention.csv"), ("jsonl", "caption_attention.jsonl"), ("summary", "caption_attention.md"),
        ("entropy", "entropy.png"), ("grounding", "grounding.png"), ("correlations", "correlations.png"))}
    rows = results["rows"]
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ROW_FIELDS)
        writer.writeheader()
        writer.writerows({k: "" if r[k] is None else r[k] for k in ROW_FIELDS} for r in rows)
    with open(paths["jsonl"], "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: _json_value(r[k]) for k in ROW_FIELDS}) + "\n")
    with open(paths["summary"], "w", encoding="utf-8") as f:
        f.write(_summary(results))
    _plot_entropy(results, paths["entropy"])
    if results["grounding"] is None:
        del paths["grounding"]
    else:
        _plot_grounding(results, paths["grounding"])
    _plot_correlations(results, paths["correlations"])
    return paths


def _per_layer(values: np.ndarray) -> str:
    """Mean over the finite heads of each layer, as ``a | b | ...``."""
    means = [float(np.mean(row[np.isfinite(row)])) if np.isfinite(row).any() else None for row in values]
    return " / ".join("n/a" if m is None else f"{m:.3f}" for m in means)


def _summary(results: Mapping[str, Any]) -> str:
    lines = ["# Caption attention analyses", "", f"{results['images']} images, {results['captions']} captions, "
             f"teacher-forced (align={results['align']!r}).", "", "## Operationalisations", ""]
    lines += [f"- {n}" for n in results["notes"]]
    lines += ["", "## Means over heads, per layer (layer 1 first)", "", "| analysis | family | per layer | count |",
              "| --- | --- | --- | --- |"]
    for family in FAMILIES:
        entropy, n = _per_layer(results["entropy"][family]), results["queries"][family]
        lines.append(f"| entropy | {family} | {entropy} | {n} |")
    if results["grounding"] is not None:
        lines.append(f"| grounding | cross | {_per_layer(results['grounding'])} | {results['phrase_tokens']} |")
        lines.append(f"| grounding_chance | cross | {results['grounding_chance']:.3f} | {results['phrase_tokens']} |")
    for name, values in results["spearman"].items():
        if values is not None:
            lines.append(f"| spearman_{name} | encoder_self | {_per_layer(values)} | {results['pairs'][name]} |")
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend state

    return Figure(figsize=(width, height), dpi=100)


def _layer_panel(ax, values: np.ndarray, title: str, ylabel: str) -> None:
    """Per-layer mean over heads (line), each head (points) and the heads' min-max band."""
    layers = np.arange(1, values.shape[0] + 1)
    finite = np.isfinite(values).any(axis=1)
    if finite.any():
        ax.fill_between(layers[finite], np.nanmin(values[finite], 1), np.nanmax(values[finite], 1), alpha=0.2)
        ax.plot(layers[finite], np.nanmean(values[finite], 1), marker="o", label="mean over heads")
    for h in range(values.shape[1]):
        ax.scatter(layers, values[:, h], s=10, alpha=0.6)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)


def _plot_entropy(results: Mapping[str, Any], path: str) -> None:
    fig = _figure(4.0 * len(FAMILIES), 3.5)
    for i, family in enumerate(FAMILIES):
        ax = fig.add_subplot(1, len(FAMILIES), i + 1)
        _layer_panel(ax, results["entropy"][family], f"{family} ({results['queries'][family]} queries)",
                     "normalised entropy")
        ax.set_ylim(0, 1.05)
    fig.suptitle("Attention entropy per layer (points: heads; jaxvl operationalisation of Eq. 5)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def _plot_grounding(results: Mapping[str, Any], path: str) -> None:
    values = results["grounding"]
    fig = _figure(max(4.0, 1.0 + 0.7 * values.shape[1]), max(3.0, 1.2 + 0.5 * values.shape[0]))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (layer, head), v in np.ndenumerate(values):
        ax.text(head, layer, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if np.isfinite(v) and v < 0.6 else "black")
    ax.set_xticks(range(values.shape[1]), [str(h + 1) for h in range(values.shape[1])])
    ax.set_yticks(range(values.shape[0]), [str(layer + 1) for layer in range(values.shape[0])])
    ax.set_xlabel("head")
    ax.set_ylabel("decoder layer")
    ax.set_title(f"Cross-attention share on linked regions (Eq. 3)\nchance {results['grounding_chance']:.2f}, "
                 f"{results['phrase_tokens']} phrase tokens", fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path)


def _plot_correlations(results: Mapping[str, Any], path: str) -> None:
    panels = [(name, v) for name, v in results["spearman"].items() if v is not None]
    fig = _figure(4.5 * len(panels), 3.5)
    for i, (name, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _layer_panel(ax, values, f"encoder attention vs {name} ({results['pairs'][name]} pairs)", "Spearman rho")
        ax.axhline(0.0, color="grey", lw=0.8)
    fig.suptitle("Encoder self-attention correlations per layer (jaxvl operationalisation)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
