"""GAN speed: generation images/s (text encoding + one generator pass, random weights) and, for
`scripts/bench_gan.py`, the real train step of both phases (needs the Shapes data, built on first use)."""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp

import llmimg_jax
from llmimg_jax.bench.rows import Row, alternate
from llmimg_jax.config import apply_overrides, load_config
from llmimg_jax.errors import UserError
from llmimg_jax.timing import median_seconds

GROUP = "GAN generation"
PROMPT = "a large red circle in the center, on a black background"
SMALL_DATA = ["data.shapes_num_train=512", "data.shapes_num_validation=64", "data.shapes_num_test=64"]


def config_path(name: str = "shapes_gan.py") -> str:
    """A config shipped in the repository's configs/ folder (next to the package)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(llmimg_jax.__file__))), "configs", name)
    if not os.path.isfile(path):
        raise UserError(f"config '{path}' not found; run the benchmark from a source checkout of llmimg_jax")
    return path


def generation_seconds(config_spec: str, batch: int, repeats: int) -> tuple[float, int, str]:
    """(median seconds to generate `batch` images, image size, generator preset) with random weights."""
    from llmimg_jax.generator.gan.generate import GANGenerator, build_generator
    from llmimg_jax.generator.text_side import build_text_side

    config = load_config(config_spec)
    prompts = [PROMPT] * batch
    with tempfile.TemporaryDirectory() as workdir:
        text = build_text_side(config, workdir, lambda: prompts)  # tokenizer trained on the prompt
    size = int(config.data.image_size)
    generator = build_generator(config)
    width, length = text.model.config.n_embd, text.max_length
    g_rng, t_rng = jax.random.split(jax.random.key(0))
    params = {"g": generator.init(g_rng, jnp.zeros((1, generator.config.z_dim)), jnp.zeros((1, width)),
                                  jnp.zeros((1, length, width)), jnp.ones((1, length), bool))["params"],
              "text": text.init(t_rng)}
    params = jax.tree.map(lambda p: getattr(p, "value", p), params, is_leaf=lambda p: hasattr(p, "value"))
    gan = GANGenerator(generator, text, config.gan, size)
    seconds = alternate({"ours": lambda: gan.generate(params["g"], params["text"], prompts, seed=0)}, repeats)
    return seconds["ours"], size, config.gan.generator.preset


def run(batch: int, repeats: int) -> list[Row]:
    seconds, size, preset = generation_seconds(config_path(), batch, repeats)
    return [Row(GROUP, f"S={size}, generator {preset} (configs/shapes_gan.py), batch {batch}, text encoding "
                f"included", f"{batch / seconds:.0f} img/s", values=dict(seconds=seconds))]


def train_step_seconds(config_spec: str, batch: int, repeats: int, workdir: str) -> float:
    """Median seconds of the GAN task's train step (D and G phases) through the training runtime."""
    from llmimg_jax.training.mesh import make_mesh
    from llmimg_jax.training.state import init_state, state_spec
    from llmimg_jax.training.step import make_train_step
    from llmimg_jax.training.task import make_task

    config = apply_overrides(load_config(config_spec), SMALL_DATA + [f"train.batch_size={batch}"])
    task = make_task(config, workdir)
    mesh = make_mesh(config.mesh)
    spec = state_spec(task, config, mesh)
    box = {"state": init_state(task, config, spec)}
    step_fn, batch_arrays = make_train_step(task, config, spec), next(task.batches(0, mesh))

    def train_once():
        box["state"], metrics = step_fn(box["state"], batch_arrays)
        return metrics["loss"]

    return median_seconds(train_once, repeats)
