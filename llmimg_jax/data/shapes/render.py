"""Rendering a scene: box placement (centred, jittered, clipped) and hard-edged shape masks."""

from __future__ import annotations

import functools

import numpy as np

from llmimg_jax.data.shapes.scene import Scene
from llmimg_jax.data.shapes.spec import BACKGROUNDS, COLOURS, ShapesError, box_side, cell_span, jitter_max

Box = tuple[int, int, int]  # (x0, y0, side): the box covers columns x0..x0+side-1, rows y0..y0+side-1


@functools.lru_cache(maxsize=None)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean [side, side] mask of a shape in its box, sampled at pixel centres."""
    c = np.arange(side, dtype=np.float64) + 0.5  # pixel centres in box coordinates
    y, x = c[:, None], c[None, :]
    half = side / 2
    if shape == "square":
        mask = np.ones((side, side), bool)
    elif shape == "circle":  # the inscribed disc
        mask = (x - half) ** 2 + (y - half) ** 2 <= half ** 2
    elif shape == "triangle":  # apex at (half, 0), base along y = side: half-width grows as y / 2
        mask = np.abs(x - half) <= y / 2
    else:
        raise ShapesError(f"unknown shape '{shape}'")
    mask.setflags(write=False)
    return mask


def check_image_size(S: int) -> None:
    """A large box plus a 1-pixel margin each side must fit the smallest cell."""
    if S < 3 or cell_span(0, S)[1] < box_side("large", S) + 2:
        raise ShapesError(f"image size {S} is too small for the Shapes world; use 32 or more")


def place(scene: Scene, S: int, rng: np.random.Generator) -> list[Box]:
    """Each object's box: centred in its cell, jittered by an integer per axis, clipped 1 px inside the cell."""
    check_image_size(S)
    J = jitter_max(S)
    boxes = []
    for obj in scene.objects:
        side = box_side(obj.size, S)
        origin = []
        for c in (obj.col, obj.row):  # x then y
            lo, hi = cell_span(c, S)
            start = lo + (hi - lo - side) // 2 + int(rng.integers(-J, J + 1))
            origin.append(min(max(start, lo + 1), hi - 1 - side))
        boxes.append((origin[0], origin[1], side))
    return boxes


def render(scene: Scene, S: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [S, S, 3] image of the scene: flat background, one flat colour per object."""
    image = np.empty((S, S, 3), np.uint8)
    image[:] = BACKGROUNDS[scene.background]
    for obj, (x0, y0, side) in zip(scene.objects, place(scene, S, rng)):
        image[y0:y0 + side, x0:x0 + side][shape_mask(obj.shape, side)] = COLOURS[obj.colour]
    return image

