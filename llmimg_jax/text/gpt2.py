"""GPT-2 in Flax linen (nanoGPT-readable): pre-LayerNorm blocks, learned positions, tanh-GELU, tied embeddings.

Parameter names follow Hugging Face's module names (wte, wpe, h_<i>/ln_1/attn/ln_2/mlp, ln_f) so the importer in
`hf_gpt2.py` is a plain renaming; q/k/v are split into `query`/`key`/`value` kernels `[embed, heads, kv]`.

Positions are "number of real tokens before this one" (cumsum of the attention mask minus one), so a left-padded
row gets the same logits as the unpadded row. With right padding, or no mask, that is simply 0..T-1.

KV cache (`decode=True`, flax "cache" collection): every attention layer keeps `cached_key`/`cached_value`
`[B, S, heads, kv]`; the top module keeps the write `index` (shared by the batch) and `key_mask [B, S]` (which
cache slots hold real tokens). A call writes its T tokens at `index`, attends to every real slot at or before its
own, and advances `index` by T. Create the cache with `init_cache` (max length S), prefill with the padded prompt,
then feed one token per step.

Prefix (ClipCap-style image conditioning): `prefix_embeds [B, P, E]` are placed before the token embeddings. They
take the learned positions 0..P-1 (tokens follow at P, P+1, ...), attend causally among themselves, and every token
attends to all of them; logits and hidden states cover the token positions only. When decoding, pass the prefix
with the prefill call only: it fills the first P cache slots (so create the cache for P + prompt + new tokens).
`prefix_mask [B, P]` (1 = real) marks padding inside a prefix of variable length (e.g. a text encoder's token
states): padded prefix slots are never attended to and take no position, so a row's result equals that of its
real prefix vectors alone.

Kernels and embedding tables are gathered over the batch's mesh axes where they are used (`gather_for_compute`:
FSDP, and a guard against an XLA partitioner bug on 3-D meshes that corrupts gradients).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmimg_jax.errors import UserError
from llmimg_jax.training.sharding import gather_for_compute

Params = Any


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0
    dtype: str = "float32"        # compute dtype ('bfloat16' for mixed precision); params stay float32
    scan_layers: bool = False     # nn.scan over blocks: params stacked with a leading 'layers' axis
    remat: bool = False           # recompute each block's activations in the backward pass

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)


GPT2_VOCAB_SIZE = 50257
PRESETS = {
    # name: (n_layer, n_embd, n_head, n_positions, default vocab)
    "tiny": (2, 64, 4, 128, 1024),   # vocab normally comes from the trained tokenizer
    "gpt2": (12, 768, 12, 1024, GPT2_VOCAB_SIZE),
    "gpt2-medium": (24, 1024, 16, 1024, GPT2_VOCAB_SIZE),
    "gpt2-large": (36, 1280, 20, 1024, GPT2_VOCAB_SIZE),
    "gpt2-xl": (48, 1600, 25, 1024, GPT2_VOCAB_SIZE),
}


def gpt2_config(preset: str, vocab_size: int | None = None, **overrides: Any) -> GPT2Config:
    """A preset's config; `vocab_size` (e.g. the tokenizer's) and any GPT2Config field can be overridden."""
    if preset not in PRESETS:
        raise UserError(f"unknown GPT-2 preset '{preset}'; choose one of {', '.join(PRESETS)}")
    n_layer, n_embd, n_head, n_positions, default_vocab = PRESETS[preset]
    fields = {f.name for f in dataclasses.fields(GPT2Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown GPT2Config field(s) {unknown}; known fields: {', '.join(sorted(fields))}")
    kwargs = dict(vocab_size=vocab_size or default_vocab, n_positions=n_positions, n_embd=n_embd,
                  n_layer=n_layer, n_head=n_head)
    kwargs.update(overrides)
    config = GPT2Config(**kwargs)
    if config.n_embd % config.n_head:
        raise UserError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}; change one of them")
    return config


def _init(init_fn, names: tuple):
    return nn.with_logical_partitioning(init_fn, names)


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


def _layer_norm(config: GPT2Config, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_epsilon, dtype=config.compute_dtype, param_dtype=jnp.float32,
                        scale_init=_init(nn.initializers.ones, ("norm",)),
                        bias_init=_init(nn.initializers.zeros, ("norm",)), name=name)


class Linear(nn.Module):
    """x @ kernel + bias, contracting the last `in_dims` axes of x; kernel is `in_shape + out_shape`.

    (Written out instead of nn.DenseGeneral, which initialises a flattened 2-D kernel and so cannot carry the
    3-D logical names of q/k/v under a mesh.)"""
    out_shape: tuple[int, ...]
    names: tuple[str, ...]  # logical names of the kernel's axes; the bias takes the output ones
    std: float = 0.02
    in_dims: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_shape = x.shape[x.ndim - self.in_dims:] + tuple(self.out_shape)
        kernel = self.param("kernel", _init(_normal(self.std), self.names), kernel_shape, jnp.float32)
        bias = self.param("bias", _init(nn.initializers.zeros, self.names[self.in_dims:]), tuple(self.out_shape),
                          jnp.float32)
        kernel = gather_for_compute(kernel, self.names)
        bias = gather_for_compute(bias, self.names[self.in_dims:])
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.tensordot(x, kernel, axes=self.in_dims) + bias


class Embed(nn.Module):
    """A table `embedding` [num, features] with logical `names`: rows by id (`__call__`), or logits against every
    row (`attend`, the tied output head). nn.Embed's parameters and results, with the table gathered at use."""
    num_embeddings: int
    features: int
    names: tuple[str | None, str]
    std: float = 0.02
    dtype: Any = jnp.float32

    def setup(self):
        self.embedding = self.param("embedding", _init(_normal(self.std), self.names),
                                    (self.num_embeddings, self.features), jnp.float32)

    def _table(self) -> jax.Array:
        return gather_for_compute(self.embedding, self.names).astype(self.dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self._table(), ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """x [..., features] -> [..., num_embeddings]."""
        return jnp.dot(x.astype(self.dtype), self._table().T)


class CausalSelfAttention(nn.Module):
    config: GPT2Config
    decode: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, cache_index: jax.Array) -> jax.Array:
        """x [B, T, E]; mask [B, 1, T, S] (True = may attend); cache_index: slot of x[:, 0] when decoding."""
        cfg = self.config
        head_dim = cfg.n_embd // cfg.n_head
        proj = lambda name: Linear((cfg.n_head, head_dim), ("embed", "heads", "kv"),  # noqa: E731
                                   dtype=cfg.compute_dtype, name=name)
        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # [B, T, H, D]

        if self.decode:
            initialized = self.has_variable("cache", "cached_key")
            cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
            cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
            if initialized:  # (at init the call only creates the [B, S] cache from the input's shape)
                start = (0, cache_index, 0, 0)
                cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), start)
                cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), start)
                k, v = cached_k.value, cached_v.value

        # Scores and softmax in float32 whatever the compute dtype.
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
        # A finite "minus infinity" keeps rows with no real key (padding queries) finite instead of NaN.
        att = jnp.where(mask, att, jnp.finfo(jnp.float32).min)
        att = jax.nn.softmax(att, axis=-1)
        att = nn.Dropout(cfg.dropout)(att, deterministic=self.deterministic)
        y = jnp.einsum("bhqk,bkhd->bqhd", att.astype(v.dtype), v)
        # Residual projections start smaller, as in GPT-2 (std / sqrt(2 * n_layer)).
        y = Linear((cfg.n_embd,), ("heads", "kv", "embed"), std=0.02 / math.sqrt(2 * cfg.n_layer), in_dims=2,
                   dtype=cfg.compute_dtype, name="c_proj")(y)
        return nn.Dropout(cfg.dropout)(y, deterministic=self.deterministic)


class MLP(nn.Module):
    config: GPT2Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = Linear((4 * cfg.n_embd,), ("embed", "mlp"), dtype=cfg.compute_dtype, name="c_fc")(x)
        x = nn.gelu(x, approximate=True)  # GPT-2's "gelu_new"
        x = Linear((cfg.n_embd,), ("mlp", "embed"), std=0.02 / math.sqrt(2 * cfg.n_layer), dtype=cfg.compute_dtype,
                   name="c_proj")(x)
        return nn.Dropout(cfg.dropout)(x, deterministic=self.deterministic)


class Block(nn.Module):
    """Pre-LN transformer block. Returns (carry, per-layer output) so that nn.scan can stack hidden states.
    (Cross-attention to image prefixes goes between `attn` and `mlp`, with its own LayerNorm.)"""
    config: GPT2Config
    decode: bool = False
    deterministic: bool = True
    collect: bool = False  # return the block's output as the scan's per-layer output

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, cache_index: jax.Array):
        x = x + CausalSelfAttention(self.config, self.decode, self.deterministic, name="attn")(
            _layer_norm(self.config, "ln_1")(x), mask, cache_index)
        x = x + MLP(self.config, self.deterministic, name="mlp")(_layer_norm(self.config, "ln_2")(x))
        return x, (x if self.collect else None)


class GPT2(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, deterministic: bool = True,
                 decode: bool = False, output_hidden_states: bool = False, prefix_embeds: jax.Array | None = None,
                 prefix_mask: jax.Array | None = None):
        """input_ids [B, T] -> logits [B, T, V] float32.

        attention_mask [B, T]: 1 = real token, 0 = padding (never attended to). With output_hidden_states,
        returns (logits, hidden [n_layer + 1, B, T, E]) laid out as Hugging Face's: hidden[0] = embeddings,
        hidden[i] = output of block i, hidden[-1] = ln_f(output of the last block).
        prefix_embeds [B, P, E]: vectors read before the tokens (see the module docstring); outputs still cover
        the T tokens only. prefix_mask [B, P]: 1 = real prefix vector, 0 = padding (default: all real).
        """
        cfg = self.config
        batch, num_tokens = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, num_tokens), jnp.int32)
        attention_mask = attention_mask.astype(jnp.int32)
        num_prefix = 0
        if prefix_mask is not None and prefix_embeds is None:
            raise ValueError("prefix_mask was given without prefix_embeds; pass both or neither")
        if prefix_embeds is not None:
            if prefix_embeds.ndim != 3 or prefix_embeds.shape[0] != batch or prefix_embeds.shape[2] != cfg.n_embd:
                raise ValueError(f"prefix_embeds must be [batch={batch}, P, n_embd={cfg.n_embd}], "
                                 f"got {prefix_embeds.shape}")
            num_prefix = prefix_embeds.shape[1]
            if prefix_mask is None:
                prefix_mask = jnp.ones((batch, num_prefix), jnp.int32)
            elif prefix_mask.shape != (batch, num_prefix):
                raise ValueError(f"prefix_mask must be [batch={batch}, P={num_prefix}], got {prefix_mask.shape}")
            # The prefix is a run of slots ahead of the tokens: one sequence of P + T from here on.
            attention_mask = jnp.concatenate([prefix_mask.astype(jnp.int32), attention_mask], axis=1)
        length = num_prefix + num_tokens

        cache_index = jnp.zeros((), jnp.int32)
        decoding = decode and self.has_variable("cache", "index")
        if decode:  # the cache's length is the length of the input at init (see init_cache)
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            key_mask = self.variable("cache", "key_mask", jnp.zeros, (batch, length), jnp.int32)
        if decoding:
            cache_index = index.value
            seen = key_mask.value.sum(-1, keepdims=True)  # real tokens already in the cache, per row
            key_mask.value = jax.lax.dynamic_update_slice(key_mask.value, attention_mask, (0, cache_index))
            index.value = cache_index + length
            query_slot = cache_index + jnp.arange(length)
            key_slot = jnp.arange(key_mask.value.shape[1])
            mask = (key_slot[None, :] <= query_slot[:, None])[None] & (key_mask.value[:, None, :] > 0)
        else:
            if length > cfg.n_positions:
                what = f"{num_prefix} prefix vectors + {num_tokens} tokens" if num_prefix else f"{length} tokens"
                raise UserError(f"input of {what} is longer than n_positions={cfg.n_positions}; "
                                "truncate the text or use a model with more positions")
            seen = jnp.zeros((batch, 1), jnp.int32)
            causal = jnp.tril(jnp.ones((length, length), bool))
            mask = causal[None] & (attention_mask[:, None, :] > 0)
        mask = mask[:, None]  # [B, 1, T, S]: broadcast over heads
        positions = jnp.maximum(seen + jnp.cumsum(attention_mask, axis=-1) - 1, 0)

        wte = Embed(cfg.vocab_size, cfg.n_embd, ("vocab", "embed"), 0.02, cfg.compute_dtype, name="wte")
        wpe = Embed(cfg.n_positions, cfg.n_embd, ("pos", "embed"), 0.01, cfg.compute_dtype, name="wpe")
        x = wte(input_ids)
        if prefix_embeds is not None:
            x = jnp.concatenate([prefix_embeds.astype(x.dtype), x], axis=1)
        x = x + wpe(positions)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)

        block = Block
        if cfg.remat:
            block = nn.remat(block, prevent_cse=not cfg.scan_layers)
        hidden = [x]
        if cfg.scan_layers:
            scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                              split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast, nn.broadcast),
                              length=cfg.n_layer, metadata_params={nn.PARTITION_NAME: "layers"})
            x, per_layer = scanned(cfg, decode, deterministic, output_hidden_states, name="h")(x, mask, cache_index)
            if output_hidden_states:
                hidden.extend(per_layer[i] for i in range(cfg.n_layer))
        else:
            for i in range(cfg.n_layer):
                x, _ = block(cfg, decode, deterministic, name=f"h_{i}")(x, mask, cache_index)
                hidden.append(x)
        x = _layer_norm(cfg, "ln_f")(x[:, num_prefix:])
        logits = wte.attend(x).astype(jnp.float32)  # tied output embedding
        if output_hidden_states:
            hidden = [h[:, num_prefix:] for h in hidden[:-1]] + [x]
            return logits, jnp.stack(hidden)
        return logits


def init_params(model: GPT2, rng: jax.Array) -> Params:
    """Random float32 parameters (plain arrays; the logical names are in `logical_specs`)."""
    ids = jnp.zeros((1, min(8, model.config.n_positions)), jnp.int32)
    return nn.meta.unbox(jax.jit(model.init)(rng, ids)["params"])


def logical_specs(model: GPT2) -> Any:
    """PartitionSpecs of logical axis names for every parameter (map with nn.logical_to_mesh_sharding)."""
    ids = jnp.zeros((1, min(8, model.config.n_positions)), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), ids)
    return nn.get_partition_spec(abstract)["params"]


def init_cache(model: GPT2, batch_size: int, max_length: int) -> Any:
    """An empty KV cache for `batch_size` rows of up to `max_length` slots (prefix + prompt + generated)."""
    if max_length > model.config.n_positions:
        raise UserError(f"cache of {max_length} tokens exceeds n_positions={model.config.n_positions}; "
                        "shorten the prompt or max_new_tokens")
    ids = jnp.zeros((batch_size, max_length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, decode=True)["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def stack_layers(params: Params, n_layer: int) -> Params:
    """Per-layer params (h_0 .. h_{n-1}) -> the scan layout (h with a leading layers axis)."""
    params = dict(params)
    layers = [params.pop(f"h_{i}") for i in range(n_layer)]
    params["h"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return params


def unstack_layers(params: Params, n_layer: int) -> Params:
    """The scan layout -> per-layer params h_0 .. h_{n-1}."""
    params = dict(params)
    stacked = params.pop("h")
    for i in range(n_layer):
        params[f"h_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return params
