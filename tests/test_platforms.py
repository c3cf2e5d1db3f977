"""``jaxvl.runtime.platforms``: JAX_PLATFORMS=cpu only on a machine with libtpu installed but no TPU chip and no
GPU, and never over an explicit JAX_PLATFORMS."""

from __future__ import annotations

import importlib.util

import pytest

from jaxvl.runtime import platforms


def pci(root, devices):
    for i, (vendor, device) in enumerate(devices):
        d = root / f"0000:00:{i:02x}.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text(device + "\n")
    return str(root)


@pytest.fixture
def libtpu(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(platforms.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "libtpu" else real(name, *a))


def test_cpu_only_machine_with_libtpu_gets_cpu(tmp_path, libtpu):
    root = pci(tmp_path, [("0x1ae0", "0x0042"), ("0x8086", "0x1237")])  # Google's virtual NIC, a host bridge
    env = {}
    assert platforms.tpu_chips(root) == 0
    assert platforms.prefer_local_platforms(env, root) and env == {"JAX_PLATFORMS": "cpu"}


def test_tpu_host_and_explicit_platforms_are_left_alone(tmp_path, libtpu):
    root = pci(tmp_path, [("0x1ae0", "0x0063"), ("0x1ae0", "0x0063")])  # two v5e chips
    assert platforms.tpu_chips(root) == 2
    env = {}
    assert not platforms.prefer_local_platforms(env, root) and env == {}
    env = {"JAX_PLATFORMS": ""}
    assert not platforms.prefer_local_platforms(env, str(tmp_path / "none")) and env == {"JAX_PLATFORMS": ""}


def test_without_libtpu_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(platforms.importlib.util, "find_spec", lambda name, *a: None)
    env = {}
    assert not platforms.prefer_local_platforms(env, str(tmp_path)) and env == {}
