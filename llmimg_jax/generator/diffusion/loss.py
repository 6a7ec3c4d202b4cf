"""Parameterisations (ε, v, x0), their conversions, min-SNR-γ weighting and the diffusion training loss.

Notation: x_t = a·x0 + s·ε with a = sqrt(ᾱ_t), s = sqrt(1 - ᾱ_t); v = a·ε - s·x0; SNR = a² / s².

Classifier-free guidance training replaces the condition of a random `p_uncond` fraction of the batch by the
null condition. The default null condition (`null_condition`) is a zero context with only its first token valid
(so the attention mask is never empty) and a zero pooled vector: the cross-attention then sees one zero token,
whose value projection's bias acts as a learned "no text" embedding. This needs no parameters outside the model
and the samplers build the same null condition, so training and sampling agree by construction.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from llmimg_jax.errors import UserError
from llmimg_jax.generator.diffusion.schedules import Schedule

PREDICTIONS = ("eps", "v", "x0")
ModelFn = Callable[[Any, jax.Array, jax.Array, dict], jax.Array]


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise UserError(f"unknown prediction '{prediction}'; choose one of {', '.join(PREDICTIONS)}")


def _bcast(coef: jax.Array, x: jax.Array) -> jax.Array:
    """[B] (or scalar) coefficient broadcast against x [B, ...]."""
    coef = jnp.asarray(coef, jnp.float32)
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def target(prediction: str, x0: jax.Array, eps: jax.Array, a: jax.Array, s: jax.Array) -> jax.Array:
    """What the model is trained to output."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return _bcast(a, x0) * eps - _bcast(s, x0) * x0


def predicted_x0_eps(prediction: str, out: jax.Array, x_t: jax.Array, a: jax.Array,
                     s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x0, ε) implied by the model output `out` at x_t."""
    check_prediction(prediction)
    a, s = _bcast(a, x_t), _bcast(s, x_t)
    if prediction == "eps":
        return (x_t - s * out) / a, out
    if prediction == "x0":
        return out, (x_t - a * out) / s
    return a * x_t - s * out, a * out + s * x_t


def min_snr_weight(snr: jax.Array, prediction: str, gamma: Optional[float]) -> jax.Array:
    """Per-example loss weight of min-SNR-γ (Hang et al. 2023) for a loss in the `prediction` space.

    The paper weights the x0-space loss by min(SNR, γ). Since |ε̂-ε|² = SNR·|x̂0-x0|² and
    |v̂-v|² = (SNR+1)·|x̂0-x0|², that is min(SNR, γ)/SNR for ε. For v the weight is min(SNR+1, γ)/(SNR+1), as in
    diffusers' training scripts: the v-loss, capped where SNR+1 > γ. The paper's min(SNR, γ)/(SNR+1) would
    vanish as SNR -> 0, and the noisiest steps are where a sampler starting from pure noise must take the
    background and layout from the text alone: trained that way, a Shapes model still drew the background at
    chance after 6000 steps (the README's measurements). Without γ the weight is 1 (the plain loss)."""
    check_prediction(prediction)
    if gamma is None:
        return jnp.ones_like(snr)
    if prediction == "v":
        return jnp.minimum(snr + 1.0, gamma) / (snr + 1.0)
    clipped = jnp.minimum(snr, gamma)
    return clipped / snr if prediction == "eps" else clipped


def null_condition(cond: dict) -> dict:
    """The "no text" condition shaped like `cond`: zero context (first token valid), zero pooled vector."""
    out = dict(cond)
    out["context"] = jnp.zeros_like(cond["context"])
    out["context_mask"] = jnp.zeros(cond["context_mask"].shape, bool).at[:, 0].set(True)
    if cond.get("pooled") is not None:
        out["pooled"] = jnp.zeros_like(cond["pooled"])
    return out


def drop_condition(cond: dict, uncond: dict, drop: jax.Array) -> dict:
    """Per example, `uncond` where drop [B] is True, else `cond` (uncond may have batch 1)."""
    def pick(c, u):
        u = jnp.broadcast_to(u.astype(c.dtype), c.shape)
        return jnp.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), u, c)
    return {k: pick(cond[k], uncond[k]) if cond[k] is not None else None for k in cond}


def diffusion_loss_at(model_fn: ModelFn, params: Any, x0: jax.Array, cond: dict, t: jax.Array, eps: jax.Array,
                      schedule: Schedule, prediction: str = "eps",
                      min_snr_gamma: Optional[float] = None) -> jax.Array:
    """The loss for given integer timesteps t [B] and noise ε (same shape as x0): weighted mean squared error."""
    acp = jnp.asarray(schedule.alphas_cumprod)[t]
    a, s = jnp.sqrt(acp), jnp.sqrt(1.0 - acp)
    x0 = x0.astype(jnp.float32)
    x_t = _bcast(a, x0) * x0 + _bcast(s, x0) * eps
    out = model_fn(params, x_t, t, cond).astype(jnp.float32)
    per_example = jnp.mean(jnp.square(out - target(prediction, x0, eps, a, s)), axis=tuple(range(1, x0.ndim)))
    weight = min_snr_weight(jnp.asarray(schedule.snr)[t], prediction, min_snr_gamma)
    return jnp.mean(weight * per_example)


def diffusion_loss(model_fn: ModelFn, params: Any, x0: jax.Array, cond: dict, rng: jax.Array, schedule: Schedule,
                   prediction: str = "eps", min_snr_gamma: Optional[float] = None, *, p_uncond: float = 0.0,
                   uncond: Optional[dict] = None) -> jax.Array:
    """Draws t ~ U{0..T-1}, ε ~ N(0, I) and the CFG drop mask from `rng`, then `diffusion_loss_at`.

    With p_uncond > 0 a fraction of the examples is conditioned on `uncond` (default `null_condition(cond)`).
    """
    check_prediction(prediction)
    if not 0.0 <= p_uncond <= 1.0:
        raise UserError(f"p_uncond={p_uncond} must be in [0, 1] (e.g. 0.1 for classifier-free guidance)")
    t_key, eps_key, drop_key = jax.random.split(rng, 3)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.num_train_steps)
    eps = jax.random.normal(eps_key, x0.shape, jnp.float32)
    if p_uncond > 0:
        drop = jax.random.bernoulli(drop_key, p_uncond, (x0.shape[0],))
        cond = drop_condition(cond, null_condition(cond) if uncond is None else uncond, drop)
    return diffusion_loss_at(model_fn, params, x0, cond, t, eps, schedule, prediction, min_snr_gamma)
