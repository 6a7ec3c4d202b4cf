"""Entry point of `llmimg train`: the CLI loads the config and joins the job, then calls `train_main`."""

from __future__ import annotations

import ml_collections

from llmimg_jax.training.loop import train


def train_main(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Trains the task named by `config.task` in `workdir` (resuming from its latest checkpoint)."""
    train(config, workdir)
