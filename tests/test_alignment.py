import numpy as np
import pytest

from llmimg_jax.data.shapes.constraints import KINDS, parse_instruction, satisfies
from llmimg_jax.data.shapes.render import render
from llmimg_jax.data.shapes.scene import Scene, ShapeObject
from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.alignment import (attribute_checks, make_eval_examples, make_eval_set, score_images,
                                             to_uint8)

S = 32


def _render_all(scenes, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([render(s, S, rng) for s in scenes])


def test_eval_set_is_balanced_deterministic_and_nested():
    items = make_eval_set(50, seed=3)
    assert [k for k, _ in items] == [KINDS[i % len(KINDS)] for i in range(50)]
    assert items == make_eval_set(50, seed=3)
    assert make_eval_set(20, seed=3) == items[:20]
    assert make_eval_set(50, seed=4) != items
    for kind, text in items:  # every text parses back to its kind
        assert parse_instruction(text).kind == kind
    assert {k for k, _ in make_eval_set(10, kinds=("count", "relation"))} == {"count", "relation"}


def test_matching_images_score_100_percent():
    examples = make_eval_examples(60, seed=0)
    images = _render_all([scene for _, _, scene in examples])
    result = score_images(images, [(k, t) for k, t, _ in examples])
    assert result["accuracy"] == 1.0 and result["unreadable"] == 0 and result["num"] == 60
    assert result["per_kind"] == dict.fromkeys(KINDS, 1.0)
    assert result["per_kind_num"] == dict.fromkeys(KINDS, 12)
    assert set(result["per_attribute"]) >= {"colour", "shape", "count", "position"}
    assert all(v == 1.0 for v in result["per_attribute"].values())
    # Float images in [-1, 1] (the generators' output) score the same; the kind is parsed when not given.
    floats = images.astype(np.float32) / 127.5 - 1.0
    assert score_images(floats, [t for _, t, _ in examples])["per_kind"] == result["per_kind"]


def test_mismatched_images_score_low():
    examples = make_eval_examples(60, seed=1)
    scenes = [scene for _, _, scene in examples]
    images = _render_all(scenes[1:] + scenes[:1])  # image i shows the scene of instruction i + 1
    result = score_images(images, [(k, t) for k, t, _ in examples])
    want = np.mean([satisfies(s, parse_instruction(t)) for s, (_, t, _) in zip(scenes[1:] + scenes[:1], examples)])
    assert result["accuracy"] == pytest.approx(want)
    assert result["accuracy"] < 0.2


def test_blank_image_is_unreadable_and_fails_every_check():
    blank = np.zeros((1, S, S, 3), np.uint8)
    result = score_images(blank, ["a red circle at the top left on a black background"])
    assert result["unreadable"] == 1 and result["accuracy"] == 0.0
    assert result["per_attribute"] == {"colour": 0.0, "shape": 0.0, "count": 0.0, "position": 0.0,
                                       "background": 0.0}


def test_attribute_breakdown_of_a_wrong_relation():
    instruction = parse_instruction("a red circle to the left of a blue square")
    # Both objects right, but the circle is on the right.
    scene = Scene((ShapeObject("circle", "red", "large", 1, 2), ShapeObject("square", "blue", "small", 0, 0)),
                  "white")
    assert not satisfies(scene, instruction)
    assert attribute_checks(scene, instruction) == {"colour": True, "shape": True, "count": True,
                                                    "position": False}
    result = score_images(_render_all([scene]), [("relation", "a red circle to the left of a blue square")])
    assert result["accuracy"] == 0.0
    assert result["per_attribute"] == {"colour": 1.0, "shape": 1.0, "count": 1.0, "position": 0.0}
    # A wrong colour, count right, cells right.
    count = parse_instruction("two green triangles in a row")
    scene = Scene((ShapeObject("triangle", "green", "small", 2, 0), ShapeObject("triangle", "red", "small", 2, 2)),
                  "black")
    assert attribute_checks(scene, count) == {"colour": False, "shape": True, "count": True, "position": False}


def test_bad_input_raises_user_error():
    images = np.zeros((2, S, S, 3), np.uint8)
    with pytest.raises(UserError, match="2 images but 1 instructions"):
        score_images(images, ["a red circle"])
    with pytest.raises(UserError):
        score_images(images[:1], ["a purple blob"])
    with pytest.raises(UserError, match="kinds among"):
        make_eval_set(5, kinds=("nonsense",))
    with pytest.raises(UserError, match=r"\[N, S, S, 3\]"):
        to_uint8(np.zeros((S, S, 3)))
