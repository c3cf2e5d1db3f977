"""Caption decoding for the ORT captioner: greedy, sampling and beam search, compiled with fixed shapes.

Every method is one ``jax.jit`` program over a fixed ``max_len``: the encoder runs once per image,
``Captioner.init_cache`` computes the cross-attention keys/values once per image, and that cache is
tiled to the n samples / k beams (rows ``b * n + j``); the loop is a ``lax.while_loop`` over positions
whose body calls ``Captioner.decode_step`` (decoder self-attention key/value cache). A new batch of
the same shapes, a new rng, temperature or length penalty reuse the compiled program; ``model``,
``max_len``, the beam/sample count, ``top_k`` and ``block_unk`` are compile-time constants.

Conventions (ORT's vocabulary, ``jaxvl.data.caption_vocab``): token 0 is BOS, EOS and padding; UNK is
the last id (``vocab_size - 1``). Outputs (``DecodeOutput``) hold the generated tokens only (no BOS):
``tokens`` [B, n, max_len] int32 with 0 at the EOS and after it; ``mask`` [B, n, max_len] float32, 1
through the first EOS (ORT's ``RewardCriterion`` mask: ``[1, tokens[:-1] > 0]`` cumulated); and
``token_log_probs`` the model's log p of each generated token (0 where ``mask`` is 0). A sequence that
reaches ``max_len`` without an EOS stops there (ORT's ``seq_length``).

- ``greedy``: argmax at every step (``sample_max=1``); stops when every row has emitted EOS.
- ``sample``: ``n`` samples per image from ``softmax(log p / temperature)``, optionally restricted
  to the ``top_k`` most likely tokens. ``token_log_probs`` are the model's own log p (temperature 1,
  no top-k renormalisation), as ORT records them: what the SCST loss needs, equal to the
  teacher-forced log-probs of the sample. ``sample_and_greedy`` gives SCST's samples and its greedy
  baseline from one encoder pass and one loop.
- ``beam_search``: ORT's ``CaptionModel.beam_search`` (one group, no diversity) with fixed shapes. Each
  step takes the top k of the k x V expansions of the live beams (at step 0 only beam 0 is live, as
  ORT's ``rows = 1``); a chosen expansion that emits EOS, or any at the last position, moves to the
  finished set (its slot dies, ORT's ``-1000``) and the other slots are refilled from the live beams'
  expansions next step. The finished set keeps the best k by score ``log p / lp(len)`` with GNMT's
  ``lp(len) = ((5 + len) / 6) ** alpha`` (``len`` counts the generated tokens including the EOS);
  ``alpha = 0`` is ORT's plain sum of log-probs. The loop stops early once, for every image, no live
  beam can reach the k-th finished score (bound ``max(live log p) / lp(max_len)``, log-probs only
  decrease), so all k returned beams equal those of a full-length run. Beams come sorted, best first.
  ``beam_size`` may exceed the vocabulary (ORT asserts it does not): slots without a candidate stay
  empty (score -inf, tokens 0). Only the self-attention cache is regathered per step; the cross
  keys/values are the same for all beams of an image.

UNK is blocked by default (``block_unk``): its log-prob is set to ``-inf`` before choosing, in every
method. ORT subtracts 1000 from it in beam search only (its greedy and sampling paths leave UNK
allowed); ``block_unk=False`` gives ORT's greedy/sampling, and -inf instead of -1000 only differs when
fewer than k non-UNK expansions exist. Decoding is deterministic (dropout off): ORT samples for SCST in
train mode, with dropout.

``decode_captions`` turns a caption-pipeline batch into strings; ``write_coco_results`` writes them as
COCO's result JSON (``[{"image_id": ..., "caption": ...}]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxvl.data.caption_vocab import CaptionVocab, VocabMismatch
from jaxvl.models.ort.captioner import Captioner, DecodeCache
from jaxvl.models.ort.geometry import relative_boxes

EOS = 0  # also BOS and padding
METHODS = ("greedy", "sample", "beam")


@struct.dataclass
class DecodeOutput:
    """Decoded sequences, k (beams) or n (samples) per image, best beam first.

    ``tokens`` [B, k, T] int32 (0 from the EOS on); ``token_log_probs`` [B, k, T] float32 (model log p of
    each token, 0 where ``mask`` is 0); ``mask`` [B, k, T] float32 (1 through the first EOS);
    ``log_probs`` [B, k] float32 (sum of ``token_log_probs``); ``scores`` [B, k] float32 (what beam search
    ranks by: ``log_probs / lp(length)``; equal to ``log_probs`` for greedy and sampling); ``steps`` []
    int32 (decoder steps run, at most T).
    """

    tokens: jax.Array
    token_log_probs: jax.Array
    mask: jax.Array
    log_probs: jax.Array
    scores: jax.Array
    steps: jax.Array

    @property
    def lengths(self) -> jax.Array:
        """[B, k] int32: tokens up to and including the EOS (T without one)."""
        return self.mask.sum(-1).astype(jnp.int32)


def length_penalty(length: jax.Array, alpha: jax.Array | float) -> jax.Array:
    """GNMT's ``((5 + length) / 6) ** alpha`` (exactly 1 for alpha = 0)."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** jnp.asarray(alpha, jnp.float32)


def sequence_mask(tokens: jax.Array) -> jax.Array:
    """[..., T] generated tokens -> [..., T] float32: 1 at positions up to and including the first 0."""
    before = jnp.concatenate([jnp.ones_like(tokens[..., :1], bool), tokens[..., :-1] > 0], axis=-1)
    return jnp.cumprod(before, axis=-1).astype(jnp.float32)


# ------------------------------------------------------------------------------------------ shared steps


def _as_variables(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept ``{"params": tree}`` (what ``model.apply`` takes) or the bare parameter tree."""
    return params if "params" in params else {"params": params}


def _encode_tiled(model: Captioner, variables, features, boxes, mask, copies: int, max_len: int) -> DecodeCache:
    """Encoder and cross keys/values once per image, then every cache leaf repeated ``copies`` times
    (rows ``b * copies + j``)."""
    memory = model.apply(variables, features, boxes, mask, method="encode")
    cache = model.apply(variables, memory, mask, max_len, method="init_cache")
    return jax.tree.map(lambda x: jnp.repeat(x, copies, axis=0), cache)


def _step(model: Captioner, variables, cache: DecodeCache, token: jax.Array, position: jax.Array,
          block_unk: bool) -> tuple[jax.Array, jax.Array, DecodeCache]:
    """One cached decoder step -> (model log-probs [N, V], the same with UNK blocked, cache)."""
    log_probs, cache = model.apply(variables, cache, token, position, method="decode_step")
    blocked = log_probs.at[:, -1].set(-jnp.inf) if block_unk else log_probs
    return log_probs, blocked, cache


def _top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep the k largest entries of each row (ties with the k-th kept), the rest -inf."""
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


# ------------------------------------------------------------------------------------------ greedy / sampling


@partial(jax.jit, static_argnames=("model", "max_len", "copies", "num_greedy", "top_k", "block_unk"))
def _sample_loop(model: Captioner, variables, features, boxes, mask, rng, temperature, *, max_len: int, copies: int,
                 num_greedy: int, top_k: int | None, block_unk: bool) -> DecodeOutput:
    """``copies`` rows per image; the first ``num_greedy`` of each image decode greedily, the rest sample."""
    cache = _encode_tiled(model, variables, features, boxes, mask, copies, max_len)
    rows = features.shape[0] * copies
    greedy_rows = jnp.tile(jnp.arange(copies) < num_greedy, features.shape[0])
    temperature = jnp.asarray(temperature, jnp.float32)

    def body(state):
        t, tokens, token_lp, done, cache = state
        prev = jnp.where(t == 0, EOS, jax.lax.dynamic_index_in_dim(tokens, t - 1, axis=1, keepdims=False))
        log_probs, blocked, cache = _step(model, variables, cache, prev, t, block_unk)
        token = jnp.argmax(blocked, axis=-1)
        if num_greedy < copies:
            logits = blocked / temperature
            if top_k is not None:
                logits = _top_k_filter(logits, top_k)
            drawn = jax.random.categorical(jax.random.fold_in(rng, t), logits, axis=-1)
            token = jnp.where(greedy_rows, token, drawn)
        lp = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
        token = jnp.where(done, EOS, token).astype(jnp.int32)
        lp = jnp.where(done, 0.0, lp)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, t, axis=1)
        token_lp = jax.lax.dynamic_update_index_in_dim(token_lp, lp, t, axis=1)
        return t + 1, tokens, token_lp, done | (token == EOS), cache

    def cond(state):
        t, _, _, done, _ = state
        return (t < max_len) & ~jnp.all(done)

    init = (jnp.int32(0), jnp.zeros((rows, max_len), jnp.int32), jnp.zeros((rows, max_len), jnp.float32),
            jnp.zeros((rows,), bool), cache)
    steps, tokens, token_lp, _, _ = jax.lax.while_loop(cond, body, init)
    shape = (features.shape[0], copies, max_len)
    tokens, token_lp = tokens.reshape(shape), token_lp.reshape(shape)
    log_probs = token_lp.sum(-1)
    return DecodeOutput(tokens=tokens, token_log_probs=token_lp, mask=sequence_mask(tokens), log_probs=log_probs,
                        scores=log_probs, steps=steps)


# ------------------------------------------------------------------------------------------ beam search


def _gather_beams(x: jax.Array, beam: jax.Array) -> jax.Array:
    """x [B * k, ...] (rows ``b * k + j``), beam [B, k] parent indices -> x's rows of each image's parents. The
    image axis stays a batch axis (no cross-image gather), so a batch-sharded cache stays local."""
    batch, k = beam.shape
    rows = x.reshape(batch, k, *x.shape[1:])
    index = beam.reshape(batch, k, *(1,) * (x.ndim - 1))
    return jnp.take_along_axis(rows, index, axis=1).reshape(x.shape)


@partial(jax.jit, static_argnames=("model", "max_len", "beam_size", "block_unk"))
def _beam_loop(model: Captioner, variables, features, boxes, mask, alpha, *, max_len: int, beam_size: int,
               block_unk: bool) -> DecodeOutput:
    batch, k = features.shape[0], beam_size
    cache = _encode_tiled(model, variables, features, boxes, mask, k, max_len)
    alpha = jnp.asarray(alpha, jnp.float32)
    neg_inf = jnp.float32(-jnp.inf)

    def body(state):
        t, live_tokens, live_token_lp, live_lp, fin_tokens, fin_token_lp, fin_lp, fin_scores, cache = state
        prev = jnp.where(t == 0, EOS, jax.lax.dynamic_index_in_dim(live_tokens, t - 1, axis=2, keepdims=False))
        log_probs, blocked, cache = _step(model, variables, cache, prev.reshape(-1), t, block_unk)
        vocab = log_probs.shape[-1]
        log_probs, blocked = log_probs.reshape(batch, k, vocab), blocked.reshape(batch, k, vocab)
        cand_lp, flat = jax.lax.top_k((live_lp[..., None] + blocked).reshape(batch, k * vocab), k)
        beam, word = flat // vocab, (flat % vocab).astype(jnp.int32)
        word_lp = jnp.take_along_axis(log_probs.reshape(batch, k * vocab), flat, axis=1)

        def regather(x):  # [B, k, T] rows of the chosen parents, this step's entry written at t
            return jnp.take_along_axis(x, beam[..., None], axis=1)

        new_tokens = jax.lax.dynamic_update_index_in_dim(regather(live_tokens), word, t, axis=2)
        new_token_lp = jax.lax.dynamic_update_index_in_dim(regather(live_token_lp), word_lp, t, axis=2)
        ends = (word == EOS) | (t == max_len - 1)
        new_scores = jnp.where(ends & (cand_lp > neg_inf), cand_lp / length_penalty(t + 1, alpha), neg_inf)
        # finished set: the best k of (kept, new); top_k keeps the earlier entry first on ties, as ORT's stable sort
        fin_scores, pick = jax.lax.top_k(jnp.concatenate([fin_scores, new_scores], axis=1), k)

        def merge(old, new):
            both = jnp.concatenate([old, new], axis=1)
            return jnp.take_along_axis(both, pick.reshape(pick.shape + (1,) * (both.ndim - 2)), axis=1)

        fin_tokens, fin_token_lp = merge(fin_tokens, new_tokens), merge(fin_token_lp, new_token_lp)
        fin_lp = merge(fin_lp, jnp.where(new_scores > neg_inf, cand_lp, neg_inf))
        live_lp = jnp.where(ends, neg_inf, cand_lp)
        cache = cache.replace(self_k=tuple(_gather_beams(x, beam) for x in cache.self_k),
                              self_v=tuple(_gather_beams(x, beam) for x in cache.self_v))
        return t + 1, new_tokens, new_token_lp, live_lp, fin_tokens, fin_token_lp, fin_lp, fin_scores, cache

    def cond(state):
        t, live_lp, fin_scores = state[0], state[3], state[7]
        best_live = live_lp.max(axis=1)
        can_win = (best_live / length_penalty(max_len, alpha) >= fin_scores[:, -1]) & (best_live > neg_inf)
        return (t < max_len) & jnp.any(can_win)

    seqs = jnp.zeros((batch, k, max_len), jnp.int32)
    init = (jnp.int32(0), seqs, jnp.zeros(seqs.shape, jnp.float32),
            jnp.full((batch, k), neg_inf).at[:, 0].set(0.0), seqs, jnp.zeros(seqs.shape, jnp.float32),
            jnp.full((batch, k), neg_inf), jnp.full((batch, k), neg_inf), cache)
    steps, *_, fin_tokens, fin_token_lp, fin_lp, fin_scores, _ = jax.lax.while_loop(cond, body, init)
    return DecodeOutput(tokens=fin_tokens, token_log_probs=fin_token_lp, mask=sequence_mask(fin_tokens),
                        log_probs=fin_lp, scores=fin_scores, steps=steps)


# ------------------------------------------------------------------------------------------ public API


def _check(model: Captioner, features, max_len: int) -> None:
    if not isinstance(model, Captioner):
        raise TypeError(f"model must be a jaxvl Captioner, got {type(model).__name__}")
    if not 1 <= max_len <= model.cfg.max_len:
        raise ValueError(f"max_len={max_len} must be in [1, {model.cfg.max_len}] (the model's position table)")
    if np.ndim(features) != 3 or np.shape(features)[0] < 1:
        raise ValueError(f"features: expected [batch >= 1, regions, {model.cfg.feature_size}], "
                         f"got {np.shape(features)}")


def _check_temperature(temperature: float | jax.Array, top_k: int | None, vocab_size: int) -> None:
    if not isinstance(temperature, jax.core.Tracer) and not float(np.asarray(temperature)) > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use greedy() for the temperature-0 limit)")
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k={top_k} must be in [1, vocab_size={vocab_size}] or None")


def greedy(model: Captioner, params, features: jax.Array, boxes: jax.Array, mask: jax.Array | None = None, *,
           max_len: int = 16, block_unk: bool = True) -> DecodeOutput:
    """Greedy decoding. features [B, N, F], relative boxes [B, N, 4], region mask [B, N] (None: all real);
    ``params``: ``{"params": tree}`` or the bare tree. Returns ``DecodeOutput`` with k = 1."""
    _check(model, features, max_len)
    return _sample_loop(model, _as_variables(params), features, boxes, mask, jax.random.key(0), 1.0,
                        max_len=max_len, copies=1, num_greedy=1, top_k=None, block_unk=block_unk)


def sample(model: Captioner, params, features: jax.Array, boxes: jax.Array, mask: jax.Array | None, rng: jax.Array,
           *, num_samples: int = 1, max_len: int = 16, temperature: float | jax.Array = 1.0, top_k: int | None = None,
           block_unk: bool = True) -> DecodeOutput:
    """``num_samples`` samples per image (one encoder pass per image), k = num_samples in the output;
    deterministic given ``rng``. Arguments as ``greedy``."""
    _check(model, features, max_len)
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    _check_temperature(temperature, top_k, model.cfg.vocab_size)
    return _sample_loop(model, _as_variables(params), features, boxes, mask, rng, temperature, max_len=max_len,
                        copies=num_samples, num_greedy=0, top_k=top_k, block_unk=block_unk)


def sample_and_greedy(model: Captioner, params, features: jax.Array, boxes: jax.Array, mask: jax.Array | None,
                      rng: jax.Array, *, num_samples: int = 5, max_len: int = 16, temperature: float | jax.Array = 1.0,
                      top_k: int | None = None, block_unk: bool = True) -> tuple[DecodeOutput, DecodeOutput]:
    """SCST's inputs in one program: (``num_samples`` samples per image, the greedy baseline), sharing one
    encoder pass and one decoding loop over B * (num_samples + 1) rows."""
    _check(model, features, max_len)
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    _check_temperature(temperature, top_k, model.cfg.vocab_size)
    out = _sample_loop(model, _as_variables(params), features, boxes, mask, rng, temperature, max_len=max_len,
                       copies=num_samples + 1, num_greedy=1, top_k=top_k, block_unk=block_unk)
    return jax.tree.map(lambda x: x[:, 1:] if x.ndim else x, out), jax.tree.map(lambda x: x[:, :1] if x.ndim else x,
                                                                                 out)


def beam_search(model: Captioner, params, features: jax.Array, boxes: jax.Array, mask: jax.Array | None = None, *,
                beam_size: int = 3, max_len: int = 16, alpha: float | jax.Array = 0.0,
                block_unk: bool = True) -> DecodeOutput:
    """Beam search (module doc), k = beam_size beams per image sorted best first; ``alpha`` is the GNMT
    length-penalty exponent (0 = ORT). Arguments as ``greedy``."""
    _check(model, features, max_len)
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size} must be >= 1")
    if not isinstance(alpha, jax.core.Tracer) and not float(np.asarray(alpha)) >= 0:
        raise ValueError(f"alpha={alpha} must be >= 0 (the early-stop bound assumes a non-decreasing penalty)")
    return _beam_loop(model, _as_variables(params), features, boxes, mask, alpha, max_len=max_len,
                      beam_size=beam_size, block_unk=block_unk)


# ------------------------------------------------------------------------------------------ captions and files


def caption_model_inputs(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A ``jaxvl.caption.data`` batch -> the model's region inputs: ``features`` [B, R, D],
    ``boxes`` [B, R, 4] relative (pixel x1y1x2y2 / [W, H, W, H] clipped to [0, 1], ORT's
    ``prepro_bbox_relative_coords.py``) and ``mask`` [B, R] (the batch's ``region_mask``)."""
    missing = [k for k in ("features", "boxes", "region_mask", "image_size") if k not in batch]
    if missing:
        raise KeyError(f"caption batch lacks {', '.join(missing)} (expected a jaxvl.caption.data batch)")
    boxes = np.asarray(batch["boxes"], np.float32)
    size = np.asarray(batch["image_size"])
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or size.shape != (boxes.shape[0], 2):
        raise ValueError(f"caption batch: boxes {boxes.shape} must be [B, R, 4] and image_size {size.shape} [B, 2]")
    if np.any(size <= 0):
        raise ValueError(f"caption batch: image_size must be positive (height, width); got rows "
                         f"{np.flatnonzero(np.any(size <= 0, axis=1)).tolist()}")
    return dict(features=np.asarray(batch["features"], np.float32), boxes=np.asarray(relative_boxes(boxes, size)),
                mask=np.asarray(batch["region_mask"], np.int32))


def decode_captions(model: Captioner, params, batch: Mapping[str, Any], *, vocab: CaptionVocab, method: str = "beam",
                    beam_size: int = 3, max_len: int = 16, alpha: float = 0.0, rng: jax.Array | None = None,
                    temperature: float = 1.0) -> list[str]:
    """One caption per image of a caption-pipeline batch: the best beam, the greedy caption or one sample
    (``rng`` required), as space-separated words (``vocab.decode``)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {', '.join(METHODS)}")
    if len(vocab) != model.cfg.vocab_size:
        raise VocabMismatch(f"the vocabulary has {len(vocab)} ids but the model predicts {model.cfg.vocab_size}; "
                            "decode with the vocabulary the model was trained with")
    x = caption_model_inputs(batch)
    if method == "greedy":
        out = greedy(model, params, x["features"], x["boxes"], x["mask"], max_len=max_len)
    elif method == "beam":
        out = beam_search(model, params, x["features"], x["boxes"], x["mask"], beam_size=beam_size, max_len=max_len,
                          alpha=alpha)
    else:
        if rng is None:
            raise ValueError("method='sample' needs an rng")
        out = sample(model, params, x["features"], x["boxes"], x["mask"], rng, max_len=max_len,
                     temperature=temperature)
    return [vocab.decode(row) for row in np.asarray(out.tokens[:, 0])]


def _coco_image_id(image_id: Any) -> int | str:
    """COCO image ids are integers (Karpathy's json stores them as such; the pipeline carries strings)."""
    text = str(image_id.item() if isinstance(image_id, np.generic) else image_id)
    return int(text) if text.isdigit() else text


def write_coco_results(path: str | os.PathLike, image_ids: Sequence[Any], captions: Sequence[str]) -> None:
    """COCO caption results ``[{"image_id": id, "caption": text}, ...]`` (digit-only ids as ints), one per image."""
    if len(image_ids) != len(captions):
        raise ValueError(f"{os.fspath(path)}: {len(image_ids)} image ids but {len(captions)} captions")
    results, seen = [], set()
    for image_id, caption in zip(image_ids, captions, strict=True):
        image_id = _coco_image_id(image_id)
        if image_id in seen:
            raise ValueError(f"{os.fspath(path)}: image_id {image_id!r} has more than one caption")
        seen.add(image_id)
        results.append({"image_id": image_id, "caption": str(caption)})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)
