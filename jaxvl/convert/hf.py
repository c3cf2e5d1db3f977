"""HuggingFace ``transformers`` (PyTorch) state dicts -> jaxvl parameter trees.

Three converters, each strict: the state dict is checked with ``check_state_dict`` against the
names and shapes that ``cfg`` implies, and a ``StateDictError`` lists every missing, unexpected and
mis-shaped tensor at once. Parameters that have no counterpart in the source (jaxvl's poolers and
heads, the vision stream when loading BERT, ...) keep the values of ``init_params`` -- pass
``model.init(...)["params"]`` -- so the result is always a complete tree for ``cfg``.

- ``from_hf_lxmert``: ``LxmertModel`` -> an LXMERT-layout plan (``presets.lxmert_plan``):
  ``encoder.layer.i`` -> text sub-layers 2i (attention) / 2i+1 (feed-forward);
  ``encoder.r_layers.i`` -> the ``v_`` parameters of sub-layers 2i / 2i+1;
  ``encoder.x_layers.j`` -> sub-layers c = 2 l_layers + 3j: ``visual_attention`` (query/key/value and
  its output dense + LayerNorm, one module for both directions) -> the tied cross-attention c;
  ``lang_self_att`` / ``visn_self_att`` -> text / ``v_`` of c+1; ``lang_inter``+``lang_output`` /
  ``visn_inter``+``visn_output`` -> text / ``v_`` of c+2; ``encoder.visn_fc`` -> ``v_embeddings``.
  ``l_layers``, ``r_layers`` and ``x_layers`` are read off ``cfg``'s plan.
- ``from_hf_visualbert``: ``VisualBertModel`` -> a single-stream plan: layer i -> sub-layers 2i / 2i+1
  (tied, one set of weights for both streams); ``visual_projection`` -> ``projection``,
  ``visual_token_type_embeddings`` -> ``token_type_embeddings_visual``, ``visual_position_embeddings``
  -> ``position_embeddings_visual``.
- ``bert_into_text_stream``: a ``BertModel`` / ``BertForPreTraining`` state dict into the text stream
  through ``cfg.plan.bert_layer2attn_sublayer`` / ``bert_layer2ff_sublayer``, as VOLTA's
  ``from_pretrained(..., from_hf=True)`` does.

Deliberately ignored source tensors: the HF poolers (``pooler.dense``: tanh, hidden -> hidden, on
[CLS] only; jaxvl's ``t_pooler`` / ``v_pooler`` are ReLU, hidden -> ``pooler_size``, with a vision
pooler and fused by ``fusion_method``, so there is nothing to load them into), and the
``embeddings.position_ids`` / ``embeddings.token_type_ids`` buffers older checkpoints carry.

The number of attention heads is not visible in a state dict: ``cfg`` must use the source model's
head count (``num_attention_heads``), or the attention is split differently without any error.

Results are unboxed (no logical-partitioning metadata), float32, unscanned unless ``cfg.scan_layers``.
With ``cfg.pad_to_multiple_of`` > 1 the word table (and the MLM bias) are zero-padded to
``cfg.padded_vocab_size`` rows; the source keeps its true ``vocab_size``. ``lxmert_layout`` and
``single_stream_layers`` live in ``jaxvl.convert.hf_layouts`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from jaxvl.convert.common import (
    Params,
    Path,
    StateDict,
    StateDictError,
    check_state_dict,
    linear_to_kernel,
    pad_to_shape,
    to_numpy_state_dict,
)
from jaxvl.convert.hf_layouts import lxmert_layout, single_stream_layers
from jaxvl.models.params import scan_params, unscan_params
from jaxvl.models.volta.config import VLConfig

Shapes = dict[str, tuple[int, ...]]

# Buffers some checkpoints carry next to the weights; never parameters.
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# HF poolers: tanh(W h[CLS]) at hidden width. jaxvl's poolers differ (ReLU, pooler_size, a vision
# pooler, fused); nothing in jaxvl corresponds, so they are ignored on purpose.
HF_POOLER = ("pooler.",)


# ------------------------------------------------------------------------------------------------
# Writing into a complete parameter tree.
# ------------------------------------------------------------------------------------------------
class _Tree:
    """A flat, writable copy of ``init_params`` (unscanned) that refuses unknown paths and shapes."""

    def __init__(self, init_params: Params, cfg: VLConfig):
        params = nn.meta.unbox(init_params)
        self.wrapped = set(params) == {"params"}
        if self.wrapped:
            params = params["params"]
        self.cfg = cfg
        if cfg.scan_layers:
            params = unscan_params(params, cfg)
        # ``VLBertForPreTraining`` params hold the encoder model under ``bert``; ``VLBertModel`` params do not.
        self.base: Path = ("bert",) if "bert" in params else ()
        self.flat = {k: np.array(v) for k, v in traverse_util.flatten_dict(params).items()}  # host copies

    def rooted(self) -> _Tree:
        """A view of the same tree whose paths start at the root (heads), not at ``bert``."""
        view = object.__new__(_Tree)
        view.__dict__.update(self.__dict__)
        view.base = ()
        return view

    def has(self, path: Path) -> bool:
        return self.base + path in self.flat

    def get(self, path: Path) -> np.ndarray:
        return self.flat[self.base + path]

    def set(self, path: Path, value: np.ndarray, pad: bool = False) -> None:
        """Writes ``value`` at ``path`` (its shape must be the model's; ``pad``: zero-padded up to it first)."""
        key = self.base + path
        if key not in self.flat:
            raise KeyError(f"jaxvl has no parameter {'/'.join(key)} for this config (converter bug or wrong cfg)")
        value = pad_to_shape(value, self.flat[key].shape) if pad else np.asarray(value)
        if value.shape != self.flat[key].shape:
            raise ValueError(f"{'/'.join(key)}: converted shape {value.shape} != model shape {self.flat[key].shape}")
        self.flat[key] = value.astype(self.flat[key].dtype)

    def result(self) -> Params:
        params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in self.flat.items()})
        if self.cfg.scan_layers:
            params = scan_params(params, self.cfg)
        return {"params": params} if self.wrapped else params


def _layer(n: int) -> Path:
    return ("encoder", f"layer_{n}")


def _put_linear(tree: _Tree, sd: StateDict, hf: str, path: Path, in_shape: tuple[int, ...] = (),
                out_shape: tuple[int, ...] = ()) -> None:
    """``hf.weight`` [out, in] / ``hf.bias`` [out] -> ``path/kernel`` [*in_shape, *out_shape] / ``path/bias``."""
    tree.set(path + ("kernel",), linear_to_kernel(sd[hf + ".weight"], in_shape, out_shape))
    tree.set(path + ("bias",), np.asarray(sd[hf + ".bias"]).reshape(out_shape or (-1,)))


def _put_norm(tree: _Tree, sd: StateDict, hf: str, path: Path) -> None:
    tree.set(path + ("scale",), sd[hf + ".weight"])
    tree.set(path + ("bias",), sd[hf + ".bias"])


def _put_attention(tree: _Tree, sd: StateDict, qkv: str, out: str, n: int, prefix: str, heads: int) -> None:
    """BERT-style attention (``qkv.{query,key,value}``, ``out.{dense,LayerNorm}``) -> sub-layer ``n``."""
    width = np.shape(sd[qkv + ".query.weight"])[0]
    split = (heads, width // heads)
    for name in ("query", "key", "value"):
        _put_linear(tree, sd, f"{qkv}.{name}", _layer(n) + (prefix + name,), out_shape=split)
    _put_linear(tree, sd, out + ".dense", _layer(n) + (prefix + "out",), in_shape=split)
    _put_norm(tree, sd, out + ".LayerNorm", _layer(n) + (prefix + "norm",))


def _put_ff(tree: _Tree, sd: StateDict, inter: str, out: str, n: int, prefix: str) -> None:
    """BERT-style feed-forward (``inter.dense``, ``out.{dense,LayerNorm}``) -> sub-layer ``n``."""
    _put_linear(tree, sd, inter + ".dense", _layer(n) + (prefix + "wi",))
    _put_linear(tree, sd, out + ".dense", _layer(n) + (prefix + "wo",))
    _put_norm(tree, sd, out + ".LayerNorm", _layer(n) + (prefix + "norm",))


# ------------------------------------------------------------------------------------------------
# Expected names and shapes.
# ------------------------------------------------------------------------------------------------
def _linear_shapes(name: str, n_out: int, n_in: int) -> Shapes:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def _norm_shapes(name: str, n: int) -> Shapes:
    return {f"{name}.weight": (n,), f"{name}.bias": (n,)}


def _attention_shapes(qkv: str, out: str, hidden: int, width: int) -> Shapes:
    shapes: Shapes = {}
    for name in ("query", "key", "value"):
        shapes.update(_linear_shapes(f"{qkv}.{name}", width, hidden))
    shapes.update(_linear_shapes(out + ".dense", hidden, width))
    shapes.update(_norm_shapes(out + ".LayerNorm", hidden))
    return shapes


def _ff_shapes(inter: str, out: str, hidden: int, width: int) -> Shapes:
    return {**_linear_shapes(inter + ".dense", width, hidden), **_linear_shapes(out + ".dense", hidden, width),
            **_norm_shapes(out + ".LayerNorm", hidden)}


def _text_embedding_shapes(cfg: VLConfig, type_rows: int | None = None) -> Shapes:
    h = cfg.hidden_size
    return {"embeddings.word_embeddings.weight": (cfg.vocab_size, h),
            "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
            "embeddings.token_type_embeddings.weight": (type_rows or cfg.type_vocab_size, h),
            **_norm_shapes("embeddings.LayerNorm", h)}


def _put_text_embeddings(tree: _Tree, sd: StateDict) -> None:
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        tree.set(("embeddings", name, "embedding"), sd[f"embeddings.{name}.weight"], pad=name == "word_embeddings")
    _put_norm(tree, sd, "embeddings.LayerNorm", ("embeddings", "norm"))


def _prepare(state_dict: Mapping, prefix: str) -> StateDict:
    """Torch tensors -> numpy; drops ``prefix`` (e.g. ``"lxmert."``) from the names that carry it."""
    sd = to_numpy_state_dict(state_dict)
    return {k.removeprefix(prefix): v for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------
# LXMERT.
# ------------------------------------------------------------------------------------------------
def lxmert_state_shapes(cfg: VLConfig) -> Shapes:
    """Names and shapes of the ``LxmertModel`` state dict matching ``cfg`` (pooler excluded)."""
    n_text, r_layers, x_layers = lxmert_layout(cfg)
    subs, h, hv = cfg.sublayers, cfg.hidden_size, cfg.v_hidden_size
    shapes = _text_embedding_shapes(cfg)
    shapes.update(_linear_shapes("encoder.visn_fc.visn_fc", hv, cfg.v_feature_size))
    shapes.update(_norm_shapes("encoder.visn_fc.visn_layer_norm", hv))
    shapes.update(_linear_shapes("encoder.visn_fc.box_fc", hv, cfg.num_locs))
    shapes.update(_norm_shapes("encoder.visn_fc.box_layer_norm", hv))
    for i in range(n_text):
        p = f"encoder.layer.{i}"
        shapes.update(_attention_shapes(p + ".attention.self", p + ".attention.output", h, subs[2 * i].t_width))
        shapes.update(_ff_shapes(p + ".intermediate", p + ".output", h, subs[2 * i + 1].t_width))
    for i in range(r_layers):
        p = f"encoder.r_layers.{i}"
        shapes.update(_attention_shapes(p + ".attention.self", p + ".attention.output", hv, subs[2 * i].v_width))
        shapes.update(_ff_shapes(p + ".intermediate", p + ".output", hv, subs[2 * i + 1].v_width))
    for j in range(x_layers):
        c, p = 2 * n_text + 3 * j, f"encoder.x_layers.{j}"
        shapes.update(_attention_shapes(p + ".visual_attention.att", p + ".visual_attention.output", h,
                                        subs[c].t_width))
        shapes.update(_attention_shapes(p + ".lang_self_att.self", p + ".lang_self_att.output", h,
                                        subs[c + 1].t_width))
        shapes.update(_attention_shapes(p + ".visn_self_att.self", p + ".visn_self_att.output", hv,
                                        subs[c + 1].v_width))
        shapes.update(_ff_shapes(p + ".lang_inter", p + ".lang_output", h, subs[c + 2].t_width))
        shapes.update(_ff_shapes(p + ".visn_inter", p + ".visn_output", hv, subs[c + 2].v_width))
    return shapes


def from_hf_lxmert(state_dict: Mapping, cfg: VLConfig, init_params: Params, prefix: str = "lxmert.") -> Params:
    """``transformers.LxmertModel`` weights -> jaxvl params for an LXMERT-layout ``cfg``.

    Args:
      state_dict: ``LxmertModel.state_dict()`` (torch tensors or numpy); a leading ``prefix`` on names
        (``lxmert.`` in ``LxmertForPreTraining``) is dropped. Heads of the HF task models are not
        accepted: pass the base model's tensors.
      cfg: ``image_embeddings="lxmert"``; its plan must have the LXMERT layout (``lxmert_layout``), its
        sizes and ``num_locs`` must equal the HF config's (``visual_pos_dim``), its heads too.
      init_params: a complete jaxvl tree for ``cfg`` (e.g. ``model.init(...)["params"]``); jaxvl's
        poolers and heads keep these values. ``{"params": ...}`` is accepted and returned as such.

    Returns a complete parameter tree. Raises ``StateDictError`` if the names or shapes do not match.
    The HF pooler (``pooler.dense``: tanh, hidden -> hidden) is ignored: jaxvl has no such pooler.
    """
    if cfg.image_embeddings != "lxmert":
        raise ValueError(f"from_hf_lxmert needs image_embeddings='lxmert', got {cfg.image_embeddings!r}")
    sd = _prepare(state_dict, prefix)
    check_state_dict(sd, lxmert_state_shapes(cfg), source="LxmertModel state dict", ignore=BUFFERS + HF_POOLER)
    n_text, r_layers, x_layers = lxmert_layout(cfg)
    subs = cfg.sublayers
    tree = _Tree(init_params, cfg)
    _put_text_embeddings(tree, sd)
    v = ("v_embeddings",)
    _put_linear(tree, sd, "encoder.visn_fc.visn_fc", v + ("image_embeddings",))
    _put_norm(tree, sd, "encoder.visn_fc.visn_layer_norm", v + ("img_norm",))
    _put_linear(tree, sd, "encoder.visn_fc.box_fc", v + ("image_location_embeddings",))
    _put_norm(tree, sd, "encoder.visn_fc.box_layer_norm", v + ("loc_norm",))
    for i in range(n_text):
        p = f"encoder.layer.{i}"
        _put_attention(tree, sd, p + ".attention.self", p + ".attention.output", 2 * i, "", subs[2 * i].t_heads)
        _put_ff(tree, sd, p + ".intermediate", p + ".output", 2 * i + 1, "")
    for i in range(r_layers):
        p = f"encoder.r_layers.{i}"
        _put_attention(tree, sd, p + ".attention.self", p + ".attention.output", 2 * i, "v_", subs[2 * i].v_heads)
        _put_ff(tree, sd, p + ".intermediate", p + ".output", 2 * i + 1, "v_")
    for j in range(x_layers):
        c, p = 2 * n_text + 3 * j, f"encoder.x_layers.{j}"
        # One module for both directions, output dense + LayerNorm included: the tied sub-layer c.
        _put_attention(tree, sd, p + ".visual_attention.att", p + ".visual_attention.output", c, "", subs[c].t_heads)
        _put_attention(tree, sd, p + ".lang_self_att.self", p + ".lang_self_att.output", c + 1, "",
                       subs[c + 1].t_heads)
        _put_attention(tree, sd, p + ".visn_self_att.self", p + ".visn_self_att.output", c + 1, "v_",
                       subs[c + 1].v_heads)
        _put_ff(tree, sd, p + ".lang_inter", p + ".lang_output", c + 2, "")
        _put_ff(tree, sd, p + ".visn_inter", p + ".visn_output", c + 2, "v_")
    return tree.result()


# ------------------------------------------------------------------------------------------------
# VisualBERT.
# ------------------------------------------------------------------------------------------------
def visualbert_state_shapes(cfg: VLConfig) -> Shapes:
    """Names and shapes of the ``VisualBertModel`` state dict matching ``cfg`` (pooler excluded)."""
    subs, h = cfg.sublayers, cfg.hidden_size
    shapes = _text_embedding_shapes(cfg)
    shapes.update({"embeddings.visual_token_type_embeddings.weight": (cfg.type_vocab_size, h),
                   "embeddings.visual_position_embeddings.weight": (cfg.max_position_embeddings, h),
                   **_linear_shapes("embeddings.visual_projection", h, cfg.v_feature_size)})
    for i in range(single_stream_layers(cfg)):
        p = f"encoder.layer.{i}"
        shapes.update(_attention_shapes(p + ".attention.self", p + ".attention.output", h, subs[2 * i].t_width))
        shapes.update(_ff_shapes(p + ".intermediate", p + ".output", h, subs[2 * i + 1].t_width))
    return shapes


def from_hf_visualbert(state_dict: Mapping, cfg: VLConfig, init_params: Params,
                       prefix: str = "visual_bert.") -> Params:
    """``transformers.VisualBertModel`` weights -> jaxvl params for a single-stream VisualBERT ``cfg``.

    HF layer i -> sub-layers 2i (attention) and 2i+1 (feed-forward), shared by both streams.
    Embeddings: ``word/position/token_type_embeddings`` and ``LayerNorm`` -> the shared module's text
    tables and ``norm``; ``visual_projection`` -> ``projection``; ``visual_token_type_embeddings`` ->
    ``token_type_embeddings_visual``; ``visual_position_embeddings`` -> ``position_embeddings_visual``.
    The HF pooler is ignored (see the module docstring); ``bypass_transformer`` models (an
    ``additional_layer``) are not supported and fail the check. Other arguments as ``from_hf_lxmert``.
    """
    if cfg.image_embeddings != "visualbert":
        raise ValueError(f"from_hf_visualbert needs image_embeddings='visualbert', got {cfg.image_embeddings!r}")
    sd = _prepare(state_dict, prefix)
    check_state_dict(sd, visualbert_state_shapes(cfg), source="VisualBertModel state dict",
                     ignore=BUFFERS + HF_POOLER)
    subs = cfg.sublayers
    tree = _Tree(init_params, cfg)
    _put_text_embeddings(tree, sd)
    e = ("embeddings",)
    _put_linear(tree, sd, "embeddings.visual_projection", e + ("projection",))
    tree.set(e + ("token_type_embeddings_visual", "embedding"), sd["embeddings.visual_token_type_embeddings.weight"])
    tree.set(e + ("position_embeddings_visual", "embedding"), sd["embeddings.visual_position_embeddings.weight"])
    for i in range(single_stream_layers(cfg)):
        p = f"encoder.layer.{i}"
        _put_attention(tree, sd, p + ".attention.self", p + ".attention.output", 2 * i, "", subs[2 * i].t_heads)
        _put_ff(tree, sd, p + ".intermediate", p + ".output", 2 * i + 1, "")
    return tree.result()


# ------------------------------------------------------------------------------------------------
# BERT into the text stream.
# ------------------------------------------------------------------------------------------------
def _legacy_names(name: str) -> str:
    """TF-era LayerNorm names (``gamma``/``beta``, as in the original ``bert-base-uncased`` file) -> torch's."""
    if name.endswith(".gamma"):
        return name[: -len("gamma")] + "weight"
    if name.endswith(".beta"):
        return name[: -len("beta")] + "bias"
    return name


MLM_HEAD_SOURCES = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias")


def bert_into_text_stream(state_dict: Mapping, cfg: VLConfig, init_params: Params, *,
                          copy_visual_tables: bool = False, mlm_head: bool | None = None) -> Params:
    """A HF BERT checkpoint into jaxvl's text stream, as VOLTA's ``from_pretrained(from_hf=True)``.

    Args:
      state_dict: ``BertModel`` or ``BertForPreTraining`` tensors; the ``bert.`` prefix is optional and
        TF-era ``LayerNorm.gamma``/``beta`` names are accepted.
      cfg: any jaxvl config. BERT layer i's attention goes to sub-layer ``bert_layer2attn_sublayer[i]``
        (text query/key/value/out/norm), its intermediate/output to ``bert_layer2ff_sublayer[i]``
        (text wi/wo/norm). Every BERT layer in the checkpoint must be mapped and every mapped layer
        present (VOLTA would silently load an unmapped layer i at sub-layer i; ctrl configs map all 12).
      init_params: a complete jaxvl tree for ``cfg``; everything BERT does not provide keeps its value.
      copy_visual_tables: VOLTA's shared embeddings copy text tables into visual ones
        (``special_initialize``): VisualBERT's ``token_type_embeddings_visual`` / ``position_embeddings_visual``
        and UNITER's ``v_LayerNorm``. VOLTA copies in the module constructor, *before* the BERT weights
        are loaded, so its visual tables are copies of the random init (its UNITER ``v_LayerNorm``
        stays at (1, 0)). False (default) keeps ``init_params``' values: VOLTA's behaviour, up to the
        random draw. True starts them as copies of BERT's token-type / position tables and embedding
        LayerNorm, the evident intent of ``special_initialize``.
      mlm_head: load ``cls.predictions`` (transform dense + LayerNorm, output bias) into jaxvl's MLM head,
        as VOLTA does because the names coincide. None (default): when the checkpoint has them and the
        tree has an ``mlm`` head. The decoder weight is the (tied) word table and is not read again.

    Token types: when ``cfg.type_vocab_size`` exceeds BERT's (VL-BERT: 3 vs 2), BERT's rows fill the
    first rows and the rest keep ``init_params``' values (VOLTA's ``_get_resized_embeddings``).
    Ignored: BERT's pooler, ``cls.seq_relationship`` (NSP; jaxvl's ITM head differs), buffers.
    Raises ``StateDictError`` listing every missing, unexpected and mis-shaped tensor.
    """
    sd = {_legacy_names(k): v for k, v in _prepare(state_dict, "bert.").items()}
    plan = cfg.plan
    attn_map, ff_map = dict(plan.bert_layer2attn_sublayer), dict(plan.bert_layer2ff_sublayer)
    if not attn_map and not ff_map:
        raise ValueError("cfg.plan maps no BERT layers (bert_layer2attn_sublayer / bert_layer2ff_sublayer are empty)")
    subs, h = cfg.sublayers, cfg.hidden_size
    tree = _Tree(init_params, cfg)

    type_key = "embeddings.token_type_embeddings.weight"
    bert_types = np.shape(sd[type_key])[0] if type_key in sd else cfg.type_vocab_size
    shapes = _text_embedding_shapes(cfg, type_rows=bert_types if bert_types <= cfg.type_vocab_size else None)
    for i, n in attn_map.items():
        if not subs[n].has_text:
            raise ValueError(f"bert_layer2attn_sublayer maps BERT layer {i} to sub-layer {n}, which has no text stream")
        p = f"encoder.layer.{i}"
        shapes.update(_attention_shapes(p + ".attention.self", p + ".attention.output", h, subs[n].t_width))
    for i, n in ff_map.items():
        if not subs[n].has_text:
            raise ValueError(f"bert_layer2ff_sublayer maps BERT layer {i} to sub-layer {n}, which has no text stream")
        p = f"encoder.layer.{i}"
        shapes.update(_ff_shapes(p + ".intermediate", p + ".output", h, subs[n].t_width))
    head = tree.rooted()
    has_head = head.has(("mlm", "bias"))
    load_mlm = mlm_head if mlm_head is not None else (has_head and any(k.startswith("cls.predictions.") for k in sd))
    if load_mlm:
        if not has_head:
            raise ValueError("mlm_head=True but init_params have no 'mlm' head (pass VLBertForPreTraining params)")
        shapes.update(_linear_shapes(MLM_HEAD_SOURCES[0], h, h))
        shapes.update(_norm_shapes(MLM_HEAD_SOURCES[1], h))
        shapes[MLM_HEAD_SOURCES[2]] = (cfg.vocab_size,)
    # cls.* beyond what is loaded: the tied decoder (weight, and the bias alias newer HF versions save),
    # BERT's NSP head; the whole cls.* when the MLM head is not loaded.
    ignore = BUFFERS + HF_POOLER + (("cls.predictions.decoder.", "cls.seq_relationship.") if load_mlm else ("cls.",))
    check_state_dict(sd, shapes, source="BERT state dict", ignore=ignore)

    for name in ("word_embeddings", "position_embeddings"):
        tree.set(("embeddings", name, "embedding"), sd[f"embeddings.{name}.weight"], pad=name == "word_embeddings")
    types = tree.get(("embeddings", "token_type_embeddings", "embedding")).copy()
    types[:bert_types] = sd[type_key]
    tree.set(("embeddings", "token_type_embeddings", "embedding"), types)
    _put_norm(tree, sd, "embeddings.LayerNorm", ("embeddings", "norm"))
    if copy_visual_tables and cfg.image_embeddings == "visualbert":
        visual_types = tree.get(("embeddings", "token_type_embeddings_visual", "embedding")).copy()
        visual_types[:bert_types] = sd[type_key]
        tree.set(("embeddings", "token_type_embeddings_visual", "embedding"), visual_types)
        tree.set(("embeddings", "position_embeddings_visual", "embedding"), sd["embeddings.position_embeddings.weight"])
    if copy_visual_tables and cfg.image_embeddings == "uniter":
        _put_norm(tree, sd, "embeddings.LayerNorm", ("embeddings", "v_norm"))

    for i, n in attn_map.items():
        p = f"encoder.layer.{i}"
        _put_attention(tree, sd, p + ".attention.self", p + ".attention.output", n, "", subs[n].t_heads)
    for i, n in ff_map.items():
        p = f"encoder.layer.{i}"
        _put_ff(tree, sd, p + ".intermediate", p + ".output", n, "")
    if load_mlm:
        _put_linear(head, sd, MLM_HEAD_SOURCES[0], ("mlm", "transform"))
        _put_norm(head, sd, MLM_HEAD_SOURCES[1], ("mlm", "norm"))
        head.set(("mlm", "bias"), sd[MLM_HEAD_SOURCES[2]], pad=True)
    return tree.result()


__all__ = [
    "StateDictError", "bert_into_text_stream", "from_hf_lxmert", "from_hf_visualbert", "lxmert_layout",
    "lxmert_state_shapes", "single_stream_layers", "visualbert_state_shapes",
]
