"""Evaluation plots as PNG files: accuracy per instruction kind (one or two conditions side by side) and the
training loss curve from `metrics.jsonl`. Figures are drawn on matplotlib's Agg canvas directly, without pyplot,
so no global backend or figure state is touched."""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llmimg_jax.errors import UserError


def _save(fig: Figure, out_png: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out_png, dpi=100)
    return out_png


def accuracy_bar_chart(per_kind: Mapping[str, float] | Sequence[Mapping[str, float]], out_png: str,
                       title: str = "Accuracy per instruction kind",
                       labels: Sequence[str] = ("without expansion", "with expansion")) -> str:
    """Bars of accuracy (0..1) per kind; given two (or more) dicts, their bars side by side, one colour each
    and named by `labels`. Kinds missing from a dict get no bar. Returns the path written."""
    conditions = [per_kind] if isinstance(per_kind, Mapping) else list(per_kind)
    if not conditions or not any(conditions):
        raise UserError("accuracy chart: no accuracies to plot; pass {kind: accuracy} dicts with entries")
    if len(conditions) > 1 and len(labels) < len(conditions):
        raise UserError(f"accuracy chart: {len(conditions)} dicts but {len(labels)} labels; pass one label each")
    kinds = list(dict.fromkeys(k for c in conditions for k in c))  # first-seen order
    fig = Figure(figsize=(max(5.0, 1.1 * len(kinds) + 2), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(conditions)
    x = np.arange(len(kinds))
    for i, cond in enumerate(conditions):
        values = [cond.get(k, math.nan) for k in kinds]
        bars = ax.bar(x + (i - (len(conditions) - 1) / 2) * width, values, width,
                      label=labels[i] if len(conditions) > 1 else None)
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.0%}" for v in values], fontsize=7)
    ax.set_xticks(x, kinds)
    ax.set_ylim(0, 1.2)  # headroom for the bar labels and the legend
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    if len(conditions) > 1:
        ax.legend(fontsize=8, loc="upper center", ncol=len(conditions), frameon=False)
    fig.tight_layout()
    return _save(fig, out_png)


def read_loss(metrics_jsonl_path: str, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the lines that hold `step` and a finite `key`; warns how many had a null value."""
    if not os.path.isfile(metrics_jsonl_path):
        raise UserError(f"metrics file '{metrics_jsonl_path}' not found; pass a training workdir's metrics.jsonl")
    steps, values, nulls = [], [], 0
    with open(metrics_jsonl_path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{metrics_jsonl_path}:{number} is not JSON; fix or remove that line") from None
            if "step" not in record or key not in record:
                continue  # other metrics (evaluation, learning rate) are logged on their own lines
            if record[key] is None:  # the writer logs non-finite values as null
                nulls += 1
                continue
            steps.append(record["step"])
            values.append(record[key])
    if nulls:
        warnings.warn(f"{metrics_jsonl_path}: skipped {nulls} lines whose '{key}' was not finite (null)")
    if not steps:
        raise UserError(f"{metrics_jsonl_path} has no line with 'step' and '{key}'; train for a few steps first")
    return np.asarray(steps), np.asarray(values, np.float64)


def loss_curve(metrics_jsonl_path: str, out_png: str, title: str = "Training loss", key: str = "loss") -> str:
    """Loss against step (log scale when every value is positive), with a moving average over noisy runs."""
    steps, values = read_loss(metrics_jsonl_path, key)
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    ax.plot(steps, values, lw=0.8, alpha=0.5 if len(values) > 50 else 1.0, label=key)
    if len(values) > 50:
        window = max(len(values) // 50, 2)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.5, label=f"{key} (mean of {window})")
        ax.legend(fontsize=8)
    if np.all(values > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_png)
