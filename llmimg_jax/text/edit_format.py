"""Edit triples for the prompt expander: (description + edit -> new description), from the Shapes world.

    prompt:  "<description>; <edit>"     e.g. "a small red circle at the top left, on a white background; make
                                               the red circle blue"
    target:  the edited scene's canonical description

`with_edits` wraps the LM task's preprocess so that a fraction of the Shapes examples become edit triples
(`lm.edit_fraction`); the token layout is the usual `prompt <|sep|> target <|endoftext|>` of prompt_format.py.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from llmimg_jax.data.shapes.edits import apply_edit, sample_edit
from llmimg_jax.data.shapes.grammar import describe, parse_description
from llmimg_jax.data.shapes.scene import Scene
from llmimg_jax.data.shapes.spec import ShapesError
from llmimg_jax.text.prompt_format import training_example

EDIT_SEPARATOR = "; "

Preprocess = Callable[[dict, np.random.Generator], dict[str, np.ndarray]]


def edit_prompt(description: str, edit: str) -> str:
    """The expander's input for an edit of the scene `description` names."""
    return f"{description.strip()}{EDIT_SEPARATOR}{edit.strip()}"


def trained_on_edits(config) -> bool:
    """Whether a language-model run's config (`lm.edit_fraction` > 0) taught its expander edits."""
    return float(config.lm.get("edit_fraction", 0.0)) > 0


def edited_scene(prompt: str) -> Scene | None:
    """The scene an edit prompt ("<description>; <edit>") asks for; None when `prompt` is not a valid one."""
    description, separator, edit = prompt.rpartition(EDIT_SEPARATOR)
    if not separator:
        return None
    try:
        return apply_edit(parse_description(description), edit)
    except ShapesError:
        return None


def _scene(example: dict) -> Scene | None:
    if not example.get("objects"):
        return None  # not a Shapes example: no ground truth to edit
    return Scene.from_json({"objects": example["objects"], "background": example["background"]})


def edit_triple(example: dict, rng: np.random.Generator) -> tuple[str, str] | None:
    """(prompt, target) of a random valid edit of a Shapes example; None when it has no scene or no edit applies."""
    scene = _scene(example)
    if scene is None:
        return None
    try:
        edit, edited = sample_edit(scene, rng)
    except ShapesError:
        return None
    return edit_prompt(describe(scene), edit), describe(edited)


def with_edits(preprocess: Preprocess, tokenizer, max_length: int, fraction: float) -> Preprocess:
    """`preprocess`, except that a `fraction` of the examples (drawn from the example's rng) become edit triples."""
    if fraction <= 0.0:
        return preprocess  # unchanged, random draws included

    def wrapped(example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if rng.random() < fraction:
            triple = edit_triple(example, rng)
            if triple is not None:
                return training_example(tokenizer, triple[0], triple[1], max_length)
        return preprocess(example, rng)

    return wrapped


def edit_texts(source, limit: int) -> Iterator[str]:
    """Edit prompts of the first `limit` examples, for the tokenizer's corpus (so edit words get tokens)."""
    for i in range(min(limit, len(source))):
        triple = edit_triple(source[i], np.random.default_rng(i))
        if triple is not None:
            yield triple[0]
