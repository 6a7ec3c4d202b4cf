"""Runtime benchmark on simulated CPU devices; prints a markdown table.

  python scripts/bench_runtime.py [--steps 10] [--embed 512] [--mlp 2048] [--batch 64]

Step time and examples/s of an MLP regression task on 1 vs 8 devices (data parallel), and per-device bytes of
the train state (params + optimizer + EMA) for fsdp = 1, 2, 4, 8. Each configuration runs in its own process
because the simulated device count is fixed when JAX starts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _task(embed: int, mlp: int, batch_size: int):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from llmimg_jax.training.task import Phase, Task

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            dense = lambda n, names: nn.Dense(n, kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), names), bias_init=nn.with_logical_partitioning(
                nn.initializers.zeros, names[1:]))
            return dense(embed, ("mlp", "embed"))(nn.gelu(dense(mlp, ("embed", "mlp"))(x)))

    model = Mlp()

    def loss_fn(params, batch, rng, step):
        out = model.apply({"params": params["model"]}, batch["x"])
        return jnp.mean((out - batch["y"]) ** 2), {}

    def batches(start_step, mesh):
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        while True:
            rng = np.random.default_rng(start_step)
            host = {"x": rng.standard_normal((batch_size, embed), dtype=np.float32)}
            host["y"] = np.tanh(host["x"])
            yield {k: jax.device_put(v, sharding) for k, v in host.items()}
            start_step += 1

    return Task(init=lambda rng: {"model": model.init(rng, jnp.zeros((1, embed)))["params"]},
                phases=(Phase(("model",), loss_fn),), batches=batches, ema_groups=("model",))


def worker(kind: str, fsdp: int, args) -> dict:
    import jax

    from llmimg_jax.config import base_config
    from llmimg_jax.training.mesh import make_mesh
    from llmimg_jax.training.state import init_state, per_device_bytes, state_spec
    from llmimg_jax.training.step import make_train_step

    config = base_config()
    config.train.batch_size = args.batch
    n = jax.device_count()
    config.mesh.update(dict(data=n // fsdp, fsdp=fsdp, tensor=1))
    task = _task(args.embed, args.mlp, args.batch)
    mesh = make_mesh(config.mesh)
    spec = state_spec(task, config, mesh)
    state = init_state(task, config, spec)
    if kind == "memory":
        return {"bytes": per_device_bytes(state)}
    step = make_train_step(task, config, spec)
    batches = task.batches(0, mesh)
    state, metrics = step(state, next(batches))  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, next(batches))
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / args.steps
    return {"step_s": seconds, "examples_per_s": args.batch / seconds}


def _run(kind: str, devices: int, fsdp: int, args) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--fsdp", str(fsdp), "--steps",
           str(args.steps), "--embed", str(args.embed), "--mlp", str(args.mlp), "--batch", str(args.batch)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"benchmark worker {kind} devices={devices} fsdp={fsdp} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--embed", type=int, default=512)
    parser.add_argument("--mlp", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--fsdp", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        print(json.dumps(worker(args.worker, args.fsdp, args)))
        return
    print(f"MLP {args.embed}->{args.mlp}->{args.embed}, global batch {args.batch}, {args.steps} timed steps\n")
    print("| devices | mesh | step time (ms) | examples/s |\n| --- | --- | --- | --- |")
    for devices in (1, 8):
        r = _run("speed", devices, 1, args)
        print(f"| {devices} | data={devices} | {1000 * r['step_s']:.1f} | {r['examples_per_s']:.0f} |")
    print("\n| fsdp (8 devices) | state bytes per device | fraction of fsdp=1 |\n| --- | --- | --- |")
    base = None
    for fsdp in (1, 2, 4, 8):
        r = _run("memory", 8, fsdp, args)
        base = base or r["bytes"]
        print(f"| {fsdp} | {r['bytes']:,} | {r['bytes'] / base:.3f} |")


if __name__ == "__main__":
    main()
