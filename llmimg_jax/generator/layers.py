"""Layers the generators share (the U-Net's blocks and the GAN's generator): convolution and dense layers with
logical axis names, LayerNorm, a fused GroupNorm, and multi-head attention.

Every parameter carries logical axis names (see docs/architecture.md); computation runs in `dtype`, parameters
stay float32. Kernels are gathered over the batch's mesh axes where they are used (`gather_for_compute`: FSDP,
and a guard against an XLA partitioner bug on 3-D meshes).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmimg_jax.training.sharding import CONV_NAMES, conv_gathered, gather_for_compute

Dtype = Any


def named(init: nn.initializers.Initializer, *names: Optional[str]) -> nn.initializers.Initializer:
    """An initializer whose parameter carries the logical axis `names`."""
    return nn.with_logical_partitioning(init, names)


_kernel = nn.initializers.lecun_normal()
_zeros = nn.initializers.zeros_init()
_ones = nn.initializers.ones_init()
# lecun_normal over the input (fan-in) axes of [in, heads, kv] and [heads, kv, out] kernels.
_heads_kernel = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=(1, 2))
_out_kernel = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)


# nn.Conv / nn.Dense with the kernel gathered over the batch's mesh axes before use (FSDP); leaving a kernel
# sharded [fsdp, tensor] makes XLA's partitioner mix up batch shards on 3-D meshes (see training/sharding.py).
def _dot_gathered(lhs: jax.Array, rhs: jax.Array, *args, names: Sequence[Optional[str]], **kwargs) -> jax.Array:
    return jax.lax.dot_general(lhs, gather_for_compute(rhs, names), *args, **kwargs)


def conv(features: int, kernel: int, name: str, dtype: Dtype, strides: int = 1) -> nn.Conv:
    """A 'SAME' convolution with kernel [kh, kw, conv_in, conv_out]."""
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding="SAME", dtype=dtype,
                   kernel_init=named(_kernel, *CONV_NAMES), bias_init=named(_zeros, "conv_out"),
                   conv_general_dilated=conv_gathered, name=name)


def dense(features: int, in_name: str, out_name: str, name: str, dtype: Dtype) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=named(_kernel, in_name, out_name),
                    bias_init=named(_zeros, out_name),
                    dot_general=functools.partial(_dot_gathered, names=(in_name, out_name)), name=name)


def layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(dtype=dtype, scale_init=named(_ones, "norm"), bias_init=named(_zeros, "norm"), name=name)


def group_norm(x: jax.Array, num_groups: int, epsilon: float, scale: Optional[jax.Array] = None,
               shift: Optional[jax.Array] = None) -> jax.Array:
    """GroupNorm over NHWC in float32, then `* scale + shift` ([C] or per example [B, C]; default 1 and 0).

    Statistics come from per-channel sums over H*W, combined per group on the small [B, C] array, and the
    normalisation and affine map are one fused multiply-add per element; on CPU this beats a grouped reshape."""
    b, c = x.shape[0], x.shape[-1]
    if c % num_groups:
        raise ValueError(f"GroupNorm: {c} channels are not divisible by {num_groups} groups")
    x32 = x.astype(jnp.float32)
    spatial = tuple(range(1, x.ndim - 1))
    count = (c // num_groups) * math.prod(x.shape[a] for a in spatial)
    s1 = jnp.sum(x32, axis=spatial).reshape(b, num_groups, -1).sum(-1)        # [B, G]
    s2 = jnp.sum(x32 * x32, axis=spatial).reshape(b, num_groups, -1).sum(-1)  # [B, G]
    mean = s1 / count
    var = jnp.maximum(s2 / count - mean * mean, 0.0)
    inv = jax.lax.rsqrt(var + epsilon)
    # Per (example, channel) affine map y = x * a + d, so the big tensor is touched once.
    a = jnp.repeat(inv, c // num_groups, axis=1)                                  # [B, C]
    if scale is not None:
        a = a * scale.astype(jnp.float32)
    d = -jnp.repeat(mean, c // num_groups, axis=1) * a
    if shift is not None:
        d = d + shift.astype(jnp.float32)
    shape = (b,) + (1,) * len(spatial) + (c,)
    return x32 * a.reshape(shape) + d.reshape(shape)


class GroupNorm(nn.Module):
    """GroupNorm with a learned per-channel scale and bias, numerically `nn.GroupNorm(num_groups, epsilon)`
    (statistics in float32 whatever `dtype` is; see `group_norm`)."""
    num_groups: int
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", named(_ones, "norm"), (c,), jnp.float32)
        bias = self.param("bias", named(_zeros, "norm"), (c,), jnp.float32)
        return group_norm(x, self.num_groups, self.epsilon, scale, bias).astype(self.dtype)


class Attention(nn.Module):
    """Multi-head attention from `x` [B, N, C] to `context` [B, T, D] (self-attention when context is None).

    q/k/v kernels are [embed, heads, kv], the output kernel [heads, kv, embed]; kv = head_dim, default C // heads.
    `mask` [B, T] marks valid keys; a row with no valid key reads nothing (its output is the output bias), rather
    than a uniform mix of padding."""
    heads: int
    dtype: Dtype = jnp.float32
    head_dim: Optional[int] = None

    @nn.compact
    def __call__(self, x: jax.Array, context: Optional[jax.Array] = None,
                 mask: Optional[jax.Array] = None) -> jax.Array:
        c = x.shape[-1]
        kv = self.head_dim or c // self.heads
        source = x if context is None else context

        # Explicit kernels (not nn.DenseGeneral, whose initialiser sees a flattened 2-D kernel and so cannot carry
        # three logical axis names).
        def param(name: str, init, names: tuple, shape: tuple) -> jax.Array:
            value = self.param(name, named(init, *names), shape, jnp.float32)
            return gather_for_compute(value, names).astype(self.dtype)

        def proj(name: str, inputs: jax.Array) -> jax.Array:
            kernel = param(f"{name}_kernel", _heads_kernel, ("embed", "heads", "kv"), (inputs.shape[-1], self.heads, kv))
            bias = param(f"{name}_bias", _zeros, ("heads", "kv"), (self.heads, kv))
            return jnp.einsum("bnc,chk->bnhk", inputs.astype(self.dtype), kernel) + bias

        q, k, v = proj("query", x), proj("key", source), proj("value", source)
        logits = jnp.einsum("bnhd,bthd->bhnt", q, k).astype(jnp.float32) / jnp.sqrt(kv).astype(jnp.float32)
        if mask is not None:
            valid = mask.astype(bool)[:, None, None, :]
            # A large finite negative (not -inf) keeps an all-masked row finite; it is then zeroed.
            weights = jax.nn.softmax(jnp.where(valid, logits, -1e30), axis=-1)
            weights = weights * jnp.any(valid, axis=-1, keepdims=True)
        else:
            weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhnt,bthd->bnhd", weights.astype(self.dtype), v)
        out_kernel = param("out_kernel", _out_kernel, ("heads", "kv", "embed"), (self.heads, kv, c))
        return jnp.einsum("bnhd,hdc->bnc", out, out_kernel) + param("out_bias", _zeros, ("embed",), (c,))
