"""Which JAX platforms a process starts, decided before JAX is imported.

With the ``tpu`` extra installed (libtpu, for ``jaxvl compile --topology``) on a machine without TPU chips,
JAX still loads libtpu when it starts its backends, and libtpu prints five lines of warnings about TPU
metadata it cannot find on every command. ``prefer_local_platforms`` (called by ``jaxvl/__init__.py``) then
sets ``JAX_PLATFORMS=cpu``, only when all of these hold: ``JAX_PLATFORMS`` is not set, libtpu is installed,
no TPU chip is on the PCI bus (Google's vendor id with a TPU device id, as listed below) and no NVIDIA or AMD
GPU device node exists. Compiling for a TPU topology needs no TPU backend (``jaxvl.aot.chips``), so it is
unaffected; a TPU VM, a GPU host, or an explicit ``JAX_PLATFORMS`` is left alone.
"""

from __future__ import annotations

import glob
import importlib.util
import os

GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips (v2/v3, v4, v5p, v5e, v6e, TPU7x and one unnamed), as JAX's hardware_utils lists them
TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})
GPU_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def tpu_chips(pci_root: str = "/sys/bus/pci/devices") -> int:
    """How many TPU chips are attached through PCI."""
    return sum(1 for vendor in glob.glob(os.path.join(pci_root, "*", "vendor"))
               if _read(vendor) == GOOGLE_PCI_VENDOR
               and _read(os.path.join(os.path.dirname(vendor), "device")) in TPU_PCI_DEVICES)


def prefer_local_platforms(environ: dict[str, str] | None = None, pci_root: str = "/sys/bus/pci/devices") -> bool:
    """Sets ``JAX_PLATFORMS=cpu`` in ``environ`` (default ``os.environ``) under the module doc's conditions;
    returns whether it did."""
    env = os.environ if environ is None else environ
    if "JAX_PLATFORMS" in env or importlib.util.find_spec("libtpu") is None:
        return False
    if tpu_chips(pci_root) or any(os.path.exists(node) for node in GPU_DEVICE_NODES):
        return False
    env["JAX_PLATFORMS"] = "cpu"
    return True
