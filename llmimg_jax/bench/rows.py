"""The benchmark's unit of output: one table row, plus the timing and thread helpers every family shares."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any, Callable, Optional

import jax


@dataclasses.dataclass
class Row:
    """One line of the results table. `ratio` is ours / peer throughput (or, for scaling rows, relative to the
    group's first row); `values` keeps the raw numbers for tests and notes."""
    group: str
    setting: str
    ours: str
    peer: str = ""
    ratio: Optional[float] = None
    values: dict = dataclasses.field(default_factory=dict)


def cpu_threads() -> int:
    """Cores this process may use: XLA's CPU thread pool is sized by the same affinity mask."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def torch_setup() -> Any:
    """Imports torch with as many intra-op threads as JAX uses, so both sides get the same cores."""
    import torch

    torch.set_num_threads(cpu_threads())
    return torch


def _run(fn: Callable[[], Any]) -> None:
    jax.block_until_ready(fn())  # torch on CPU is synchronous; JAX results are waited for


def alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation (A, B, A, B, ...) after one warm-up
    (compile) call each, so that load from other processes hits both sides alike. Also returns
    `<name>_first` (the warm-up call's seconds, i.e. compile + run for jitted code)."""
    out = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        _run(fn)
        out[f"{name}_first"] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = time.perf_counter()
            _run(fn)
            times[name].append(time.perf_counter() - start)
    out.update({name: statistics.median(t) for name, t in times.items()})
    return out


def skipped_row(group: str, setting: str, error: ImportError) -> Row:
    """The row of a peer comparison whose peer library is missing (reported, never silently dropped)."""
    return Row(group, setting, "", f"skipped: {error.name or error} not installed (pip install -e '.[test]')")
