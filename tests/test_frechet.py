import numpy as np
import pytest
import scipy.linalg

from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats


def _features(seed: int, n: int = 400, f: int = 24, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(f, f)) / np.sqrt(f)  # correlated features, like a network's
    return rng.normal(size=(n, f)) @ mixing + shift + rng.normal(size=f) * 0.1


def _scipy_reference(x1: np.ndarray, x2: np.ndarray) -> float:
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_matches_scipy_reference(shift):
    x1, x2 = _features(0), _features(1, n=300, shift=shift)
    ours, ref = frechet_distance_from_features(x1, x2), _scipy_reference(x1, x2)
    assert ref > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), want, rtol=1e-12)


def test_zero_for_identical_and_symmetric():
    x1, x2 = _features(4), _features(5, shift=0.5)
    scale = np.trace(np.cov(x1, rowvar=False))
    assert frechet_distance_from_features(x1, x1) < 1e-10 * scale
    assert frechet_distance_from_features(x1, x1.copy()[::-1]) < 1e-10 * scale  # order does not matter
    np.testing.assert_allclose(frechet_distance_from_features(x1, x2), frechet_distance_from_features(x2, x1),
                               rtol=1e-9)


def test_rank_deficient_covariances_stay_finite():
    # Fewer samples than features: singular covariances, where a general sqrtm goes complex.
    x1, x2 = _features(6, n=10, f=32), _features(7, n=12, f=32, shift=0.2)
    d = frechet_distance_from_features(x1, x2)
    assert np.isfinite(d) and d > 0
    assert frechet_distance_from_features(x1, x1) < 1e-9 * np.trace(np.cov(x1, rowvar=False))


def test_bad_input_raises_user_error():
    with pytest.raises(UserError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(UserError, match="one F"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
