"""The geometry-aware captioner: the Object Relation Transformer (Herdade et al. 2019) as ORT codes it.

Forward pass (batch B, N regions, T tokens; ``CaptionerConfig`` holds the sizes):

- regions ``features`` [B, N, feature_size] -> ``att_embed`` Linear + ReLU + dropout (padded rows
  zeroed, as ORT's ``pack_wrapper`` leaves them); no positional encoding for objects;
- encoder: pre-LN layers ``x + dropout(sublayer(LN(x)))`` (self-attention, then FFN) and a final LN.
  Self-attention adds the per-head geometry term of ``jaxvl.models.ort.geometry`` to its logits; the box
  embedding is computed once per forward pass, in float32, and each layer applies its own ``W_G``;
- decoder: ``Embedding * sqrt(d_model)`` + sinusoidal positions + dropout, then pre-LN layers of
  masked self-attention, cross-attention over the memory and FFN, a final LN, ``Linear`` and
  ``log_softmax``. Token 0 is BOS, EOS and padding (ORT's vocabulary).

Every attention is ``jaxvl.models.attention.DotProductAttention``; masks and the geometry term enter
as its additive bias (ORT's ``-1e9`` mask value). ``CaptionerConfig.ort_layer_norm`` selects ORT's
LayerNorm (``(x - mean) / (std + eps)`` with the unbiased std) over the usual one.

Methods (call through ``model.apply(variables, ..., method=...)``):

- ``__call__(features, boxes, mask, tokens, token_mask=None)`` -> teacher-forced log-probs [B, T, V];
- ``encode(features, boxes, mask)`` -> memory [B, N, d_model]; ``decode(memory, mask, tokens, token_mask=None)``
  -> teacher-forced log-probs (``ort_token_mask`` gives ORT's token mask) = ``log_probs(decode_hidden(...))``
  (decoder states [B, T, d_model], then the generator); ``embed_tokens`` is the decoder's input embedding;
- ``precompute_cross_kv(memory)`` -> every decoder layer's cross-attention keys and values, once per image;
- ``init_cache(memory, mask, max_len)`` -> a ``DecodeCache`` (cross keys/values plus zeroed
  fixed-length self-attention caches); ``decode_step(cache, token, position)`` -> (log-probs [B, V],
  cache). All cache leaves have the batch first, so beam search can gather them with one ``tree.map``.

With ``sow_weights=True`` every attention sows its probabilities into ``intermediates``;
``collect_attention`` stacks them per family (encoder self, decoder self, cross).

Deliberate differences from ORT: no ``clip_att`` truncation to the batch's longest region list
(fixed shapes; masked keys give the same outputs); degenerate boxes stay finite (see geometry.py);
the std of ORT's LayerNorm has gradient 0 where it is 0 (as torch's ``std`` backward), not NaN.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct
from flax.traverse_util import flatten_dict

from jaxvl.models.attention import DotProductAttention
from jaxvl.models.layers import Axes, dropout, layer_norm
from jaxvl.models.ort.geometry import GeometryBias, box_relational_embedding

NEG_INF = -1e9  # ORT's masked_fill value


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
    """ORT's sizes by default (``neurips_training_runs.sh``); ``CaptionerConfig.tiny()`` for tests.

    ``vocab_size`` counts every output row including token 0 (ORT's ``opt.vocab_size + 1``). Geometry
    flags: see ``jaxvl.models.ort.geometry`` (all ``True`` = ORT's code; ``legacy_plus_one=False,
    legacy_size_ratio=False`` = the paper's formula). ``legacy_extra_skip`` is ORT's flag of the same
    name (its released SCST checkpoint uses it). ``dtype`` is the matmul dtype; params, LayerNorms,
    the geometry term, softmax and log-probs stay float32.
    """

    vocab_size: int = 9488
    feature_size: int = 2048
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1  # attention probabilities, residuals, FFN inner, token embedding
    feature_dropout: float = 0.5  # after att_embed (ORT's drop_prob_lm)
    max_len: int = 5000  # ORT's PositionalEncoding table length
    trigonometric_embedding: bool = True
    box_embedding_dim: int = 64
    wave_len: float = 1000.0
    legacy_plus_one: bool = True
    legacy_size_ratio: bool = True
    min_box_size: float = 1e-3
    legacy_extra_skip: bool = False
    ort_layer_norm: bool = True
    layer_norm_eps: float = 1e-6
    dtype: str = "float32"
    fused_attention: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "feature_size", "d_model", "num_heads", "d_ff", "num_encoder_layers",
                     "num_decoder_layers", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"CaptionerConfig.{name}={getattr(self, name)} must be positive")
        if self.d_model % self.num_heads or self.d_model % 2:
            raise ValueError(f"d_model={self.d_model} must be even and divide into num_heads={self.num_heads}")
        for name in ("dropout", "feature_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"CaptionerConfig.{name}={getattr(self, name)} must be in [0, 1)")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r}; expected 'float32' or 'bfloat16'")
        if self.trigonometric_embedding and self.box_embedding_dim % 8:
            raise ValueError(f"box_embedding_dim={self.box_embedding_dim} must be a multiple of 8")

    @property
    def geometry_features(self) -> int:
        """Width of the box embedding: ``box_embedding_dim``, or 4 raw coordinates without trigonometry."""
        return self.box_embedding_dim if self.trigonometric_embedding else 4

    @classmethod
    def tiny(cls, **overrides: Any) -> CaptionerConfig:
        """Test sizes: 2 + 2 layers, d_model 32, 4 heads, d_ff 64, 20 tokens, 16-d features."""
        sizes = dict(vocab_size=20, feature_size=16, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2,
                     num_decoder_layers=2, max_len=64)
        return cls(**{**sizes, **overrides})


@struct.dataclass
class DecodeCache:
    """Incremental-decoding state; every leaf has the batch first.

    ``self_k`` / ``self_v``: per decoder layer [B, max_len, heads, head_dim] (position t written at step t);
    ``cross_k`` / ``cross_v``: per decoder layer [B, N, heads, head_dim]; ``src_bias`` [B, 1, 1, N] float32.
    """

    self_k: tuple[jax.Array, ...]
    self_v: tuple[jax.Array, ...]
    cross_k: tuple[jax.Array, ...]
    cross_v: tuple[jax.Array, ...]
    src_bias: jax.Array

    @property
    def max_len(self) -> int:
        return self.self_k[0].shape[1]


def ort_token_mask(tokens: jax.Array) -> jax.Array:
    """ORT's decoder key mask for teacher forcing: [B, T] tokens -> [B, T] bool, ``tokens > 0`` with
    position 0 (BOS, also id 0) kept. It only changes the outputs at and after the first input 0 past
    BOS (the EOS fed back in), whose targets come after the EOS and are read by no loss."""
    return (tokens > 0).at[:, 0].set(True)


def sinusoid_positions(positions: jax.Array, d_model: int) -> jax.Array:
    """[...] int positions -> [..., d_model] float32 sinusoids, ORT's (annotated transformer's) ``pe`` rows."""
    div = jnp.exp(jnp.arange(0, d_model, 2, dtype=jnp.float32) * jnp.float32(-math.log(10000.0) / d_model))
    angles = positions.astype(jnp.float32)[..., None] * div
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*positions.shape, d_model)


def collect_attention(intermediates: Mapping) -> dict[str, jax.Array]:
    """Sown probabilities -> ``encoder_self`` [L_enc, B, H, N, N], ``decoder_self`` [L_dec, B, H, T, T] and
    ``cross`` [L_dec, B, H, T, N] (families absent from ``intermediates`` are left out)."""
    flat = flatten_dict(dict(intermediates), sep="/")
    families = {"encoder_self": ("encoder", "self_attn"), "decoder_self": ("decoder", "self_attn"),
                "cross": ("decoder", "cross_attn")}
    out = {}
    for family, (stack, attn) in families.items():
        found = {}
        for key, value in flat.items():
            parts = key.split("/")
            if len(parts) == 5 and parts[0] == stack and parts[2] == attn and parts[3:] == ["attend", "weights"]:
                found[int(parts[1].removeprefix("layer_"))] = value[-1]
        if found:
            out[family] = jnp.stack([found[i] for i in sorted(found)])
    return out


def _torch_bias_init(fan_in: int):
    """torch's default ``Linear`` bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _linear(features: int | tuple[int, ...], axes: Axes, fan_in: int, dtype: str, *, in_dims: int = 1,
            name: str | None = None) -> nn.DenseGeneral:
    """A torch ``Linear`` as ``DenseGeneral``: ORT's ``xavier_uniform_`` over the full in/out widths
    (``DenseGeneral`` initialises the flattened [in, out] kernel, then splits it, e.g. into [d, heads,
    head_dim]) and torch's bias init."""
    return nn.DenseGeneral(
        features, axis=tuple(range(-in_dims, 0)), dtype=jnp.dtype(dtype), param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
        bias_init=nn.with_logical_partitioning(_torch_bias_init(fan_in), axes[in_dims:]),
    )


class OrtLayerNorm(nn.Module):
    """ORT's (the annotated transformer's) LayerNorm: ``scale * (x - mean) / (std + eps) + bias`` with the
    unbiased std, in float32. Parameters ``scale`` / ``bias`` (ORT's ``a_2`` / ``b_2``)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (d,), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), jnp.float32)
        x = x.astype(jnp.float32)
        centred = x - x.mean(-1, keepdims=True)
        var = jnp.sum(centred * centred, -1, keepdims=True) / (d - 1)
        # sqrt'(0) is infinite: give constant rows (zeroed padding) torch's zero gradient instead of NaN.
        positive = var > 0
        std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
        return scale * centred / (std + self.eps) + bias


def _norm(cfg: CaptionerConfig) -> nn.Module:
    return OrtLayerNorm(cfg.layer_norm_eps) if cfg.ort_layer_norm else layer_norm(cfg.layer_norm_eps)


class Attention(nn.Module):
    """ORT's ``MultiHeadedAttention`` (and ``BoxMultiHeadedAttention`` with ``extra_skip``): query/key/value
    projections [d, heads, head_dim], ``DotProductAttention`` with an additive bias, output projection."""

    cfg: CaptionerConfig
    sow_weights: bool = False
    extra_skip: bool = False

    def setup(self):
        c = self.cfg
        heads = (c.num_heads, c.d_model // c.num_heads)
        qkv_axes = ("embed", "heads", "kv")
        self.query = _linear(heads, qkv_axes, c.d_model, c.dtype)
        self.key = _linear(heads, qkv_axes, c.d_model, c.dtype)
        self.value = _linear(heads, qkv_axes, c.d_model, c.dtype)
        self.out = _linear(c.d_model, ("heads", "kv", "embed"), c.d_model, c.dtype, in_dims=2)
        self.attend = DotProductAttention(c.dropout, c.fused_attention, self.sow_weights)

    def kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, L, d] -> keys and values [B, L, heads, head_dim] in the matmul dtype."""
        x = x.astype(jnp.dtype(self.cfg.dtype))
        return self.key(x), self.value(x)

    def __call__(self, x: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        """Queries from x [B, Lq, d] over k, v [B, Lk, heads, head_dim]; bias broadcastable to [B, H, Lq, Lk]."""
        x = x.astype(jnp.dtype(self.cfg.dtype))
        ctx = self.attend(self.query(x), k, v, bias, deterministic)
        if self.extra_skip:  # ORT's legacy_extra_skip: the attention input is added before the output projection
            ctx = ctx + x.reshape(ctx.shape)
        return self.out(ctx)


class FeedForward(nn.Module):
    """ORT's ``PositionwiseFeedForward``: ``w_2(dropout(relu(w_1 x)))``."""

    cfg: CaptionerConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.cfg
        h = jax.nn.relu(_linear(c.d_ff, ("embed", "mlp"), c.d_model, c.dtype, name="wi")(x.astype(jnp.dtype(c.dtype))))
        h = dropout(self, h, c.dropout, deterministic)
        return _linear(c.d_model, ("mlp", "embed"), c.d_ff, c.dtype, name="wo")(h)


class EncoderLayer(nn.Module):
    """Geometry-aware self-attention and FFN, each as ``x + dropout(sublayer(LN(x)))``."""

    cfg: CaptionerConfig
    sow_weights: bool = False

    def setup(self):
        c = self.cfg
        self.norm_0 = _norm(c)
        self.self_attn = Attention(c, self.sow_weights, extra_skip=c.legacy_extra_skip)
        self.geometry = GeometryBias(c.num_heads)
        self.norm_1 = _norm(c)
        self.ff = FeedForward(c)

    def __call__(self, x: jax.Array, embedding: jax.Array, key_mask: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        """x [B, N, d] float32, embedding [B, N, N, dim] float32, key_mask [B, N] bool -> [B, N, d]."""
        rate = self.cfg.dropout
        bias = jnp.where(key_mask[:, None, None, :], self.geometry(embedding), NEG_INF)
        h = self.norm_0(x)
        x = x + dropout(self, self.self_attn(h, *self.self_attn.kv(h), bias, deterministic), rate, deterministic)
        return x + dropout(self, self.ff(self.norm_1(x), deterministic), rate, deterministic)


class Encoder(nn.Module):
    """Box embedding (once), the encoder layers and the final LN."""

    cfg: CaptionerConfig
    sow_weights: bool = False

    def setup(self):
        self.layer = [EncoderLayer(self.cfg, self.sow_weights) for _ in range(self.cfg.num_encoder_layers)]
        self.norm = _norm(self.cfg)

    def __call__(self, x: jax.Array, boxes: jax.Array, key_mask: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.cfg
        embedding = box_relational_embedding(boxes, dim=c.geometry_features, wave_len=c.wave_len,
                                             trigonometric=c.trigonometric_embedding,
                                             legacy_plus_one=c.legacy_plus_one,
                                             legacy_size_ratio=c.legacy_size_ratio, min_size=c.min_box_size)
        for layer in self.layer:
            x = layer(x, embedding, key_mask, deterministic)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention and FFN, each as ``x + dropout(sublayer(LN(x)))``."""

    cfg: CaptionerConfig
    sow_weights: bool = False

    def setup(self):
        c = self.cfg
        self.norm_0 = _norm(c)
        self.self_attn = Attention(c, self.sow_weights)
        self.norm_1 = _norm(c)
        self.cross_attn = Attention(c, self.sow_weights)
        self.norm_2 = _norm(c)
        self.ff = FeedForward(c)

    def __call__(self, x: jax.Array, cross_kv: tuple[jax.Array, jax.Array], self_bias: jax.Array,
                 cross_bias: jax.Array, deterministic: bool = True,
                 cache: tuple[jax.Array, jax.Array] | None = None, position: jax.Array | int | None = None):
        """x [B, T, d] -> (x, (k, v)). Without ``cache`` the keys are x's own; with it (decoding, T = 1)
        x's key and value are written into the [B, max_len, H, D] cache at ``position`` and attended over."""
        rate = self.cfg.dropout
        h = self.norm_0(x)
        k, v = self.self_attn.kv(h)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), position, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), position, axis=1)
        x = x + dropout(self, self.self_attn(h, k, v, self_bias, deterministic), rate, deterministic)
        x = x + dropout(self, self.cross_attn(self.norm_1(x), *cross_kv, cross_bias, deterministic), rate,
                        deterministic)
        x = x + dropout(self, self.ff(self.norm_2(x), deterministic), rate, deterministic)
        return x, (k, v)


class Decoder(nn.Module):
    """The decoder layers and the final LN (token embedding and generator live in ``Captioner``)."""

    cfg: CaptionerConfig
    sow_weights: bool = False

    def setup(self):
        self.layer = [DecoderLayer(self.cfg, self.sow_weights) for _ in range(self.cfg.num_decoder_layers)]
        self.norm = _norm(self.cfg)

    def cross_kv(self, memory: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """memory [B, N, d] -> per layer (keys, values) [B, N, H, D]."""
        return tuple(layer.cross_attn.kv(memory) for layer in self.layer)

    def __call__(self, x: jax.Array, cross_kv: tuple[tuple[jax.Array, jax.Array], ...], self_bias: jax.Array,
                 cross_bias: jax.Array, deterministic: bool = True,
                 caches: tuple[tuple[jax.Array, jax.Array], ...] | None = None,
                 position: jax.Array | None = None) -> tuple[jax.Array, tuple[tuple[jax.Array, jax.Array], ...]]:
        """x [B, T, d] -> (LN(layers(x)), per layer the self-attention (keys, values): x's own, or the updated
        caches when ``caches`` are given)."""
        new_caches = []
        for i, layer in enumerate(self.layer):
            x, kv = layer(x, cross_kv[i], self_bias, cross_bias, deterministic,
                          None if caches is None else caches[i], position)
            new_caches.append(kv)
        return self.norm(x), tuple(new_caches)


class Captioner(nn.Module):
    """ORT's ``RelationTransformerModel``. Parameters: ``att_embed``, ``encoder/layer_{i}``, ``encoder/norm``,
    ``embed``, ``decoder/layer_{i}``, ``decoder/norm``, ``generator`` (see ``jaxvl.convert.ort`` for ORT's names)."""

    cfg: CaptionerConfig
    sow_weights: bool = False

    def setup(self):
        c = self.cfg
        self.att_embed = _linear(c.d_model, ("feature", "embed"), c.feature_size, c.dtype)
        self.encoder = Encoder(c, self.sow_weights)
        self.embed = nn.Embed(c.vocab_size, c.d_model, dtype=jnp.float32, param_dtype=jnp.float32,
                              embedding_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                                          ("vocab", "embed")))
        self.decoder = Decoder(c, self.sow_weights)
        self.generator = _linear(c.vocab_size, ("embed", "vocab"), c.d_model, c.dtype)

    def _check_regions(self, features: jax.Array, boxes: jax.Array, mask: jax.Array | None) -> jax.Array:
        """Shape checks (before any compilation); returns the [B, N] bool key mask."""
        c = self.cfg
        if features.ndim != 3 or features.shape[-1] != c.feature_size:
            raise ValueError(f"features: expected [batch, regions, {c.feature_size}], got {features.shape}")
        if boxes.shape != (*features.shape[:2], 4):
            raise ValueError(f"boxes: expected {(*features.shape[:2], 4)} (x_min, y_min, x_max, y_max), "
                             f"got {boxes.shape}")
        if mask is None:
            return jnp.ones(features.shape[:2], bool)
        if mask.shape != features.shape[:2]:
            raise ValueError(f"mask: expected {features.shape[:2]} (batch, regions), got {mask.shape}")
        return mask.astype(bool)

    def _check_tokens(self, tokens: jax.Array, batch: int, token_mask: jax.Array | None) -> None:
        """Shape checks of the decoder inputs (before any compilation)."""
        if tokens.ndim != 2 or tokens.shape[0] != batch:
            raise ValueError(f"tokens: expected [batch={batch}, length], got {tokens.shape}")
        if tokens.shape[1] > self.cfg.max_len:
            raise ValueError(f"tokens: length {tokens.shape[1]} exceeds max_len={self.cfg.max_len}")
        if token_mask is not None and token_mask.shape != tokens.shape:
            raise ValueError(f"token_mask: expected {tokens.shape}, got {token_mask.shape}")

    def embed_tokens(self, tokens: jax.Array, positions: jax.Array, deterministic: bool = True) -> jax.Array:
        """Token ids [B, T] at positions [T] (or a scalar, T = 1) -> [B, T, d_model] float32: ``embed * sqrt(d)
        + sinusoid_positions``, then dropout (ORT's ``Embeddings`` + ``PositionalEncoding``)."""
        c = self.cfg
        x = self.embed(tokens) * jnp.float32(math.sqrt(c.d_model)) + sinusoid_positions(positions, c.d_model)
        return dropout(self, x, c.dropout, deterministic)

    def log_probs(self, hidden: jax.Array) -> jax.Array:
        """ORT's ``Generator``: decoder states [..., d_model] -> log-probs [..., vocab_size] float32."""
        return jax.nn.log_softmax(self.generator(hidden.astype(jnp.dtype(self.cfg.dtype))).astype(jnp.float32), -1)

    def encode(self, features: jax.Array, boxes: jax.Array, mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
        """features [B, N, feature_size], boxes [B, N, 4] (relative x_min, y_min, x_max, y_max), mask [B, N]
        (1 = real region; default all) -> memory [B, N, d_model] float32."""
        c = self.cfg
        key_mask = self._check_regions(features, boxes, mask)
        x = jax.nn.relu(self.att_embed(features.astype(jnp.dtype(c.dtype)))).astype(jnp.float32)
        x = dropout(self, x, c.feature_dropout, deterministic) * key_mask[..., None]
        return self.encoder(x, boxes, key_mask, deterministic)

    def precompute_cross_kv(self, memory: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """memory [B, N, d] -> per decoder layer the cross-attention (keys, values) [B, N, heads, head_dim]."""
        return self.decoder.cross_kv(memory)

    def decode_hidden(self, memory: jax.Array, mask: jax.Array | None, tokens: jax.Array,
                      token_mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        """``decode`` without the generator: the decoder's final states [B, T, d_model] (after its last LN) for
        memory [B, N, d], region mask [B, N] (None: all) and input tokens [B, T] (BOS first). ORT's no-cache
        decoding takes ``log_probs`` of the last position only."""
        self._check_tokens(tokens, memory.shape[0], token_mask)
        length = tokens.shape[1]
        keep = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if token_mask is not None:
            keep = keep & token_mask.astype(bool)[:, None, None, :]
        self_bias = jnp.where(keep, 0.0, NEG_INF).astype(jnp.float32)
        src_mask = jnp.ones(memory.shape[:2], bool) if mask is None else mask.astype(bool)
        cross_bias = jnp.where(src_mask[:, None, None, :], 0.0, NEG_INF).astype(jnp.float32)
        x = self.embed_tokens(tokens, jnp.arange(length), deterministic)
        x, _ = self.decoder(x, self.precompute_cross_kv(memory), self_bias, cross_bias, deterministic)
        return x

    def decode(self, memory: jax.Array, mask: jax.Array | None, tokens: jax.Array, token_mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
        """Teacher forcing: memory [B, N, d], region mask [B, N], input tokens [B, T] (BOS first) and an optional
        token key mask [B, T] (``ort_token_mask`` for ORT's) -> log-probs [B, T, vocab_size] float32."""
        return self.log_probs(self.decode_hidden(memory, mask, tokens, token_mask, deterministic))

    def __call__(self, features: jax.Array, boxes: jax.Array, mask: jax.Array | None, tokens: jax.Array,
                 token_mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        """Teacher-forced log-probs [B, T, vocab_size]: ``decode(encode(features, boxes, mask), mask, tokens)``."""
        self._check_regions(features, boxes, mask)
        self._check_tokens(tokens, features.shape[0], token_mask)
        memory = self.encode(features, boxes, mask, deterministic)
        return self.decode(memory, mask, tokens, token_mask, deterministic)

    def init_cache(self, memory: jax.Array, mask: jax.Array | None, max_len: int) -> DecodeCache:
        """A ``DecodeCache`` for decoding up to ``max_len`` tokens: cross keys/values computed here, once."""
        c = self.cfg
        if not 0 < max_len <= c.max_len:
            raise ValueError(f"max_len={max_len} must be in [1, {c.max_len}]")
        cross = self.precompute_cross_kv(memory)
        zeros = jnp.zeros((memory.shape[0], max_len, c.num_heads, c.d_model // c.num_heads), cross[0][0].dtype)
        src_mask = jnp.ones(memory.shape[:2], bool) if mask is None else mask.astype(bool)
        return DecodeCache(self_k=(zeros,) * len(cross), self_v=(zeros,) * len(cross),
                           cross_k=tuple(k for k, _ in cross), cross_v=tuple(v for _, v in cross),
                           src_bias=jnp.where(src_mask[:, None, None, :], 0.0, NEG_INF).astype(jnp.float32))

    def decode_step(self, cache: DecodeCache, token: jax.Array, position: jax.Array | int,
                    deterministic: bool = True) -> tuple[jax.Array, DecodeCache]:
        """One decoding step: token [B] int at ``position`` (scalar, 0 = BOS) -> (log-probs [B, vocab_size]
        float32 for the next token, the cache with this position's keys/values written).

        Equals ``decode`` at ``position`` for the same prefix. A traced ``position`` is not range-checked:
        past ``cache.max_len - 1`` the write is clamped to the last slot.
        """
        if token.shape != (cache.src_bias.shape[0],):
            raise ValueError(f"token: expected [{cache.src_bias.shape[0]}], got {token.shape}")
        if isinstance(position, int) and not 0 <= position < cache.max_len:
            raise ValueError(f"position={position} outside the cache's [0, {cache.max_len})")
        position = jnp.asarray(position, jnp.int32)
        self_bias = jnp.where(jnp.arange(cache.max_len) <= position, 0.0, NEG_INF).astype(jnp.float32)
        x = self.embed_tokens(token[:, None], position[None], deterministic)
        caches = tuple(zip(cache.self_k, cache.self_v, strict=True))
        cross = tuple(zip(cache.cross_k, cache.cross_v, strict=True))
        x, new = self.decoder(x, cross, self_bias[None, None, None, :], cache.src_bias, deterministic, caches, position)
        cache = cache.replace(self_k=tuple(k for k, _ in new), self_v=tuple(v for _, v in new))
        return self.log_probs(x[:, 0]), cache

    def dummy_inputs(self, batch: int = 2, regions: int = 5, length: int = 6) -> dict[str, jax.Array]:
        """Zero-filled inputs of the right shapes and dtypes, for ``init`` and shape checks."""
        return dict(features=jnp.zeros((batch, regions, self.cfg.feature_size), jnp.float32),
                    boxes=jnp.zeros((batch, regions, 4), jnp.float32), mask=jnp.ones((batch, regions), jnp.int32),
                    tokens=jnp.zeros((batch, length), jnp.int32))
