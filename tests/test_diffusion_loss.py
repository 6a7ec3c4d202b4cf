"""Parameterisations, min-SNR-γ weights and the diffusion loss against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.errors import UserError
from llmimg_jax.generator.diffusion import loss as L
from llmimg_jax.generator.diffusion.schedules import make_schedule

SCHEDULE = make_schedule("linear", 1000)


def _x0_weight(snr, prediction, gamma):
    """min-SNR-γ on the x0-space loss: Hang et al.'s min(SNR, γ); for v, diffusers' min(SNR+1, γ), which stays
    1 at SNR = 0 instead of vanishing."""
    snr = np.asarray(snr, np.float64)
    return np.minimum(snr + 1 if prediction == "v" else snr, gamma)


def _ref_weight(snr, prediction, gamma):
    snr = np.asarray(snr, np.float64)
    # |ε̂-ε|² = SNR |x̂0-x0|², |v̂-v|² = (1+SNR) |x̂0-x0|²
    return _x0_weight(snr, prediction, gamma) / {"x0": 1.0, "eps": snr, "v": 1 + snr}[prediction]


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weights(prediction):
    t = np.array([0, 10, 100, 400, 999])
    acp = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t]
    snr = acp / (1 - acp)
    got = L.min_snr_weight(jnp.asarray(SCHEDULE.snr[t]), prediction, 5.0)
    np.testing.assert_allclose(got, _ref_weight(snr, prediction, 5.0), rtol=1e-5)
    np.testing.assert_array_equal(L.min_snr_weight(jnp.asarray(snr, jnp.float32), prediction, None), 1.0)


def test_min_snr_equalises_parameterisations():
    """With the weights, every parameterisation's loss equals its x0-space weight times |x̂0 - x0|² for the same x̂0
    (min(SNR, γ); min(SNR+1, γ) for v)."""
    rng = np.random.default_rng(0)
    t = jnp.array([5, 300, 900])
    a, s = np.sqrt(SCHEDULE.alphas_cumprod[t]), np.sqrt(1 - SCHEDULE.alphas_cumprod[t])
    x0, eps = rng.standard_normal((3, 8)), rng.standard_normal((3, 8))
    x_t = a[:, None] * x0 + s[:, None] * eps
    x0_hat = x0 + 0.1 * rng.standard_normal((3, 8))
    eps_hat = (x_t - a[:, None] * x0_hat) / s[:, None]
    v_hat = a[:, None] * eps_hat - s[:, None] * x0_hat
    for pred, out in (("eps", eps_hat), ("v", v_hat), ("x0", x0_hat)):
        want = _x0_weight(SCHEDULE.snr[t], pred, 5.0) * np.mean((x0_hat - x0) ** 2, 1)
        tgt = L.target(pred, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(a), jnp.asarray(s))
        per = np.mean((out - np.asarray(tgt, np.float64)) ** 2, 1)
        got = np.asarray(L.min_snr_weight(jnp.asarray(SCHEDULE.snr[t]), pred, 5.0)) * per
        np.testing.assert_allclose(got, want, rtol=2e-3, err_msg=pred)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_conversions_round_trip(prediction):
    rng = np.random.default_rng(1)
    t = jnp.array([0, 250, 999])
    a, s = jnp.sqrt(SCHEDULE.alphas_cumprod[t]), jnp.sqrt(1 - SCHEDULE.alphas_cumprod[t])
    x0 = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 3)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((3, 4, 4, 3)), jnp.float32)
    x_t = a[:, None, None, None] * x0 + s[:, None, None, None] * eps
    out = L.target(prediction, x0, eps, a, s)
    x0_back, eps_back = L.predicted_x0_eps(prediction, out, x_t, a, s)
    # x0 from ε at t=999 divides by sqrt(ᾱ) ≈ 0.006: compare with a tolerance scaled by that.
    tol = 2e-6 / np.asarray(a)[:, None, None, None]
    assert np.all(np.abs(np.asarray(x0_back - x0)) <= tol + 1e-5)
    assert np.all(np.abs(np.asarray(eps_back - eps)) <= tol / 100 + 2e-5 / np.asarray(s)[:, None, None, None])
    # v against its float64 definition
    if prediction == "v":
        a64, s64 = np.asarray(a, np.float64)[:, None, None, None], np.asarray(s, np.float64)[:, None, None, None]
        np.testing.assert_allclose(out, a64 * np.asarray(eps) - s64 * np.asarray(x0), atol=1e-6)


def _model(params, x, t, cond):
    """A model that depends on x, t, params and the condition (so dropping it matters)."""
    text = jnp.sum(cond["context"] * cond["context_mask"][..., None], axis=(1, 2)) + cond["pooled"].sum(-1)
    return params * x + 1e-3 * t[:, None, None, None] + text[:, None, None, None]


def _cond(rng, batch):
    mask = np.ones((batch, 4), bool)
    mask[:, 2:] = False
    return {"context": jnp.asarray(rng.standard_normal((batch, 4, 3)), jnp.float32), "context_mask": jnp.asarray(mask),
            "pooled": jnp.asarray(rng.standard_normal((batch, 3)), jnp.float32)}


@pytest.mark.parametrize("prediction,gamma", [("eps", None), ("eps", 5.0), ("v", 5.0), ("x0", 1.0)])
def test_loss_at_matches_float64(prediction, gamma):
    rng = np.random.default_rng(2)
    x0 = rng.uniform(-1, 1, (4, 4, 4, 3))
    eps = rng.standard_normal((4, 4, 4, 3))
    t = np.array([0, 17, 500, 999])
    cond = _cond(rng, 4)
    got = L.diffusion_loss_at(_model, 0.7, jnp.asarray(x0, jnp.float32), cond, jnp.asarray(t),
                              jnp.asarray(eps, jnp.float32), SCHEDULE, prediction, gamma)
    acp = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t][:, None, None, None]
    a, s = np.sqrt(acp), np.sqrt(1 - acp)
    x_t = a * x0 + s * eps
    text = (np.asarray(cond["context"], np.float64) * np.asarray(cond["context_mask"])[..., None]).sum((1, 2))
    out = 0.7 * x_t + 1e-3 * t[:, None, None, None] + (text + np.asarray(cond["pooled"]).sum(-1))[:, None, None, None]
    tgt = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction]
    per = ((out - tgt) ** 2).mean((1, 2, 3))
    w = np.ones(4) if gamma is None else _ref_weight((acp / (1 - acp)).ravel(), prediction, gamma)
    np.testing.assert_allclose(float(got), (w * per).mean(), rtol=1e-5)


def test_condition_dropout():
    rng = np.random.default_rng(3)
    cond = _cond(rng, 6)
    null = L.null_condition(cond)
    assert not np.any(np.asarray(null["context"])) and not np.any(np.asarray(null["pooled"]))
    assert np.all(np.asarray(null["context_mask"]).sum(1) == 1)  # a valid (non-empty) mask
    drop = jnp.array([True, False, True, False, False, True])
    mixed = L.drop_condition(cond, null, drop)
    for k in cond:
        np.testing.assert_array_equal(np.asarray(mixed[k])[~np.asarray(drop)], np.asarray(cond[k])[~np.asarray(drop)])
        np.testing.assert_array_equal(np.asarray(mixed[k])[np.asarray(drop)], np.asarray(null[k])[np.asarray(drop)])
    x0 = jnp.asarray(rng.uniform(-1, 1, (6, 4, 4, 3)), jnp.float32)
    key = jax.random.key(0)
    plain = L.diffusion_loss(_model, 0.5, x0, cond, key, SCHEDULE)
    assert float(L.diffusion_loss(_model, 0.5, x0, cond, key, SCHEDULE, p_uncond=0.0)) == float(plain)
    # p_uncond = 1: every example sees the null condition
    all_null = L.diffusion_loss(_model, 0.5, x0, cond, key, SCHEDULE, p_uncond=1.0)
    np.testing.assert_allclose(all_null, L.diffusion_loss(_model, 0.5, x0, null, key, SCHEDULE), rtol=1e-6)
    assert abs(float(all_null) - float(plain)) > 1e-3
    with pytest.raises(UserError, match="p_uncond"):
        L.diffusion_loss(_model, 0.5, x0, cond, key, SCHEDULE, p_uncond=1.5)
    with pytest.raises(UserError, match="prediction"):
        L.diffusion_loss(_model, 0.5, x0, cond, key, SCHEDULE, prediction="score")


def test_loss_draws_all_timesteps_and_standard_noise():
    """diffusion_loss with a model returning 0 and ε-prediction: loss = mean ε² ≈ 1 regardless of t."""
    x0 = jnp.zeros((512, 4, 4, 3))
    cond = _cond(np.random.default_rng(4), 512)
    zero = lambda p, x, t, c: jnp.zeros_like(x)
    val = float(L.diffusion_loss(zero, None, x0, cond, jax.random.key(1), SCHEDULE))
    assert abs(val - 1.0) < 0.02, val
    # x0-prediction of zero data with a zero model: loss exactly 0
    assert float(L.diffusion_loss(zero, None, x0, cond, jax.random.key(1), SCHEDULE, "x0")) == 0.0
