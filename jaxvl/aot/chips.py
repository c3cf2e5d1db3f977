"""TPU chips and slices that ``jaxvl compile`` targets: published peaks, memory and links, and the topology names.

Every figure comes from Google's Cloud TPU documentation pages (``ChipSpec.source``), read on 2026-12-07:

========  ==================  ================  =====================================  ==========================
chip      bf16 peak / chip    HBM / chip        ICI, bidirectional / chip              page
========  ==================  ================  =====================================  ==========================
v4        275 TFLOP/s         32 GiB            not on the page (see ``ici_note``)      cloud.google.com/tpu/docs/v4
v5e       197 TFLOP/s         16 GiB            400 GB/s                               cloud.google.com/tpu/docs/v5e
v5p       459 TFLOP/s         95 GiB            1200 GB/s                              cloud.google.com/tpu/docs/v5p
v6e       918 TFLOP/s         32 GiB (GB)       800 GB/s                               cloud.google.com/tpu/docs/v6e
========  ==================  ================  =====================================  ==========================

v4 and v5p chips have two TensorCores that libtpu drives as one device ("megacore"), so one JAX device is one
chip on every target here. A slice name counts chips for v5e/v6e (``v5e-256``: 256 chips) and TensorCores for
v4/v5p (``v5p-128``: 64 chips), as Cloud TPU's accelerator types do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class ChipSpec:
    """One TPU chip: ``hbm_bytes`` per chip, ``bf16_flops`` peak per second, ``ici_bytes_per_s`` (bidirectional,
    per chip), ``dcn_bytes_per_s`` (data-centre network per chip, for multislice), the names libtpu uses."""

    name: str
    device_kind: str
    hbm_bytes: int
    bf16_flops: float
    ici_bytes_per_s: float
    dcn_bytes_per_s: float
    topology_prefix: str
    chip_config: str
    dims: int  # 2: a 2D torus (v5e, v6e); 3: a 3D torus (v4, v5p)
    cores_per_chip: int  # how the slice name counts: 1 chip, or 2 TensorCores per chip
    source: str
    ici_note: str = ""


CHIPS: dict[str, ChipSpec] = {
    # v5e: 2 x 100 Gbps NICs per host of 8 chips -> 25 Gbps = 3.125 GB/s per chip of DCN.
    "v5e": ChipSpec("v5e", "TPU v5 lite", 16 * GIB, 197e12, 400e9, 3.125e9, "v5e", "default", 2, 1,
                    "https://cloud.google.com/tpu/docs/v5e"),
    # v6e: 4 x 200 Gbps NICs per host of 8 chips -> 100 Gbps = 12.5 GB/s per chip. HBM "32 GB" on the page.
    "v6e": ChipSpec("v6e", "TPU v6 lite", 32 * 10**9, 918e12, 800e9, 12.5e9, "v6e", "default", 2, 1,
                    "https://cloud.google.com/tpu/docs/v6e"),
    # v5p: "Data center network (DCN) bandwidth per chip (Gbps) 50" -> 6.25 GB/s.
    "v5p": ChipSpec("v5p", "TPU v5", 95 * GIB, 459e12, 1200e9, 6.25e9, "v5", "megacore", 3, 2,
                    "https://cloud.google.com/tpu/docs/v5p"),
    # v4: the Cloud page gives no per-chip ICI figure; 300 GB/s (6 links at 50 GB/s, the TPU v4 paper,
    # Jouppi et al., ISCA 2023) is an assumption, and DCN is taken as v5p's.
    "v4": ChipSpec("v4", "TPU v4", 32 * GIB, 275e12, 300e9, 6.25e9, "v4", "megacore", 3, 2,
                   "https://cloud.google.com/tpu/docs/v4",
                   ici_note="assumed: not on the Cloud TPU v4 page (6 links x 50 GB/s, TPU v4 paper)"),
}

# GPUs a ``--local`` compile may find itself on (matched on ``device_kind``): dense bf16 peak, HBM and NVLink
# (bidirectional per GPU), from NVIDIA's H100 and H200 product pages / datasheets (SXM parts).
GPUS: dict[str, ChipSpec] = {
    "H100": ChipSpec("H100", "NVIDIA H100", 80 * 10**9, 989e12, 900e9, 0.0, "", "", 0, 1,
                     "https://www.nvidia.com/en-us/data-center/h100/ (SXM, dense bf16)"),
    "H200": ChipSpec("H200", "NVIDIA H200", 141 * 10**9, 989e12, 900e9, 0.0, "", "", 0, 1,
                     "https://www.nvidia.com/en-us/data-center/h200/ (SXM, dense bf16)"),
}


def gpu_spec(device_kind: str) -> ChipSpec | None:
    """The ``GPUS`` entry a device's ``device_kind`` names (``NVIDIA H100 80GB HBM3`` -> H100), else None."""
    return next((spec for name, spec in GPUS.items() if name in device_kind), None)


# Chips -> the slice's physical shape (Cloud TPU's supported shapes for each chip generation).
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
             256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclass(frozen=True)
class Slice:
    """A TPU slice by its accelerator-type name (``v5e-256``): the chip, chip count and physical shape."""

    name: str
    chip: ChipSpec
    chips: int
    shape: tuple[int, ...]

    @property
    def topology_name(self) -> str:
        """libtpu's name of the slice, e.g. ``v5e:16x16`` or ``v5:4x4x4``."""
        return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.shape))}"

    @property
    def accelerator_type(self) -> str:
        """Cloud TPU's accelerator type of the slice (``v5litepod-16``, ``v5p-128``, ``v6e-64``)."""
        prefix = {"v5e": "v5litepod", "v6e": "v6e", "v5p": "v5p", "v4": "v4"}[self.chip.name]
        return f"{prefix}-{self.chips * self.chip.cores_per_chip}"

    @property
    def wrap(self) -> tuple[bool, ...]:
        """Torus wrap-around per dimension: full-pod 2D slices wrap in x and y; 3D slices from a full cube
        (4x4x4) up wrap in every dimension; smaller slices are meshes."""
        if self.chip.dims == 2:
            full = self.shape == (16, 16)
            return (full, full, False)
        return (min(self.shape) >= 4,) * 3


def parse_slice(name: str) -> Slice:
    """``v5e-16``, ``v5e-256``, ``v5p-128``, ``v6e-64``, ``v4-32`` -> ``Slice``. Unknown chips or sizes: ValueError
    naming the accepted forms."""
    m = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", name.strip().lower().replace("v5litepod", "v5e"))
    if not m:
        raise ValueError(f"topology {name!r}: expected CHIP-N with CHIP one of {', '.join(CHIPS)} "
                         f"(e.g. v5e-256, v5p-128, v6e-64, v4-32)")
    chip = CHIPS[m.group(1)]
    cores = int(m.group(2))
    if cores % chip.cores_per_chip:
        raise ValueError(f"topology {name!r}: {chip.name} slices count TensorCores, {chip.cores_per_chip} per chip")
    chips = cores // chip.cores_per_chip
    shapes = SHAPES_2D if chip.dims == 2 else SHAPES_3D
    if chips not in shapes:
        sizes = ", ".join(f"{chip.name}-{n * chip.cores_per_chip}" for n in shapes)
        raise ValueError(f"topology {name!r}: no {chip.name} slice of {chips} chips; known: {sizes}")
    return Slice(name, chip, chips, shapes[chips])


def topology_devices(slice_: Slice, num_slices: int = 1) -> list:
    """The compile-only devices of ``num_slices`` copies of ``slice_`` (``jax.experimental.topologies``; needs
    libtpu, the ``tpu`` extra). No TPU is touched: the devices only serve to lower and compile."""
    import os

    # Without these libtpu looks for a TPU VM's metadata server and warns that it found none (set only where
    # unset: on a TPU VM the real values win).
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # libtpu lets one process at a time hold it (a lockfile), and any JAX process that probes for TPUs takes it;
    # compiling touches no chip, so a compile may share it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(
            platform="tpu", topology_name=slice_.topology_name, chip_config_name=slice_.chip.chip_config,
            chips_per_host_bounds=(2, 2, 1), num_slices=num_slices, wrap=slice_.wrap)
    except RuntimeError as e:
        if "TPU support not installed" in str(e):
            raise ValueError("compiling for a TPU topology needs libtpu: pip install 'jaxvl[tpu]' "
                             "(jax[tpu], about 700 MB)") from e
        raise ValueError(f"libtpu could not describe {slice_.topology_name}: {str(e).splitlines()[0]}") from e
    devices = list(topo.devices)
    expected = slice_.chips * num_slices
    if len(devices) != expected:
        raise ValueError(f"{slice_.name} x {num_slices}: libtpu gave {len(devices)} devices, expected {expected}")
    return devices


__all__ = ["CHIPS", "ChipSpec", "GIB", "GPUS", "Slice", "gpu_spec", "parse_slice", "topology_devices"]
