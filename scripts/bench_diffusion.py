"""Diffusion speed: train examples/s and sampling images/s (DDIM with classifier-free guidance) at S = 32 and 64.

    python scripts/bench_diffusion.py [--quick] [--repeats 3]

Uses the configs' U-Net presets (`small` at 32x32, `base64` at 64x64) and a GPT-2 `tiny` text encoder width of
context; timings are medians over repeats after one compile-and-warm-up call. Prints a markdown table.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llmimg_jax.generator.diffusion.loss import diffusion_loss
from llmimg_jax.generator.diffusion.samplers import sample
from llmimg_jax.generator.diffusion.schedules import make_schedule
from llmimg_jax.generator.diffusion.unet import UNet, unet_config, unet_model_fn
from llmimg_jax.timing import median_seconds

CONTEXT_LEN, CONTEXT_DIM = 48, 64


def bench(size: int, preset: str, batch: int, sample_batch: int, sample_steps: int, repeats: int) -> dict:
    unet = UNet(unet_config(preset))
    model_fn = unet_model_fn(unet)
    rng = np.random.default_rng(0)
    cond = {"context": jnp.asarray(rng.standard_normal((batch, CONTEXT_LEN, CONTEXT_DIM)), jnp.float32),
            "context_mask": jnp.ones((batch, CONTEXT_LEN), bool),
            "pooled": jnp.asarray(rng.standard_normal((batch, CONTEXT_DIM)), jnp.float32)}
    x0 = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
    params = jax.jit(unet.init)(jax.random.key(0), x0[:1], jnp.zeros((1,), jnp.int32),
                                cond["context"][:1], cond["context_mask"][:1], cond["pooled"][:1])["params"]
    params = jax.tree.map(lambda p: getattr(p, "value", p), params, is_leaf=lambda p: hasattr(p, "value"))
    schedule = make_schedule("cosine", 1000)
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, key):
        loss, grads = jax.value_and_grad(
            lambda p: diffusion_loss(model_fn, p, x0, cond, key, schedule, "v", 5.0, p_uncond=0.1))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"p": params, "o": opt_state}

    def one_step():
        state["p"], state["o"], loss = train_step(state["p"], state["o"], jax.random.key(1))
        return loss

    step_time = median_seconds(one_step, repeats)
    small = {k: v[:sample_batch] for k, v in cond.items()}
    sample_time = median_seconds(
        lambda: sample(model_fn, params, (sample_batch, size, size, 3), small, None, jax.random.key(2),
                       schedule=schedule, sampler="ddim", steps=sample_steps, guidance=3.0, prediction="v"),
        max(1, repeats // 2))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    return {"size": size, "preset": preset, "params_m": n_params / 1e6, "batch": batch,
            "train_ex_s": batch / step_time, "step_s": step_time, "sample_batch": sample_batch,
            "sample_steps": sample_steps, "sample_img_s": sample_batch / sample_time}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x32 only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setups = [(32, "small", 32, 16)] if args.quick else [(32, "small", 32, 16), (64, "base64", 16, 16)]
    rows = [bench(size, preset, batch, sb, 50, args.repeats) for size, preset, batch, sb in setups]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} device(s))\n")
    print("| S | U-Net | params (M) | train batch | train step (s) | train examples/s | sampling: DDIM 50 steps, "
          "guidance 3, batch | images/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['preset']} | {r['params_m']:.2f} | {r['batch']} | {r['step_s']:.3f} | "
              f"{r['train_ex_s']:.1f} | {r['sample_batch']} | {r['sample_img_s']:.2f} |")


if __name__ == "__main__":
    main()
