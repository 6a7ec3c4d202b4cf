"""Text -> images with a trained GAN generator: encode the prompts, one jit-compiled forward pass."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmimg_jax.errors import UserError
from llmimg_jax.generator.diffusion.generate import to_uint8
from llmimg_jax.generator.gan.generator import Generator, generator_config, sample
from llmimg_jax.generator.text_side import TextSide
from llmimg_jax.presets import preset_overrides


def build_generator(config: ml_collections.ConfigDict) -> Generator:
    """The generator of a config: `gan.generator.preset` with overrides, at `data.image_size`."""
    section = config.gan.generator
    cfg = generator_config(section.preset, **{**preset_overrides(section), "image_size": int(config.data.image_size)})
    return Generator(cfg, dtype=jnp.dtype(config.train.compute_dtype))


class GANGenerator:
    """Samples images for prompts from generator params and text-encoder params."""

    def __init__(self, generator: Generator, text: TextSide, gan: ml_collections.ConfigDict, image_size: int):
        if generator.config.image_size != image_size:
            raise UserError(f"the generator makes {generator.config.image_size}x{generator.config.image_size} "
                            f"images but image_size={image_size}; use a generator preset for that size")
        self.generator, self.text, self.cfg, self.image_size = generator, text, gan, image_size
        self._forward = jax.jit(self._images, static_argnames=("truncation",))

    def _images(self, g_params: Any, text_params: Any, ids: jax.Array, mask: jax.Array, rng: jax.Array,
                truncation: float) -> jax.Array:
        cond = self.text.condition(text_params, ids, mask)
        return sample(self.generator, g_params, rng, cond["pooled"], cond["context"], cond["context_mask"],
                      truncation=truncation)

    def generate(self, g_params: Any, text_params: Any, prompts: Sequence[str], *, seed: int = 0,
                 truncation: float | None = None) -> np.ndarray:
        """uint8 images [len(prompts), S, S, 3]; deterministic for a seed. truncation in [0, 1] (1: off)."""
        truncation = float(self.cfg.truncation if truncation is None else truncation)
        if not 0.0 <= truncation <= 1.0:
            raise UserError(f"truncation={truncation} must be in [0, 1]; 1 disables it, ~0.7 is typical")
        if not prompts:
            raise UserError("no prompts to generate images for; pass at least one prompt")
        tokens = self.text.tokenize(prompts)
        images = self._forward(g_params, text_params, tokens["ids"], tokens["attention_mask"],
                               jax.random.key(seed), truncation=truncation)
        return to_uint8(images)
