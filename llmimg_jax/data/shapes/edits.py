"""Edits through language: `make the red circle blue`, `move the square to the top left`, ... (SPEC.md, Edits)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from llmimg_jax.data.shapes.grammar import CELL_PHRASE_RE, COLOUR_RE, SHAPE_RE, SIZE_RE, cell_of
from llmimg_jax.data.shapes.scene import Scene, ShapeObject, pick
from llmimg_jax.data.shapes.spec import (ALL_CELLS, CELL_NAMES, CELLS_BY_NAME, COLOURS, MAX_OBJECTS, SHAPES,
                                         SIZES, ShapesError, cell_phrase)

FORMS = ("colour", "size", "shape", "move", "remove", "add")
_OBJECT = re.compile(rf"the (?:({COLOUR_RE}) ({SHAPE_RE}|shape)|({SHAPE_RE}))")
_CELL_NAME_RE = "|".join(sorted(CELLS_BY_NAME, key=len, reverse=True))
_FORMS = [
    ("colour", re.compile(rf"make (the .+) ({COLOUR_RE})")),
    ("size", re.compile(rf"make (the .+) ({SIZE_RE})")),
    ("shape", re.compile(rf"turn (the .+) into a ({SHAPE_RE})")),
    ("move", re.compile(rf"move (the .+) to the ({_CELL_NAME_RE})")),
    ("remove", re.compile(r"remove (the .+)")),
    ("add", re.compile(rf"add a ({SIZE_RE}) ({COLOUR_RE}) ({SHAPE_RE}) {CELL_PHRASE_RE}")),
]


@dataclasses.dataclass(frozen=True)
class Edit:
    form: str                     # one of FORMS
    colour: str | None = None     # the target's colour, as named (None: not named)
    shape: str | None = None      # the target's shape, as named
    value: str | None = None      # new colour / size / shape
    cell: tuple[int, int] | None = None  # destination of move / add
    added: ShapeObject | None = None


def parse_edit(text: str) -> Edit:
    """The edit a text names; ShapesError (a ValueError) for text outside the six forms."""
    text = text.strip()
    for form, pattern in _FORMS:
        if not (m := pattern.fullmatch(text)):
            continue
        if form == "add":
            row, col = cell_of(m.group(4), m.group(5))
            obj = ShapeObject(shape=m.group(3), colour=m.group(2), size=m.group(1), row=row, col=col)
            return Edit("add", cell=obj.cell, added=obj)
        if not (om := _OBJECT.fullmatch(m.group(1))):
            raise ShapesError(f"edit {text!r}: '{m.group(1)}' does not name an object by colour and/or shape "
                              "(like 'the red circle', 'the square', 'the red shape')")
        colour, shape = om.group(1), om.group(3) or (None if om.group(2) == "shape" else om.group(2))
        value = m.group(2) if form in ("colour", "size", "shape") else None
        cell = CELLS_BY_NAME[m.group(2)] if form == "move" else None
        return Edit(form, colour=colour, shape=shape, value=value, cell=cell)
    raise ShapesError(f"edit {text!r} is not one of: make the OBJECT COLOUR|SIZE, turn the OBJECT into a SHAPE, "
                      "move the OBJECT to the CELL, remove the OBJECT, add a SIZE COLOUR SHAPE at the CELL")


def _target(scene: Scene, edit: Edit, text: str) -> ShapeObject:
    found = [o for o in scene.objects
             if edit.colour in (None, o.colour) and edit.shape in (None, o.shape)]
    if len(found) != 1:
        what = " ".join(w for w in (edit.colour, edit.shape) if w) + ("" if edit.shape else " shape")
        raise ShapesError(f"edit {text!r}: the scene holds {len(found)} {what}(s), the edit needs exactly one; "
                          "name the object by both colour and shape")
    return found[0]


def apply_edit(scene: Scene, text: str) -> Scene:
    """The scene with the one change `text` names; ShapesError when the edit does not apply to this scene."""
    edit = parse_edit(text)
    others = [o for o in scene.objects]
    if edit.form == "add":
        if len(scene.objects) >= MAX_OBJECTS:
            raise ShapesError(f"edit {text!r}: the scene already holds {MAX_OBJECTS} objects; remove one first")
        if scene.object_at(*edit.cell):
            raise ShapesError(f"edit {text!r}: the {CELL_NAMES[edit.cell]} cell is occupied; pick a free cell")
        return Scene(objects=tuple(others + [edit.added]), background=scene.background)
    target = _target(scene, edit, text)
    others.remove(target)
    if edit.form == "remove":
        if not others:
            raise ShapesError(f"edit {text!r} would remove the last object; a scene keeps at least one")
        return Scene(objects=tuple(others), background=scene.background)
    if edit.form == "move":
        if edit.cell == target.cell:
            raise ShapesError(f"edit {text!r}: the object is already at the {CELL_NAMES[edit.cell]}")
        if scene.object_at(*edit.cell):
            raise ShapesError(f"edit {text!r}: the {CELL_NAMES[edit.cell]} cell is occupied; pick a free cell")
        changed = dataclasses.replace(target, row=edit.cell[0], col=edit.cell[1])
    else:
        if getattr(target, edit.form) == edit.value:
            raise ShapesError(f"edit {text!r}: the object's {edit.form} is already {edit.value}")
        changed = dataclasses.replace(target, **{edit.form: edit.value})
    return Scene(objects=tuple(others + [changed]), background=scene.background)


def _references(scene: Scene, obj: ShapeObject) -> list[str]:
    """The ways to name `obj` that match no other object of the scene."""
    refs = []
    for colour, shape in ((None, obj.shape), (obj.colour, None), (obj.colour, obj.shape)):
        if sum(colour in (None, o.colour) and shape in (None, o.shape) for o in scene.objects) == 1:
            refs.append(f"the {colour} {shape}" if colour and shape else f"the {shape}" if shape
                        else f"the {colour} shape")
    return refs


def sample_edit(scene: Scene, rng: np.random.Generator) -> tuple[str, Scene]:
    """A random valid edit (form drawn uniformly among those that apply) and the edited scene."""
    free = [c for c in ALL_CELLS if scene.object_at(*c) is None]
    candidates = {form: [] for form in FORMS}
    for obj in scene.objects:
        for ref in _references(scene, obj):
            candidates["colour"] += [f"make {ref} {c}" for c in COLOURS if c != obj.colour]
            candidates["size"] += [f"make {ref} {s}" for s in SIZES if s != obj.size]
            candidates["shape"] += [f"turn {ref} into a {s}" for s in SHAPES if s != obj.shape]
            candidates["move"] += [f"move {ref} to the {CELL_NAMES[c]}" for c in free]
            if len(scene.objects) > 1:
                candidates["remove"].append(f"remove {ref}")
    if len(scene.objects) < MAX_OBJECTS and free:
        row, col = pick(rng, free)
        candidates["add"].append(f"add a {pick(rng, SIZES)} {pick(rng, tuple(COLOURS))} {pick(rng, SHAPES)} "
                                 f"{cell_phrase(row, col)}")
    forms = [f for f in FORMS if candidates[f]]
    if not forms:
        raise ShapesError("no edit applies to this scene (no object can be named uniquely)")
    text = pick(rng, candidates[pick(rng, forms)])
    return text, apply_edit(scene, text)


def sample_edits(scenes: list[Scene], rng: np.random.Generator) -> list[tuple[int, str, Scene]]:
    """(index, edit, edited scene) for each of `scenes` some edit applies to, drawn as `sample_edit` draws them."""
    drawn = []
    for i, scene in enumerate(scenes):
        try:
            edit, edited = sample_edit(scene, rng)
        except ShapesError:  # e.g. three identical objects and no free cell: no edit can name one of them
            continue
        drawn.append((i, edit, edited))
    return drawn
