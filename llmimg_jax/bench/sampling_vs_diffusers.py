"""Sampling: DDIM with classifier-free guidance, our jit-compiled loop vs a diffusers pipeline-style loop.

Ours: `samplers.sample` (one `lax.scan` over the steps, cond and uncond halves in one model call). Peer:
UNet2DConditionModel + DDIMScheduler (leading spacing, clipped x0, alpha 1 at the end, as ours), the cond and
uncond halves batched into one call per step, under `torch.inference_mode()`. Same U-Net layout, batch, steps
and guidance; images/s.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from llmimg_jax.bench import unets
from llmimg_jax.bench.rows import Row, alternate, skipped_row, torch_setup
from llmimg_jax.generator.diffusion.samplers import sample
from llmimg_jax.generator.diffusion.schedules import make_schedule
from llmimg_jax.generator.diffusion.unet import UNetConfig, unet_model_fn

GROUP = "sampling vs diffusers"
GUIDANCE = 3.0


def jax_sampler(cfg: UNetConfig, size: int, batch: int, steps: int) -> Callable[[], Any]:
    unet, params = unets.our_unet(cfg, size)
    context = jnp.asarray(unets.inputs(batch, size)["context"])
    cond = {"context": context, "context_mask": jnp.ones(context.shape[:2], bool)}
    model_fn, schedule = unet_model_fn(unet), make_schedule("linear", 1000)
    return lambda: sample(model_fn, params, (batch, size, size, 3), cond, None, jax.random.key(0),
                          schedule=schedule, sampler="ddim", steps=steps, guidance=GUIDANCE, prediction="eps")


def torch_sampler(cfg: UNetConfig, size: int, batch: int, steps: int) -> Callable[[], Any]:
    torch = torch_setup()
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    model = unets.diffusers_unet(cfg, size).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                              set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
                              prediction_type="epsilon")
    context = torch.from_numpy(unets.inputs(batch, size)["context"])
    both = torch.cat([context, torch.zeros_like(context)])  # cond, then the null condition

    def run():
        scheduler.set_timesteps(steps)
        x = torch.randn(batch, 3, size, size) * scheduler.init_noise_sigma
        with torch.inference_mode():
            for t in scheduler.timesteps:
                out = model(scheduler.scale_model_input(torch.cat([x, x]), t), t, encoder_hidden_states=both).sample
                c, u = out.chunk(2)
                x = scheduler.step(u + GUIDANCE * (c - u), t, x, use_clipped_model_output=True).prev_sample
        return x

    return run


def run(cfg: UNetConfig, preset: str, size: int, batch: int, steps: int, repeats: int) -> list[Row]:
    setting = f"S={size}, U-Net {preset}, DDIM {steps} steps, guidance {GUIDANCE}, batch {batch}"
    try:
        peer = torch_sampler(cfg, size, batch, steps)
    except ImportError as e:
        return [skipped_row(GROUP, setting, e)]
    t = alternate({"ours": jax_sampler(cfg, size, batch, steps), "peer": peer}, repeats)
    ours, theirs = batch / t["ours"], batch / t["peer"]
    return [Row(GROUP, setting, f"{ours:.2f} img/s", f"{theirs:.2f} img/s", ours / theirs,
                dict(size=size, batch=batch, steps=steps, ours_s=t["ours"], peer_s=t["peer"],
                     ours_first_s=t["ours_first"]))]
