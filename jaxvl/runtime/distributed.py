"""Multi-host start-up: ``jax.distributed.initialize`` from command-line flags or the environment.

Every process of a multi-host run calls ``initialize`` before touching a device. Sources, first
found wins:

1. explicit arguments (``jaxvl pretrain --coordinator 10.0.0.1:1234 --num-processes 4 --process-id 2``);
2. the variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (and optionally
   ``JAX_LOCAL_DEVICE_IDS``, comma-separated);
3. ``JAXVL_DISTRIBUTED=auto``: JAX's own cluster detection (TPU pods, SLURM, Open MPI, ...).

With none of these the run is single-process and nothing is initialised. On CPU the cross-process
collectives go through gloo. Explicit settings are used as given: JAX's own cluster detection is switched off
for them (inside a SLURM job it would otherwise restrict each process to the GPU numbered ``SLURM_LOCALID``).

SLURM: ``from_slurm(env)`` derives the three settings from a task's SLURM variables (the coordinator is the
first host of the step's node list), and ``python -m jaxvl.runtime.distributed --slurm-env`` prints them
as ``export`` lines for a shell to ``eval`` (``scripts/launch/slurm_env.sh``; ``docs/launch.md``).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# A job-id-derived coordinator port: 4096 ports above Linux's default ephemeral range (32768-60999), the
# range JAX's own SLURM detection uses, so two jobs sharing a node do not collide.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 61440, 4096


@dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run (module doc); ``enabled`` False: a single-process run."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    auto: bool = False

    @property
    def enabled(self) -> bool:
        return self.auto or self.coordinator is not None


def from_environment(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> DistributedConfig:
    """Flags first, then ``JAX_*`` variables (module doc). Incomplete settings are an error naming what is missing."""
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else _int_env(env, "JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env(env, "JAX_PROCESS_ID")
    local = env.get("JAX_LOCAL_DEVICE_IDS")
    local_ids = tuple(int(x) for x in local.split(",")) if local else None
    auto = env.get("JAXVL_DISTRIBUTED", "").lower() == "auto"
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError(f"distributed run with coordinator {coordinator!r} needs the number of processes and this "
                         f"process's id (--num-processes/--process-id or JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
    if coordinator is None and (num_processes is not None and num_processes > 1):
        raise ValueError(f"{num_processes} processes but no coordinator address (--coordinator or "
                         f"JAX_COORDINATOR_ADDRESS)")
    return DistributedConfig(coordinator, num_processes, process_id, local_ids, auto)


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    """``env[name]`` as an int; None if unset or empty; a ``ValueError`` naming the variable otherwise."""
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def initialize(cfg: DistributedConfig) -> None:
    """Starts ``jax.distributed`` when ``cfg`` asks for it (gloo collectives on CPU). Idempotent."""
    import jax  # here, not at the top: ``--slurm-env`` runs once per SLURM task and needs no JAX

    if not cfg.enabled or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only affects the CPU backend
    if cfg.auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=cfg.coordinator, num_processes=cfg.num_processes,
                                   process_id=cfg.process_id, local_device_ids=cfg.local_device_ids,
                                   cluster_detection_method="deactivate")
    logger.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())


# ------------------------------------------------------------------------------------------------- SLURM

def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host list, in order: ``node[01-03,07],gpu-a[1-2]`` -> ``node01, node02, node03,
    node07, gpu-a1, gpu-a2``. A range keeps its lower bound's zero padding (``[08-10]`` -> 08, 09, 10);
    several brackets in one name expand as a product (``r[1-2]n[1-2]`` -> r1n1, r1n2, r2n1, r2n2)."""
    return [host for item in _split_hostlist(hostlist) for host in _expand_host(item)]


def _split_hostlist(hostlist: str) -> list[str]:
    """The comma-separated names of a host list, commas inside brackets left alone."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(hostlist):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(hostlist[start:i])
            start = i + 1
        if depth not in (0, 1):
            raise ValueError(f"unbalanced or nested brackets at character {i}")
    if depth:
        raise ValueError("unclosed '['")
    items.append(hostlist[start:])
    if not all(items):
        raise ValueError("empty host name")
    return items


def _expand_host(item: str) -> list[str]:
    parts = re.split(r"\[([^\]]*)\]", item)  # odd positions: bracket contents
    choices = [[part] if i % 2 == 0 else _expand_ranges(part) for i, part in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _expand_ranges(spec: str) -> list[str]:
    """``01-03,07`` -> ``01, 02, 03, 07``."""
    out = []
    for piece in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", piece)
        if m is None:
            raise ValueError(f"bad range {piece!r} in [{spec}]")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"range {piece!r} in [{spec}] runs backwards")
        out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return out


def from_slurm(env: Mapping[str, str]) -> DistributedConfig:
    """The settings of one SLURM task (``srun`` sets the variables for each task):

    - coordinator: the first host of ``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``), port
      ``JAX_COORDINATOR_PORT`` if set, else ``61440 + SLURM_JOB_ID % 4096`` (the same in every task);
    - number of processes ``SLURM_NTASKS``, process id ``SLURM_PROCID``;
    - local device ids: ``(SLURM_LOCALID,)`` when ``SLURM_NTASKS_PER_NODE`` > 1 (one task per GPU, each task
      seeing all of its node's GPUs); else None: one task per node drives every GPU of its node.

    A missing or malformed variable raises ``ValueError`` naming it."""
    name = "SLURM_STEP_NODELIST" if env.get("SLURM_STEP_NODELIST") else "SLURM_JOB_NODELIST"
    nodelist = _required(env, name)
    try:
        host = expand_hostlist(nodelist)[0]
    except ValueError as e:
        raise ValueError(f"{name}={nodelist!r} is not a SLURM host list: {e}") from None
    port = _int_env(env, "JAX_COORDINATOR_PORT")
    if port is None:
        port = SLURM_PORT_BASE + _required_int(env, "SLURM_JOB_ID") % SLURM_PORT_SPAN
    elif not 0 < port < 65536:
        raise ValueError(f"environment variable JAX_COORDINATOR_PORT={port} is not a port number")
    num_processes = _required_int(env, "SLURM_NTASKS")
    process_id = _required_int(env, "SLURM_PROCID")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"SLURM_PROCID={process_id} is not a task of SLURM_NTASKS={num_processes}")
    per_node = _int_env(env, "SLURM_NTASKS_PER_NODE")
    local = (_required_int(env, "SLURM_LOCALID"),) if per_node is not None and per_node > 1 else None
    return DistributedConfig(f"{host}:{port}", num_processes, process_id, local)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise ValueError(_not_set(name))
    return value


def _required_int(env: Mapping[str, str], name: str) -> int:
    value = _int_env(env, name)
    if value is None:
        raise ValueError(_not_set(name))
    return value


def _not_set(name: str) -> str:
    return f"environment variable {name} is not set (run inside a SLURM job step, e.g. under srun)"


def export_lines(cfg: DistributedConfig) -> list[str]:
    """``export JAX_...=...`` shell lines that ``from_environment`` reads back as ``cfg``."""
    values = {"JAX_COORDINATOR_ADDRESS": cfg.coordinator, "JAX_NUM_PROCESSES": cfg.num_processes,
              "JAX_PROCESS_ID": cfg.process_id,
              "JAX_LOCAL_DEVICE_IDS": None if cfg.local_device_ids is None else
              ",".join(map(str, cfg.local_device_ids))}
    return [f"export {k}={shlex.quote(str(v))}" for k, v in values.items() if v is not None]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jaxvl.runtime.distributed --slurm-env``: this SLURM task's ``export`` lines on stdout, or
    one ``jaxvl: error: ...`` line on stderr (status 2)."""
    parser = argparse.ArgumentParser(prog="python -m jaxvl.runtime.distributed", description=main.__doc__)
    parser.add_argument("--slurm-env", action="store_true", required=True,
                        help="print this task's JAX_* settings, derived from its SLURM variables")
    parser.parse_args(argv)
    try:
        cfg = from_slurm(os.environ)
    except ValueError as e:
        print(f"jaxvl: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(export_lines(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
