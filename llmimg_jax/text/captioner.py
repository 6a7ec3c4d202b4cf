"""The image-conditioned language model (captioner): a small conv encoder maps an image to P prefix embeddings,
one per image region, that GPT-2 reads before its tokens (`GPT2(prefix_embeds=...)`, ClipCap/LLaVA-style).

    prefix = ImageEncoder(image)                         [B, P, n_embd]
    logits = GPT2(<|endoftext|> description, prefix)     the causal LM loss covers the description

Parameters live in two groups, {"encoder": ..., "lm": ...}, so the runtime can train both or freeze the LM.
`Captioner` bundles the two modules with the tokenizer and describes batches of images greedily (KV cache).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax.errors import UserError
from llmimg_jax.text.gpt2 import GPT2, Linear
from llmimg_jax.text.sampling import generate
from llmimg_jax.training.sharding import CONV_NAMES, conv_gathered

Params = Any
DESCRIBE_BATCH = 64  # images per describe call; the last chunk is padded so every call reuses one compilation


class ImageEncoder(nn.Module):
    """Images [B, S, S, 3] in [-1, 1] -> prefix embeddings [B, num_prefix, n_embd], one per image region.

    3x3 convolutions (one per entry of `channels`, with its `strides`), the feature map average-pooled to g x g
    (g² = num_prefix), then one prefix vector per location: a per-location MLP plus a learned position embedding,
    like ViT/LLaVA patch tokens. (A ClipCap-style MLP over the whole flattened map, tried first, never learned
    colour on Shapes: its prefix carried none, and colour accuracy stayed at chance.)"""
    n_embd: int
    num_prefix: int = 16
    channels: tuple[int, ...] = (32, 32, 64, 64)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    hidden: int = 512
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(self.dtype)
        for i, (width, stride) in enumerate(zip(self.channels, self.strides, strict=True)):
            x = nn.Conv(width, (3, 3), strides=(stride, stride), padding="SAME", dtype=self.dtype,
                        param_dtype=jnp.float32, conv_general_dilated=conv_gathered,
                        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_NAMES),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                        name=f"conv_{i}")(x)
            x = nn.gelu(x)
        side = int(round(np.sqrt(self.num_prefix)))
        batch, height, width, channels = x.shape
        if side * side != self.num_prefix or height % side or width % side:
            raise UserError(f"the image encoder needs num_prefix = g² with g dividing its {height}x{width} feature "
                            f"map; got num_prefix={self.num_prefix}, set captioner.num_prefix to one of "
                            f"{[g * g for g in range(1, height + 1) if height % g == 0 and width % g == 0]}")
        x = x.reshape(batch, side, height // side, side, width // side, channels).mean(axis=(2, 4))
        x = x.reshape(batch, self.num_prefix, channels)
        x = nn.gelu(Linear((self.hidden,), (None, "mlp"), std=1.0 / np.sqrt(channels), dtype=self.dtype,
                           name="fc")(x))
        # Output scale like GPT-2's token embeddings (std 0.02), so the LM starts from inputs of a familiar size.
        x = Linear((self.n_embd,), ("mlp", "embed"), std=0.02, dtype=self.dtype, name="proj")(x)
        position = self.param("position", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                       (None, "embed")),
                              (self.num_prefix, self.n_embd), jnp.float32)
        return x + position.astype(x.dtype)


def encoder_from_config(captioner_config, n_embd: int, dtype: str = "float32") -> ImageEncoder:
    c = captioner_config
    if len(c.strides) != len(c.channels):
        raise UserError(f"captioner.strides has {len(c.strides)} entries but captioner.channels has "
                        f"{len(c.channels)}; give one stride per conv stage")
    return ImageEncoder(n_embd=n_embd, num_prefix=int(c.num_prefix), channels=tuple(int(w) for w in c.channels),
                        strides=tuple(int(s) for s in c.strides), hidden=int(c.hidden), dtype=jnp.dtype(dtype))


@dataclasses.dataclass
class Captioner:
    """Encoder + GPT-2 + tokenizer. `params` = {"encoder": ..., "lm": ...}."""
    encoder: ImageEncoder
    lm: GPT2
    tokenizer: Any
    params: Params = None

    @property
    def max_tokens(self) -> int:
        """Tokens per sequence (start token + description + end token) that fit after the prefix."""
        return self.lm.config.n_positions - self.encoder.num_prefix

    def logits(self, params: Params, images: jax.Array, ids: jax.Array, attention_mask: jax.Array, *,
               deterministic: bool = True, rng: jax.Array | None = None) -> jax.Array:
        """Token logits [B, T, V] given the images' prefix."""
        prefix = self.encoder.apply({"params": params["encoder"]}, images)
        rngs = {"dropout": rng} if rng is not None else {}
        return self.lm.apply({"params": params["lm"]}, ids, attention_mask, deterministic=deterministic,
                             prefix_embeds=prefix, rngs=rngs)

    def describe_ids(self, params: Params, images: jax.Array, max_new_tokens: int) -> jax.Array:
        """Greedy token ids [B, max_new_tokens] after the start token (pad after each row's end token)."""
        prefix = jax.jit(self.encoder.apply)({"params": params["encoder"]}, images)
        start = jnp.full((images.shape[0], 1), self.tokenizer.eos_token_id, jnp.int32)
        return generate(self.lm, params["lm"], start, None, max_new_tokens=max_new_tokens, rng=jax.random.key(0),
                        greedy=True, eos_id=self.tokenizer.eos_token_id, pad_id=self.tokenizer.pad_token_id,
                        prefix_embeds=prefix)

    def describe(self, images: np.ndarray | Sequence[np.ndarray], params: Params | None = None,
                 max_new_tokens: int | None = None) -> list[str]:
        """One description per image (uint8 [N, S, S, 3], or float in [-1, 1])."""
        params = self.params if params is None else params
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 127.5 - 1.0
        new_tokens = min(int(max_new_tokens or self.max_tokens - 1), self.max_tokens - 1)
        texts = []
        for start in range(0, len(images), DESCRIBE_BATCH):
            chunk = images[start:start + DESCRIBE_BATCH]
            size = min(DESCRIBE_BATCH, len(images))
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            out = np.asarray(self.describe_ids(params, jnp.asarray(padded, jnp.float32), new_tokens))
            for row in out[:len(chunk)]:
                end = np.flatnonzero(row == self.tokenizer.eos_token_id)
                texts.append(self.tokenizer.decode(row[: end[0] if len(end) else len(row)]).strip())
        return texts
