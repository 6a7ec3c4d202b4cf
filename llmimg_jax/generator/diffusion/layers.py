"""U-Net building blocks: residual block, attention block (self, cross, MLP), resampling. The layers inside
them are the generators' shared ones (`generator/layers.py`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmimg_jax.generator.layers import Attention, Dtype, GroupNorm, conv, dense, layer_norm, named


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added in between, plus a (1x1) skip."""
    features: int
    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        h = nn.silu(GroupNorm(self.groups, dtype=self.dtype, name="norm1")(x))
        h = conv(self.features, 3, "conv1", self.dtype)(h)
        h = h + dense(self.features, "time", "conv_out", "time_proj", self.dtype)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(GroupNorm(self.groups, dtype=self.dtype, name="norm2")(h))
        h = conv(self.features, 3, "conv2", self.dtype)(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, "skip", self.dtype)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Self-attention over pixels, cross-attention to the text tokens, then an MLP; each residual."""
    heads: int
    groups: int
    dtype: Dtype = jnp.float32
    pos_embed: bool = False  # a learned vector per pixel, so queries know where they are (layouts named in text)

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, context_mask: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        if self.pos_embed:
            pos = self.param("pos_embed", named(nn.initializers.normal(0.02), "pos", "embed"), (h * w, c))
            x = x + pos.reshape(h, w, c).astype(x.dtype)
        normed = GroupNorm(self.groups, dtype=self.dtype, name="norm")(x).reshape(b, h * w, c)
        tokens = x.reshape(b, h * w, c) + Attention(self.heads, self.dtype, name="self_attn")(normed)
        tokens = tokens + Attention(self.heads, self.dtype, name="cross_attn")(
            layer_norm("norm_cross", self.dtype)(tokens), context.astype(self.dtype), context_mask)
        y = dense(4 * c, "embed", "mlp", "mlp_in", self.dtype)(layer_norm("norm_mlp", self.dtype)(tokens))
        tokens = tokens + dense(c, "mlp", "embed", "mlp_out", self.dtype)(nn.gelu(y))
        return tokens.reshape(b, h, w, c)


class Downsample(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(x.shape[-1], 3, "conv", self.dtype, strides=2)(x)


class Upsample(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest neighbour
        return conv(x.shape[-1], 3, "conv", self.dtype)(x)
