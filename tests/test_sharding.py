"""The ('data', 'fsdp', 'tensor') mesh and the logical-axis rules (abstract shapes only: nothing compiles)."""

import logging

import jax
import pytest
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jaxvl.models import get_model
from jaxvl.pretrain.step import state_shardings
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import (
    DEFAULT_RULES,
    batch_sharding,
    bytes_per_device,
    logical_to_mesh_spec,
    make_mesh,
    param_shardings,
    rules_for_mesh,
)

P = PartitionSpec


def abstract_params(name="uniter", **overrides):
    model = get_model(name, tiny=True, **overrides)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))["params"]


def test_make_mesh_fills_and_is_auto():
    mesh = make_mesh()
    assert mesh.axis_names == ("data", "fsdp", "tensor") and tuple(mesh.shape.values()) == (8, 1, 1)
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert tuple(make_mesh(1, -1, 2).shape.values()) == (1, 4, 2)
    assert tuple(make_mesh(devices=jax.devices()[:1]).shape.values()) == (1, 1, 1)
    with pytest.raises(ValueError):
        make_mesh(3, -1, 1)
    with pytest.raises(ValueError):
        make_mesh(-1, -1, 1)
    with pytest.raises(ValueError, match="needs 9 devices; 8 given"):
        make_mesh(3, 3, 1)
    with pytest.raises(ValueError, match="needs 4 devices; 8 given"):
        make_mesh(2, 2, 1, devices=jax.devices())  # devices given: every one is used


def test_a_mesh_smaller_than_the_host_takes_its_first_devices(monkeypatch, caplog):
    """Sizes given in full that need fewer devices than the host has: the first ones (one process); several
    processes must cover every device, so there the same sizes still fail."""
    with caplog.at_level("WARNING", logger="jaxvl.runtime.sharding"):
        mesh = make_mesh(2, 2, 1)
    assert tuple(mesh.shape.values()) == (2, 2, 1) and list(mesh.devices.flat) == jax.devices()[:4]
    assert "uses the first 4 of this process's 8 devices" in caplog.text
    assert list(make_mesh(1, 1, 1).devices.flat) == jax.devices()[:1]
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="needs 4 devices; 8 given .with several processes a mesh must cover"):
        make_mesh(2, 2, 1)


def test_size_one_axes_drop_out_of_the_rules():
    assert rules_for_mesh(make_mesh(8, 1, 1)) == (("batch", "data"),)
    fsdp = dict(rules_for_mesh(make_mesh(1, 8, 1)))
    assert fsdp == {"batch": "fsdp", "embed": "fsdp", "vocab": "fsdp", "mlp": "fsdp"}
    both = rules_for_mesh(make_mesh(2, 2, 2))
    assert both[0] == ("batch", ("data", "fsdp")) and ("heads", "tensor") in both and ("mlp", "fsdp") in both


@pytest.mark.parametrize("shape, wi, words, query", [
    ((8, 1, 1), P(None, None), P(None, None), P(None, None, None)),
    ((1, 8, 1), P("fsdp", None), P(None, "fsdp"), P("fsdp", None, None)),
    ((2, 1, 4), P(None, "tensor"), P("tensor", None), P(None, "tensor", None)),
    ((1, 2, 4), P("fsdp", "tensor"), P("tensor", "fsdp"), P("fsdp", "tensor", None)),
])
def test_one_rule_set_for_every_mesh(shape, wi, words, query):
    mesh = make_mesh(*shape)
    assert logical_to_mesh_spec(("embed", "mlp"), (64, 128), mesh)[0] == wi
    assert logical_to_mesh_spec(("vocab", "embed"), (1024, 64), mesh)[0] == words
    assert logical_to_mesh_spec(("embed", "heads", "kv"), (64, 4, 16), mesh)[0] == query
    # A scanned stack axis is never sharded; the rest resolves as without it.
    assert logical_to_mesh_spec(("layers", "embed", "mlp"), (3, 64, 128), mesh)[0] == P(None, *wi)


def test_repeated_names_and_indivisible_dims():
    fsdp = make_mesh(1, 8, 1)
    # flax's resolver rejects ('embed', 'embed'); here the first dim that divides takes 'fsdp'.
    assert logical_to_mesh_spec(("embed", "embed"), (64, 64), fsdp)[0] == P("fsdp", None)
    assert logical_to_mesh_spec(("embed", "embed"), (12, 64), fsdp)[0] == P(None, "fsdp")
    # vocab 99 does not divide over tensor=4: that rule is skipped (with a note), 'fsdp' still applies.
    spec, notes = logical_to_mesh_spec(("vocab", "embed"), (99, 64), make_mesh(1, 2, 4), where="words")
    assert spec == P(None, "fsdp")
    assert len(notes) == 1 and "words: dim 0 ('vocab', size 99)" in notes[0] and "('tensor',)" in notes[0]
    # Nothing divides: replicated.
    spec, notes = logical_to_mesh_spec(("mlp",), (37,), make_mesh(1, 2, 4))
    assert spec == P(None) and len(notes) == 2
    with pytest.raises(ValueError):
        logical_to_mesh_spec(("embed",), (4, 4), fsdp)


def test_param_shardings_of_a_tiny_model(caplog):
    boxed = abstract_params()  # hidden 32, FFN 37, vocab 99, 1601 object classes
    mesh = make_mesh(1, 2, 4)
    with caplog.at_level(logging.INFO, logger="jaxvl.runtime.sharding"):
        shardings = param_shardings(boxed, mesh)
    flat = {jax.tree_util.keystr(k, simple=True, separator="/"): s
            for k, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
    assert jax.tree.structure(shardings) == jax.tree.structure(nn.meta.unbox(boxed))
    assert all(isinstance(s, NamedSharding) for s in flat.values())
    assert flat["bert/embeddings/word_embeddings/embedding"].spec == P(None, "fsdp")  # 99 % 4 != 0
    assert flat["bert/encoder/layer_0/query/kernel"].spec == P("fsdp", "tensor", None)
    assert flat["bert/encoder/layer_1/wi/kernel"].spec == P("fsdp", None)  # 37 % 4 != 0
    assert flat["image_predictions/decoder_0/bias"].spec == P(None)  # 1601 classes
    assert flat["mlm/transform/kernel"].spec == P("fsdp", None)  # ('embed', 'embed')
    logged = "\n".join(caplog.messages)
    assert "bert/encoder/layer_1/wi/bias: dim 0 ('mlp', size 37)" in logged
    assert "image_predictions/decoder_0/kernel: dim 1 ('classes', size 1601)" in logged
    # Every sharded dim divides; one device: everything replicated.
    for leaf, s in zip(jax.tree.leaves(nn.meta.unbox(boxed)), flat.values(), strict=True):
        s.shard_shape(leaf.shape)
    single = param_shardings(boxed, make_mesh(devices=jax.devices()[:1]))
    assert all(s.spec == P(*[None] * len(s.spec)) or s.spec == P() for s in jax.tree.leaves(single))


def test_state_shardings_follow_the_params():
    model = get_model("lxmert", tiny=True)
    tx = make_optimizer(OptimizerConfig(total_steps=10))
    batch = {k: jax.ShapeDtypeStruct((8, *v.shape[1:]), v.dtype) for k, v in model.dummy_inputs().items()}
    mesh = make_mesh(1, 8, 1)
    state = state_shardings(model, tx, batch, mesh)
    params = param_shardings(abstract_params("lxmert"), mesh)
    assert state.params == params
    adam = state.opt_state[1]  # clip, adam, decay, lr
    assert adam.mu == params and adam.nu == params and adam.count.spec == P()
    assert state.step.spec == P() and state.rng.spec == P()
    # Per-device bytes of params under FSDP vs one device.
    shapes = nn.meta.unbox(abstract_params("lxmert"))
    one = bytes_per_device(shapes, param_shardings(abstract_params("lxmert"), make_mesh(devices=jax.devices()[:1])))
    assert bytes_per_device(shapes, params) < one / 4


def test_batch_sharding_and_default_rules():
    mesh = make_mesh(2, 2, 2)
    assert batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert batch_sharding(mesh, ("data",)).spec == P(("data",))
    names = {name for name, _ in DEFAULT_RULES}
    assert {"embed", "heads", "kv", "mlp", "vocab", "feature", "pooler", "classes", "layers"} <= names
