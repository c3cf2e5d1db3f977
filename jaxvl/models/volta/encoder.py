"""Executes a sub-layer plan over the text and vision streams.

Every sub-layer reads both streams and returns both (simultaneous update); a stream with nothing
active passes through unchanged. Repeated segments of the plan run under ``nn.scan`` when
``cfg.scan_layers`` is set; parameters are then stacked on a leading ``layers`` axis
(``jaxvl.models.params.scan_params`` / ``unscan_params`` convert between the two layouts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxvl.models.attention import DotProductAttention
from jaxvl.models.layers import activation, constrain_stream, dense, dropout, layer_norm
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.plan import Sublayer, find_segments

Streams = tuple[jax.Array, jax.Array]


class AttentionSublayer(nn.Module):
    """VOLTA's gated attention + output: ``LN(dropout(W_o ctx) + x)`` per active stream.

    Text queries attend over ``[text keys if tt ; vision keys if tv]`` in one softmax, vision queries
    over ``[text keys if vt ; vision keys if vv]``. Keys and values are always projected with their
    source stream's projections. With ``spec.tied`` the vision stream uses the text modules.
    With ``sow_weights``: ``t_attend/weights`` [B, H, Lt, L_keys] and ``v_attend/weights`` [B, H, Lv, L_keys].
    """

    cfg: VLConfig
    spec: Sublayer
    sow_weights: bool = False

    def _stream(self, prefix: str, width: int, heads: int, out: int):
        c = self.cfg

        def proj(n: str) -> nn.DenseGeneral:
            return dense((heads, width // heads), ("embed", "heads", "kv"), dtype=c.dtype, name=prefix + n,
                         stddev=c.initializer_range, weight_grad_dtype=c.weight_grad_dtype)

        return dict(query=proj("query"), key=proj("key"), value=proj("value"),
                    out=dense(out, ("heads", "kv", "embed"), axis=(-2, -1), dtype=c.dtype, name=prefix + "out",
                              stddev=c.initializer_range, weight_grad_dtype=c.weight_grad_dtype),
                    norm=layer_norm(c.layer_norm_eps, name=prefix + "norm"))

    def setup(self):
        c, s = self.cfg, self.spec
        # A stream's projections exist when it is updated or read as keys (tv without vt/vv reads the
        # vision keys only); parameters of modules never called are never created.
        self.text = self._stream("", s.t_width, s.t_heads, c.hidden_size) if s.has_text or s.vt else None
        # A tied sub-layer has no vision modules of its own: the vision stream calls the text ones.
        has_own = (s.has_vision or s.tv) and not s.tied
        self.vision = self._stream("v_", s.v_width, s.v_heads, c.v_hidden_size) if has_own else None
        self.t_attend = DotProductAttention(c.attention_probs_dropout_prob, c.fused_attention, self.sow_weights)
        # A tied sub-layer drops out with the text rates, as VOLTA's aliased modules do.
        v_attn_rate = c.attention_probs_dropout_prob if s.tied else c.v_attention_probs_dropout_prob
        self.v_attend = DotProductAttention(v_attn_rate, c.fused_attention, self.sow_weights)

    def __call__(self, t: jax.Array, v: jax.Array, t_bias: jax.Array, v_bias: jax.Array,
                 deterministic: bool = True) -> Streams:
        c, s = self.cfg, self.spec
        dtype = jnp.dtype(c.dtype)
        vis = self.text if s.tied else self.vision
        v_rate = c.hidden_dropout_prob if s.tied else c.v_hidden_dropout_prob
        if s.has_text or s.vt:
            tk, tv_ = (self.text[n](t.astype(dtype)) for n in ("key", "value"))
        if s.has_vision or s.tv:
            vk, vv_ = (vis[n](v.astype(dtype)) for n in ("key", "value"))

        def keys(use_text: bool, use_vision: bool):
            parts = ([(tk, tv_, t_bias)] if use_text else []) + ([(vk, vv_, v_bias)] if use_vision else [])
            return tuple(jnp.concatenate([p[i] for p in parts], axis=axis) for i, axis in ((0, 1), (1, 1), (2, -1)))

        new_t, new_v = t, v
        if s.has_text:
            ctx = self.t_attend(self.text["query"](t.astype(dtype)), *keys(s.tt, s.tv), deterministic=deterministic)
            h = dropout(self, self.text["out"](ctx), c.hidden_dropout_prob, deterministic)
            new_t = self.text["norm"](h + t)
        if s.has_vision:
            ctx = self.v_attend(vis["query"](v.astype(dtype)), *keys(s.vt, s.vv), deterministic=deterministic)
            h = dropout(self, vis["out"](ctx), v_rate, deterministic)
            new_v = vis["norm"](h + v)
        return constrain_stream(new_t), constrain_stream(new_v)


class FeedForwardSublayer(nn.Module):
    """VOLTA's gated feed-forward: ``LN(dropout(W_2 act(W_1 x)) + x)`` per active stream."""

    cfg: VLConfig
    spec: Sublayer

    def _stream(self, prefix: str, width: int, hidden: int):
        c = self.cfg
        kw = dict(dtype=c.dtype, stddev=c.initializer_range, weight_grad_dtype=c.weight_grad_dtype)
        return dict(wi=dense(width, ("embed", "mlp"), name=prefix + "wi", **kw),
                    wo=dense(hidden, ("mlp", "embed"), name=prefix + "wo", **kw),
                    norm=layer_norm(c.layer_norm_eps, name=prefix + "norm"))

    def setup(self):
        c, s = self.cfg, self.spec
        self.text = self._stream("", s.t_width, c.hidden_size) if s.has_text else None
        has_own = s.has_vision and not s.tied
        self.vision = self._stream("v_", s.v_width, c.v_hidden_size) if has_own else None

    def __call__(self, t: jax.Array, v: jax.Array, t_bias: jax.Array, v_bias: jax.Array,
                 deterministic: bool = True) -> Streams:
        c, s = self.cfg, self.spec
        dtype = jnp.dtype(c.dtype)

        def ff(x, mods, act, rate):
            h = mods["wo"](activation(act)(mods["wi"](x.astype(dtype))))
            return mods["norm"](dropout(self, h, rate, deterministic) + x)

        new_t = ff(t, self.text, c.hidden_act, c.hidden_dropout_prob) if s.has_text else t
        # A tied feed-forward uses the text activation and dropout, as VOLTA's aliases do.
        v_act, v_rate = (c.hidden_act, c.hidden_dropout_prob) if s.tied else (c.v_hidden_act, c.v_hidden_dropout_prob)
        new_v = ff(v, self.text if s.tied else self.vision, v_act, v_rate) if s.has_vision else v
        return constrain_stream(new_t), constrain_stream(new_v)


# ``jax.checkpoint`` policies of ``VLConfig.remat``: "full" saves nothing inside a unit (its inputs only, so the
# backward recomputes it), "dots" saves the outputs of matmuls without batch dims (the projections and
# feed-forward matmuls; attention scores, softmax, norms and activations are recomputed).
CHECKPOINT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def rematted(cls: type[nn.Module], cfg: VLConfig, static_argnums: tuple[int, ...] = (), in_scan: bool = False
             ) -> type[nn.Module]:
    """``cls`` under ``nn.remat`` with ``cfg.remat``'s policy (``cls`` itself for "none"). Parameter names and
    values, outputs and gradients are unchanged; only what the backward pass keeps or recomputes changes.
    ``static_argnums`` count ``self`` as 0 (e.g. 5 for a sub-layer's ``deterministic``); ``in_scan``: the
    unit runs under ``nn.scan``, where XLA cannot merge the recomputation into the forward pass anyway, so
    the barriers that prevent it elsewhere are left out (they only cost speed)."""
    if cfg.remat == "none":
        return cls
    return nn.remat(cls, policy=CHECKPOINT_POLICIES[cfg.remat], prevent_cse=not in_scan,
                    static_argnums=static_argnums)


def make_sublayer(cfg: VLConfig, spec: Sublayer, sow_weights: bool, name: str, remat: bool = False) -> nn.Module:
    """The module that runs ``spec``: an attention or a feed-forward sub-layer; with ``remat``, under
    ``cfg.remat``'s policy (``rematted``)."""
    if spec.kind == "attn":
        cls = rematted(AttentionSublayer, cfg, (5,)) if remat else AttentionSublayer
        return cls(cfg, spec, sow_weights, name=name)
    cls = rematted(FeedForwardSublayer, cfg, (5,)) if remat else FeedForwardSublayer
    return cls(cfg, spec, name=name)


class Block(nn.Module):
    """One period of a repeated segment: its sub-layers in order. The unit ``nn.scan`` repeats (and the unit
    ``cfg.remat`` recomputes with ``scan_layers``).

    Returns the new streams and, with ``collect``, the streams after each of its sub-layers.
    """

    cfg: VLConfig
    sublayers: tuple[Sublayer, ...]
    deterministic: bool = True
    collect: bool = False
    sow_weights: bool = False

    @nn.compact
    def __call__(self, carry: Streams, t_bias: jax.Array, v_bias: jax.Array):
        t, v = carry
        states = []
        for j, spec in enumerate(self.sublayers):
            t, v = make_sublayer(self.cfg, spec, self.sow_weights, f"sub_{j}")(t, v, t_bias, v_bias, self.deterministic)
            states.append((t, v))
        return (t, v), (tuple(states) if self.collect else None)


class Encoder(nn.Module):
    """Runs every sub-layer of ``cfg.plan``.

    Inputs: text [B, Lt, hidden], vision [B, Lv, v_hidden], biases [B, 1, 1, L] (``attention_bias``).
    Returns the final streams and, with ``output_hidden_states``, a tuple of depth+1 (text, vision)
    pairs: the inputs, then the streams after every sub-layer (VOLTA's ``output_all_encoded_layers``).
    Parameter names: ``layer_{n}`` unscanned; ``segment_{k}/sub_{j}`` stacked on axis 0 when scanned.
    ``cfg.remat`` wraps each sub-layer (unscanned) or each ``Block`` (scanned) in ``nn.remat``.
    ``start`` / ``stop``: run only the sub-layers ``[start, stop)`` (whole segments when scanned), e.g. the
    unimodal prefix and the rest apart (``VLBertForPreTraining.text_prefix`` / ``from_prefix``).
    """

    cfg: VLConfig
    sow_weights: bool = False

    @nn.compact
    def __call__(self, t: jax.Array, v: jax.Array, t_bias: jax.Array, v_bias: jax.Array,
                 deterministic: bool = True, output_hidden_states: bool = False, start: int = 0,
                 stop: int | None = None):
        cfg = self.cfg
        stop = len(cfg.sublayers) if stop is None else stop
        states = [(t, v)]
        if not cfg.scan_layers:
            for n, spec in enumerate(cfg.sublayers):
                if not start <= n < stop:
                    continue
                layer = make_sublayer(cfg, spec, self.sow_weights, f"layer_{n}", remat=True)
                t, v = layer(t, v, t_bias, v_bias, deterministic)
                states.append((t, v))
        else:
            for k, seg in enumerate(find_segments(cfg.sublayers)):
                if seg.stop <= start or seg.start >= stop:
                    continue
                if seg.start < start or seg.stop > stop:
                    raise ValueError(f"sub-layers [{start}, {stop}) split the scanned segment [{seg.start}, "
                                     f"{seg.stop}); a scanned encoder runs whole segments")
                block = dict(cfg=cfg, sublayers=seg.sublayers, deterministic=deterministic,
                             collect=output_hidden_states, sow_weights=self.sow_weights)
                if seg.repeats == 1:
                    (t, v), ys = rematted(Block, cfg)(**block, name=f"segment_{k}")((t, v), t_bias, v_bias)
                    ys = None if ys is None else jax.tree.map(lambda a: a[None], ys)
                else:
                    unit = rematted(Block, cfg, in_scan=True)
                    scanned = nn.scan(unit, variable_axes={"params": 0, "intermediates": 0},
                                      split_rngs={"params": True, "dropout": True},
                                      in_axes=(nn.broadcast, nn.broadcast), length=seg.repeats,
                                      metadata_params={nn.PARTITION_NAME: "layers"})
                    (t, v), ys = scanned(**block, name=f"segment_{k}")((t, v), t_bias, v_bias)
                if output_hidden_states:
                    for r in range(seg.repeats):
                        states.extend((ys[j][0][r], ys[j][1][r]) for j in range(len(seg.sublayers)))
        return (t, v), (tuple(states) if output_hidden_states else None)
