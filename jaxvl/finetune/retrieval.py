"""Image-text retrieval scoring: N captions x M images in compiled blocks, top-k and ranks kept on device.

VOLTA's ``eval_retrieval.py`` fills a full [N, M] score matrix (Flickr30k test: 5,000 x 1,000) and ranks it.
``RetrievalProgram`` never holds that matrix: it scores a text block (``text_block`` captions) against an image
block (``image_block`` images) per compiled call and merges the block into running device state, all
O((N + M) k):

- per caption, the top-k images (scores and indices); per image, the top-k captions;
- per caption, the rank of its gold image (image retrieval, IR); per image, the rank of its best gold caption
  (text retrieval, TR): counts of the candidates that beat the gold score, block by block.

Counting needs the gold scores first. The captions are put in the order of their gold image (a stable sort, so
the blocks holding gold pairs form a narrow band), the band blocks run first and their [bt, bv] scores stay on
device (O(N x image_block + M x text_block) floats) until every gold score is known; then they are counted, and
every other block is scored, merged and counted in one compiled call. Each pair is scored exactly once, so the
gold scores are the very numbers the other candidates are compared with.

The top-k merge sorts each row's running list together with the block's scores by (score descending, index
ascending) (``jax.lax.sort`` with two keys, not ``jax.lax.top_k``, whose tie order is positional: this way the
lists are those of ``np.argsort(-scores, kind="stable")[:k]`` whatever the block order). Ranks follow
:mod:`jaxvl.metrics.retrieval` (``ties="stable"`` or ``"optimistic"``; VOLTA's formulas for R@K and ranks).

Scores: ``score_fn(VLOutput) -> [B]`` float32, higher = better. The default, ``itm_match_probability``, is VOLTA's
``--zero_shot`` score ``softmax(vil_logit)[:, 0]`` from the pretraining ITM head (index 0 = match); a fine-tuned
1-logit retrieval head passes its own. (In float32 the softmax saturates at 1.0 for logit gaps above ~17, which
makes ties; ``itm_log_odds`` ranks identically without saturating.)

Single-stream models run whole per pair; dual-stream models (``cfg.unimodal_prefix > 0``) run their unimodal
prefix once per caption and once per image, and per pair only the cross sub-layers and heads. The pair axis of a
block is split over the mesh's data axes; items, parameters and the running state are replicated. One compile per
(item array shapes, block shape, k).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.metrics.retrieval import best_gold_captions, check_caption_image, check_ties, retrieval_metrics
from jaxvl.models.volta.model import VLBertForPreTraining, VLOutput
from jaxvl.models.volta.pairing import PairForward
from jaxvl.runtime.sharding import DEFAULT_DATA_AXES, make_mesh, replicate, to_host

IMAGE_KEYS = ("features", "locations", "region_mask")
NO_INDEX = np.iinfo(np.int32).max  # the index of an empty top-k slot (sorts after every real index)
ScoreFn = Callable[[VLOutput], jax.Array]


def itm_match_probability(out: VLOutput) -> jax.Array:
    """VOLTA's zero-shot retrieval score: softmax of the ITM logits, probability of class 0 (match): [B] float32."""
    if out.itm_logits is None:
        raise ValueError("the model has no ITM head (fusion_method 'none'); pass another score function")
    return jax.nn.softmax(out.itm_logits.astype(jnp.float32), axis=-1)[:, 0]


def itm_log_odds(out: VLOutput) -> jax.Array:
    """log p(match) - log(1 - p(match)) of the ITM head ([B] float32): ranks as ``itm_match_probability`` without
    saturating."""
    if out.itm_logits is None:
        raise ValueError("the model has no ITM head (fusion_method 'none'); pass another score function")
    logp = jax.nn.log_softmax(out.itm_logits.astype(jnp.float32), axis=-1)
    return logp[:, 0] - jax.nn.logsumexp(logp[:, 1:], axis=-1)


def check_texts(texts: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``input_ids``, ``token_type_ids`` (default zeros) and ``text_mask``, all [N, Lt] int32; ValueError naming
    the key on a missing field, a bad shape or a caption with no real token."""
    for key in ("input_ids", "text_mask"):
        if key not in texts:
            raise ValueError(f"retrieval texts: missing '{key}'")
    ids = np.asarray(texts["input_ids"])
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"retrieval texts: 'input_ids' must be [N > 0, Lt], got shape {ids.shape}")
    tt = texts.get("token_type_ids")
    out = {"input_ids": ids.astype(np.int32),
           "token_type_ids": np.zeros_like(ids, np.int32) if tt is None else np.asarray(tt).astype(np.int32),
           "text_mask": np.asarray(texts["text_mask"]).astype(np.int32)}
    for key in ("token_type_ids", "text_mask"):
        if out[key].shape != ids.shape:
            raise ValueError(f"retrieval texts: '{key}' has shape {out[key].shape}, expected {ids.shape}")
    empty = np.flatnonzero(out["text_mask"].sum(1) == 0)
    if empty.size:
        raise ValueError(f"retrieval texts: 'text_mask' of caption {int(empty[0])} has no real token")
    return out


def check_images(images: Mapping[str, Any], model: VLBertForPreTraining) -> dict[str, np.ndarray]:
    """``features`` [M, Lv, v_feature_size] and ``locations`` [M, Lv, num_locs] float32, ``region_mask`` [M, Lv]
    int32; ValueError naming the key on a missing field, a bad shape or an image with no real region."""
    for key in IMAGE_KEYS:
        if key not in images:
            raise ValueError(f"retrieval images: missing '{key}'")
    feats = np.asarray(images["features"], np.float32)
    cfg = model.cfg
    if feats.ndim != 3 or feats.shape[0] == 0 or feats.shape[2] != cfg.v_feature_size:
        raise ValueError(f"retrieval images: 'features' must be [M > 0, Lv, {cfg.v_feature_size}], got {feats.shape}")
    m, lv = feats.shape[:2]
    out = {"features": feats, "locations": np.asarray(images["locations"], np.float32),
           "region_mask": np.asarray(images["region_mask"]).astype(np.int32)}
    if out["locations"].shape != (m, lv, cfg.num_locs):
        raise ValueError(f"retrieval images: 'locations' has shape {out['locations'].shape}, expected "
                         f"{(m, lv, cfg.num_locs)}")
    if out["region_mask"].shape != (m, lv):
        raise ValueError(f"retrieval images: 'region_mask' has shape {out['region_mask'].shape}, expected {(m, lv)}")
    empty = np.flatnonzero(out["region_mask"].sum(1) == 0)
    if empty.size:
        raise ValueError(f"retrieval images: 'region_mask' of image {int(empty[0])} has no real region")
    return out


def merge_topk(top_scores: jax.Array, top_index: jax.Array, scores: jax.Array, index: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """Running top-k [R, k] (scores float32, indices int32) merged with a block's candidates (scores [R, C],
    indices [C] or [R, C]; padding: score -inf, index ``NO_INDEX``) -> the new top-k [R, k], ordered by score
    descending, then index ascending."""
    k = top_scores.shape[1]
    index = jnp.broadcast_to(index, scores.shape).astype(jnp.int32)
    s = jnp.concatenate([top_scores, scores.astype(jnp.float32) + 0.0], axis=1)  # + 0.0: -0.0 -> 0.0
    i = jnp.concatenate([top_index, index], axis=1)
    neg, i = jax.lax.sort((-s, i), dimension=1, num_keys=2)
    return -neg[:, :k], i[:, :k]


def count_ahead(scores: jax.Array, gold: jax.Array, gold_index: jax.Array, index: jax.Array, valid: jax.Array,
                stable: bool) -> jax.Array:
    """[R, C] scores, per row the gold score [R] and gold candidate index [R], candidate indices [C] or [R, C],
    valid [R, C] -> [R] int32: how many valid candidates rank ahead of the gold one (higher score; under
    ``stable`` also an equal score at a lower index)."""
    ahead = scores > gold[:, None]
    if stable:
        ahead |= (scores == gold[:, None]) & (index < gold_index[:, None])
    return (ahead & valid).sum(1).astype(jnp.int32)


def gold_scores(blocks: Mapping[tuple[int, int], np.ndarray], order: np.ndarray, caption_image: np.ndarray
                ) -> np.ndarray:
    """The score of every caption with its gold image [N], read off the band blocks {(t0, i0): scores [bt, bv]}
    (text rows in caption order ``order``); ValueError on a NaN or a gold pair no block holds."""
    n = len(order)
    gold = np.full(n, np.nan, np.float32)
    for (t0, i0), block in blocks.items():
        rows = np.arange(t0, min(t0 + block.shape[0], n))
        image = caption_image[order[rows]]
        held = (image >= i0) & (image < i0 + block.shape[1])
        gold[order[rows[held]]] = block[rows[held] - t0, image[held] - i0]
    if np.isnan(gold).any():
        raise ValueError(f"retrieval: the score of caption {int(np.flatnonzero(np.isnan(gold))[0])} with its gold "
                         "image is NaN (or no band block held the pair)")
    return gold


def gold_targets(gold: np.ndarray, order: np.ndarray, caption_image: np.ndarray, rows_t: int, rows_v: int
                 ) -> dict[str, np.ndarray]:
    """What the rank counts compare with, padded to the text rows ``rows_t`` (in caption order ``order``) and the
    image rows ``rows_v``: ``gold`` / ``gold_image`` per text row, ``best_gold`` / ``best_caption`` per image (the
    score and index of its first-ranked gold caption)."""
    n, m = len(order), int(caption_image.max()) + 1
    best = best_gold_captions(gold, caption_image, m)
    out = {"gold": np.zeros(rows_t, np.float32), "gold_image": np.zeros(rows_t, np.int32),
           "best_gold": np.zeros(rows_v, np.float32), "best_caption": np.zeros(rows_v, np.int32)}
    out["gold"][:n], out["gold_image"][:n] = gold[order], caption_image[order]
    out["best_gold"][:m], out["best_caption"][:m] = gold[best], best
    return out


@dataclasses.dataclass(frozen=True)
class RetrievalResult:
    """What ``RetrievalProgram`` returns (host numpy; caption and image indices as given).

    ``text_topk_images`` / ``text_topk_scores`` [N, k]: per caption its k best images; ``image_topk_captions`` /
    ``image_topk_scores`` [M, k]: per image its k best captions (score descending, index ascending among equals);
    ``image_ranks`` [N] (IR) and ``text_ranks`` [M] (TR), 0-based; ``gold_scores`` [N] each caption's score with
    its gold image; ``caption_image`` [N]; ``ties`` the rank rule.
    """

    text_topk_images: np.ndarray
    text_topk_scores: np.ndarray
    image_topk_captions: np.ndarray
    image_topk_scores: np.ndarray
    image_ranks: np.ndarray
    text_ranks: np.ndarray
    gold_scores: np.ndarray
    caption_image: np.ndarray
    ties: str

    def metrics(self) -> dict[str, float]:
        """``ir_r1`` .. ``ir_meanr`` and ``tr_r1`` .. ``tr_meanr``, as VOLTA's ``eval_retrieval.py``."""
        return retrieval_metrics(self.image_ranks, self.text_ranks)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([x, np.repeat(x[:1], rows - x.shape[0], 0)]) if rows > x.shape[0] else x


class RetrievalProgram:
    """``program(variables, texts, images, caption_image) -> RetrievalResult`` for ``model`` on ``mesh``.

    ``texts``: ``input_ids``, ``text_mask`` (and optional ``token_type_ids``) [N, Lt]; ``images``: ``features``
    [M, Lv, D], ``locations`` [M, Lv, num_locs], ``region_mask`` [M, Lv]; ``caption_image`` [N] each caption's
    gold image. Items keep their own padding, which the masks remove. ``k``: the length of the top-k lists
    (<= M). ``text_block * image_block`` pairs per compiled call must divide over the mesh's ``data_axes``
    devices. ``cache_prefix`` (default: whether the model has a unimodal prefix) runs dual-stream models' prefix
    once per item; False runs the whole model per pair. ``ties``: "stable" or "optimistic"
    (:mod:`jaxvl.metrics.retrieval`). ``compiler_options``: XLA options (``FAST_COMPILE`` for tests).
    """

    def __init__(self, model: VLBertForPreTraining, mesh: Mesh | None = None, k: int = 10, text_block: int = 8,
                 image_block: int = 8, score_fn: ScoreFn = itm_match_probability, cache_prefix: bool | None = None,
                 ties: str = "stable", data_axes: tuple[str, ...] = DEFAULT_DATA_AXES,
                 compiler_options: dict[str, Any] | None = None):
        self.model, self.mesh = model, make_mesh() if mesh is None else mesh
        self.k, self.text_block, self.image_block = int(k), int(text_block), int(image_block)
        self.score_fn, self.ties = score_fn, check_ties(ties)
        if self.k < 1:
            raise ValueError(f"retrieval: 'k' must be >= 1, got {k}")
        self.forward = PairForward(model, self.mesh, self.text_block, self.image_block, cache_prefix, data_axes)
        self.cache_prefix, self.shards = self.forward.cache_prefix, self.forward.shards
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        # On the CPU backend (fake devices in tests) one block at a time: with many multi-device block programs
        # dispatched ahead, XLA CPU's shared thread pool could leave one device of a block's collective without a
        # thread, and the collective aborted the process after 40 s ("Termination timeout ... only 7 of them
        # arrived"). Accelerators keep dispatching ahead.
        self.one_in_flight = self.mesh.devices.flat[0].platform == "cpu"
        # No buffer donation: the running state is only O((N + M) k).
        jit = lambda f: jax.jit(f, out_shardings=self.replicated, compiler_options=compiler_options)  # noqa: E731
        self._prefixes = jit(self.forward.prefixes)
        self._scores = jit(self._block_scores)
        self._merge = jit(self._merge_block)
        self._count = jit(self._count_block)
        self._step = jit(self._step_block)

    # ----------------------------------------------------------------------------- traced programs

    def _block_scores(self, variables: Any, text: dict[str, jax.Array], image: dict[str, jax.Array],
                      t0: jax.Array, i0: jax.Array) -> jax.Array:
        """Padded item arrays (or their prefix streams) -> the scores [bt, bv] of texts t0.. x images i0.."""
        out = self.forward.block_output(variables, text, image, t0, i0)
        scores = self.score_fn(out).astype(jnp.float32).reshape(self.text_block, self.image_block)
        # Replicated before the top-k merge: left split over the pair axis, XLA partitions the merge's concatenate
        # with an all-to-all, which on the CPU backend with fake devices could wait forever for one device's
        # thread (aborted after 40 s: "Termination timeout for `all to all`"); an all-gather of bt x bv floats does not.
        return jax.lax.with_sharding_constraint(scores, self.replicated)

    def _merge_block(self, state: dict[str, jax.Array], scores: jax.Array, ids: dict[str, jax.Array],
                     t0: jax.Array, i0: jax.Array) -> dict[str, jax.Array]:
        """Merges a block's scores [bt, bv] into the running top-k lists (padding masked by ``ids``)."""
        bt, bv = self.text_block, self.image_block
        tid = jax.lax.dynamic_slice_in_dim(ids["caption"], t0, bt)  # original caption index, NO_INDEX = padding
        iid = i0 + jnp.arange(bv, dtype=jnp.int32)
        iid = jnp.where(iid < ids["num_images"], iid, NO_INDEX)
        valid = (tid < NO_INDEX)[:, None] & (iid < NO_INDEX)[None, :]
        s = jnp.where(valid, scores, -jnp.inf)
        ts, ti = merge_topk(jax.lax.dynamic_slice_in_dim(state["text_s"], t0, bt),
                            jax.lax.dynamic_slice_in_dim(state["text_i"], t0, bt), s, iid)
        vs, vi = merge_topk(jax.lax.dynamic_slice_in_dim(state["image_s"], i0, bv),
                            jax.lax.dynamic_slice_in_dim(state["image_i"], i0, bv), s.T, tid)
        return {**state, "text_s": jax.lax.dynamic_update_slice_in_dim(state["text_s"], ts, t0, 0),
                "text_i": jax.lax.dynamic_update_slice_in_dim(state["text_i"], ti, t0, 0),
                "image_s": jax.lax.dynamic_update_slice_in_dim(state["image_s"], vs, i0, 0),
                "image_i": jax.lax.dynamic_update_slice_in_dim(state["image_i"], vi, i0, 0)}

    def _count_block(self, state: dict[str, jax.Array], scores: jax.Array, ids: dict[str, jax.Array],
                     t0: jax.Array, i0: jax.Array) -> dict[str, jax.Array]:
        """Adds a block's candidates that beat the gold scores to the IR and TR rank counts."""
        bt, bv = self.text_block, self.image_block
        tid = jax.lax.dynamic_slice_in_dim(ids["caption"], t0, bt)
        iid = i0 + jnp.arange(bv, dtype=jnp.int32)
        valid = (tid < NO_INDEX)[:, None] & (iid < ids["num_images"])[None, :]
        stable = self.ties == "stable"
        ir = count_ahead(scores, jax.lax.dynamic_slice_in_dim(ids["gold"], t0, bt),
                         jax.lax.dynamic_slice_in_dim(ids["gold_image"], t0, bt), iid[None, :], valid, stable)
        tr = count_ahead(scores.T, jax.lax.dynamic_slice_in_dim(ids["best_gold"], i0, bv),
                         jax.lax.dynamic_slice_in_dim(ids["best_caption"], i0, bv), tid[None, :], valid.T, stable)
        return {**state,
                "ir": jax.lax.dynamic_update_slice_in_dim(
                    state["ir"], jax.lax.dynamic_slice_in_dim(state["ir"], t0, bt) + ir, t0, 0),
                "tr": jax.lax.dynamic_update_slice_in_dim(
                    state["tr"], jax.lax.dynamic_slice_in_dim(state["tr"], i0, bv) + tr, i0, 0)}

    def _step_block(self, state: dict[str, jax.Array], variables: Any, text: dict[str, jax.Array],
                    image: dict[str, jax.Array], ids: dict[str, jax.Array], t0: jax.Array, i0: jax.Array
                    ) -> dict[str, jax.Array]:
        """A block off the gold band: scored, merged and counted in one call."""
        scores = self._block_scores(variables, text, image, t0, i0)
        return self._count_block(self._merge_block(state, scores, ids, t0, i0), scores, ids, t0, i0)

    # ----------------------------------------------------------------------------- host driver

    def __call__(self, variables: Any, texts: Mapping[str, Any], images: Mapping[str, Any],
                 caption_image: np.ndarray | list[int], progress: Callable[[int], Any] | None = None
                 ) -> RetrievalResult:
        """Scores all N x M pairs; ``variables`` as from ``model.init`` (or the params tree). ``progress(pairs)``
        is called after each block is dispatched with the real pairs it holds."""
        texts, images = check_texts(texts), check_images(images, self.model)
        n, m = texts["input_ids"].shape[0], images["features"].shape[0]
        caption_image = check_caption_image(caption_image, m)
        if caption_image.shape[0] != n:
            raise ValueError(f"retrieval: 'caption_image' has {caption_image.shape[0]} captions, 'input_ids' {n}")
        if self.k > m:
            raise ValueError(f"retrieval: 'k' = {self.k} exceeds the {m} images")
        bt, bv = self.text_block, self.image_block
        rows_t, rows_v = -(-n // bt) * bt, -(-m // bv) * bv
        order = np.argsort(caption_image, kind="stable")  # text row p holds caption order[p]
        text = {key: _pad_rows(x[order], rows_t) for key, x in texts.items()}
        image = {key: _pad_rows(x, rows_v) for key, x in images.items()}
        caption = np.full(rows_t, NO_INDEX, np.int32)
        caption[:n] = order

        variables = nn.meta.unbox(variables)
        variables = variables if "params" in variables else {"params": variables}
        variables = jax.device_put(variables, self.replicated)
        text, image = replicate(text, self.replicated), replicate(image, self.replicated)
        k = self.k
        state = replicate({"text_s": np.full((rows_t, k), -np.inf, np.float32),
                            "text_i": np.full((rows_t, k), NO_INDEX, np.int32),
                            "image_s": np.full((rows_v, k), -np.inf, np.float32),
                            "image_i": np.full((rows_v, k), NO_INDEX, np.int32),
                            "ir": np.zeros(rows_t, np.int32), "tr": np.zeros(rows_v, np.int32)}, self.replicated)
        ids = {"caption": caption, "num_images": np.int32(m)}

        def report(t0: int, i0: int) -> None:
            if progress is not None:
                progress((min(t0 + bt, n) - t0) * (min(i0 + bv, m) - i0))

        band = sorted({(t0, int(g) // bv * bv) for t0 in range(0, n, bt) for g in caption_image[order[t0:t0 + bt]]})
        with jax.set_mesh(self.mesh):
            if self.cache_prefix:
                tp, vp = self._prefixes(variables, text, image)
                text = {"prefix": tp, "text_mask": text["text_mask"]}
                image = {"prefix": vp, "region_mask": image["region_mask"]}
            ids_dev = replicate(ids, self.replicated)
            stash = {}
            for t0, i0 in band:  # the gold pairs' blocks: scored, merged and kept until every gold score is known
                stash[t0, i0] = self._scores(variables, text, image, np.int32(t0), np.int32(i0))
                state = self._merge(state, stash[t0, i0], ids_dev, np.int32(t0), np.int32(i0))
                if self.one_in_flight:
                    state = jax.block_until_ready(state)
                report(t0, i0)
            gold_by_caption = gold_scores({key: to_host(block) for key, block in stash.items()}, order, caption_image)
            ids.update(gold_targets(gold_by_caption, order, caption_image, rows_t, rows_v))
            ids_dev = replicate(ids, self.replicated)
            for (t0, i0), block in stash.items():
                state = self._count(state, block, ids_dev, np.int32(t0), np.int32(i0))
            stashed = set(stash)
            stash.clear()
            for t0 in range(0, n, bt):
                for i0 in range(0, m, bv):
                    if (t0, i0) not in stashed:
                        state = self._step(state, variables, text, image, ids_dev, np.int32(t0), np.int32(i0))
                        if self.one_in_flight:
                            state = jax.block_until_ready(state)
                        report(t0, i0)
            out = to_host(state)

        def by_caption(x: np.ndarray) -> np.ndarray:
            y = np.empty_like(x[:n])
            y[order] = x[:n]
            return y

        return RetrievalResult(
            text_topk_images=by_caption(out["text_i"]).astype(np.int64), text_topk_scores=by_caption(out["text_s"]),
            image_topk_captions=out["image_i"][:m].astype(np.int64), image_topk_scores=out["image_s"][:m],
            image_ranks=by_caption(out["ir"]).astype(np.int64), text_ranks=out["tr"][:m].astype(np.int64),
            gold_scores=gold_by_caption, caption_image=caption_image, ties=self.ties)
