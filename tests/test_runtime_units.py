"""Runtime pieces checked in-process on one CPU device: mesh sizes, sharding rules, schedule, accumulation."""

import json
import math
import os
import types

import jax
import numpy as np
import pytest

from llmimg_jax.errors import UserError
from llmimg_jax.training import mesh as mesh_lib, optim, sharding
from llmimg_jax.training.config import DEFAULT_SHARDING_RULES, default_mesh_config, default_train_config
from llmimg_jax.training.loop import train
from tests.toy_task import toy_config


def _mesh_config(**sizes):
    config = default_mesh_config()
    config.update(sizes)
    return config


def test_mesh_sizes_resolve_and_mismatch_is_one_line_error():
    assert mesh_lib.mesh_shapes(_mesh_config(data=-1, fsdp=2, tensor=2), 8) == ((2, 2, 2), (1, 1, 1))
    assert mesh_lib.mesh_shapes(_mesh_config(data=2, fsdp=-1, dcn_data=2), 8) == ((2, 2, 1), (2, 1, 1))
    for bad in (dict(data=3, fsdp=1), dict(data=2, fsdp=2, tensor=4), dict(data=-1, fsdp=3)):
        with pytest.raises(UserError) as e:
            mesh_lib.mesh_shapes(_mesh_config(**bad), 8)
        assert "\n" not in str(e.value) and "8" in str(e.value)


def test_mesh_mismatch_fails_before_anything_is_written(tmp_path):
    config = toy_config()
    config.mesh.update(dict(data=2, fsdp=2))  # 4 devices wanted, this process has 1
    with pytest.raises(UserError, match="does not match 1 devices"):
        train(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_sharding_rules_replicate_what_does_not_divide():
    fake = types.SimpleNamespace(shape={"data": 2, "fsdp": 4, "tensor": 2})
    rules = DEFAULT_SHARDING_RULES
    P = jax.sharding.PartitionSpec
    assert sharding.mesh_spec(("embed", "mlp"), (64, 256), fake, rules) == P("fsdp", "tensor")
    assert sharding.mesh_spec(("embed", "mlp"), (6, 255), fake, rules) == P(None, None)  # 4∤6, 2∤255
    assert sharding.mesh_spec(("heads", "mlp"), (8, 8), fake, rules) == P("tensor", None)  # tensor used once
    assert sharding.mesh_spec(("norm",), (64,), fake, rules) == P(None)
    assert sharding.mesh_spec(("batch", None), (16, 3), fake, rules) == P(("data", "fsdp"), None)
    assert sharding.mesh_spec(("batch",), (6,), fake, rules) == P(None)


def test_lr_schedule_matches_formula():
    config = default_train_config()
    config.update(dict(lr=1e-3, warmup_steps=10, steps=100, min_lr_ratio=0.1))
    schedule = optim.lr_schedule(config)
    for step in (0, 5, 10, 40, 99, 100, 150):
        if step < 10:
            expected = 1e-3 * step / 10
        else:
            t = min(step - 10, 90) / 90
            expected = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-12)
    config.lr_schedule = "linear"
    with pytest.raises(UserError, match="lr_schedule"):
        optim.lr_schedule(config)


def _losses(workdir):
    import json
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line)["loss"] for line in f]


def test_grad_accumulation_equals_full_batch(tmp_path):
    """Equal-size micro-batches: the mean of their mean gradients is the full batch's mean gradient, so a
    noise-free loss trains identically (up to float32 summation order) with 1 or 4 micro-batches."""
    runs = []
    for accum in (1, 4):
        config = toy_config(steps=6, grad_accum=accum, checkpoint_every=0)
        config.toy.noise = 0.0
        workdir = tmp_path / f"accum{accum}"
        state = train(config, str(workdir))
        runs.append((state, _losses(workdir)))
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-5)
    assert runs[0][1][-1] < runs[0][1][1]  # it trains
    assert int(runs[1][0]["step"]) == 6


def test_bfloat16_compute_keeps_float32_master_weights(tmp_path):
    config = toy_config(steps=3, compute_dtype="bfloat16", checkpoint_every=0)
    state = train(config, str(tmp_path))
    dtypes = {x.dtype for x in jax.tree.leaves((state["params"], state["opt"], state["ema"])) if x.ndim}
    assert dtypes == {np.dtype("float32")}
    losses = _losses(tmp_path)
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_ema_warmup_follows_the_first_steps(tmp_path):
    """With warm-up the update after step n uses decay min(ema_decay, (1 + n) / (10 + n)): run 1 and run 2 steps
    (deterministic) and rebuild the second EMA from the first in float64."""
    states = []
    for steps in (1, 2):
        config = toy_config(steps=steps, checkpoint_every=0)
        config.train.ema_decay = 0.999
        states.append(train(config, str(tmp_path / f"s{steps}")))
    d1 = 2.0 / 11.0
    for e1, p2, e2 in zip(jax.tree.leaves(states[0]["ema"]), jax.tree.leaves(states[1]["params"]),
                          jax.tree.leaves(states[1]["ema"])):
        expected = d1 * np.asarray(e1, np.float64) + (1 - d1) * np.asarray(p2, np.float64)
        np.testing.assert_allclose(np.asarray(e2, np.float64), expected, rtol=1e-5, atol=1e-7)
    # and the average moved most of the way to the trained weights (0.999 without warm-up would barely move)
    e2, p2 = jax.tree.leaves(states[1]["ema"])[0], jax.tree.leaves(states[1]["params"])[0]
    assert np.abs(np.asarray(e2) - np.asarray(p2)).max() < 0.5 * max(np.abs(np.asarray(p2)).max(), 1e-6)



class _FakeClock:
    """Seconds that advance by `tick` at each reading (the time limit reads it twice a step); `slow_after`:
    from that reading on, by `slow_tick` (the steps slow down)."""

    def __init__(self, slow_after: float = math.inf, slow_tick: float = 1.0):
        self.now, self.slow_after, self.slow_tick = 0.0, slow_after, slow_tick

    def __call__(self) -> float:
        self.now += self.slow_tick if self.now >= self.slow_after else 1.0
        return self.now


def _time_limited_run(tmp_path, monkeypatch, clock):
    """A toy run of at most 1000 steps in 2 minutes of `clock`: (metrics, latest checkpoint, config.json's steps)."""
    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.training import time_limit
    from llmimg_jax.training.checkpoint import latest_step

    monkeypatch.setattr(time_limit, "_seconds", clock)
    workdir = str(tmp_path)
    train(toy_config(steps=1000, time_limit_minutes=2.0, checkpoint_every=1000), workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    return metrics, latest_step(workdir), int(load_workdir_config(workdir).train.steps)


def test_time_limit_fits_the_step_count_and_its_schedule(tmp_path, monkeypatch, capsys):
    from llmimg_jax.training.time_limit import fitted_steps

    # Two readings a step at 1 s each: 0.5 steps/s. Calibrated over the 50 steps after the first, at 102 s with the
    # deadline at 121 s: 19 s left x 0.5 x 0.95 = 9 more steps, so the run ends at step 60, where the schedule fitted to 60 steps
    # ends (not where a 1000-step one would be).
    assert fitted_steps(51, 1000, 0.5, 19.0) == 60 and fitted_steps(51, 55, 0.5, 19.0) == 55
    assert fitted_steps(51, 1000, 0.5, -3.0) == 51
    metrics, last, saved_steps = _time_limited_run(tmp_path, monkeypatch, _FakeClock())
    assert last == saved_steps == metrics[-1]["step"] == 60
    fitted, unfitted = toy_config(steps=60).train, toy_config(steps=1000).train
    assert metrics[-1]["lr"] == pytest.approx(float(optim.lr_schedule(fitted)(59)), rel=1e-5)
    assert metrics[-1]["lr"] < 0.2 * float(optim.lr_schedule(unfitted)(59))
    assert metrics[30]["lr"] == pytest.approx(float(optim.lr_schedule(unfitted)(30)), rel=1e-5)  # before the fit

    # The quickstart reads a time-limited run that reached its fitted count as finished: it does not train again.
    from llmimg_jax.quickstart import _train
    _train(toy_config(steps=1000, time_limit_minutes=2.0), str(tmp_path))
    assert "already trained to step 60; skipped" in capsys.readouterr().out


def test_time_limit_stops_at_the_deadline_when_steps_slow_down(tmp_path, monkeypatch):
    # Fitted to 60 steps at step 51 (the clock at 102 s, the deadline at 121 s); from then on each reading takes 5 s:
    # the deadline passes at step 53's second reading (127 s), and the run ends there, recorded as finished.
    metrics, last, saved_steps = _time_limited_run(tmp_path, monkeypatch, _FakeClock(slow_after=102, slow_tick=5.0))
    assert last == saved_steps == metrics[-1]["step"] == 53


def test_time_limit_fits_again_when_the_first_steps_were_slow(tmp_path, monkeypatch):
    # Fitted to 60 steps at step 51 (0.5 steps/s); from then on each reading takes 0.5 s, so a step 1 s. The second
    # fit, a third of the way from 51 to 60 (step 54, the clock at 105 s), measures 1 step/s since the first:
    # 16 s left x 1 x 0.95 = 15 more steps, so the run uses its time to the end and stops at 69, its schedule fitted
    # to 69 steps.
    metrics, last, saved_steps = _time_limited_run(tmp_path, monkeypatch, _FakeClock(slow_after=102, slow_tick=0.5))
    assert last == saved_steps == metrics[-1]["step"] == 69
    assert metrics[-1]["lr"] == pytest.approx(float(optim.lr_schedule(toy_config(steps=69).train)(68)), rel=1e-5)


@pytest.mark.parametrize("schedule,warmup", [("cosine", 5), ("cosine", 0), ("constant", 5), ("constant", 0)])
def test_lr_at_matches_the_optax_schedule(schedule, warmup):
    import optax

    config = toy_config(steps=60, warmup_steps=warmup, lr_schedule=schedule).train
    lr = config.lr
    if schedule == "cosine":
        built = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(60, warmup + 1), lr * config.min_lr_ratio)
    else:
        built = optax.linear_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr)
    for step in range(0, 80, 3):
        assert float(optim.lr_at(config, step, 60)) == pytest.approx(float(built(step)), rel=1e-5, abs=1e-9), step


def test_train_step_follows_the_schedule_of_the_total_it_is_given(tmp_path):
    # A time limit changes the step count without recompiling: the step scales the optimizer's updates by the
    # schedule of the total it is given. The same state and batch, stepped as a 20-step and a 12-step run: the
    # updates differ by the ratio of the two learning rates.
    import jax.numpy as jnp
    from llmimg_jax.training.mesh import make_mesh
    from llmimg_jax.training.state import init_state, state_spec
    from llmimg_jax.training.step import make_train_step
    from tests.toy_task import make_task

    config = toy_config(steps=20)
    task = make_task(config, str(tmp_path))
    mesh = make_mesh(config.mesh)
    spec = state_spec(task, config, mesh)
    step = make_train_step(task, config, spec)
    batch = next(task.batches(0, mesh))
    state = init_state(task, config, spec)
    for _ in range(8):
        state, _ = step(state, batch)
    before = jax.device_get(state["params"])
    deltas = {}
    for total in (None, 12):
        new, metrics = step(jax.tree.map(jnp.copy, state), batch, total)
        deltas[total] = jax.tree.map(lambda a, b: np.asarray(a) - b, jax.device_get(new["params"]), before)
    ratio = float(optim.lr_at(config.train, 8, 12) / optim.lr_at(config.train, 8, 20))
    assert 0.3 < ratio < 0.9 and float(metrics["lr"]) == pytest.approx(float(optim.lr_at(config.train, 8, 12)))
    for short, full in zip(jax.tree.leaves(deltas[12]), jax.tree.leaves(deltas[None])):
        np.testing.assert_allclose(short, ratio * full, rtol=2e-3, atol=1e-8)  # differences of float32 params
