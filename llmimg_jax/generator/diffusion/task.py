"""The diffusion task: a text-conditioned U-Net trained on captioned images through the shared runtime.

Groups: `unet` (trained, with EMA) and `text` (the GPT-2 text encoder: frozen, or trained end to end with
`text.trainable=True`). The condition is the encoder's token states, their mask and the pooled vector; it is
dropped with probability `diffusion.p_uncond` for classifier-free guidance.
"""

from __future__ import annotations


import ml_collections
import numpy as np

from llmimg_jax.data.pipeline import Pipeline
from llmimg_jax.data.sources import make_source
from llmimg_jax.generator.diffusion.generate import DiffusionGenerator, build_unet, schedule_from
from llmimg_jax.generator.diffusion.loss import diffusion_loss
from llmimg_jax.generator.sample_hook import sample_grid_hook
from llmimg_jax.generator.text_side import TextSide, build_text_side
from llmimg_jax.text.lm_task import corpus
from llmimg_jax.training.task import Phase, Task


def default_diffusion_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        schedule="cosine",        # 'linear' | 'scaled_linear' | 'cosine'
        num_train_steps=1000,
        prediction="v",           # 'eps' | 'v' | 'x0'
        min_snr_gamma=5.0,        # 0: unweighted
        p_uncond=0.1,             # condition dropped in training, for classifier-free guidance
        sampler="ddim",           # 'ddpm' | 'ddim' | 'dpm++2m'
        sample_steps=50,
        timestep_spacing="trailing",  # DDPM / DDIM: 'trailing' (starts at the last training step) | 'leading'
        guidance=3.0,
        eta=0.0,
        thresholding=0.0,         # dynamic-thresholding percentile (Imagen), e.g. 0.995; 0: off
        use_ema=True,             # sample with the EMA params
        num_samples=8,            # images in each periodic sample grid
    ))


def default_unet_config() -> ml_collections.ConfigDict:
    # preset plus overrides; 0 or () keeps the preset's value
    return ml_collections.ConfigDict(dict(preset="small", base_channels=0, channel_mults=(), num_res_blocks=0,
                                          attention_resolutions=(), num_heads=0, norm_groups=0, pos_embed=False,
                                          patch_size=0))


def image_and_tokens(text: TextSide):
    def preprocess(example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        del rng
        return {"image": np.asarray(example["image"], np.float32) / 127.5 - 1.0, **text.token_row(example["text"])}
    return preprocess


def make_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    source = make_source(config.data, config.data.train_split)
    text = build_text_side(config, workdir, lambda: corpus(source))
    unet = build_unet(config)
    size = int(config.data.image_size)
    generator = DiffusionGenerator(unet, text, schedule_from(config.diffusion), config.diffusion, size)
    pipeline = Pipeline(source, global_batch_size=int(config.train.batch_size), seed=config.seed,
                        preprocess=image_and_tokens(text), shuffle=config.data.shuffle, prefetch=config.data.prefetch)
    d = config.diffusion

    def loss_fn(params, batch, rng, step):
        cond = text.condition(params["text"], batch["ids"], batch["attention_mask"])
        loss = diffusion_loss(generator.model_fn, params["unet"], batch["image"], cond, rng, generator.schedule,
                              d.prediction, float(d.min_snr_gamma) or None, p_uncond=float(d.p_uncond))
        return loss, {}

    trained = ("unet", "text") if text.trainable else ("unet",)
    return Task(init=generator.init_params, phases=(Phase(trained, loss_fn),), batches=pipeline.global_batches,
                ema_groups=trained, data_state=pipeline.state,
                sample=sample_grid_hook(config, workdir, generator.generate, "unet", int(d.num_samples), d.use_ema),
                pretrained=(lambda: {"text": text.pretrained()}) if text.pretrained else None)

