"""Metric logging from process 0: stdout, `workdir/metrics.jsonl` (flushed per line), TensorBoard under
`workdir/tb/`, and a tqdm progress bar with ETA."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import tqdm
from tensorboardX import SummaryWriter


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drops lines logged after `last_step` (a resumed run logs those steps again)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= last_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def _format(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class MetricsWriter:
    """Writes only when `enabled` (process 0); other processes get a no-op writer."""

    def __init__(self, workdir: str, start_step: int, total_steps: int, enabled: bool, progress_bar: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        truncate_jsonl(self.jsonl_path, start_step)
        self.jsonl = open(self.jsonl_path, "a")
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             disable=not progress_bar)

    def advance(self, steps: int = 1) -> None:
        if self.enabled:
            self.bar.update(steps)

    def set_total(self, total_steps: int) -> None:
        if self.enabled:
            self.bar.total = total_steps
            self.bar.refresh()

    def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
        """Logs python scalars; non-finite floats are written to the JSON file as null."""
        if not self.enabled:
            return
        record = {"step": int(step), **metrics}
        self.jsonl.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                     for k, v in record.items()}) + "\n")
        self.jsonl.flush()
        for key, value in record.items():
            if key != "step":
                self.tb.add_scalar(key, value, step)
        self.tb.flush()
        self.bar.write(" | ".join(f"{k} {_format(v)}" for k, v in record.items()))

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tb.close()
            self.jsonl.close()
