"""Differentiable augmentation (DiffAugment-style) that keeps a caption true of its image.

Captions name colours and positions, so the ops are mild and never move content across cells: small brightness,
saturation and contrast jitter (factors stay positive, so hues keep their order), and integer translations of at
most S/16 pixels with edge or zero padding. No flips, rotations or cutout. Apply the same call (same key) to the
real and the fake batch; it is a pure function of (images, rng) and differentiable in the images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmimg_jax.errors import UserError

Array = jax.Array


def max_shift(image_size: int, fraction: float = 1 / 16) -> int:
    """Largest translation in pixels: floor(fraction * S), fraction at most 1/16."""
    if not 0.0 <= fraction <= 1 / 16:
        raise UserError(f"augmentation translation fraction {fraction} must be in [0, 1/16] so shapes stay in their cell")
    return int(image_size * fraction)


def translate(images: Array, dy: Array, dx: Array, shift: int, pad: str = "edge") -> Array:
    """Moves each image [B, S, S, C] by (dy[b], dx[b]) integer pixels (|d| <= shift), filling by `pad`."""
    if shift == 0:
        return images
    if pad not in ("edge", "zero"):
        raise UserError(f"augmentation pad='{pad}' is unknown; use 'edge' or 'zero'")
    widths = ((0, 0), (shift, shift), (shift, shift), (0, 0))
    padded = jnp.pad(images, widths, mode="edge") if pad == "edge" else jnp.pad(images, widths)
    s, c = images.shape[1], images.shape[3]

    def one(img: Array, y: Array, x: Array) -> Array:
        # out[i, j] = in[i - y, j - x]
        return jax.lax.dynamic_slice(img, (shift - y, shift - x, 0), (s, s, c))

    return jax.vmap(one)(padded, dy, dx)


def augment(images: Array, rng: Array, *, brightness: float = 0.1, saturation: float = 0.2, contrast: float = 0.2,
            translation: float = 1 / 16, pad: str = "edge") -> Array:
    """images [B, S, S, 3] in [-1, 1] -> jittered and translated images (not clipped, to keep gradients)."""
    if not (0.0 <= brightness <= 0.25 and 0.0 <= saturation < 0.5 and 0.0 <= contrast < 0.5):
        raise UserError(f"augmentation strengths brightness={brightness} saturation={saturation} "
                        f"contrast={contrast} are too strong for colour captions; keep them <= 0.25, < 0.5, < 0.5")
    b = images.shape[0]
    shift = max_shift(images.shape[1], translation)
    k_bright, k_sat, k_con, k_y, k_x = jax.random.split(rng, 5)
    dtype = images.dtype

    def factor(key: Array, amount: float) -> Array:
        return jax.random.uniform(key, (b, 1, 1, 1), jnp.float32, 1.0 - amount, 1.0 + amount).astype(dtype)

    x = images + jax.random.uniform(k_bright, (b, 1, 1, 1), jnp.float32, -brightness, brightness).astype(dtype)
    gray = jnp.mean(x, axis=-1, keepdims=True)
    x = gray + (x - gray) * factor(k_sat, saturation)
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    x = mean + (x - mean) * factor(k_con, contrast)
    dy = jax.random.randint(k_y, (b,), -shift, shift + 1)
    dx = jax.random.randint(k_x, (b,), -shift, shift + 1)
    return translate(x, dy, dx, shift, pad)
