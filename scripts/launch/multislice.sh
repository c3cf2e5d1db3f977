#!/usr/bin/env bash
# multislice.sh: `jaxvl pretrain` on N TPU slices joined over the data-centre network (Multislice).
#
# 1. Requests the slices as one queued resource:
#      gcloud compute tpus queued-resources create QR --node-count=N --node-prefix=PREFIX ...
#    and waits until it is ACTIVE. GCE names the slices PREFIX-0 .. PREFIX-(N-1) and gives every worker the
#    MEGASCALE_* settings (MEGASCALE_COORDINATOR_ADDRESS: slice 0's first worker, MEGASCALE_NUM_SLICES,
#    MEGASCALE_SLICE_ID, MEGASCALE_PORT) in its TPU environment metadata.
# 2. Runs scripts/launch/tpu_pod.sh on every slice at once (all workers of all slices), each with
#    JAXVL_DISTRIBUTED=auto: jax.distributed reads MEGASCALE_* and numbers the processes across slices
#    (process id = slice id x workers per slice + worker id), so the slices form one JAX runtime.
#
# The mesh (docs/launch.md, "Multislice"): jaxvl/runtime/sharding.py make_mesh builds the hybrid ICI x DCN mesh
# from the devices' slice_index, with the data axis across slices (config.mesh.data a multiple of the number of
# slices). Checked on compile-only devices (tests/test_aot.py), not yet on real slices.
#
# Arguments: passed to `jaxvl pretrain` (through tpu_pod.sh).
# Variables:
#   QR, ZONE, ACCELERATOR_TYPE, RUNTIME_VERSION   required: queued resource name, zone, slice type (e.g.
#                    v5litepod-256) and TPU VM image (e.g. v2-alpha-tpuv5-lite)
#   NUM_SLICES       number of slices (default: 2)
#   NODE_PREFIX      slice name prefix (default: QR)
#   PROJECT          optional gcloud project
#   QR_FLAGS         extra flags for `queued-resources create` (e.g. "--spot" or "--reserved")
#   SKIP_CREATE=1    the queued resource exists already: only run
#   BUCKET, MOUNT, WORKDIR, JAXVL_SPEC, ...   as for tpu_pod.sh
#
# Example:
#   QR=jaxvl-ms ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-256 RUNTIME_VERSION=v2-alpha-tpuv5-lite NUM_SLICES=2 \
#     BUCKET=gs://my-bucket WORKDIR=/mnt/jaxvl/runs/uniter-ms \
#     scripts/launch/multislice.sh --config pretrain:uniter --config.data.dataset=/mnt/jaxvl/data/...

set -euo pipefail

: "${QR:?set QR to the queued resource name}"
: "${ZONE:?set ZONE}"
num_slices="${NUM_SLICES:-2}"
prefix="${NODE_PREFIX:-$QR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project=()
if [[ -n "${PROJECT:-}" ]]; then
    project=(--project="$PROJECT")
fi

create_slices() {
    : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE, e.g. v5litepod-256}"
    : "${RUNTIME_VERSION:?set RUNTIME_VERSION, the TPU VM image}"
    # QR_FLAGS unquoted on purpose: a list of flags
    gcloud compute tpus queued-resources create "$QR" --zone="$ZONE" "${project[@]}" \
        --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
        --node-count="$num_slices" --node-prefix="$prefix" ${QR_FLAGS:-}
}

wait_active() {
    local state
    while true; do
        state="$(gcloud compute tpus queued-resources describe "$QR" --zone="$ZONE" "${project[@]}" \
            --format='value(state.state)')"
        echo "queued resource $QR: $state"
        case "$state" in
            ACTIVE) return 0 ;;
            FAILED | SUSPENDED) echo "queued resource $QR is $state" >&2; return 1 ;;
        esac
        sleep "${POLL_SECONDS:-60}"
    done
}

run_all_slices() {
    local pids=() i status=0
    for ((i = 0; i < num_slices; i++)); do
        TPU="$prefix-$i" "$here/tpu_pod.sh" "$@" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do
        wait "$i" || status=$?
    done
    return "$status"
}

if [[ "${SKIP_CREATE:-0}" != 1 ]]; then
    create_slices
fi
wait_active
run_all_slices "$@"
