"""The language-model task: GPT-2 trained as a prompt expander (instruction -> description) on captioned data.

Each example that carries instructions (the Shapes world) becomes `instruction <|sep|> description <|endoftext|>`
with one of its instructions drawn per epoch; an example with a caption only trains a caption language model.
The loss is next-token cross-entropy on the description tokens.

`lm.instruction_encoder="bert"`: the instruction is read by a frozen pretrained BERT instead (see bert_prefix.py);
GPT-2 reads `[BERT prefix] <|sep|> description <|endoftext|>`, and its n_positions grows by text.max_length (the
prefix slots) so lm.max_length stays the room for the tokens.
"""

from __future__ import annotations

import functools
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
from llmimg_jax.errors import UserError
from llmimg_jax.text.bert_prefix import InstructionReader, build_reader, insert_random_words, uses_bert
from llmimg_jax.text.gpt2 import GPT2, gpt2_config
from llmimg_jax.text.edit_format import edit_texts, edit_triple, with_edits
from llmimg_jax.text.prompt_format import training_example
from llmimg_jax.training.task import Phase, Task

TOKENIZER_CORPUS_EXAMPLES = 5000  # enough to see every word of a templated caption set


def default_lm_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        preset="tiny",     # GPT-2 preset (tiny, gpt2, gpt2-medium, gpt2-large, gpt2-xl)
        n_layer=0,         # 0: the preset's; otherwise overrides it
        n_embd=0,
        n_head=0,
        max_length=96,     # tokens per sequence (instruction + description); n_positions (+ text.max_length: bert)
        dropout=0.0,
        edit_fraction=0.0,  # share of Shapes examples turned into edit triples (description; edit -> new description)
        instruction_encoder="gpt2",  # 'gpt2': GPT-2 reads the instruction's tokens | 'bert': a frozen BERT prefix
        adapter_layers=1,   # bert: transformer blocks in the adapter after LayerNorm + Linear (0: none)
        state_noise=0.0,    # bert: training noise on BERT's states, as a fraction of their RMS (see bert_prefix.py)
        word_insertion=0.0,  # bert: share of training instructions given 1-3 random extra words
        bert_lr=0.0,        # bert: 0 = BERT frozen; > 0 = BERT fine-tuned end to end at this learning rate
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
    positions = int(lm.max_length) + (int(config.text.max_length) if uses_bert(config) else 0)
    return GPT2(gpt2_config(lm.preset, vocab_size=vocab_size, n_positions=positions, dropout=lm.dropout,
                            dtype=config.train.compute_dtype, scan_layers=lm.scan_layers, remat=lm.remat,
                            **overrides))


def corpus(source, limit: int = TOKENIZER_CORPUS_EXAMPLES):
    """Texts the tokenizer is trained on: captions and instructions of the first `limit` examples."""
    for i in range(min(limit, len(source))):
        example = source[i]
        yield example["text"]
        yield from example.get("instructions") or ()


def _draw_instruction(example: dict, rng: np.random.Generator) -> str | None:
    instructions = example.get("instructions") or []
    return instructions[rng.integers(len(instructions))] if len(instructions) else None


def lm_preprocess(tokenizer, max_length: int):
    def preprocess(example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return training_example(tokenizer, _draw_instruction(example, rng), example["text"], max_length)
    return preprocess


def bert_preprocess(tokenizer, reader: InstructionReader, max_length: int, edit_fraction: float = 0.0,
                    word_insertion: float = 0.0):
    """GPT-2's `<|sep|> target <|endoftext|>` row and the instruction's BERT row; an `edit_fraction` of the Shapes
    examples become edit triples, drawn as `with_edits` draws them. A caption-only example reads an empty one.
    A `word_insertion` share of the instructions get random extra words (`insert_random_words`)."""
    words = reader.words() if word_insertion > 0 else []

    def preprocess(example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        pair = edit_triple(example, rng) if edit_fraction > 0 and rng.random() < edit_fraction else None
        prompt, target = pair or (_draw_instruction(example, rng), example["text"])
        if prompt and pair is None and word_insertion > 0 and rng.random() < word_insertion:
            prompt = insert_random_words(prompt, words, rng)
        return {**training_example(tokenizer, "", target, max_length), **reader.row(prompt or "")}
    return preprocess


def next_token_loss(logits: jax.Array, ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy of predicting ids[t] from position t - 1, over tokens with loss_mask[t] = 1."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), ids[:, 1:])
    weights = loss_mask[:, 1:]
    count = jnp.sum(weights)
    return jnp.sum(ce * weights) / jnp.maximum(count, 1.0), count


def make_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    bert_lr = float(config.lm.get("bert_lr", 0.0))
    if bert_lr < 0:
        raise UserError(f"lm.bert_lr={bert_lr} must be 0 (BERT frozen) or a positive learning rate")
    source = make_source(config.data, config.data.train_split)
    edit_fraction = float(config.lm.edit_fraction)
    tokenizer = ensure_tokenizer(config.text, workdir, lambda: itertools.chain(
        corpus(source), edit_texts(source, TOKENIZER_CORPUS_EXAMPLES) if edit_fraction > 0 else ()))
    model = build_lm(config, len(tokenizer))
    max_length = int(config.lm.max_length)
    reader, bert_weights = build_reader(config, workdir, model.config) if uses_bert(config) else (None, None)
    if reader is None:
        preprocess = with_edits(lm_preprocess(tokenizer, max_length), tokenizer, max_length, edit_fraction)
    else:
        preprocess = bert_preprocess(tokenizer, reader, max_length, edit_fraction, float(config.lm.word_insertion))
    pipeline = Pipeline(source, global_batch_size=int(config.train.batch_size), seed=config.seed,
                        preprocess=preprocess, shuffle=config.data.shuffle,
                        prefetch=config.data.prefetch)
    deterministic = config.lm.dropout == 0.0

    def init(rng):
        ids = jnp.zeros((1, max_length), jnp.int32)
        if reader is None:
            return {"lm": model.init(rng, ids)["params"]}
        k_lm, k_reader = jax.random.split(rng)
        return {"lm": model.init(k_lm, ids)["params"], **reader.init(k_reader)}

    def loss_fn(params, batch, rng, step):
        if reader is None:
            logits = model.apply({"params": params["lm"]}, batch["ids"], batch["attention_mask"],
                                 deterministic=deterministic, rngs={"dropout": rng})
        else:
            k_adapter, k_lm = jax.random.split(rng)
            prefix, prefix_mask = reader.prefix(params, batch["bert_ids"], batch["bert_mask"],
                                                deterministic=deterministic, rng=k_adapter,
                                                state_noise=float(config.lm.state_noise))
            logits = model.apply({"params": params["lm"]}, batch["ids"], batch["attention_mask"],
                                 deterministic=deterministic, rngs={"dropout": k_lm}, prefix_embeds=prefix,
                                 prefix_mask=prefix_mask)
        loss, count = next_token_loss(logits, batch["ids"], batch["loss_mask"])
        return loss, {"target_tokens": count}

    @functools.cache
    def edit_scenes() -> list:
        """The validation scenes the edit accuracy draws its edits from: the same at every evaluation, read once."""
        from llmimg_jax.evaluation.captioning import validation_examples

        eval_source = make_source(config.data, config.data.eval_split)
        return validation_examples(config.data, min(int(config.expand.eval_num), len(eval_source)))[1]

    def evaluate(state, step: int) -> None:
        from llmimg_jax.evaluation.expansion import edit_expansion_accuracy, expansion_accuracy
        from llmimg_jax.text.expander import make_expander

        if config.data.source != "shapes" or jax.process_index() != 0:
            return
        expander = make_expander(model, state["params"], tokenizer, config.expand, reader, validate=True)
        result = expansion_accuracy(expander, int(config.expand.eval_num), seed=config.seed)
        line = (f"step {step}: expansion accuracy {result['overall']:.3f} (valid {result['valid']:.3f}) on "
                f"{result['num']} validation instructions")
        if edit_fraction > 0:
            result["edits"] = edit_expansion_accuracy(expander, edit_scenes(), seed=config.seed)
            line += f"; edits applied exactly {result['edits']['overall']:.3f} of {result['edits']['num']}"
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", f"expansion_{step:06d}.json"), "w") as f:
            json.dump(result, f, indent=2)
        print(line, flush=True)

    def sample(state, step: int) -> None:
        from llmimg_jax.text.expander import make_expander

        if jax.process_index() != 0:
            return
        prompts = sample_prompts(config, 8)
        expander = make_expander(model, state["params"], tokenizer, config.expand, reader, validate=False)
        lines = [f"{p}\n  -> {e}" for p, e in zip(prompts, expander.expand(prompts, seed=step))]
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        with open(os.path.join(workdir, "samples", f"expansions_{step:06d}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")

    # Frozen BERT (lm.bert_lr = 0) is a group no phase trains, so it has no optimizer state; fine-tuned, it is
    # trained at its own learning rate. Its text side made that decision (it stops BERT's gradients when frozen),
    # so the groups follow the side.
    groups, overrides = ("lm",) if reader is None else ("lm", "adapter"), {}
    if reader is not None and reader.side.trainable:
        groups, overrides = groups + ("bert",), {"bert": {"lr": bert_lr}}
    return Task(init=init, phases=(Phase(groups, loss_fn),), batches=pipeline.global_batches,
                optimizer_overrides=overrides,
                ema_groups=groups, data_state=pipeline.state, evaluate=evaluate, sample=sample,
                pretrained=(lambda: {"bert": bert_weights()}) if reader is not None else None)


def sample_prompts(config: ml_collections.ConfigDict, num: int) -> list[str]:
    """Instructions shown in sample files: Shapes evaluation instructions, else validation captions."""
    if config.data.source == "shapes":
        from llmimg_jax.evaluation.alignment import make_eval_set

        return [p for _, p in make_eval_set(num, config.seed)]
    return validation_texts(config.data, num)
