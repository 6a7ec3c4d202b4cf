"""GAN speed next to diffusion: generation images/s (one forward pass) vs a 50-step DDIM sampler with guidance at
the same resolution, and the GAN's real train step (both phases) in examples/s.

    python scripts/bench_gan.py [--config configs/shapes_gan.py] [--batch 16] [--repeats 3]

Builds the tasks from the configs (their text encoders, generators and U-Net), on this machine's devices; needs
the Shapes data (built on first use, small here). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile

import jax

from llmimg_jax.config import apply_overrides, load_config
from llmimg_jax.training.mesh import make_mesh
from llmimg_jax.training.state import init_state, state_spec
from llmimg_jax.training.step import make_train_step
from llmimg_jax.training.task import make_task
from llmimg_jax.timing import median_seconds

SMALL_DATA = ["data.shapes_num_train=512", "data.shapes_num_validation=64", "data.shapes_num_test=64"]


def _trained_state(config_path: str, batch: int, workdir: str):
    config = apply_overrides(load_config(config_path), SMALL_DATA + [f"train.batch_size={batch}"])
    task = make_task(config, workdir)
    mesh = make_mesh(config.mesh)
    spec = state_spec(task, config, mesh)
    return config, task, spec, init_state(task, config, spec), mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_gan.py")
    parser.add_argument("--diffusion-config", default="configs/shapes_diffusion.py")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = ["a large red circle in the center, on a black background"] * args.batch

    with tempfile.TemporaryDirectory() as gan_dir, tempfile.TemporaryDirectory() as diff_dir:
        config, task, spec, state, mesh = _trained_state(args.config, args.batch, gan_dir)
        step_fn = make_train_step(task, config, spec)
        batch = next(task.batches(0, mesh))
        box = {"state": state}

        def train_once():
            box["state"], metrics = step_fn(box["state"], batch)
            return metrics["loss"]

        train_s = median_seconds(train_once, args.repeats)
        from llmimg_jax.generator.gan.generate import GANGenerator, build_generator
        from llmimg_jax.generator.text_side import build_text_side

        text = build_text_side(config, gan_dir, lambda: prompts)
        gan = GANGenerator(build_generator(config), text, config.gan, int(config.data.image_size))
        params = box["state"]["params"]
        gan_s = median_seconds(lambda: gan.generate(params["g"], params["text"], prompts, seed=0),
                               args.repeats)

        dconfig, dtask, dspec, dstate, _ = _trained_state(args.diffusion_config, args.batch, diff_dir)
        from llmimg_jax.generator.diffusion.generate import DiffusionGenerator, build_unet, schedule_from

        dtext = build_text_side(dconfig, diff_dir, lambda: prompts)
        diffusion = DiffusionGenerator(build_unet(dconfig), dtext, schedule_from(dconfig.diffusion),
                                       dconfig.diffusion, int(dconfig.data.image_size))
        dparams = dstate["params"]
        ddim_s = median_seconds(lambda: diffusion.generate(dparams["unet"], dparams["text"], prompts, seed=0,
                                                           steps=50, sampler="ddim", guidance=3.0),
                                max(1, args.repeats // 2))
    size = int(config.data.image_size)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; S={size}, batch {args.batch}\n")
    print("| what | seconds per batch | images (examples)/s | GAN / DDIM |")
    print("| --- | --- | --- | --- |")
    print(f"| GAN generation (one forward pass) | {gan_s:.4f} | {args.batch / gan_s:.1f} | {ddim_s / gan_s:.0f}x |")
    print(f"| diffusion DDIM 50 steps, guidance 3 | {ddim_s:.3f} | {args.batch / ddim_s:.2f} | 1x |")
    print(f"| GAN train step (D and G phases) | {train_s:.3f} | {args.batch / train_s:.1f} | |")


if __name__ == "__main__":
    main()
