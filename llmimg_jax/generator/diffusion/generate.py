"""Text -> images with a trained diffusion U-Net: encode the prompts, run one jit-compiled sampling loop."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmimg_jax.generator.diffusion.samplers import check_sampling, sample
from llmimg_jax.generator.diffusion.schedules import Schedule, make_schedule
from llmimg_jax.generator.diffusion.unet import UNet, unet_config, unet_model_fn
from llmimg_jax.generator.text_side import TextSide
from llmimg_jax.presets import preset_overrides


def build_unet(config: ml_collections.ConfigDict) -> UNet:
    """The U-Net of a config: `unet.preset` with its non-zero / non-empty fields as overrides."""
    return UNet(unet_config(config.unet.preset, dtype=config.train.compute_dtype, **preset_overrides(config.unet)))


def schedule_from(diffusion: ml_collections.ConfigDict) -> Schedule:
    return make_schedule(diffusion.schedule, int(diffusion.num_train_steps))


def to_uint8(images: jax.Array) -> np.ndarray:
    """[-1, 1] floats -> uint8 [0, 255]."""
    return np.asarray(np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255), np.uint8)


class DiffusionGenerator:
    """Samples images for prompts from U-Net params and text-encoder params."""

    def __init__(self, unet: UNet, text: TextSide, schedule: Schedule, diffusion: ml_collections.ConfigDict,
                 image_size: int):
        self.unet, self.text, self.schedule, self.cfg = unet, text, schedule, diffusion
        self.image_size = image_size
        # Checkpoints written before the option existed sampled with 'leading'.
        self.spacing = str(diffusion.get("timestep_spacing", "leading"))
        self.model_fn = unet_model_fn(unet)  # one object: the sampler's jit cache is keyed on it
        self._encode = jax.jit(text.condition)
        # A bad sampler setting fails now, not at the first sample grid an hour into training.
        check_sampling(schedule, diffusion.sampler, int(diffusion.sample_steps), float(diffusion.eta),
                       diffusion.prediction, float(diffusion.thresholding) or None, spacing=self.spacing)

    def init_params(self, rng: jax.Array) -> dict:
        """Random {"unet", "text"} params (boxed with their logical axis names)."""
        unet_rng, text_rng = jax.random.split(rng)
        size, width, length = self.image_size, self.text.model.config.n_embd, self.text.max_length
        dummy = (jnp.zeros((1, size, size, 3)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, length, width)),
                 jnp.ones((1, length), bool), jnp.zeros((1, width)))
        return {"unet": self.unet.init(unet_rng, *dummy)["params"], "text": self.text.init(text_rng)}

    def generate(self, unet_params: Any, text_params: Any, prompts: Sequence[str], *, seed: int = 0,
                 sampler: str | None = None, steps: int | None = None,
                 guidance: float | None = None, eta: float | None = None) -> np.ndarray:
        """uint8 images [len(prompts), S, S, 3]; deterministic for a seed."""
        cfg = self.cfg
        sampler = sampler or cfg.sampler
        steps = int(cfg.sample_steps if steps is None else steps)
        eta = float(cfg.eta if eta is None else eta)
        thresholding = float(cfg.thresholding) or None
        # Before encoding anything: a bad --sampler or --steps is a one-line error.
        check_sampling(self.schedule, sampler, steps, eta, cfg.prediction, thresholding, spacing=self.spacing)
        size = self.image_size
        tokens = self.text.tokenize(prompts)
        cond = self._encode(text_params, tokens["ids"], tokens["attention_mask"])
        images = sample(self.model_fn, unet_params, (len(prompts), size, size, 3), cond, None, jax.random.key(seed),
                        schedule=self.schedule, sampler=sampler, steps=steps,
                        guidance=float(cfg.guidance if guidance is None else guidance), eta=eta,
                        prediction=cfg.prediction, thresholding=thresholding, spacing=self.spacing)
        return to_uint8(images)
