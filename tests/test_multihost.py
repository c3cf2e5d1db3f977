"""Multi-host pretraining: 2 processes on 127.0.0.1 with 2 CPU devices each (jax.distributed, gloo) give
the same per-step losses as 1 process with 4 devices, and write one shared checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxvl.runtime.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = "pretrain"
OVERRIDES = ["fast_compile=True", "progress=False", "eval_every=0", "steps=4", "checkpoint.every=4",
             "data.batch_size=8", "data.max_seq_length=12", "data.num_threads=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxvl.cli", "pretrain", "--config", f"{PRETRAIN}:uniter,tiny",
            "--workdir", str(workdir), "--config.data.dataset=synthetic:num_images=32",
            f"--config.data.prepare_dir={data_dir}", *[f"--config.{o}" for o in OVERRIDES], *extra]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = subprocess.run(_command(tmp_path / "single", tmp_path / "data1"), env=_env(4), capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr

    port = _free_port()
    procs = [subprocess.Popen(_command(tmp_path / "multi", tmp_path / "data2", f"--coordinator=127.0.0.1:{port}",
                                       "--num-processes=2", f"--process-id={i}"),
                              env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outputs)
    assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in outputs[0]

    one = [r["loss"] for r in read_metrics(tmp_path / "single", "train")]
    two = [r["loss"] for r in read_metrics(tmp_path / "multi", "train")]
    assert len(one) == len(two) == 4
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert (tmp_path / "multi" / "checkpoints" / "4" / "commit_success.txt").exists()
