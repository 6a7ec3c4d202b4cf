"""The constraint model of instructions: `parse_instruction(text)` and `satisfies(scene, instruction)`.
Free text outside the spec's forms gets a partial check instead: `mentions_hold(text, scene)`.

Every instruction names all the objects of its image, so an instruction is one pattern per object (the
attributes and cell it fixes, None where free), an optional background, and for the relation and row/column
kinds a constraint between the objects' cells.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

from llmimg_jax.data.shapes.grammar import (BACKGROUND_RE, CELL_PHRASE_RE, COLOUR_RE, SHAPE_RE, SIZE_RE, cell_of,
                                            split_phrases)
from llmimg_jax.data.shapes.scene import Scene, ShapeObject
from llmimg_jax.data.shapes.spec import BACKGROUNDS, COLOURS, SHAPES, SIZES, ShapesError

KINDS = ("explicit", "attribute", "count", "relation", "row/column")
# The spec's wording of each relation (objects[0] REL objects[1]) and line; instructions are written in these.
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
LINE_PHRASES = {"row": ("in a row",), "column": ("in a column", "stacked vertically")}
RELATIONS = tuple(RELATION_PHRASES)
LINES = tuple(LINE_PHRASES)
NUMBERS = {"two": 2, "three": 3}


@dataclasses.dataclass(frozen=True)
class ObjectPattern:
    """What an instruction fixes about one object; None = free."""
    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    cell: tuple[int, int] | None = None

    def matches(self, obj: ShapeObject) -> bool:
        return all(want is None or want == have for want, have in
                   ((self.shape, obj.shape), (self.colour, obj.colour), (self.size, obj.size), (self.cell, obj.cell)))

    @property
    def complete(self) -> bool:
        return None not in (self.shape, self.colour, self.size, self.cell)


@dataclasses.dataclass(frozen=True)
class Instruction:
    kind: str
    objects: tuple[ObjectPattern, ...]
    background: str | None = None
    relation: str | None = None  # one of RELATIONS, between objects[0] and objects[1]
    line: str | None = None      # 'row' | 'column': all objects share one row / one column


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """Whether `a relation b` holds between the two objects' cells (relation one of RELATIONS)."""
    return {"left of": a.col < b.col, "right of": a.col > b.col,
            "above": a.row < b.row, "below": a.row > b.row}[relation]


def satisfies(scene: Scene, instruction: Instruction) -> bool:
    """Whether some one-to-one assignment of the scene's objects meets every constraint of the instruction."""
    if instruction.background is not None and scene.background != instruction.background:
        return False
    if len(scene.objects) != len(instruction.objects):
        return False  # the instruction names all the objects: no more, no fewer
    if instruction.line is not None:
        index = 0 if instruction.line == "row" else 1
        if len({o.cell[index] for o in scene.objects}) != 1:
            return False
    for order in itertools.permutations(scene.objects):
        if not all(p.matches(o) for p, o in zip(instruction.objects, order)):
            continue
        if instruction.relation is None or relation_holds(order[0], order[1], instruction.relation):
            return True
    return False


_ATTRIBUTE_WORDS = frozenset(COLOURS) | frozenset(SHAPES) | frozenset(SIZES)
_COUNTS = {**NUMBERS, **{str(n): n for n in NUMBERS.values()}}  # two, three, 2, 3
_NOUN_PHRASE = rf"(?:(?:{SIZE_RE}) )?(?:(?:{COLOUR_RE}) )?(?:{SHAPE_RE}|object|shape|thing)"
_ONE_OBJECT = re.compile(rf"\b(?:a|an|one) {_NOUN_PHRASE}\b")
_SOME_OBJECTS = re.compile(rf"\b({'|'.join(_COUNTS)}) {_NOUN_PHRASE}s\b")


def mentions_hold(text: str, scene: Scene) -> bool:
    """The part of free text that any wording shares: every colour, shape and size word it uses (`circles` counts
    as `circle`) is some object's in the scene, a background word it uses is the scene's background, and, as every
    instruction names all its objects, the scene has as many objects as the text introduces (`a blue square`,
    `an object`: one; `two red circles`, `3 shapes`: that many), when it introduces any. Words of place and
    relation are not checked: free text says those in too many ways."""
    text = text.lower()
    words = {w[:-1] if w[:-1] in SHAPES else w for w in re.findall(r"[a-z]+", text)}
    have = {value for obj in scene.objects for value in (obj.colour, obj.shape, obj.size)}
    backgrounds = words & BACKGROUNDS.keys()
    introduced = len(_ONE_OBJECT.findall(text)) + sum(_COUNTS[n] for n in _SOME_OBJECTS.findall(text))
    return (words & _ATTRIBUTE_WORDS <= have and (not backgrounds or scene.background in backgrounds)
            and introduced in (0, len(scene.objects)))


# ---- parsing ---------------------------------------------------------------------------------------------------
_SINGULAR = re.compile(rf"(?:a(?: ({SIZE_RE}))?(?: ({COLOUR_RE}))? (?:({SHAPE_RE})|shape)"
                       rf"|something(?: ({SIZE_RE}))?(?: ({COLOUR_RE}))?)(?: {CELL_PHRASE_RE})?")
_PLURAL = re.compile(rf"({'|'.join(NUMBERS)})(?: ({SIZE_RE}))?(?: ({COLOUR_RE}))? (?:({SHAPE_RE})s|shapes)"
                     rf"(?: ({'|'.join(p for phrases in LINE_PHRASES.values() for p in phrases)}))?")
_RELATION = re.compile(rf"(.+?) ({'|'.join(RELATION_PHRASES.values())}) (.+)")
_LINE_OF = {p: line for line, phrases in LINE_PHRASES.items() for p in phrases}
_RELATION_OF = {p: relation for relation, p in RELATION_PHRASES.items()}
_BACKGROUND = re.compile(rf"(.+?),? on a ({BACKGROUND_RE}) background")


def _singular(phrase: str, allow_cell: bool) -> ObjectPattern | None:
    m = _SINGULAR.fullmatch(phrase)
    if not m or (not allow_cell and (m.group(6) or m.group(7))):
        return None
    size, colour, shape, size2, colour2, center, other = m.groups()
    cell = cell_of(center, other) if (center or other) else None
    return ObjectPattern(shape=shape, colour=colour or colour2, size=size or size2, cell=cell)


def parse_instruction(text: str) -> Instruction:
    """The constraints an instruction fixes; ShapesError (a ValueError) for text outside the spec's forms."""
    body, background = text.strip(), None
    if m := _BACKGROUND.fullmatch(body):
        body, background = m.group(1), m.group(2)
    if m := _PLURAL.fullmatch(body):
        number, size, colour, shape, line = m.groups()
        pattern = ObjectPattern(shape=shape, colour=colour, size=size)
        kind, line = ("row/column", _LINE_OF[line]) if line else ("count", None)
        return Instruction(kind, (pattern,) * NUMBERS[number], background, line=line)
    if m := _RELATION.fullmatch(body):
        a, b = _singular(m.group(1), allow_cell=False), _singular(m.group(3), allow_cell=False)
        if a is None or b is None:
            raise ShapesError(f"instruction {text!r}: a relation joins two objects without cells, like "
                              "'a red circle to the left of a blue square'; fix the object phrases")
        return Instruction("relation", (a, b), background, relation=_RELATION_OF[m.group(2)])
    patterns = [_singular(p, allow_cell=True) for p in split_phrases(body)]
    if not patterns or None in patterns:
        raise ShapesError(f"instruction {text!r} is not one of the Shapes forms (explicit, attribute, count, "
                          "relation, row/column); see the Instructions section of the Shapes spec")
    if len(patterns) > 3 or len({p.cell for p in patterns if p.cell}) < sum(p.cell is not None for p in patterns):
        raise ShapesError(f"instruction {text!r} names more than 3 objects or one cell twice; "
                          "name at most 3 objects in distinct cells")
    explicit = len(patterns) > 1 or (patterns[0].complete and background is not None)
    return Instruction("explicit" if explicit else "attribute", tuple(patterns), background)


def text_holds(text: str, scene: Scene) -> bool:
    """Whether `scene` satisfies `text`: in full for an instruction of the spec's forms, in part
    (`mentions_hold`) for free text."""
    try:
        instruction = parse_instruction(text)
    except ShapesError:
        return mentions_hold(text, scene)
    return satisfies(scene, instruction)
