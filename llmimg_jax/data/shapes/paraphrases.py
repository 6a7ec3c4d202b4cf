"""Hand-written paraphrases of the instruction kinds: wordings the training data never uses.

The test set of the "understanding" check: does a model follow an instruction worded outside the spec's
templates? Every paraphrase comes with the `Instruction` (constraint) it means, built as `parse_instruction` would
build it for the spec's wording, and a scene that satisfies it, so `satisfies` scores generated images as usual.
No training code imports this module; none of its texts parses as a spec instruction.

Templates are format strings over these slots:
  {obj}, {a}, {b}  an object: `a [size] [colour] {shape|object}`, plus where it is when the instruction says so
  {objects}        every object of an explicit instruction, complete
  {n}, {N}         the count as a word (two, three) or a digit
  {things}         the plural noun: `[size] [colour] {shapes|objects}`
  {line}, {rel}    the row/column or the relation, in this module's words
  {bg}             the background clause ('' when the instruction leaves the background free)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from llmimg_jax.data.shapes.constraints import KINDS, RELATIONS, Instruction, ObjectPattern, relation_holds
from llmimg_jax.data.shapes.scene import ATTRIBUTES, Scene, ShapeObject, pick, sample_scene
from llmimg_jax.data.shapes.spec import COLOURS, SHAPES, SIZES, ShapesError

TEMPLATES: dict[str, tuple[str, ...]] = {
    "explicit": (
        "Draw {objects}{bg}.",
        "Please paint {objects}{bg}.",
        "I'd like a picture with {objects}{bg}.",
        "Make an image showing {objects}{bg}.",
        "Render {objects}{bg}.",
        "Show me {objects}{bg}.",
        "Can you draw {objects}{bg}?",
        "Create a scene containing {objects}{bg}.",
        "Put {objects}{bg}.",
        "The picture should contain {objects}{bg}.",
        "Sketch {objects}{bg}.",
    ),
    "attribute": (
        "Draw {obj}{bg}.",
        "I want to see {obj}{bg}.",
        "Paint {obj}{bg}, nothing else.",
        "Just {obj}{bg}, please.",
        "Make a picture of {obj}{bg}.",
        "Show {obj}{bg}.",
        "Can I get {obj}{bg}?",
        "Generate an image with {obj}{bg}.",
        "There should be {obj}{bg}.",
        "One single item: {obj}{bg}.",
        "Place {obj} on the canvas{bg}.",
    ),
    "count": (
        "Draw {n} {things}{bg}.",
        "I need exactly {N} {things}{bg}.",
        "Paint {n} {things}{bg} and nothing more.",
        "Show {N} {things}{bg}.",
        "The image has {n} {things} in it{bg}.",
        "Make a picture with {N} {things}{bg}.",
        "Put {n} {things} anywhere{bg}.",
        "Can you draw {n} {things}{bg}?",
        "Count them: {N} {things}{bg}.",
        "Generate {n} {things}{bg}, no more, no fewer.",
        "A picture of {N} {things}{bg}.",
    ),
    "relation": (
        "Draw {a} {rel} {b}{bg}.",
        "Put {a} {rel} {b}{bg}.",
        "Place {a} so that it is {rel} {b}{bg}.",
        "I want {a} {rel} {b}{bg}.",
        "Show {a} sitting {rel} {b}{bg}.",
        "Paint {b}, and {a} {rel} it{bg}.",
        "Make a picture where {a} is {rel} {b}{bg}.",
        "Can you draw {a} {rel} {b}{bg}?",
        "There is {a} {rel} {b}{bg}.",
        "Position {a} {rel} {b}{bg}.",
        "Generate {a} and {b}, with the first one {rel} the second{bg}.",
    ),
    "row/column": (
        "Draw {n} {things} {line}{bg}.",
        "Arrange {N} {things} {line}{bg}.",
        "Set out {n} {things} {line}{bg}.",
        "Put {N} {things} {line}{bg}.",
        "I want {n} {things} to be {line}{bg}.",
        "Show {n} {things} {line}{bg}.",
        "Paint {N} {things}, {line}{bg}.",
        "Make {n} {things} {line}{bg}.",
        "Can you place {n} {things} {line}{bg}?",
        "A picture of {N} {things} {line}{bg}.",
        "Generate an image of {n} {things} {line}{bg}.",
    ),
}

# This module's words for cells, lines, relations and backgrounds (the spec says `at the top left`, `in a row`,
# `to the left of`, `on a black background`).
CELL_WORDS = {
    (0, 0): "in the upper-left corner", (0, 1): "in the middle of the top edge", (0, 2): "in the upper-right corner",
    (1, 0): "in the middle of the left edge", (1, 1): "in the very middle", (1, 2): "in the middle of the right edge",
    (2, 0): "in the lower-left corner", (2, 1): "in the middle of the bottom edge", (2, 2): "in the lower-right corner",
}
LINE_WORDS = {
    "row": ("side by side", "in one horizontal line", "lined up horizontally", "along a horizontal line",
            "level with each other"),
    "column": ("one atop another", "in one vertical line", "lined up vertically", "along a vertical line",
               "in a vertical stack"),
}
RELATION_WORDS = {
    "left of": ("on the left side of", "further left than"),
    "right of": ("on the right side of", "further right than"),
    "above": ("higher up than", "positioned higher than"),
    "below": ("lower down than", "beneath"),
}
BACKGROUND_WORDS = (", against a {} backdrop", ", with a {} background", ", over a {} background", ", on a {} canvas")
NUMBER_WORDS = {2: "two", 3: "three"}
_VALUES = {"size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES}
_BACKGROUND_P = 0.5  # how often an instruction that may leave the background free names it


@dataclasses.dataclass(frozen=True)
class Paraphrase:
    kind: str
    template: str
    text: str
    instruction: Instruction  # the constraint the text means
    scene: Scene              # one scene that satisfies it


def _noun(pattern: ObjectPattern) -> str:
    words = [w for w in (pattern.size, pattern.colour) if w] + [pattern.shape or "object"]
    text = ("an " if words[0] == "object" else "a ") + " ".join(words)
    return text + (" " + CELL_WORDS[pattern.cell] if pattern.cell else "")


def _things(pattern: ObjectPattern) -> str:
    return " ".join([w for w in (pattern.size, pattern.colour) if w] + [(pattern.shape or "object") + "s"])


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " as well as " + phrases[-1]


def _pattern(obj: ShapeObject, named) -> ObjectPattern:
    return ObjectPattern(**{a: (obj.cell if a == "cell" else getattr(obj, a)) for a in named})


def _subset(rng: np.random.Generator, items) -> list:
    while True:
        kept = [x for x in items if rng.random() < 0.5]
        if kept:
            return kept


def _background(rng: np.random.Generator, scene: Scene, always: bool = False) -> str | None:
    return scene.background if always or rng.random() < _BACKGROUND_P else None


def _instruction(kind: str, rng: np.random.Generator) -> tuple[Instruction, Scene]:
    """A random scene that fits `kind` and the instruction (constraint) a paraphrase of that kind states."""
    if kind == "explicit":
        scene = sample_scene(rng)
        patterns = tuple(_pattern(o, ("size", "colour", "shape", "cell")) for o in scene.objects)
        return Instruction(kind, patterns, scene.background), scene
    if kind == "attribute":
        scene = sample_scene(rng, 1)
        named = _subset(rng, ("size", "colour", "shape", "cell"))
        # All four and the background would be an explicit instruction (as in the spec's generator).
        background = None if len(named) == 4 else _background(rng, scene)
        return Instruction(kind, (_pattern(scene.objects[0], named),), background), scene
    if kind == "relation":
        scene = sample_scene(rng, 2)
        a, b = scene.objects if rng.random() < 0.5 else scene.objects[::-1]
        holds = [r for r in RELATIONS if relation_holds(a, b, r)]
        patterns = tuple(_pattern(o, [x for x, p in zip(ATTRIBUTES, (0.3, 0.8, 0.8)) if rng.random() < p])
                         for o in (a, b))
        return Instruction(kind, patterns, _background(rng, scene), relation=pick(rng, holds)), scene
    named = _subset(rng, ATTRIBUTES)
    fixed = {a: pick(rng, _VALUES[a]) for a in named}
    n = int(rng.integers(2, 4))
    line = None
    if kind == "count":
        scene = sample_scene(rng, n, fixed=fixed)
    else:
        index, others = int(rng.integers(3)), sorted(int(c) for c in rng.permutation(3)[:n])
        line = pick(rng, ("row", "column"))
        scene = sample_scene(rng, cells=[(index, c) if line == "row" else (c, index) for c in others], fixed=fixed)
    pattern = _pattern(scene.objects[0], named)
    return Instruction(kind, (pattern,) * n, _background(rng, scene), line=line), scene


def render(template: str, instruction: Instruction, rng: np.random.Generator) -> str:
    """The template's text for the instruction (the words of lines, relations and backgrounds drawn by rng)."""
    patterns, n = instruction.objects, len(instruction.objects)
    bg = pick(rng, BACKGROUND_WORDS).format(instruction.background) if instruction.background else ""
    slots = dict(bg=bg, n=NUMBER_WORDS.get(n, ""), N=str(n), objects=_join([_noun(p) for p in patterns]),
                 obj=_noun(patterns[0]), things=_things(patterns[0]), a=_noun(patterns[0]),
                 b=_noun(patterns[-1]), line=pick(rng, LINE_WORDS[instruction.line]) if instruction.line else "",
                 rel=pick(rng, RELATION_WORDS[instruction.relation]) if instruction.relation else "")
    return template.format(**slots)


def sample_paraphrase(kind: str, template_index: int, rng: np.random.Generator) -> Paraphrase:
    """One paraphrase of `kind` in its template `template_index`, with its constraint and a scene meeting it."""
    if kind not in TEMPLATES:
        raise ShapesError(f"unknown instruction kind '{kind}'; use one of {', '.join(KINDS)}")
    templates = TEMPLATES[kind]
    if not 0 <= template_index < len(templates):
        raise ShapesError(f"kind '{kind}' has templates 0..{len(templates) - 1}, not {template_index}")
    instruction, scene = _instruction(kind, rng)
    template = templates[template_index]
    return Paraphrase(kind, template, render(template, instruction, rng), instruction, scene)


def paraphrase_set(per_template: int = 2, seed: int = 0) -> list[Paraphrase]:
    """`per_template` paraphrases of every template of every kind, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    return [sample_paraphrase(kind, i, rng) for kind in KINDS for i in range(len(TEMPLATES[kind]))
            for _ in range(per_template)]

