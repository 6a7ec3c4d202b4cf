"""Text-to-image diffusion on the Shapes world, conditioned on a GPT-2 text encoder.

    llmimg train --config configs/shapes_diffusion.py --workdir W [--config.text.lm_workdir=LM_WORKDIR]
    llmimg train --config configs/shapes_diffusion.py:tiny --workdir W     # tests: seconds
    llmimg train --config configs/shapes_diffusion.py:s64 --workdir W      # 64x64 images
    llmimg train --config configs/shapes_diffusion.py:pixel --workdir W    # the U-Net on pixels, no patches
    configs/shapes_diffusion.py:quickstart                                  # what `llmimg quickstart` trains
"""

from llmimg_jax.config import base_config
from llmimg_jax.generator.diffusion.task import default_diffusion_config, default_unet_config


def get_config(arg=None):
    config = base_config()
    config.task = "diffusion"
    config.diffusion = default_diffusion_config()
    config.unet = default_unet_config()
    config.text.update(dict(preset="tiny", vocab_size=512, max_length=48))
    # 2x2 patches: the U-Net runs at 16x16 (~5x cheaper a step than at 32x32); learned positions for layouts named
    # in text. About 1.65 steps/s on one CPU core: the default run takes about four hours. Held-out instructions drawn
    # right with expansion (README): 52.3 % for a 6000-step run, 84.0 % for a 12000-step one; this 24000-step run:
    # 90.0 % at step 14000, 95.7 % at its end.
    config.unet.update(dict(patch_size=2, attention_resolutions=(8,), pos_embed=True))
    config.diffusion.update(dict(sampler="dpm++2m", sample_steps=20))
    config.train.update(dict(steps=24000, batch_size=32, lr=1e-3, warmup_steps=50, ema_decay=0.999,
                             checkpoint_every=500, log_every=50, sample_every=1000))
    if arg == "tiny":
        config.data.update(dict(shapes_num_train=256, shapes_num_validation=32, shapes_num_test=32))
        config.unet.update(dict(preset="tiny", patch_size=1, attention_resolutions=(), pos_embed=False))
        config.diffusion.update(dict(sampler="ddim", sample_steps=4, num_samples=4))
        config.text.update(dict(max_length=40))
        config.train.update(dict(steps=10, batch_size=8, lr=5e-4, warmup_steps=2, checkpoint_every=5, log_every=5,
                                 sample_every=10))
    elif arg == "quickstart":
        # The default U-Net with one residual block per level, batches of 16: per example seen, smaller batches and
        # the shallower U-Net learned faster at this length (README, "Quickstart generator: what was tried"). It
        # trains for a time, not a step count: the steps that fit 11 minutes (the quickstart sets what its 20-minute
        # budget leaves), at most 24000; about 5000 on 2 CPU cores of the reference machine.
        config.unet.update(dict(num_res_blocks=1))
        # Rows of 32 tokens, the longest description with its end token (the expander's context is 64): a step
        # at batch 16 takes 219 ms on one core instead of 273 ms (48 tokens: 263 ms).
        config.text.max_length = 32
        config.train.update(dict(steps=24000, time_limit_minutes=11.0, batch_size=16, checkpoint_every=1000,
                                 sample_every=0))
    elif arg in ("pixel", "s64"):
        # The U-Net on the pixels themselves (no patches; the preset's attention resolutions): at 32x32 about
        # 2 s a step on 2 CPU cores.
        config.unet.update(dict(patch_size=1, attention_resolutions=(), pos_embed=False))
        config.train.update(dict(steps=8000, lr=5e-4, warmup_steps=500))
        if arg == "s64":
            config.data.image_size = 64
            config.unet.preset = "base64"
    elif arg is not None:
        raise ValueError(f"unknown variant '{arg}'; use '', 'tiny', 'quickstart', 'pixel' or 's64'")
    return config
