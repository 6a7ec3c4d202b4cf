"""Image grids with a caption under each image, for sample files people look at."""

from __future__ import annotations

import os
import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 160            # pixels per image side in the grid (images are scaled up without smoothing)
CAPTION_CHARS = 26    # characters per caption line
PAD = 6


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: a fixed bitmap font
        return ImageFont.load_default()


def grid_image(images: np.ndarray | Sequence[np.ndarray], captions: Sequence[str] | None = None,
               columns: int = 4, caption_lines: int = 0) -> Image.Image:
    """A grid of uint8 images [N, S, S, 3] in reading order, each with its (wrapped) caption below it."""
    images = [np.asarray(im, np.uint8) for im in images]
    captions = list(captions or [])
    wrapped = [textwrap.wrap(c, CAPTION_CHARS) for c in captions]
    lines = caption_lines or max((len(w) for w in wrapped), default=0)
    font = _font()
    line_height = 13
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    cell_w, cell_h = CELL + 2 * PAD, CELL + 2 * PAD + lines * line_height
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, image in enumerate(images):
        x, y = (i % columns) * cell_w + PAD, (i // columns) * cell_h + PAD
        canvas.paste(Image.fromarray(image).resize((CELL, CELL), Image.NEAREST), (x, y))
        for j, line in enumerate((wrapped[i] if i < len(wrapped) else [])[:lines]):
            draw.text((x, y + CELL + 2 + j * line_height), line, fill=(0, 0, 0), font=font)
    return canvas


def save_grid(images, captions: Sequence[str] | None, path: str, columns: int = 4) -> str:
    """Writes the grid as PNG (and the captions, one per line, next to it) and returns the PNG's path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid_image(images, captions, columns).save(path)
    if captions:
        with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
            f.write("\n".join(captions) + "\n")
    return path
