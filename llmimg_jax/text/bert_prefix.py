"""The prompt expander's instruction reader (`lm.instruction_encoder="bert"`): a pretrained BERT whose token
states a small trained adapter maps to GPT-2 prefix embeddings (ClipCap-style, for text).

    states, mask = BERT([CLS] instruction [SEP])          frozen unless lm.bert_lr > 0 (fine-tuned end to end)
    prefix       = Adapter(states + noise, mask)          LayerNorm, Linear 384 -> n_embd, lm.adapter_layers blocks
    logits       = GPT2(<|sep|> description <|endoftext|>, prefix_embeds=prefix, prefix_mask=mask)

The decoder sees the instruction only through BERT: its own tokens of the instruction are never fed. Two generic
regularisers help it read wordings the training templates never use (neither knows the test paraphrases):
`lm.state_noise` adds Gaussian noise (that fraction of each state's RMS) to BERT's states in training, so nearby
states (synonyms) map to nearby prefixes; `lm.word_insertion` inserts 1-3 random vocabulary words into that
share of the training instructions (EDA's random insertion), so filler words are ignored. BERT is the
generators' BERT text side (`text.encoder_path`, '' = the shipped MiniLM; rows of `text.max_length` tokens),
recorded in WORKDIR/bert (tokenizer and text_model.json) so the workdir loads without the checkpoint package; its
weights are a parameter group saved with every checkpoint, frozen unless `lm.bert_lr` > 0 fine-tunes it end to end
at that learning rate. Parameter groups: {"lm", "adapter", "bert"}.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmimg_jax.errors import UserError
from llmimg_jax.generator.text_side import BertTextSide, build_text_side, load_text_side
from llmimg_jax.text.gpt2 import Block, GPT2Config, Linear

Params = Any
BERT_SUBDIR = "bert"  # WORKDIR/bert/{tokenizer/, text_model.json}
ENCODERS = ("gpt2", "bert")


class PrefixAdapter(nn.Module):
    """BERT token states [B, T, D] -> prefix embeddings [B, T, n_embd] (padding rows are masked by the decoder)."""
    config: GPT2Config  # the decoder's: width, heads and dtype of the output and of the optional blocks
    num_layers: int = 0

    @nn.compact
    def __call__(self, states: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        x = nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                         scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), name="ln")(states)
        # Output scale like GPT-2's token embeddings (std 0.02), as the captioner's prefix starts.
        x = Linear((cfg.n_embd,), (None, "embed"), std=0.02 / np.sqrt(states.shape[-1]), dtype=cfg.compute_dtype,
                   name="proj")(x)
        # GPT-2's pre-LN block, attending both ways over the real states (the mask decides who may attend).
        attend = (mask > 0)[:, None, None, :]
        for i in range(self.num_layers):
            x, _ = Block(cfg, False, deterministic, name=f"block_{i}")(x, attend, jnp.zeros((), jnp.int32))
        return x


@dataclasses.dataclass
class InstructionReader:
    """Frozen BERT (its text side: tokenizer, model, rows) + the adapter; params = {"adapter": .., "bert": ..}."""
    side: BertTextSide
    adapter: PrefixAdapter

    @property
    def max_length(self) -> int:
        return self.side.max_length

    def words(self) -> list[str]:
        """Whole alphabetic words of BERT's vocabulary (for `insert_random_words`)."""
        return sorted(w for w in self.side.tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3)

    def row(self, text: str) -> dict[str, np.ndarray]:
        """bert_ids and bert_mask [max_length] of one instruction, right-padded."""
        row = self.side.token_row(text)
        return {"bert_ids": row["ids"], "bert_mask": row["attention_mask"]}

    def rows(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids and mask [N, max_length]; longer instructions are truncated, with one warning."""
        rows = self.side.tokenize(texts)
        return rows["ids"], rows["attention_mask"]

    def init(self, rng: jax.Array) -> dict[str, Params]:
        k_bert, k_adapter = jax.random.split(rng)
        states = jnp.zeros((1, self.max_length, self.side.model.config.n_embd), jnp.float32)
        mask = jnp.ones((1, self.max_length), jnp.int32)
        return {"bert": self.side.init(k_bert), "adapter": self.adapter.init(k_adapter, states, mask)["params"]}

    def prefix(self, params: dict[str, Params], ids: jax.Array, mask: jax.Array, *, deterministic: bool = True,
               rng: jax.Array | None = None, state_noise: float = 0.0) -> tuple[jax.Array, jax.Array]:
        """(prefix_embeds [B, T, n_embd], prefix_mask [B, T]); no gradient reaches params["bert"] unless the side
        is trainable. With `state_noise` > 0 (training; needs `rng`), Gaussian noise of that fraction of each
        state's RMS is added."""
        states = self.side.condition(params["bert"], ids, mask)["context"]  # a frozen side stops gradients inside
        if state_noise > 0:
            rng, noise_rng = jax.random.split(rng)
            # The noise's scale carries no gradient (and sqrt's would be infinite at a zero padding state).
            rms = jax.lax.stop_gradient(jnp.sqrt(jnp.mean(jnp.square(states.astype(jnp.float32)), axis=-1,
                                                          keepdims=True)))
            noise = jax.random.normal(noise_rng, states.shape, jnp.float32) * (state_noise * rms)
            states = (states.astype(jnp.float32) + noise).astype(states.dtype)
        rngs = {"dropout": rng} if rng is not None else {}
        embeds = self.adapter.apply({"params": params["adapter"]}, states, mask, deterministic, rngs=rngs)
        return embeds, mask

    def bind(self, params: dict[str, Params]) -> Callable[[Sequence[str]], tuple[jax.Array, jax.Array]]:
        """instructions -> (prefix_embeds, prefix_mask) with these params, compiled once per batch size."""
        compiled = jax.jit(lambda p, ids, mask: self.prefix(p, ids, mask))

        def read(texts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
            ids, mask = self.rows(texts)
            return compiled(params, jnp.asarray(ids), jnp.asarray(mask))

        return read


def insert_random_words(text: str, words: Sequence[str], rng: np.random.Generator) -> str:
    """`text` with 1 to 3 words drawn from `words` inserted at random word boundaries."""
    tokens = text.split()
    for _ in range(int(rng.integers(1, 4))):
        tokens.insert(int(rng.integers(len(tokens) + 1)), words[int(rng.integers(len(words)))])
    return " ".join(tokens)


def uses_bert(config: ml_collections.ConfigDict) -> bool:
    """Whether an `lm` config reads instructions through BERT (checking the option's value)."""
    encoder = config.lm.get("instruction_encoder", "gpt2")
    if encoder not in ENCODERS:
        raise UserError(f"lm.instruction_encoder='{encoder}' is unknown; use lm.instruction_encoder=gpt2 or bert")
    return encoder == "bert"


def _bert_text_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config the generators' BERT text side reads: text.encoder=bert, last layer, trainable when lm.bert_lr
    > 0."""
    trainable = float(config.lm.get("bert_lr", 0.0)) > 0
    config = ml_collections.ConfigDict(config.to_dict())
    config.text.update(dict(encoder="bert", trainable=trainable, layer=-1, lm_workdir="", tokenizer_dir=""))
    return config


def _adapter(config: ml_collections.ConfigDict, lm_config: GPT2Config) -> PrefixAdapter:
    layers = int(config.lm.adapter_layers)
    if layers < 0:
        raise UserError(f"lm.adapter_layers={layers} must be 0 or more")
    return PrefixAdapter(lm_config, layers)


def build_reader(config: ml_collections.ConfigDict, workdir: str, lm_config: GPT2Config
                 ) -> tuple[InstructionReader, Callable[[], Params]]:
    """The reader of an LM run being trained in `workdir` (records BERT's tokenizer and config there), and a
    loader of BERT's pretrained host params."""
    side = build_text_side(_bert_text_config(config), os.path.join(workdir, BERT_SUBDIR), lambda: ())
    return InstructionReader(side, _adapter(config, lm_config)), side.pretrained


def load_reader(config: ml_collections.ConfigDict, workdir: str, lm_config: GPT2Config) -> InstructionReader:
    """The reader recorded in a trained LM workdir (its params are in the workdir's checkpoint)."""
    directory = os.path.join(workdir, BERT_SUBDIR)
    if not os.path.isdir(directory):
        raise UserError(f"'{workdir}' was trained with lm.instruction_encoder=bert but has no {BERT_SUBDIR}/ "
                        "directory (BERT's tokenizer and config); its training never started, train it first")
    side = load_text_side(_bert_text_config(config), directory)
    return InstructionReader(side, _adapter(config, lm_config))
