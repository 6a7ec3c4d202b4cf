"""Multi-process initialisation (jax.distributed) with bounded timeouts, so a lost peer fails instead of hanging."""

from __future__ import annotations

import jax

from llmimg_jax.errors import UserError


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, from_environment: bool = False, initialization_timeout_s: int = 120,
               heartbeat_timeout_s: int = 30, shutdown_timeout_s: int = 60) -> None:
    """Joins the job. Pass coordinator/num_processes/process_id explicitly, or `from_environment=True` to let JAX
    read the cluster environment (SLURM, TPU pods, ...). With neither, this is a single-process run (no-op).

    A process that cannot reach the coordinator within `initialization_timeout_s`, or that loses its peers for
    `heartbeat_timeout_s`, fails with an error instead of waiting forever."""
    explicit = (coordinator, num_processes, process_id)
    if all(v is None for v in explicit) and not from_environment:
        return
    if not from_environment and any(v is None for v in explicit):
        raise UserError("multi-process runs need all of --coordinator HOST:PORT, --num-processes N and "
                        "--process-id I (or none of them, to read the cluster environment)")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise UserError(f"--process-id {process_id} is outside 0..{num_processes - 1}; number processes from 0")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=initialization_timeout_s,
                                   heartbeat_timeout_seconds=heartbeat_timeout_s,
                                   shutdown_timeout_seconds=shutdown_timeout_s)
    except ValueError as e:  # raised when the environment describes no cluster
        raise UserError(f"cannot initialise the multi-process run ({e}); pass --coordinator, --num-processes "
                        f"and --process-id") from e


def is_primary() -> bool:
    return jax.process_index() == 0
