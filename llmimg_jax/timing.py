"""Timing for the benchmark scripts: medians over repeats after a compile-and-warm-up call."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `fn()` (waiting for its JAX results) over `repeats` calls after one warm-up call."""
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)
