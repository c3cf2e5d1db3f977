"""Host batches -> global ``jax.Array`` batches on the mesh (one call per step, on every host).

Each JAX process loads its own rows (``jaxvl.data.pipeline`` shards by process) and ``to_global``
assembles them into arrays of the global batch, sharded over the leading (batch) axis across the
mesh's data axes (``('data', 'fsdp')`` by default: FSDP shards the batch too) and replicated over the
rest (``tensor``). With one process the local batch *is* the global batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DEFAULT_DATA_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh, ndim: int, data_axes: Sequence[str] = DEFAULT_DATA_AXES) -> NamedSharding:
    """A ``NamedSharding`` splitting dim 0 over ``data_axes`` (those present in the mesh), other dims replicated."""
    axes = tuple(a for a in data_axes if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes or None, *([None] * (ndim - 1))))


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh,
              data_axes: Sequence[str] = DEFAULT_DATA_AXES) -> dict[str, jax.Array]:
    """This process's rows ``{field: [b, ...]}`` -> global arrays ``{field: [b * P, ...]}`` on ``mesh``.

    Uses ``jax.make_array_from_process_local_data``: process ``p`` contributes rows
    ``[p * b, (p + 1) * b)`` of the global batch (the order ``pipeline.pretrain_dataset`` shards in).
    The global batch must divide evenly over the devices of ``data_axes``.
    """
    shards = int(np.prod([mesh.shape[a] for a in data_axes if a in mesh.axis_names]))
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"batch field '{key}' is a scalar; every field needs a leading batch axis")
        sharding = batch_sharding(mesh, value.ndim, data_axes)
        global_rows = value.shape[0] * jax.process_count()
        if global_rows % shards:
            raise ValueError(f"batch field '{key}': the global batch of {global_rows} rows does not divide over "
                             f"the {shards} devices of mesh axes {tuple(data_axes)}")
        out[key] = jax.make_array_from_process_local_data(sharding, value, (global_rows, *value.shape[1:]))
    return out


def global_batches(batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh,
                   data_axes: Sequence[str] = DEFAULT_DATA_AXES) -> Iterator[dict[str, jax.Array]]:
    """``to_global`` over an iterator of host batches (keep the Grain iterator itself for checkpointing)."""
    for batch in batches:
        yield to_global(batch, mesh, data_axes)
