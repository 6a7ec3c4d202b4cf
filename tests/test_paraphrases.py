"""The paraphrase test set: hand-written wordings outside the spec's templates, each with the constraint it means."""

import dataclasses
import re

import numpy as np
import pytest

from llmimg_jax.data.shapes import constraints, grammar, instructions
from llmimg_jax.data.shapes.constraints import KINDS, mentions_hold, parse_instruction, satisfies
from llmimg_jax.data.shapes.paraphrases import CELL_WORDS, TEMPLATES, paraphrase_set, sample_paraphrase
from llmimg_jax.data.shapes.spec import ALL_CELLS, BACKGROUNDS, ShapesError

PARAPHRASES = paraphrase_set(per_template=6, seed=0)
# Phrases of the spec's wording (grammar.py, instructions.py) that a paraphrase must never use.
SPEC_PHRASES = ("at the ", "in the center", "on a black background", "on a white background", "in a row",
                "in a column", "stacked vertically", "to the left of", "to the right of", "something", " above ",
                " below ", " shapes", " shape ")


def test_every_kind_has_ten_distinct_templates_and_every_cell_a_wording():
    assert set(TEMPLATES) == set(KINDS) and set(CELL_WORDS) == set(ALL_CELLS)
    for kind, templates in TEMPLATES.items():
        assert len(set(templates)) == len(templates) >= 10, kind
    assert len(PARAPHRASES) == 6 * sum(len(t) for t in TEMPLATES.values())


@pytest.mark.parametrize("p", PARAPHRASES, ids=lambda p: p.text)
def test_each_paraphrase_means_a_constraint_its_scene_satisfies_and_no_spec_form(p):
    assert "{" not in p.text and "  " not in p.text and p.instruction.kind == p.kind
    assert satisfies(p.scene, p.instruction)
    assert mentions_hold(p.text, p.scene)  # the expander's partial check of free text never rejects a right scene
    with pytest.raises(ShapesError):
        parse_instruction(p.text)
    lowered = f" {p.text.lower()} "
    assert not [s for s in SPEC_PHRASES if s in lowered], p.text


def test_constraints_are_not_vacuous():
    """Each constraint rejects a scene that breaks what the text says (a named attribute, the background, the
    relation or the line), so scoring against it measures something."""
    broken = 0
    for p in PARAPHRASES:
        scene, inst = p.scene, p.instruction
        if inst.background is not None:
            other = next(b for b in BACKGROUNDS if b != scene.background)
            assert not satisfies(dataclasses.replace(scene, background=other), inst), p.text
            broken += 1
        if inst.relation is not None:
            a, b = scene.objects
            swapped = (dataclasses.replace(a, row=b.row, col=b.col), dataclasses.replace(b, row=a.row, col=a.col))
            if inst.objects[0] == inst.objects[1] or not any(o.matches(x) for o in inst.objects for x in swapped):
                continue
            assert not satisfies(dataclasses.replace(scene, objects=swapped), inst) or _symmetric(inst, swapped)
            broken += 1
        if inst.line is not None:
            first = scene.objects[0]
            free = [c for c in ALL_CELLS if all(o.cell != c for o in scene.objects)
                    and c[0] != first.row and c[1] != first.col]
            moved = (dataclasses.replace(first, row=free[0][0], col=free[0][1]),) + scene.objects[1:]
            assert not satisfies(dataclasses.replace(scene, objects=moved), inst), p.text
            broken += 1
    assert broken > len(PARAPHRASES) // 2


def _symmetric(inst, objects) -> bool:
    # With swapped cells the relation can still hold through the other assignment of two alike patterns.
    return all(p.matches(o) for p, o in zip(inst.objects, objects[::-1]))


def _spec_literals() -> list[str]:
    """The string literals (not docstrings) of the spec's grammar, instruction generators and the constraint model
    (which holds the relation and line wordings): their wording."""
    import ast
    import inspect

    literals = []
    for module in (grammar, instructions, constraints):
        tree = ast.parse(inspect.getsource(module))
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        literals += [n.value.lower() for n in ast.walk(tree)
                     if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
    return literals


def test_the_wording_is_outside_the_spec_generators():
    """No template's fixed words (the text around its slots) occur in the spec generators' strings, and the
    spec's generators never produce a paraphrase's text."""
    literals = _spec_literals()
    assert "to the left of" in literals and "in a row" in literals  # the reference is real
    for templates in TEMPLATES.values():
        for template in templates:
            for piece in re.split(r"\{\w+\}", template):
                piece = piece.strip(" ,.?:").lower()
                hits = [lit for lit in literals if re.search(rf"\b{re.escape(piece)}\b", lit)]
                assert len(piece) < 4 or not hits, (template, piece, hits)
    rng = np.random.default_rng(1)
    spec_texts = {t for _ in range(500) for _, t in instructions.sample_example(rng)[1]}
    assert not spec_texts & {p.text for p in PARAPHRASES}


def test_bad_kind_or_template_is_an_error():
    rng = np.random.default_rng(0)
    with pytest.raises(ShapesError, match="unknown instruction kind 'colour'"):
        sample_paraphrase("colour", 0, rng)
    with pytest.raises(ShapesError, match="templates 0..10"):
        sample_paraphrase("count", 11, rng)
