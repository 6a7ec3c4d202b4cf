"""Canonical descriptions: `describe(scene)` and its strict inverse `parse_description(text)`."""

from __future__ import annotations

import re

import numpy as np

from llmimg_jax.data.shapes.scene import Scene, ShapeObject
from llmimg_jax.data.shapes.spec import (BACKGROUNDS, CELL_NAMES, CELLS_BY_NAME, COLOURS, SHAPES, SIZES, ShapesError,
                                         cell_phrase)


def _alternatives(words) -> str:
    # Longest first, so that 'top left' is tried before 'top'.
    return "|".join(sorted(words, key=len, reverse=True))


SIZE_RE = _alternatives(SIZES)
COLOUR_RE = _alternatives(COLOURS)
SHAPE_RE = _alternatives(SHAPES)
BACKGROUND_RE = _alternatives(BACKGROUNDS)
_OTHER_CELLS = [name for name in CELL_NAMES.values() if name != "center"]
# `in the center`, `at the {cell}` for the other eight cells (the group captures the cell name).
CELL_PHRASE_RE = rf"(?:in the (center)|at the ({_alternatives(_OTHER_CELLS)}))"
_OBJECT = re.compile(rf"a ({SIZE_RE}) ({COLOUR_RE}) ({SHAPE_RE}) {CELL_PHRASE_RE}")
_DESCRIPTION = re.compile(rf"(.+), on a ({BACKGROUND_RE}) background")
_BACKGROUND_PHRASE = re.compile(rf"\bon a ({BACKGROUND_RE}) background\b")
_OBJECT_NAME = re.compile(rf"\ba ({SIZE_RE}) ({COLOUR_RE}) ({SHAPE_RE})\b")


def cell_of(center: str | None, other: str | None) -> tuple[int, int]:
    """(row, col) from the two groups of CELL_PHRASE_RE."""
    return CELLS_BY_NAME[center or other]


def join_phrases(phrases: list[str]) -> str:
    """`A`, `A and B`, `A, B and C`."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def split_phrases(body: str) -> list[str]:
    """Inverse of join_phrases (phrases contain neither ', ' nor ' and ')."""
    head, sep, last = body.rpartition(" and ")
    return head.split(", ") + [last] if sep else [body]


def object_phrase(obj: ShapeObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} {cell_phrase(obj.row, obj.col)}"


def describe(scene: Scene) -> str:
    """The canonical description: every object in reading order, then the background."""
    return join_phrases([object_phrase(o) for o in scene.objects]) + f", on a {scene.background} background"


def swap_background(text: str) -> str:
    """`text` with the background it names ("on a black background") turned into the other one; unchanged when it
    names none. The GAN's hard negatives: a real image with this caption is a mismatch."""
    names = list(BACKGROUNDS)
    return _BACKGROUND_PHRASE.sub(lambda m: f"on a {names[(names.index(m.group(1)) + 1) % len(names)]} background",
                                  text)


def swap_colour(text: str, rng: np.random.Generator) -> str:
    """`text` with the colour of one object it names ("a small red circle"), chosen by `rng`, turned into another
    colour; unchanged when it names none. The GAN's hard negatives, like `swap_background`."""
    found = list(_OBJECT_NAME.finditer(text))
    if not found:
        return text
    m = found[int(rng.integers(len(found)))]
    colour = str(rng.choice([c for c in COLOURS if c != m.group(2)]))
    return text[:m.start(2)] + colour + text[m.end(2):]


def parse_description(text: str) -> Scene:
    """The scene a canonical description names; ShapesError (a ValueError) for text outside the grammar."""
    m = _DESCRIPTION.fullmatch(text.strip())
    if not m:
        raise ShapesError(f"description {text!r} does not end with ', on a black background' or "
                          "', on a white background'; write it in the canonical grammar")
    objects = []
    for phrase in split_phrases(m.group(1)):
        om = _OBJECT.fullmatch(phrase)
        if not om:
            raise ShapesError(f"object phrase {phrase!r} is not 'a {{size}} {{colour}} {{shape}} at the {{cell}}' "
                              "(or 'in the center'); fix the phrase")
        row, col = cell_of(om.group(4), om.group(5))
        objects.append(ShapeObject(shape=om.group(3), colour=om.group(2), size=om.group(1), row=row, col=col))
    cells = [o.cell for o in objects]
    if cells != sorted(cells) and len(set(cells)) == len(cells):
        raise ShapesError(f"description {text!r} does not list its objects in reading order "
                          "(top row first, left to right); reorder them")
    return Scene(objects=tuple(objects), background=m.group(2))
