"""The generators' periodic sample grids: validation captions drawn with the current (EMA) weights."""

from __future__ import annotations

import os
from typing import Callable

import jax
import ml_collections

from llmimg_jax.data.sources import validation_texts


def sample_grid_hook(config: ml_collections.ConfigDict, workdir: str, generate: Callable, group: str, num: int,
                     use_ema: bool) -> Callable[[dict, int], None]:
    """A `Task.sample` hook writing `W/samples/step_NNNNNN.png` (captions under the images, and a .txt beside).

    `generate(generator_params, text_params, prompts, seed=...)` draws the images; the text encoder's EMA is used
    when it has one (trained end to end), its frozen weights otherwise."""
    prompts = validation_texts(config.data, num)

    def sample(state: dict, step: int) -> None:
        from llmimg_jax.evaluation.grid import save_grid

        params = state["ema"] if use_ema else state["params"]
        images = generate(params[group], params.get("text", state["params"]["text"]), prompts, seed=step)
        if jax.process_index() == 0:
            save_grid(images, prompts, os.path.join(workdir, "samples", f"step_{step:06d}.png"))

    return sample
