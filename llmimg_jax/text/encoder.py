"""Text encoder API: token ids (tokenised host-side) -> GPT-2 token states, mask and a pooled vector.

`layer` indexes Hugging Face's hidden-states list: 0 = embeddings, i = output of block i, -1 (= n_layer) = the
last block's output after ln_f.

Pooling: "last" (default) takes the state of the last real token. GPT-2 attends causally, so only that token has
read the whole text; a mean also averages early tokens that saw just a prefix. "mean" (over real tokens) is there
for layers or models where it works better.

Frozen (Imagen-style, `trainable=False`): the outputs pass through `jax.lax.stop_gradient`, so gradients reaching
the LM params are exactly zero. If the LM params sit in the generator's params tree, also keep them out of the
optimizer (e.g. `optax.multi_transform` with `optax.set_to_zero()` for that subtree): weight decay would otherwise
still change them. Trainable: gradients of the generator's loss flow into the LM.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from llmimg_jax.errors import UserError
from llmimg_jax.text.gpt2 import GPT2, GPT2Config, gpt2_config

POOLINGS = ("last", "mean")


class TextEncoding(NamedTuple):
    states: jax.Array   # [B, T, D], zero at padding
    mask: jax.Array     # [B, T] int32, 1 = real token
    pooled: jax.Array   # [B, D] float32


def _check(config: GPT2Config, layer: int, pooling: str) -> None:
    if not -(config.n_layer + 1) <= layer <= config.n_layer:
        raise UserError(f"text encoder layer={layer} is out of range for {config.n_layer} blocks; use -1 (final, "
                        f"after ln_f), 0 (embeddings) or 1..{config.n_layer}")
    if pooling not in POOLINGS:
        raise UserError(f"text encoder pooling '{pooling}' is unknown; use one of {', '.join(POOLINGS)}")


def pool_states(states: jax.Array, attention_mask: jax.Array, pooling: str = "last") -> jax.Array:
    """[B, T, D] -> [B, D] float32: the last real token's state, or the mean over real tokens."""
    mask = attention_mask.astype(jnp.float32)
    states = states.astype(jnp.float32)
    if pooling == "mean":
        return (states * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0)
    last = jnp.max(jnp.where(attention_mask > 0, jnp.arange(states.shape[1]), 0), axis=1)  # works for either padding
    return states[jnp.arange(states.shape[0]), last]


def encoding_from_hidden(hidden: jax.Array, attention_mask: jax.Array, *, layer: int = -1, pooling: str = "last",
                         trainable: bool = False) -> TextEncoding:
    """Selects `layer` from GPT-2's hidden states [L+1, B, T, D], zeroes padding, pools, maybe stops gradients."""
    mask = attention_mask.astype(jnp.int32)
    states = hidden[layer] * mask[..., None].astype(hidden.dtype)
    if not trainable:
        states = jax.lax.stop_gradient(states)
    return TextEncoding(states, mask, pool_states(states, mask, pooling))


def encode(model: GPT2, params: Any, input_ids: jax.Array, attention_mask: jax.Array, *, layer: int = -1,
           pooling: str = "last", trainable: bool = False, dropout_rng: jax.Array | None = None) -> TextEncoding:
    """Functional form, for LM params held outside the generator (e.g. a frozen, imported GPT-2).
    `dropout_rng` turns on the LM's dropout (config.dropout > 0) for trainable use."""
    _check(model.config, layer, pooling)
    # The logits are unused; under jit XLA drops the output head.
    _, hidden = model.apply({"params": params}, input_ids, attention_mask, deterministic=dropout_rng is None,
                            output_hidden_states=True, rngs=None if dropout_rng is None else {"dropout": dropout_rng})
    return encoding_from_hidden(hidden, attention_mask, layer=layer, pooling=pooling, trainable=trainable)


class TextEncoder(nn.Module):
    """A GPT-2 (submodule `lm`, params under `<name>/lm`) as a generator's text encoder."""
    config: GPT2Config
    layer: int = -1
    pooling: str = "last"
    trainable: bool = False

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, deterministic: bool = True) -> TextEncoding:
        _check(self.config, self.layer, self.pooling)
        _, hidden = GPT2(self.config, name="lm")(input_ids, attention_mask, deterministic=deterministic,
                                                 output_hidden_states=True)
        return encoding_from_hidden(hidden, attention_mask, layer=self.layer, pooling=self.pooling,
                                    trainable=self.trainable)


def text_encoder_from_config(text: ml_collections.ConfigDict, vocab_size: int, **overrides: Any) -> TextEncoder:
    """TextEncoder from the config's `text` section (preset, layer, trainable) and the tokenizer's vocab size."""
    if text.encoder != "gpt2":
        raise UserError(f"text.encoder='{text.encoder}' is not a GPT-2; this builder handles text.encoder='gpt2'")
    config = gpt2_config(text.preset, vocab_size=vocab_size, **overrides)
    return TextEncoder(config, layer=text.layer, pooling=text.get("pooling", "last"), trainable=text.trainable)
