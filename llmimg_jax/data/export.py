"""Exporting examples of a split to a folder: PNG images, their descriptions, and every other field as JSON lines."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from llmimg_jax.errors import UserError


def export_split(source: Sequence[dict[str, Any]], out_dir: str, num: int) -> list[str]:
    """Writes examples 0..num-1 of `source` to `out_dir`: `00000.png`, ..., `descriptions.txt` (line i = the
    description of image i) and `examples.jsonl` (line i = every field of example i but the image, plus `file`).
    Returns the image file names."""
    if not 1 <= num <= len(source):
        raise UserError(f"cannot export {num} examples from a split of {len(source)}; pass --num 1..{len(source)}")
    os.makedirs(out_dir, exist_ok=True)
    files = []
    with open(os.path.join(out_dir, "descriptions.txt"), "w") as descriptions, \
            open(os.path.join(out_dir, "examples.jsonl"), "w") as examples:
        for i in range(num):
            example = source[i]
            image = np.asarray(example["image"])
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise UserError(f"example {i}: expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
            name = f"{i:05d}.png"
            Image.fromarray(image).save(os.path.join(out_dir, name))
            descriptions.write(example["description"] + "\n")
            fields = {k: v for k, v in example.items() if k != "image"}
            examples.write(json.dumps({**fields, "file": name}) + "\n")
            files.append(name)
    return files
