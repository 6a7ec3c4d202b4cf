"""The same U-Net twice: ours (Flax) and diffusers' `UNet2DConditionModel` (torch), from one `UNetConfig`.

Mapping: each level of `channel_mults` is one diffusers block with `num_res_blocks` ResNet blocks (the up path
has one more, for the skips), a cross-attention block type at the resolutions in `attention_resolutions` and a
plain one elsewhere; strided-conv downsampling and nearest+conv upsampling between levels; a cross-attention
mid block; sinusoidal time embedding of width `base_channels` (cos first) into a 4x MLP. Differences left:
diffusers' transformer block adds linear proj_in/proj_out and a GEGLU feed-forward (a 2x wider first layer), so
it has ~10 % more parameters, and its q/k/v have no biases. Both runs use no pooled text vector.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax.generator.diffusion.unet import UNet, UNetConfig

CONTEXT_LEN, CONTEXT_DIM = 48, 64  # text tokens and width of the condition (a tiny GPT-2's states)


def level_resolutions(cfg: UNetConfig, size: int) -> list[int]:
    return [size // 2 ** i for i in range(len(cfg.channel_mults))]


def diffusers_unet(cfg: UNetConfig, size: int, context_dim: int = CONTEXT_DIM) -> Any:
    """diffusers' UNet2DConditionModel laid out like `UNet(cfg)` at `size` x `size` (float32, CPU)."""
    from diffusers import UNet2DConditionModel

    res = level_resolutions(cfg, size)
    attn = [r in cfg.attention_resolutions for r in res]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    # `attention_head_dim` is, for this class, the number of heads (diffusers' historical naming).
    return UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=3, down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=tuple(cfg.base_channels * m for m in
                                                                          cfg.channel_mults),
        layers_per_block=cfg.num_res_blocks, cross_attention_dim=context_dim, attention_head_dim=cfg.num_heads,
        norm_num_groups=cfg.norm_groups, norm_eps=1e-6, use_linear_projection=True, flip_sin_to_cos=True,
        freq_shift=0, act_fn="silu")


def our_unet(cfg: UNetConfig, size: int, context_dim: int = CONTEXT_DIM) -> tuple[UNet, Any]:
    """(UNet(cfg), unboxed float32 params) for size x size images and no pooled vector."""
    unet = UNet(cfg)
    dummy = (jnp.zeros((1, size, size, 3)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, CONTEXT_LEN, context_dim)),
             jnp.ones((1, CONTEXT_LEN), bool))
    params = jax.jit(unet.init)(jax.random.key(0), *dummy)["params"]
    params = jax.tree.map(lambda p: getattr(p, "value", p), params, is_leaf=lambda p: hasattr(p, "value"))
    return unet, params


def param_count(tree_or_module: Any) -> int:
    if hasattr(tree_or_module, "parameters"):
        return sum(p.numel() for p in tree_or_module.parameters())
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(tree_or_module)))


def inputs(batch: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Images in [-1, 1] (NHWC) and a text condition (all tokens valid), float32 numpy."""
    rng = np.random.default_rng(seed)
    return {"x0": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
            "context": rng.standard_normal((batch, CONTEXT_LEN, CONTEXT_DIM)).astype(np.float32)}
