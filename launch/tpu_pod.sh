#!/usr/bin/env bash
# Cloud TPU VM pod slice: the same command on every worker, one process per worker host.
#   launch/tpu_pod.sh TPU_NAME ZONE --config=configs/r50.py --workdir=/mnt/shared/runs/r50
# Needs: gcloud authenticated; the repository and .venv (jax[tpu]) at the same path on every
# worker (REPO, default ~/resnet_jax); WORKDIR on storage all workers share (NFS, Filestore
# or a gcsfuse mount: train.py writes through os paths, not gs:// URLs).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 TPU_NAME ZONE --config=... --workdir=... [--config.field=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2
shift 2
repo=${REPO:-'~/resnet_jax'}
args=$(printf ' %q' "$@")

# jax.distributed.initialize() reads the coordinator, worker count and worker id from the TPU
# VM metadata server, so no JAX_* variables are needed. --worker=all runs the command on every
# host at once; each host's output is prefixed by gcloud with its worker number.
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd $repo && .venv/bin/python -u -m resnet_jax.main$args --config.distributed=True"
