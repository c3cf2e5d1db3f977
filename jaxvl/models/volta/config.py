"""Model configuration: VOLTA's ``BertConfig`` keys as a frozen dataclass, plus jaxvl's own knobs.

``config_from_volta_json`` reads VOLTA's ``config/ctrl_*.json`` files; ``to_volta_dict`` writes
them back. Keys VOLTA knows but jaxvl does not implement are accepted only at their defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from jaxvl.models.layers import WEIGHT_GRAD_DTYPES
from jaxvl.models.volta.plan import LIST_KEYS, MAP_KEYS, Sublayer, SublayerPlan, unimodal_prefix

# VOLTA's visual target heads: key -> output size (volta/losses.py `pre_vis_targets`).
VISUAL_TARGET_SIZES = {"0": 1601, "1": 2048, "2": 2048, "3": 1600, "4": 400, "5": 2048, "6": 1601}
# The class-scored ones (softmax over detector labels); "1", "2", "5" regress features and are never padded.
CLASS_TARGETS = frozenset({"0", "3", "4", "6"})
IMAGE_EMBEDDINGS = ("vilbert", "lxmert", "uniter", "visualbert", "vl-bert")
DUAL_EMBEDDINGS = ("vilbert", "lxmert")
# VLConfig fields that VOLTA's JSON does not have (written to / read from VOLTA configs never).
JAXVL_ONLY = frozenset({"plan", "num_object_classes", "num_attribute_classes", "dtype", "scan_layers",
                        "fused_attention", "pad_to_multiple_of", "remat", "weight_grad_dtype"})
# Activation rematerialisation policies of the encoder (``VLConfig.remat``).
REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class VLConfig:
    """One V&L BERT. Field names follow VOLTA's ``BertConfig`` wherever VOLTA has the field."""

    # Text stream.
    vocab_size: int = 30522
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    # Vision stream.
    image_embeddings: str = "vilbert"
    v_feature_size: int = 2048
    v_hidden_size: int = 768
    v_num_attention_heads: int = 12
    v_intermediate_size: int = 3072
    v_hidden_act: str = "gelu"
    v_hidden_dropout_prob: float = 0.1
    v_attention_probs_dropout_prob: float = 0.1
    num_locs: int = 5
    v_coordinate_embeddings_dim: int | None = None
    add_global_imgfeat: str | None = "first"
    # Pooling, fusion and heads.
    pooler_size: int = 1024
    v_pooler_size: int = 1024
    fusion_method: str = "mul"
    fusion_act: str = "relu"
    itm_dim: int = 2
    image_head_ln: bool = True
    visual_target_weights: tuple[tuple[str, float], ...] = (("0", 1.0),)
    # The encoder.
    plan: SublayerPlan = SublayerPlan()
    # jaxvl only: detector label spaces (VOLTA fixes VG's 1600 objects / 400 attributes), matmul dtype,
    # nn.scan over repeated segments, fused attention kernel, the multiple the vocabulary and the class
    # targets' widths are padded to (``padded_vocab_size``; 1: no padding, VOLTA's exact shapes), and what the
    # backward pass recomputes (``REMAT_POLICIES``: "none" keeps every activation, "full" recomputes each
    # encoder sub-layer (each scanned block with ``scan_layers``), "dots" keeps only its matmul outputs);
    # remat changes memory and time, never parameters or outputs; below float32, the dtype the dense layers'
    # weight gradients are produced and all-reduced in (``jaxvl.models.layers.WEIGHT_GRAD_DTYPES``: "float32",
    # or "compute": the matmul dtype, up to half the all-reduce bytes, the cross-device sum rounded in bf16).
    num_object_classes: int = 1600
    num_attribute_classes: int = 400
    dtype: str = "float32"
    scan_layers: bool = False
    fused_attention: bool = True
    pad_to_multiple_of: int = 1
    remat: str = "none"
    weight_grad_dtype: str = "float32"

    def __post_init__(self):
        if self.image_embeddings not in IMAGE_EMBEDDINGS:
            raise ValueError(f"image_embeddings={self.image_embeddings!r}; expected one of {IMAGE_EMBEDDINGS}")
        if self.image_embeddings == "vl-bert" and not self.v_coordinate_embeddings_dim:
            raise ValueError("image_embeddings='vl-bert' needs v_coordinate_embeddings_dim")
        if self.image_embeddings in ("uniter", "visualbert", "vl-bert") and self.hidden_size != self.v_hidden_size:
            raise ValueError(f"{self.image_embeddings} embeds both streams in one space: hidden_size != v_hidden_size")
        if self.fusion_method not in ("mul", "sum", "text", "none"):
            raise ValueError(f"fusion_method={self.fusion_method!r}; jaxvl supports mul, sum, text, none")
        if self.fusion_method in ("mul", "sum") and self.pooler_size != self.v_pooler_size:
            raise ValueError("pooler_size != v_pooler_size")
        if self.fusion_act not in ("relu", "tanh"):
            raise ValueError(f"fusion_act={self.fusion_act!r}; expected relu or tanh")
        for key, _ in self.visual_target_weights:
            if key not in VISUAL_TARGET_SIZES:
                raise ValueError(f"visual_target_weights key {key!r} unknown; expected {sorted(VISUAL_TARGET_SIZES)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r}; expected float32, bfloat16 or float16")
        if not isinstance(self.pad_to_multiple_of, int) or self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of={self.pad_to_multiple_of!r}; expected an int >= 1")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        if self.weight_grad_dtype not in WEIGHT_GRAD_DTYPES:
            raise ValueError(f"weight_grad_dtype={self.weight_grad_dtype!r}; expected one of {WEIGHT_GRAD_DTYPES}")
        self.sublayers  # noqa: B018 -- validates the plan against the sizes

    @property
    def dual_stream(self) -> bool:
        return self.image_embeddings in DUAL_EMBEDDINGS

    @property
    def visual_targets(self) -> dict[str, int]:
        """Visual head key -> output size, for every target with a positive weight.

        Feature targets (MRFR ``"1"``/``"5"``, NCE ``"2"``) regress ``v_feature_size``; class targets
        predict ``num_object_classes`` + 1 (``"0"``, ``"6"``: with background), ``num_object_classes``
        (``"3"``) or ``num_attribute_classes`` (``"4"``). At VOLTA's sizes these are its fixed
        2048 / 1601 / 1600 / 400.
        """
        k = self.num_object_classes
        sizes = {"0": k + 1, "1": self.v_feature_size, "2": self.v_feature_size, "3": k,
                 "4": self.num_attribute_classes, "5": self.v_feature_size, "6": k + 1}
        return {key: sizes[key] for key, w in self.visual_target_weights if w > 0}

    def padded(self, size: int) -> int:
        """``size`` rounded up to a multiple of ``pad_to_multiple_of``."""
        return -(-size // self.pad_to_multiple_of) * self.pad_to_multiple_of

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the word table and width of the MLM bias: ``vocab_size`` padded (e.g. 30522 -> 30592 at 128).

        Padding rows and columns are parameters no output depends on: input ids stay below ``vocab_size``,
        ``mlm_logits`` and the class targets' logits are sliced back to their true sizes inside the model (so
        every softmax and loss sees exactly the unpadded model's numbers and padding gets no gradient), the
        converters slice them off on export, and ``count_params(params, cfg)`` leaves them out.
        """
        return self.padded(self.vocab_size)

    @property
    def padded_visual_targets(self) -> dict[str, int]:
        """``visual_targets`` with the class targets' (``CLASS_TARGETS``) widths padded, e.g. 1601 -> 1664 at 128:
        the decoders' parameter widths. Feature targets keep ``v_feature_size``."""
        return {key: self.padded(size) if key in CLASS_TARGETS else size for key, size in self.visual_targets.items()}

    @property
    def sublayers(self) -> tuple[Sublayer, ...]:
        return self.plan.sublayers(self.hidden_size, self.num_attention_heads, self.intermediate_size,
                                   self.v_hidden_size, self.v_num_attention_heads, self.v_intermediate_size)

    @property
    def unimodal_prefix(self) -> int:
        """Leading sub-layers where each stream reads only its own input (``plan.unimodal_prefix``; segment
        aligned with ``scan_layers``); 0 for single-stream models, whose embeddings already mix the two."""
        return unimodal_prefix(self.sublayers, self.scan_layers) if self.dual_stream else 0

    def replace(self, **overrides: Any) -> VLConfig:
        """A copy with fields replaced; plan keys (e.g. ``tt_attn_sublayers``) may be given directly."""
        plan_keys = {k: overrides.pop(k) for k in list(overrides) if k in LIST_KEYS + MAP_KEYS}
        if plan_keys:
            plan = self.plan.to_dict()
            plan.update(plan_keys)
            overrides["plan"] = SublayerPlan.from_dict(plan)
        if "visual_target_weights" in overrides:
            overrides["visual_target_weights"] = _weights(overrides["visual_target_weights"])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown VLConfig fields: {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)


def _weights(value: Mapping | tuple) -> tuple[tuple[str, float], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), float(w)) for k, w in items))


# VOLTA BertConfig keys that jaxvl reads but does not model, with the only values it accepts.
# Anything else is either a VLConfig field, a plan key, or unknown (an error).
_ACCEPTED_AT = {
    "bert_model": None,  # any BERT-family name: only the tokenizer/init source, not the architecture
    "model": ("bert",),
    "do_lower_case": None,
    "max_boxes": None,
    "v_initializer_range": None,
    "clf_hidden_size": None,
    "objective": None,
    "visualization": None,
    "qa_task_weight": (0, 0.0),
    "qa_num_answers": None,
    "fixed_layers": ([],),
    "m_encoder": (None,),
    "m_layer": (0,),
    "v_layers": ([],),
    "has_mapping": None,
    "has_mapping_bias": None,
    "load_x_model": (False,),
    "fixed_embs": (None,),
    "norm_embeddings": (False,),
}


def config_from_volta_dict(d: Mapping, source: str = "<dict>") -> VLConfig:
    """Builds a ``VLConfig`` from VOLTA ``BertConfig`` keys; unknown keys are an error naming them."""
    fields = {f.name for f in dataclasses.fields(VLConfig)} - JAXVL_ONLY
    unknown = sorted(set(d) - fields - set(LIST_KEYS) - set(MAP_KEYS) - set(_ACCEPTED_AT))
    if unknown:
        raise ValueError(f"{source}: unknown VOLTA config keys {unknown}")
    for key, allowed in _ACCEPTED_AT.items():
        if key in d and allowed is not None and d[key] not in allowed:
            raise ValueError(f"{source}: {key}={d[key]!r} is not supported by jaxvl (accepted: {list(allowed)})")
    kwargs = {k: d[k] for k in fields if k in d}
    _check_types(kwargs, source)
    if "visual_target_weights" in kwargs:
        kwargs["visual_target_weights"] = _weights(kwargs["visual_target_weights"])
    try:
        return VLConfig(plan=SublayerPlan.from_dict(d), **kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from e


def _check_types(values: Mapping, source: str) -> None:
    """Each value of a number or flag field has that type (``"hidden_size": "64"``, a string, is named as a
    string rather than found later as a width mismatch). bools are not numbers here; ints pass as floats."""
    defaults = {f.name: f.default for f in dataclasses.fields(VLConfig)}
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            raise ValueError(f"{source}: config key {key!r} is {value!r} ({type(value).__name__}); expected "
                             f"{'true/false' if isinstance(default, bool) else 'a number'} like {default!r}")


def config_from_volta_json(path: str | os.PathLike) -> VLConfig:
    """Reads a VOLTA model config JSON (``config/ctrl_*.json``) into a ``VLConfig``."""
    with open(path, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object of config keys")
    return config_from_volta_dict(d, source=str(path))


def to_volta_dict(cfg: VLConfig) -> dict:
    """The config in VOLTA's JSON form (inverse of ``config_from_volta_dict`` for VOLTA's keys)."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
           if f.name not in JAXVL_ONLY}
    out["visual_target_weights"] = dict(cfg.visual_target_weights)
    out.update(cfg.plan.to_dict())
    return out
