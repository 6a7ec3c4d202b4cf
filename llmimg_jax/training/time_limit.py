"""`train.time_limit_minutes`: a run that ends within a wall-clock budget, its step count fitted to the machine.

A budget in minutes rather than steps makes a run take the same time on a slow machine and a fast one (the
quickstart's 20 minutes); the step count is what changes. After `CALIBRATION_STEPS` timed steps (the first step,
which compiles, is not timed) the run's step count becomes what fits the time left, at most `train.steps`, so the
warm-up + cosine schedule still reaches its end. Should the steps slow down later, the run stops at the limit.
"""

from __future__ import annotations

import time
from typing import Callable

CALIBRATION_STEPS = 50
MARGIN = 0.95  # of the time left at calibration: the final checkpoint, and steps a little slower than measured


def fitted_steps(step: int, total: int, steps_per_second: float, seconds_left: float) -> int:
    """The step count that ends a run at `step`, running `steps_per_second`, within `seconds_left` (at most
    `total`, at least `step`)."""
    return int(min(total, step + max(0, int(steps_per_second * seconds_left * MARGIN))))


def _seconds() -> float:
    return time.perf_counter()


class TimeLimit:
    """Times the steps of one run from `minutes` before its deadline; `fit` once, `expired` after every step."""

    def __init__(self, minutes: float, clock: Callable[[], float] | None = None):
        self.clock = clock or _seconds
        self.deadline = self.clock() + minutes * 60.0
        self._first: tuple[int, float] | None = None  # (step, time) when the first (compiling) step was done
        self._fitted = False

    def fit(self, step: int, total: int) -> int | None:
        """Call after each step: the fitted step count at the step that ends calibration, else None. The step
        that calibration ends on depends only on the run's first step, so every process fits at the same one."""
        now = self.clock()
        if self._first is None:
            self._first = (step, now)
            return None
        if self._fitted or step - self._first[0] < CALIBRATION_STEPS:
            return None
        self._fitted = True
        rate = (step - self._first[0]) / max(now - self._first[1], 1e-9)
        return fitted_steps(step, total, rate, self.deadline - now)

    def expired(self) -> bool:
        return self.clock() >= self.deadline
