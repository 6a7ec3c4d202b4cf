"""Optax optimizers: gradient clipping + AdamW with a warm-up + cosine (or constant) learning rate."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
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
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at `steps` (or constant): `lr_at` for a run
    of `train.steps`."""
    config, steps = with_overrides(train_config, None), int(train_config.steps)  # a copy: later edits do not leak in
    lr_at(config, 0, steps)  # an unknown schedule fails here, not inside the first jitted step
    return lambda count: lr_at(config, count, steps)


def lr_at(train_config: ml_collections.ConfigDict, step: jax.Array, total: jax.Array | int) -> jax.Array:
    """The learning rate at `step` of a run of `total` steps, where `total` may be traced (a time limit changes it
    without recompiling; time_limit.py)."""
    lr, warmup = float(train_config.lr), int(train_config.warmup_steps)
    step = jnp.asarray(step, jnp.float32)
    if train_config.lr_schedule == "constant":
        return jnp.asarray(lr, jnp.float32) if warmup <= 0 else lr * jnp.minimum(step, warmup) / warmup
    if train_config.lr_schedule != "cosine":
        raise UserError(f"train.lr_schedule '{train_config.lr_schedule}' is unknown; use 'cosine' or 'constant'")
    span = jnp.maximum(jnp.asarray(total, jnp.float32), warmup + 1) - warmup  # decay steps after the warm-up
    alpha = float(train_config.min_lr_ratio)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(step - warmup, 0, span) / span))
    decayed = lr * ((1 - alpha) * cosine + alpha)
    return decayed if warmup <= 0 else jnp.where(step < warmup, lr * step / warmup, decayed)


def lr_scale(train_config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | None, step: jax.Array,
             total: jax.Array) -> jax.Array:
    """The learning rate at `step` of a run of `total` steps over that of a run of `train.steps`, the schedule the
    group's optimizer was built with. The train step scales the updates by it, so that a time-limited run
    (time_limit.py) changes its schedule without recompiling the step (AdamW's update, weight decay included, is
    proportional to the learning rate)."""
    config = with_overrides(train_config, overrides)
    built = lr_at(config, step, int(config.steps))
    return jnp.where(built > 0, lr_at(config, step, total) / jnp.where(built > 0, built, 1.0), 1.0)


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
