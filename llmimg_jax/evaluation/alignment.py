"""GenEval-style alignment on Shapes: read each generated image back into a scene (`reader.read_image`) and check
it against its instruction (`constraints.satisfies`); accuracy overall, per instruction kind, per attribute."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Sequence

import numpy as np

from llmimg_jax.data.shapes.constraints import (KINDS, Instruction, ObjectPattern, parse_instruction,
                                                relation_holds, satisfies)
from llmimg_jax.data.shapes.instructions import sample_instruction
from llmimg_jax.data.shapes.reader import read_image
from llmimg_jax.data.shapes.scene import Scene, ShapeObject
from llmimg_jax.data.shapes.spec import ShapesError
from llmimg_jax.errors import UserError

# Evaluation instructions come from seeds this far above any training seed, so they are drawn afresh.
EVAL_SEED_OFFSET = 10**6
ATTRIBUTES = ("colour", "shape", "size", "count", "position", "background")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 images pass through; float images in [-1, 1] (the generators' range) are mapped to 0..255."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"expected images [N, S, S, 3], got shape {images.shape}; pass a batch of RGB images")
    if images.dtype == np.uint8:
        return images
    return np.round((np.clip(images.astype(np.float64), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_eval_examples(num: int, seed: int = 0, kinds: Sequence[str] = KINDS) -> list[tuple[str, str, Scene]]:
    """`num` (kind, instruction, a scene that satisfies it), kinds in turn (balanced), deterministic in `seed`;
    a longer set starts with the shorter one. The scenes, rendered, are the real images to compare with."""
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if num < 1 or not kinds or unknown:
        raise UserError(f"eval set: need num >= 1 and kinds among {', '.join(KINDS)}; got num={num}, "
                        f"kinds={list(kinds)}")
    rng = np.random.default_rng(EVAL_SEED_OFFSET + seed)
    out = []
    for i in range(num):
        kind = kinds[i % len(kinds)]
        text, scene = sample_instruction(kind, rng)
        out.append((kind, text, scene))
    return out


def make_eval_set(num: int, seed: int = 0, kinds: Sequence[str] = KINDS) -> list[tuple[str, str]]:
    """`num` (kind, instruction) pairs of `make_eval_examples`."""
    return [(kind, text) for kind, text, _ in make_eval_examples(num, seed, kinds)]


def _assignable(objects: Sequence[ShapeObject], patterns: Sequence[ObjectPattern], relation: str | None = None,
                line: str | None = None) -> bool:
    """Whether distinct objects match the patterns (other objects allowed), with the relation between the first
    two and the line through all of them."""
    for chosen in itertools.permutations(objects, len(patterns)):
        if not all(p.matches(o) for p, o in zip(patterns, chosen)):
            continue
        if line is not None and len({o.row if line == "row" else o.col for o in chosen}) != 1:
            continue
        if relation is not None and not relation_holds(chosen[0], chosen[1], relation):
            continue
        return True
    return False


def checked_attributes(instruction: Instruction) -> list[str]:
    """The attributes an instruction names (count always: an instruction names all its objects)."""
    named = [a for a in ("colour", "shape", "size") if any(getattr(p, a) for p in instruction.objects)]
    named.append("count")
    if instruction.relation or instruction.line or any(p.cell for p in instruction.objects):
        named.append("position")
    return named + (["background"] if instruction.background else [])


def attribute_checks(scene: Scene, instruction: Instruction) -> dict[str, bool]:
    """One check per attribute the instruction names. colour / shape / size: the named values are on distinct
    objects (other attributes ignored); count: the number of objects; position: the named cells, or the relation
    or line between the objects named (these with their attributes); background."""
    checks = {}
    for attr in checked_attributes(instruction):
        if attr in ("colour", "shape", "size"):
            patterns = [ObjectPattern(**{attr: getattr(p, attr)}) for p in instruction.objects if getattr(p, attr)]
            checks[attr] = _assignable(scene.objects, patterns)
        elif attr == "count":
            checks[attr] = len(scene.objects) == len(instruction.objects)
        elif attr == "position" and (instruction.relation or instruction.line):
            checks[attr] = _assignable(scene.objects, instruction.objects, instruction.relation, instruction.line)
        elif attr == "position":
            cells = [ObjectPattern(cell=p.cell) for p in instruction.objects if p.cell]
            checks[attr] = _assignable(scene.objects, cells)
        else:
            checks[attr] = scene.background == instruction.background
    return checks


def score_images(images: np.ndarray, instructions: Sequence[str | tuple[str, str]]) -> dict:
    """Scores image i against instruction i (text, or (kind, text) as `make_eval_set` gives; the kind is parsed
    from the text when not given). An image the reader cannot read (no object, or more than 3) fails every check.

    Returns {accuracy, num, unreadable, per_kind: {kind: accuracy}, per_kind_num, per_attribute: {attribute:
    accuracy}, per_attribute_num, correct: [bool per image]}.
    """
    images = to_uint8(images)
    if len(images) != len(instructions):
        raise UserError(f"{len(images)} images but {len(instructions)} instructions; pass one instruction per image")
    if not len(images):
        raise UserError("no images to score; generate at least one image")
    correct, unreadable = [], 0
    kind_hits, attr_hits = defaultdict(list), defaultdict(list)
    for image, item in zip(images, instructions):
        kind, text = item if isinstance(item, tuple) else (None, item)
        instruction = parse_instruction(text)  # bad instruction text is the caller's error: let it raise
        try:
            scene = read_image(image)
        except ShapesError:  # not a Shapes scene (0 or > 3 objects): a failed generation, scored as wrong
            scene = None
            unreadable += 1
        ok = scene is not None and satisfies(scene, instruction)
        correct.append(bool(ok))
        kind_hits[kind or instruction.kind].append(ok)
        checks = (attribute_checks(scene, instruction) if scene is not None else
                  dict.fromkeys(checked_attributes(instruction), False))
        for attr, hit in checks.items():
            attr_hits[attr].append(hit)
    return {
        "accuracy": float(np.mean(correct)), "num": len(correct), "unreadable": unreadable,
        "per_kind": {k: float(np.mean(kind_hits[k])) for k in KINDS if k in kind_hits},
        "per_kind_num": {k: len(kind_hits[k]) for k in KINDS if k in kind_hits},
        "per_attribute": {a: float(np.mean(attr_hits[a])) for a in ATTRIBUTES if a in attr_hits},
        "per_attribute_num": {a: len(attr_hits[a]) for a in ATTRIBUTES if a in attr_hits},
        "correct": correct,
    }

