"""The one token layout the language model is trained and sampled with.

    prompt <|sep|> target <|endoftext|>      (prompt expander: instruction -> description)
    target <|endoftext|>                     (plain caption language model: no prompt)

The loss covers the target and its end token only. A tokenizer without `<|sep|>` (e.g. GPT-2's own) separates
with the text " =>" instead.
"""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerBase

from llmimg_jax.data.tokenizer import SEP

TEXT_SEPARATOR = " =>"


def separator_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    if SEP in tokenizer.get_vocab():
        return [tokenizer.convert_tokens_to_ids(SEP)]
    return tokenizer.encode(TEXT_SEPARATOR, add_special_tokens=False)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | None) -> list[int]:
    """Tokens the model is conditioned on: `prompt <|sep|>`, or just the start token without a prompt."""
    if prompt is None:
        return [tokenizer.eos_token_id]
    return tokenizer.encode(prompt, add_special_tokens=False) + separator_ids(tokenizer)


def training_example(tokenizer: PreTrainedTokenizerBase, prompt: str | None, target: str,
                     max_length: int) -> dict[str, np.ndarray]:
    """ids, attention mask and loss mask [max_length] for one (prompt, target) pair, right-padded.

    loss_mask[t] = 1 where ids[t] is a target token (predicted from position t - 1)."""
    head = prompt_ids(tokenizer, prompt)
    tail = tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = (head + tail)[:max_length]
    loss = ([0] * len(head) + [1] * len(tail))[:max_length]
    pad = max_length - len(ids)
    return {
        "ids": np.asarray(ids + [tokenizer.pad_token_id] * pad, np.int32),
        "attention_mask": np.asarray([1] * len(ids) + [0] * pad, np.int32),
        "loss_mask": np.asarray(loss + [0] * pad, np.float32),
    }
