"""A BERT-family encoder in Flax linen, loaded from any local Hugging Face BERT directory (safetensors, no torch).

Post-LN blocks (residual add, then LayerNorm), exact (erf) GELU, learned absolute positions plus token-type
embeddings, bidirectional attention over the real tokens of `attention_mask`. Parameter names follow Hugging
Face's modules (`layer_<i>/attention/query` ...) so the importer is a plain renaming; q/k/v kernels are
`[embed, heads, kv]` and the attention output `[heads, kv, embed]`, as in `gpt2.py`, whose `Linear` and `Embed`
gather their kernels over the batch's mesh axes at use (see training/sharding.py).

Not imported: the pooler (a tanh layer over [CLS], trained for next-sentence prediction). Sentence-transformers
models, MiniLM included, use the mean of the token states over real tokens instead: `mean_pool`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax.errors import UserError
from llmimg_jax.text.gpt2 import Embed, Linear
from llmimg_jax.text.hf_checkpoint import TensorReader, read_hf_config, read_tensors

Params = Any


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0          # hidden and attention dropout (0 for an imported model used as an encoder)
    dtype: str = "float32"        # compute dtype; params stay float32

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def n_embd(self) -> int:
        """The width of the token states, under the name the generators read from any text encoder's config."""
        return self.hidden_size


BERT_VOCAB_SIZE = 30522  # the uncased WordPiece vocabulary of BERT and MiniLM
PRESETS = {
    # name: (num_hidden_layers, hidden_size, num_attention_heads, intermediate_size)
    "minilm-l6": (6, 384, 12, 1536),   # all-MiniLM-L6-v2
    "bert-base": (12, 768, 12, 3072),
}


def bert_config(preset: str, vocab_size: int = BERT_VOCAB_SIZE, **overrides: Any) -> BertConfig:
    """A preset's config; any BertConfig field can be overridden."""
    if preset not in PRESETS:
        raise UserError(f"unknown BERT preset '{preset}'; choose one of {', '.join(PRESETS)}")
    layers, hidden, heads, inner = PRESETS[preset]
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown BertConfig field(s) {unknown}; known fields: {', '.join(sorted(fields))}")
    kwargs = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=inner)
    return _checked(BertConfig(**{**kwargs, **overrides}))


def _checked(config: BertConfig) -> BertConfig:
    if config.hidden_size % config.num_attention_heads:
        raise UserError(f"hidden_size={config.hidden_size} is not divisible by num_attention_heads="
                        f"{config.num_attention_heads}; change one of them")
    return config


def _init(init_fn, names: tuple):
    return nn.with_logical_partitioning(init_fn, names)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.compute_dtype, param_dtype=jnp.float32,
                        scale_init=_init(nn.initializers.ones, ("norm",)),
                        bias_init=_init(nn.initializers.zeros, ("norm",)), name=name)


class SelfAttention(nn.Module):
    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x [B, T, E]; mask [B, 1, 1, T] (True = real key)."""
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        proj = lambda name: Linear((cfg.num_attention_heads, head_dim), ("embed", "heads", "kv"),  # noqa: E731
                                   dtype=cfg.compute_dtype, name=name)
        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # [B, T, H, D]
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / np.sqrt(head_dim)
        # A finite "minus infinity", as Hugging Face uses: a row of padding keys only stays finite.
        att = jax.nn.softmax(jnp.where(mask, att, jnp.finfo(jnp.float32).min), axis=-1)
        att = nn.Dropout(cfg.dropout)(att, deterministic=self.deterministic)
        y = jnp.einsum("bhqk,bkhd->bqhd", att.astype(v.dtype), v)
        return Linear((cfg.hidden_size,), ("heads", "kv", "embed"), in_dims=2, dtype=cfg.compute_dtype,
                      name="output")(y)


class Layer(nn.Module):
    """Post-LN block: x = LN(x + attention(x)); x = LN(x + MLP(x))."""
    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.config
        drop = lambda y: nn.Dropout(cfg.dropout)(y, deterministic=self.deterministic)  # noqa: E731
        attention = SelfAttention(cfg, self.deterministic, name="attention")
        x = _layer_norm(cfg, "attention_norm")(x + drop(attention(x, mask)))
        h = Linear((cfg.intermediate_size,), ("embed", "mlp"), dtype=cfg.compute_dtype, name="intermediate")(x)
        h = nn.gelu(h, approximate=False)  # BERT's "gelu" is the exact erf form
        h = Linear((cfg.hidden_size,), ("mlp", "embed"), dtype=cfg.compute_dtype, name="output")(h)
        return _layer_norm(cfg, "output_norm")(x + drop(h))


class Bert(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, deterministic: bool = True,
                 output_hidden_states: bool = False):
        """input_ids [B, T] (right-padded) -> last hidden states [B, T, E] in the compute dtype.

        attention_mask [B, T]: 1 = real token, 0 = padding (never attended to). With output_hidden_states,
        returns hidden [n_layers + 1, B, T, E] as Hugging Face lays them out: hidden[0] = embeddings,
        hidden[i] = output of layer i.
        """
        cfg = self.config
        batch, length = input_ids.shape
        if length > cfg.max_position_embeddings:
            raise UserError(f"input of {length} tokens is longer than max_position_embeddings="
                            f"{cfg.max_position_embeddings}; truncate the text")
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, length), jnp.int32)
        mask = (attention_mask > 0)[:, None, None, :]

        embed = lambda num, names, name: Embed(num, cfg.hidden_size, names, 0.02, cfg.compute_dtype,  # noqa: E731
                                               name=name)
        x = (embed(cfg.vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
             + embed(cfg.max_position_embeddings, ("pos", "embed"), "position_embeddings")(jnp.arange(length))[None]
             # two token types: too few rows to shard, so that axis has no name (replicated)
             + embed(cfg.type_vocab_size, (None, "embed"), "token_type_embeddings")(token_type_ids))
        x = _layer_norm(cfg, "embeddings_norm")(x)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        hidden = [x]
        for i in range(cfg.num_hidden_layers):
            x = Layer(cfg, deterministic, name=f"layer_{i}")(x, mask)
            hidden.append(x)
        return jnp.stack(hidden) if output_hidden_states else x


def mean_pool(states: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """[B, T, E] -> [B, E] float32: the mean over real tokens (sentence-transformers' pooling)."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    return (states.astype(jnp.float32) * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)


def init_params(model: Bert, rng: jax.Array) -> Params:
    """Random float32 parameters (plain arrays; the logical names are in `logical_specs`)."""
    return nn.meta.unbox(jax.jit(model.init)(rng, jnp.zeros((1, 8), jnp.int32))["params"])


def logical_specs(model: Bert) -> Any:
    """PartitionSpecs of logical axis names for every parameter."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return nn.get_partition_spec(abstract)["params"]


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face interop

_UNUSED_PREFIXES = ("pooler.",)           # documented above
_BUFFER_SUFFIXES = ("position_ids",)      # a saved arange, not a parameter


def config_from_hf(hf: dict, **overrides: Any) -> BertConfig:
    """BertConfig from a Hugging Face config.json dict; unsupported settings are UserErrors naming the field."""
    if hf.get("model_type", "bert") != "bert":
        raise UserError(f"config.json has model_type '{hf.get('model_type')}', expected 'bert'")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"unsupported BERT config: hidden_act={hf['hidden_act']!r} (only 'gelu' is supported)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"unsupported BERT config: position_embedding_type={hf['position_embedding_type']!r} "
                        "(only 'absolute' is supported)")
    kwargs = dict(vocab_size=hf.get("vocab_size", BERT_VOCAB_SIZE), hidden_size=hf.get("hidden_size", 768),
                  num_hidden_layers=hf.get("num_hidden_layers", 12),
                  num_attention_heads=hf.get("num_attention_heads", 12),
                  intermediate_size=hf.get("intermediate_size", 3072),
                  max_position_embeddings=hf.get("max_position_embeddings", 512),
                  type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12))
    kwargs.update(overrides)  # dropout defaults to 0: an imported model is for inference or fine-tuning
    return _checked(BertConfig(**kwargs))


def params_from_hf(tensors: dict[str, np.ndarray], config: BertConfig) -> Params:
    """Our params tree from Hugging Face BERT tensors (`BertModel` keys, or `bert.`-prefixed ones)."""
    reader = TensorReader(tensors, "BERT", strip_prefix="bert.")
    get, norm = reader.get, reader.layer_norm
    E, H = config.hidden_size, config.num_attention_heads
    D = E // H
    # torch's Linear weights are [out, in]; our kernels [in, out].
    dense = lambda name: {"kernel": get(f"{name}.weight").T, "bias": get(f"{name}.bias")}  # noqa: E731
    e = "embeddings."
    params = {"word_embeddings": {"embedding": get(e + "word_embeddings.weight")},
              "position_embeddings": {"embedding": get(e + "position_embeddings.weight")},
              "token_type_embeddings": {"embedding": get(e + "token_type_embeddings.weight")},
              "embeddings_norm": norm(e + "LayerNorm")}
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        attention = {name: {"kernel": get(f"{p}attention.self.{name}.weight").T.reshape(E, H, D),
                            "bias": get(f"{p}attention.self.{name}.bias").reshape(H, D)}
                     for name in ("query", "key", "value")}
        attention["output"] = {"kernel": get(p + "attention.output.dense.weight").T.reshape(H, D, E),
                               "bias": get(p + "attention.output.dense.bias")}
        params[f"layer_{i}"] = {"attention": attention, "attention_norm": norm(p + "attention.output.LayerNorm"),
                                "intermediate": dense(p + "intermediate.dense"), "output": dense(p + "output.dense"),
                                "output_norm": norm(p + "output.LayerNorm")}
    reader.warn_unused(ignore_prefixes=_UNUSED_PREFIXES, ignore_suffixes=_BUFFER_SUFFIXES)
    shape = params["word_embeddings"]["embedding"].shape
    if shape != (config.vocab_size, E):
        raise UserError(f"word_embeddings.weight has shape {shape} but config.json says vocab_size="
                        f"{config.vocab_size}, hidden_size={E}; the directory's files do not match")
    return params


def load_bert_config(path: str, **overrides: Any) -> BertConfig:
    """The BertConfig of a local Hugging Face BERT directory's config.json."""
    return config_from_hf(read_hf_config(path, "BERT"), **overrides)


def load_bert_params(path: str, config: BertConfig) -> Params:
    """Host (numpy float32) params of a local Hugging Face BERT directory's safetensors (single or sharded)."""
    return params_from_hf(read_tensors(path), config)


def load_hf_bert(path: str, **overrides: Any) -> tuple[Bert, Params]:
    """(model, params) from a local Hugging Face BERT directory; overrides set BertConfig fields
    (e.g. dtype='bfloat16')."""
    config = load_bert_config(path, **overrides)
    return Bert(config), jax.tree.map(jnp.asarray, load_bert_params(path, config))


def load_bert_tokenizer(path: str):
    """The WordPiece tokenizer of a local directory (never a hub); refuses an empty vocabulary."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise UserError(f"BERT tokenizer directory '{path}' does not exist; pass a local directory with "
                        "tokenizer.json or vocab.txt (hub names are not fetched)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # Offline, transformers can return an empty tokenizer instead of failing.
    if len(tokenizer.get_vocab()) <= len(tokenizer.all_special_tokens):
        raise UserError(f"the tokenizer in '{path}' has an empty vocabulary; check its vocab.txt / tokenizer.json")
    missing = [name for name in ("cls_token", "sep_token", "pad_token") if getattr(tokenizer, name) is None]
    if missing:
        raise UserError(f"the tokenizer in '{path}' lacks {', '.join(missing)}; it is not a BERT tokenizer")
    return tokenizer
