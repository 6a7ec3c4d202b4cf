"""Shapes world text: canonical descriptions, instructions and their constraint checker, edits."""

import dataclasses
from collections import Counter

import numpy as np
import pytest

from llmimg_jax.data.shapes.constraints import KINDS, parse_instruction, satisfies
from llmimg_jax.data.shapes.edits import FORMS, apply_edit, parse_edit, sample_edit
from llmimg_jax.data.shapes.grammar import describe, parse_description, swap_background, swap_colour
from llmimg_jax.data.shapes.instructions import instructions_for, sample_example, sample_instruction
from llmimg_jax.data.shapes.scene import Scene, ShapeObject, sample_scene
from llmimg_jax.data.shapes.spec import ALL_CELLS, COLOURS, SHAPES, SIZES, ShapesError
from llmimg_jax.errors import UserError

O = ShapeObject
SPEC_SCENE = Scene((O("triangle", "yellow", "small", 2, 2), O("circle", "red", "large", 0, 0),
                    O("square", "blue", "small", 1, 1)), "black")
SPEC_TEXT = ("a large red circle at the top left, a small blue square in the center and a small yellow triangle "
             "at the bottom right, on a black background")


def test_describe_matches_the_spec_example_and_orders_objects():
    assert [o.cell for o in SPEC_SCENE.objects] == [(0, 0), (1, 1), (2, 2)]
    assert describe(SPEC_SCENE) == SPEC_TEXT
    assert parse_description(SPEC_TEXT) == SPEC_SCENE
    one = Scene((O("circle", "cyan", "small", 1, 0),), "white")
    assert describe(one) == "a small cyan circle at the left, on a white background"
    two = Scene((O("circle", "cyan", "small", 1, 0), O("square", "green", "large", 0, 1)), "white")
    assert describe(two) == ("a large green square at the top and a small cyan circle at the left, "
                             "on a white background")


def test_describe_parse_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(1000):
        scene = sample_scene(rng)
        assert parse_description(describe(scene)) == scene
        assert Scene.from_json(scene.to_json()) == scene


@pytest.mark.parametrize("text", [
    "",
    "a large red circle at the top left",                                     # no background
    "a large red circle at the top left, on a grey background",               # unknown background
    "a large purple circle at the top left, on a black background",           # unknown colour
    "a red circle at the top left, on a black background",                    # size missing
    "a large red circle at the center, on a black background",                # 'in the center'
    "a large red circle in the top left, on a black background",              # 'at the top left'
    "a large red circle at the middle left, on a black background",           # 'left'
    "a large red circle at the top left, a small blue square in the center, on a black background",  # no 'and'
    "a large red circle at the top left and a small blue square at the top left, on a black background",
    "a small blue square in the center and a large red circle at the top left, on a black background",  # order
    "a small red circle at the top left, a small red circle at the top, a small red circle at the top right and "
    "a small red circle at the left, on a black background",                  # four objects
    "A large red circle at the top left, on a black background",
])
def test_malformed_descriptions_are_rejected(text):
    with pytest.raises(ShapesError) as e:
        parse_description(text)
    assert isinstance(e.value, ValueError) and isinstance(e.value, UserError)


def test_parse_instruction_spec_examples():
    i = parse_instruction("a small red circle at the top left on a white background")
    assert (i.kind, i.background, len(i.objects)) == ("explicit", "white", 1) and i.objects[0].complete
    i = parse_instruction("a green triangle")
    assert i.kind == "attribute" and (i.objects[0].colour, i.objects[0].shape, i.objects[0].cell) == \
        ("green", "triangle", None)
    i = parse_instruction("something blue in the center")
    assert i.kind == "attribute" and (i.objects[0].colour, i.objects[0].shape, i.objects[0].cell) == \
        ("blue", None, (1, 1))
    i = parse_instruction("three yellow squares")
    assert i.kind == "count" and len(i.objects) == 3 and {(p.colour, p.shape) for p in i.objects} == \
        {("yellow", "square")}
    i = parse_instruction("two red shapes")
    assert i.kind == "count" and len(i.objects) == 2 and i.objects[0].shape is None
    i = parse_instruction("a cyan triangle above a magenta circle")
    assert (i.kind, i.relation, i.objects[0].colour, i.objects[1].shape) == ("relation", "above", "cyan", "circle")
    i = parse_instruction("three green triangles in a row")
    assert (i.kind, i.line, len(i.objects)) == ("row/column", "row", 3)
    i = parse_instruction("two blue circles stacked vertically")
    assert (i.kind, i.line, len(i.objects)) == ("row/column", "column", 2)


@pytest.mark.parametrize("text", ["", "a purple circle", "four red circles", "a red circle to the left of",
                                  "two red circles in a row on a grey background", "a red circle at the center",
                                  "a red circle at the top left and a blue square at the top left",
                                  "a red circle and a red circle and a red circle and a red circle"])
def test_malformed_instructions_are_rejected(text):
    with pytest.raises(ShapesError):
        parse_instruction(text)


def test_relation_semantics_by_hand():
    inst = parse_instruction("a red circle to the left of a blue square")
    left = Scene((O("circle", "red", "large", 0, 0), O("square", "blue", "small", 2, 1)), "black")
    assert satisfies(left, inst)
    swapped = Scene((O("circle", "red", "large", 0, 1), O("square", "blue", "small", 2, 0)), "black")
    assert not satisfies(swapped, inst)
    same_column = Scene((O("circle", "red", "large", 0, 1), O("square", "blue", "small", 2, 1)), "black")
    assert not satisfies(same_column, inst)
    extra = Scene(left.objects + (O("square", "blue", "small", 2, 2),), "black")
    assert not satisfies(extra, inst)  # the instruction names all the objects


def _mutations(scene: Scene, rng):
    """(what changed, mutated scene) pairs: one attribute, the background, one object moved / removed / added."""
    out = []
    i = int(rng.integers(len(scene.objects)))
    obj, others = scene.objects[i], scene.objects[:i] + scene.objects[i + 1:]
    for attr, values in (("shape", SHAPES), ("colour", tuple(COLOURS)), ("size", SIZES)):
        new = next(v for v in values if v != getattr(obj, attr))
        out.append((attr, Scene(others + (dataclasses.replace(obj, **{attr: new}),), scene.background)))
    out.append(("background", dataclasses.replace(scene, background="white" if scene.background == "black"
                                                   else "black")))
    free = [c for c in ALL_CELLS if scene.object_at(*c) is None]
    cell = free[int(rng.integers(len(free)))]
    out.append(("cell", Scene(others + (dataclasses.replace(obj, row=cell[0], col=cell[1]),), scene.background)))
    if others:
        out.append(("count", Scene(others, scene.background)))
    if len(scene.objects) < 3:
        out.append(("count", Scene(scene.objects + (O("circle", "red", "small", *cell),), scene.background)))
    return out


def _fixes(inst, what: str, mutated: Scene) -> bool:
    """Whether the instruction pins `what` for every object, so that this change to one object must break it."""
    if what == "count":
        return True
    if what == "background":
        return inst.background is not None
    if what == "cell":  # moving one object breaks a fully placed instruction, or a line it leaves
        index = {"row": 0, "column": 1}.get(inst.line)
        left_line = index is not None and len({o.cell[index] for o in mutated.objects}) > 1
        return all(p.cell is not None for p in inst.objects) or left_line
    return all(getattr(p, what) is not None for p in inst.objects) and len({getattr(p, what)
                                                                             for p in inst.objects}) == 1


def test_instructions_are_satisfied_and_mutations_are_caught():
    rng = np.random.default_rng(1)
    first_kinds, checked = Counter(), Counter()
    for _ in range(1500):
        scene, instructions = sample_example(rng)
        first_kinds[instructions[0][0]] += 1
        assert len(instructions) == len({k for k, _ in instructions})  # one instruction per kind
        for kind, text in instructions:
            inst = parse_instruction(text)
            assert inst.kind == kind, text
            assert satisfies(scene, inst), (text, describe(scene))
            for what, mutated in _mutations(scene, rng):
                if _fixes(inst, what, mutated):
                    assert not satisfies(mutated, inst), (text, what, describe(mutated))
                    checked[what] += 1
            if inst.relation:  # mirroring breaks it when the phrases tell the two objects apart
                a, b = inst.objects
                if sum(a.matches(x) and b.matches(y) for x, y in (scene.objects, scene.objects[::-1])) == 1:
                    axis = "col" if inst.relation in ("left of", "right of") else "row"
                    mirrored = Scene(tuple(dataclasses.replace(o, **{axis: 2 - getattr(o, axis)})
                                           for o in scene.objects), scene.background)
                    assert not satisfies(mirrored, inst), text
                    checked["relation"] += 1
    assert set(first_kinds) == set(KINDS) and min(first_kinds.values()) > 1500 / len(KINDS) * 0.75
    assert min(checked.values()) > 50 and set(checked) >= {"shape", "colour", "size", "background", "cell",
                                                           "count", "relation"}


def test_instructions_for_and_sample_instruction():
    rng = np.random.default_rng(2)
    one = Scene((O("square", "green", "large", 1, 1),), "black")
    assert {k for k, _ in instructions_for(one, rng)} == {"explicit", "attribute"}
    line = Scene((O("circle", "blue", "small", 0, 1), O("circle", "blue", "large", 2, 1)), "white")
    assert {k for k, _ in instructions_for(line, rng)} == {"explicit", "count", "relation", "row/column"}
    for kind in KINDS:
        for _ in range(20):
            text, scene = sample_instruction(kind, rng)
            inst = parse_instruction(text)
            assert inst.kind == kind and satisfies(scene, inst)
    with pytest.raises(ShapesError):
        sample_instruction("colour", rng)


# ---- edits -----------------------------------------------------------------------------------------------------
BASE = Scene((O("circle", "red", "large", 0, 0), O("square", "blue", "small", 1, 1),
              O("circle", "green", "small", 2, 2)), "black")


@pytest.mark.parametrize("text, expected", [
    ("make the red circle yellow", [O("circle", "yellow", "large", 0, 0)]),
    ("make the square large", [O("square", "blue", "large", 1, 1)]),
    ("turn the green shape into a triangle", [O("triangle", "green", "small", 2, 2)]),
    ("move the blue square to the top right", [O("square", "blue", "small", 0, 2)]),
    ("remove the green circle", []),
])
def test_each_edit_form_changes_exactly_one_thing(text, expected):
    removed = {"red": 0, "yellow": 0, "square": 1, "blue": 1, "green": 2}
    key = next(w for w in text.split() if w in removed)
    kept = [o for j, o in enumerate(BASE.objects) if j != removed[key]]
    assert apply_edit(BASE, text) == Scene(tuple(kept + expected), "black")


def test_add_edit():
    two = Scene(BASE.objects[:2], "white")
    assert apply_edit(two, "add a small cyan triangle at the bottom left") == \
        Scene(two.objects + (O("triangle", "cyan", "small", 2, 0),), "white")
    assert apply_edit(two, "add a large magenta square at the top right").objects[1] == \
        O("square", "magenta", "large", 0, 2)


@pytest.mark.parametrize("scene, text, why", [
    (BASE, "make the circle blue", "holds 2"),                      # ambiguous: two circles
    (BASE, "make the yellow circle blue", "holds 0"),               # no such object
    (BASE, "move the square to the top left", "occupied"),
    (BASE, "move the square to the center", "already"),
    (BASE, "make the square blue", "already"),
    (BASE, "add a small red square at the top", "already holds 3"),
    (Scene(BASE.objects[:2], "black"), "add a small red square at the top left", "occupied"),
    (Scene(BASE.objects[:1], "black"), "remove the circle", "last object"),
    (BASE, "paint the square red", "not one of"),
    (BASE, "make the thing red", "does not name an object"),
    (BASE, "add a red square at the top", "not one of"),            # size missing
])
def test_invalid_edits_are_rejected(scene, text, why):
    with pytest.raises(ShapesError, match=why):
        apply_edit(scene, text)


def test_sampled_edits_cover_all_forms_and_change_one_thing():
    rng = np.random.default_rng(3)
    forms = Counter()
    for _ in range(600):
        scene = sample_scene(rng)
        if len(scene.objects) == 3 and len({(o.colour, o.shape) for o in scene.objects}) == 1:
            with pytest.raises(ShapesError, match="named uniquely"):  # three alike: no object can be named
                sample_edit(scene, rng)
            continue
        text, new = sample_edit(scene, rng)
        edit = parse_edit(text)
        forms[edit.form] += 1
        before, after = set(scene.objects), set(new.objects)
        assert new.background == scene.background
        gone, came = before - after, after - before
        if edit.form == "remove":
            assert len(gone) == 1 and not came
        elif edit.form == "add":
            assert not gone and came == {edit.added}
        else:
            (old,), (changed,) = gone, came
            diff = {f for f in ("shape", "colour", "size", "row", "col") if getattr(old, f) != getattr(changed, f)}
            if edit.form == "move":
                assert diff and diff <= {"row", "col"} and changed.cell == edit.cell
            else:
                assert diff == {edit.form} and getattr(changed, edit.form) == edit.value
        assert parse_description(describe(new)) == new
    assert set(forms) == set(FORMS)


def test_swap_background():
    assert swap_background("a red circle at the top, on a black background") == \
        "a red circle at the top, on a white background"
    assert swap_background("two squares, on a white background") == "two squares, on a black background"
    assert swap_background("a red circle at the top") == "a red circle at the top"


def test_swap_colour_changes_one_named_colour():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        swapped = swap_colour(SPEC_TEXT, rng)
        before, after = parse_description(SPEC_TEXT), parse_description(swapped)
        diffs = [(a, b) for a, b in zip(before.objects, after.objects) if a != b]
        assert len(diffs) == 1 and diffs[0][0].colour != diffs[0][1].colour
        assert dataclasses.replace(diffs[0][0], colour=diffs[0][1].colour) == diffs[0][1]
        seen.add((diffs[0][0].cell, diffs[0][1].colour))
    assert len(seen) > 6  # every object and several colours get picked
    assert swap_colour("two squares, on a white background", rng) == "two squares, on a white background"
