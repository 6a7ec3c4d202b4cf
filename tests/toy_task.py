"""A tiny regression task for the runtime tests: a frozen random projection, an encoder and a decoder group.

Batch k is a pure function of (seed, k). Test hooks (config.toy): `nan_at_steps` plants a NaN in the loss,
`kill_at_step` SIGKILLs the process when batch k is requested, once checkpoint `kill_after_checkpoint` is final."""

from __future__ import annotations

import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmimg_jax.config import base_config
from llmimg_jax.training.task import Phase, Task


def toy_config(**train) -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "tests.toy_task:make_task"
    config.toy = ml_collections.ConfigDict(dict(
        mode="joint", embed=128, mlp=256, noise=0.01, nan_at_steps=(), kill_at_step=-1, kill_after_checkpoint=-1))
    config.train.update(dict(steps=20, batch_size=16, lr=3e-3, warmup_steps=5, log_every=1, checkpoint_every=10,
                             ema_decay=0.9))
    config.train.update(train)
    return config


class Dense(nn.Module):
    features: int
    names: tuple[str, str]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.names),
                            (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.normal(0.1), self.names[1:]),
                          (self.features,), jnp.float32)
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


def _batch(seed: int, step: int, batch_size: int, embed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, step])
    x = rng.standard_normal((batch_size, embed), dtype=np.float32)
    teacher = np.random.default_rng([seed, 2**31]).standard_normal((embed, embed), dtype=np.float32)
    return {"x": x, "y": np.sin(x @ teacher / np.sqrt(embed)).astype(np.float32)}


def make_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    toy, train = config.toy, config.train
    dtype = jnp.dtype(train.compute_dtype)
    enc, dec = Dense(toy.mlp, ("embed", "mlp"), dtype), Dense(toy.embed, ("mlp", "embed"), dtype)
    sample_x = jnp.zeros((1, toy.embed))

    def init(rng):
        r1, r2, r3 = jax.random.split(rng, 3)
        proj = nn.with_logical_partitioning(nn.initializers.orthogonal(), ("embed", None))(r1, (toy.embed,) * 2)
        return {"frozen": {"proj": proj}, "enc": enc.init(r2, sample_x)["params"],
                "dec": dec.init(r3, jnp.zeros((1, toy.mlp)))["params"]}

    def loss_fn(params, batch, rng, step):
        x = batch["x"] @ params["frozen"]["proj"]
        x = x + toy.noise * jax.random.normal(rng, x.shape)  # uses the step's RNG, so resume must reproduce it
        out = dec.apply({"params": params["dec"]}, nn.gelu(enc.apply({"params": params["enc"]}, x)))
        loss = jnp.mean((out.astype(jnp.float32) - batch["y"]) ** 2)
        planted = jnp.isin(step, jnp.asarray(toy.nan_at_steps or (-1,), jnp.int32))
        loss = jnp.where(planted, jnp.nan, loss)
        return loss, {"abs_err": jnp.mean(jnp.abs(out - batch["y"]))}

    if toy.mode == "joint":
        phases = (Phase(("enc", "dec"), loss_fn),)
        overrides = {}
    else:  # two phases, two optimizers, a different lr for the decoder (like a GAN's D and G)
        phases = (Phase(("dec",), loss_fn, "dec"), Phase(("enc",), loss_fn, "enc"))
        overrides = {"dec": {"lr": train.lr * 0.5}}

    def batches(start_step, mesh):
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        step = start_step
        while True:
            if step == toy.kill_at_step:
                final = os.path.join(workdir, "checkpoints", str(toy.kill_after_checkpoint))
                while not os.path.isfile(os.path.join(final, "_CHECKPOINT_METADATA")):
                    time.sleep(0.05)
                time.sleep(0.5)
                os.kill(os.getpid(), signal.SIGKILL)
            host = _batch(config.seed, step, train.batch_size, toy.embed)
            yield {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
                   for k, v in host.items()}
            step += 1

    return Task(init=init, phases=phases, batches=batches, ema_groups=("enc", "dec"),
                optimizer_overrides=overrides,
                data_state=lambda: {"seed": config.seed, "batch_size": train.batch_size})
