"""On a CPU, one JAX device per core, so a data-parallel step runs its batch shards side by side.

XLA spreads one device's convolutions over ~1.4 of 2 cores; two devices, each with half the batch, keep both busy.
Measured on 2 cores (the quickstart's diffusion train step, batch 32): 0.41 s a step with one device, 0.24 s with
two, 0.30 s with four. The `llmimg` command sets this up before JAX starts; library users choose their own count.
"""

from __future__ import annotations

import os

from llmimg_jax.errors import UserError

MAX_CPU_DEVICES = 8  # more was not measured, and every batch must divide evenly over the devices
ENV_VAR = "LLMIMG_CPU_DEVICES"


def cpu_device_count(cores: int) -> int:
    """The largest power of two not above `cores` (nor MAX_CPU_DEVICES): batch sizes split evenly over it."""
    n = max(1, min(cores, MAX_CPU_DEVICES))
    return 1 << (n.bit_length() - 1)


def set_cpu_devices() -> int | None:
    """Gives JAX's CPU backend `LLMIMG_CPU_DEVICES` devices, or by default one per available core (see
    `cpu_device_count`). Leaves a count set through XLA_FLAGS or JAX_NUM_CPU_DEVICES alone. Must run before JAX's
    first computation; other backends (GPU, TPU) are not affected. Returns the count set, or None."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") or "JAX_NUM_CPU_DEVICES" in os.environ:
        return None
    value = os.environ.get(ENV_VAR, "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"{ENV_VAR}={value!r} is not a positive whole number; set it to the CPU device count "
                            f"(1: one device for all cores) or unset it")
        count = int(value)
    else:
        count = cpu_device_count(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                                 os.cpu_count() or 1)
    import jax

    jax.config.update("jax_num_cpu_devices", count)
    return count
