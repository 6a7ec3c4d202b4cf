"""Orbax checkpoints under `workdir/checkpoints/`: async saves of the train state plus the data state (JSON),
restore of the latest checkpoint that restores cleanly, and params-only loading for inference."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from jax.experimental import multihost_utils

from llmimg_jax.errors import UserError
from llmimg_jax.training.state import State


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _restore_args(abstract: Any) -> ocp.args.PyTreeRestore:
    return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True)


def _restore_first_good(manager: ocp.CheckpointManager, steps: list[int], args) -> tuple[Any, int | None, list]:
    """Tries the steps newest first; a checkpoint that fails to restore is reported (warning) and skipped."""
    broken = []
    for step in sorted(steps, reverse=True):
        try:
            return manager.restore(step, args=args), step, broken
        except Exception as e:  # any failure to read means this checkpoint is unusable: say which and why
            first_line = str(e).splitlines()[0][:200] if str(e) else ""
            warnings.warn(f"checkpoint {os.path.join(str(manager.directory), str(step))} could not be restored "
                          f"({type(e).__name__}: {first_line}); skipped it, trying the previous one")
            broken.append(step)
    return None, None, broken


class Checkpointer:
    """Saves every `checkpoint_every` steps (asynchronously) and keeps the newest `max_to_keep`."""

    def __init__(self, workdir: str, max_to_keep: int, async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: State, data_state: dict) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                                        data=ocp.args.JsonSave(data_state)), force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract: State) -> tuple[State, dict, int] | None:
        """Restores the newest checkpoint that restores cleanly onto `abstract` (shapes + target shardings).

        A checkpoint that fails (truncated or corrupt files) is reported with a warning, moved aside to
        `checkpoints_broken/` (so later saves at that step are possible) and the previous one is tried."""
        args = ocp.args.Composite(state=_restore_args(abstract), data=ocp.args.JsonRestore())
        restored, step, broken = _restore_first_good(self.manager, self.steps(), args)
        result = None if restored is None else (restored["state"], dict(restored["data"] or {}), step)
        if broken and restored is None:
            raise UserError(f"none of the checkpoints {broken} under '{self.directory}' could be restored (see the "
                            f"warnings); move them away to start fresh")
        if broken:
            warnings.warn(f"skipped {len(broken)} unrestorable checkpoint(s) {broken}; moved to "
                          f"{self.directory}_broken/")
            if jax.process_index() == 0:
                for step in broken:
                    target = os.path.join(self.directory + "_broken", str(step))
                    shutil.rmtree(target, ignore_errors=True)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.move(os.path.join(self.directory, str(step)), target)
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("llmimg_checkpoint_broken_moved")
            self.manager.reload()
        return result

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def latest_step(workdir: str) -> int | None:
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return None
    manager = ocp.CheckpointManager(directory)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def _saved_ema_groups(directory: str, step: int, task_or_abstract: Any) -> list[str]:
    """EMA groups stored in a checkpoint (from its metadata; the task's own list if that is unreadable)."""
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
    try:
        with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
            return list(manager.item_metadata(step)["state"].get("ema") or {})
    except Exception:  # an unreadable checkpoint is reported by the restore below; fall back to the task
        return list(getattr(task_or_abstract, "ema_groups", ()))


def load_params(workdir: str, task_or_abstract: Any, *, mesh: Mesh | None = None, rules: Any = None,
                step: int | None = None) -> dict:
    """Params (and EMA params) of a workdir's latest good checkpoint, on `mesh` (default: all devices on the
    fsdp axis), on any device count. Returns {"params": {group: ...}, "ema": {group: ...}, "step": int}.

    `task_or_abstract` is a Task, or its `{group: params}` tree of abstract (or boxed) leaves."""
    from llmimg_jax.training import mesh as mesh_lib, sharding
    from llmimg_jax.training.config import DEFAULT_SHARDING_RULES
    from llmimg_jax.training.state import _INIT_FOLD, base_key

    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise UserError(f"'{workdir}' has no checkpoints/ directory; train it first with `llmimg train`")
    if rules is None:
        config_path = os.path.join(workdir, "config.json")
        rules = DEFAULT_SHARDING_RULES
        if os.path.isfile(config_path):
            with open(config_path) as f:
                rules = json.load(f).get("sharding_rules", rules)
    if mesh is None:
        mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1)))
    if hasattr(task_or_abstract, "init"):
        boxed = jax.eval_shape(lambda: task_or_abstract.init(jax.random.fold_in(base_key(0), _INIT_FOLD)))
    else:
        boxed = task_or_abstract
    shardings = sharding.param_shardings(boxed, mesh, rules)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
    manager = ocp.CheckpointManager(directory)
    try:
        steps = manager.all_steps() if step is None else [step]
        if not steps:
            raise UserError(f"'{directory}' holds no complete checkpoint; train longer or pick another workdir")
        ema_groups = [g for g in _saved_ema_groups(directory, max(steps), task_or_abstract) if g in params]
        target = {"params": params, "ema": {g: params[g] for g in ema_groups}}
        restored, found, _ = _restore_first_good(
            manager, list(steps), ocp.args.Composite(state=_restore_args(target)))
    finally:
        manager.close()
    if restored is None:
        raise UserError(f"no checkpoint under '{directory}' could be restored (see the warnings above)")
    return {"params": restored["state"]["params"], "ema": restored["state"]["ema"], "step": found}
