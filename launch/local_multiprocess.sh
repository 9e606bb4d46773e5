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
# Process 0 logs progress; the others log warnings and errors only.
#
# Exit status: 0 when the run is complete; 75 when it stopped for a preemption (SIGTERM or
# SIGINT to this script, which passes SIGTERM on to every process, or to any one process): every
# process saved the same step, and running the same command again resumes (docs/preemption.md);
# otherwise that of the first process that failed, after the others were stopped.
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
preempted=75

cd "$(dirname "$0")/.."
pids=()
stop_all() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap stop_all TERM INT
trap 'kill -KILL "${pids[@]}" 2>/dev/null || true' EXIT
for ((process_id = 0; process_id < num_processes; process_id++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$devices_per_process" \
    "$python" -m latentadv.main "$@" --coordinator_address="127.0.0.1:${port}" \
    --num_processes="$num_processes" --process_id="$process_id" &
  pids+=("$!")
done
# Waits for every process; a signal to this script interrupts `wait`, runs stop_all and waits on.
status=0
running=("${pids[@]}")
while ((${#running[@]})); do
  finished=''
  code=0
  wait -n -p finished "${running[@]}" || code=$?
  if [[ -z "${finished:-}" ]]; then
    continue
  fi
  rest=()
  for pid in "${running[@]}"; do
    ((pid == finished)) || rest+=("$pid")
  done
  running=("${rest[@]}")
  if ((code == preempted)); then
    status=$preempted
    stop_all  # the others stop at the same step (or, after training, at once)
  elif ((code != 0)); then
    if ((status == 0)); then
      echo "$0: process $finished failed (exit status $code); stopping the others." >&2
      status=$code
    fi
    stop_all
  fi
done
trap - EXIT
exit "$status"
