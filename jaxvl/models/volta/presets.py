"""The five controlled V&L BERTs of VOLTA (``config/ctrl_*.json``) as plans: data, not code.

Single-stream models (VisualBERT, UNITER, VL-BERT) are BERT-base over ``[text ; vision]``: 12 x
[joint attention, feed-forward], all shared. LXMERT: 9 text layers beside 5 vision layers, then 5
cross blocks [shared cross-attention, self-attention, feed-forward]. ViLBERT: 6 text layers, then 6
blocks [co-attention, feed-forward, self-attention, feed-forward].
"""

from __future__ import annotations

from typing import Any

from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.plan import SublayerPlan

PRESETS = ("visualbert", "uniter", "vl-bert", "lxmert", "vilbert")


def single_stream_plan(num_layers: int = 12) -> SublayerPlan:
    attn, ff = tuple(range(0, 2 * num_layers, 2)), tuple(range(1, 2 * num_layers, 2))
    every = tuple(range(2 * num_layers))
    return SublayerPlan(
        tt_attn_sublayers=attn, tv_attn_sublayers=attn, vt_attn_sublayers=attn, vv_attn_sublayers=attn,
        t_ff_sublayers=ff, v_ff_sublayers=ff, shared_sublayers=every, single_ln_sublayers=every,
        bert_layer2attn_sublayer=tuple((i, 2 * i) for i in range(num_layers)),
        bert_layer2ff_sublayer=tuple((i, 2 * i + 1) for i in range(num_layers)),
    )


def lxmert_plan(l_layers: int = 9, r_layers: int = 5, x_layers: int = 5, bert_layers: int = 12) -> SublayerPlan:
    text = 2 * l_layers  # sub-layers 0..2l-1 are text layers; vision layers run at 0..2r-1 beside them
    cross = tuple(text + 3 * j for j in range(x_layers))
    self_attn = tuple(c + 1 for c in cross)
    cross_ff = tuple(c + 2 for c in cross)
    bert_attn = [(i, 2 * i) for i in range(l_layers)] + [(l_layers + j, self_attn[j])
                                                           for j in range(min(x_layers, bert_layers - l_layers))]
    bert_ff = [(i, 2 * i + 1) for i in range(l_layers)] + [(l_layers + j, cross_ff[j])
                                                            for j in range(min(x_layers, bert_layers - l_layers))]
    return SublayerPlan(
        tt_attn_sublayers=tuple(range(0, text, 2)) + self_attn,
        tv_attn_sublayers=cross, vt_attn_sublayers=cross,
        vv_attn_sublayers=tuple(range(0, 2 * r_layers, 2)) + self_attn,
        t_ff_sublayers=tuple(range(1, text, 2)) + cross_ff,
        v_ff_sublayers=tuple(range(1, 2 * r_layers, 2)) + cross_ff,
        shared_sublayers=cross,
        bert_layer2attn_sublayer=tuple(bert_attn), bert_layer2ff_sublayer=tuple(bert_ff),
    )


def vilbert_plan(t_layers: int = 6, blocks: int = 6) -> SublayerPlan:
    text = 2 * t_layers
    co = tuple(text + 4 * j for j in range(blocks))
    co_ff = tuple(c + 1 for c in co)
    self_attn = tuple(c + 2 for c in co)
    self_ff = tuple(c + 3 for c in co)
    return SublayerPlan(
        tt_attn_sublayers=tuple(range(0, text, 2)) + self_attn,
        tv_attn_sublayers=co, vt_attn_sublayers=co, vv_attn_sublayers=self_attn,
        t_ff_sublayers=tuple(range(1, text, 2)) + tuple(sorted(co_ff + self_ff)),
        v_ff_sublayers=tuple(sorted(co_ff + self_ff)),
        bert_layer2attn_sublayer=tuple((i, 2 * i) for i in range(t_layers)) + tuple(
            (t_layers + j, s) for j, s in enumerate(self_attn)),
        bert_layer2ff_sublayer=tuple((i, 2 * i + 1) for i in range(t_layers)) + tuple(
            (t_layers + j, s) for j, s in enumerate(self_ff)),
    )


def preset_config(name: str) -> VLConfig:
    """The VOLTA ctrl configuration of ``name`` (one of ``PRESETS``) at full size."""
    if name == "visualbert":
        return VLConfig(image_embeddings="visualbert", plan=single_stream_plan())
    if name == "uniter":
        return VLConfig(image_embeddings="uniter", plan=single_stream_plan())
    if name == "vl-bert":
        return VLConfig(image_embeddings="vl-bert", plan=single_stream_plan(), type_vocab_size=3,
                        v_coordinate_embeddings_dim=256, image_head_ln=False)
    if name == "lxmert":
        return VLConfig(image_embeddings="lxmert", plan=lxmert_plan())
    if name == "vilbert":
        return VLConfig(image_embeddings="vilbert", plan=vilbert_plan())
    raise ValueError(f"unknown model {name!r}; expected one of {PRESETS}")


def tiny_overrides(name: str) -> dict[str, Any]:
    """Small sizes for tests: 32 wide, 4 heads, 2-3 layers per stream, tiny vocab and features."""
    sizes = dict(vocab_size=99, hidden_size=32, v_hidden_size=32, num_attention_heads=4, v_num_attention_heads=4,
                 intermediate_size=37, v_intermediate_size=37, v_feature_size=24, max_position_embeddings=64,
                 pooler_size=24, v_pooler_size=24)
    if name == "vl-bert":
        sizes["v_coordinate_embeddings_dim"] = 3  # 4 coords x (sin, cos) x 3 = 24 = v_feature_size
    plan = {"visualbert": single_stream_plan(2), "uniter": single_stream_plan(2), "vl-bert": single_stream_plan(2),
            "lxmert": lxmert_plan(l_layers=3, r_layers=2, x_layers=2, bert_layers=4),
            "vilbert": vilbert_plan(t_layers=2, blocks=2)}[name]
    return {**sizes, **plan.to_dict()}
