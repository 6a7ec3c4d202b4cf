"""Scaling on simulated CPU devices, and how our U-Net train step grows with batch size and resolution.

Devices: an MLP regression task through the training runtime (mesh, sharding rules, train state with AdamW and
EMA, the one train step) on 1, 2, 4, 8 simulated devices (data parallel), then on 8 devices with fsdp = 1, 2,
4, 8: step time and bytes of the train state per device. Each device count runs in its own process
(`python -m llmimg_jax.bench.scaling --worker N ...`) because JAX fixes the device count at start-up. The
simulated devices share the same CPU cores, so step times show the overhead of sharding, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from llmimg_jax.bench.rows import Row

GROUP_DEVICES = "scaling: simulated devices"
GROUP_GROWTH = "scaling: U-Net train step"


def _mlp_task(embed: int, mlp: int, batch_size: int):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from llmimg_jax.training.task import Phase, Task

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            def dense(n, names):
                return nn.Dense(n, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))
            return dense(embed, ("mlp", "embed"))(nn.gelu(dense(mlp, ("embed", "mlp"))(x)))

    model = Mlp()

    def loss_fn(params, batch, rng, step):
        return jnp.mean((model.apply({"params": params["model"]}, batch["x"]) - batch["y"]) ** 2), {}

    def batches(start_step, mesh):
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        while True:
            host = {"x": np.random.default_rng(start_step).standard_normal((batch_size, embed), dtype=np.float32)}
            host["y"] = np.tanh(host["x"])
            yield {k: jax.device_put(v, sharding) for k, v in host.items()}
            start_step += 1

    return Task(init=lambda rng: {"model": model.init(rng, jnp.zeros((1, embed)))["params"]},
                phases=(Phase(("model",), loss_fn),), batches=batches, ema_groups=("model",))


def measure(fsdp: int, embed: int, mlp: int, batch: int, steps: int) -> dict:
    """Step seconds and per-device state bytes of the MLP task on all devices, with the given fsdp size."""
    import jax

    from llmimg_jax.config import base_config
    from llmimg_jax.training.mesh import make_mesh
    from llmimg_jax.training.state import init_state, per_device_bytes, state_spec
    from llmimg_jax.training.step import make_train_step

    config = base_config()
    config.train.batch_size = batch
    n = jax.device_count()
    config.mesh.update(dict(data=n // fsdp, fsdp=fsdp, tensor=1))
    task = _mlp_task(embed, mlp, batch)
    mesh = make_mesh(config.mesh)
    spec = state_spec(task, config, mesh)
    state = init_state(task, config, spec)
    state_bytes = per_device_bytes(state)
    step, batches = make_train_step(task, config, spec), task.batches(0, mesh)
    state, metrics = step(state, next(batches))  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, next(batches))
    jax.block_until_ready(metrics)
    return {"devices": n, "fsdp": fsdp, "step_s": (time.perf_counter() - start) / steps, "bytes": state_bytes}


def _worker(devices: int, fsdps: list[int], embed: int, mlp: int, batch: int, steps: int) -> list[dict]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "llmimg_jax.bench.scaling", "--worker", ",".join(map(str, fsdps)), "--embed",
           str(embed), "--mlp", str(mlp), "--batch", str(batch), "--steps", str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"scaling worker on {devices} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_rows(devices: tuple[int, ...], embed: int, mlp: int, batch: int, steps: int) -> list[Row]:
    """Data parallel on each device count, then fsdp = 1, 2, 4, ... up to the largest count."""
    most = max(devices)
    fsdps = [f for f in (1, 2, 4, 8, 16) if f <= most]
    results = {n: _worker(n, fsdps if n == most else [1], embed, mlp, batch, steps) for n in devices}
    task = f"MLP {embed}->{mlp}->{embed}, AdamW + EMA, global batch {batch}"
    rows, base = [], results[devices[0]][0]
    for n in devices:
        r = results[n][0]
        rows.append(Row(GROUP_DEVICES, f"{task}; {n} device(s), data={n}",
                        f"{1000 * r['step_s']:.1f} ms/step, {r['bytes']:,} B/device", ratio=r["step_s"] / base["step_s"],
                        values=r))
    one = results[most][0]
    for r in results[most][1:]:
        rows.append(Row(GROUP_DEVICES, f"{task}; {most} devices, fsdp={r['fsdp']}",
                        f"{1000 * r['step_s']:.1f} ms/step, {r['bytes']:,} B/device", ratio=r["bytes"] / one["bytes"],
                        values=r))
    return rows


def growth_rows(preset: str, batches: tuple[int, ...], sizes: tuple[int, ...], size: int, batch: int,
                repeats: int) -> list[Row]:
    """Our U-Net train step time for several batch sizes (at `size`) and resolutions (at `batch`)."""
    from llmimg_jax.bench.diffusion_vs_diffusers import jax_train_step
    from llmimg_jax.generator.diffusion.unet import unet_config
    from llmimg_jax.timing import median_seconds

    cfg = unet_config(preset)
    rows = []
    for label, points in (("batch", [(b, size) for b in batches]), ("resolution", [(batch, s) for s in sizes])):
        first = None
        for b, s in points:
            seconds = median_seconds(jax_train_step(cfg, s, b)[0], repeats)
            first = first or seconds
            rows.append(Row(GROUP_GROWTH, f"U-Net {preset}, {label}: S={s}, batch {b}",
                            f"{1000 * seconds:.0f} ms/step", ratio=seconds / first,
                            values=dict(size=s, batch=b, step_s=seconds)))
    return rows


def _main() -> None:
    parser = argparse.ArgumentParser(description="one scaling worker (run by device_rows)")
    parser.add_argument("--worker", required=True, help="comma-separated fsdp sizes")
    parser.add_argument("--embed", type=int, default=512)
    parser.add_argument("--mlp", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps([measure(int(f), args.embed, args.mlp, args.batch, args.steps)
                      for f in args.worker.split(",")]))


if __name__ == "__main__":
    _main()
