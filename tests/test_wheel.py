"""The built wheel, installed into a fresh virtual environment, runs ``jaxvl demo`` from outside the repository.

The demo's run is also the test of ``jaxvl demo`` itself (the README's main job, as a user runs it: one device):
two sweeps pretrained, four checkpoints ablated, the table printed and the report written where it says.

The wheel is built from a clean copy of the packaging inputs (``setup.cfg``, ``pyproject.toml``, ``README.md``,
``jaxvl/``), so that neither a stale ``build/`` directory nor the repository's ``__pycache__`` reaches it, and
without build isolation (no network: the current environment's setuptools builds it). The fresh environment sees
the current environment's dependencies through a ``.pth`` path line, but not its editable jaxvl: path lines in a
``.pth`` file are added to ``sys.path`` without processing the ``.pth`` files they hold (the editable install's
``__editable__*.pth`` finder hook among them), and the current environment has no ``jaxvl`` directory of its own.
The test checks that ``jaxvl`` imports from the fresh environment, not from the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGING_FILES = ("setup.cfg", "pyproject.toml", "README.md")
MEMBERS = ("uniter-mrc-kl", "uniter-mrc-xe", "lxmert-mrc-kl", "lxmert-mrc-xe")


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` in ``cwd``; fails the test with its output unless it exits 0."""
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def source_modules(root: Path) -> set[str]:
    """The ``.py`` files of the ``jaxvl`` package under ``root``, as wheel paths (``jaxvl/...``)."""
    return {p.relative_to(root).as_posix() for p in (root / "jaxvl").rglob("*.py") if "__pycache__" not in p.parts}


def build_wheel(tmp: Path) -> Path:
    """A wheel of the working tree's package, built from a clean copy of it under ``tmp``."""
    src = tmp / "src"
    shutil.copytree(REPO / "jaxvl", src / "jaxvl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in PACKAGING_FILES:
        shutil.copy2(REPO / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp / "wheels"), "-q"], tmp, dict(os.environ), timeout=600)
    (wheel,) = (tmp / "wheels").glob("jaxvl-*.whl")
    return wheel


def fresh_venv(tmp: Path, env: dict[str, str]) -> Path:
    """A new virtual environment whose ``site-packages`` also sees the current one's (its path lines only)."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env, timeout=300)
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env,
               timeout=60).stdout.strip()
    outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(site, "_jaxvl_test_dependencies.pth").write_text("".join(f"{p}\n" for p in outer))
    return venv


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_outside_the_repository(tmp_path):
    pytest.importorskip("setuptools", reason="the wheel is built without build isolation")
    start = time.perf_counter()
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"jaxvl/configs/pretrain.py", "jaxvl/configs/caption.py", "jaxvl/configs/ablate.py",
            "jaxvl/configs/models.py", "jaxvl/data/sources/__init__.py"} <= names
    missing = source_modules(tmp_path / "src") - names
    assert not missing, f"modules left out of the wheel (a package without __init__.py?): {sorted(missing)}"
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # a user's run: no fake devices from conftest.py
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    venv = fresh_venv(tmp_path, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # --ignore-installed: the current environment's jaxvl (seen through the .pth) is neither skipped for nor removed
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
         "--no-index", "--ignore-installed", "-q", str(wheel)], tmp_path, env, timeout=600)
    built = time.perf_counter()

    work = tmp_path / "work"
    work.mkdir()
    check = run([str(venv / "bin" / "python"), "-c",
                 "import jaxvl, importlib.metadata as m; from jaxvl.configs import load_config; "
                 "load_config('pretrain:uniter,tiny'); print(jaxvl.__file__); print(m.version('jaxvl'))"],
                work, env, timeout=300).stdout.splitlines()
    module = Path(check[0]).resolve()
    assert module.is_relative_to(venv.resolve()) and not module.is_relative_to(REPO), module
    assert run([str(venv / "bin" / "jaxvl"), "pretrain", "--help"], work, env, timeout=300).stdout

    out = run([str(venv / "bin" / "jaxvl"), "demo", "--steps", "20", "--out", str(work / "demo")], work, env,
              timeout=1800).stdout
    # the demo at a few steps: each member's row read on the region head it trained
    for member in MEMBERS:
        assert f"| {member} |" in out, out[-4000:]
        region, other = ("MRC-KL", "MRC-XE") if member.endswith("kl") else ("MRC-XE", "MRC-KL")
        assert re.search(rf"^\| {member} \| \d+ \| .* \| {region} \|", out, re.M), member
        assert f"| {member} | {region} phrase |" in out and f"| {member} | {other} phrase |" not in out
    assert "What the world plants" in out and "| verdict | expected | as expected? |" in out
    report = work / "demo" / "ablation"
    assert f"per-example losses and plots: {report}" in out
    for name in ("table.md", "results.csv", "conditions.png", "thresholds.png"):
        assert (report / name).stat().st_size > 0, name
    table = report / "table.md"
    assert table.read_text().startswith("What the world plants") and table.read_text().splitlines()[0] in out
    print(f"wheel built and installed in {built - start:.0f} s; the demo ran in {time.perf_counter() - built:.0f} s")
