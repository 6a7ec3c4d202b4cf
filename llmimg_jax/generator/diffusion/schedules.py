"""Noise schedules (DDPM notation): betas, alphas, alphas_cumprod (ᾱ) and SNR = ᾱ / (1 - ᾱ).

Matches diffusers' beta_schedule "linear", "scaled_linear" and "squaredcos_cap_v2" ("cosine" here).
Arrays are computed in float64 and stored as float32 numpy arrays.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from llmimg_jax.errors import UserError

SCHEDULES = ("linear", "scaled_linear", "cosine")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashable by identity, so usable as a jit static arg
class Schedule:
    name: str
    betas: np.ndarray           # [T] float32
    alphas: np.ndarray          # [T] 1 - betas
    alphas_cumprod: np.ndarray  # [T] ᾱ_t
    snr: np.ndarray             # [T] ᾱ_t / (1 - ᾱ_t)

    @property
    def num_train_steps(self) -> int:
        return int(self.betas.shape[0])


def _cosine_betas(steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine ᾱ(t) turned into betas, each capped at `max_beta`."""
    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)],
                    dtype=np.float64)


def make_schedule(name: str = "linear", num_train_steps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> Schedule:
    """Builds the named schedule with `num_train_steps` training timesteps."""
    if num_train_steps < 2:
        raise UserError(f"num_train_steps={num_train_steps} is too small; use at least 2 (usually 1000)")
    if name == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_steps, dtype=np.float64)
    elif name == "scaled_linear":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_steps, dtype=np.float64) ** 2
    elif name == "cosine":
        betas = _cosine_betas(num_train_steps)
    else:
        raise UserError(f"unknown noise schedule '{name}'; choose one of {', '.join(SCHEDULES)}")
    if not (np.all(betas > 0) and np.all(betas < 1)):
        raise UserError(f"schedule '{name}' gives betas outside (0, 1); check beta_start/beta_end")
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    f32 = lambda a: a.astype(np.float32)
    return Schedule(name, f32(betas), f32(alphas), f32(alphas_cumprod), f32(snr))
