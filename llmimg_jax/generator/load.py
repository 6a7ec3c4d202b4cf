"""Load a trained generator (diffusion or GAN) from its workdir: the kind is read from the run's config."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from llmimg_jax.config import load_workdir_config
from llmimg_jax.errors import UserError
from llmimg_jax.generator.text_side import load_text_side
from llmimg_jax.training.checkpoint import load_params


@dataclasses.dataclass
class LoadedGenerator:
    """A generator with its weights: `generate(prompts, seed=..., **options) -> uint8 [N, S, S, 3]`."""
    kind: str
    config: ml_collections.ConfigDict
    workdir: str
    step: int
    _generate: Callable[..., np.ndarray]

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    def generate(self, prompts: Sequence[str], *, seed: int = 0, **options: Any) -> np.ndarray:
        return self._generate(list(prompts), seed=seed, **options)


def _diffusion(config: ml_collections.ConfigDict, workdir: str, use_ema: bool) -> LoadedGenerator:
    from llmimg_jax.generator.diffusion.generate import DiffusionGenerator, build_unet, schedule_from

    generator = DiffusionGenerator(build_unet(config), load_text_side(config, workdir),
                                   schedule_from(config.diffusion), config.diffusion, int(config.data.image_size))
    restored = load_params(workdir, jax.eval_shape(generator.init_params, jax.random.key(0)))
    params = {**restored["params"], **(restored["ema"] if use_ema else {})}

    def generate(prompts, *, seed=0, sampler=None, steps=None, guidance=None, eta=None, truncation=None):
        if truncation is not None:
            raise UserError("--truncation applies to GAN generators; this workdir holds a diffusion model")
        return generator.generate(params["unet"], params["text"], prompts, seed=seed, sampler=sampler, steps=steps,
                                  guidance=guidance, eta=eta)

    return LoadedGenerator("diffusion", config, workdir, restored["step"], generate)


def _gan(config: ml_collections.ConfigDict, workdir: str, use_ema: bool) -> LoadedGenerator:
    from llmimg_jax.generator.gan.generate import GANGenerator, build_generator
    from llmimg_jax.generator.gan.task import build_discriminator, make_init, uses_word_region

    text, generator, size = load_text_side(config, workdir), build_generator(config), int(config.data.image_size)
    init = make_init(generator, build_discriminator(config), text, size, uses_word_region(config.gan))
    restored = load_params(workdir, jax.eval_shape(init, jax.random.key(0)))
    params = {**restored["params"], **(restored["ema"] if use_ema else {})}
    sampler = GANGenerator(generator, text, config.gan, size)

    def generate(prompts, *, seed=0, truncation=None, **diffusion_options):
        given = sorted(k for k, v in diffusion_options.items() if v is not None)
        if given:
            raise UserError(f"{', '.join('--' + k for k in given)} apply to diffusion models; this workdir holds a "
                            "GAN (one forward pass: use --truncation)")
        return sampler.generate(params["g"], params["text"], prompts, seed=seed, truncation=truncation)

    return LoadedGenerator("gan", config, workdir, restored["step"], generate)


LOADERS: dict[str, Callable[[ml_collections.ConfigDict, str, bool], LoadedGenerator]] = {"diffusion": _diffusion, "gan": _gan}


def load_generator(workdir: str, *, use_ema: bool = True) -> LoadedGenerator:
    """The generator trained in `workdir`, with its EMA weights by default."""
    config = load_workdir_config(workdir)
    if config.task not in LOADERS:
        raise UserError(f"'{workdir}' holds a '{config.task}' run, not an image generator; pass the workdir of a "
                        f"diffusion or GAN run")
    return LOADERS[config.task](config, workdir, use_ema)
