"""`llmimg describe`: one description per image with a trained captioner."""

from __future__ import annotations

import argparse
import os

import numpy as np

from llmimg_jax.cli.prompts import write_lines
from llmimg_jax.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("describe", help="describe images with a trained captioner",
                            description="Prints one description per image, in order (or writes them to --out).")
    p.add_argument("--workdir", required=True, help="workdir of a captioner run (configs/shapes_captioner.py)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--out", help="write one description per line to this file instead of printing")
    p.add_argument("--use-ema", action="store_true", help="describe with the EMA params")
    p.set_defaults(run=run)


def read_images(paths: list[str], size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]; a missing, unreadable or non-image file is a one-line UserError."""
    from llmimg_jax.data.images import load_image_file, resize_and_center_crop

    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"image '{path}' not found; check the path")
        try:
            image = load_image_file(path)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable or non-image files
            raise UserError(f"'{path}' is not a readable image ({type(e).__name__}); pass PNG or JPEG files") from None
        images.append(resize_and_center_crop(image, size))
    return np.stack(images)


def run(args: argparse.Namespace) -> None:
    from llmimg_jax.text.captioner_task import image_size, load_captioner

    images = read_images(args.images, image_size(args.workdir))  # bad files fail before the model loads
    descriptions = load_captioner(args.workdir, use_ema=args.use_ema).describe(images)
    write_lines(descriptions, args.out, "descriptions")
