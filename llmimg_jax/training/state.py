"""The train state: a plain dict pytree, built directly into its shardings.

    {"step": int32, "params": {group: params}, "opt": {trained group: optax state},
     "ema": {ema group: params}, "rng": uint32[2] base key data, "skipped": int32 (non-finite steps skipped)}
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
from jax.sharding import Mesh

from llmimg_jax.errors import UserError
from llmimg_jax.training import optim, sharding
from llmimg_jax.training.task import Task

State = dict[str, Any]
# The init key is folded with a constant that no step number reaches, so it never equals a step's key.
_INIT_FOLD = 2**32 - 1


def base_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def step_key(rng_data: jax.Array, step: jax.Array) -> jax.Array:
    """The per-step key: fold_in(key(seed), step), so a resumed run draws the same numbers."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)


@dataclasses.dataclass
class StateSpec:
    """Everything needed to create, restore and step a train state on one mesh."""
    mesh: Mesh
    rules: Any
    optimizers: dict[str, optax.GradientTransformation]
    shardings: State          # NamedSharding per leaf
    abstract: State           # ShapeDtypeStruct (with sharding) per leaf
    param_shardings: dict[str, Any]


def make_optimizers(task: Task, train_config: ml_collections.ConfigDict) -> dict[str, optax.GradientTransformation]:
    unknown = set(task.optimizer_overrides) - set(task.trained_groups)
    if unknown:
        raise UserError(f"optimizer overrides for {sorted(unknown)} but no phase trains those groups; "
                        f"trained groups: {list(task.trained_groups)}")
    return {g: optim.make_optimizer(train_config, task.optimizer_overrides.get(g)) for g in task.trained_groups}


def _init_params(task: Task, seed: int) -> dict[str, Any]:
    return task.init(jax.random.fold_in(base_key(seed), _INIT_FOLD))


def state_spec(task: Task, config: ml_collections.ConfigDict, mesh: Mesh) -> StateSpec:
    """Shardings and abstract shapes of the train state, without materialising anything."""
    rules = config.sharding_rules
    boxed = jax.eval_shape(lambda: _init_params(task, config.seed))
    groups = set(boxed)
    missing = (set(task.trained_groups) | set(task.ema_groups)) - groups
    if missing:
        raise UserError(f"task phases/ema_groups name groups {sorted(missing)} that init() does not return "
                        f"(it returns {sorted(groups)})")
    params_sh = sharding.param_shardings(boxed, mesh, rules)
    params_abs = nn.unbox(boxed)
    rep = sharding.replicated(mesh)
    optimizers = make_optimizers(task, config.train)
    opt_sh = {
        g: optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, params_abs[g]), params_sh[g],
                                 transform_non_params=lambda _: rep)
        for g, tx in optimizers.items()
    }
    shardings = {"step": rep, "params": params_sh, "opt": opt_sh,
                 "ema": {g: params_sh[g] for g in task.ema_groups}, "rng": rep, "skipped": rep}
    shapes = jax.eval_shape(lambda: _build(task, optimizers, config.seed))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    return StateSpec(mesh, rules, optimizers, shardings, abstract, params_sh)


def _build(task: Task, optimizers: dict, seed: int) -> State:
    params = nn.unbox(_init_params(task, seed))
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt": {g: tx.init(params[g]) for g, tx in optimizers.items()},
        # A copy, so donation of params never aliases the EMA buffers.
        "ema": {g: jax.tree.map(jnp.copy, params[g]) for g in task.ema_groups},
        "rng": jax.random.key_data(base_key(seed)),
        "skipped": jnp.zeros((), jnp.int32),
    }


def init_state(task: Task, config: ml_collections.ConfigDict, spec: StateSpec) -> State:
    """Initialises the state directly into its shardings (the full model never sits on one device), then puts
    the task's pretrained groups (host arrays) in place of their random init, shard by shard."""
    with jax.set_mesh(spec.mesh), nn.logical_axis_rules(spec.rules):
        state = jax.jit(lambda: _build(task, spec.optimizers, config.seed), out_shardings=spec.shardings)()
    pretrained = task.pretrained() if task.pretrained else {}
    for group, host in pretrained.items():
        expected = jax.tree.structure(state["params"][group])
        if jax.tree.structure(host) != expected:
            raise UserError(f"pretrained params for group '{group}' do not match the model's parameter tree; "
                            "check that the checkpoint was made with the same model config")
        placed = jax.tree.map(
            lambda h, a, s: jax.make_array_from_callback(a.shape, s, lambda idx, h=h: np.asarray(h, a.dtype)[idx]),
            host, state["params"][group], spec.param_shardings[group])
        state["params"][group] = placed
        if group in state["ema"]:
            state["ema"][group] = jax.tree.map(jnp.copy, placed)
    return state


def per_device_bytes(state: State, device: jax.Device | None = None) -> int:
    """Bytes of the state's shards that live on `device` (default: the first local device)."""
    device = device or jax.local_devices()[0]
    total = 0
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            if shard.device == device:
                total += shard.data.nbytes
    return total
