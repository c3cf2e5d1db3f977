"""VOLTA ``BertForVLPreTraining`` state dicts <-> jaxvl parameter trees.

VOLTA (e-bug/volta) names every tensor after its PyTorch module path. Tied tensors appear once per
alias in a real VOLTA state dict:

- a shared sub-layer (``cfg.sublayers[n].tied``) exposes its text modules under the vision names too
  (``attention_self.v_query`` = ``attention_self.query``, ``attention_output.v_dense`` = ``dense``,
  ``output.v_LayerNorm`` = ``output.LayerNorm``, ...);
- ``cls.predictions.decoder.weight`` is the word-embedding table;
- UNITER's ``bert.embeddings.image_token_type_embeddings`` is its ``token_type_embeddings``.

``from_volta`` reads one copy of each tied tensor (after checking that every alias holds exactly the
same values) and ``to_volta`` writes every alias, so a round trip is bitwise exact. Both work on
jaxvl's unscanned layout (``layer_{n}``); use ``jaxvl.models.scan_params`` / ``unscan_params`` for
the scanned one.

Two layouts of UNITER are read: VOLTA's (418 tensors at ctrl size) and that of the copy of VOLTA inside
e-bug/cross-modal-ablation (417), whose ``UniterEmbeddings`` has no ``image_token_type_embeddings`` and looks
the image rows up in ``token_type_embeddings`` itself: the same computation, so the missing alias is derived
from the table it aliases. Only such a *derivable* alias may be absent. The other aliases are required: both
codes write them, and a state dict without a shared sub-layer's vision names may equally come from another
plan, which must not load silently. ``to_volta`` writes VOLTA's layout.

Layouts: torch ``Linear.weight`` is ``[out, in]``; jaxvl dense kernels are ``[in, out]``, attention
query/key/value kernels ``[in, heads, head_dim]`` with bias ``[heads, head_dim]``, and the attention
output kernel ``[heads, head_dim, out]``. LayerNorm ``weight`` is jaxvl's ``scale``; ``nn.Embedding``
``weight`` is ``embedding``.

Refused rather than guessed at (``ValueError``): VL-BERT with the MVRC target ``"6"`` (VOLTA then adds
``object_mask_word_embedding``, which jaxvl does not model); VL-BERT with
``8 * v_coordinate_embeddings_dim != v_feature_size`` (VOLTA's ``obj_downsample`` is
``Linear(2 * v_feature_size, v_hidden_size)``); one-directional cross-attention sub-layers (``tv`` without
``vv``/``vt`` or the reverse: VOLTA has no key/value projections for the stream it reads). In the
remaining configurations VOLTA cannot run, shapes follow jaxvl's model: ``v_LayerNorm`` of an attention
sub-layer is ``v_hidden_size`` wide (VOLTA sizes it by ``sublayer2v_attn_hidden_size`` and then fails in
its forward pass when the two differ), and feature targets ``"1"``/``"2"``/``"5"`` are ``v_feature_size``
wide (VOLTA fixes 2048, equal at ctrl sizes).

Padding (``VLConfig.pad_to_multiple_of`` > 1): the word table (``word_embeddings``, the tied
``cls.predictions.decoder.weight``), ``cls.predictions.bias`` and the class decoders
(``cls.imagePredictions.decoder_dict.{0,3,4,6}``) are zero-padded to the model's padded sizes on import
and sliced back to VOLTA's sizes on export (``to_volta`` accepts padded or unpadded trees), so VOLTA's
state dict and the round trip are the same at any padding.

Checked against VOLTA at 62f78cd: names, order, shapes and tie structure of ``state_dict()`` for the five
presets (full and tiny) and the VOLTA configs jaxvl accepts (``ctrl_*``, ``lxmert``, ``vilbert_base``).
"""

from __future__ import annotations

import dataclasses
import os
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
    pad_to_shape,
    slice_to_shape,
)
from jaxvl.models.volta.config import VLConfig

MODULE_PREFIX = "module."  # DataParallel / DistributedDataParallel checkpoints


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One VOLTA tensor: its name and shape, the jaxvl parameter it maps to, and how to convert.

    ``kind``: ``copy`` (same layout), ``linear`` ([out, in] <-> [in, out]), ``qkv`` ([H*D, in] <->
    [in, H, D]; bias [H*D] <-> [H, D]), ``out`` ([out, H*D] <-> [H, D, out]). ``padded``: the jaxvl
    parameter's shape when ``pad_to_multiple_of`` pads it (``jax_shape`` plus zero rows / columns).
    ``derivable``: an alias that a state dict may lack (module doc); it is then read from the name it aliases.
    """

    name: str
    shape: Shape
    path: Path
    jax_shape: Shape
    kind: str = "copy"
    padded: Shape | None = None
    derivable: bool = False

    def to_jax(self, x: np.ndarray) -> np.ndarray:
        """VOLTA layout [``shape``] -> jaxvl layout [``padded`` or ``jax_shape``]."""
        x = np.asarray(x)
        if self.kind in ("linear", "qkv", "out") and x.ndim == 2:
            n_in = self.jax_shape[:-2] if self.kind == "out" else self.jax_shape[:1]
            x = linear_to_kernel(x, n_in, self.jax_shape[len(n_in):])
        else:
            x = x.reshape(self.jax_shape)
        return np.ascontiguousarray(x if self.padded is None else pad_to_shape(x, self.padded))

    def to_volta(self, x: np.ndarray) -> np.ndarray:
        """jaxvl layout [``jax_shape``, or ``padded``: the padding is dropped] -> VOLTA layout [``shape``]."""
        x = np.asarray(x)
        if self.padded is not None:
            if x.shape not in (self.padded, self.jax_shape):
                raise ValueError(f"{'/'.join(self.path)}: shape {x.shape}, expected {self.padded} (padded) or "
                                 f"{self.jax_shape}")
            x = slice_to_shape(x, self.jax_shape)
        if self.kind in ("linear", "qkv", "out") and len(self.shape) == 2:
            return np.ascontiguousarray(kernel_to_linear(x, 2 if self.kind == "out" else 1))
        return np.ascontiguousarray(x.reshape(self.shape))


class _Builder:
    """Collects ``_Tensor`` entries in VOLTA's ``state_dict()`` order."""

    def __init__(self):
        self.tensors: list[_Tensor] = []

    def add(self, name: str, shape: Shape, path: Path, jax_shape: Shape | None = None, kind: str = "copy",
            padded: Shape | None = None, derivable: bool = False):
        jax_shape = tuple(jax_shape or shape)
        padded = None if padded is None or tuple(padded) == jax_shape else tuple(padded)
        self.tensors.append(_Tensor(name, tuple(shape), tuple(path), jax_shape, kind, padded, derivable))

    def linear(self, name: str, path: Path, n_in: int, n_out: int, padded_out: int | None = None):
        """``nn.Linear(n_in, n_out)`` -> flax ``Dense`` kernel [n_in, n_out] and bias [n_out] (``padded_out``
        columns in jaxvl when given)."""
        n_pad = padded_out or n_out
        self.add(f"{name}.weight", (n_out, n_in), path + ("kernel",), (n_in, n_out), "linear", (n_in, n_pad))
        self.add(f"{name}.bias", (n_out,), path + ("bias",), padded=(n_pad,))

    def qkv(self, name: str, path: Path, n_in: int, heads: int, width: int):
        """A query/key/value ``nn.Linear(n_in, width)`` -> kernel [n_in, heads, width // heads]."""
        head_dim = width // heads
        self.add(f"{name}.weight", (width, n_in), path + ("kernel",), (n_in, heads, head_dim), "qkv")
        self.add(f"{name}.bias", (width,), path + ("bias",), (heads, head_dim), "qkv")

    def out(self, name: str, path: Path, heads: int, width: int, n_out: int):
        """An attention output ``nn.Linear(width, n_out)`` -> kernel [heads, width // heads, n_out]."""
        self.add(f"{name}.weight", (n_out, width), path + ("kernel",), (heads, width // heads, n_out), "out")
        self.add(f"{name}.bias", (n_out,), path + ("bias",))

    def ln(self, name: str, path: Path, size: int):
        """``BertLayerNorm(size)``: weight -> scale, bias -> bias."""
        self.add(f"{name}.weight", (size,), path + ("scale",))
        self.add(f"{name}.bias", (size,), path + ("bias",))

    def emb(self, name: str, path: Path, num: int, size: int, padded_num: int | None = None, derivable: bool = False):
        """``nn.Embedding(num, size)`` -> flax ``Embed`` table [num, size] (``padded_num`` rows in jaxvl when given)."""
        self.add(f"{name}.weight", (num, size), path + ("embedding",), padded=(padded_num or num, size),
                 derivable=derivable)


def _check_supported(cfg: VLConfig) -> None:
    """Raises ValueError for configurations whose VOLTA state dict jaxvl cannot map (see module docstring)."""
    for n, s in enumerate(cfg.sublayers):
        # VOLTA projects a stream's keys only when that stream is updated at the sub-layer, so it cannot
        # run tv without vv/vt (or vt without tt/tv); its state dict then lacks the keys jaxvl needs.
        if s.kind == "attn" and ((s.tv and not s.has_vision) or (s.vt and not s.has_text)):
            raise ValueError(f"sub-layer {n}: one-directional cross-attention (tv without vv/vt or vt without "
                             "tt/tv) cannot run in VOLTA, which has no key/value projections for the other stream")
    if cfg.image_embeddings == "vl-bert":
        if "6" in cfg.visual_targets:
            raise ValueError("VL-BERT with visual target '6' has VOLTA's object_mask_word_embedding, "
                             "which jaxvl does not model")
        if 8 * cfg.v_coordinate_embeddings_dim != cfg.v_feature_size:
            raise ValueError(f"VOLTA's VL-BERT needs 8 * v_coordinate_embeddings_dim "
                             f"({8 * cfg.v_coordinate_embeddings_dim}) == v_feature_size ({cfg.v_feature_size}): "
                             "its obj_downsample is Linear(2 * v_feature_size, v_hidden_size)")


def _text_tables(b: _Builder, cfg: VLConfig, prefix: str, path: Path):
    b.emb(f"{prefix}.word_embeddings", path + ("word_embeddings",), cfg.vocab_size, cfg.hidden_size,
          cfg.padded_vocab_size)
    b.emb(f"{prefix}.position_embeddings", path + ("position_embeddings",), cfg.max_position_embeddings,
          cfg.hidden_size)
    b.emb(f"{prefix}.token_type_embeddings", path + ("token_type_embeddings",), cfg.type_vocab_size, cfg.hidden_size)


def _embeddings(b: _Builder, cfg: VLConfig):
    """``bert.embeddings.*`` (and ``bert.v_embeddings.*`` for dual-stream models)."""
    p, jp = "bert.embeddings", ("bert", "embeddings")
    h, vh, feat = cfg.hidden_size, cfg.v_hidden_size, cfg.v_feature_size
    kind = cfg.image_embeddings
    if kind in ("vilbert", "lxmert"):
        _text_tables(b, cfg, p, jp)
        b.ln(f"{p}.LayerNorm", jp + ("norm",), h)
        vp, vjp = "bert.v_embeddings", ("bert", "v_embeddings")
        b.linear(f"{vp}.image_embeddings", vjp + ("image_embeddings",), feat, vh)
        b.linear(f"{vp}.image_location_embeddings", vjp + ("image_location_embeddings",), cfg.num_locs, vh)
        if kind == "vilbert":
            b.ln(f"{vp}.LayerNorm", vjp + ("norm",), vh)
        else:
            b.ln(f"{vp}.ImgLayerNorm", vjp + ("img_norm",), vh)
            b.ln(f"{vp}.LocLayerNorm", vjp + ("loc_norm",), vh)
    elif kind == "uniter":
        _text_tables(b, cfg, p, jp)
        b.ln(f"{p}.LayerNorm", jp + ("norm",), h)
        b.linear(f"{p}.image_embeddings", jp + ("image_embeddings",), feat, vh)
        b.linear(f"{p}.image_location_embeddings", jp + ("image_location_embeddings",), cfg.num_locs, vh)
        # An alias of token_type_embeddings (VOLTA's UniterEmbeddings with model="bert"); absent from the
        # cross-modal-ablation copy of VOLTA, which reads token_type_embeddings directly (module doc).
        b.emb(f"{p}.image_token_type_embeddings", jp + ("token_type_embeddings",), cfg.type_vocab_size, h,
              derivable=True)
        b.ln(f"{p}.image_layer_norm", jp + ("image_norm",), h)
        b.ln(f"{p}.image_location_layer_norm", jp + ("image_location_norm",), h)
        b.ln(f"{p}.v_LayerNorm", jp + ("v_norm",), h)
    elif kind == "visualbert":
        _text_tables(b, cfg, p, jp)
        b.ln(f"{p}.LayerNorm", jp + ("norm",), h)
        b.linear(f"{p}.projection", jp + ("projection",), feat, h)
        b.emb(f"{p}.token_type_embeddings_visual", jp + ("token_type_embeddings_visual",), cfg.type_vocab_size, h)
        b.emb(f"{p}.position_embeddings_visual", jp + ("position_embeddings_visual",), cfg.max_position_embeddings, h)
    elif kind == "vl-bert":
        # obj_downsample = Sequential(Dropout, Linear, ReLU): the Linear is entry 1.
        b.linear(f"{p}.obj_downsample.1", jp + ("obj_downsample",), 2 * feat, vh)
        b.add(f"{p}.object_linguistic_embeddings.weight", (1, h), jp + ("object_linguistic_embeddings",))
        b.add(f"{p}.object_mask_visual_embedding.weight", (1, feat), jp + ("object_mask_visual_embedding",))
        b.add(f"{p}.end_embedding.weight", (1, h), jp + ("end_embedding",))
        _text_tables(b, cfg, p, jp)
        b.ln(f"{p}.visual_ln_text", jp + ("visual_ln_text",), h)
        b.ln(f"{p}.visual_ln_object", jp + ("visual_ln_object",), h)
        b.ln(f"{p}.LayerNorm", jp + ("norm",), h)
    else:  # pragma: no cover -- VLConfig validates image_embeddings
        raise ValueError(f"unknown image_embeddings {kind!r}")


def _encoder(b: _Builder, cfg: VLConfig):
    """``bert.encoder.layer.{n}.*`` for every sub-layer; tied vision names point at the text params."""
    h, vh = cfg.hidden_size, cfg.v_hidden_size
    for n, s in enumerate(cfg.sublayers):
        p, jp = f"bert.encoder.layer.{n}", ("bert", "encoder", f"layer_{n}")
        v = "" if s.tied else "v_"  # the jaxvl name prefix the vision stream's parameters live under
        if s.kind == "attn":
            if s.has_text:
                for m in ("query", "key", "value"):
                    b.qkv(f"{p}.attention_self.{m}", jp + (m,), h, s.t_heads, s.t_width)
            if s.has_vision:
                for m in ("query", "key", "value"):
                    if s.tied:
                        b.qkv(f"{p}.attention_self.v_{m}", jp + (m,), h, s.t_heads, s.t_width)
                    else:
                        b.qkv(f"{p}.attention_self.v_{m}", jp + (f"v_{m}",), vh, s.v_heads, s.v_width)
            if s.has_text:
                b.out(f"{p}.attention_output.dense", jp + ("out",), s.t_heads, s.t_width, h)
                b.ln(f"{p}.attention_output.LayerNorm", jp + ("norm",), h)
            if s.has_vision:
                heads, width = (s.t_heads, s.t_width) if s.tied else (s.v_heads, s.v_width)
                b.out(f"{p}.attention_output.v_dense", jp + (f"{v}out",), heads, width, vh)
                b.ln(f"{p}.attention_output.v_LayerNorm", jp + (f"{v}norm",), vh)
        else:
            v_width = s.t_width if s.tied else s.v_width
            if s.has_text:
                b.linear(f"{p}.intermediate.dense", jp + ("wi",), h, s.t_width)
            if s.has_vision:
                b.linear(f"{p}.intermediate.v_dense", jp + (f"{v}wi",), vh, v_width)
            if s.has_text:
                b.linear(f"{p}.output.dense", jp + ("wo",), s.t_width, h)
                b.ln(f"{p}.output.LayerNorm", jp + ("norm",), h)
            if s.has_vision:
                b.linear(f"{p}.output.v_dense", jp + (f"{v}wo",), v_width, vh)
                b.ln(f"{p}.output.v_LayerNorm", jp + (f"{v}norm",), vh)


def _heads(b: _Builder, cfg: VLConfig):
    """Poolers (``bert.t_pooler``, ``bert.v_pooler``) and ``cls.*`` heads."""
    h, vh = cfg.hidden_size, cfg.v_hidden_size
    if cfg.fusion_method != "none":
        b.linear("bert.t_pooler.dense", ("bert", "t_pooler", "dense"), h, cfg.pooler_size)
    if cfg.fusion_method in ("mul", "sum"):
        b.linear("bert.v_pooler.dense", ("bert", "v_pooler", "dense"), vh, cfg.v_pooler_size)
    b.add("cls.predictions.bias", (cfg.vocab_size,), ("mlm", "bias"), padded=(cfg.padded_vocab_size,))
    b.linear("cls.predictions.transform.dense", ("mlm", "transform"), h, h)
    b.ln("cls.predictions.transform.LayerNorm", ("mlm", "norm"), h)
    # Tied to the word-embedding table (no bias).
    b.add("cls.predictions.decoder.weight", (cfg.vocab_size, h), ("bert", "embeddings", "word_embeddings", "embedding"),
          padded=(cfg.padded_vocab_size, h))
    if cfg.fusion_method != "none":
        b.linear("cls.bi_seq_relationship", ("itm",), cfg.pooler_size, cfg.itm_dim)
    b.linear("cls.imagePredictions.transform.dense", ("image_predictions", "transform"), vh, vh)
    if cfg.image_head_ln:
        b.ln("cls.imagePredictions.transform.LayerNorm", ("image_predictions", "norm"), vh)
    for key, size in cfg.visual_targets.items():
        b.linear(f"cls.imagePredictions.decoder_dict.{key}", ("image_predictions", f"decoder_{key}"), vh, size,
                 cfg.padded_visual_targets[key])


def _tensors(cfg: VLConfig) -> list[_Tensor]:
    """Every tensor of VOLTA's ``BertForVLPreTraining(cfg).state_dict()``, in its order, aliases included."""
    _check_supported(cfg)
    b = _Builder()
    _embeddings(b, cfg)
    _encoder(b, cfg)
    _heads(b, cfg)
    return b.tensors


def volta_state_dict_shapes(cfg: VLConfig) -> dict[str, Shape]:
    """Name -> shape of every tensor in VOLTA's ``BertForVLPreTraining(config).state_dict()`` for ``cfg``,
    in VOLTA's order, every alias of a tied tensor included (torch layouts: ``Linear.weight`` [out, in])."""
    return {t.name: t.shape for t in _tensors(cfg)}


def volta_tied_groups(cfg: VLConfig) -> list[tuple[str, ...]]:
    """The VOLTA names that hold one tensor (two or more names each), first name = the one read."""
    groups: dict[Path, list[str]] = {}
    for t in _tensors(cfg):
        groups.setdefault(t.path, []).append(t.name)
    return [tuple(names) for names in groups.values() if len(names) > 1]


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k.removeprefix(MODULE_PREFIX): v for k, v in state.items()}


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _set(tree: Params, path: Path, value: np.ndarray) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _get(tree: Mapping, path: Path) -> Any:
    node = tree
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            where = "/".join(path[:i + 1])
            if isinstance(node, Mapping) and key.startswith("layer_") and any(k.startswith("segment_") for k in node):
                raise KeyError(f"{where}: params are in the scanned layout; call jaxvl.models.unscan_params first")
            raise KeyError(f"parameter {where} is missing from the jaxvl tree")
        node = node[key]
    return node


def from_volta(state_dict: Mapping[str, Any], cfg: VLConfig, source: str = "VOLTA state dict") -> Params:
    """VOLTA ``BertForVLPreTraining`` state dict -> jaxvl parameter tree (unscanned ``layer_{n}`` layout).

    ``state_dict`` maps VOLTA names (optionally prefixed ``module.``) to torch tensors or numpy arrays
    in torch layouts. The result is a nested dict of numpy arrays shaped like
    ``flax.linen.meta.unbox(model.init(...)["params"])`` (dtypes kept as given; padded tables and decoders,
    see the module docstring, zero-padded). A derivable alias (UNITER's ``image_token_type_embeddings``, module
    docstring) may be absent. Raises ``StateDictError`` listing every missing, unexpected and mis-shaped tensor, or
    naming both keys when two aliases of one tied tensor hold different values.
    """
    tensors = _tensors(cfg)
    state = _strip_module_prefix(state_dict)
    derivable = tuple(t.name for t in tensors if t.derivable)  # not required; shape-checked when present
    check_state_dict(state, {t.name: t.shape for t in tensors}, source=source, ignore=derivable)
    params: Params = {}
    first: dict[Path, tuple[str, np.ndarray]] = {}
    mismatched = []
    for t in tensors:
        if t.name not in state:  # a derivable alias: its tensor is read under the name it aliases
            continue
        value = _as_numpy(state[t.name])
        if t.path in first:
            name0, value0 = first[t.path]
            if not np.array_equal(value0, value, equal_nan=np.issubdtype(value.dtype, np.floating)):
                mismatched.append(f"{name0} != {t.name}")
            continue
        first[t.path] = (t.name, value)
        _set(params, t.path, t.to_jax(value))
    if mismatched:
        raise StateDictError(f"{source}: tied tensors hold different values (they must be one tensor in VOLTA): "
                             + ", ".join(mismatched))
    return params


def to_volta(params: Mapping[str, Any], cfg: VLConfig) -> StateDict:
    """jaxvl parameter tree (unscanned, boxed or unboxed) -> VOLTA state dict of numpy arrays.

    Every alias of a tied tensor is written (as its own array, equal values), in VOLTA's key order,
    so ``torch.save({k: torch.from_numpy(v) ...})`` gives a checkpoint VOLTA's ``load_state_dict`` accepts.
    """
    from flax.linen import meta

    params = meta.unbox(params)
    if "params" in params and "bert" not in params:
        params = params["params"]
    return {t.name: t.to_volta(np.asarray(_get(params, t.path))) for t in _tensors(cfg)}


def load_volta_checkpoint(path: str | os.PathLike, cfg: VLConfig) -> Params:
    """Reads a VOLTA checkpoint (``pytorch_model_*.bin`` with ``weights_only=True``, or ``.safetensors``;
    ``module.`` prefixes stripped) and converts it with ``from_volta``."""
    return from_volta(load_state_dict(path, prefix_strip=MODULE_PREFIX), cfg, source=os.fspath(path))


__all__: list[str] = ["from_volta", "load_volta_checkpoint", "to_volta", "volta_state_dict_shapes",
                      "volta_tied_groups"]
