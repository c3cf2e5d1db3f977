"""The cross-modal input ablation as one compiled sweep: every condition, threshold and checkpoint at once.

``AblationSpec`` names the conditions (``vis4lang``: none / object / all; ``lang4vis``: none / phrase /
all), the IoT thresholds (default 0.0, 0.1, ..., 0.9) and the ``Quirks``. It expands into *members*,
one per (task, condition, threshold): vis4lang ``object`` and every lang4vis condition once per
threshold, vis4lang ``none`` and ``all`` (which do not depend on the threshold) once. With a
``control_threshold``, every condition but ``none`` also gets its matched control at that threshold
(``jaxvl.ablation.controls``), a member like any other. The members of a task stack into arrays (level,
threshold, control) and ``vmap`` inside one ``jax.jit``; so do the checkpoints,
whose parameter trees stack on a leading axis K (``stack_params``). One call of ``AblationSweep``
evaluates a batch under every member of every checkpoint; it compiles once per model config and batch
shape. The batch is sharded over the mesh's data axes (``('data', 'fsdp')``, as in training), the
stacked parameters are replicated unless a sharding is given. ``member_batch_size`` /
``model_batch_size`` switch from ``vmap`` to ``lax.map`` over chunks of that size, to bound memory
(the vmapped MLM logits are [members, B, T, vocab]).

``run_ablation`` is the entry point a command calls::

    pcfg = AblationPipelineConfig(batch_size=16, add_global_imgfeat=model.cfg.add_global_imgfeat)
    index = scan_ablation(source, tokenizer, pcfg, label_matcher=LabelMatcher.from_vocab(vg_objects))
    batches = ablation_dataset(source, tokenizer, pcfg, index)   # jaxvl.ablation.data
    stacked = stack_params([params_seed0, params_seed1])
    result = run_ablation(model, stacked, batches, AblationSpec(tokenizer.mask_id), index.mean_feature, mesh,
                          model_names=["s0", "s1"], progress=bar.update)
    attention = attention_rows(model, stacked, batches, mesh)   # jaxvl.ablation.attention
    write_report(result, workdir, phrases=index.phrases, image_ids=index.image_ids, attention=attention)

It checks the first batch, the parameters and the spec against the model config before anything is
compiled (``check_ablation``), then returns an ``AblationResult`` with per-example values in
example order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.ablation.conditions import (
    TASKS,
    Quirks,
    detector_rank,
    lang4vis_inputs,
    lang4vis_masked,
    vis4lang_ablated,
)
from jaxvl.ablation.forward import lang4vis_forward, map_members, vis4lang_forward
from jaxvl.ablation.spec import AblationSpec, Member
from jaxvl.models.validate import BatchError, validate_batch
from jaxvl.models.volta.model import VLBertForPreTraining
from jaxvl.runtime.sharding import DEFAULT_DATA_AXES, to_global

# Fields the sweep reads (jaxvl.ablation.data makes them); ``vg_label`` is optional (LabelMatch).
SWEEP_FIELDS = ("input_ids", "text_mask", "token_type_ids", "phrase_mask", "features", "locations", "region_mask",
                "boxes", "region_target_mask", "ref_boxes", "ref_mask", "cls_prob", "objects_id", "objects_conf")
HOST_FIELDS = ("valid", "example")  # per-row bookkeeping; ``example`` also keys the controls' draws


def stack_params(trees: Sequence[Any]) -> Any:
    """Parameter trees of one model config (checkpoints, seeds, variants) -> one tree with a leading axis K."""
    if not trees:
        raise ValueError("stack_params needs at least one parameter tree")
    first = jax.tree.structure(trees[0])
    for i, tree in enumerate(trees[1:], start=1):
        if jax.tree.structure(tree) != first:
            raise ValueError(f"parameter tree {i} differs in structure from tree 0: one model config per sweep")
        for path, (a, b) in zip(_paths(trees[0]), zip(jax.tree.leaves(trees[0]), jax.tree.leaves(tree), strict=True),
                                strict=True):
            if np.shape(a) != np.shape(b):
                raise ValueError(f"parameter tree {i}: {path} has shape {np.shape(b)}, tree 0 has {np.shape(a)}")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _paths(tree: Any) -> list[str]:
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def num_models(stacked_params: Any) -> int:
    """K, the leading axis every leaf of a stacked parameter tree shares."""
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in jax.tree.leaves(stacked_params)}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(f"stacked parameters need one leading axis K on every leaf; leading sizes {sorted(sizes)}")
    return sizes.pop()


# --------------------------------------------------------------------------------------- checks


def check_model_batch(model: VLBertForPreTraining, stacked_params: Any, batch: Mapping[str, Any],
                      mesh: Mesh | None = None, source: str = "ablation batch",
                      expected_regions: int | None = None) -> None:
    """Raises ``BatchError`` / ``ValueError`` naming the field when an ablation batch or the stacked
    parameters do not fit the model config. Host-side (shape evaluation only), before anything compiles.

    Checks: the sweep's fields are present; ``validate_batch`` (feature dim, token ids in the vocabulary,
    normalised locations, VL-BERT's positions); detector classes = ``num_object_classes + 1``; the global
    ``[IMG]`` row where the config puts it; ``expected_regions`` detector rows when given; the batch
    divides over the mesh's data axes; every parameter leaf has the shape the config needs, with one
    leading K axis (a checkpoint of another vocabulary, width or plan fails here).
    """
    cfg = model.cfg

    def fail(field: str, msg: str):
        raise BatchError(f"{source}: field '{field}' {msg}")

    missing = [k for k in SWEEP_FIELDS if k not in batch]
    if missing:
        fail(missing[0], f"is missing (missing: {missing}); build batches with jaxvl.ablation.data")
    arrays = {k: np.asarray(batch[k]) for k in SWEEP_FIELDS}
    validate_batch({k: arrays[k] for k in ("input_ids", "features", "locations", "token_type_ids", "text_mask",
                                            "region_mask")}, cfg, source)
    size = arrays["features"].shape[0]
    k1 = arrays["cls_prob"].shape[-1]
    if k1 != cfg.num_object_classes + 1:
        fail("cls_prob", f"has {k1} detector classes, but the model config has num_object_classes="
                         f"{cfg.num_object_classes} (+1 background = {cfg.num_object_classes + 1})")
    if arrays["objects_id"].size and arrays["objects_id"].max() >= cfg.num_object_classes:
        fail("objects_id", f"holds class {int(arrays['objects_id'].max())} >= num_object_classes="
                           f"{cfg.num_object_classes}")
    target, real = arrays["region_target_mask"], arrays["region_mask"]
    row = {"first": 0, "last": -1}.get(cfg.add_global_imgfeat)
    if row is not None and (target[:, row].any() or not real[:, row].all()):
        fail("region_target_mask", f"has no global [IMG] row {cfg.add_global_imgfeat} (the model config's "
                                   f"add_global_imgfeat={cfg.add_global_imgfeat!r}); build the batches with it")
    if row is None and ((target == 0) & (real == 1)).any():
        fail("region_target_mask", "has a global [IMG] row, but the model config has add_global_imgfeat=None")
    regions = target.shape[1] - (row is not None)
    if expected_regions is not None and regions != expected_regions:
        fail("features", f"has {regions} detector region rows; the model expects {expected_regions}")
    if mesh is not None:
        shards = int(np.prod([mesh.shape[a] for a in DEFAULT_DATA_AXES if a in mesh.axis_names]))
        if (size * jax.process_count()) % shards:
            fail("input_ids", f"holds a global batch of {size * jax.process_count()} rows, which does not divide "
                              f"over the {shards} devices of the mesh's data axes")
    _check_params(model, stacked_params, arrays)


def check_ablation(model: VLBertForPreTraining, stacked_params: Any, batch: Mapping[str, Any], spec: AblationSpec,
                   mean_feature: Any, mesh: Mesh | None = None, expected_regions: int | None = None,
                   source: str = "ablation batch") -> None:
    """What the spec needs (an MRC head for lang4vis, ``mask_id`` in the vocabulary, ``vg_label`` among the
    detector classes, a finite ``mean_feature`` [D]), then ``check_model_batch``."""
    cfg = model.cfg
    if spec.lang4vis and not {"0", "3"} & set(cfg.visual_targets):
        raise ValueError(f"{source}: lang4vis needs an MRC head ('0' MRC-KL or '3' MRC-XE); the model config "
                         f"has visual targets {sorted(cfg.visual_targets)}")
    if spec.mask_id >= cfg.vocab_size:
        raise ValueError(f"mask_id={spec.mask_id} is outside the model's vocabulary (vocab_size={cfg.vocab_size})")
    if spec.control_threshold is not None and "example" not in batch:
        raise BatchError(f"{source}: field 'example' is missing; the matched controls draw by it (build batches "
                         "with jaxvl.ablation.data.ablation_dataset)")
    if "vg_label" in batch:
        vg = np.asarray(batch["vg_label"])
        k1 = cfg.num_object_classes + 1
        if vg.size and vg.max() >= k1:
            raise BatchError(f"{source}: field 'vg_label' holds label {int(vg.max())} outside the {k1} detector "
                             "classes")
    mean = np.asarray(mean_feature)
    if mean.shape != (cfg.v_feature_size,) or not np.isfinite(mean).all():
        raise ValueError(f"mean_feature must be a finite [{cfg.v_feature_size}] vector; got shape {mean.shape}")
    check_model_batch(model, stacked_params, batch, mesh, source, expected_regions)


def _check_params(model: VLBertForPreTraining, stacked_params: Any, arrays: Mapping[str, np.ndarray]) -> None:
    inputs = {k: jax.ShapeDtypeStruct((1, *arrays[k].shape[1:]), arrays[k].dtype)
              for k in ("input_ids", "features", "locations")}
    abstract = nn.meta.unbox(jax.eval_shape(lambda kw: model.init(jax.random.key(0), **kw), inputs)["params"])
    want = dict(zip(_paths(abstract), jax.tree.leaves(abstract), strict=True))
    got = dict(zip(_paths(stacked_params), jax.tree.leaves(stacked_params), strict=True))
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(f"the parameters do not fit the model config: missing {missing[:5]}, unexpected "
                         f"{extra[:5]} (a checkpoint of another preset or plan?)")
    k = num_models(stacked_params)
    for path, leaf in want.items():
        shape = tuple(np.shape(got[path]))
        if shape != (k, *leaf.shape):
            raise ValueError(f"parameter {path} has shape {shape[1:]} per model, but the model config needs "
                             f"{tuple(leaf.shape)} (stacked: [K={k}, ...]); does the checkpoint's config match?")


# ---------------------------------------------------------------------------------------- sweep


class AblationSweep:
    """The compiled sweep of ``spec`` for ``model`` on ``mesh``: ``sweep(stacked_params, batch, mean_feature)``.

    ``batch``: the fields ``SWEEP_FIELDS`` (+ ``vg_label``; + ``example`` with controls) [B, ...], global
    arrays or host arrays (one process). Returns a dict of per-row arrays with the batch axis first,
    sharded like the batch: ``vis4lang/mlm`` [B, K, Mv], ``lang4vis/<metric>`` [B, K, Ml] (``mrc_kl``,
    ``mrc_xe``, ``mrc_xe_vg``), and model-independent ``phrase_tokens`` [B], ``vis4lang_ablated`` [B, Mv]
    (rows replaced), ``num_aligned``, ``has_target``, ``target_index``, ``text_masked`` (sub-words masked)
    [B, Ml] and, with ``vg_label``, ``detector_rank`` / ``detector_prob`` [B, Ml].
    """

    def __init__(self, model: VLBertForPreTraining, spec: AblationSpec, mesh: Mesh,
                 param_sharding: Any | None = None, compiler_options: dict[str, Any] | None = None):
        self.model, self.spec, self.mesh = model, spec, mesh
        axes = tuple(a for a in DEFAULT_DATA_AXES if a in mesh.axis_names)
        self.batch_sharding = NamedSharding(mesh, PartitionSpec(axes or None))
        replicated = NamedSharding(mesh, PartitionSpec())
        self.param_sharding = replicated if param_sharding is None else param_sharding
        self.members = {task: spec.members(task) for task in TASKS}
        self._arrays = {task: spec.member_arrays(task) for task in TASKS}
        self.program = self._sweep  # the traced function (FLOP counts, jaxprs); ``__call__`` runs it compiled
        self._jitted = jax.jit(self._sweep, in_shardings=(self.param_sharding, self.batch_sharding, replicated),
                               out_shardings=self.batch_sharding, compiler_options=compiler_options)

    def _sweep(self, stacked_params: Any, batch: dict[str, jax.Array], mean_feature: jax.Array) -> dict[str, Any]:
        spec, model = self.spec, self.model
        add_global, quirks = model.cfg.add_global_imgfeat, spec.quirks
        v_levels, v_thr, v_ctl = (jnp.asarray(a) for a in self._arrays["vis4lang"])
        l_levels, l_thr, l_ctl = (jnp.asarray(a) for a in self._arrays["lang4vis"])

        def ctl(flag):  # without controls, their draw stays out of the program
            return None if spec.control_threshold is None else flag

        def per_model(params):
            out = {}
            if spec.vis4lang:
                out["vis4lang"] = vis4lang_forward(model, params, batch, self._arrays["vis4lang"], mean_feature, spec,
                                                   ctl)
            if spec.lang4vis:
                out["lang4vis"] = lang4vis_forward(model, params, batch, self._arrays["lang4vis"], spec, ctl)
            return out

        per = map_members(per_model, stacked_params, spec.model_batch_size)  # leaves [K, M, B]
        out: dict[str, Any] = {task: {k: jnp.moveaxis(v, -1, 0) for k, v in d.items()} for task, d in per.items()}
        out["phrase_tokens"] = batch["phrase_mask"].sum(-1).astype(jnp.int32)
        if spec.vis4lang:
            ablated = jax.vmap(lambda lv, t, c: vis4lang_ablated(batch, lv, t, ctl(c)).sum(-1))(v_levels, v_thr, v_ctl)
            out["vis4lang_ablated"] = ablated.T.astype(jnp.int32)
        if spec.lang4vis:
            def align(level, thr, control):
                _, index, has, aligned = lang4vis_inputs(batch, level, thr, spec.mask_id, add_global, quirks,
                                                         ctl(control))
                stats = {"num_aligned": aligned.sum(-1).astype(jnp.int32), "has_target": has, "target_index": index,
                         "text_masked": lang4vis_masked(batch, level, ctl(control)).sum(-1).astype(jnp.int32)}
                if "vg_label" in batch:
                    stats["detector_rank"], stats["detector_prob"] = detector_rank(batch, index, has)
                return stats

            out.update(jax.tree.map(lambda a: a.T, jax.vmap(align)(l_levels, l_thr, l_ctl)))
        if "vg_label" in batch:
            out["vg_label"] = batch["vg_label"]
        return out

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """The fields the sweep reads, as global arrays sharded over the data axes (``to_global``)."""
        optional = ("vg_label", "example") if self.spec.control_threshold is not None else ("vg_label",)
        fields = {k: np.asarray(batch[k]) for k in (*SWEEP_FIELDS, *optional) if k in batch}
        return to_global(fields, self.mesh)

    def lower(self, stacked_params: Any, batch: Mapping[str, Any], mean_feature: Any) -> jax.stages.Lowered:
        """``jax.jit(...).lower`` for ahead-of-time compilation and memory statistics (benchmarks)."""
        if not isinstance(mean_feature, jax.ShapeDtypeStruct):  # abstract inputs (``jaxvl compile``) pass as they are
            mean_feature = jnp.asarray(mean_feature, jnp.float32)
        with jax.set_mesh(self.mesh):
            return self._jitted.lower(stacked_params, batch, mean_feature)

    def __call__(self, stacked_params: Any, batch: Mapping[str, Any], mean_feature: Any) -> dict[str, Any]:
        with jax.set_mesh(self.mesh):
            return self._jitted(stacked_params, batch, jnp.asarray(mean_feature, jnp.float32))


# ---------------------------------------------------------------------------------------- result


@dataclasses.dataclass
class AblationResult:
    """Per-example values of a sweep, examples in ``example`` order (the ablation index's ordinals).

    ``values[task][metric]``: float [K, M, N] in bits; ``stats``: model-independent arrays [M, N]
    (``num_aligned``, ``has_target``, ``target_index``, ``text_masked``, ``detector_rank``, ``detector_prob``,
    ``vis4lang_ablated``) and [N] (``phrase_tokens``); ``vg_label`` [N] (-1: no LabelMatch label) when
    the batches carried it. ``included(task, m)`` is the mask of the examples a member's mean is over;
    ``control_of(task, m)`` the member holding member ``m``'s matched control.
    """

    model_names: tuple[str, ...]
    members: dict[str, tuple[Member, ...]]
    example: np.ndarray
    values: dict[str, dict[str, np.ndarray]]
    stats: dict[str, np.ndarray]
    quirks: Quirks
    vg_label: np.ndarray | None = None

    @property
    def num_examples(self) -> int:
        return int(self.example.shape[0])

    def included(self, task: str, m: int) -> np.ndarray:
        """bool [N]: the examples member ``m`` of ``task`` averages over.

        vis4lang: examples with at least one phrase token left after truncation. lang4vis: every example
        (VOLTA: those without an aligned region count as 0) or, with ``missing_target_as_zero`` off, the
        examples with a target region.
        """
        if task == "vis4lang":
            return self.stats["phrase_tokens"] > 0
        if self.quirks.missing_target_as_zero:
            return np.ones(self.num_examples, bool)
        return self.stats["has_target"][m].astype(bool)

    def control_of(self, task: str, m: int) -> int | None:
        """Index of the matched control of member ``m`` of ``task`` (vis4lang ``all``: the one at the control
        threshold), or None (``none``, a control, or a threshold without controls)."""
        member = self.members[task][m]
        if member.control:
            return None
        for i, other in enumerate(self.members[task]):
            if other.control and other.condition == member.condition and (
                    member.threshold is None or other.threshold == member.threshold):
                return i
        return None

    def without_target(self, m: int) -> int:
        """How many examples lang4vis member ``m`` has no aligned region for."""
        return int((~self.stats["has_target"][m].astype(bool)).sum())


@functools.lru_cache(maxsize=4)
def _cached_sweep(model: VLBertForPreTraining, spec: AblationSpec, mesh: Mesh,
                  options: tuple[tuple[str, Any], ...]) -> AblationSweep:
    return AblationSweep(model, spec, mesh, None, dict(options) or None)


def gather_to_host(tree: Any) -> Any:
    """A tree of global arrays as numpy on this host (every process gets the whole arrays)."""
    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def run_ablation(model: VLBertForPreTraining, stacked_params: Any, batches: Iterable[Mapping[str, Any]],
                 spec: AblationSpec, mean_feature: Any, mesh: Mesh, model_names: Sequence[str] | None = None,
                 expected_regions: int | None = None, param_sharding: Any | None = None,
                 progress: Callable[[int], Any] | None = None,
                 compiler_options: dict[str, Any] | None = None) -> AblationResult:
    """Evaluates every member of ``spec`` for every stacked checkpoint over ``batches`` (host batches from
    ``jaxvl.ablation.data.ablation_dataset``, with ``valid`` and ``example``; this process's rows).

    ``stacked_params``: [K, ...] leaves (``stack_params``); ``mean_feature`` [D]: the dataset-mean region
    feature (``AblationIndex.mean_feature``); ``progress(n)`` is called with the real examples of each batch;
    ``compiler_options``: XLA options of the sweep (e.g. ``jaxvl.runtime.compile.FAST_COMPILE`` for CPU smoke runs).
    Raises before compiling when the first batch, the parameters or the spec do not fit (``check_ablation``)
    or when there is no batch or no real example. Without ``param_sharding``, calls with the same model
    config, spec, mesh and options share one compiled sweep (a few are kept).
    """
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("empty evaluation set: no ablation batch to evaluate")
    for key in HOST_FIELDS:
        if key not in first:
            raise BatchError(f"ablation batch: field '{key}' is missing; build batches with "
                             "jaxvl.ablation.data.ablation_dataset")
    check_ablation(model, stacked_params, first, spec, mean_feature, mesh, expected_regions)
    k = num_models(stacked_params)
    names = tuple(model_names) if model_names is not None else tuple(f"model_{i}" for i in range(k))
    if len(names) != k:
        raise ValueError(f"{len(names)} model names for {k} stacked checkpoints")
    if param_sharding is None:  # the same model, spec and mesh reuse one compiled sweep (other splits, datasets)
        sweep = _cached_sweep(model, spec, mesh, tuple(sorted((compiler_options or {}).items())))
    else:
        sweep = AblationSweep(model, spec, mesh, param_sharding, compiler_options)
    params = jax.device_put(stacked_params, sweep.param_sharding)
    mean = jnp.asarray(mean_feature, jnp.float32)

    chunks, total = [], 0
    for batch in _chain(first, iterator):
        check_phrase_rows(batch, spec)
        out = gather_to_host(sweep(params, sweep.device_batch(batch), mean))
        host = gather_to_host(to_global({key: np.asarray(batch[key]) for key in HOST_FIELDS}, mesh))
        keep = host["valid"].astype(bool)
        chunks.append((host["example"][keep], jax.tree.map(lambda a, keep=keep: a[keep], out)))
        total += int(keep.sum())
        if progress is not None:
            progress(int(np.asarray(batch["valid"]).sum()))
    if total == 0:
        raise ValueError("empty evaluation set: the batches hold no real example (valid == 0 everywhere)")
    example = np.concatenate([c[0] for c in chunks])
    order = np.argsort(example, kind="stable")
    merged = jax.tree.map(lambda *xs: np.concatenate(xs)[order], *[c[1] for c in chunks])
    values = {task: {metric: np.moveaxis(v, 0, -1) for metric, v in merged[task].items()}
              for task in TASKS if task in merged}
    stats = {key: (np.moveaxis(v, 0, -1) if v.ndim == 2 else v) for key, v in merged.items() if key not in TASKS}
    vg_label = stats.pop("vg_label", None)
    return AblationResult(model_names=names, members=dict(sweep.members), example=example[order], values=values,
                          stats=stats, quirks=spec.quirks, vg_label=vg_label)


def check_phrase_rows(batch: Mapping[str, Any], spec: AblationSpec) -> None:
    """Raises when a row's phrase has more sub-words than ``spec.max_phrase_tokens`` (its loss would leave
    some out); names the row's ``example``."""
    if not spec.scored_rows_only or spec.max_phrase_tokens is None or not spec.vis4lang:
        return
    lengths = np.asarray(batch["phrase_mask"]).astype(bool).sum(-1)
    if lengths.max(initial=0) > spec.max_phrase_tokens:
        row = int(np.argmax(lengths))
        example = int(np.asarray(batch["example"])[row]) if "example" in batch else row
        raise BatchError(f"ablation example {example}: its phrase has {int(lengths[row])} sub-words, more than "
                         f"AblationSpec.max_phrase_tokens={spec.max_phrase_tokens} (set it to the split's longest "
                         "phrase: AblationIndex.max_phrase_tokens)")


def _chain(first: Mapping[str, Any], rest: Iterable[Mapping[str, Any]]):
    yield first
    yield from rest
