"""Text-to-image GAN on the Shapes world, conditioned on a GPT-2 text encoder.

    llmimg train --config configs/shapes_gan.py --workdir W [--config.text.lm_workdir=LM_WORKDIR]
    llmimg train --config configs/shapes_gan.py:tiny --workdir W     # tests: seconds
    llmimg train --config configs/shapes_gan.py:s64 --workdir W      # 64x64 images
    configs/shapes_gan.py:quickstart                                  # what `llmimg quickstart --generator gan` trains
"""

from llmimg_jax.config import base_config
from llmimg_jax.generator.gan.task import default_gan_config


def get_config(arg=None):
    config = base_config()
    config.task = "gan"
    config.gan = default_gan_config()
    config.text.update(dict(preset="tiny", vocab_size=512, max_length=48))
    # Sized for 32x32 Shapes on two CPU cores (small G and D, batch 16); the "32" presets are ~10x slower a step.
    config.gan.generator.update(dict(preset="tiny"))
    config.gan.discriminator.update(dict(preset="tiny"))
    config.gan.update(dict(d_lr=4e-4, contrastive_weight=0.2))
    # Constant lr (GAN practice): raising train.steps later continues exactly as an uninterrupted run would.
    config.train.update(dict(steps=2000, batch_size=16, lr=2e-4, lr_schedule="constant", warmup_steps=0,
                             grad_clip=0.0, ema_decay=0.995, checkpoint_every=500, log_every=50,
                             sample_every=500))
    if arg == "tiny":
        config.data.update(dict(shapes_num_train=256, shapes_num_validation=32, shapes_num_test=32))
        config.gan.discriminator.update(dict(channels=(16, 32, 32, 32)))
        config.gan.update(dict(num_samples=4, r1_every=2, word_region_weight=0.1))  # tests cover every loss term
        config.text.update(dict(max_length=40))
        config.train.update(dict(steps=10, batch_size=8, checkpoint_every=5, log_every=5, sample_every=10))
    elif arg == "quickstart":
        # 0.31 s a step on 2 CPU cores with one JAX device per core (0.45 s with one device). It trains for a time,
        # not a step count: the steps that fit 11 minutes (the quickstart sets what its 20-minute budget leaves), at
        # most 20000; about 2100 on 2 CPU cores of the reference machine.
        config.train.update(dict(steps=20000, time_limit_minutes=11.0, checkpoint_every=500, sample_every=0))
    elif arg == "s64":
        config.data.image_size = 64
        config.gan.generator.update(dict(preset="64"))
        config.gan.discriminator.update(dict(preset="64"))
        config.train.update(dict(batch_size=32, steps=20000, ema_decay=0.999))
    elif arg is not None:
        raise ValueError(f"unknown variant '{arg}'; use '', 'tiny', 's64' or 'quickstart'")
    return config
