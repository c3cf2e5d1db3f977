"""Host batches -> global arrays sharded over the batch axis of an 8-device CPU mesh."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jaxvl.runtime.sharding import batch_sharding, global_batches, to_global


def host_batch(rows=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 50, (rows, 38)).astype(np.int32),
            "features": rng.normal(size=(rows, 11, 24)).astype(np.float32),
            "num_boxes": np.full((rows,), 10, np.int32)}


@pytest.mark.parametrize("shape", [(8, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_to_global_shards_the_batch_axis(shape):
    mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    batch = host_batch()
    out = to_global(batch, mesh)
    data_shards = shape[0] * shape[1]
    for key, value in batch.items():
        arr = out[key]
        assert arr.shape == value.shape and arr.dtype == value.dtype
        want = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (value.ndim - 1))))
        assert arr.sharding.is_equivalent_to(want, value.ndim)
        np.testing.assert_array_equal(np.asarray(arr), value)
        # Every device holds 16 / (data x fsdp) rows; devices differing only in 'tensor' hold the same rows.
        assert {s.data.shape[0] for s in arr.addressable_shards} == {16 // data_shards}
        for s in arr.addressable_shards:
            np.testing.assert_array_equal(np.asarray(s.data), value[s.index])
    summed = jax.jit(lambda b: b["features"].sum())(out)  # consumable by a jitted step
    np.testing.assert_allclose(float(summed), batch["features"].sum(), rtol=1e-4)


def test_data_axes_and_errors():
    mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    only_data = to_global(host_batch(), mesh, data_axes=("data",))
    assert only_data["features"].sharding.spec == PartitionSpec(("data",))
    assert {s.data.shape[0] for s in only_data["features"].addressable_shards} == {4}
    assert batch_sharding(mesh, ("data", "absent")).spec == PartitionSpec(("data",))
    with pytest.raises(ValueError, match="does not divide"):
        to_global(host_batch(rows=12), mesh)
    with pytest.raises(ValueError, match="scalar"):
        to_global({"step": np.int32(3)}, mesh)
    two = list(global_batches([host_batch(seed=1), host_batch(seed=2)], mesh))
    np.testing.assert_array_equal(np.asarray(two[1]["input_ids"]), host_batch(seed=2)["input_ids"])
