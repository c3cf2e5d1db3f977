#!/usr/bin/env bash
# tpu_worker.sh: what runs on EVERY worker of a TPU VM slice (sent there by tpu_pod.sh; not run by hand).
#
# 1. Installs jaxvl and JAX for TPU into a virtual environment (once: a rerun finds them installed).
# 2. Mounts the GCS bucket with Cloud Storage FUSE at MOUNT, so that every worker sees the same workdir,
#    prepared data and compilation cache as ordinary paths (jaxvl's workdir must be a POSIX path today).
# 3. Runs `jaxvl pretrain --workdir WORKDIR ARGS...` with JAXVL_DISTRIBUTED=auto: jax.distributed detects the
#    pod (and, on multislice, the slices) from the TPU VM metadata, so every worker runs the same command.
#
# Arguments: passed to `jaxvl pretrain` after --workdir.
# Variables:
#   WORKDIR                    required; the run directory, normally under MOUNT
#   JAXVL_SPEC                 pip requirement for jaxvl (default: jaxvl; a git URL or a wheel path also work)
#   JAXVL_VENV                 the virtual environment (default: ~/jaxvl-venv)
#   JAXVL_PYTHON               Python >= 3.11 that creates it (default: python3)
#   BUCKET                     gs://NAME to mount (optional: without it WORKDIR must already be shared)
#   MOUNT                      where BUCKET is mounted (default: /mnt/jaxvl)
#   JAX_COMPILATION_CACHE_DIR  default: MOUNT/jax_cache with a BUCKET, else ~/jax_cache
#
# Example (what tpu_pod.sh sends to each worker):
#   env WORKDIR=/mnt/jaxvl/runs/uniter BUCKET=gs://my-bucket bash tpu_worker.sh --config pretrain:uniter

set -euo pipefail

: "${WORKDIR:?set WORKDIR to the run directory (under MOUNT)}"
spec="${JAXVL_SPEC:-jaxvl}"
venv="${JAXVL_VENV:-$HOME/jaxvl-venv}"
python="${JAXVL_PYTHON:-python3}"
mount="${MOUNT:-/mnt/jaxvl}"
worker="$(hostname)"

install_jaxvl() {
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "$worker: $python is $("$python" -V 2>&1); jaxvl needs Python >= 3.11 (set JAXVL_PYTHON)" >&2
        exit 2
    fi
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    # No --upgrade: a rerun (resuming after a preemption) keeps the versions the run started with.
    "$venv/bin/python" -m pip install --quiet "jax[tpu]" "$spec"
}

install_gcsfuse() {
    local repo
    repo="gcsfuse-$(lsb_release -c -s)"
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt $repo main" |
        sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
}

mount_bucket() {
    command -v gcsfuse >/dev/null || install_gcsfuse
    sudo mkdir -p "$mount"
    sudo chown "$(id -u):$(id -g)" "$mount"
    # --rename-dir-limit: Orbax finalises a checkpoint by renaming its temporary directory; gcsfuse refuses
    # directory renames on buckets without hierarchical namespace unless this limit allows them.
    mountpoint -q "$mount" || gcsfuse --implicit-dirs --rename-dir-limit=1000000 "${BUCKET#gs://}" "$mount"
}

install_jaxvl
if [[ -n "${BUCKET:-}" ]]; then
    mount_bucket
    export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$mount/jax_cache}"
else
    export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/jax_cache}"
fi
export JAXVL_DISTRIBUTED=auto
echo "$worker: jaxvl pretrain --workdir $WORKDIR $*; compilation cache $JAX_COMPILATION_CACHE_DIR"
exec "$venv/bin/python" -m jaxvl.cli pretrain --workdir "$WORKDIR" "$@"
