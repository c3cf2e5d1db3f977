"""Object Relation Transformer (yahoo/object_relation_transformer) state dicts <-> ``Captioner`` parameter trees.

ORT's ``RelationTransformerModel.state_dict()`` names (read at 9f28357), for encoder layer i and decoder
layer j, with jaxvl's parameter under each:

- ``att_embed.0`` (Linear; ``use_bn=0``) -> ``att_embed``
- ``model.encoder.layers.{i}.self_attn.linears.{0,1,2,3}`` -> ``encoder/layer_{i}/self_attn/{query,key,value,out}``
- ``model.encoder.layers.{i}.self_attn.WGs.{h}`` (8 x ``Linear(64, 1)``) -> column h of
  ``encoder/layer_{i}/geometry/kernel`` [64, 8] and entry h of its ``bias`` [8]
- ``model.encoder.layers.{i}.feed_forward.w_{1,2}`` -> ``encoder/layer_{i}/ff/{wi,wo}``
- ``model.encoder.layers.{i}.sublayer.{0,1}.norm.{a_2,b_2}`` -> ``encoder/layer_{i}/norm_{0,1}/{scale,bias}``
- ``model.encoder.norm`` -> ``encoder/norm``
- ``model.decoder.layers.{j}.{self_attn,src_attn}.linears.{0..3}`` -> ``decoder/layer_{j}/{self_attn,cross_attn}/...``
- ``model.decoder.layers.{j}.feed_forward``, ``sublayer.{0,1,2}.norm`` -> ``ff``, ``norm_{0,1,2}``;
  ``model.decoder.norm`` -> ``decoder/norm``
- ``model.tgt_embed.0.lut.weight`` -> ``embed/embedding``; ``model.generator.proj`` -> ``generator``
- ``model.tgt_embed.1.pe`` [1, 5000, d_model]: the positional-encoding buffer, not a parameter. ``from_ort``
  accepts state dicts with or without it (and checks it against the sinusoids when present); ``to_ort``
  writes it, so ORT's strict ``load_state_dict`` accepts the result.

Layouts: torch ``Linear.weight`` [out, in] <-> kernel [in, out]; query/key/value [H*D, d] <-> [d, H, D] with
bias [H*D] <-> [H, D]; output projection [d, H*D] <-> [H, D, d]. ORT hard-codes 8 heads (``make_model``'s
``h=8`` and the 8 ``WGs``), so only ``num_heads=8`` configs convert. ``att_embed`` with BatchNorm
(``use_bn`` 1 or 2) is not modelled; its extra tensors are reported as unexpected.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvl.convert.common import (
    Params,
    Path,
    Shape,
    StateDict,
    StateDictError,
    check_state_dict,
    kernel_to_linear,
    linear_to_kernel,
    load_state_dict,
    to_numpy_state_dict,
)
from jaxvl.models.ort.captioner import CaptionerConfig

ORT_HEADS = 8
PE_NAME = "model.tgt_embed.1.pe"
PE_LEN = 5000  # ORT's PositionalEncoding max_len
MODULE_PREFIX = "module."


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One ORT tensor and the jaxvl parameter it maps to.

    ``kind``: ``copy``; ``linear`` ([out, in] <-> [in, out]); ``qkv`` ([H*D, in] <-> [in, H, D], bias [H*D] <->
    [H, D]); ``out`` ([out, H*D] <-> [H, D, out]); ``wg`` (one head's ``WGs`` tensor: weight [1, dim] or bias
    [1] <-> column / entry ``head`` of a [dim, H] kernel / [H] bias).
    """

    name: str
    shape: Shape
    path: Path
    jax_shape: Shape
    kind: str = "copy"
    head: int = 0

    def to_jax(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "linear" and x.ndim == 2:
            return linear_to_kernel(x)
        if self.kind in ("qkv", "out") and x.ndim == 2:
            n_in = self.jax_shape[:2] if self.kind == "out" else self.jax_shape[:1]
            return linear_to_kernel(x, n_in, self.jax_shape[len(n_in):])
        return x.reshape(self.jax_shape)

    def to_ort(self, x: np.ndarray) -> np.ndarray:
        if self.kind in ("linear", "qkv", "out") and len(self.shape) == 2:
            return kernel_to_linear(x, 2 if self.kind == "out" else 1)
        return x.reshape(self.shape)


class _Builder:
    def __init__(self, cfg: CaptionerConfig):
        self.cfg = cfg
        self.tensors: list[_Tensor] = []

    def add(self, name: str, shape: Shape, path: Path, jax_shape: Shape | None = None, kind: str = "copy",
            head: int = 0):
        self.tensors.append(_Tensor(name, tuple(shape), tuple(path), tuple(jax_shape or shape), kind, head))

    def linear(self, name: str, path: Path, n_in: int, n_out: int):
        self.add(f"{name}.weight", (n_out, n_in), path + ("kernel",), (n_in, n_out), "linear")
        self.add(f"{name}.bias", (n_out,), path + ("bias",))

    def attention(self, name: str, path: Path):
        """ORT's ``linears.{0,1,2,3}``: query, key, value, output."""
        d, h = self.cfg.d_model, self.cfg.num_heads
        for k, proj in enumerate(("query", "key", "value")):
            self.add(f"{name}.linears.{k}.weight", (d, d), path + (proj, "kernel"), (d, h, d // h), "qkv")
            self.add(f"{name}.linears.{k}.bias", (d,), path + (proj, "bias"), (h, d // h), "qkv")
        self.add(f"{name}.linears.3.weight", (d, d), path + ("out", "kernel"), (h, d // h, d), "out")
        self.add(f"{name}.linears.3.bias", (d,), path + ("out", "bias"))

    def geometry(self, name: str, path: Path):
        dim, h = self.cfg.geometry_features, self.cfg.num_heads
        for head in range(h):
            self.add(f"{name}.WGs.{head}.weight", (1, dim), path + ("kernel",), (dim, h), "wg", head)
            self.add(f"{name}.WGs.{head}.bias", (1,), path + ("bias",), (h,), "wg", head)

    def feed_forward(self, name: str, path: Path):
        self.linear(f"{name}.w_1", path + ("wi",), self.cfg.d_model, self.cfg.d_ff)
        self.linear(f"{name}.w_2", path + ("wo",), self.cfg.d_ff, self.cfg.d_model)

    def norm(self, name: str, path: Path):
        self.add(f"{name}.a_2", (self.cfg.d_model,), path + ("scale",))
        self.add(f"{name}.b_2", (self.cfg.d_model,), path + ("bias",))


def _check_supported(cfg: CaptionerConfig) -> None:
    if cfg.num_heads != ORT_HEADS:
        raise ValueError(f"num_heads={cfg.num_heads}: ORT hard-codes {ORT_HEADS} heads (make_model's h and the "
                         f"{ORT_HEADS} WGs per encoder layer)")


def _tensors(cfg: CaptionerConfig) -> list[_Tensor]:
    """Every ORT parameter in ``state_dict()`` order (the ``pe`` buffer is handled separately)."""
    _check_supported(cfg)
    b = _Builder(cfg)
    d = cfg.d_model
    b.linear("att_embed.0", ("att_embed",), cfg.feature_size, d)
    for i in range(cfg.num_encoder_layers):
        p, jp = f"model.encoder.layers.{i}", ("encoder", f"layer_{i}")
        b.attention(f"{p}.self_attn", jp + ("self_attn",))
        b.geometry(f"{p}.self_attn", jp + ("geometry",))
        b.feed_forward(f"{p}.feed_forward", jp + ("ff",))
        for k in range(2):
            b.norm(f"{p}.sublayer.{k}.norm", jp + (f"norm_{k}",))
    b.norm("model.encoder.norm", ("encoder", "norm"))
    for j in range(cfg.num_decoder_layers):
        p, jp = f"model.decoder.layers.{j}", ("decoder", f"layer_{j}")
        b.attention(f"{p}.self_attn", jp + ("self_attn",))
        b.attention(f"{p}.src_attn", jp + ("cross_attn",))
        b.feed_forward(f"{p}.feed_forward", jp + ("ff",))
        for k in range(3):
            b.norm(f"{p}.sublayer.{k}.norm", jp + (f"norm_{k}",))
    b.norm("model.decoder.norm", ("decoder", "norm"))
    b.add("model.tgt_embed.0.lut.weight", (cfg.vocab_size, d), ("embed", "embedding"))
    b.linear("model.generator.proj", ("generator",), d, cfg.vocab_size)
    return b.tensors


def ort_positional_encoding(d_model: int, length: int = PE_LEN) -> np.ndarray:
    """ORT's ``PositionalEncoding.pe`` buffer [1, length, d_model] float32, computed as ORT does."""
    position = np.arange(length, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * np.float32(-np.log(10000.0) / d_model))
    pe = np.zeros((length, d_model), np.float32)
    pe[:, 0::2] = np.sin(position * div)
    pe[:, 1::2] = np.cos(position * div)
    return pe[None]


def ort_state_dict_shapes(cfg: CaptionerConfig, include_buffers: bool = True) -> dict[str, Shape]:
    """Names and shapes of ORT's ``state_dict()`` for ``cfg``, in ORT's order (``pe`` where ORT puts it)."""
    shapes = {t.name: t.shape for t in _tensors(cfg)}
    if not include_buffers:
        return shapes
    out = {}
    for name, shape in shapes.items():
        if name == "model.generator.proj.weight":
            out[PE_NAME] = (1, PE_LEN, cfg.d_model)
        out[name] = shape
    return out


def ort_config_from_state_dict(state_dict: Mapping[str, Any], **overrides: Any) -> CaptionerConfig:
    """A ``CaptionerConfig`` with the sizes read off an ORT state dict (layer counts, widths, vocabulary,
    trigonometric or raw box embedding). Flags a state dict cannot show (``legacy_extra_skip``, the geometry
    convention, dropout rates) come from ``overrides`` or the ORT defaults."""
    state = {k.removeprefix(MODULE_PREFIX): v for k, v in state_dict.items()}

    def shape(name: str) -> Shape:
        if name not in state:
            raise StateDictError(f"ORT state dict: missing {name}, cannot infer the model sizes")
        return tuple(np.shape(state[name]))

    def count(stack: str) -> int:
        pattern = re.compile(rf"model\.{stack}\.layers\.(\d+)\.")
        return 1 + max((int(m.group(1)) for k in state if (m := pattern.match(k))), default=-1)

    d_model, feature_size = shape("att_embed.0.weight")
    geometry_dim = shape("model.encoder.layers.0.self_attn.WGs.0.weight")[1]
    sizes = dict(vocab_size=shape("model.tgt_embed.0.lut.weight")[0], feature_size=feature_size, d_model=d_model,
                 num_heads=ORT_HEADS, d_ff=shape("model.encoder.layers.0.feed_forward.w_1.weight")[0],
                 num_encoder_layers=count("encoder"), num_decoder_layers=count("decoder"),
                 trigonometric_embedding=geometry_dim != 4)
    if geometry_dim != 4:
        sizes["box_embedding_dim"] = geometry_dim
    return CaptionerConfig(**{**sizes, **overrides})


def _set(tree: Params, path: Path, value: np.ndarray) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _get(tree: Mapping, path: Path) -> Any:
    node = tree
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(f"parameter {'/'.join(path[:i + 1])} is missing from the Captioner parameter tree")
        node = node[key]
    return node


def from_ort(state_dict: Mapping[str, Any], cfg: CaptionerConfig, source: str = "ORT state dict") -> Params:
    """ORT ``RelationTransformerModel`` state dict -> ``Captioner`` parameter tree.

    ``state_dict`` maps ORT names (optionally prefixed ``module.``) to torch tensors or numpy arrays. The result
    is a nested dict of numpy arrays shaped like ``flax.linen.meta.unbox(model.init(...)["params"])`` (dtypes
    kept). Raises ``StateDictError`` listing every missing, unexpected and mis-shaped tensor, or when the
    ``pe`` buffer is not the sinusoid table of ``cfg.d_model``.
    """
    tensors = _tensors(cfg)
    state = to_numpy_state_dict({k.removeprefix(MODULE_PREFIX): v for k, v in state_dict.items()})
    check_state_dict(state, {t.name: t.shape for t in tensors}, source=source, ignore=(PE_NAME,))
    if PE_NAME in state:
        pe = state[PE_NAME]
        if pe.shape != (1, PE_LEN, cfg.d_model):
            raise StateDictError(f"{source} does not match the model:\n  mis-shaped (1): {PE_NAME}: got {pe.shape}, "
                                 f"expected {(1, PE_LEN, cfg.d_model)}")
        # float32 sin/cos of angles up to 5000 differ by ~1e-4 between libraries; a layout change differs by ~1.
        if not np.allclose(pe, ort_positional_encoding(cfg.d_model), atol=1e-3):
            raise StateDictError(f"{source}: {PE_NAME} is not ORT's sinusoid table for d_model={cfg.d_model}")
    params: Params = {}
    stacked: dict[Path, np.ndarray] = {}
    for t in tensors:
        value = state[t.name]
        if t.kind == "wg":
            if t.path not in stacked:
                stacked[t.path] = np.zeros(t.jax_shape, value.dtype)
                _set(params, t.path, stacked[t.path])
            stacked[t.path][..., t.head] = value.reshape(-1)
        else:
            _set(params, t.path, np.ascontiguousarray(t.to_jax(value)))
    return params


def to_ort(params: Mapping[str, Any], cfg: CaptionerConfig, include_buffers: bool = True) -> StateDict:
    """``Captioner`` parameter tree (boxed or unboxed, or ``{"params": ...}``) -> ORT state dict of numpy arrays
    in ORT's key order; with ``include_buffers`` the ``pe`` buffer too, so ORT's ``load_state_dict`` accepts it."""
    from flax.linen import meta

    params = meta.unbox(params)
    if "params" in params and "encoder" not in params:
        params = params["params"]
    tensors = {t.name: t for t in _tensors(cfg)}
    out: StateDict = {}
    for name in ort_state_dict_shapes(cfg, include_buffers):
        if name == PE_NAME:
            out[name] = ort_positional_encoding(cfg.d_model)
            continue
        t = tensors[name]
        value = np.asarray(_get(params, t.path))
        if value.shape != t.jax_shape:
            raise StateDictError(f"parameter {'/'.join(t.path)}: got {value.shape}, expected {t.jax_shape}")
        if t.kind == "wg":
            out[name] = np.ascontiguousarray(value[..., t.head].reshape(t.shape))
        else:
            out[name] = np.ascontiguousarray(t.to_ort(value))
    return out


def load_ort_checkpoint(path: str | os.PathLike, cfg: CaptionerConfig | None = None,
                        **overrides: Any) -> tuple[Params, CaptionerConfig]:
    """Reads an ORT ``model.pth`` (``torch.load(weights_only=True)``; ``module.`` prefixes stripped) and returns
    ``(params, cfg)``; without ``cfg`` the sizes come from ``ort_config_from_state_dict(state, **overrides)``."""
    state = load_state_dict(path, prefix_strip=MODULE_PREFIX)
    if cfg is None:
        cfg = ort_config_from_state_dict(state, **overrides)
    return from_ort(state, cfg, source=os.fspath(path)), cfg


__all__: list[str] = ["from_ort", "load_ort_checkpoint", "ort_config_from_state_dict", "ort_positional_encoding",
                      "ort_state_dict_shapes", "to_ort"]
