"""Text embedding and the five visual-embedding flavours of VOLTA's V&L BERTs.

Every module takes ``input_ids`` [B, Lt], ``token_type_ids`` [B, Lt], region ``features``
[B, Lv, F] and ``locations`` [B, Lv, num_locs] (``[x1, y1, x2, y2, area]`` normalised to the image)
and returns ``(text [B, Lt, hidden], vision [B, Lv, v_hidden])``. The global ``[IMG]`` region is
part of the inputs (row 0), built by the data pipeline.

Quirks kept from VOLTA (reference section 2 and 7):
- UNITER embeds regions with the text's own token-type table (type 1) and its own LayerNorm.
- VisualBERT ignores box locations; its regions take position 0 and type 1 from separate tables.
- VL-BERT adds the *last* region's visual embedding to every text token, gives the last region an
  ``end_embedding``, and swaps all-zero feature rows for a learned mask vector. Deliberate
  difference: text positions are computed per row (VOLTA shifts them on a batch-shared tensor, so
  its outputs depend on the batch's other rows; they agree when all rows share one text length).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxvl.models.layers import Embed, dense, dropout, embed, layer_norm, normal_init
from jaxvl.models.volta.config import VLConfig

Embedded = tuple[jax.Array, jax.Array]
Initializer = Callable[..., jax.Array]


def zero_padded_init(init: Initializer, axis: int, size: int) -> Initializer:
    """``init`` drawn with dim ``axis`` at its true ``size``, then zero-padded along it to the requested shape.

    A parameter padded this way (``VLConfig.pad_to_multiple_of``) starts as the unpadded model's draw (the
    same key and shape) plus zeros, so padded and unpadded models train identically from the same seed.
    """

    def padded_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        true_shape = list(shape)
        true_shape[axis] = size
        widths = [(0, 0)] * len(shape)
        widths[axis] = (0, shape[axis] - size)
        return jnp.pad(init(key, tuple(true_shape), dtype), widths)

    return padded_init


def word_table(cfg: VLConfig) -> Embed:
    """The word-embedding table [padded_vocab_size, hidden] (logical axes ``vocab``, ``embed``), named
    ``word_embeddings``; rows past ``vocab_size`` (padding) start at zero and are never looked up."""
    init = nn.initializers.normal(cfg.initializer_range)
    if cfg.padded_vocab_size != cfg.vocab_size:
        init = zero_padded_init(init, 0, cfg.vocab_size)
    return Embed(cfg.padded_vocab_size, cfg.hidden_size, dtype=jnp.float32, param_dtype=jnp.float32,
                 name="word_embeddings", embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")))


class _TextTables(nn.Module):
    """Shared setup of the word / position / token-type tables every flavour has."""

    cfg: VLConfig

    def _tables(self):
        c = self.cfg
        self.word_embeddings = word_table(c)
        self.position_embeddings = embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings",
                                         stddev=c.initializer_range)
        self.token_type_embeddings = embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings",
                                           stddev=c.initializer_range)

    def _bert_text(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[1])[None, :]
        return (self.word_embeddings(input_ids) + self.position_embeddings(positions)
                + self.token_type_embeddings(token_type_ids))

    def _drop(self, x: jax.Array, deterministic: bool) -> jax.Array:
        return dropout(self, x, self.cfg.hidden_dropout_prob, deterministic)


class TextEmbeddings(_TextTables):
    """BERT's embeddings (text stream of the dual-stream models): LN(word + position + type)."""

    def setup(self):
        self._tables()
        self.norm = layer_norm(self.cfg.layer_norm_eps, name="norm")

    def __call__(self, input_ids, token_type_ids, deterministic: bool = True) -> jax.Array:
        return self._drop(self.norm(self._bert_text(input_ids, token_type_ids)), deterministic)


class _RegionProjections(nn.Module):
    cfg: VLConfig

    def _projections(self):
        c = self.cfg
        kw = dict(stddev=c.initializer_range, dtype=c.dtype, weight_grad_dtype=c.weight_grad_dtype)
        self.image_embeddings = dense(c.v_hidden_size, ("feature", "embed"), name="image_embeddings", **kw)
        self.image_location_embeddings = dense(c.v_hidden_size, (None, "embed"), name="image_location_embeddings", **kw)


class ViLBertVisualEmbeddings(_RegionProjections):
    """ViLBERT: dropout(LN(W_f f + W_l l))."""

    def setup(self):
        self._projections()
        self.norm = layer_norm(self.cfg.layer_norm_eps, name="norm")

    def __call__(self, features, locations, deterministic: bool = True) -> jax.Array:
        h = self.norm(self.image_embeddings(features) + self.image_location_embeddings(locations))
        return dropout(self, h, self.cfg.v_hidden_dropout_prob, deterministic)


class LxmertVisualEmbeddings(_RegionProjections):
    """LXMERT: dropout((LN_img(W_f f) + LN_loc(W_l l)) / 2)."""

    def setup(self):
        self._projections()
        self.img_norm = layer_norm(self.cfg.layer_norm_eps, name="img_norm")
        self.loc_norm = layer_norm(self.cfg.layer_norm_eps, name="loc_norm")

    def __call__(self, features, locations, deterministic: bool = True) -> jax.Array:
        h = (self.img_norm(self.image_embeddings(features)) + self.loc_norm(self.image_location_embeddings(locations)))
        return dropout(self, h / 2, self.cfg.v_hidden_dropout_prob, deterministic)


class UniterEmbeddings(_TextTables, _RegionProjections):
    """UNITER: text as BERT; regions v_LN(LN(W_f f) + LN(W_l l) + token_type[1]) with the text's type table."""

    def setup(self):
        eps = self.cfg.layer_norm_eps
        self._tables()
        self._projections()
        self.norm = layer_norm(eps, name="norm")
        self.image_norm = layer_norm(eps, name="image_norm")
        self.image_location_norm = layer_norm(eps, name="image_location_norm")
        self.v_norm = layer_norm(eps, name="v_norm")

    def __call__(self, input_ids, token_type_ids, features, locations, deterministic: bool = True) -> Embedded:
        t = self._drop(self.norm(self._bert_text(input_ids, token_type_ids)), deterministic)
        v = (self.image_norm(self.image_embeddings(features))
             + self.image_location_norm(self.image_location_embeddings(locations))
             + self.token_type_embeddings(jnp.ones(features.shape[:2], jnp.int32)))
        return t, self._drop(self.v_norm(v), deterministic)


class VisualBertEmbeddings(_TextTables):
    """VisualBERT: regions W_p f + position_visual[0] + type_visual[1]; one LN over both streams."""

    def setup(self):
        c = self.cfg
        self._tables()
        self.norm = layer_norm(c.layer_norm_eps, name="norm")
        self.projection = dense(c.hidden_size, ("feature", "embed"), name="projection", stddev=c.initializer_range,
                                dtype=c.dtype, weight_grad_dtype=c.weight_grad_dtype)
        self.token_type_embeddings_visual = embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings_visual",
                                                  stddev=c.initializer_range)
        self.position_embeddings_visual = embed(c.max_position_embeddings, c.hidden_size,
                                                name="position_embeddings_visual", stddev=c.initializer_range)

    def __call__(self, input_ids, token_type_ids, features, locations, deterministic: bool = True) -> Embedded:
        t = self._bert_text(input_ids, token_type_ids)
        zeros = jnp.zeros(features.shape[:2], jnp.int32)
        v = (self.projection(features) + self.position_embeddings_visual(zeros)
             + self.token_type_embeddings_visual(zeros + 1))
        return self._drop(self.norm(t), deterministic), self._drop(self.norm(v), deterministic)


def coordinate_embeddings(locations: jax.Array, dim: int) -> jax.Array:
    """VL-BERT's sin/cos box code: [B, L, >=4] boxes (x1, y1, x2, y2) -> [B, L, 4 * 2 * dim], in float32."""
    loc = locations.astype(jnp.float32)
    pos = jnp.stack([(loc[..., 0] + loc[..., 2]) / 2 * 100, (loc[..., 1] + loc[..., 3]) / 2 * 100,
                     (loc[..., 2] - loc[..., 0]) * 100, (loc[..., 3] - loc[..., 1]) * 100], axis=-1)
    freqs = 1000.0 ** (jnp.arange(dim, dtype=jnp.float32) / dim)
    angles = pos[..., None] / freqs  # [B, L, 4, dim]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*loc.shape[:2], 8 * dim)


class VisualLinguisticBertEmbeddings(_TextTables):
    """VL-BERT: regions ReLU(W [sincos(box) ; f]) through their own LN, text tokens add the last region's."""

    def setup(self):
        c = self.cfg
        self._tables()
        self.norm = layer_norm(c.layer_norm_eps, name="norm")
        self.obj_downsample = dense(c.v_hidden_size, ("feature", "embed"), name="obj_downsample", xavier=True,
                                    dtype=c.dtype, weight_grad_dtype=c.weight_grad_dtype)
        def init_1(n: str, f: int, init):
            return self.param(n, nn.with_logical_partitioning(init, (None, "embed")), (1, f))

        self.object_linguistic_embeddings = init_1("object_linguistic_embeddings", c.hidden_size,
                                                   nn.initializers.normal(c.initializer_range))
        self.object_mask_visual_embedding = init_1("object_mask_visual_embedding", c.v_feature_size,
                                                   nn.initializers.zeros)
        self.end_embedding = init_1("end_embedding", c.hidden_size, nn.initializers.normal(c.initializer_range))
        def zero_ln(n: str) -> nn.LayerNorm:  # VL-BERT starts these LayerNorms' scales at zero
            return nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False, name=n,
                                scale_init=normal_init(0.0, ("embed",)),
                                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))

        self.visual_ln_text = zero_ln("visual_ln_text")
        self.visual_ln_object = zero_ln("visual_ln_object")

    def __call__(self, input_ids, token_type_ids, features, locations, deterministic: bool = True) -> Embedded:
        c = self.cfg
        batch, num_boxes, _ = features.shape
        seq_len = input_ids.shape[1]
        is_blank = jnp.all(features == 0, axis=-1, keepdims=True)
        features = jnp.where(is_blank, self.object_mask_visual_embedding[0].astype(features.dtype), features)
        joint = jnp.concatenate([coordinate_embeddings(locations, c.v_coordinate_embeddings_dim),
                                 features.astype(jnp.float32)], axis=-1)
        joint = dropout(self, joint, c.v_attention_probs_dropout_prob, deterministic)
        final = jax.nn.relu(self.obj_downsample(joint))  # [B, Lv, v_hidden]

        is_last = (jnp.arange(num_boxes) == num_boxes - 1)[None, :, None]
        linguistic = jnp.where(is_last, self.end_embedding[0], self.object_linguistic_embeddings[0])
        text_end = jnp.sum(input_ids != 0, axis=1, keepdims=True)  # [B, 1]
        positions = jnp.arange(seq_len)[None, :]
        text_positions = jnp.where(positions >= text_end, positions + num_boxes, positions)
        object_positions = text_end + is_last[..., 0].astype(jnp.int32)  # [B, Lv]

        t = (self.word_embeddings(input_ids) + self.visual_ln_text(final[:, -1:, :])
             + self.position_embeddings(text_positions) + self.token_type_embeddings(token_type_ids))
        v = (linguistic + self.visual_ln_object(final) + self.position_embeddings(object_positions)
             + self.token_type_embeddings(jnp.full((batch, num_boxes), 2, jnp.int32)))
        return self._drop(self.norm(t), deterministic), self._drop(self.norm(v), deterministic)


SHARED_EMBEDDINGS = {"uniter": UniterEmbeddings, "visualbert": VisualBertEmbeddings,
                     "vl-bert": VisualLinguisticBertEmbeddings}
VISUAL_EMBEDDINGS = {"vilbert": ViLBertVisualEmbeddings, "lxmert": LxmertVisualEmbeddings}
