"""Diffusion speed vs diffusers: train examples/s and DDIM-with-guidance sampling images/s (a thin wrapper of
llmimg_jax/bench/diffusion_vs_diffusers.py and sampling_vs_diffusers.py); prints a markdown table.

    python scripts/bench_diffusion.py [--quick] [--repeats 3]

The full benchmark (`python -m llmimg_jax.bench`) includes these rows."""

from __future__ import annotations

import argparse

from llmimg_jax.bench import diffusion_vs_diffusers, report, sampling_vs_diffusers
from llmimg_jax.bench.__main__ import MODES
from llmimg_jax.generator.diffusion.unet import unet_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the benchmark's --quick sizes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    mode = MODES["quick" if args.quick else "full"]
    rows = diffusion_vs_diffusers.run(mode["train"], args.repeats)
    preset, size, batch, steps = mode["sample"]
    rows += sampling_vs_diffusers.run(unet_config(preset), preset, size, batch, steps, max(1, args.repeats // 2))
    print(report.table(rows))


if __name__ == "__main__":
    main()
