"""Image helpers shared by the example sources: decode to RGB uint8, resize the shorter side, center-crop."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> uint8 [H, W, 3] (gray repeated, alpha dropped)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W, 1|3|4], got shape {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[:, :, :3]


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) -> uint8 [H, W, 3]. Raises on corrupt data."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def load_image_file(path: str) -> np.ndarray:
    """Reads an image file fully (so truncated files fail here, not later) -> uint8 [H, W, 3]."""
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes the shorter side to `size` and center-crops to [size, size, 3] uint8.

    Downscaling uses area averaging (box filter, no aliasing); upscaling uses bicubic. An image that is already
    size x size is returned unchanged, so procedurally rendered images keep their exact pixels.
    """
    image = to_rgb(image)
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    # The shorter side becomes exactly `size`; the longer one is rounded, never below `size`.
    new_h = size if h <= w else max(size, round(h * scale))
    new_w = size if w <= h else max(size, round(w * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=resample))
    top = (new_h - size) // 2
    left = (new_w - size) // 2
    return resized[top:top + size, left:left + size]
