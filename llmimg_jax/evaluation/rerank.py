"""Best of N on the Shapes world: draw N images for a text and keep the one the Shapes probe reads as closest to
it, as dalle-mini keeps the samples CLIP ranks first.

The score of an image for a canonical description is the probe's log-likelihood of the described scene (every
cell's presence, each object's shape, colour and size, the background). For an instruction or free text, which
leave things open, the probe's own reading of the image comes first when it satisfies the text (`text_holds`),
ordered by the probe's confidence in that reading. The probe is a classifier trained on rendered ground truth
(probe.py); alignment is scored by the rule-based reader (reader.py), another judge, so `llmimg eval` does not
grade the probe's choice with the probe.
"""

from __future__ import annotations

import numpy as np

from llmimg_jax.data.shapes.constraints import text_holds
from llmimg_jax.data.shapes.grammar import parse_description
from llmimg_jax.data.shapes.scene import Scene
from llmimg_jax.data.shapes.spec import ALL_CELLS, SHAPES, SIZES, ShapesError
from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.probe import BACKGROUND_NAMES, COLOUR_NAMES, Probe, labels_to_scenes

# Below any log-likelihood the probe gives: a reading that breaks the text ranks after every one that keeps it.
BREAKS_TEXT = -1e4


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def scene_log_likelihood(log_probs: dict[str, np.ndarray], i: int, scene: Scene) -> float:
    """log p(scene | image i) under the probe's heads (log-softmaxed), cells and attributes independent."""
    occupied = {obj.cell: obj for obj in scene.objects}
    total = float(log_probs["background"][i, BACKGROUND_NAMES.index(scene.background)])
    for j, cell in enumerate(ALL_CELLS):
        obj = occupied.get(cell)
        total += float(log_probs["presence"][i, j, int(obj is not None)])
        if obj is not None:
            total += float(log_probs["shape"][i, j, SHAPES.index(obj.shape)]
                           + log_probs["colour"][i, j, COLOUR_NAMES.index(obj.colour)]
                           + log_probs["size"][i, j, SIZES.index(obj.size)])
    return total


class ProbeReranker:
    """Scores images against Shapes texts with the probe and keeps the best of each group of candidates."""

    def __init__(self, probe: Probe):
        self.probe = probe

    def scores(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        """float64 [N]: how well image i shows text i (higher is better)."""
        if len(images) != len(texts):
            raise UserError(f"{len(images)} images but {len(texts)} texts; pass one text per image")
        log_probs = {k: _log_softmax(v) for k, v in self.probe.logits(images).items()}
        read = labels_to_scenes({k: v.argmax(-1) for k, v in log_probs.items()})
        out = np.empty(len(texts))
        for i, text in enumerate(texts):
            try:
                described = parse_description(text)
            except ShapesError:  # an instruction or free text: judge the probe's reading of the image
                described = None
            if described is not None:
                out[i] = scene_log_likelihood(log_probs, i, described)
            elif read[i] is None:  # no object, or more than 3
                out[i] = 2 * BREAKS_TEXT
            else:
                out[i] = scene_log_likelihood(log_probs, i, read[i]) + (0 if text_holds(text, read[i]) else BREAKS_TEXT)
        return out

    def choose(self, candidates: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """candidates [P, N, S, S, 3] for P texts -> (the best image of each group [P, S, S, 3], its index [P])."""
        if candidates.ndim != 5 or len(candidates) != len(texts):
            raise UserError(f"expected candidates [len(texts)={len(texts)}, N, S, S, 3], got {candidates.shape}")
        p, n = candidates.shape[:2]
        scores = self.scores(candidates.reshape(p * n, *candidates.shape[2:]), [t for t in texts for _ in range(n)])
        best = scores.reshape(p, n).argmax(1)
        return candidates[np.arange(p), best], best
