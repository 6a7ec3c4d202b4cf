"""`train.time_limit_minutes`: a run that ends within a wall-clock budget, its step count fitted to the machine.

A budget in minutes rather than steps makes a run take the same time on a slow machine and a fast one (the
quickstart's 20 minutes); the step count is what changes. After `CALIBRATION_STEPS` timed steps (the first step,
which compiles, is not timed) the run's step count becomes what fits the time left, at most `train.steps`, so the
warm-up + cosine schedule still reaches its end. The first steps after compiling can run slower than the rest (a
quickstart's generator measured ~4.2 steps/s there and then ran 5.0, leaving ~2.5 of its 13.7 minutes unused), so the
count is fitted once more a third of the way through, from the speed since the first fit. Should the steps slow
down later, the run stops at the limit.
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
    """Times the steps of one run from `minutes` before its deadline; `fit` and `expired` after every step."""

    def __init__(self, minutes: float, clock: Callable[[], float] | None = None):
        self.clock = clock or _seconds
        self.deadline = self.clock() + minutes * 60.0
        self._cap: int | None = None                   # the configured step count: no fit goes beyond it
        self._since: tuple[int, float] | None = None   # (step, time) the speed is measured from
        self._refit_at: int | None = None              # the step of the second fit, once the first is done
        self._fits = 0

    def fit(self, step: int, total: int) -> int | None:
        """Call after each step with the run's current step count: a new count at the two fitting steps, else
        None. Those steps depend only on the run's first step and the count the first fit set (which the loop
        makes process 0's everywhere), so every process fits at the same ones."""
        now = self.clock()
        if self._since is None:  # the first (compiling) step is done: time from here
            self._cap, self._since = total, (step, now)
            return None
        if self._fits == 1 and self._refit_at is None:  # a third of the steps the first fit left
            self._refit_at = self._since[0] + (total - self._since[0]) // 3
        due = (step - self._since[0] >= CALIBRATION_STEPS) if self._fits == 0 else (
            self._fits == 1 and step >= self._refit_at > self._since[0])
        if not due:
            return None
        self._fits += 1
        rate = (step - self._since[0]) / max(now - self._since[1], 1e-9)
        self._since = (step, now)
        return fitted_steps(step, self._cap, rate, self.deadline - now)

    def expired(self) -> bool:
        return self.clock() >= self.deadline
