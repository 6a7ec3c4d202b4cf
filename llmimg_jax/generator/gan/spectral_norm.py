"""Spectral normalisation (Miyato et al. 2018) for the discriminator's layers.

A kernel is reshaped to a matrix W [fan_in, out] and divided by its largest singular value, estimated as
sigma = ||W u|| with a unit vector u kept in the `spectral` collection and refined by power iteration on every
training call (`update=True`, which needs `mutable=["spectral"]`). u is a running estimate, not a parameter:
no gradient flows through it, while the gradient through W in ||W u|| is the gradient of sigma once u has
converged.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmimg_jax.training.sharding import gather_for_compute

Array = jax.Array

_EPS = 1e-12


def _unit(x: Array) -> Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x) + _EPS)


def power_iteration(matrix: Array, u: Array, num_iters: int) -> tuple[Array, Array]:
    """Refines the right singular vector estimate `u` [n] of `matrix` [m, n]; returns (u, sigma = ||matrix u||)."""
    matrix = matrix.astype(jnp.float32)
    u = u.astype(jnp.float32)
    u = jax.lax.fori_loop(0, num_iters, lambda _, u: _unit(matrix.T @ _unit(matrix @ u)), u)
    sigma = jnp.sqrt(jnp.sum(jnp.square(matrix @ u)))
    return u, sigma


def spectral_normalize(module: nn.Module, kernel: Array, out_name: str, update: bool, num_iters: int) -> Array:
    """Returns `kernel / sigma(kernel)`; keeps u in `module`'s `spectral` collection (call inside a compact method)."""
    matrix = kernel.reshape(-1, kernel.shape[-1])
    u_var = module.variable(
        "spectral", "u",
        nn.with_logical_partitioning(
            lambda: _unit(jax.random.normal(module.make_rng("params"), (kernel.shape[-1],), jnp.float32)),
            (out_name,)),
    )
    u = jax.lax.stop_gradient(u_var.value)
    if update:
        u, _ = power_iteration(jax.lax.stop_gradient(matrix), u, num_iters)
        if not module.is_initializing():
            u_var.value = u
    _, sigma = power_iteration(matrix, u, 0)
    return kernel / jnp.maximum(sigma, _EPS).astype(kernel.dtype)


class SNConv(nn.Module):
    """NHWC 'SAME' convolution with float32 params, logical names and optional spectral normalisation."""

    features: int
    kernel_size: int = 3
    spectral_norm: bool = True
    power_iterations: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, update: bool = False) -> Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
            (k, k, x.shape[-1], self.features), jnp.float32)
        kernel = gather_for_compute(kernel, (None, None, "conv_in", "conv_out"))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                          (self.features,), jnp.float32)
        if self.spectral_norm:
            kernel = spectral_normalize(self, kernel, "conv_out", update, self.power_iterations)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)


class SNDense(nn.Module):
    """Dense layer [in, features] with logical `names` (in, out), float32 params, optional spectral norm."""

    features: int
    names: Sequence[str]
    spectral_norm: bool = True
    power_iterations: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, update: bool = False) -> Array:
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), tuple(self.names)),
                            (x.shape[-1], self.features), jnp.float32)
        kernel = gather_for_compute(kernel, self.names)
        if self.spectral_norm:
            kernel = spectral_normalize(self, kernel, self.names[-1], update, self.power_iterations)
        y = x.astype(self.dtype) @ kernel.astype(self.dtype)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.names[-1],)),
                              (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y
