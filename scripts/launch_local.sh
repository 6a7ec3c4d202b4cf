#!/usr/bin/env bash
# Starts N processes on this machine, each with D simulated CPU devices, joined through jax.distributed.
#   scripts/launch_local.sh N D -- <llmimg args>      e.g. scripts/launch_local.sh 2 4 -- train --config ...
# Each process runs `$LLMIMG <args> --coordinator 127.0.0.1:PORT --num-processes N --process-id i`
# (LLMIMG defaults to `llmimg`; PORT to a free port, or $LLMIMG_PORT). Exits non-zero if any process fails;
# when one fails the others are stopped.
set -euo pipefail

if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS -- <llmimg args>" >&2
  exit 2
fi
num_processes=$1
devices=$2
shift 3
read -r -a program <<< "${LLMIMG:-llmimg}"
port=${LLMIMG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices} ${XLA_FLAGS:-}" JAX_PLATFORMS=cpu \
    "${program[@]}" "$@" --coordinator "127.0.0.1:${port}" --num-processes "${num_processes}" --process-id "$i" &
  pids+=($!)
done

status=0
declare -A running=()
for pid in "${pids[@]}"; do running[$pid]=1; done
# Wait for each process as it ends; after the first failure, stop the rest (they would wait for their peer).
while ((${#running[@]} > 0)); do
  set +e
  wait -n -p ended "${!running[@]}"
  rc=$?
  set -e
  [[ -n "${ended:-}" ]] || break
  unset "running[$ended]"
  if ((rc != 0)); then
    echo "launch_local: process with pid ${ended} exited with status ${rc}" >&2
    ((status != 0)) || status=$rc
    for pid in "${!running[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  fi
  ended=""
done
exit "$status"
