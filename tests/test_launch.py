"""The cluster launch scripts (scripts/launch/) and the SLURM parsing behind them (jaxvl.runtime.distributed):
host-list expansion, the JAX_* settings of SLURM tasks and their errors, shell syntax of every script, the
scripts' gcloud/srun command lines (with fake gcloud, srun and scontrol on PATH), and 2 real processes on
127.0.0.1 started through slurm_env.sh (the sbatch script's environment part) that sum across processes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxvl.runtime import distributed
from jaxvl.runtime.distributed import DistributedConfig, expand_hostlist, export_lines, from_environment, from_slurm

LAUNCH = Path(__file__).resolve().parents[1] / "scripts" / "launch"
SCRIPTS = sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
TASK = {"SLURM_JOB_NODELIST": "node[01-03,07]", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_JOB_ID": "12345"}


# ------------------------------------------------------------------------------------------ host lists

@pytest.mark.parametrize("hostlist, hosts", [
    ("node01", ["node01"]),
    ("127.0.0.1", ["127.0.0.1"]),
    ("a,b", ["a", "b"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("node[01-03,07],gpu-a[1-2]", ["node01", "node02", "node03", "node07", "gpu-a1", "gpu-a2"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("n[5]", ["n5"]),
    ("r[1-2]-n[08-09]", ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]),
    ("gpu[1-2]x,cpu", ["gpu1x", "gpu2x", "cpu"]),
    ("10.0.0.[1-2]", ["10.0.0.1", "10.0.0.2"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist, message", [
    ("node[1-2", "unclosed"), ("node]1", "unbalanced"), ("n[[1]]", "nested"), ("n[]", "bad range"),
    ("n[a-b]", "bad range"), ("n[3-1]", "backwards"), ("a,,b", "empty host"), ("", "empty host"),
])
def test_expand_hostlist_errors(hostlist, message):
    with pytest.raises(ValueError, match=message):
        expand_hostlist(hostlist)


# ------------------------------------------------------------------------------------------- from_slurm

@pytest.mark.parametrize("task, expected", [
    ({}, DistributedConfig("node01:61497", 4, 2)),  # 61440 + 12345 % 4096
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, DistributedConfig("node01:61497", 1, 0)),
    ({"SLURM_PROCID": "15", "SLURM_NTASKS": "16", "SLURM_JOB_NODELIST": "gpu-b[12-15]"},
     DistributedConfig("gpu-b12:61497", 16, 15)),
    ({"SLURM_STEP_NODELIST": "step[3-4]"}, DistributedConfig("step3:61497", 4, 2)),  # the step's nodes first
    ({"SLURM_JOB_ID": "4096"}, DistributedConfig("node01:61440", 4, 2)),
    ({"JAX_COORDINATOR_PORT": "1234"}, DistributedConfig("node01:1234", 4, 2)),
    ({"SLURM_NTASKS_PER_NODE": "1", "SLURM_LOCALID": "0"}, DistributedConfig("node01:61497", 4, 2)),
    ({"SLURM_NTASKS_PER_NODE": "4", "SLURM_LOCALID": "2"}, DistributedConfig("node01:61497", 4, 2, (2,))),
])
def test_from_slurm(task, expected):
    assert from_slurm({**TASK, **task}) == expected


@pytest.mark.parametrize("missing", ["SLURM_JOB_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_ID"])
def test_from_slurm_missing_variable(missing):
    env = {k: v for k, v in TASK.items() if k != missing}
    with pytest.raises(ValueError, match=f"^environment variable {missing} is not set"):
        from_slurm(env)


@pytest.mark.parametrize("task, message", [
    ({"SLURM_NTASKS": "four"}, "SLURM_NTASKS='four' is not an integer"),
    ({"SLURM_PROCID": ""}, "SLURM_PROCID is not set"),
    ({"SLURM_PROCID": "4"}, "SLURM_PROCID=4 is not a task of SLURM_NTASKS=4"),
    ({"SLURM_JOB_NODELIST": "node[01-"}, "SLURM_JOB_NODELIST='node\\[01-' is not a SLURM host list"),
    ({"JAX_COORDINATOR_PORT": "70000"}, "JAX_COORDINATOR_PORT=70000 is not a port"),
    ({"SLURM_NTASKS_PER_NODE": "2"}, "SLURM_LOCALID is not set"),
])
def test_from_slurm_bad_variable(task, message):
    with pytest.raises(ValueError, match=message):
        from_slurm({**TASK, **task})


def test_exports_read_back(monkeypatch):
    """``export_lines`` -> the environment -> ``from_environment`` gives the same settings."""
    cfg = DistributedConfig("node01:61497", 8, 5, (5,))
    lines = export_lines(cfg)
    assert lines == ["export JAX_COORDINATOR_ADDRESS=node01:61497", "export JAX_NUM_PROCESSES=8",
                     "export JAX_PROCESS_ID=5", "export JAX_LOCAL_DEVICE_IDS=5"]
    monkeypatch.delenv("JAXVL_DISTRIBUTED", raising=False)
    for line in lines:
        name, value = line.removeprefix("export ").split("=", 1)
        monkeypatch.setenv(name, value)
    assert from_environment() == cfg


def test_slurm_env_command(monkeypatch, capsys):
    """``python -m jaxvl.runtime.distributed --slurm-env``: export lines, or one error line and status 2."""
    for name, value in TASK.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_STEP_NODELIST", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
    assert distributed.main(["--slurm-env"]) == 0
    assert capsys.readouterr().out.splitlines() == export_lines(DistributedConfig("node01:61497", 4, 2))
    monkeypatch.delenv("SLURM_PROCID")
    assert distributed.main(["--slurm-env"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "jaxvl: error: environment variable SLURM_PROCID is not set (run inside a SLURM job step, e.g. under srun)"]


@pytest.fixture
def recorded_initialize(monkeypatch):
    """``jax.distributed.initialize`` replaced by a recorder (the CPU collectives setting restored after)."""
    calls = []
    before = jax.config.jax_cpu_collectives_implementation
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    yield calls
    jax.config.update("jax_cpu_collectives_implementation", before)


def test_explicit_settings_switch_off_cluster_detection(recorded_initialize):
    """Inside a SLURM job JAX's detection would pin a one-task-per-node process to GPU SLURM_LOCALID."""
    distributed.initialize(DistributedConfig("node01:1234", 2, 1))
    assert recorded_initialize == [dict(coordinator_address="node01:1234", num_processes=2, process_id=1,
                                        local_device_ids=None, cluster_detection_method="deactivate")]
    recorded_initialize.clear()
    distributed.initialize(DistributedConfig(auto=True))
    assert recorded_initialize == [{}]


# --------------------------------------------------------------------------------------------- scripts

@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax_and_header(script):
    path = LAUNCH / script
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and lines[1].startswith(f"# {script}: ")
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert "Example" in header and "Variables" in header
    assert path.stat().st_mode & stat.S_IXUSR


def test_launch_scripts_present():
    assert {"tpu_pod.sh", "multislice.sh", "slurm_gpu.sbatch", "slurm_env.sh", "tpu_worker.sh"} <= set(SCRIPTS)


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without JAX_*/SLURM_* settings (a test must not inherit a real job's), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "MEGASCALE_"))}
    return {**env, "JAXVL_PYTHON": sys.executable, **extra}


def test_slurm_env_script(tmp_path):
    """Executed with a command: exports, then runs it; sourced: exports only (the caller's arguments are not a
    command); a missing variable: one error line naming it, status 2, the command not run."""
    env = _clean_env(SLURM_JOB_NODELIST="127.0.0.1", SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_JOB_ID="7")
    run = subprocess.run(["bash", str(LAUNCH / "slurm_env.sh"), "env"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    exported = dict(line.split("=", 1) for line in run.stdout.splitlines() if line.startswith("JAX_"))
    assert exported == {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:61447", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}

    sourced = subprocess.run(["bash", "-c", f'source {LAUNCH / "slurm_env.sh"}; echo "$JAX_PROCESS_ID $#"',
                              "_", "touch", str(tmp_path / "ran")], env=env, capture_output=True, text=True)
    assert sourced.stdout == "1 2\n" and not (tmp_path / "ran").exists()

    del env["SLURM_NTASKS"]
    failed = subprocess.run(["bash", str(LAUNCH / "slurm_env.sh"), "touch", str(tmp_path / "ran")], env=env,
                            capture_output=True, text=True)
    assert failed.returncode == 2 and not (tmp_path / "ran").exists()
    assert failed.stderr.splitlines() == [
        "jaxvl: error: environment variable SLURM_NTASKS is not set (run inside a SLURM job step, e.g. under srun)"]


def _fake_tools(bin_dir: Path, log: Path, names: tuple[str, ...]) -> None:
    """Executables ``names`` that append their arguments to ``log`` (JSON lines); ``gcloud ... describe`` prints
    ACTIVE; ``srun`` exits with ``$FAKE_SRUN_STATUS``."""
    bin_dir.mkdir()
    for name in names:
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        f"with open({str(log)!r}, 'a') as f:\n"
                        f"    f.write(json.dumps([{name!r}] + sys.argv[1:]) + '\\n')\n"
                        f"if 'describe' in sys.argv:\n    print('ACTIVE')\n"
                        f"sys.exit(int(os.environ.get('FAKE_SRUN_STATUS', 0)) if {name!r} == 'srun' else 0)\n")
        path.chmod(0o755)


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _remote_argv(command: str) -> list[str]:
    """The argument vector a bash on the far side of ``ssh`` makes of ``command``."""
    out = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", command],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


ARGS = ["--config", "pretrain:uniter", "--config.data.dataset=/mnt/jaxvl/data/a b's"]


def test_tpu_pod_command(tmp_path):
    """One ssh to all workers whose command is tpu_worker.sh with the set variables and the pretrain arguments,
    quoted so that the workers' bash gets them back unchanged."""
    log = tmp_path / "calls.jsonl"
    _fake_tools(tmp_path / "bin", log, ("gcloud",))
    env = _clean_env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", TPU="pod", ZONE="us-west4-a",
                     WORKDIR="/mnt/jaxvl/runs/u 1", BUCKET="gs://bkt", JAXVL_SPEC="jaxvl @ git+https://x/jaxvl@v1")
    env.pop("JAXVL_PYTHON")
    result = subprocess.run([str(LAUNCH / "tpu_pod.sh"), *ARGS], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [call] = _calls(log)
    assert call[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-west4-a"]
    assert call[7] == "--worker=all" and call[8].startswith("--command=")
    assert _remote_argv(call[8].removeprefix("--command=")) == [
        "env", "WORKDIR=/mnt/jaxvl/runs/u 1", "JAXVL_SPEC=jaxvl @ git+https://x/jaxvl@v1", "BUCKET=gs://bkt",
        "bash", "-c", (LAUNCH / "tpu_worker.sh").read_text().rstrip("\n"), "tpu_worker.sh", *ARGS]


def test_tpu_pod_requires_variables(tmp_path):
    env = _clean_env(ZONE="z", WORKDIR="/w")
    result = subprocess.run([str(LAUNCH / "tpu_pod.sh")], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "TPU: set TPU to the TPU VM name" in result.stderr


def test_multislice_commands(tmp_path):
    """A queued resource of NUM_SLICES nodes named PREFIX-i, then tpu_pod.sh on every slice."""
    log = tmp_path / "calls.jsonl"
    _fake_tools(tmp_path / "bin", log, ("gcloud",))
    env = _clean_env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", QR="ms", ZONE="z", NUM_SLICES="3",
                     NODE_PREFIX="jv", ACCELERATOR_TYPE="v5litepod-16", RUNTIME_VERSION="v2-alpha-tpuv5-lite",
                     QR_FLAGS="--spot", WORKDIR="/mnt/jaxvl/runs/ms")
    result = subprocess.run([str(LAUNCH / "multislice.sh"), *ARGS], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    calls = _calls(log)
    assert calls[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "ms", "--zone=z",
                        "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite",
                        "--node-count=3", "--node-prefix=jv", "--spot"]
    assert calls[1][:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "ms"]
    ssh = sorted(c[5] for c in calls[2:] if c[4] == "ssh" and "--worker=all" in c)
    assert ssh == ["jv-0", "jv-1", "jv-2"] and len(calls) == 5
    assert all(_remote_argv(c[-1].removeprefix("--command="))[-len(ARGS):] == ARGS for c in calls[2:])


@pytest.mark.parametrize("status, requeued", [(0, False), (143, True), (1, False)])
def test_slurm_sbatch_runs_and_requeues(tmp_path, status, requeued):
    """srun runs slurm_env.sh -> jaxvl pretrain with the workdir and the arguments; a run stopped by SIGTERM
    (status 143, after its checkpoint) requeues the job; the job ends with the run's status."""
    log = tmp_path / "calls.jsonl"
    _fake_tools(tmp_path / "bin", log, ("srun", "scontrol"))
    env = _clean_env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", WORKDIR="/shared/runs/u", SLURM_JOB_ID="99",
                     SLURM_SUBMIT_DIR=str(LAUNCH.parents[1]), FAKE_SRUN_STATUS=str(status))
    result = subprocess.run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), *ARGS], env=env, capture_output=True, text=True)
    assert result.returncode == status, result.stderr
    calls = _calls(log)
    assert calls[0] == ["srun", "--kill-on-bad-exit=1", "bash", str(LAUNCH / "slurm_env.sh"), sys.executable, "-m",
                        "jaxvl.cli", "pretrain", "--workdir", "/shared/runs/u", *ARGS]
    assert calls[1:] == ([["scontrol", "requeue", "99"]] if requeued else [])
    assert "compilation cache /shared/runs/jax_cache" in result.stdout


# ------------------------------------------------------------------------------- 2 processes, 127.0.0.1

WORKER = """
import jax, numpy as np
from jax.experimental import multihost_utils
from jaxvl.runtime.distributed import from_environment, initialize
initialize(from_environment())
total = multihost_utils.process_allgather(np.array([jax.process_index() + 1])).sum()
print("RESULT", jax.process_index(), jax.process_count(), int(total), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_slurm_tasks_sum_across_processes():
    """What srun does with 2 tasks on one node, without srun: each runs slurm_env.sh, which exports the JAX_*
    settings derived from its SLURM variables and execs a Python process that joins jax.distributed (gloo,
    CPU) and all-gathers its process index + 1 (sum 3)."""
    port = str(_free_port())  # the job-id-derived port could be taken on a shared machine
    procs = []
    for task in range(2):
        env = _clean_env(SLURM_JOB_NODELIST="127.0.0.1", SLURM_NTASKS="2", SLURM_PROCID=str(task),
                         SLURM_LOCALID="0", SLURM_JOB_ID="4242", JAX_COORDINATOR_PORT=port, JAX_PLATFORMS="cpu",
                         XLA_FLAGS="--xla_force_host_platform_device_count=1")
        procs.append(subprocess.Popen(["bash", str(LAUNCH / "slurm_env.sh"), sys.executable, "-c", WORKER], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outputs)
    results = sorted(line for out in outputs for line in out.splitlines() if line.startswith("RESULT"))
    assert results == ["RESULT 0 2 3", "RESULT 1 2 3"]
