"""Models: the plan-driven V&L encoder, the five VOLTA presets, and their building blocks.

Models never import data or training code.
"""

from jaxvl.models.attention import DotProductAttention, attention_bias
from jaxvl.models.ort.captioner import Captioner, CaptionerConfig, DecodeCache, collect_attention, ort_token_mask
from jaxvl.models.ort.geometry import GeometryBias, box_relational_embedding
from jaxvl.models.params import count_params, scan_params, unscan_params
from jaxvl.models.validate import BatchError, validate_batch
from jaxvl.models.volta.config import VLConfig, config_from_volta_dict, config_from_volta_json, to_volta_dict
from jaxvl.models.volta.model import VLBertForPreTraining, VLBertModel, VLOutput, get_config, get_model
from jaxvl.models.volta.plan import Sublayer, SublayerPlan, find_segments
from jaxvl.models.volta.presets import PRESETS

__all__ = [
    "PRESETS", "BatchError", "Captioner", "CaptionerConfig", "DecodeCache", "DotProductAttention", "GeometryBias",
    "Sublayer", "SublayerPlan", "VLBertForPreTraining", "VLBertModel", "VLConfig", "VLOutput", "attention_bias",
    "box_relational_embedding", "collect_attention", "config_from_volta_dict", "config_from_volta_json",
    "count_params", "find_segments", "get_config", "get_model", "ort_token_mask", "scan_params", "to_volta_dict",
    "unscan_params", "validate_batch",
]
