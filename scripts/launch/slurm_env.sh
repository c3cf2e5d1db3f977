#!/usr/bin/env bash
# slurm_env.sh: the environment part of slurm_gpu.sbatch, run once in every SLURM task.
#
# Derives this task's jax.distributed settings from its SLURM variables (SLURM_STEP_NODELIST or
# SLURM_JOB_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_JOB_ID; SLURM_LOCALID when SLURM_NTASKS_PER_NODE > 1)
# through `python -m jaxvl.runtime.distributed --slurm-env`, and exports
#   JAX_COORDINATOR_ADDRESS  first host of the node list : (JAX_COORDINATOR_PORT or 61440 + SLURM_JOB_ID % 4096)
#   JAX_NUM_PROCESSES        SLURM_NTASKS
#   JAX_PROCESS_ID           SLURM_PROCID
#   JAX_LOCAL_DEVICE_IDS     SLURM_LOCALID, only with one task per GPU (SLURM_NTASKS_PER_NODE > 1)
# which `jaxvl pretrain` reads (jaxvl/runtime/distributed.py). A missing or malformed variable stops it with
# one line naming the variable (status 2).
#
# Two ways to use it:
#   source scripts/launch/slurm_env.sh                    # exports into the current shell
#   scripts/launch/slurm_env.sh COMMAND [ARGS...]         # exports, then execs COMMAND (what srun runs)
# Variables: JAXVL_PYTHON (default: python), the interpreter that has jaxvl installed.
#
# Example (the 2 tasks of a job on one machine, no srun needed):
#   SLURM_JOB_NODELIST=127.0.0.1 SLURM_NTASKS=2 SLURM_PROCID=1 SLURM_JOB_ID=7 \
#     scripts/launch/slurm_env.sh env | grep ^JAX_

_jaxvl_exports=$("${JAXVL_PYTHON:-python}" -m jaxvl.runtime.distributed --slurm-env) || {
    return 2 2>/dev/null || exit 2
}
eval "$_jaxvl_exports"
unset _jaxvl_exports

if [[ "${BASH_SOURCE[0]}" == "$0" && $# -gt 0 ]]; then
    exec "$@"
fi
