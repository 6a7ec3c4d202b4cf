#!/usr/bin/env bash
# Runs one process per SLURM task (srun), joined through jax.distributed; process 0's node is the coordinator.
#   sbatch --nodes=2 --ntasks-per-node=1 scripts/launch_slurm.sh train --config configs/X.py --workdir W
# (LLMIMG defaults to `llmimg`; the port to $LLMIMG_PORT or 8476.) Inside an allocation, srun starts the tasks.
set -euo pipefail

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "launch_slurm: not inside a SLURM allocation (no SLURM_JOB_ID); submit with sbatch or salloc" >&2
  exit 2
fi
port=${LLMIMG_PORT:-8476}
coordinator_host=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
num_processes=${SLURM_NTASKS:-1}
export LLMIMG_COORDINATOR="${coordinator_host}:${port}" LLMIMG_NUM_PROCESSES="${num_processes}"

# Each task reads its own SLURM_PROCID after srun has started it.
srun --kill-on-bad-exit=1 bash -c '
  read -r -a program <<< "${LLMIMG:-llmimg}"
  exec "${program[@]}" "$@" --coordinator "$LLMIMG_COORDINATOR" --num-processes "$LLMIMG_NUM_PROCESSES" \
    --process-id "$SLURM_PROCID"' launch_slurm "$@"
