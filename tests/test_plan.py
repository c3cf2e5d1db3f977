"""The sub-layer plan: VOLTA's construction rules, the five presets' layouts, segment finding, JSON configs."""

import json

import pytest

from jaxvl.models import PRESETS, SublayerPlan, config_from_volta_json, find_segments, get_config, to_volta_dict


def test_presets_match_volta_ctrl_layouts():
    lx = get_config("lxmert").plan
    assert lx.tt_attn_sublayers == (0, 2, 4, 6, 8, 10, 12, 14, 16, 19, 22, 25, 28, 31)
    assert lx.tv_attn_sublayers == lx.vt_attn_sublayers == lx.shared_sublayers == (18, 21, 24, 27, 30)
    assert lx.vv_attn_sublayers == (0, 2, 4, 6, 8, 19, 22, 25, 28, 31)
    assert lx.v_ff_sublayers == (1, 3, 5, 7, 9, 20, 23, 26, 29, 32)
    assert dict(lx.bert_layer2attn_sublayer)[9] == 19 and dict(lx.bert_layer2ff_sublayer)[11] == 26
    vil = get_config("vilbert").plan
    assert vil.tv_attn_sublayers == (12, 16, 20, 24, 28, 32)
    assert vil.vv_attn_sublayers == (14, 18, 22, 26, 30, 34)
    assert vil.t_ff_sublayers == tuple(range(1, 36, 2)) and vil.v_ff_sublayers == tuple(range(13, 36, 2))
    assert dict(vil.bert_layer2attn_sublayer)[6] == 14 and dict(vil.bert_layer2ff_sublayer)[11] == 35
    assert vil.shared_sublayers == ()
    for name in ("visualbert", "uniter", "vl-bert"):
        plan = get_config(name).plan
        assert plan.depth == 24 and plan.shared_sublayers == tuple(range(24))
    assert get_config("vl-bert").type_vocab_size == 3 and not get_config("vl-bert").image_head_ln


def test_segments_of_each_preset():
    def layout(name):
        return [(s.start, len(s.sublayers), s.repeats) for s in find_segments(get_config(name).sublayers)]

    assert layout("uniter") == [(0, 2, 12)]
    assert layout("lxmert") == [(0, 2, 5), (10, 2, 4), (18, 3, 5)]
    assert layout("vilbert") == [(0, 2, 6), (12, 4, 6)]


def test_sublayer_specs_semantics():
    subs = get_config("lxmert").sublayers
    cross, self_attn, ff = subs[18], subs[19], subs[20]
    assert cross.tied and cross.tv and cross.vt and not cross.tt and not cross.vv
    assert not self_attn.tied and self_attn.tt and self_attn.vv
    assert ff.kind == "ff" and ff.t_ff and ff.v_ff and not ff.tied
    text_only = subs[10]
    assert text_only.has_text and not text_only.has_vision


@pytest.mark.parametrize("bad, message", [
    (dict(tt_attn_sublayers=[0, 1], t_ff_sublayers=[1]), "both attention and feed-forward"),
    (dict(tt_attn_sublayers=[0], t_ff_sublayers=[2]), "contiguous"),
    (dict(tt_attn_sublayers=[0], t_ff_sublayers=[1], shared_sublayers=[5]), "do not exist"),
    (dict(tt_attn_sublayers=[0], t_ff_sublayers=[1], single_ln_sublayers=[0]), "single_ln"),
    (dict(tt_attn_sublayers=[0], t_ff_sublayers=[1], bert_layer2attn_sublayer={"0": 1}), "wrong kind"),
])
def test_invalid_plans_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        SublayerPlan.from_dict(bad).validate()


def test_volta_json_round_trip(tmp_path):
    for name in PRESETS:
        cfg = get_config(name)
        path = tmp_path / f"ctrl_{name}.json"
        path.write_text(json.dumps(to_volta_dict(cfg)))
        assert config_from_volta_json(path) == cfg


def test_volta_json_with_volta_only_keys(tmp_path):
    d = to_volta_dict(get_config("vl-bert"))
    d.update(bert_model="bert-base-uncased", model="bert", do_lower_case=True, clf_hidden_size=1536,
             v_initializer_range=0.02)
    d["bert_layer2attn_sublayer"] = {str(k): v for k, v in d["bert_layer2attn_sublayer"].items()}
    path = tmp_path / "ctrl_vl-bert_base.json"
    path.write_text(json.dumps(d))
    assert config_from_volta_json(path) == get_config("vl-bert")


def test_volta_json_unknown_keys_are_named(tmp_path):
    d = to_volta_dict(get_config("uniter"))
    d["hiden_size"] = 768
    d["v_biattention_id"] = [0, 1]
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"typo\.json.*\['hiden_size', 'v_biattention_id'\]"):
        config_from_volta_json(path)


def test_volta_json_unsupported_value_is_named(tmp_path):
    d = to_volta_dict(get_config("uniter"))
    d["model"] = "roberta"
    path = tmp_path / "roberta.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="model='roberta'"):
        config_from_volta_json(path)


def test_volta_config_value_of_the_wrong_type_is_named():
    """``"hidden_size": "64"`` (a string) is named as such, not reported later as a width mismatch."""
    from jaxvl.models.volta.config import config_from_volta_dict

    with pytest.raises(ValueError, match=r"cfg.json: config key 'hidden_size' is '64' \(str\); expected a number"):
        config_from_volta_dict({"hidden_size": "64"}, source="cfg.json")
    with pytest.raises(ValueError, match="'image_head_ln' is 1 .int.; expected true/false"):
        config_from_volta_dict({"image_head_ln": 1})
    ok = config_from_volta_dict({"hidden_size": 64, "num_attention_heads": 4, "initializer_range": 1})
    assert ok.hidden_size == 64 and ok.initializer_range == 1
