"""A user's feature extractor for the Fréchet distance on data sets other than the Shapes world.

`--features MODULE:FUNCTION` (an importable module) or `--features path/to/file.py:FUNCTION`, where
`FUNCTION(images uint8 [N, S, S, 3]) -> features [N, D]` (numpy or anything `np.asarray` takes).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable

import numpy as np

from llmimg_jax.errors import UserError

CHUNK = 64  # images per call of the extractor, so memory stays bounded however many images are measured

Extractor = Callable[[np.ndarray], np.ndarray]


def _import(where: str, spec: str):
    if where.endswith(".py") or os.sep in where or "/" in where:
        if not os.path.isfile(where):
            raise UserError(f"--features '{spec}': file '{where}' not found; pass MODULE:FUNCTION or "
                            "path/to/file.py:FUNCTION")
        module_spec = importlib.util.spec_from_file_location(
            f"_llmimg_features_{abs(hash(os.path.abspath(where)))}", where)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)  # errors in the user's module keep their traceback
        return module
    try:
        return importlib.import_module(where)
    except ImportError as e:
        raise UserError(f"--features '{spec}': cannot import module '{where}' ({e}); pass an importable "
                        "MODULE:FUNCTION or path/to/file.py:FUNCTION") from None


def load_feature_extractor(spec: str) -> Extractor:
    """The function named by `MODULE:FUNCTION` or `file.py:FUNCTION`; a bad spec is a one-line UserError."""
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise UserError(f"--features '{spec}' should be MODULE:FUNCTION or path/to/file.py:FUNCTION")
    module = _import(where, spec)
    function = getattr(module, name, None)
    if function is None:
        raise UserError(f"--features '{spec}': '{where}' has no '{name}'; name a function defined there")
    if not callable(function):
        raise UserError(f"--features '{spec}': '{name}' is a {type(function).__name__}, not a function")
    return function


def extract_features(extractor: Extractor, images: np.ndarray, spec: str = "the feature extractor") -> np.ndarray:
    """float64 features [N, D] of uint8 images [N, S, S, 3], in chunks; a malformed result is a UserError."""
    parts = []
    for start in range(0, len(images), CHUNK):
        chunk = images[start:start + CHUNK]
        features = np.asarray(extractor(chunk))
        if features.ndim != 2 or features.shape[0] != len(chunk) or not np.issubdtype(features.dtype, np.number):
            raise UserError(f"{spec} returned {features.dtype} {features.shape} for {len(chunk)} images; it must "
                            f"return numbers [N, D] (N = {len(chunk)})")
        features = features.astype(np.float64)
        if not np.isfinite(features).all():
            raise UserError(f"{spec} returned non-finite features (NaN or inf); fix the extractor")
        parts.append(features)
    if len({p.shape[1] for p in parts}) > 1:
        raise UserError(f"{spec} returned features of different widths D across calls; return one D")
    return np.concatenate(parts)
