"""The generators' text side: tokenizer and GPT-2 text encoder, shared by diffusion and GAN.

The encoder is the language model of `text.lm_workdir` (its trained weights start the `text` group), or a fresh
GPT-2 of `text.preset` with a tokenizer trained on the captions. Its description (`text_model.json`) and
tokenizer are copied into the generator's workdir, so that workdir alone is enough to generate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmimg_jax.data.tokenizer import ensure_tokenizer, load_tokenizer
from llmimg_jax.errors import UserError
from llmimg_jax.text.encoder import encode
from llmimg_jax.text.gpt2 import GPT2, GPT2Config, gpt2_config

TEXT_MODEL_FILE = "text_model.json"


@dataclasses.dataclass
class TextSide:
    tokenizer: Any
    model: GPT2
    layer: int
    pooling: str
    trainable: bool
    pretrained: Callable[[], Any] | None = None  # host params of the LM, when it comes from an LM workdir

    @property
    def max_length(self) -> int:
        return self.model.config.n_positions

    def _ids(self, text: str) -> list[int]:
        # The end token closes every text, so `last` pooling reads all of it.
        return self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]

    def _row(self, ids: list[int]) -> dict[str, np.ndarray]:
        ids = ids[: self.max_length]
        pad = self.max_length - len(ids)
        return {"ids": np.asarray(ids + [self.tokenizer.pad_token_id] * pad, np.int32),
                "attention_mask": np.asarray([1] * len(ids) + [0] * pad, np.int32)}

    def token_row(self, text: str) -> dict[str, np.ndarray]:
        """ids and mask [max_length] of one text and its end token, right-padded; a longer text keeps its first
        tokens."""
        return self._row(self._ids(text))

    def tokenize(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Token rows of the texts; texts longer than the encoder's context are truncated, with one warning."""
        texts = list(texts)
        encoded = [self._ids(t) for t in texts]
        long = [t for t, ids in zip(texts, encoded) if len(ids) > self.max_length]
        if long:
            warnings.warn(f"{len(long)} of {len(texts)} prompts are longer than the text encoder's {self.max_length} "
                          f"tokens and were truncated to their first {self.max_length} (first: {long[0][:60]!r})",
                          stacklevel=2)
        rows = [self._row(ids) for ids in encoded]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def init(self, rng: jax.Array) -> Any:
        return self.model.init(rng, jnp.zeros((1, self.max_length), jnp.int32))["params"]

    def condition(self, params: Any, ids: jax.Array, attention_mask: jax.Array) -> dict:
        """The generator's condition: token states, their mask and the pooled vector."""
        enc = encode(self.model, params, ids, attention_mask, layer=self.layer, pooling=self.pooling,
                     trainable=self.trainable)
        return {"context": enc.states, "context_mask": enc.mask.astype(bool), "pooled": enc.pooled}


def _lm_from_workdir(lm_workdir: str, dtype: str) -> tuple[Any, GPT2, Callable[[], Any]]:
    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.text.lm_task import build_lm
    from llmimg_jax.training.checkpoint import load_params

    lm_config = load_workdir_config(lm_workdir)
    if lm_config.task != "lm":
        raise UserError(f"text.lm_workdir '{lm_workdir}' holds a '{lm_config.task}' run, not a language model")
    tokenizer = load_tokenizer(lm_config.text.tokenizer_dir or os.path.join(lm_workdir, "tokenizer"))
    lm_config.train.compute_dtype = dtype
    model = build_lm(lm_config, len(tokenizer))

    def pretrained():
        ids = jax.ShapeDtypeStruct((1, model.config.n_positions), np.int32)
        abstract = {"lm": jax.eval_shape(model.init, jax.random.key(0), ids)["params"]}
        return jax.device_get(load_params(lm_workdir, abstract)["params"]["lm"])

    return tokenizer, model, pretrained


def build_text_side(config: ml_collections.ConfigDict, workdir: str, texts_fn: Callable[[], Iterable[str]]) -> TextSide:
    """The text side of a generator being trained in `workdir` (records it there for generation)."""
    text = config.text
    if text.encoder != "gpt2":
        raise UserError(f"text.encoder='{text.encoder}' is not available yet; use text.encoder=gpt2")
    pretrained = None
    if text.lm_workdir:
        tokenizer, model, pretrained = _lm_from_workdir(text.lm_workdir, config.train.compute_dtype)
        if jax.process_index() == 0 and not os.path.isdir(os.path.join(workdir, "tokenizer")):
            tokenizer.save_pretrained(os.path.join(workdir, "tokenizer"))
    else:
        tokenizer = ensure_tokenizer(text, workdir, texts_fn)
        model = GPT2(gpt2_config(text.preset, vocab_size=len(tokenizer), n_positions=int(text.max_length),
                                 dtype=config.train.compute_dtype))
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, TEXT_MODEL_FILE), "w") as f:
            json.dump(dataclasses.asdict(model.config), f, indent=2)
    return TextSide(tokenizer, model, int(text.layer), text.pooling, bool(text.trainable), pretrained)


def load_text_side(config: ml_collections.ConfigDict, workdir: str) -> TextSide:
    """The text side recorded in a generator's workdir (its weights are in the workdir's checkpoint)."""
    path = os.path.join(workdir, TEXT_MODEL_FILE)
    if not os.path.isfile(path):
        raise UserError(f"'{workdir}' has no {TEXT_MODEL_FILE}; it is not a generator workdir (train one with "
                        "`llmimg train --config configs/shapes_diffusion.py`)")
    with open(path) as f:
        model = GPT2(GPT2Config(**json.load(f)))
    tokenizer = load_tokenizer(config.text.tokenizer_dir or os.path.join(workdir, "tokenizer"))
    return TextSide(tokenizer, model, int(config.text.layer), config.text.pooling, False)

