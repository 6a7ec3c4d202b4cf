"""Shared test utilities: run code under N simulated CPU devices in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


def run_with_devices(code: str, num_devices: int = 8, timeout: float = 600) -> dict:
    """Runs `code` in a fresh Python with `num_devices` simulated CPU devices.

    The code must print one JSON object as its last line of stdout; it is returned parsed.
    A fresh process is needed because the device count is fixed at JAX's first use.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
