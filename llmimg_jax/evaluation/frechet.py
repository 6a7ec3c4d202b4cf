"""Fréchet distance between two Gaussians fitted to feature sets (the FID formula), in float64 numpy.

d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½). The eigenvalues of S1 S2 are those of the symmetric
positive semi-definite A S2 A with A = S1^½, so the trace term is the sum of the square roots of the latter's
eigenvalues: two symmetric eigen-decompositions, no general (and possibly complex) matrix square root.
"""

from __future__ import annotations

import numpy as np

from llmimg_jax.errors import UserError


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; rounding's tiny negative eigenvalues -> 0."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return 0.5 * (matrix + matrix.T)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (covariances [F, F])."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise UserError(f"Fréchet distance needs means [F] and covariances [F, F] of one F; got {mu1.shape}, "
                        f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    root1 = _sqrt_psd(_symmetric(sigma1))
    product = _symmetric(root1 @ _symmetric(sigma2) @ root1)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(product), 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    # Identical inputs can land a rounding error below zero; a distance is never negative.
    return float(max(value, 0.0))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and unbiased covariance [F, F] (float64) of features [N, F], N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise UserError(f"Fréchet statistics need features [N, F] with N >= 2, got shape {features.shape}; "
                        "pass more images")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Squared Fréchet distance between Gaussians fitted to two feature sets [N1, F] and [N2, F]."""
    mu1, sigma1 = gaussian_stats(features1)
    mu2, sigma2 = gaussian_stats(features2)
    return frechet_distance(mu1, sigma1, mu2, sigma2)
