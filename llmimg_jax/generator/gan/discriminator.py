"""Text-conditional projection discriminator (BigGAN-style residual D, Miyato & Koyama projection).

logit(x, t) = w . phi(x) + b + <embed(t), phi(x)>, where phi(x) is the globally sum-pooled feature of a residual
downsampling stack (S x S -> 4 x 4) and t the pooled text vector. The projection term is also returned on its own,
and, for the optional image-text contrastive loss (XMC-GAN), projections of phi(x) and t into a shared space.
Given the text's token states (`tokens`, `token_mask`), it also returns region and word embeddings for XMC-GAN's
word-region contrastive loss: the feature map at `region_resolution` (8: a 3x3-grid layout is still resolved
there) and each token, projected into the shared space — a check of *where* and *what*, which a pooled vector
cannot make.
Spectral normalisation (on by default) keeps its power-iteration vectors in the `spectral` collection: pass
`update=True` with `mutable=["spectral"]` on training steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmimg_jax.errors import UserError
from llmimg_jax.presets import from_preset
from llmimg_jax.generator.gan.spectral_norm import SNConv, SNDense

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    image_size: int = 32
    channels: tuple[int, ...] = (64, 128, 256, 256)  # at resolutions S, S/2, ..., 4
    embed_dim: int = 128                             # shared image-text space of the contrastive losses
    region_resolution: int = 8                       # feature map whose positions are the word-region loss's regions
    spectral_norm: bool = True
    power_iterations: int = 1

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        s = self.image_size
        if s < 8 or s & (s - 1):
            raise UserError(f"discriminator image_size={s} must be a power of two >= 8; set gan image_size to 32 or 64")
        want = int(math.log2(s)) - 1
        if len(self.channels) != want:
            raise UserError(f"discriminator channels {self.channels} need {want} entries for image_size={s} "
                            f"(one per resolution {s}..4)")
        if self.region_resolution not in self.resolutions:
            raise UserError(f"discriminator region_resolution={self.region_resolution} is not among "
                            f"{self.resolutions}; pick one of those")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map side after the stem and after each block: S, S/2, ..., 4."""
        return tuple(self.image_size // 2**i for i in range(len(self.channels)))


D_PRESETS = {
    "tiny": dict(image_size=32, channels=(32, 64, 64, 64), embed_dim=64),
    "32": dict(image_size=32, channels=(64, 128, 256, 256), embed_dim=128),
    "64": dict(image_size=64, channels=(64, 128, 256, 256, 256), embed_dim=128),
}


def discriminator_config(preset: str = "32", **overrides: Any) -> DiscriminatorConfig:
    """A preset (`tiny`, `32`, `64`) with field overrides."""
    return from_preset(DiscriminatorConfig, D_PRESETS, preset, "discriminator", **overrides)


class DOutput(NamedTuple):
    logit: Array                     # [B] unconditional + projection
    projection: Array                # [B] <embed(text), phi(x)>
    image_embedding: Array           # [B, E] for the contrastive loss
    text_embedding: Array            # [B, E]
    mismatch_logit: Optional[Array]  # [B] (or [K, B]) logits of the same images with `mismatched_pooled`, if given
    region_embedding: Optional[Array] = None  # [B, R, E] with `tokens`: one per position of the region map
    word_embedding: Optional[Array] = None    # [B, T, E] with `tokens`
    word_mask: Optional[Array] = None         # [B, T] True for real tokens


def _vector_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    return jax.random.normal(key, shape, dtype) / math.sqrt(shape[0])


def _avg_pool2(x: Array) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class DBlock(nn.Module):
    """Pre-activation residual block that halves the resolution."""

    features: int
    sn: dict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, update: bool) -> Array:
        h = SNConv(self.features, 3, dtype=self.dtype, name="conv1", **self.sn)(nn.leaky_relu(x, 0.2), update)
        h = SNConv(self.features, 3, dtype=self.dtype, name="conv2", **self.sn)(nn.leaky_relu(h, 0.2), update)
        skip = SNConv(self.features, 1, dtype=self.dtype, name="skip", **self.sn)(x, update)
        return _avg_pool2(h + skip)


class Discriminator(nn.Module):
    config: DiscriminatorConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: Array, pooled: Array, mismatched_pooled: Optional[Array] = None,
                 update: bool = False, tokens: Optional[Array] = None, token_mask: Optional[Array] = None) -> DOutput:
        """images [B, S, S, 3] in [-1, 1]; pooled text vectors [B, D]; mismatched_pooled [B, D], or [K, B, D] for K
        other captions of each image; optionally the text's token states [B, T, D] and their mask [B, T] for the
        word-region embeddings."""
        cfg = self.config
        if images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"discriminator expects [B, {cfg.image_size}, {cfg.image_size}, 3], got {images.shape}")
        sn = dict(spectral_norm=cfg.spectral_norm, power_iterations=cfg.power_iterations)
        h = SNConv(cfg.channels[0], 3, dtype=self.dtype, name="stem", **sn)(images, update)
        region_map = h
        for i, c in enumerate(cfg.channels[1:]):
            h = DBlock(c, sn, dtype=self.dtype, name=f"block{i}")(h, update)
            region_map = h if h.shape[1] == cfg.region_resolution else region_map
        phi = jnp.sum(nn.leaky_relu(h, 0.2).astype(jnp.float32), axis=(1, 2))  # [B, C], 4x4 sum pool

        w = self.param("logit_kernel", nn.with_logical_partitioning(_vector_init, ("conv_out",)),
                       (phi.shape[-1],), jnp.float32)
        b = self.param("logit_bias", nn.with_logical_partitioning(nn.initializers.zeros, ()), (), jnp.float32)
        if cfg.spectral_norm:  # a single column's spectral norm is its Euclidean norm
            w = w * jax.lax.rsqrt(jnp.sum(w * w) + 1e-12)
        uncond = phi @ w + b

        n = phi.shape[0]
        others = None if mismatched_pooled is None else mismatched_pooled.reshape(-1, pooled.shape[-1])
        texts = pooled if others is None else jnp.concatenate([pooled, others])
        # One call embeds all captions, so they share one spectral-norm estimate (u is refined once).
        embedded = SNDense(phi.shape[-1], ("embed", "conv_out"), use_bias=False, name="text_embed", **sn)(
            texts, update).astype(jnp.float32)
        projection = jnp.sum(embedded[:n] * phi, axis=-1)
        mismatch = None
        if others is not None:  # the same images with other captions: phi is reused
            mismatch = uncond + jnp.sum(embedded[n:].reshape(-1, n, phi.shape[-1]) * phi, axis=-1)
            mismatch = mismatch.reshape(mismatched_pooled.shape[:-1])
        image_emb = SNDense(cfg.embed_dim, ("conv_out", "mlp"), name="image_proj", **sn)(phi, update)
        text_emb = SNDense(cfg.embed_dim, ("embed", "mlp"), name="text_proj", **sn)(pooled, update)
        regions = words = None
        if tokens is not None:
            b, hh, ww, c = region_map.shape
            features = nn.leaky_relu(region_map, 0.2).reshape(b, hh * ww, c)
            regions = SNDense(cfg.embed_dim, ("conv_out", "mlp"), name="region_proj", **sn)(features, update)
            words = SNDense(cfg.embed_dim, ("embed", "mlp"), name="word_proj", **sn)(tokens, update)
            regions, words = regions.astype(jnp.float32), words.astype(jnp.float32)
        return DOutput(uncond + projection, projection, image_emb.astype(jnp.float32),
                       text_emb.astype(jnp.float32), mismatch, regions, words,
                       None if token_mask is None else token_mask.astype(bool))
