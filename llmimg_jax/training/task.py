"""The task interface: what a trainer (language model, diffusion, GAN, ...) hands to the one training loop."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import ml_collections
from jax.sharding import Mesh

from llmimg_jax.errors import UserError

Params = Any
Batch = dict[str, jax.Array]
# loss_fn(params_by_group, batch, rng, step) -> (scalar loss, {name: scalar}); the dict may also hold
# "updates": {frozen group: new params} (running state such as spectral-norm vectors, see training/step.py)
LossFn = Callable[[dict[str, Params], Batch, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimisation phase of the train step: gradients of `loss_fn` w.r.t. `groups` only."""
    groups: tuple[str, ...]
    loss_fn: LossFn
    name: str = ""


@dataclasses.dataclass
class Task:
    """A trainable task.

    init(rng) -> {group: params} (boxed `nn.LogicallyPartitioned` leaves carry logical axis names).
    phases run in order inside one jitted step; a group that no phase updates is frozen (no optimizer state).
    A phase may replace frozen groups through its metrics' "updates" entry; later phases see the new values.
    batches(start_step, mesh) -> iterator of global batches; batch k must be a pure function of (seed, k).
    data_state() -> JSON-able description of the data (saved with each checkpoint).
    sample/evaluate(state, step) are called every train.sample_every / train.eval_every steps and at the end.
    pretrained() -> {group: host params} replaces those groups' random init on a fresh start (e.g. a trained LM).
    """
    init: Callable[[jax.Array], dict[str, Params]]
    phases: Sequence[Phase]
    batches: Callable[[int, Mesh], Iterator[Batch]]
    ema_groups: tuple[str, ...] = ()
    optimizer_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    data_state: Callable[[], dict] = dict
    sample: Callable[[dict, int], None] | None = None
    evaluate: Callable[[dict, int], None] | None = None
    pretrained: Callable[[], dict[str, Params]] | None = None

    @property
    def trained_groups(self) -> tuple[str, ...]:
        """Groups updated by some phase, in order of first use."""
        return tuple(dict.fromkeys(g for phase in self.phases for g in phase.groups))


# Short task names -> "module:function"; any other "module:function" path works too.
TASKS: dict[str, str] = {
    "lm": "llmimg_jax.text.lm_task:make_task",
    "diffusion": "llmimg_jax.generator.diffusion.task:make_task",
    "gan": "llmimg_jax.generator.gan.task:make_task",
    "captioner": "llmimg_jax.text.captioner_task:make_task",
}


def resolve_task(name: str) -> Callable[[ml_collections.ConfigDict, str], Task]:
    """`make_task` for a registered short name or a "module:function" import path."""
    path = TASKS.get(name, name)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(TASKS)) or "none registered yet"
        raise UserError(f"config.task '{name}' is neither a known task ({known}) nor a 'module:function' path")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UserError(f"config.task '{name}': cannot import module '{module_name}' ({e}); check the name") from e
    if not hasattr(module, attr):
        raise UserError(f"config.task '{name}': module '{module_name}' has no function '{attr}'")
    return getattr(module, attr)


def make_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    """Builds the task named by `config.task` and checks its phases and groups."""
    task = resolve_task(config.task)(config, workdir)
    if not task.phases:
        raise UserError(f"task '{config.task}' defines no phases; it has nothing to train")
    return task
