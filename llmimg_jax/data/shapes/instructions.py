"""Instruction generators: for a scene, texts of every kind it satisfies, with varied wording."""

from __future__ import annotations

import numpy as np

from llmimg_jax.data.shapes.constraints import KINDS, LINE_PHRASES, RELATION_PHRASES, RELATIONS, relation_holds
from llmimg_jax.data.shapes.grammar import join_phrases, object_phrase
from llmimg_jax.data.shapes.scene import ATTRIBUTES, Scene, ShapeObject, pick, sample_scene
from llmimg_jax.data.shapes.spec import COLOURS, SHAPES, SIZES, ShapesError, cell_phrase

_VALUES = {"size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES}
_BACKGROUND_P = 0.25  # how often an open-ended instruction also names the background


def _subset(rng: np.random.Generator, items, p: float = 0.5, nonempty: bool = True) -> list:
    """Each item kept with probability p; redrawn until non-empty when asked (and possible)."""
    items = list(items)
    while True:
        kept = [x for x in items if rng.random() < p]
        if kept or not nonempty or not items:
            return kept


def _singular(rng: np.random.Generator, obj: ShapeObject, named, with_cell: bool = False) -> str:
    """`a [size] [colour] {shape|shape}` or `something [size] [colour]`, then the cell if asked."""
    words = [getattr(obj, a) for a in ("size", "colour") if a in named]
    if "shape" in named:
        text = " ".join(["a", *words, obj.shape])
    elif rng.random() < 0.5:
        text = " ".join(["something", *words])
    else:
        text = " ".join(["a", *words, "shape"])
    return text + (" " + cell_phrase(obj.row, obj.col) if with_cell else "")


def _plural(n: int, obj: ShapeObject, named) -> str:
    words = [{2: "two", 3: "three"}[n]] + [getattr(obj, a) for a in ("size", "colour") if a in named]
    return " ".join(words + [obj.shape + "s" if "shape" in named else "shapes"])


def _background(rng: np.random.Generator, text: str, scene: Scene, always: bool = False) -> str:
    return text + f" on a {scene.background} background" if always or rng.random() < _BACKGROUND_P else text


def _shared(scene: Scene) -> list[str]:
    """Attributes whose value every object of the scene shares."""
    return [a for a in ATTRIBUTES if len({getattr(o, a) for o in scene.objects}) == 1]


def _line(scene: Scene) -> str | None:
    if len(scene.objects) < 2:
        return None
    if len({o.row for o in scene.objects}) == 1:
        return "row"
    return "column" if len({o.col for o in scene.objects}) == 1 else None


def instruction_for(kind: str, scene: Scene, rng: np.random.Generator, named=None) -> str | None:
    """One instruction of `kind` that the scene satisfies (None when the kind does not fit the scene).

    `named`: for count and row/column, the shared attributes to name (default: a random subset of them).
    """
    n, objs = len(scene.objects), scene.objects
    if kind == "explicit":
        return _background(rng, join_phrases([object_phrase(o) for o in objs]), scene, always=True)
    if kind == "attribute" and n == 1:
        named = _subset(rng, ("size", "colour", "shape", "cell"))
        text = _singular(rng, objs[0], named, with_cell="cell" in named)
        return text if len(named) == 4 else _background(rng, text, scene)  # all four + background = explicit
    if kind == "relation" and n == 2:
        a, b = (objs[0], objs[1]) if rng.random() < 0.5 else (objs[1], objs[0])
        holds = [RELATION_PHRASES[r] for r in RELATIONS if relation_holds(a, b, r)]
        phrases = [_singular(rng, o, named=[x for x, p in zip(ATTRIBUTES, (0.3, 0.8, 0.8)) if rng.random() < p])
                   for o in (a, b)]
        return _background(rng, f"{phrases[0]} {pick(rng, holds)} {phrases[1]}", scene)
    if kind in ("count", "row/column") and n >= 2:
        line = _line(scene)
        if kind == "row/column" and line is None:
            return None
        named = _subset(rng, _shared(scene)) if named is None else named
        text = _plural(n, objs[0], named)
        if kind == "row/column":
            text += " " + (LINE_PHRASES["row"][0] if line == "row" else pick(rng, LINE_PHRASES["column"]))
        return _background(rng, text, scene)
    if kind not in KINDS:
        raise ShapesError(f"unknown instruction kind '{kind}'; use one of {', '.join(KINDS)}")
    return None


def instructions_for(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """One instruction of every kind the scene fits (explicit always fits)."""
    out = []
    for kind in KINDS:
        text = instruction_for(kind, scene, rng)
        if text is not None:
            out.append((kind, text))
    return out


def _scene_for(kind: str, rng: np.random.Generator) -> tuple[Scene, list[str] | None]:
    """A random scene that fits `kind`, and for count / row/column the shared attributes to name."""
    if kind == "explicit":
        return sample_scene(rng), None
    if kind in ("attribute", "relation"):
        return sample_scene(rng, 1 if kind == "attribute" else 2), None
    named = _subset(rng, ATTRIBUTES)
    fixed = {a: pick(rng, _VALUES[a]) for a in named}
    n = int(rng.integers(2, 4))
    if kind == "count":
        return sample_scene(rng, n, fixed=fixed), named
    index = int(rng.integers(3))
    others = sorted(int(c) for c in rng.permutation(3)[:n])
    cells = [(index, c) for c in others] if rng.random() < 0.5 else [(c, index) for c in others]
    return sample_scene(rng, cells=cells, fixed=fixed), named


def sample_example(rng: np.random.Generator, kind: str | None = None) -> tuple[Scene, list[tuple[str, str]]]:
    """A scene and its instructions: first one of `kind` (drawn uniformly when None), then every other kind it fits."""
    kind = pick(rng, KINDS) if kind is None else kind
    if kind not in KINDS:
        raise ShapesError(f"unknown instruction kind '{kind}'; use one of {', '.join(KINDS)}")
    scene, named = _scene_for(kind, rng)
    first = (kind, instruction_for(kind, scene, rng, named=named))
    return scene, [first] + [(k, t) for k, t in instructions_for(scene, rng) if k != kind]


def sample_instruction(kind: str, rng: np.random.Generator) -> tuple[str, Scene]:
    """An instruction of `kind` and one scene that satisfies it (for evaluation sets)."""
    scene, instructions = sample_example(rng, kind)
    return instructions[0][1], scene
