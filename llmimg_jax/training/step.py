"""The jitted train step: phases in order, gradient accumulation, optimizer updates, EMA, non-finite guard."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from llmimg_jax.training import optim, sharding
from llmimg_jax.training.state import State, StateSpec, step_key
from llmimg_jax.training.task import Phase, Task

Metrics = dict[str, jax.Array]


def _split_micro(batch: dict, accum: int) -> dict:
    """[B, ...] -> [accum, B/accum, ...], micro-batch i taking examples i, i+accum, ... so that each device keeps
    its own examples (no data moves between devices)."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)


def _phase_grads(phase: Phase, params: dict, batch: dict, rng: jax.Array, step: jax.Array, accum: int,
                 batch_sharding) -> tuple[jax.Array, Metrics, dict]:
    """Mean loss, metrics and gradients (w.r.t. the phase's groups) over `accum` micro-batches."""
    def loss_of(trainable, micro, key):
        return phase.loss_fn({**params, **trainable}, micro, key, step)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    trainable = {g: params[g] for g in phase.groups}
    if accum == 1:
        (loss, metrics), grads = grad_fn(trainable, batch, rng)
        return loss, metrics, grads

    def body(carry, xs):
        micro, i = xs
        micro = jax.lax.with_sharding_constraint(micro, batch_sharding)
        (loss, metrics), grads = grad_fn(trainable, micro, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

    micro = _split_micro(batch, accum)
    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: grad_fn(trainable, first, rng))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[0][0], shapes[0][1], shapes[1]))
    total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
    return jax.tree.map(lambda x: x / accum, total)


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(task: Task, config: ml_collections.ConfigDict, spec: StateSpec) -> Callable:
    """Returns jitted `step(state, batch) -> (state, metrics)`; the state's buffers are donated.

    A step with a non-finite loss or gradient leaves the state unchanged (apart from `step` and `skipped`), so
    the loop can stop cleanly ("stop") or carry on ("skip")."""
    train = config.train
    accum = int(train.grad_accum)
    decay = float(train.ema_decay)
    lr_fn = optim.lr_schedule(train)
    batch_sh = sharding.batch_sharding(spec.mesh, spec.rules)
    multi = len(task.phases) > 1

    def step_fn(state: State, batch: dict) -> tuple[State, Metrics]:
        rng = step_key(state["rng"], state["step"])
        params, opt = dict(state["params"]), dict(state["opt"])
        metrics: Metrics = {}
        losses, finite = [], []
        for i, phase in enumerate(task.phases):
            loss, phase_metrics, grads = _phase_grads(phase, params, batch, jax.random.fold_in(rng, i),
                                                      state["step"], accum, batch_sh)
            finite += [jnp.isfinite(loss), _all_finite(grads)]
            losses.append(loss)
            prefix = f"{phase.name or i}/" if multi else ""
            metrics.update({prefix + k: v for k, v in phase_metrics.items()})
            metrics[prefix + "loss"] = loss
            metrics[prefix + "grad_norm"] = optax.tree.norm(grads)
            for g in phase.groups:
                updates, opt[g] = spec.optimizers[g].update(grads[g], opt[g], params[g])
                params[g] = optax.apply_updates(params[g], updates)
        ema = {g: jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state["ema"][g], params[g])
               for g in task.ema_groups}
        ok = jnp.all(jnp.stack(finite))
        new = {"params": params, "opt": opt, "ema": ema}
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new,
                            {k: state[k] for k in new})
        out = {**state, **kept, "step": state["step"] + 1,
               "skipped": state["skipped"] + (1 - ok.astype(jnp.int32))}
        metrics["loss"] = sum(losses)  # the sum over phases (the phase's own loss when there is one phase)
        metrics["lr"] = lr_fn(state["step"])
        metrics["finite"] = ok
        metrics["skipped"] = out["skipped"]
        return out, metrics

    jitted = jax.jit(step_fn, donate_argnums=0,
                     out_shardings=(spec.shardings, sharding.replicated(spec.mesh)))

    def run(state: State, batch: dict) -> tuple[State, Metrics]:
        # Tasks may use nn.with_logical_constraint on activations: give them the mesh and the rules.
        with jax.set_mesh(spec.mesh), nn.logical_axis_rules(spec.rules):
            return jitted(state, batch)

    return run
