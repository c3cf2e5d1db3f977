#!/usr/bin/env bash
# tpu_pod.sh: `jaxvl pretrain` on every worker of a TPU VM slice (a pod slice such as v5e-256, or one host).
#
# One `gcloud compute tpus tpu-vm ssh TPU --worker=all` runs scripts/launch/tpu_worker.sh on all workers at
# once: each installs jaxvl + jax[tpu], mounts the GCS bucket (Cloud Storage FUSE) and runs the same
# `jaxvl pretrain` with JAXVL_DISTRIBUTED=auto, so jax.distributed finds the coordinator, the number of
# processes and its own process id from the TPU VM metadata. The output of all workers streams here; run
# this inside tmux/screen, since a dropped SSH connection stops the run (rerun the same command to resume).
#
# Arguments: passed to `jaxvl pretrain` (the config and its overrides; --workdir comes from WORKDIR).
# Variables:
#   TPU, ZONE        required: the TPU VM (created beforehand, e.g. `gcloud compute tpus tpu-vm create`)
#   PROJECT          optional gcloud project
#   BUCKET           gs://NAME holding runs, prepared data and the compilation cache (mounted at MOUNT)
#   MOUNT            mount point on the workers (default: /mnt/jaxvl)
#   WORKDIR          required: the run directory as the workers see it, e.g. /mnt/jaxvl/runs/uniter
#   JAXVL_SPEC       pip requirement for jaxvl: jaxvl (default), 'jaxvl @ git+https://github.com/ORG/jaxvl@TAG',
#                    or a wheel path on the workers (e.g. /mnt/jaxvl/wheels/jaxvl-0.2.0-py3-none-any.whl)
#   JAXVL_VENV, JAXVL_PYTHON, JAX_COMPILATION_CACHE_DIR   see tpu_worker.sh (defaults: ~/jaxvl-venv, python3,
#                    MOUNT/jax_cache)
#
# Example:
#   TPU=my-v5e-256 ZONE=us-west4-a BUCKET=gs://my-bucket WORKDIR=/mnt/jaxvl/runs/uniter \
#     scripts/launch/tpu_pod.sh --config pretrain:uniter \
#     --config.data.dataset=/mnt/jaxvl/data/jaxvl_volta_cc/default/1.0.0

set -euo pipefail

: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
: "${WORKDIR:?set WORKDIR to the run directory as the workers see it (e.g. /mnt/jaxvl/runs/NAME)}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The worker script travels inside the SSH command, with the variables it reads that are set here.
worker_env=()
for name in WORKDIR JAXVL_SPEC JAXVL_VENV JAXVL_PYTHON BUCKET MOUNT JAX_COMPILATION_CACHE_DIR; do
    if [[ -n "${!name:-}" ]]; then
        worker_env+=("$name=${!name}")
    fi
done
remote="$(printf '%q ' env "${worker_env[@]}" bash -c "$(<"$here/tpu_worker.sh")" tpu_worker.sh "$@")"

gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all \
    --command="$remote"
