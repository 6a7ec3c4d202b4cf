"""The captioner task: image encoder + GPT-2 trained with the causal LM loss on (image, description) pairs.

Each example becomes `[image prefix] <|endoftext|> description <|endoftext|>`; the loss covers the description
and its end token. The LM starts from (first match):
  text.lm_workdir       a prompt-expander run (`configs/shapes_lm.py`): its tokenizer and trained weights
  captioner.hf_dir      a local Hugging Face GPT-2 directory (config.json, model.safetensors, tokenizer files)
  neither               a fresh GPT-2 of the `lm` section with a tokenizer trained on the captions
`captioner.freeze_lm` trains the encoder only. The LM's config is recorded in WORKDIR/captioner_lm.json and the
tokenizer in WORKDIR/tokenizer, so the workdir alone is enough to describe images (`load_captioner`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmimg_jax.data.pipeline import Pipeline
from llmimg_jax.data.sources import make_source
from llmimg_jax.data.tokenizer import ensure_tokenizer, load_tokenizer
from llmimg_jax.errors import UserError
from llmimg_jax.text.captioner import Captioner, encoder_from_config
from llmimg_jax.text.gpt2 import GPT2, GPT2Config
from llmimg_jax.text.lm_task import build_lm, corpus, next_token_loss
from llmimg_jax.text.prompt_format import training_example
from llmimg_jax.training.task import Phase, Task

LM_FILE = "captioner_lm.json"


def default_captioner_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        num_prefix=16,            # prefix embeddings per image: a 4x4 grid of regions
        channels=(32, 32, 64, 64),  # conv stages of the image encoder: output widths ...
        strides=(1, 2, 2, 2),     # ... and strides (32x32 -> 4x4)
        hidden=512,               # width of the encoder's per-region MLP
        freeze_lm=False,          # True: train the image encoder only
        hf_dir="",                # local Hugging Face GPT-2 directory to start the LM from
        eval_num=500,             # validation images scored by the evaluate hook
    ))


def _lm_and_tokenizer(config: ml_collections.ConfigDict, workdir: str, source
                      ) -> tuple[Any, GPT2, Callable[[], Any] | None]:
    """(tokenizer, LM, pretrained-params loader or None) by the rule in the module docstring."""
    dtype = config.train.compute_dtype
    if config.text.lm_workdir:
        from llmimg_jax.generator.text_side import lm_from_workdir

        return lm_from_workdir(config.text.lm_workdir, dtype)
    if config.captioner.hf_dir:
        from llmimg_jax.text.hf_gpt2 import load_hf_gpt2

        hf_dir = os.path.expanduser(config.captioner.hf_dir)
        model, params = load_hf_gpt2(hf_dir, dtype=dtype)
        tokenizer = load_tokenizer(config.text.tokenizer_dir or hf_dir)
        if len(tokenizer) > model.config.vocab_size:
            raise UserError(f"the tokenizer in '{hf_dir}' has {len(tokenizer)} tokens but the model's vocabulary "
                            f"is {model.config.vocab_size}; use the tokenizer that came with the model")
        return tokenizer, model, lambda: jax.device_get(params)
    tokenizer = ensure_tokenizer(config.text, workdir, lambda: corpus(source))
    return tokenizer, build_lm(config, len(tokenizer)), None


def _check_lengths(captioner: Captioner) -> None:
    if captioner.max_tokens < 8:
        raise UserError(f"the LM's {captioner.lm.config.n_positions} positions leave {captioner.max_tokens} tokens "
                        f"after {captioner.encoder.num_prefix} prefix embeddings; raise lm.max_length or lower "
                        "captioner.num_prefix")


def make_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    source = make_source(config.data, config.data.train_split)
    tokenizer, lm, pretrained = _lm_and_tokenizer(config, workdir, source)
    encoder = encoder_from_config(config.captioner, lm.config.n_embd, config.train.compute_dtype)
    captioner = Captioner(encoder, lm, tokenizer)
    _check_lengths(captioner)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        if not os.path.isdir(os.path.join(workdir, "tokenizer")):
            tokenizer.save_pretrained(os.path.join(workdir, "tokenizer"))
        with open(os.path.join(workdir, LM_FILE), "w") as f:
            json.dump(dataclasses.asdict(lm.config), f, indent=2)
    max_tokens, size = captioner.max_tokens, int(config.data.image_size)

    def preprocess(example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        del rng
        row = training_example(tokenizer, None, example["text"], max_tokens)
        row["image"] = np.asarray(example["image"], np.float32) / 127.5 - 1.0
        return row

    pipeline = Pipeline(source, global_batch_size=int(config.train.batch_size), seed=config.seed,
                        preprocess=preprocess, shuffle=config.data.shuffle, prefetch=config.data.prefetch)

    def init(rng):
        k_enc, k_lm = jax.random.split(rng)
        return {"encoder": encoder.init(k_enc, jnp.zeros((1, size, size, 3), jnp.float32))["params"],
                "lm": lm.init(k_lm, jnp.zeros((1, max_tokens), jnp.int32))["params"]}

    def loss_fn(params, batch, rng, step):
        logits = captioner.logits(params, batch["image"], batch["ids"], batch["attention_mask"],
                                  deterministic=float(lm.config.dropout) == 0.0, rng=rng)
        loss, count = next_token_loss(logits, batch["ids"], batch["loss_mask"])
        return loss, {"target_tokens": count}

    def evaluate(state, step: int) -> None:
        from llmimg_jax.evaluation.captioning import captioning_accuracy

        if config.data.source != "shapes" or jax.process_index() != 0:
            return
        params = jax.device_get(state["params"])
        result = captioning_accuracy(dataclasses.replace(captioner, params=params), config.data,
                                     int(config.captioner.eval_num))
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", f"captioning_{step:06d}.json"), "w") as f:
            json.dump(result, f, indent=2)
        attrs = ", ".join(f"{k} {v:.3f}" for k, v in result["per_attribute"].items())
        print(f"step {step}: captioning exact match {result['exact']:.3f} on {result['num']} validation images "
              f"({attrs})", flush=True)

    groups = ("encoder",) if config.captioner.freeze_lm else ("encoder", "lm")
    return Task(init=init, phases=(Phase(groups, loss_fn),), batches=pipeline.global_batches, ema_groups=groups,
                data_state=pipeline.state, evaluate=evaluate,
                pretrained=(lambda: {"lm": pretrained()}) if pretrained else None)


def load_captioner(workdir: str, *, use_ema: bool = False) -> Captioner:
    """The trained captioner of a workdir (`llmimg train --config configs/shapes_captioner.py`)."""
    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.training.checkpoint import load_params

    config = load_workdir_config(workdir)
    if config.task != "captioner":
        raise UserError(f"'{workdir}' is not a captioner run (it holds a '{config.task}' run); pass the "
                        "workdir of an `llmimg train --config configs/shapes_captioner.py` run")
    lm_path = os.path.join(workdir, LM_FILE)
    if not os.path.isfile(lm_path):
        raise UserError(f"'{workdir}' has no {LM_FILE}; its training never started, train it first")
    with open(lm_path) as f:
        lm = GPT2(GPT2Config(**json.load(f)))
    tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer"))
    encoder = encoder_from_config(config.captioner, lm.config.n_embd, lm.config.dtype)
    captioner = Captioner(encoder, lm, tokenizer)
    size = int(config.data.image_size)
    abstract = jax.eval_shape(lambda: {
        "encoder": encoder.init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))["params"],
        "lm": lm.init(jax.random.key(0), jnp.zeros((1, captioner.max_tokens), jnp.int32))["params"]})
    restored = load_params(workdir, abstract)
    params = restored["params"]
    if use_ema:
        params = {**params, **restored["ema"]}
    captioner.params = jax.device_get(params)
    return captioner


def image_size(workdir: str) -> int:
    """S of the images a captioner workdir was trained on."""
    from llmimg_jax.config import load_workdir_config

    return int(load_workdir_config(workdir).data.image_size)
