"""How often the prompt expander writes a valid description that satisfies its instruction (Shapes), and how
often it applies an edit exactly (description; edit -> the edited scene's description)."""

from __future__ import annotations

import numpy as np

from llmimg_jax.data.shapes.edits import FORMS, parse_edit
from llmimg_jax.data.shapes.grammar import describe
from llmimg_jax.data.shapes.scene import Scene
from llmimg_jax.evaluation.alignment import make_eval_set
from llmimg_jax.evaluation.captioning import score_descriptions, validation_edits
from llmimg_jax.text.edit_format import edit_prompt
from llmimg_jax.text.expander import Expander, is_description


def expansion_accuracy(expander: Expander, num: int, seed: int = 0, batch_size: int = 100) -> dict:
    """Fraction of evaluation instructions whose expansion is valid and satisfies them, overall and per kind.

    Scores the model's own output (its retries included, no fall-back to the instruction)."""
    pairs = make_eval_set(num, seed)
    per_kind: dict[str, list[bool]] = {}
    valid, examples = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        texts, ok = expander.expand_with_status([p for _, p in chunk], seed=seed + start)
        for (kind, prompt), text, good in zip(chunk, texts, ok):
            per_kind.setdefault(kind, []).append(bool(good))
            valid.append(good or is_description(text))
            if not good and len(examples) < 20:
                examples.append({"kind": kind, "instruction": prompt, "expansion": text})
    flat = [g for v in per_kind.values() for g in v]
    return {"num": len(flat), "overall": float(np.mean(flat)), "valid": float(np.mean(valid)),
            "per_kind": {k: float(np.mean(v)) for k, v in per_kind.items()}, "failures": examples}


def edit_expansion_accuracy(expander: Expander, scenes: list[Scene], seed: int = 0, batch_size: int = 100) -> dict:
    """Fraction of (true description; random valid edit) prompts expanded to exactly the edited scene, overall and
    per edit form; one edit per scene (scenes no edit applies to are skipped). Scores the model's own output."""
    drawn = validation_edits(scenes, seed)
    prompts = [edit_prompt(describe(scenes[i]), edit) for i, edit, _ in drawn]
    texts = []
    for start in range(0, len(prompts), batch_size):
        texts += expander.expand_with_status(prompts[start:start + batch_size], seed=seed + start)[0]
    scored = score_descriptions(texts, [target for _, _, target in drawn])
    per_form: dict[str, list[bool]] = {}
    failures = []
    for (_, edit, target), prompt, text, good in zip(drawn, prompts, texts, scored["correct"]):
        per_form.setdefault(parse_edit(edit).form, []).append(good)
        if not good and len(failures) < 20:
            failures.append({"prompt": prompt, "expansion": text, "target": describe(target)})
    return {"num": len(drawn), "overall": scored["exact"], "valid": scored["valid"],
            "per_form": {f: float(np.mean(per_form[f])) for f in FORMS if f in per_form},
            "skipped": len(scenes) - len(drawn), "failures": failures}
