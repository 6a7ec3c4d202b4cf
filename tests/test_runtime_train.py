"""End-to-end runtime tests on the toy task: sharding equivalence, exact resume, multi-host, memory, faults,
restores onto other meshes. Runs needing several devices (or a kill) use fresh interpreters."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from llmimg_jax.errors import UserError
from llmimg_jax.training.checkpoint import checkpoint_dir, latest_step, load_params
from llmimg_jax.training.loop import train
from tests.helpers import run_with_devices
from tests.toy_task import make_task, toy_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRELUDE = f"import sys, json; sys.path.insert(0, {REPO!r})\n"
# The reference setup: two phases (two optimizers), frozen group, EMA, two micro-batches per step.
REF = dict(mode="alternate", grad_accum=2)


def _config(mesh=None, toy=None, **train_overrides):
    config = toy_config(grad_accum=REF["grad_accum"], **train_overrides)
    config.toy.mode = REF["mode"]
    config.toy.update(toy or {})
    if mesh:
        config.mesh.update(mesh)
    return config


def _config_code(mesh=None, toy=None, **train_overrides) -> str:
    return (f"from tests.toy_task import toy_config\nfrom tests.test_runtime_train import _config\n"
            f"config = _config({mesh!r}, {toy!r}, **{train_overrides!r})\n")


def _metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _numpy(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 20-step run on one device (this process), and the same on 8 devices (2, 2, 2)."""
    assert jax.device_count() == 1, "the reference run must be unsharded"
    workdir = str(tmp_path_factory.mktemp("ref1"))
    state = _numpy(train(_config(), workdir))
    workdir8 = str(tmp_path_factory.mktemp("ref8"))
    out = run_with_devices(PRELUDE + _config_code(dict(data=2, fsdp=2, tensor=2)) + textwrap.dedent(f"""
        from llmimg_jax.training.loop import train
        state = train(config, {workdir8!r})
        print(json.dumps({{"enc_kernel": str(state["params"]["enc"]["kernel"].sharding.spec),
                          "count": str(state["opt"]["enc"][1][0].count.sharding.spec)}}))
    """), num_devices=8)
    return dict(workdir=workdir, state=state, workdir8=workdir8, sharding8=out)


def test_sharded_matches_single_device(reference):
    one, eight = _metrics(reference["workdir"]), _metrics(reference["workdir8"])
    assert [m["step"] for m in one] == list(range(1, 21)) == [m["step"] for m in eight]
    np.testing.assert_allclose([m["loss"] for m in eight], [m["loss"] for m in one], rtol=1e-5)
    assert one[-1]["loss"] < 0.8 * one[0]["loss"]  # it trains
    # The 8-device state really was sharded (embed -> fsdp, mlp -> tensor); Adam's count replicated.
    assert reference["sharding8"] == {"enc_kernel": "P('fsdp', 'tensor')", "count": "P()"}


def test_exact_resume_after_sigkill(reference, tmp_path):
    workdir = str(tmp_path)
    code = PRELUDE + _config_code(toy=dict(kill_at_step=12, kill_after_checkpoint=10)) + textwrap.dedent(f"""
        from llmimg_jax.training.loop import train
        train(config, {workdir!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert latest_step(workdir) == 10 and _metrics(workdir)[-1]["step"] >= 10
    state = _numpy(train(_config(), workdir))
    ref = _flat(reference["state"])
    got = _flat(state)
    assert got.keys() == ref.keys()
    for key in ref:  # params, both optimizers' states, EMA, step, RNG: bitwise equal
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    strip = lambda ms: [(m["step"], m["loss"], m["dec/loss"]) for m in ms]
    assert strip(_metrics(workdir)) == strip(_metrics(reference["workdir"]))


@pytest.mark.slow
def test_two_processes_match_one_process(reference, tmp_path):
    workdir = str(tmp_path)
    overrides = ["--config.toy.mode=alternate", "--config.train.grad_accum=2", "--config.mesh.data=2",
                 "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
    env = {**os.environ, "LLMIMG": f"{sys.executable} -m llmimg_jax.cli.main", "XLA_FLAGS": ""}
    proc = subprocess.run([os.path.join(REPO, "scripts", "launch_local.sh"), "2", "4", "--", "train", "--config", "tests/toy_config.py", "--workdir", workdir,
                           *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    np.testing.assert_allclose([m["loss"] for m in _metrics(workdir)],
                               [m["loss"] for m in _metrics(reference["workdir8"])], rtol=1e-6)
    assert latest_step(workdir) == 20


@pytest.mark.slow
def test_two_processes_end_a_time_limited_run_together(tmp_path):
    # Each process times its own steps; process 0's fitted count is the one both use, and the deadline stops both at
    # one step, or the collectives of the next step (and the joint checkpoint) would hang. A minute: the 50 timed
    # steps that fit the count must come after the compile even on a loaded machine.
    from llmimg_jax.config import load_workdir_config

    workdir = str(tmp_path)
    overrides = ["--config.train.steps=1000000", "--config.train.time_limit_minutes=1.0", "--config.train.log_every=100",
                 "--config.train.checkpoint_every=1000000", "--config.mesh.data=8"]
    env = {**os.environ, "LLMIMG": f"{sys.executable} -m llmimg_jax.cli.main", "XLA_FLAGS": ""}
    proc = subprocess.run([os.path.join(REPO, "scripts", "launch_local.sh"), "2", "4", "--", "train", "--config",
                           "tests/toy_config.py", "--workdir", workdir, *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = int(load_workdir_config(workdir).train.steps)
    assert 50 < steps < 1000000 and latest_step(workdir) == steps == _metrics(workdir)[-1]["step"]
    assert "steps fit" in proc.stdout + proc.stderr


def test_fsdp8_state_is_an_eighth_per_device():
    out = run_with_devices(PRELUDE + textwrap.dedent("""
        import jax
        from tests.toy_task import toy_config, make_task
        from llmimg_jax.training.mesh import make_mesh
        from llmimg_jax.training.state import state_spec, init_state, per_device_bytes
        sizes = {}
        for fsdp in (1, 8):
            config = toy_config()
            config.mesh.update(dict(data=8 // fsdp, fsdp=fsdp, tensor=1))
            task = make_task(config, "unused")
            spec = state_spec(task, config, make_mesh(config.mesh))
            state = init_state(task, config, spec)
            sizes[fsdp] = [per_device_bytes(state, d) for d in jax.devices()]
        print(json.dumps(sizes))
    """), num_devices=8)
    full, sharded = out["1"], out["8"]
    assert len(set(full)) == 1  # fsdp=1: every device holds everything
    assert max(sharded) <= 1.1 * full[0] / 8, (sharded, full[0])


def test_truncated_latest_checkpoint_falls_back(tmp_path):
    workdir = str(tmp_path)
    # A constant lr: the schedule must not depend on train.steps, which differs between the two runs.
    train(_config(steps=10, checkpoint_every=5, lr_schedule="constant"), workdir)
    first = _metrics(workdir)
    state_dir = os.path.join(checkpoint_dir(workdir), "10", "state")
    for root, _, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    with pytest.warns(UserWarning, match=r"checkpoints/10 could not be restored"):
        state = train(_config(steps=15, checkpoint_every=5, lr_schedule="constant"), workdir)
    again = _metrics(workdir)
    assert int(state["step"]) == 15 and [m["step"] for m in again] == list(range(1, 16))
    # Steps 6..10 were recomputed from checkpoint 5 and match the first run exactly.
    assert [m["loss"] for m in again[:10]] == [m["loss"] for m in first]
    assert latest_step(workdir) == 15


def test_sigterm_saves_current_step_and_exits_zero(tmp_path):
    workdir = str(tmp_path)
    code = PRELUDE + _config_code(steps=10**6, checkpoint_every=0) + textwrap.dedent(f"""
        from llmimg_jax.training.main import train_main
        train_main(config, {workdir!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
    try:
        deadline = time.time() + 240
        path = os.path.join(workdir, "metrics.jsonl")
        while not (os.path.isfile(path) and len(open(path).readlines()) >= 5):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    last_logged = _metrics(workdir)[-1]["step"]
    assert last_logged >= 5 and latest_step(workdir) == last_logged


def test_nonfinite_loss_stops_naming_the_step(tmp_path):
    workdir = str(tmp_path)
    with pytest.raises(UserError, match=r"non-finite loss at step 13\b"):
        train(_config(steps=20, checkpoint_every=5, toy=dict(nan_at_steps=(12,))), workdir)
    assert latest_step(workdir) == 10
    loaded = load_params(workdir, make_task(_config(), workdir))
    assert loaded["step"] == 10
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(loaded))
    assert _metrics(workdir)[-1]["step"] == 12


def test_nonfinite_skip_mode_counts_skipped_steps(tmp_path):
    workdir = str(tmp_path)
    state = train(_config(steps=10, nonfinite="skip", toy=dict(nan_at_steps=(3, 7))), workdir)
    metrics = _metrics(workdir)
    assert int(state["skipped"]) == 2 and metrics[-1]["skipped"] == 2
    assert [m["step"] for m in metrics if m["loss"] is None] == [4, 8]
    assert [m["skipped"] for m in metrics] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_restore_onto_other_meshes(tmp_path):
    workdir = str(tmp_path)
    reference = str(tmp_path / "reference.npz")
    out = run_with_devices(PRELUDE + _config_code(dict(data=1, fsdp=8, tensor=1), steps=10) + textwrap.dedent(f"""
        import jax, numpy as np
        from llmimg_jax.training.loop import train
        from llmimg_jax.training.mesh import make_mesh
        from llmimg_jax.training.checkpoint import load_params
        from tests.toy_task import make_task
        state = train(config, {workdir!r})
        flat = lambda t: {{jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(t)}}
        ref = flat({{"params": state["params"], "ema": state["ema"]}})
        np.savez({reference!r}, **ref)
        config.mesh.update(dict(data=4, fsdp=2, tensor=1))
        loaded = load_params({workdir!r}, make_task(config, {workdir!r}), mesh=make_mesh(config.mesh))
        got = flat({{"params": loaded["params"], "ema": loaded["ema"]}})
        print(json.dumps({{"equal": got.keys() == ref.keys() and all((got[k] == ref[k]).all() for k in ref),
                          "spec": str(loaded["params"]["enc"]["kernel"].sharding.spec)}}))
    """), num_devices=8)
    assert out == {"equal": True, "spec": "P('fsdp', None)"}
    ref = dict(np.load(reference))
    loaded = load_params(workdir, make_task(_config(), workdir))  # this process: one device
    got = _flat({"params": loaded["params"], "ema": loaded["ema"]})
    assert got.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(np.asarray(got[key]), ref[key], err_msg=key)
