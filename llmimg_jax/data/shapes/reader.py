"""Reading a scene back from an image: the project's Shapes checker for generated images.

Per cell: the pixels that differ clearly from the background give the colour (the palette colour whose blend
with the background fits them best: blur and anti-aliasing make such blends); the pixels closer to that colour
than to the background, largest 8-connected component, give the object. Its size and shape are those of the
nearest of the six ideal masks in features: bounding-box side, mass (fill), the taper of the row widths (a
triangle widens downward) and the box corners (set for a square, empty for a circle).
"""

from __future__ import annotations

import functools

import numpy as np

from llmimg_jax.data.shapes.render import check_image_size, shape_mask
from llmimg_jax.data.shapes.scene import Scene, ShapeObject
from llmimg_jax.data.shapes.spec import (BACKGROUNDS, COLOURS, MAX_OBJECTS, SHAPES, SIZES, ShapesError, box_side,
                                         cell_span)

_PALETTE = np.array(list(COLOURS.values()), np.float64)
_PALETTE_NAMES = list(COLOURS)
# Feature weights (side, mass, taper, corners): mass tells squares from circles best under blur, the binary
# corners least.
_WEIGHTS = np.array([1.0, 4.0, 1.0, 0.5])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a small boolean mask (label propagation by 3x3 max)."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        padded = np.pad(labels, 1)
        grown = np.max([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
        grown = np.where(mask, grown, 0)
        if np.array_equal(grown, labels):
            break
        labels = grown
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[np.argmax(counts)] if len(ids) else mask


def _features(mask: np.ndarray, mass: float, unit: int) -> np.ndarray:
    """Features of one object, lengths in units of the large box side: the side of its cropped mask, its mass
    (coverage summed, so blur keeps it) over unit², the mean width of the top half of the crop over the bottom
    half's (a triangle tapers upward), and the share of the crop's 4 corners that are set."""
    h = mask.shape[0]
    widths = mask.sum(axis=1).astype(np.float64)
    half = max(h // 2, 1)
    taper = widths[:half].mean() / max(widths[-half:].mean(), 1e-6)
    corners = mask[[0, 0, -1, -1], [0, -1, 0, -1]].mean()
    return _WEIGHTS * np.array([max(mask.shape) / unit, mass / unit ** 2, taper, corners])


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


@functools.lru_cache(maxsize=None)
def _templates(S: int) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The (shape, size) pairs and [6, 4] features of their ideal masks at image size S."""
    pairs, rows = [], []
    for size in SIZES:
        for shape in SHAPES:
            mask = shape_mask(shape, box_side(size, S))
            r0, r1, c0, c1 = _crop_box(mask)
            pairs.append((shape, size))
            rows.append(_features(mask[r0:r1, c0:c1], float(mask.sum()), box_side("large", S)))
    return pairs, np.stack(rows)


def _nearest_colour(pixels: np.ndarray, bg: np.ndarray) -> int:
    """Palette index whose segment background -> colour passes nearest the pixels (blends lie on it)."""
    d = pixels - bg                                           # [N, 3]
    direction = _PALETTE - bg                                 # [K, 3]
    t = np.clip(d @ direction.T / np.sum(direction ** 2, axis=-1), 0.0, 1.0)  # [N, K]
    residual = d[:, None, :] - t[..., None] * direction[None]  # [N, K, 3]
    return int(np.argmin(np.sum(residual ** 2, axis=(0, 2))))


def read_image(image: np.ndarray, min_pixels: int | None = None) -> Scene:
    """The scene in a uint8 [S, S, 3] image. Cells whose object has fewer than `min_pixels` pixels (default:
    a fifth of a small box) count as empty. ShapesError when no object or more than 3 are found."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
        raise ShapesError(f"expected an [S, S, 3] image, got shape {image.shape}; pass one RGB image")
    S = image.shape[0]
    check_image_size(S)
    pixels = image.astype(np.float64)
    min_pixels = max(3, box_side("small", S) ** 2 // 5) if min_pixels is None else min_pixels

    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = min(BACKGROUNDS, key=lambda b: np.linalg.norm(np.median(border, axis=0) - BACKGROUNDS[b]))
    bg = np.array(BACKGROUNDS[background], np.float64)
    bg_dist = np.linalg.norm(pixels - bg, axis=-1)
    # 'Clearly not background': well beyond noise, below half the distance of any palette colour.
    candidate = bg_dist > 0.4 * np.linalg.norm(_PALETTE - bg, axis=-1).min()

    objects = []
    for row in range(3):
        for col in range(3):
            (y0, y1), (x0, x1) = cell_span(row, S), cell_span(col, S)
            cand = candidate[y0:y1, x0:x1]
            if cand.sum() < min_pixels:
                continue
            cell = pixels[y0:y1, x0:x1]
            k = _nearest_colour(cell[cand], bg)
            colour = _PALETTE[k]
            colour_dist = np.linalg.norm(cell - colour, axis=-1)
            mask = _largest_component(colour_dist < bg_dist[y0:y1, x0:x1])
            if mask.sum() < min_pixels:
                continue
            r0, r1, c0, c1 = _crop_box(mask)
            # Coverage of each pixel along background -> colour; blur and anti-aliasing keep its sum.
            near = cell[max(r0 - 1, 0):r1 + 1, max(c0 - 1, 0):c1 + 1]
            mass = float(((near - bg) @ (colour - bg)).sum() / np.sum((colour - bg) ** 2))
            pairs, templates = _templates(S)
            features = _features(mask[r0:r1, c0:c1], mass, box_side("large", S))
            shape, size = pairs[int(np.argmin(np.linalg.norm(templates - features, axis=-1)))]
            objects.append(ShapeObject(shape=shape, colour=_PALETTE_NAMES[k], size=size, row=row, col=col))
    if not 1 <= len(objects) <= MAX_OBJECTS:
        # A generated image can fail this way; the caller scores it as not matching any scene.
        raise ShapesError(f"found {len(objects)} objects in the image; a Shapes image holds 1 to {MAX_OBJECTS}")
    return Scene(objects=tuple(objects), background=background)
