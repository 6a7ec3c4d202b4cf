"""How often the prompt expander writes a valid description that satisfies its instruction (Shapes)."""

from __future__ import annotations

import numpy as np

from llmimg_jax.evaluation.alignment import make_eval_set
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
