"""Sample diversity of several images per prompt: mean pairwise distance in probe feature space, and the share
of distinct scenes read from them (Shapes)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmimg_jax.data.shapes.reader import read_image
from llmimg_jax.data.shapes.spec import ShapesError
from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.alignment import to_uint8


def _check_groups(groups: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each group: the K >= 2 images [K, S, S, 3] generated for one prompt."""
    groups = [to_uint8(g) for g in groups]
    if not groups or any(len(g) < 2 for g in groups):
        raise UserError("diversity needs at least one prompt with 2 or more images each; sample more per prompt")
    return groups


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over the K (K - 1) / 2 pairs of rows of features [K, F]."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise UserError(f"pairwise distance needs features [K, F] with K >= 2, got shape {x.shape}")
    i, j = np.triu_indices(len(x), k=1)
    return float(np.linalg.norm(x[i] - x[j], axis=-1).mean())


def feature_diversity(probe, groups: Sequence[np.ndarray]) -> float:
    """Mean over prompts of the mean pairwise distance of the probe features of that prompt's images."""
    groups = _check_groups(groups)
    features = probe.features(np.concatenate(groups))  # one pass over all images
    bounds = np.cumsum([0] + [len(g) for g in groups])
    return float(np.mean([mean_pairwise_distance(features[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]))


def distinct_scene_fraction(groups: Sequence[np.ndarray]) -> float:
    """Mean over prompts of (number of distinct scenes read from its K images) / K; images the reader cannot
    read count together as one more 'scene'. 1/K for identical images, 1 when every image differs."""
    groups = _check_groups(groups)
    fractions = []
    for group in groups:
        seen = set()
        for image in group:
            try:
                seen.add(read_image(image))
            except ShapesError:  # 0 or > 3 objects: not a Shapes scene, one shared 'unreadable' value
                seen.add(None)
        fractions.append(len(seen) / len(group))
    return float(np.mean(fractions))


def diversity(groups: Sequence[np.ndarray], probe=None) -> dict[str, float]:
    """{'distinct_scenes': ..., 'feature_distance': ... (when a probe is given)} for images grouped by prompt."""
    out = {"distinct_scenes": distinct_scene_fraction(groups)}
    if probe is not None:
        out["feature_distance"] = feature_diversity(probe, groups)
    return out
