"""The generators' text side: tokenizer and text encoder (GPT-2 or BERT), shared by diffusion and GAN.

`text.encoder="gpt2"`: the language model of `text.lm_workdir` (its trained weights start the `text` group), or a
fresh GPT-2 of `text.preset` with a tokenizer trained on the captions.
`text.encoder="bert"`: the pretrained BERT of `text.encoder_path` (default: the MiniLM checkpoint of the
`pretrained` extra) with its WordPiece tokenizer; its weights start the `text` group.
Either way the encoder's description (`text_model.json`) and tokenizer are copied into the generator's workdir,
so that workdir alone is enough to generate.
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
from llmimg_jax.text.bert import Bert, BertConfig, load_bert_config, load_bert_params, load_bert_tokenizer
from llmimg_jax.text.encoder import encode, encoding_from_hidden
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
    # Tokens per row (text.max_length), at most the LM's context: an expander's context holds instruction and
    # description, a generator reads descriptions alone, and every padded token costs encoding and cross-attention.
    length: int | None = None

    @property
    def max_length(self) -> int:
        positions = self.model.config.n_positions
        return positions if self.length is None else min(self.length, positions)

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


def lm_from_workdir(lm_workdir: str, dtype: str) -> tuple[Any, GPT2, Callable[[], Any]]:
    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.text.lm_task import build_lm
    from llmimg_jax.training.checkpoint import load_params

    lm_config = load_workdir_config(lm_workdir)
    if lm_config.task != "lm":
        raise UserError(f"text.lm_workdir '{lm_workdir}' holds a '{lm_config.task}' run, not a language model")
    if lm_config.lm.get("instruction_encoder", "gpt2") != "gpt2":
        raise UserError(f"text.lm_workdir '{lm_workdir}' is an expander that reads instructions through BERT; its GPT-2 "
                        "never saw instruction tokens: encode with text.encoder=bert, or a plain configs/shapes_lm.py run")
    tokenizer = load_tokenizer(lm_config.text.tokenizer_dir or os.path.join(lm_workdir, "tokenizer"))
    lm_config.train.compute_dtype = dtype
    model = build_lm(lm_config, len(tokenizer))

    def pretrained():
        ids = jax.ShapeDtypeStruct((1, model.config.n_positions), np.int32)
        abstract = {"lm": jax.eval_shape(model.init, jax.random.key(0), ids)["params"]}
        return jax.device_get(load_params(lm_workdir, abstract)["params"]["lm"])

    return tokenizer, model, pretrained


@dataclasses.dataclass
class BertTextSide(TextSide):
    """A BERT encoder: rows are `[CLS] text [SEP]`, the pooled vector is the mean over real tokens (as
    sentence-transformers pools), `layer` indexes the hidden states (0 = embeddings, -1 = last layer)."""
    length: int = 48  # tokens per row; BERT's positions (512) are far more than captions need

    @property
    def max_length(self) -> int:
        return self.length

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    def _row(self, ids: list[int]) -> dict[str, np.ndarray]:
        if len(ids) > self.max_length:  # keep the closing [SEP], as the tokenizer's own truncation does
            ids = ids[: self.max_length - 1] + [self.tokenizer.sep_token_id]
        return super()._row(ids)

    def condition(self, params: Any, ids: jax.Array, attention_mask: jax.Array) -> dict:
        hidden = self.model.apply({"params": params}, ids, attention_mask, output_hidden_states=True)
        enc = encoding_from_hidden(hidden, attention_mask, layer=self.layer, pooling="mean", trainable=self.trainable)
        return {"context": enc.states, "context_mask": enc.mask.astype(bool), "pooled": enc.pooled}


def _record(workdir: str, encoder: str, model_config: Any, tokenizer) -> None:
    """Writes the encoder's description and (when given, unless already there) its tokenizer into the generator's
    workdir, so that the workdir alone is enough to generate."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    if tokenizer is not None and not os.path.isdir(os.path.join(workdir, "tokenizer")):
        tokenizer.save_pretrained(os.path.join(workdir, "tokenizer"))
    with open(os.path.join(workdir, TEXT_MODEL_FILE), "w") as f:
        json.dump({"encoder": encoder, **dataclasses.asdict(model_config)}, f, indent=2)


def _check_bert(config: BertConfig, text: ml_collections.ConfigDict) -> None:
    layers = config.num_hidden_layers
    if not -(layers + 1) <= int(text.layer) <= layers:
        raise UserError(f"text.layer={text.layer} is out of range for a BERT of {layers} layers; use -1 (last), "
                        f"0 (embeddings) or 1..{layers}")
    if not 2 <= int(text.max_length) <= config.max_position_embeddings:
        raise UserError(f"text.max_length={text.max_length} must be in 2..{config.max_position_embeddings} "
                        "(the BERT's positions)")


def _build_bert_side(config: ml_collections.ConfigDict, workdir: str) -> BertTextSide:
    from llmimg_jax.text.pretrained import minilm_dir

    text = config.text
    if text.lm_workdir or text.tokenizer_dir:
        raise UserError("text.lm_workdir and text.tokenizer_dir apply to text.encoder=gpt2; a BERT brings its own "
                        "weights and tokenizer from text.encoder_path")
    path = os.path.expanduser(text.encoder_path) if text.encoder_path else minilm_dir()
    bert_config = load_bert_config(path, dtype=config.train.compute_dtype)
    _check_bert(bert_config, text)
    tokenizer = load_bert_tokenizer(path)
    if len(tokenizer) > bert_config.vocab_size:
        raise UserError(f"the tokenizer in '{path}' has {len(tokenizer)} tokens but the model only "
                        f"{bert_config.vocab_size} embeddings; the directory's files do not match")
    _record(workdir, "bert", bert_config, tokenizer)
    return BertTextSide(tokenizer, Bert(bert_config), int(text.layer), "mean", bool(text.trainable),
                        lambda: load_bert_params(path, bert_config), length=int(text.max_length))


def build_text_side(config: ml_collections.ConfigDict, workdir: str, texts_fn: Callable[[], Iterable[str]]) -> TextSide:
    """The text side of a generator being trained in `workdir` (records it there for generation)."""
    text = config.text
    if text.encoder == "bert":
        return _build_bert_side(config, workdir)
    if text.encoder != "gpt2":
        raise UserError(f"text.encoder='{text.encoder}' is unknown; use text.encoder=gpt2 or text.encoder=bert")
    if int(text.max_length) < 2:
        raise UserError(f"text.max_length={text.max_length} must be at least 2 (a word and the end token)")
    pretrained = None
    if text.lm_workdir:
        tokenizer, model, pretrained = lm_from_workdir(text.lm_workdir, config.train.compute_dtype)
    else:
        tokenizer = ensure_tokenizer(text, workdir, texts_fn)
        model = GPT2(gpt2_config(text.preset, vocab_size=len(tokenizer), n_positions=int(text.max_length),
                                 dtype=config.train.compute_dtype))
    # A trained-here tokenizer is already in the workdir (ensure_tokenizer); one from an LM workdir is copied.
    _record(workdir, "gpt2", model.config, tokenizer if text.lm_workdir else None)
    return TextSide(tokenizer, model, int(text.layer), text.pooling, bool(text.trainable), pretrained,
                    int(text.max_length))


def load_text_side(config: ml_collections.ConfigDict, workdir: str) -> TextSide:
    """The text side recorded in a generator's workdir (its weights are in the workdir's checkpoint)."""
    path = os.path.join(workdir, TEXT_MODEL_FILE)
    if not os.path.isfile(path):
        raise UserError(f"'{workdir}' has no {TEXT_MODEL_FILE}; it is not a generator workdir (train one with "
                        "`llmimg train --config configs/shapes_diffusion.py`)")
    with open(path) as f:
        described = json.load(f)
    if described.pop("encoder", "gpt2") == "bert":
        bert_config = BertConfig(**described)
        _check_bert(bert_config, config.text)
        return BertTextSide(load_bert_tokenizer(os.path.join(workdir, "tokenizer")), Bert(bert_config),
                            int(config.text.layer), "mean", False, length=int(config.text.max_length))
    model = GPT2(GPT2Config(**described))
    tokenizer = load_tokenizer(config.text.tokenizer_dir or os.path.join(workdir, "tokenizer"))
    return TextSide(tokenizer, model, int(config.text.layer), config.text.pooling, False,
                    length=int(config.text.max_length))

