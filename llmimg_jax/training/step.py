"""The jitted train step: phases in order, gradient accumulation, optimizer updates, EMA, non-finite guard."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from llmimg_jax.training import optim, sharding
from llmimg_jax.training.state import State, StateSpec, step_key
from llmimg_jax.training.task import Phase, Task

Metrics = dict[str, jax.Array]
# A loss_fn's metrics may hold {group: new params} under this key for groups that no phase trains (running
# statistics such as spectral-norm vectors); they replace those groups after the phase, so later phases and the
# next step see them, they are checkpointed with the state, and a non-finite step discards them too.
UPDATES = "updates"


def _split_micro(batch: dict, accum: int) -> dict:
    """[B, ...] -> [accum, B/accum, ...], micro-batch i taking examples i, i+accum, ... so that each device keeps
    its own examples (no data moves between devices)."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)


def _phase_grads(phase: Phase, params: dict, batch: dict, rng: jax.Array, step: jax.Array, accum: int,
                 batch_sharding) -> tuple[jax.Array, Metrics, dict, dict]:
    """Mean loss, metrics and gradients (w.r.t. the phase's groups) over `accum` micro-batches, and the phase's
    frozen-group updates (see `UPDATES`; from the last micro-batch)."""
    def loss_of(trainable, micro, key):
        loss, metrics = phase.loss_fn({**params, **trainable}, micro, key, step)
        metrics = dict(metrics)
        updates = metrics.pop(UPDATES, {})
        return loss, (metrics, updates)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    trainable = {g: params[g] for g in phase.groups}
    if accum == 1:
        (loss, (metrics, updates)), grads = grad_fn(trainable, batch, rng)
        return loss, metrics, grads, updates

    def body(carry, xs):
        sums, _ = carry
        micro, i = xs
        micro = jax.lax.with_sharding_constraint(micro, batch_sharding)
        (loss, (metrics, updates)), grads = grad_fn(trainable, micro, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, sums, (loss, metrics, grads)), updates), None

    micro = _split_micro(batch, accum)
    first = jax.tree.map(lambda x: x[0], micro)
    (loss_s, (metrics_s, updates_s)), grads_s = jax.eval_shape(lambda: grad_fn(trainable, first, rng))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), ((loss_s, metrics_s, grads_s), updates_s))
    # On CPU the loop is unrolled: XLA CPU runs the backward convolutions inside a loop body with layouts its fast
    # kernels do not take, ~11x slower a step (a diffusion step with 2 micro-batches: 11 s against 0.95 s
    # unrolled). Elsewhere the rolled loop keeps one micro-batch's activations alive at a time, the point of it.
    unroll = accum if batch_sharding.mesh.devices.flat[0].platform == "cpu" else 1
    (total, updates), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)), unroll=unroll)
    loss, metrics, grads = jax.tree.map(lambda x: x / accum, total)
    return loss, metrics, grads, updates


def _apply_updates(phase: Phase, params: dict, updates: dict, frozen: tuple[str, ...]) -> None:
    """Replaces frozen groups by a phase's new values (same tree, shapes and dtypes)."""
    for group, tree in updates.items():
        if group not in frozen:
            raise ValueError(f"phase '{phase.name}' returns updates for group '{group}', which is not a frozen "
                             f"group (frozen: {list(frozen)}); only groups no phase trains can be updated this way")
        old = params[group]
        if jax.tree.structure(tree) != jax.tree.structure(old) or any(
                n.shape != o.shape for n, o in zip(jax.tree.leaves(tree), jax.tree.leaves(old))):
            raise ValueError(f"phase '{phase.name}' returns updates for group '{group}' whose tree or shapes "
                             "differ from the group's params")
        params[group] = jax.tree.map(lambda n, o: n.astype(o.dtype), tree, old)


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """EMA decay for the update after `step` steps: with warm-up, min(decay, (1 + step) / (10 + step)), so that
    the average follows the first steps instead of holding the initial weights for ~1 / (1 - decay) steps."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    n = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def make_train_step(task: Task, config: ml_collections.ConfigDict, spec: StateSpec) -> Callable:
    """Returns jitted `step(state, batch) -> (state, metrics)`; the state's buffers are donated.

    A step with a non-finite loss or gradient leaves the state unchanged (apart from `step` and `skipped`), so
    the loop can stop cleanly ("stop") or carry on ("skip")."""
    train = config.train
    accum = int(train.grad_accum)
    decay = float(train.ema_decay)
    ema_warmup = bool(train.ema_warmup)
    batch_sh = sharding.batch_sharding(spec.mesh, spec.rules)
    multi = len(task.phases) > 1
    frozen = tuple(g for g in spec.param_shardings if g not in task.trained_groups)

    def step_fn(state: State, batch: dict, total: jax.Array) -> tuple[State, Metrics]:
        rng = step_key(state["rng"], state["step"])
        params, opt = dict(state["params"]), dict(state["opt"])
        metrics: Metrics = {}
        losses, finite = [], []
        for i, phase in enumerate(task.phases):
            loss, phase_metrics, grads, new_frozen = _phase_grads(
                phase, params, batch, jax.random.fold_in(rng, i), state["step"], accum, batch_sh)
            finite += [jnp.isfinite(loss), _all_finite(grads), _all_finite(new_frozen)]
            losses.append(loss)
            prefix = f"{phase.name or i}/" if multi else ""
            metrics.update({prefix + k: v for k, v in phase_metrics.items()})
            metrics[prefix + "loss"] = loss
            metrics[prefix + "grad_norm"] = optax.tree.norm(grads)
            for g in phase.groups:
                updates, opt[g] = spec.optimizers[g].update(grads[g], opt[g], params[g])
                scale = optim.lr_scale(train, task.optimizer_overrides.get(g), state["step"], total)
                updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
                params[g] = optax.apply_updates(params[g], updates)
            _apply_updates(phase, params, new_frozen, frozen)
        d = ema_decay_at(state["step"], decay, ema_warmup)
        ema = {g: jax.tree.map(lambda e, p: d * e + (1 - d) * p, state["ema"][g], params[g])
               for g in task.ema_groups}
        ok = jnp.all(jnp.stack(finite))
        new = {"params": params, "opt": opt, "ema": ema}
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new,
                            {k: state[k] for k in new})
        out = {**state, **kept, "step": state["step"] + 1,
               "skipped": state["skipped"] + (1 - ok.astype(jnp.int32))}
        metrics["loss"] = sum(losses)  # the sum over phases (the phase's own loss when there is one phase)
        metrics["lr"] = optim.lr_at(train, state["step"], total)
        metrics["finite"] = ok
        metrics["skipped"] = out["skipped"]
        return out, metrics

    jitted = jax.jit(step_fn, donate_argnums=0,
                     out_shardings=(spec.shardings, sharding.replicated(spec.mesh)))

    def run(state: State, batch: dict, total: int | None = None) -> tuple[State, Metrics]:
        """`total`: the run's step count for the learning-rate schedule (default `train.steps`); a value, not a
        constant of the compiled step, so a time limit can change it."""
        steps = np.int32(int(train.steps) if total is None else total)
        # Tasks may use nn.with_logical_constraint on activations: give them the mesh and the rules.
        with jax.set_mesh(spec.mesh), nn.logical_axis_rules(spec.rules):
            return jitted(state, batch, steps)

    return run
