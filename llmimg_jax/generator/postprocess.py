"""Optional post-processing of generated uint8 images: impulse denoising, then a percentile contrast stretch.

Denoising replaces only *isolated* pixels (fewer than `min_similar` of their 8 neighbours within `tolerance`)
by the 3x3 median of their neighbourhood: salt-and-pepper specks go, while the edges, corners and thin tips of
drawn objects (each pixel there has several like neighbours) stay; a plain median filter would round them off.

The contrast stretch widens an image whose values (the [low, high] percentiles over all channels together, so
hues are kept) span less than `min_range` to span `min_range`, with the gain capped at `max_gain` so a nearly
flat image is not blown up; the extra room is shared out in proportion to the slack below and above, so a black
or white background stays black or white. An image that already spans `min_range` is left as it is: drawn
colours are then exact, and brightening them would change what a reader measures (a Shapes object's mass).
The defaults take the minimum and maximum (percentiles 0 and 100): after denoising these are real pixels, and
in an image that is mostly background a 1st/99th percentile would cut off the objects themselves.
"""

from __future__ import annotations

import numpy as np

from llmimg_jax.errors import UserError


def _check(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"post-processing takes uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    return images


def _neighbours(x: np.ndarray, pad_value: float | None) -> np.ndarray:
    """The 8 neighbours of every pixel, [8, N, H, W, C]; outside the image they read `pad_value` (None: the
    nearest edge pixel)."""
    h, w = x.shape[1:3]
    mode = {"mode": "edge"} if pad_value is None else {"mode": "constant", "constant_values": pad_value}
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), **mode)
    return np.stack([p[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)])


def denoise(images: np.ndarray, *, tolerance: int = 64, min_similar: int = 2) -> np.ndarray:
    """Isolated pixels -> the per-channel 3x3 median (edges replicated); the rest unchanged. uint8 [N, H, W, 3]."""
    images = _check(images)
    x = images.astype(np.float64)
    # Outside the image nothing is similar: a speck in a corner is as isolated as one inside.
    similar = (np.abs(_neighbours(x, np.inf) - x).max(axis=-1) <= tolerance).sum(axis=0)
    isolated = similar < min_similar
    window = np.concatenate([_neighbours(x, None), x[None]])
    median = np.round(np.median(window, axis=0)).astype(np.uint8)
    return np.where(isolated[..., None], median, images)


def stretch_contrast(images: np.ndarray, *, low: float = 0.0, high: float = 100.0, min_range: float = 192.0,
                     max_gain: float = 2.0) -> np.ndarray:
    """Per image: a `low`..`high` percentile range narrower than `min_range` widened to it (gain <= max_gain)."""
    images = _check(images)
    out = images.copy()
    for i, image in enumerate(images):
        x = image.astype(np.float64)
        lo, hi = np.percentile(x, [low, high])
        width = min(max(hi - lo, min(min_range, 255.0)), (hi - lo) * max_gain)
        if width <= hi - lo:  # contrast enough already, or a flat image (nothing to stretch)
            continue
        # lo + (255 - hi) > 0 here, since the range is narrower than 255.
        new_lo = lo * (255.0 - width) / (lo + 255.0 - hi)
        out[i] = np.clip(np.round(new_lo + (x - lo) * (width / (hi - lo))), 0, 255).astype(np.uint8)
    return out


def postprocess_images(images: np.ndarray) -> np.ndarray:
    """Denoise, then stretch the contrast; uint8 [N, H, W, 3] -> same."""
    return stretch_contrast(denoise(images))
