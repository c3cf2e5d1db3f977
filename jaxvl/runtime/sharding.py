"""One device mesh ``('data', 'fsdp', 'tensor')`` and the logical-axis rules that place jaxvl's parameters on it.

Every jaxvl parameter carries logical axis names (``nn.with_logical_partitioning``; see
``jaxvl.models.layers``). ``DEFAULT_RULES`` maps them to mesh axes for data parallelism (nothing
sharded but the batch), FSDP (``embed``, then ``vocab``/``mlp``, split over ``'fsdp'``) and tensor
parallelism (``heads``, ``mlp``, ``vocab``, ``classes`` split over ``'tensor'``) at once; mesh axes of
size 1 drop out of the rules, so the same tuple serves every mesh shape:

================  =======================  ===========================  ===============================
mesh (d, f, t)    ``wi`` (embed, mlp)      ``word_embeddings`` (vocab,  ``query`` (embed, heads, kv)
                                           embed)
================  =======================  ===========================  ===============================
(8, 1, 1)         replicated               replicated                   replicated
(1, 8, 1)         (fsdp, None)             (None, fsdp)                 (fsdp, None, None)
(2, 1, 4)         (None, tensor)           (tensor, None)               (None, tensor, None)
(1, 2, 4)         (fsdp, tensor)           (tensor, fsdp)               (fsdp, tensor, None)
================  =======================  ===========================  ===============================

Resolution follows ``flax.linen.logical_to_mesh_axes`` (rules in order of precedence; a rule
assigns its mesh axes to the first still-unassigned dim of that name if none of those mesh axes is
taken), with two differences: a name may appear twice in one parameter (the heads' ``transform``
kernels are ``('embed', 'embed')``, which flax's resolver rejects) and a dim whose size does not
divide over a rule's mesh axes skips that rule (a later rule may still place it; otherwise it is
replicated) and the skip is logged at INFO instead of failing at ``device_put``.

Activations follow the same rules inside a step traced under ``activation_rules`` and a mesh
(``jax.set_mesh``): models call ``constrain`` (e.g. a stream [B, L, H] as ``("batch", None, None)``: rows over
the data axes) and ``constrain_gathered`` (a parameter at its use, as FSDP all-gathers it); outside such a
step both return their input untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

DEFAULT_DATA_AXES = ("data", "fsdp")  # the mesh axes a batch's leading dim is split over

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# In order of precedence: tensor parallelism claims its dims first, then FSDP shards one more dim
# (the model width where possible) of whatever is left. ``batch`` names activations' batch dim.
DEFAULT_RULES: Rules = (
    ("batch", DEFAULT_DATA_AXES),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("classes", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "fsdp"),
    ("mlp", "fsdp"),
    ("kv", None),
    ("feature", None),
    ("pooler", None),
    ("layers", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` of shape ``(data, fsdp, tensor)`` over ``MESH_AXES`` with ``AxisType.Auto`` axes.

    One size may be -1: it takes whatever the others leave of ``devices`` (default ``jax.devices()``). Sizes
    given in full whose product is smaller than the default devices take the first of them when this is the
    only process (a 1-device run on an 8-device host: ``mesh.data=1``); several processes must cover them all.
    Axes go from least to most communication-hungry, so 'tensor' lands on neighbouring devices (where no
    product of the physical torus axes has an axis's size, e.g. tensor=4 on an 8x8 slice, a physical axis is
    split: ``allow_split_physical_axes``). Devices of
    several TPU slices (multislice: ``slice_index`` differs) get a hybrid mesh whose ``data`` axis spans the
    slices, so only the data-parallel gradient reduction crosses the data-centre network; ``data`` must then
    be a multiple of the number of slices.
    """
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes {tuple(sizes)}: positive, with at most one -1")
    if devices is None:
        devices, needed = jax.devices(), math.prod(sizes)
        if -1 not in sizes and needed < len(devices) and jax.process_count() == 1:
            logger.warning("mesh %s uses the first %d of this process's %d devices", tuple(sizes), needed,
                           len(devices))
            devices = devices[:needed]
    devices = list(devices)
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into {tuple(sizes)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        several = " (with several processes a mesh must cover every device)" if jax.process_count() > 1 else ""
        raise ValueError(f"mesh {tuple(sizes)} needs {math.prod(sizes)} devices; {len(devices)} given{several}")
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    from jax.experimental import mesh_utils

    if slices == 1:
        try:
            return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
        except NotImplementedError:  # an axis no product of physical axes matches (tensor=4 on an 8x8 torus)
            grid = mesh_utils.create_device_mesh(tuple(sizes), devices=devices, allow_split_physical_axes=True)
            return Mesh(np.asarray(grid), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    if sizes[0] % slices:
        raise ValueError(f"{slices} slices: the data axis ({sizes[0]}) must be a multiple of the number of slices")

    grid = mesh_utils.create_hybrid_device_mesh((sizes[0] // slices, sizes[1], sizes[2]), (slices, 1, 1),
                                                devices=devices)
    return Mesh(np.asarray(grid), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def rules_for_mesh(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Rules:
    """``rules`` with mesh axes of size 1 (or absent from ``mesh``) removed; rules left empty are dropped,
    so that a later rule for the same name can apply (FSDP-only meshes shard ``mlp`` over 'fsdp')."""
    out = []
    for name, axes in rules:
        kept = tuple(a for a in _as_tuple(axes) if mesh.shape.get(a, 1) > 1)
        if kept:
            out.append((name, kept[0] if len(kept) == 1 else kept))
    return tuple(out)


def logical_to_mesh_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                         rules: Rules = DEFAULT_RULES, where: str = "") -> tuple[PartitionSpec, list[str]]:
    """The mesh ``PartitionSpec`` of an array of ``shape`` with logical ``names``, and notes on dims that
    a rule could not shard because the size does not divide (``where`` names the array in them)."""
    if len(names) != len(shape):
        raise ValueError(f"{where}: {len(names)} logical names {tuple(names)} for shape {tuple(shape)}")
    result: list[tuple[str, ...] | None] = [None] * len(names)
    notes = []
    for name, axes in rules_for_mesh(mesh, rules):
        axes = _as_tuple(axes)
        if name not in names or any(a in r for r in result if r for a in axes):
            continue
        size = math.prod(mesh.shape[a] for a in axes)
        for pos, dim_name in enumerate(names):
            if dim_name != name or result[pos] is not None:
                continue
            if shape[pos] % size == 0:
                result[pos] = axes
                break
            notes.append(f"{where}: dim {pos} ({name!r}, size {shape[pos]}) does not divide over mesh axes "
                         f"{axes} (size {size}); not sharded by this rule")
    spec = PartitionSpec(*(None if r is None else r[0] if len(r) == 1 else r for r in result))
    return spec, notes


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_shardings(abstract_boxed: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """A ``NamedSharding`` per leaf of a tree of ``nn.LogicallyPartitioned`` boxes (params, optimizer
    state or a whole ``TrainState``, abstract from ``jax.eval_shape`` or concrete).

    The result has the structure of the *unboxed* tree (``nn.meta.unbox``): each box becomes the
    sharding of its value; any other array leaf (step counters, rng keys) is replicated. Dims that do
    not divide over their mesh axes are replicated and logged (INFO, logger ``jaxvl.runtime.sharding``).
    """
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf(path, x):
        if not is_box(x):
            return replicated
        spec, notes = logical_to_mesh_spec(x.names, x.value.shape, mesh, rules, _path_str(path))
        for note in notes:
            logger.info(note)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(leaf, abstract_boxed, is_leaf=is_box)


def batch_sharding(mesh: Mesh, data_axes: Sequence[str] = DEFAULT_DATA_AXES) -> NamedSharding:
    """Rows (dim 0) of every batch field split over ``data_axes`` present in ``mesh``, other dims replicated;
    usable as a pytree prefix for the whole batch dict (``jaxvl.runtime.sharding.to_global`` makes it)."""
    axes = tuple(a for a in data_axes if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes or None))


def bytes_per_device(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of ``tree`` (arrays or ``ShapeDtypeStruct`` leaves) under ``shardings``
    (a matching tree of ``NamedSharding``); the largest device's share where shards are uneven."""
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings, is_leaf=lambda y: isinstance(y, NamedSharding)),
                    strict=True):
        total += math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize  # rng keys: 8 bytes
    return total


_ACTIVATION_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("activation_rules", default=None)


@contextlib.contextmanager
def activation_rules(rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Within this context (while a step is traced), ``constrain`` places activations by ``rules``.

    jaxvl's own context rather than ``nn.logical_axis_rules``: under flax's, every boxed parameter init
    constrains its value while flax checks parameter shapes, which fails for ``DenseGeneral``'s flattened
    kernels (a rank-2 value with rank-3 names)."""
    token = _ACTIVATION_RULES.set(rules)
    try:
        yield
    finally:
        _ACTIVATION_RULES.reset(token)


def rules_in_context() -> Rules | None:
    """The rules of the innermost ``activation_rules`` context, or None outside any."""
    return _ACTIVATION_RULES.get()


def constrain(x: jax.Array, names: Sequence[str | None], rules: Rules | None = None) -> jax.Array:
    """``x`` (an activation inside a traced function) constrained to the sharding its logical ``names`` (one per
    dim, e.g. ``("batch", None, None)`` for a stream [B, L, H]) resolve to by ``logical_to_mesh_spec`` on the
    mesh in context (``jax.set_mesh``, as ``runtime.compile.compile_step`` lowers under).

    ``rules``: default those of ``activation_rules`` in context (the pretraining step sets them). Without a mesh
    of more than one device or without rules this is ``x`` itself, so models used outside a sharded step
    (single device, VOLTA parity, evaluation) trace exactly as before. Dims whose size does not divide over a
    rule's mesh axes are left unsharded (silently: activations are resolved on every trace).
    """
    mesh = jax.sharding.get_abstract_mesh()
    rules = rules_in_context() if rules is None else rules
    if mesh.empty or mesh.size == 1 or not rules:
        return x
    spec, _ = logical_to_mesh_spec(names, x.shape, mesh, rules, "activation")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def gathered_rules(rules: Rules) -> Rules:
    """``rules`` with the ``batch`` rule's mesh axes taken out of every other rule: where a parameter lies
    while it is used, once FSDP (parameters split over a batch axis) has all-gathered it. Tensor-parallel
    axes stay."""
    batch_axes = set().union(*(_as_tuple(axes) for name, axes in rules if name == "batch"))
    out = []
    for name, axes in rules:
        kept = _as_tuple(axes) if name == "batch" else tuple(a for a in _as_tuple(axes) if a not in batch_axes)
        out.append((name, kept[0] if len(kept) == 1 else kept or None))
    return tuple(out)


def constrain_gathered(param: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """A parameter with logical ``names`` constrained, at its use, to its FSDP-gathered sharding
    (``gathered_rules`` of the ``activation_rules`` in context): the all-gather FSDP does anyway, made explicit
    where XLA would otherwise reshard the activations instead (an embedding lookup from a table split over
    'fsdp' gives rows split by width, which cannot become rows split by batch without a full
    rematerialization). A no-op where ``constrain`` is."""
    rules = rules_in_context()
    return param if rules is None else constrain(param, names, gathered_rules(rules))


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh,
              data_axes: Sequence[str] = DEFAULT_DATA_AXES) -> dict[str, jax.Array]:
    """This process's rows ``{field: [b, ...]}`` -> global arrays ``{field: [b * P, ...]}`` on ``mesh``.

    Uses ``jax.make_array_from_process_local_data``: process ``p`` contributes rows
    ``[p * b, (p + 1) * b)`` of the global batch (the order ``jaxvl.pretrain.data.pretrain_dataset`` shards in).
    The global batch must divide evenly over the devices of ``data_axes``.
    """
    shards = int(np.prod([mesh.shape[a] for a in data_axes if a in mesh.axis_names]))
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"batch field '{key}' is a scalar; every field needs a leading batch axis")
        sharding = batch_sharding(mesh, data_axes)
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


def replicate(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays -> global arrays laid out by ``sharding`` (typically replicated over a mesh); each process
    passes its full copy (``jax.make_array_from_process_local_data``)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)), tree)


def to_host(tree: Any) -> Any:
    """Replicated global arrays -> numpy (each process holds a full copy: its first addressable shard)."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)
