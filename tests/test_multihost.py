"""Multi-host pretraining: 2 processes on 127.0.0.1 with 2 CPU devices each (jax.distributed, gloo) give
the same per-step losses as 1 process with 4 devices, and write one shared checkpoint; a SIGTERM to one of them
checkpoints both at one step."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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


@pytest.mark.slow
def test_sigterm_to_one_process_checkpoints_both_at_one_step(tmp_path):
    """A preempted worker of a pod gets SIGTERM alone: JAX's preemption service (not a per-process Python handler,
    which left the other process waiting in the next step's collectives forever) stops both processes at the same
    step, with one committed checkpoint there, and both exit as preempted (143)."""
    port = _free_port()
    workdir = tmp_path / "multi"
    procs = [subprocess.Popen(_command(workdir, tmp_path / "data", f"--coordinator=127.0.0.1:{port}",
                                       "--num-processes=2", f"--process-id={i}", "--config.steps=100000",
                                       "--config.checkpoint.every=100000"),
                              env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        metrics, start = workdir / "metrics.jsonl", time.monotonic()
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert time.monotonic() - start < 300 and all(p.poll() is None for p in procs), "training did not start"
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGTERM)  # process 1 only: process 0 is not signalled
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [143, 143], "\n\n".join(o[-3000:] for o in outputs)
    (step,) = os.listdir(workdir / "checkpoints")
    assert (workdir / "checkpoints" / step / "commit_success.txt").exists()
    for output in outputs:
        assert f"preempted at step {step} (checkpoint {step})" in output
