"""Byte-level BPE tokenizer: trained on the data's texts, or loaded from a local directory (never a hub)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Callable, Iterable, Sequence

import numpy as np
from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

from llmimg_jax.errors import UserError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"  # also bos
PAD = "<|pad|>"
SEP = "<|sep|>"  # between an instruction and its expansion


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE on `texts` and saves it to `out_dir` as a transformers tokenizer directory."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    # Special tokens first, so their ids are 0, 1, 2 whatever the vocabulary size.
    bpe.train_from_iterator(iter(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD, SEP],
                            show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                        pad_token=PAD, additional_special_tokens=[SEP])
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """Loads our saved format or a GPT-2 style directory (`tokenizer.json`, or `vocab.json` + `merges.txt`)."""
    if not os.path.isdir(path):
        raise UserError(f"tokenizer directory '{path}' does not exist; set text.tokenizer_dir to a local directory "
                        "with tokenizer.json or vocab.json + merges.txt (hub names are not fetched)")
    has = lambda name: os.path.isfile(os.path.join(path, name))  # noqa: E731
    if has("tokenizer.json"):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    elif has("vocab.json") and has("merges.txt"):
        tokenizer = GPT2TokenizerFast.from_pretrained(path, local_files_only=True)
    else:
        raise UserError(f"'{path}' holds no tokenizer: expected tokenizer.json or vocab.json + merges.txt")
    # Offline, transformers can return an empty tokenizer instead of failing; its added special tokens do not
    # count as a vocabulary.
    if tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False) == 0:
        raise UserError(f"the tokenizer in '{path}' has an empty vocabulary; check its vocab.json / tokenizer.json")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer in '{path}' has neither a pad nor an eos token; add one to its config")
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 convention; padded positions are masked anyway
    return tokenizer


def encode_batch(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and mask, both int32 [B, max_length], padded on the right, truncated to max_length."""
    ids = np.full((len(texts), max_length), tokenizer.pad_token_id, np.int32)
    mask = np.zeros((len(texts), max_length), np.int32)
    if not texts:
        return ids, mask
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    truncated = 0
    for row, tokens in enumerate(encoded):
        truncated += len(tokens) > max_length
        tokens = tokens[:max_length]
        ids[row, :len(tokens)] = tokens
        mask[row, :len(tokens)] = 1
    if truncated:
        log.warning("truncated %d of %d texts to max_length=%d tokens", truncated, len(texts), max_length)
    return ids, mask


def ensure_tokenizer(text_config, workdir: str, texts_fn: Callable[[], Iterable[str]]) -> PreTrainedTokenizerFast:
    """`text.tokenizer_dir` when set; else the one in `workdir/tokenizer`, trained there on `texts_fn()` if absent."""
    if text_config.tokenizer_dir:
        return load_tokenizer(os.path.expanduser(text_config.tokenizer_dir))
    out_dir = os.path.join(workdir, "tokenizer")
    if not os.path.isdir(out_dir):
        os.makedirs(workdir, exist_ok=True)
        # Train into a temporary directory and rename it, so a crash never leaves a half-written tokenizer.
        tmp = tempfile.mkdtemp(prefix="tokenizer.tmp-", dir=workdir)
        try:
            train_tokenizer(texts_fn(), text_config.vocab_size, tmp)
            os.rename(tmp, out_dir)
        except OSError:
            if not os.path.isdir(out_dir):  # not just another process finishing first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(out_dir)
