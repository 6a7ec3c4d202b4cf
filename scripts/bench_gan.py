"""GAN speed: generation images/s (random weights) and the real train step (D and G phases) in examples/s; a thin
wrapper of llmimg_jax/bench/gan.py. Needs the Shapes data for the train step (built on first use, small here).

    python scripts/bench_gan.py [--config configs/shapes_gan.py] [--batch 16] [--repeats 3]

Sampling speed of diffusion (to compare with) is a row of `python -m llmimg_jax.bench`."""

from __future__ import annotations

import argparse
import tempfile

import jax

from llmimg_jax.bench import gan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=gan.config_path())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gen_s, size, _ = gan.generation_seconds(args.config, args.batch, args.repeats)
    with tempfile.TemporaryDirectory() as workdir:
        train_s = gan.train_step_seconds(args.config, args.batch, args.repeats, workdir)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; S={size}, batch {args.batch}\n")
    print("| what | seconds per batch | images (examples)/s |\n| --- | --- | --- |")
    print(f"| GAN generation (text encoding + one forward pass) | {gen_s:.4f} | {args.batch / gen_s:.1f} |")
    print(f"| GAN train step (D and G phases) | {train_s:.3f} | {args.batch / train_s:.1f} |")


if __name__ == "__main__":
    main()
