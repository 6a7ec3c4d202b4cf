"""The scene model: objects with attributes and cells, a background; JSON forms; random scenes."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from llmimg_jax.data.shapes.spec import (ALL_CELLS, BACKGROUNDS, COLOURS, MAX_OBJECTS, SHAPES, SIZES,
                                         ShapesError)

ATTRIBUTES = ("size", "colour", "shape")  # the order they take in text


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    row: int
    col: int

    def __post_init__(self):
        for value, allowed, what in ((self.shape, SHAPES, "shape"), (self.colour, tuple(COLOURS), "colour"),
                                     (self.size, SIZES, "size")):
            if value not in allowed:
                raise ShapesError(f"unknown {what} '{value}'; use one of {', '.join(allowed)}")
        if self.row not in (0, 1, 2) or self.col not in (0, 1, 2):
            raise ShapesError(f"cell ({self.row}, {self.col}) is outside the 3x3 grid; row and col are 0, 1 or 2")

    @property
    def cell(self) -> tuple[int, int]:
        return self.row, self.col

    def to_json(self) -> dict[str, Any]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "row": self.row, "col": self.col}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ShapeObject":
        return cls(shape=str(d["shape"]), colour=str(d["colour"]), size=str(d["size"]),
                   row=int(d["row"]), col=int(d["col"]))


@dataclasses.dataclass(frozen=True)
class Scene:
    """1 to 3 objects in distinct cells, kept in reading order (top row first, left to right)."""
    objects: tuple[ShapeObject, ...]
    background: str

    def __post_init__(self):
        objects = tuple(sorted(self.objects, key=lambda o: o.cell))
        object.__setattr__(self, "objects", objects)
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise ShapesError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(objects)}")
        if len({o.cell for o in objects}) != len(objects):
            raise ShapesError("two objects share a cell; each object needs its own cell")
        if self.background not in BACKGROUNDS:
            raise ShapesError(f"unknown background '{self.background}'; use one of {', '.join(BACKGROUNDS)}")

    def object_at(self, row: int, col: int) -> ShapeObject | None:
        return next((o for o in self.objects if o.cell == (row, col)), None)

    def to_json(self) -> dict[str, Any]:
        return {"objects": [o.to_json() for o in self.objects], "background": self.background}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Scene":
        return cls(objects=tuple(ShapeObject.from_json(o) for o in d["objects"]), background=str(d["background"]))


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One element of `options`, uniformly (a plain Python value, unlike rng.choice)."""
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, num_objects: int | None = None, *,
                 cells: Sequence[tuple[int, int]] | None = None,
                 fixed: Mapping[str, str] | None = None, background: str | None = None) -> Scene:
    """A uniformly random scene; `cells` fixes the cells, `fixed` attributes shared by every object."""
    if cells is None:
        n = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else num_objects
        cells = [ALL_CELLS[i] for i in rng.permutation(len(ALL_CELLS))[:n]]
    fixed = dict(fixed or {})
    objects = []
    for row, col in cells:
        attrs = {"shape": pick(rng, SHAPES), "colour": pick(rng, tuple(COLOURS)), "size": pick(rng, SIZES)}
        attrs.update(fixed)
        objects.append(ShapeObject(row=row, col=col, **attrs))
    return Scene(objects=tuple(objects), background=background or pick(rng, tuple(BACKGROUNDS)))
