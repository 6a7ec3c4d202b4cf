"""Captioner evaluation on Shapes validation images.

captioning   the description parses (`grammar.parse_description`) and equals the ground-truth scene; per
             attribute, objects are paired in reading order (a missing partner or an unparsable description
             fails every attribute of that object)
round trip   image -> description -> redrawn image; the redrawn image must satisfy the original's full scene
             as an explicit instruction (the project's Shapes checker, `alignment.score_images`)
edit         image -> description + a random valid edit -> prompt expander -> redrawn image; it must satisfy the
             edited scene (a scene no edit applies to, e.g. three identical objects, is skipped and counted)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from llmimg_jax.data.shapes.edits import sample_edits
from llmimg_jax.data.shapes.grammar import describe, parse_description
from llmimg_jax.data.shapes.scene import Scene
from llmimg_jax.data.shapes.spec import ShapesError
from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.alignment import EVAL_SEED_OFFSET, score_images
from llmimg_jax.text.edit_format import edit_prompt

log = logging.getLogger(__name__)

OBJECT_ATTRIBUTES = ("shape", "colour", "size", "cell")


def validation_examples(data_config, num: int) -> tuple[np.ndarray, list[Scene]]:
    """The first `num` images (uint8 [N, S, S, 3]) of the Shapes evaluation split and their true scenes."""
    from llmimg_jax.data.sources import make_source

    if data_config.source != "shapes":
        raise UserError(f"captioning evaluation needs data.source='shapes' (got '{data_config.source}')")
    source = make_source(data_config, data_config.eval_split)
    if num < 1 or num > len(source):
        raise UserError(f"asked for {num} validation images but the split holds {len(source)}; pass 1..{len(source)}")
    examples = [source[i] for i in range(num)]
    scenes = [Scene.from_json({"objects": e["objects"], "background": e["background"]}) for e in examples]
    return np.stack([e["image"] for e in examples]), scenes


def score_descriptions(descriptions: list[str], scenes: list[Scene]) -> dict:
    """Exact match, parse rate and per-attribute accuracy of descriptions against true scenes."""
    if len(descriptions) != len(scenes) or not scenes:
        raise UserError(f"{len(descriptions)} descriptions for {len(scenes)} scenes; pass one per scene")
    exact, valid = [], []
    hits = {a: [] for a in ("count", "background") + OBJECT_ATTRIBUTES}
    for text, truth in zip(descriptions, scenes):
        try:
            got = parse_description(text)
        except ShapesError:
            got = None
        valid.append(got is not None)
        exact.append(got == truth)
        hits["count"].append(got is not None and len(got.objects) == len(truth.objects))
        hits["background"].append(got is not None and got.background == truth.background)
        found = list(got.objects) if got is not None else []
        for i, obj in enumerate(truth.objects):
            other = found[i] if i < len(found) else None
            for attr in OBJECT_ATTRIBUTES:
                hits[attr].append(other is not None and getattr(other, attr) == getattr(obj, attr))
    return {"exact": float(np.mean(exact)), "valid": float(np.mean(valid)), "num": len(scenes),
            "per_attribute": {a: float(np.mean(v)) for a, v in hits.items()}, "correct": [bool(x) for x in exact]}


def _scored_captions(scenes: list[Scene], descriptions: list[str]) -> dict:
    result = score_descriptions(descriptions, scenes)
    result["examples"] = [{"truth": describe(s), "description": d} for s, d in list(zip(scenes, descriptions))[:20]]
    return result


def _round_trip(pipeline, scenes: list[Scene], descriptions: list[str], seed: int, options: dict) -> dict:
    redrawn = pipeline.generate_arrays(descriptions, seed=seed, **options)
    result = score_images(redrawn, [describe(s) for s in scenes])
    result["caption_exact"] = score_descriptions(descriptions, scenes)["exact"]
    return result


def _edits(pipeline, scenes: list[Scene], descriptions: list[str], seed: int, options: dict) -> dict:
    drawn = validation_edits(scenes, seed)
    prompts = [edit_prompt(descriptions[i], edit) for i, edit, _ in drawn]
    targets = [target for _, _, target in drawn]
    expanded = pipeline.expand(prompts, seed=seed)
    redrawn = pipeline.generate_arrays(expanded, seed=seed, **options)
    result = score_images(redrawn, [describe(t) for t in targets])
    result["expansion_exact"] = score_descriptions(expanded, targets)["exact"]
    result["skipped"] = len(scenes) - len(drawn)
    result["examples"] = [{"prompt": p, "expanded": x, "target": describe(t)}
                          for p, x, t in list(zip(prompts, expanded, targets))[:10]]
    return result


def validation_edits(scenes: list[Scene], seed: int = 0) -> list[tuple[int, str, Scene]]:
    """(scene index, edit, edited scene) of one random valid edit per scene, the same for a given seed; scenes no
    edit applies to are skipped with a warning."""
    drawn = sample_edits(scenes, np.random.default_rng(EVAL_SEED_OFFSET + seed))
    if len(drawn) < len(scenes):
        log.warning("edit accuracy: skipped %d of %d validation scenes that no edit applies to",
                    len(scenes) - len(drawn), len(scenes))
    if not drawn:
        raise UserError(f"no edit applies to any of the {len(scenes)} validation scenes; raise --num")
    return drawn


def _described(captioner, data_config, num: int) -> tuple[list[Scene], list[str]]:
    """The first `num` validation scenes and the captioner's descriptions of their images."""
    images, scenes = validation_examples(data_config, num)
    return scenes, captioner.describe(images)


def captioning_accuracy(captioner, data_config, num: int = 500) -> dict:
    """Scores `captioner.describe` on the first `num` validation images (see the module docstring)."""
    return _scored_captions(*_described(captioner, data_config, num))


def round_trip_accuracy(captioner, pipeline, data_config, num: int = 200, seed: int = 0, **options: Any) -> dict:
    """image -> description -> `pipeline` (a TextToImagePipeline) -> image, scored against the true scene."""
    return _round_trip(pipeline, *_described(captioner, data_config, num), seed, options)


def edit_accuracy(captioner, pipeline, data_config, num: int = 200, seed: int = 0, **options: Any) -> dict:
    """image -> (description + random edit) -> prompt expander -> image, scored against the edited scene."""
    return _edits(pipeline, *_described(captioner, data_config, num), seed, options)


def captioner_scores(captioner, pipeline, data_config, num: int, seed: int = 0, *, edits: bool = True,
                     **options: Any) -> dict:
    """The captioner section of `llmimg eval`: captioning on `num` validation images, and with `pipeline` the
    round trip and (when `edits`: its expander was trained on edits) the edit accuracy on the same images, all
    from one description of each image."""
    scenes, descriptions = _described(captioner, data_config, num)
    caption = _scored_captions(scenes, descriptions)
    round_trip = _round_trip(pipeline, scenes, descriptions, seed, options)
    out = {"num": num, "caption_exact": caption["exact"], "caption_valid": caption["valid"],
           "per_attribute": caption["per_attribute"], "round_trip": round_trip["accuracy"],
           "examples": caption["examples"][:10]}
    if edits:
        edit = _edits(pipeline, scenes, descriptions, seed, options)
        out.update(edit=edit["accuracy"], edit_expansion_exact=edit["expansion_exact"],
                   edit_skipped_scenes=edit["skipped"])
    return out
