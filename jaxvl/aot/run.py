"""``jaxvl compile``: a config's train step (or the ablation sweep) compiled ahead of time for a TPU slice (or the
local devices), and its report, on a machine without the accelerator.

    jaxvl compile --config pretrain:uniter --topology v5e-256 --config.model.dtype=bfloat16
    jaxvl compile --config pretrain:lxmert --topology v5p-128 --mesh fsdp=16,tensor=4 --batch 2048
    jaxvl compile --config pretrain:uniter --topology v5e-256 --num-slices 2 --batch 4096
    jaxvl compile --config pretrain:uniter,tiny --local --mesh data=2,fsdp=2,tensor=2
    jaxvl compile --config caption:ort --topology v5e-16 --batch 256 --config.model.dtype=bfloat16
    jaxvl compile --config ablate --config.model.name=lxmert --topology v5e-16 --batch 256

TPU targets need libtpu (``pip install 'jaxvl[tpu]'``); ``--local`` compiles for the devices this process sees
instead (a GPU host's GPUs, or CPU devices), which is how a GPU mesh is checked: XLA's GPU compiler needs the
CUDA plugin and a description of the GPU, so compiling for GPUs one does not have is not offered here. On an
H100 or H200 the report uses NVIDIA's figures (``chips.GPUS``) for the estimate, so it can be set beside the
step time ``jaxvl bench device`` measures on the same GPU.
The report (``jaxvl.aot.report``) is printed, and written as JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import gzip
import math
import time
from typing import Any

import jax

from jaxvl.aot.chips import Slice, gpu_spec, parse_slice, topology_devices
from jaxvl.aot.report import CompileReport
from jaxvl.aot.targets import ablate_target, caption_target, pretrain_target
from jaxvl.runtime.sharding import MESH_AXES, bytes_per_device, make_mesh

STRATEGIES = {"dp": "data=-1", "fsdp": "fsdp=-1", "fsdp+tp": "fsdp=-1,tensor=4"}


def parse_mesh(spec: str | None, default: dict[str, int]) -> dict[str, int]:
    """``data=4,fsdp=16,tensor=4`` (one size may be -1), a strategy name (``dp``, ``fsdp``, ``fsdp+tp``), or None
    (``default``) -> sizes of the three mesh axes, unnamed axes 1."""
    if spec is None:
        return {a: int(default.get(a, 1)) for a in MESH_AXES}
    spec = STRATEGIES.get(spec.lower(), spec)
    sizes = dict.fromkeys(MESH_AXES, 1)
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in MESH_AXES:
            raise ValueError(f"--mesh {spec!r}: expected AXIS=SIZE pairs over {', '.join(MESH_AXES)} "
                             f"or one of {', '.join(STRATEGIES)}")
        try:
            sizes[key] = int(value)
        except ValueError:
            raise ValueError(f"--mesh {spec!r}: size of {key!r} is not an integer") from None
    return sizes


def resolve_sizes(sizes: dict[str, int], num_devices: int) -> dict[str, int]:
    """Fills the one -1 so the mesh covers ``num_devices``; ValueError if the sizes cannot."""
    sizes = dict(sizes)
    free = [a for a, s in sizes.items() if s == -1]
    known = math.prod(s for s in sizes.values() if s != -1)
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ValueError(f"mesh {sizes}: positive sizes, at most one -1")
    if free:
        if num_devices % known:
            raise ValueError(f"mesh {sizes}: {num_devices} devices do not divide by {known}")
        sizes[free[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh {sizes} has {math.prod(sizes.values())} devices; the target has {num_devices}")
    return sizes


def compile_report(cfg: Any, config_name: str, slice_: Slice | None, num_slices: int, mesh_spec: str | None,
                   batch: int | None, model_overrides: dict[str, Any] | None = None,
                   hlo_path: str | None = None) -> CompileReport:
    """Builds the target (module doc), compiles it and reads the report. ``slice_`` None: the local devices;
    ``model_overrides``: ``VLConfig`` fields over the config's model (``targets.pretrain_target``);
    ``hlo_path``: also write the compiled program's HLO text there (gzip if it ends in ``.gz``)."""
    kind = config_name.split(":")[0]
    if kind not in ("pretrain", "caption", "ablate"):
        raise ValueError(f"--config {config_name}: `jaxvl compile` compiles the pretraining (pretrain:...) and "
                         "captioning (caption:...) train steps and the ablation sweep (ablate:...)")
    devices = topology_devices(slice_, num_slices) if slice_ else jax.devices()
    sizes = resolve_sizes(parse_mesh(mesh_spec, cfg.mesh.to_dict()), len(devices))
    mesh = make_mesh(sizes["data"], sizes["fsdp"], sizes["tensor"], devices=devices)
    if kind == "caption":
        target = caption_target(cfg, mesh, batch)
    elif kind == "ablate":
        target = ablate_target(cfg, mesh, batch, model_overrides=model_overrides)
    else:
        target = pretrain_target(cfg, mesh, batch, model_overrides=model_overrides)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = target.jitted.lower(*target.args).compile()
    seconds = time.perf_counter() - start
    if hlo_path:
        with (gzip.open if hlo_path.endswith(".gz") else open)(hlo_path, "wt") as f:
            f.write(compiled.as_text())
    name = f"{slice_.name}{f' x {num_slices} slices' if num_slices > 1 else ''}" if slice_ else \
        f"local {devices[0].platform} ({len(devices)} devices)"
    state = target.args[0]
    grads = 0  # a train step's gradient bytes per device (the ablation sweep reduces no gradients)
    if hasattr(state, "params"):
        grads = bytes_per_device(state.params, jax.tree.map(lambda x: x.sharding, state.params))
    gpu = None if slice_ else gpu_spec(devices[0].device_kind)
    figures = {} if gpu is None else dict(hbm_bytes=gpu.hbm_bytes, peak_flops=gpu.bf16_flops,
                                          ici_bytes_per_s=gpu.ici_bytes_per_s, sources=gpu.source)
    return CompileReport.from_compiled(compiled, target=name, description=target.description, mesh=sizes,
                                       params=target.params, model_flops=target.model_flops, slice_=slice_,
                                       num_slices=num_slices, grad_bytes=grads, compile_s=seconds, **figures)


def add_arguments(p: argparse.ArgumentParser) -> None:
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--topology", help="TPU slice: v5e-16, v5e-256, v5p-128, v6e-64, v4-32, ...")
    target.add_argument("--local", action="store_true", help="compile for this process's devices instead")
    p.add_argument("--num-slices", type=int, default=1, help="multislice: copies of the slice (default 1)")
    p.add_argument("--mesh", default=None, help="data=..,fsdp=..,tensor=.. (one may be -1) or dp | fsdp | fsdp+tp "
                   "(default: the config's mesh)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    p.add_argument("--hlo", default=None, help="also write the compiled HLO text here (.gz: compressed)")


def run(args: argparse.Namespace, cfg: Any) -> CompileReport:
    """``jaxvl compile``: errors in the arguments are raised before anything compiles."""
    if args.num_slices < 1:
        raise ValueError(f"--num-slices {args.num_slices}: at least 1")
    slice_ = None if args.local else parse_slice(args.topology)
    if args.local and args.num_slices > 1:
        raise ValueError("--num-slices needs --topology (a local compile has one set of devices)")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch {args.batch}: at least 1")
    report = compile_report(cfg, args.config, slice_, args.num_slices, args.mesh, args.batch, hlo_path=args.hlo)
    print(report.format())
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.to_json() + "\n")
    return report


__all__ = ["STRATEGIES", "add_arguments", "compile_report", "parse_mesh", "resolve_sizes", "run"]
