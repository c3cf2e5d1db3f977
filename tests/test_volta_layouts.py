"""Both layouts of a VOLTA UNITER state dict load: VOLTA's (with ``bert.embeddings.image_token_type_embeddings``, an
alias of ``token_type_embeddings``) and that of the copy of VOLTA inside e-bug/cross-modal-ablation (without it).

The state dicts are the golden one of VOLTA's own code (``tests/data/volta_golden_uniter.npz``) and the same with
the alias deleted; loading either gives identical parameters and outputs, equal to VOLTA's.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxvl.convert.common import StateDictError
from jaxvl.convert.volta import from_volta, load_volta_checkpoint, to_volta, volta_state_dict_shapes
from jaxvl.models import get_config, get_model

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "volta_golden_uniter.npz")
ALIAS = "bert.embeddings.image_token_type_embeddings.weight"


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, np.ndarray]]:
    """VOLTA's state dict (``sd``), inputs (``in``) and outputs (``out``) of the tiny UNITER."""
    g: dict[str, dict[str, np.ndarray]] = {"sd": {}, "in": {}, "out": {}}
    with np.load(GOLDEN) as z:
        for key in z.files:
            group, _, rest = key.partition("/")
            if rest:
                g[group][rest] = z[key]
    return g


def ablation_layout(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The cross-modal-ablation copy of VOLTA's layout: no ``image_token_type_embeddings``."""
    return {k: v for k, v in sd.items() if k != ALIAS}


def flat(params) -> dict[str, np.ndarray]:
    return traverse_util.flatten_dict(params, sep="/")


def test_the_two_layouts_have_418_and_417_tensors_at_ctrl_size():
    names = volta_state_dict_shapes(get_config("uniter"))
    assert len(names) == 418 and ALIAS in names and len(ablation_layout(names)) == 417


def test_both_layouts_give_identical_parameters_and_outputs(golden):
    model = get_model("uniter", tiny=True)
    volta, ablation = golden["sd"], ablation_layout(golden["sd"])
    assert len(ablation) == len(volta) - 1
    p_volta, p_ablation = from_volta(volta, model.cfg), from_volta(ablation, model.cfg)
    a, b = flat(p_volta), flat(p_ablation)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    inputs = {k: jnp.asarray(v) for k, v in golden["in"].items()}
    outs = [model.apply({"params": p}, **inputs, deterministic=True) for p in (p_volta, p_ablation)]
    for name in ("mlm_logits", "pooled", "itm_logits"):
        np.testing.assert_array_equal(np.asarray(getattr(outs[0], name)), np.asarray(getattr(outs[1], name)))
    np.testing.assert_allclose(np.asarray(outs[1].mlm_logits), golden["out"]["mlm"], atol=1e-5)
    assert list(to_volta(p_ablation, model.cfg)) == list(volta)  # exported in VOLTA's layout


def test_a_checkpoint_file_in_the_ablation_layout_loads(golden, tmp_path):
    """As ``init.checkpoint`` and ``jaxvl ablate`` read it: a torch ``.bin`` of 417 tensors at ctrl size."""
    torch = pytest.importorskip("torch", reason="needs torch to write a .bin: pip install -e '.[test]'")
    cfg = get_config("uniter", tiny=True)
    path = tmp_path / "pytorch_model_9.bin"
    torch.save({f"module.{k}": torch.from_numpy(v) for k, v in ablation_layout(golden["sd"]).items()}, path)
    got, want = flat(load_volta_checkpoint(path, cfg)), flat(from_volta(golden["sd"], cfg))
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_only_a_derivable_alias_may_be_absent(golden):
    """The MLM decoder and a shared sub-layer's vision names are aliases too, but stay required (a state dict
    without a sub-layer's vision names may come from another plan); a present alias is still checked."""
    cfg = get_config("uniter", tiny=True)
    for key in ("cls.predictions.decoder.weight", "bert.encoder.layer.0.attention_self.v_query.weight"):
        sd = {k: v for k, v in golden["sd"].items() if k != key}
        with pytest.raises(StateDictError, match=rf"missing \(1\): {key}$"):
            from_volta(sd, cfg)
    wrong = {**golden["sd"], ALIAS: golden["sd"][ALIAS] + 1}
    with pytest.raises(StateDictError, match=f"token_type_embeddings.weight != {ALIAS}"):
        from_volta(wrong, cfg)
    short = {**golden["sd"], ALIAS: golden["sd"][ALIAS][:1]}
    with pytest.raises(StateDictError, match=f"mis-shaped \\(1\\): {ALIAS}"):
        from_volta(short, cfg)
