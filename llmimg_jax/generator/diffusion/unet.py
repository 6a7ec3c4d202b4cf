"""Text-conditioned U-Net (ADM / Stable-Diffusion layout) in Flax linen.

`UNet(config).apply({"params": p}, x [B,S,S,3], t [B], context [B,T,D], context_mask [B,T], pooled [B,D])`
returns the model output [B,S,S,3] (ε, v or x0 depending on how it is trained), float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from llmimg_jax.errors import UserError
from llmimg_jax.presets import from_preset
from llmimg_jax.generator.diffusion.layers import AttentionBlock, Downsample, ResBlock, Upsample
from llmimg_jax.generator.layers import GroupNorm, conv, dense


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sizes (per side, after patching) with attention
    num_heads: int = 4
    norm_groups: int = 32
    pos_embed: bool = False                           # learned positions added in every attention block
    patch_size: int = 1                               # >1: space-to-depth input, depth-to-space output
    dtype: str = "float32"                            # compute dtype; 'bfloat16' for mixed precision

    def __post_init__(self):
        chans = [self.base_channels * m for m in self.channel_mults]
        if not self.channel_mults or min(chans) <= 0:
            raise UserError(f"UNet channel_mults {self.channel_mults} must be positive; e.g. (1, 2, 2)")
        for c in chans:
            if c % self.norm_groups:
                raise UserError(f"UNet width {c} is not divisible by norm_groups={self.norm_groups}; "
                                "pick base_channels/norm_groups that divide")
            if c % self.num_heads:
                raise UserError(f"UNet width {c} is not divisible by num_heads={self.num_heads}; change num_heads")
        if self.patch_size < 1:
            raise UserError(f"UNet patch_size={self.patch_size} must be >= 1 (1: pixels, 2: 2x2 patches)")
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"UNet dtype '{self.dtype}' is not supported; use 'float32' or 'bfloat16'")


PRESETS = {
    # For tests: two levels, attention at 8x8 for 16x16 inputs.
    "tiny": UNetConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                       num_heads=2, norm_groups=4),
    # 32x32 Shapes on CPU (~2.2 M parameters).
    "small": UNetConfig(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16, 8),
                        num_heads=4, norm_groups=8),
    # 64x64 images (~23 M parameters).
    "base64": UNetConfig(base_channels=64, channel_mults=(1, 2, 2, 4), num_res_blocks=2,
                         attention_resolutions=(16, 8), num_heads=4, norm_groups=32),
}


def unet_config(preset: str = "small", **overrides: Any) -> UNetConfig:
    """A preset (`tiny`, `small`, `base64`) with some fields replaced."""
    return from_preset(UNetConfig, PRESETS, preset, "U-Net", **overrides)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding [B, dim] of (integer or fractional) timesteps [B]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class UNet(nn.Module):
    config: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array, context_mask: jax.Array,
                 pooled: Optional[jax.Array] = None) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        if x.ndim != 4 or x.shape[1] != x.shape[2]:
            raise ValueError(f"UNet expects images [B, S, S, C], got {x.shape}")
        levels, p = len(cfg.channel_mults), cfg.patch_size
        if x.shape[1] % (p * 2 ** (levels - 1)):
            raise ValueError(f"image size {x.shape[1]} is not divisible by patch_size * 2**{levels - 1}")
        out_channels = x.shape[-1]
        # Space-to-depth (simple diffusion): the network runs at S/p, p*p times cheaper per conv at the top level.
        x = einops.rearrange(x, "b (h p) (w q) c -> b h w (p q c)", p=p, q=p)
        t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
        context_mask = context_mask.astype(bool)

        # Conditioning vector: timestep MLP plus a projection of the pooled text vector.
        tdim = 4 * cfg.base_channels
        temb = timestep_embedding(t, cfg.base_channels)
        temb = dense(tdim, "time", "mlp", "time_in", dtype)(temb)
        temb = dense(tdim, "mlp", "time", "time_out", dtype)(nn.silu(temb))
        if pooled is not None:
            temb = temb + dense(tdim, "embed", "time", "pooled_proj", dtype)(pooled.astype(dtype))

        def res(features: int, name: str) -> ResBlock:
            return ResBlock(features, cfg.norm_groups, dtype, name=name)

        def attn(name: str) -> AttentionBlock:
            return AttentionBlock(cfg.num_heads, cfg.norm_groups, dtype, cfg.pos_embed, name=name)

        h = conv(cfg.base_channels, 3, "conv_in", dtype)(x.astype(dtype))
        skips = [h]
        for level, mult in enumerate(cfg.channel_mults):
            for i in range(cfg.num_res_blocks):
                h = res(cfg.base_channels * mult, f"down{level}_res{i}")(h, temb)
                if h.shape[1] in cfg.attention_resolutions:
                    h = attn(f"down{level}_attn{i}")(h, context, context_mask)
                skips.append(h)
            if level < levels - 1:
                h = Downsample(dtype, name=f"down{level}_sample")(h)
                skips.append(h)

        h = res(h.shape[-1], "mid_res0")(h, temb)
        h = attn("mid_attn")(h, context, context_mask)
        h = res(h.shape[-1], "mid_res1")(h, temb)

        for level in reversed(range(levels)):
            for i in range(cfg.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(cfg.base_channels * cfg.channel_mults[level], f"up{level}_res{i}")(h, temb)
                if h.shape[1] in cfg.attention_resolutions:
                    h = attn(f"up{level}_attn{i}")(h, context, context_mask)
            if level > 0:
                h = Upsample(dtype, name=f"up{level}_sample")(h)

        h = nn.silu(GroupNorm(cfg.norm_groups, dtype=dtype, name="norm_out")(h))
        h = conv(out_channels * p * p, 3, "conv_out", dtype)(h).astype(jnp.float32)
        return einops.rearrange(h, "b h w (p q c) -> b (h p) (w q) c", p=p, q=p)


ModelFn = Callable[[Any, jax.Array, jax.Array, dict], jax.Array]


def unet_model_fn(unet: UNet) -> ModelFn:
    """`model_fn(params, x, t, cond)` for the loss and the samplers; `cond` holds context, context_mask, pooled.

    Create it once and reuse it: the samplers' jit cache is keyed on the function object.
    """
    def model_fn(params: Any, x: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
        return unet.apply({"params": params}, x, t, cond["context"], cond["context_mask"], cond.get("pooled"))
    return model_fn
