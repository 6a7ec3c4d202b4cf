"""The language-model task: GPT-2 trained as a prompt expander (instruction -> description) on captioned data.

Each example that carries instructions (the Shapes world) becomes `instruction <|sep|> description <|endoftext|>`
with one of its instructions drawn per epoch; an example with a caption only trains a caption language model.
The loss is next-token cross-entropy on the description tokens.
"""

from __future__ import annotations

import itertools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from llmimg_jax.data.pipeline import Pipeline
from llmimg_jax.data.sources import make_source, validation_texts
from llmimg_jax.data.tokenizer import ensure_tokenizer
from llmimg_jax.text.gpt2 import GPT2, gpt2_config
from llmimg_jax.text.edit_format import edit_texts, with_edits
from llmimg_jax.text.prompt_format import training_example
from llmimg_jax.training.task import Phase, Task

TOKENIZER_CORPUS_EXAMPLES = 5000  # enough to see every word of a templated caption set


def default_lm_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        preset="tiny",     # GPT-2 preset (tiny, gpt2, gpt2-medium, gpt2-large, gpt2-xl)
        n_layer=0,         # 0: the preset's; otherwise overrides it
        n_embd=0,
        n_head=0,
        max_length=96,     # tokens per training sequence (instruction + description); also n_positions
        dropout=0.0,
        edit_fraction=0.0,  # share of Shapes examples turned into edit triples (description; edit -> new description)
        scan_layers=False,
        remat=False,
    ))


def default_expand_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        max_new_tokens=64,
        retries=4,          # resampled attempts after an invalid greedy expansion
        temperature=0.7,
        top_k=0,
        top_p=0.95,
        eval_num=200,       # validation instructions scored by the evaluate hook
        use_ema=False,      # expand with the EMA params instead of the trained ones
    ))


def build_lm(config: ml_collections.ConfigDict, vocab_size: int) -> GPT2:
    lm = config.lm
    overrides = {k: int(lm[k]) for k in ("n_layer", "n_embd", "n_head") if int(lm[k]) > 0}
    return GPT2(gpt2_config(lm.preset, vocab_size=vocab_size, n_positions=int(lm.max_length), dropout=lm.dropout,
                            dtype=config.train.compute_dtype, scan_layers=lm.scan_layers, remat=lm.remat,
                            **overrides))


def corpus(source, limit: int = TOKENIZER_CORPUS_EXAMPLES):
    """Texts the tokenizer is trained on: captions and instructions of the first `limit` examples."""
    for i in range(min(limit, len(source))):
        example = source[i]
        yield example["text"]
        yield from example.get("instructions") or ()


def lm_preprocess(tokenizer, max_length: int):
    def preprocess(example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        instructions = example.get("instructions") or []
        prompt = instructions[rng.integers(len(instructions))] if len(instructions) else None
        return training_example(tokenizer, prompt, example["text"], max_length)
    return preprocess


def next_token_loss(logits: jax.Array, ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy of predicting ids[t] from position t - 1, over tokens with loss_mask[t] = 1."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), ids[:, 1:])
    weights = loss_mask[:, 1:]
    count = jnp.sum(weights)
    return jnp.sum(ce * weights) / jnp.maximum(count, 1.0), count


def make_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    source = make_source(config.data, config.data.train_split)
    edit_fraction = float(config.lm.edit_fraction)
    tokenizer = ensure_tokenizer(config.text, workdir, lambda: itertools.chain(
        corpus(source), edit_texts(source, TOKENIZER_CORPUS_EXAMPLES) if edit_fraction > 0 else ()))
    model = build_lm(config, len(tokenizer))
    max_length = int(config.lm.max_length)
    preprocess = with_edits(lm_preprocess(tokenizer, max_length), tokenizer, max_length, edit_fraction)
    pipeline = Pipeline(source, global_batch_size=int(config.train.batch_size), seed=config.seed,
                        preprocess=preprocess, shuffle=config.data.shuffle,
                        prefetch=config.data.prefetch)

    def init(rng):
        return {"lm": model.init(rng, jnp.zeros((1, max_length), jnp.int32))["params"]}

    def loss_fn(params, batch, rng, step):
        logits = model.apply({"params": params["lm"]}, batch["ids"], batch["attention_mask"],
                             deterministic=config.lm.dropout == 0.0, rngs={"dropout": rng})
        loss, count = next_token_loss(logits, batch["ids"], batch["loss_mask"])
        return loss, {"target_tokens": count}

    def evaluate(state, step: int) -> None:
        from llmimg_jax.evaluation.expansion import expansion_accuracy
        from llmimg_jax.text.expander import Expander

        if config.data.source != "shapes" or jax.process_index() != 0:
            return
        expander = Expander(model, state["params"]["lm"], tokenizer, config.expand, validate=True)
        result = expansion_accuracy(expander, int(config.expand.eval_num), seed=config.seed)
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", f"expansion_{step:06d}.json"), "w") as f:
            json.dump(result, f, indent=2)
        print(f"step {step}: expansion accuracy {result['overall']:.3f} "
              f"(valid {result['valid']:.3f}) on {result['num']} validation instructions", flush=True)

    def sample(state, step: int) -> None:
        from llmimg_jax.text.expander import Expander

        if jax.process_index() != 0:
            return
        prompts = sample_prompts(config, 8)
        expander = Expander(model, state["params"]["lm"], tokenizer, config.expand, validate=False)
        lines = [f"{p}\n  -> {e}" for p, e in zip(prompts, expander.expand(prompts, seed=step))]
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        with open(os.path.join(workdir, "samples", f"expansions_{step:06d}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")

    return Task(init=init, phases=(Phase(("lm",), loss_fn),), batches=pipeline.global_batches,
                ema_groups=("lm",), data_state=pipeline.state, evaluate=evaluate, sample=sample)


def sample_prompts(config: ml_collections.ConfigDict, num: int) -> list[str]:
    """Instructions shown in sample files: Shapes evaluation instructions, else validation captions."""
    if config.data.source == "shapes":
        from llmimg_jax.evaluation.alignment import make_eval_set

        return [p for _, p in make_eval_set(num, config.seed)]
    return validation_texts(config.data, num)
