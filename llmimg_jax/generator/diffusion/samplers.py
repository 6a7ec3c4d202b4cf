"""Samplers: DDPM (ancestral, "fixed_small" variance), DDIM (η) and DPM-Solver++(2M); classifier-free guidance.

Every sampler step has the same linear form, so one `lax.scan` runs them all:

    x_prev = A·x + B·x0 + C·ε + D·noise + E·x0_prev_step

where (x0, ε) come from the model output and x0 may be clipped or thresholded. The coefficients are computed
per step on the host in float64 (`make_plan`), from the float32 ᾱ of the schedule. Conventions follow diffusers:

- timesteps: DDPM/DDIM "leading" spacing, t_i = (n-1-i)·(T//n) + steps_offset (diffusers' default), or
  "trailing", round(T - i·T/n) - 1, which starts at the last training step T-1 (Lin et al. 2024: a leading
  run's first step, e.g. t = 980 of 1000 for 50 steps, reads pure noise as an image with a little signal left, so
  the noise, not the text, picks what the text should: a Shapes background); DPM-Solver "linspace" spacing,
  round(linspace(0, T-1, n+1))[::-1][:-1], which starts at T-1 too;
- DDPM: the previous step is the next entry of the timestep list (ᾱ_prev = 1 after the last); no noise at t = 0;
- DDIM: the previous step is t - T//n, ᾱ_prev = 1 when it is negative (set_alpha_to_one); ε is re-derived from
  the clipped (or thresholded) x0, diffusers' use_clipped_model_output=True. With the model's own ε instead, a
  guided x0 clipped at the noisiest steps (say 3 -> 1) leaves ε pointing the other way, and the step moves
  x away from the clipped x0: a Shapes model sampled that way drew black backgrounds for "white" (measured);
- DPM-Solver++(2M): midpoint form, first order on the first step and on the last one (final sigma 0, so the last
  step returns x0, as diffusers' final_sigmas_type="zero" / lower_order_final).

Clipping x0 to [-1, 1] is applied to all three samplers when `clip_x0` (diffusers' DPM-Solver has no such option);
`thresholding=p` is Imagen's dynamic thresholding instead. With either, the returned images lie in [-1, 1];
with neither (`clip_x0=False`), the raw final sample is returned (for analytic checks).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from llmimg_jax.errors import UserError
from llmimg_jax.generator.diffusion.loss import ModelFn, check_prediction, null_condition, predicted_x0_eps
from llmimg_jax.generator.diffusion.schedules import Schedule

SAMPLERS = ("ddpm", "ddim", "dpm++2m")
SPACINGS = ("leading", "trailing")  # of DDPM and DDIM; DPM-Solver++ always uses "linspace"


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """Per-step float64 arrays [n] of one sampling run (step i goes from timesteps[i] to the next level)."""
    timesteps: np.ndarray  # int64, model input timestep
    a: np.ndarray          # sqrt(ᾱ_t), to turn the model output into x0 / ε
    s: np.ndarray          # sqrt(1 - ᾱ_t)
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray
    E: np.ndarray

    def row(self, i: int) -> dict:
        return {k: v[i] for k, v in dataclasses.asdict(self).items()}


def sampler_timesteps(schedule: Schedule, sampler: str, steps: int, steps_offset: int = 0,
                      spacing: str = "leading") -> np.ndarray:
    """The model timesteps of a run, as diffusers' set_timesteps(steps) for that scheduler and `spacing`."""
    T = schedule.num_train_steps
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
    if spacing not in SPACINGS:
        raise UserError(f"unknown timestep spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
    if not 1 <= steps <= T:
        raise UserError(f"steps={steps} must be between 1 and the schedule's {T} training steps")
    if sampler == "dpm++2m":
        return np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "trailing":
        return (np.round(np.arange(T, 0, -T / steps)) - 1).astype(np.int64)
    ts = np.arange(steps)[::-1] * (T // steps) + steps_offset
    if ts[0] >= T:
        raise UserError(f"steps_offset={steps_offset} pushes timestep {ts[0]} past {T - 1}; lower it")
    return ts.astype(np.int64)


def make_plan(schedule: Schedule, sampler: str, steps: int, eta: float = 0.0, steps_offset: int = 0,
              spacing: str = "leading") -> Plan:
    """Coefficients of every step of `sampler` with `steps` steps (float64 numpy)."""
    ts = sampler_timesteps(schedule, sampler, steps, steps_offset, spacing)
    acp = schedule.alphas_cumprod.astype(np.float64)
    n, T = len(ts), schedule.num_train_steps
    a, s = np.sqrt(acp[ts]), np.sqrt(1.0 - acp[ts])
    A, B, C, D, E = (np.zeros(n) for _ in range(5))
    if sampler == "ddpm":
        acp_prev = np.append(acp[ts[1:]], 1.0)
        cur_alpha = acp[ts] / acp_prev
        cur_beta = 1.0 - cur_alpha
        B = np.sqrt(acp_prev) * cur_beta / (1.0 - acp[ts])
        A = np.sqrt(cur_alpha) * (1.0 - acp_prev) / (1.0 - acp[ts])
        var = np.maximum((1.0 - acp_prev) / (1.0 - acp[ts]) * cur_beta, 1e-20)
        D = np.where(ts > 0, np.sqrt(var), 0.0)
    elif sampler == "ddim":
        prev = ts - T // steps
        acp_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], 1.0)
        var = (1.0 - acp_prev) / (1.0 - acp[ts]) * (1.0 - acp[ts] / acp_prev)
        D = eta * np.sqrt(var)
        # x_prev = sqrt(ᾱ_prev)·x0 + c·ε with ε re-derived from the (clipped) x0, ε = (x - a·x0)/s, folded into A, B.
        c = np.sqrt(np.maximum(1.0 - acp_prev - D ** 2, 0.0))
        A, B = c / s, np.sqrt(acp_prev) - c * a / s
    else:
        # sigma = s/a per level, plus a final level sigma = 0 (clean image).
        sigma = np.append(s / a, 0.0)
        alpha_t, sigma_t = 1.0 / np.sqrt(sigma ** 2 + 1.0), sigma / np.sqrt(sigma ** 2 + 1.0)
        with np.errstate(divide="ignore"):
            lam = np.log(alpha_t) - np.log(sigma_t)  # log-SNR/2; +inf at the final level
        for i in range(n):
            if sigma[i + 1] == 0.0:  # step to the clean image: x_prev = x0
                B[i] = 1.0
                continue
            h = lam[i + 1] - lam[i]
            A[i] = sigma_t[i + 1] / sigma_t[i]
            k = -alpha_t[i + 1] * np.expm1(-h)
            if h == 0.0:  # repeated timestep (steps > T/2): stay put, where the 2M formula would divide by 0
                continue
            if i == 0 or lam[i] == lam[i - 1]:  # first step, or after a repeated one: first order
                B[i] = k
            else:  # second order: D0 = x0_i, D1 = (x0_i - x0_{i-1}) / r0
                r0 = (lam[i] - lam[i - 1]) / h
                B[i] = k * (1.0 + 0.5 / r0)
                E[i] = -k * 0.5 / r0
    return Plan(ts, a, s, A, B, C, D, E)


def dynamic_threshold(x0: jax.Array, percentile: float) -> jax.Array:
    """Imagen: s = max(1, quantile_p(|x0|)) per example; clip to [-s, s] and divide by s."""
    flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
    q = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
    q = q.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -q, q) / q


def denoise_step(row: dict, x: jax.Array, out: jax.Array, x0_prev: jax.Array, noise: Optional[jax.Array], *,
                 prediction: str = "eps", clip_x0: bool = False,
                 thresholding: Optional[float] = None) -> tuple[jax.Array, jax.Array]:
    """One step from model output `out` at x; returns (x_prev, x0 used). `row` is `plan.row(i)` (or traced)."""
    f = lambda v: jnp.asarray(v, jnp.float32)
    x0, eps = predicted_x0_eps(prediction, out, x, f(row["a"]), f(row["s"]))
    if thresholding is not None:
        x0 = dynamic_threshold(x0, thresholding)
    elif clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
    x_prev = f(row["A"]) * x + f(row["B"]) * x0 + f(row["C"]) * eps + f(row["E"]) * x0_prev
    if noise is not None:
        x_prev = x_prev + f(row["D"]) * noise
    return x_prev, x0


def guided_output(model_fn: ModelFn, params: Any, x: jax.Array, t: jax.Array, cond: dict,
                  uncond: Optional[dict], guidance: float) -> jax.Array:
    """Classifier-free guidance u + g·(c - u) with ONE model call on the concatenated batch."""
    if uncond is None:
        return model_fn(params, x, t, cond).astype(jnp.float32)
    both = {k: None if cond[k] is None else
            jnp.concatenate([cond[k], jnp.broadcast_to(uncond[k].astype(cond[k].dtype), cond[k].shape)])
            for k in cond}
    out = model_fn(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]), both).astype(jnp.float32)
    c, u = jnp.split(out, 2)
    return u + guidance * (c - u)


@functools.partial(jax.jit, static_argnames=("model_fn", "shape", "prediction", "clip_x0", "thresholding",
                                             "stochastic", "guidance", "x_sharding"))
def _sample_loop(model_fn: ModelFn, params: Any, cond: dict, uncond: Optional[dict], rng: jax.Array,
                 plan: dict, *, shape: tuple, prediction: str, clip_x0: bool, thresholding: Optional[float],
                 stochastic: bool, guidance: float, x_sharding: Any) -> jax.Array:
    init_key, loop_key = jax.random.split(rng)
    x = jax.random.normal(init_key, shape, jnp.float32)
    if x_sharding is not None:
        x = jax.lax.with_sharding_constraint(x, x_sharding)

    def body(carry, row):
        x, x0_prev = carry
        t = jnp.full((shape[0],), row["timesteps"], jnp.int32)
        out = guided_output(model_fn, params, x, t, cond, uncond, guidance)
        noise = jax.random.normal(jax.random.fold_in(loop_key, row["timesteps"]), shape) if stochastic else None
        x, x0 = denoise_step(row, x, out, x0_prev, noise, prediction=prediction, clip_x0=clip_x0,
                             thresholding=thresholding)
        return (x, x0), None

    (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), plan)
    # The last step returns the (clipped / thresholded) x0 already; this only removes rounding overshoot.
    return jnp.clip(x, -1.0, 1.0) if clip_x0 or thresholding is not None else x


def _batch_sharding(tree: Any, ndim: int) -> Optional[NamedSharding]:
    """The sharding of the images when the (concrete) condition arrays are batch-sharded on a mesh."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and len(sharding.spec) and sharding.spec[0] is not None:
            return NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0], *([None] * (ndim - 1))))
    return None


def check_sampling(schedule: Schedule, sampler: str, steps: int, eta: float = 0.0, prediction: str = "eps",
                   thresholding: Optional[float] = None, steps_offset: int = 0, spacing: str = "leading") -> Plan:
    """The plan of a sampling run; a UserError naming the bad setting when one is."""
    check_prediction(prediction)
    if thresholding is not None and not 0.0 < thresholding <= 1.0:
        raise UserError(f"thresholding={thresholding} is a percentile in (0, 1]; e.g. 0.995, or None")
    if eta < 0:
        raise UserError(f"eta={eta} must be >= 0 (0: deterministic DDIM, 1: DDPM-like)")
    return make_plan(schedule, sampler, steps, eta, steps_offset, spacing)


def sample(model_fn: ModelFn, params: Any, shape: tuple[int, ...], cond: dict, uncond: Optional[dict],
           rng: jax.Array, *, schedule: Schedule, sampler: str = "ddim", steps: int = 50, guidance: float = 3.0,
           eta: float = 0.0, prediction: str = "eps", thresholding: Optional[float] = None, clip_x0: bool = True,
           steps_offset: int = 0, spacing: str = "leading") -> jax.Array:
    """Images [shape] in [-1, 1] from noise, in one jit-compiled scan over the steps.

    `cond` (context, context_mask, pooled) is batched like `shape[0]`; `uncond` defaults to `null_condition`;
    guidance 1.0 skips the unconditional half. `model_fn` is a jit static argument: reuse the same object.
    When the condition is batch-sharded on a mesh, the images are sharded the same way.
    """
    plan = check_sampling(schedule, sampler, steps, eta, prediction, thresholding, steps_offset, spacing)
    arrays = {k: jnp.asarray(v, jnp.int32 if k == "timesteps" else jnp.float32)
              for k, v in dataclasses.asdict(plan).items()}
    if guidance != 1.0 and uncond is None:
        uncond = null_condition(cond)
    stochastic = bool(np.any(plan.D > 0))
    return _sample_loop(model_fn, params, cond, uncond if guidance != 1.0 else None, rng, arrays,
                        shape=tuple(shape), prediction=prediction, clip_x0=clip_x0, thresholding=thresholding,
                        stochastic=stochastic, guidance=float(guidance),
                        x_sharding=_batch_sharding(cond, len(shape)))
