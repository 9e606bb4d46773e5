#!/usr/bin/env bash
# Runs one training job as N processes on this machine: N copies of `python -m latentadv.main`
# that meet through JAX's distributed runtime on 127.0.0.1 and reduce over CPU devices with
# gloo. It exercises exactly the multi-host code path of a TPU pod or GPU cluster.
#
# Usage (from anywhere; paths in the flags are relative to the repository root):
#   launch/local_multiprocess.sh NUM_PROCESSES MAIN_FLAGS...
# e.g.
#   launch/local_multiprocess.sh 2 --config=configs/mnist_fgsm_rs.py:smoke --workdir=runs/mp \
#       --config.data.source=local --config.data.dir=../shared/data/mnist
#
# Environment:
#   PYTHON               interpreter with latentadv installed (default: python)
#   DEVICES_PER_PROCESS  virtual CPU devices per process (default: 1)
#   PORT                 coordinator port on 127.0.0.1 (default: a free port)
# Process 0 logs progress; the others log warnings and errors only. If any process fails, the
# others are stopped and the script exits non-zero.
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 NUM_PROCESSES MAIN_FLAGS..." >&2
  exit 2
fi
num_processes="$1"
shift
python="${PYTHON:-python}"
devices_per_process="${DEVICES_PER_PROCESS:-1}"
free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
port="${PORT:-$("$python" -c "$free_port")}"

cd "$(dirname "$0")/.."
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for ((process_id = 0; process_id < num_processes; process_id++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$devices_per_process" \
    "$python" -m latentadv.main "$@" --coordinator_address="127.0.0.1:${port}" \
    --num_processes="$num_processes" --process_id="$process_id" &
  pids+=("$!")
done
for _ in "${pids[@]}"; do
  if ! wait -n; then
    echo "$0: a process failed; stopping the others." >&2
    exit 1
  fi
done
trap - EXIT
