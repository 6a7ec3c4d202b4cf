"""Constants and geometry of the Shapes world (see SPEC.md, the normative text)."""

from __future__ import annotations

import math

from llmimg_jax.errors import UserError

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 70, 235),
    "yellow": (235, 215, 30),
    "magenta": (215, 40, 215),
    "cyan": (30, 210, 215),
}
SIZES = ("small", "large")
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255)}
MAX_OBJECTS = 3

# Text name of each cell, keyed by (row, col); the middle row's name drops 'middle'.
CELL_NAMES = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
CELLS_BY_NAME = {name: cell for cell, name in CELL_NAMES.items()}
ALL_CELLS = tuple(CELL_NAMES)  # reading order


class ShapesError(UserError, ValueError):
    """Text or a scene outside the Shapes world (a ValueError, and a UserError for the command line)."""


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even; the spec's round() is the usual half-up one.
    return int(math.floor(x + 0.5))


def cell_span(c: int, S: int) -> tuple[int, int]:
    """Pixels [lo, hi) of row or column index `c` (0..2) on an S-pixel canvas."""
    return (c * S) // 3, ((c + 1) * S) // 3


def box_side(size: str, S: int) -> int:
    """Bounding-box side in pixels of a `small` or `large` object."""
    if size not in SIZES:
        raise ShapesError(f"unknown size '{size}'; use one of {', '.join(SIZES)}")
    return _round_half_up((0.16 if size == "small" else 0.25) * S)


def jitter_max(S: int) -> int:
    """Largest absolute jitter (pixels, per axis) of a box around its cell centre."""
    return _round_half_up(S / 32)


def cell_phrase(row: int, col: int) -> str:
    """`in the center` for the middle cell, `at the {cell}` otherwise."""
    name = CELL_NAMES[(row, col)]
    return f"in the {name}" if name == "center" else f"at the {name}"
