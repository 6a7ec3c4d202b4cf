"""Optax optimizers: gradient clipping + AdamW with a warm-up + cosine (or constant) learning rate."""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections
import optax

from llmimg_jax.errors import UserError


def with_overrides(train_config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | None):
    """A copy of `config.train` with a group's optimizer overrides (e.g. {"lr": 1e-4}) applied."""
    config = ml_collections.ConfigDict(train_config.to_dict())
    for key, value in (overrides or {}).items():
        if key not in config:
            raise UserError(f"optimizer override '{key}' is not a train config key; use one of lr, b1, b2, "
                            f"weight_decay, grad_clip, warmup_steps, lr_schedule, min_lr_ratio")
        config[key] = value
    return config


def lr_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at `steps` (or constant)."""
    lr, warmup, steps = float(train_config.lr), int(train_config.warmup_steps), int(train_config.steps)
    if train_config.lr_schedule == "constant":
        # linear_schedule holds its end value after the warm-up.
        return optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else optax.constant_schedule(lr)
    if train_config.lr_schedule != "cosine":
        raise UserError(f"train.lr_schedule '{train_config.lr_schedule}' is unknown; use 'cosine' or 'constant'")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
        end_value=lr * float(train_config.min_lr_ratio))


def make_optimizer(train_config: ml_collections.ConfigDict,
                   overrides: Mapping[str, Any] | None = None) -> optax.GradientTransformation:
    """clip_by_global_norm (if grad_clip > 0) then AdamW, for one parameter group."""
    config = with_overrides(train_config, overrides)
    parts = []
    if float(config.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(config.grad_clip)))
    parts.append(optax.adamw(lr_schedule(config), b1=float(config.b1), b2=float(config.b2),
                             weight_decay=float(config.weight_decay)))
    return optax.chain(*parts)
