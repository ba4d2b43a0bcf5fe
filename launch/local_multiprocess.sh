#!/usr/bin/env bash
# N processes of resnet_jax.main on this machine, each with simulated CPU devices, joined by a
# localhost coordinator: the multi-host code path without a cluster (see launch/README.md).
#
#   launch/local_multiprocess.sh N --config=configs/digits.py --workdir=/tmp/mh [--config.x=y]
#
# Environment: DEVICES_PER_PROCESS (default 2), PORT (default: a free one), PYTHON (default
# .venv/bin/python if present, else python3), LOGDIR (default WORKDIR-independent /tmp dir).
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: $0 NUM_PROCESSES --config=... --workdir=... [--config.field=value ...]" >&2
  exit 2
fi
num_processes=$1
shift
cd "$(dirname "$0")/.."  # Configs import configs.default: run from the repository root.
python=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
devices=${DEVICES_PER_PROCESS:-2}
# Bind port 0 and release it: the coordinator (process 0) binds it again a moment later.
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
logdir=${LOGDIR:-$(mktemp -d -t resnet_jax_multiprocess.XXXXXX)}
mkdir -p "$logdir"
echo "$num_processes processes x $devices CPU devices, coordinator localhost:$port, logs in $logdir"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM

for ((i = 0; i < num_processes; i++)); do
  # Process 0's output is shown live; the others only go to their log files.
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
  JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES="$num_processes" JAX_PROCESS_ID=$i \
    "$python" -u -m resnet_jax.main "$@" --config.distributed=True \
    > >(if [[ $i == 0 ]]; then tee "$logdir/process_$i.log"; else cat > "$logdir/process_$i.log"; fi) 2>&1 &
  pids+=($!)
done

# The first process to fail stops the others (they would otherwise wait for it until the
# heartbeat timeout); the script exits with that process's status.
status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then still+=("$pid"); continue; fi
    set +e; wait "$pid"; code=$?; set -e
    if ((code != 0 && status == 0)); then
      status=$code
      echo "a process exited with status $code; stopping the others (logs in $logdir)" >&2
      cleanup
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  ((${#running[@]} > 0)) && sleep 1
done
exit "$status"
