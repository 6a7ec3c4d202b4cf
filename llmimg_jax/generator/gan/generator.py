"""Text-conditional GAN generator (XMC-GAN / GigaGAN-informed, sized for 32x32 and 64x64).

mapping:   pixel-normalised z [B, Z] and the LayerNormed pooled text vector [B, D] -> style w [B, W] (MLP).
synthesis: w -> 4x4 features -> residual upsampling blocks to S x S -> tanh RGB. Every normalisation is a
           *modulated GroupNorm*: GroupNorm without affine, then x * (1 + scale(w)) + shift(w). We chose it over
           StyleGAN2's weight (de)modulation because it conditions each sample with ordinary convolutions, while
           per-sample kernels need grouped convolutions, which are slow on CPU/XLA and awkward to shard.
           At `attn_resolutions` (e.g. 8 and 16) the feature map cross-attends to the LM's token states [B, T, D]
           under a key padding mask [B, T] (True/1 = real token).
Truncation: `truncate_style` pulls w toward the mean style of the same text (the conditional StyleGAN truncation
trick); `sample` draws z and applies it at sampling time.
Convolution and attention kernels are gathered over the batch's mesh axes where they are used
(`gather_for_compute`: FSDP, and a guard against an XLA partitioner bug on 3-D meshes that corrupts gradients).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmimg_jax.errors import UserError
from llmimg_jax.presets import from_preset
from llmimg_jax.generator.layers import Attention, conv, group_norm, layer_norm
from llmimg_jax.training.sharding import constrain

Array = jax.Array
GN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    image_size: int = 32
    z_dim: int = 128
    style_dim: int = 256
    mapping_depth: int = 2                     # even: layers alternate [time, mlp] and [mlp, time]
    channels: tuple[int, ...] = (256, 256, 128, 64)  # at resolutions 4, 8, ..., S
    attn_resolutions: tuple[int, ...] = (8, 16)
    num_heads: int = 4
    head_dim: int = 32
    groups: int = 8                            # GroupNorm groups; must divide every entry of `channels`

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        s = self.image_size
        if s < 8 or s & (s - 1):
            raise UserError(f"generator image_size={s} must be a power of two >= 8; set gan image_size to 32 or 64")
        want = int(math.log2(s)) - 1
        if len(self.channels) != want:
            raise UserError(f"generator channels {self.channels} need {want} entries for image_size={s} "
                            f"(one per resolution 4..{s})")
        bad = [c for c in self.channels if c % self.groups]
        if bad:
            raise UserError(f"generator channels {bad} are not divisible by groups={self.groups}; change either")
        if self.mapping_depth < 2 or self.mapping_depth % 2:
            raise UserError(f"generator mapping_depth={self.mapping_depth} must be even and >= 2")
        resolutions = self.resolutions
        stray = [r for r in self.attn_resolutions if r not in resolutions]
        if stray:
            raise UserError(f"generator attn_resolutions {stray} are not among {resolutions}; pick from those")

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(4 * 2**i for i in range(len(self.channels)))


G_PRESETS = {
    "tiny": dict(image_size=32, z_dim=32, style_dim=64, channels=(64, 64, 32, 32), num_heads=2, head_dim=16),
    "32": dict(image_size=32, z_dim=128, style_dim=256, channels=(256, 256, 128, 64), num_heads=4, head_dim=32),
    "64": dict(image_size=64, z_dim=128, style_dim=256, channels=(256, 256, 128, 64, 32), num_heads=4, head_dim=32),
}


def generator_config(preset: str = "32", **overrides: Any) -> GeneratorConfig:
    """A preset (`tiny`, `32`, `64`) with field overrides."""
    return from_preset(GeneratorConfig, G_PRESETS, preset, "generator", **overrides)


# Dense kernels are used as stored: none is split over both fsdp and tensor, and gathering the one split over fsdp
# (text_proj, [embed, time]) made XLA miscompute the LM's gradients on a (2, 2, 2) mesh (tests/test_gan_task.py).
def _dense(features: int, names: tuple[str, str], dtype: Any, name: Optional[str] = None) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]))


def _upsample2(x: Array) -> Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ModulatedGroupNorm(nn.Module):
    """GroupNorm whose per-channel scale and shift come from the style vector."""

    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, w: Array) -> Array:
        c = x.shape[-1]
        scale = _dense(c, ("time", "conv_out"), jnp.float32, "scale")(w)
        shift = _dense(c, ("time", "conv_out"), jnp.float32, "shift")(w)
        return group_norm(x, self.groups, GN_EPSILON, 1.0 + scale, shift).astype(self.dtype)


class GBlock(nn.Module):
    """Residual block: (modulated GN, ReLU, [upsample], conv) x 2, plus a (1x1-projected) skip."""

    features: int
    upsample: bool
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, w: Array) -> Array:
        h = nn.relu(ModulatedGroupNorm(self.groups, self.dtype, name="norm1")(x, w))
        if self.upsample:
            h, x = _upsample2(h), _upsample2(x)
        h = conv(self.features, 3, "conv1", self.dtype)(h)
        h = nn.relu(ModulatedGroupNorm(self.groups, self.dtype, name="norm2")(h, w))
        h = conv(self.features, 3, "conv2", self.dtype)(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, "skip", self.dtype)(x)
        return (h + x.astype(self.dtype)) * (1.0 / math.sqrt(2.0))


class CrossAttention(nn.Module):
    """Feature map [B, H, W, C] attends to token states [B, T, D]; padded tokens (mask 0) are never read."""

    num_heads: int
    head_dim: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, tokens: Array, mask: Array) -> Array:
        b, hh, ww, c = x.shape
        queries = group_norm(x, self.groups, GN_EPSILON).reshape(b, hh * ww, c)
        t = layer_norm("token_norm", jnp.float32)(tokens.astype(jnp.float32))
        out = Attention(self.num_heads, self.dtype, self.head_dim, name="attn")(queries, t, mask)
        return x + out.reshape(b, hh, ww, c).astype(x.dtype)


class MappingNetwork(nn.Module):
    config: GeneratorConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: Array, pooled: Array) -> Array:
        cfg = self.config
        z = z.astype(jnp.float32)
        z = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)
        t = layer_norm("text_norm", jnp.float32)(pooled.astype(jnp.float32))
        t = _dense(cfg.style_dim, ("embed", "time"), self.dtype, "text_proj")(t)
        h = jnp.concatenate([z.astype(self.dtype), t], axis=-1)
        for i in range(cfg.mapping_depth):
            names = ("time", "mlp") if i % 2 == 0 else ("mlp", "time")
            h = nn.leaky_relu(_dense(cfg.style_dim, names, self.dtype, f"dense{i}")(h), 0.2)
        return h.astype(jnp.float32)


class SynthesisNetwork(nn.Module):
    config: GeneratorConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, w: Array, tokens: Array, mask: Array) -> Array:
        cfg = self.config
        c0 = cfg.channels[0]
        h = _dense(16 * c0, ("time", "conv_out"), self.dtype, "input")(w).reshape(-1, 4, 4, c0)
        # The reshape would carry the dense output's tensor split onto the rows of the 4x4 map; a convolution of
        # such a map got its kernel gradient wrong on a (2, 2, 2) mesh. Split the channels instead.
        h = constrain(h, ("batch", None, None, "conv_out"))
        for i, (res, c) in enumerate(zip(cfg.resolutions, cfg.channels)):
            h = GBlock(c, upsample=i > 0, groups=cfg.groups, dtype=self.dtype, name=f"block{res}")(h, w)
            if res in cfg.attn_resolutions:
                h = CrossAttention(cfg.num_heads, cfg.head_dim, cfg.groups, self.dtype, name=f"attn{res}")(
                    h, tokens, mask)
        h = nn.relu(ModulatedGroupNorm(cfg.groups, self.dtype, name="out_norm")(h, w))
        rgb = conv(3, 3, "to_rgb", self.dtype)(h).astype(jnp.float32)
        self.sow("intermediates", "rgb_logits", rgb)  # for gan.saturation_weight; a no-op unless asked for
        return jnp.tanh(rgb)


class Generator(nn.Module):
    """`__call__(z, pooled, tokens, mask)` -> images [B, S, S, 3] in [-1, 1]; `style` and `synthesize` are its halves."""

    config: GeneratorConfig
    dtype: Any = jnp.float32

    def setup(self):
        self.mapping = MappingNetwork(self.config, self.dtype)
        self.synthesis = SynthesisNetwork(self.config, self.dtype)

    def style(self, z: Array, pooled: Array) -> Array:
        """z [B, Z], pooled text [B, D] -> style [B, W] (float32)."""
        return self.mapping(z, pooled)

    def synthesize(self, w: Array, tokens: Array, mask: Array) -> Array:
        """style [B, W], token states [B, T, D], key padding mask [B, T] -> images [B, S, S, 3]."""
        if tokens.shape[:2] != mask.shape:
            raise ValueError(f"token states {tokens.shape} and mask {mask.shape} disagree on [B, T]")
        return self.synthesis(w, tokens, mask)

    def __call__(self, z: Array, pooled: Array, tokens: Array, mask: Array) -> Array:
        return self.synthesize(self.style(z, pooled), tokens, mask)


def truncate_style(w: Array, w_mean: Array, psi: float) -> Array:
    """StyleGAN truncation: w_mean + psi * (w - w_mean); psi = 1 keeps w, psi = 0 gives the mean style."""
    return w_mean + psi * (w - w_mean)


def sample(generator: Generator, params: Any, rng: Array, pooled: Array, tokens: Array, mask: Array,
           truncation: float = 1.0, mean_samples: int = 64) -> Array:
    """Samples images for a batch of texts; truncation < 1 pulls each style toward the mean over
    `mean_samples` draws of z for the same text (fidelity over diversity)."""
    if not 0.0 <= truncation <= 1.0:
        raise UserError(f"truncation={truncation} must be in [0, 1]; 1 disables it, ~0.7 is typical")
    variables = {"params": params}
    z_dim = generator.config.z_dim
    z_rng, mean_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (pooled.shape[0], z_dim), jnp.float32)
    w = generator.apply(variables, z, pooled, method=Generator.style)
    if truncation < 1.0:
        # The same draws for every row, so equal texts get equal mean styles.
        zs = jax.random.normal(mean_rng, (mean_samples, 1, z_dim), jnp.float32)
        zs = jnp.broadcast_to(zs, (mean_samples, pooled.shape[0], z_dim))
        ws = jax.lax.map(lambda zi: generator.apply(variables, zi, pooled, method=Generator.style), zs)
        w = truncate_style(w, ws.mean(axis=0), truncation)
    return generator.apply(variables, w, tokens, mask, method=Generator.synthesize)
