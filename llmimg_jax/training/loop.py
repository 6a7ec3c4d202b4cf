"""The one training loop: mesh, state (fresh or resumed), jitted steps, logging, hooks, checkpoints, signals."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from llmimg_jax.config import save_config
from llmimg_jax.errors import UserError
from llmimg_jax.training import sharding
from llmimg_jax.training.checkpoint import Checkpointer
from llmimg_jax.training.mesh import make_mesh
from llmimg_jax.training.metrics import MetricsWriter
from llmimg_jax.training.state import State, init_state, state_spec
from llmimg_jax.training.step import make_train_step
from llmimg_jax.training.task import Task, make_task
from llmimg_jax.training.time_limit import TimeLimit


def _on_any_process(local: bool) -> bool:
    """True on every process when `local` is on one: every process must stop at the same step to save together."""
    if jax.process_count() > 1:
        return bool(np.any(multihost_utils.process_allgather(np.array(local))))
    return local


def _from_process_zero(value: int) -> int:
    """Process 0's `value` on every process (a time-fitted step count must be the same everywhere)."""
    if jax.process_count() > 1:
        return int(multihost_utils.broadcast_one_to_all(np.int64(value)))
    return value


class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the current step and returns."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def requested(self) -> bool:
        return _on_any_process(self.signum is not None)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_config(config: ml_collections.ConfigDict, mesh) -> None:
    train = config.train
    accum, batch = int(train.grad_accum), int(train.batch_size)
    shards = sharding.batch_shards(mesh, config.sharding_rules)
    if accum < 1 or batch % accum or (batch // accum) % shards:
        raise UserError(f"train.batch_size={batch} must split into train.grad_accum={accum} micro-batches each "
                        f"divisible by the {shards} batch shards of the mesh; change train.batch_size")
    if train.nonfinite not in ("stop", "skip"):
        raise UserError(f"train.nonfinite='{train.nonfinite}' is unknown; use 'stop' or 'skip'")


def _compare_data_state(saved: dict, current: dict) -> None:
    differ = sorted(k for k in set(saved) | set(current) if k != "step" and saved.get(k) != current.get(k))
    if differ:
        warnings.warn(f"the data settings changed since the checkpoint ({', '.join(differ)}); resuming anyway, "
                      f"batches after the resume point follow the new settings")


def _scalars(metrics: dict) -> dict:
    out = {}
    for key, value in jax.device_get(metrics).items():
        value = np.asarray(value)
        out[key] = int(value) if value.dtype.kind in "biu" else float(value)
    return out


def train(config: ml_collections.ConfigDict, workdir: str, task: Task | None = None) -> State:
    """Trains to `config.train.steps` (resuming from the latest good checkpoint) and returns the final state."""
    primary = jax.process_index() == 0
    minutes = float(config.train.time_limit_minutes)
    limit = TimeLimit(minutes) if minutes > 0 else None  # counted from here: set-up and compilation take their share
    mesh = make_mesh(config.mesh)  # a mesh that does not fit fails here, before anything compiles
    _check_config(config, mesh)
    if primary and not os.path.isfile(os.path.join(workdir, "config.json")):
        save_config(config, workdir)
    task = task or make_task(config, workdir)
    train_cfg = config.train
    spec = state_spec(task, config, mesh)
    checkpointer = Checkpointer(workdir, int(train_cfg.max_to_keep))
    restored = checkpointer.restore_latest(spec.abstract)
    if restored is None:
        state, start = init_state(task, config, spec), 0
    else:
        state, data_state, start = restored
        _compare_data_state(data_state, task.data_state())
        if primary:
            print(f"resumed from {checkpointer.directory}/{start}", flush=True)
    total, log_every = int(train_cfg.steps), max(int(train_cfg.log_every), 1)
    step_fn = make_train_step(task, config, spec)
    writer = MetricsWriter(workdir, start, total, enabled=primary)

    def set_total(steps: int) -> None:
        """A new step count (time limit): the steps follow its schedule, and config.json records it, so that a
        finished run reads as finished."""
        nonlocal config, total
        config = config.copy_and_resolve_references()
        config.train.steps = total = steps
        writer.set_total(total)
        if primary:
            save_config(config, workdir)

    batches = task.batches(start, mesh)
    step, last_log, last_time = start, start, time.perf_counter()

    def every(n: int) -> bool:
        return n > 0 and step % n == 0

    try:
        with _StopRequest() as stop:
            while step < total:
                state, metrics = step_fn(state, next(batches), total)
                values = _scalars(metrics)  # waits for the step: its finiteness decides what happens next
                step += 1
                if not values["finite"] and train_cfg.nonfinite == "stop":
                    checkpointer.wait()
                    raise UserError(f"non-finite loss at step {step} (loss={values['loss']}); stopped, the last "
                                    f"good checkpoint is kept; lower train.lr or set train.nonfinite=skip")
                writer.advance()
                if limit is not None:
                    fitted = limit.fit(step, total)
                    if fitted is not None and (fitted := _from_process_zero(fitted)) != total:
                        set_total(fitted)
                        if primary:
                            print(f"time limit {minutes:g} min: {total} steps fit", flush=True)
                    if step < total and _on_any_process(limit.expired()):
                        if primary:
                            print(f"time limit reached at step {step} of {total}; the run ends here", flush=True)
                        set_total(step)
                if every(log_every) or step == total:
                    now = time.perf_counter()
                    values["examples_per_sec"] = (step - last_log) * int(train_cfg.batch_size) / (now - last_time)
                    del values["finite"]
                    writer.write(step, values)
                    last_log, last_time = step, now
                if every(int(train_cfg.checkpoint_every)):
                    checkpointer.save(step, state, task.data_state())
                if stop.requested():
                    checkpointer.save(step, state, task.data_state())
                    checkpointer.wait()
                    if primary:
                        print(f"stopped by signal at step {step}; checkpoint saved", flush=True)
                    return state
                if task.evaluate and every(int(train_cfg.eval_every)):
                    task.evaluate(state, step)
                if task.sample and every(int(train_cfg.sample_every)):
                    task.sample(state, step)
            checkpointer.save(step, state, task.data_state())
            if task.evaluate and int(train_cfg.eval_every) > 0 and not every(int(train_cfg.eval_every)):
                task.evaluate(state, step)
            if task.sample and int(train_cfg.sample_every) > 0 and not every(int(train_cfg.sample_every)):
                task.sample(state, step)
            return state
    finally:
        writer.close()
        checkpointer.close()
