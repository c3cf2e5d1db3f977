"""Multi-host start-up: ``jax.distributed.initialize`` from command-line flags or the environment.

Every process of a multi-host run calls ``initialize`` before touching a device. Sources, first
found wins:

1. explicit arguments (``jaxvl pretrain --coordinator 10.0.0.1:1234 --num-processes 4 --process-id 2``);
2. the variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (and optionally
   ``JAX_LOCAL_DEVICE_IDS``, comma-separated);
3. ``JAXVL_DISTRIBUTED=auto``: JAX's own cluster detection (TPU pods, SLURM, Open MPI, ...).

With none of these the run is single-process and nothing is initialised. On CPU the cross-process
collectives go through gloo.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import jax

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedConfig:
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
    num_processes = num_processes if num_processes is not None else _int_env("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env("JAX_PROCESS_ID")
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


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def initialize(cfg: DistributedConfig) -> None:
    """Starts ``jax.distributed`` when ``cfg`` asks for it (gloo collectives on CPU). Idempotent."""
    if not cfg.enabled or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only affects the CPU backend
    if cfg.auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=cfg.coordinator, num_processes=cfg.num_processes,
                                   process_id=cfg.process_id, local_device_ids=cfg.local_device_ids)
    logger.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())
