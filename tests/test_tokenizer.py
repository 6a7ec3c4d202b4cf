"""Byte-level BPE: train, save, load, encode; GPT-2 style directories; errors for what cannot be a tokenizer."""

import json
import logging

import ml_collections
import numpy as np
import pytest
from tokenizers import pre_tokenizers

from llmimg_jax.data.tokenizer import EOS, PAD, SEP, encode_batch, ensure_tokenizer, load_tokenizer, train_tokenizer
from llmimg_jax.errors import UserError

COLORS = ["red", "green", "blue", "yellow", "purple"]
SHAPES = ["circle", "square", "triangle", "star"]
PLACES = ["top left", "center", "bottom right", "left edge"]


def texts(n=300):
    rng = np.random.default_rng(0)
    return [f"a {rng.choice(['small', 'large'])} {rng.choice(COLORS)} {rng.choice(SHAPES)} at the "
            f"{rng.choice(PLACES)}, {int(rng.integers(1, 9))} of them" for _ in range(n)]


def test_train_save_load_round_trip(tmp_path):
    trained = train_tokenizer(texts(), vocab_size=400, out_dir=str(tmp_path))
    loaded = load_tokenizer(str(tmp_path))
    assert 256 < len(loaded) <= 400  # the 256 byte symbols, specials and merges
    assert loaded.eos_token == loaded.bos_token == EOS and loaded.pad_token == PAD
    assert SEP in loaded.get_vocab() and SEP in loaded.all_special_tokens
    assert len({loaded.eos_token_id, loaded.pad_token_id, loaded.convert_tokens_to_ids(SEP)}) == 3
    samples = texts(20) + ["Ünïcode ✓ and a brand-new word: zebra!", "a red circle <|sep|> a small red circle"]
    for text in samples:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == trained(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text
    # The separator is one token, never split into bytes; frequent words became single tokens.
    sep_ids = loaded("x <|sep|> y", add_special_tokens=False)["input_ids"]
    assert sep_ids.count(loaded.convert_tokens_to_ids(SEP)) == 1
    assert len(loaded(" triangle", add_special_tokens=False)["input_ids"]) == 1


def test_encode_batch_pads_right_and_truncates(tmp_path, caplog):
    tokenizer = train_tokenizer(texts(), vocab_size=400, out_dir=str(tmp_path))
    batch = ["a red circle", "a large purple triangle at the bottom right, 3 of them and more words", ""]
    with caplog.at_level(logging.WARNING):
        ids, mask = encode_batch(tokenizer, batch, max_length=6)
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == mask.shape == (3, 6)
    for row, text in enumerate(batch):
        want = tokenizer.encode(text, add_special_tokens=False)[:6]
        np.testing.assert_array_equal(ids[row, :len(want)], want)
        np.testing.assert_array_equal(ids[row, len(want):], tokenizer.pad_token_id)
        np.testing.assert_array_equal(mask[row], [1] * len(want) + [0] * (6 - len(want)))
    assert [r.getMessage() for r in caplog.records] == ["truncated 1 of 3 texts to max_length=6 tokens"]


def write_gpt2_dir(path, merges):
    """A tiny GPT-2 style directory: byte alphabet, a few merges, <|endoftext|>."""
    vocab = {EOS: 0}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    path.mkdir(exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    return vocab


def test_load_gpt2_style_directory(tmp_path):
    merges = ["r e", "Ġ re", "re d", "Ġre d"]  # by rank: " red" -> Ġ re d -> Ġre d -> Ġred
    vocab = write_gpt2_dir(tmp_path, merges)
    tokenizer = load_tokenizer(str(tmp_path))
    assert len(tokenizer) == len(vocab) == 256 + 1 + len(merges)
    assert tokenizer.pad_token == tokenizer.eos_token == EOS  # GPT-2 has no pad: pad = eos
    ids = tokenizer("red red", add_special_tokens=False)["input_ids"]
    assert ids == [vocab["red"], vocab["Ġred"]]
    assert tokenizer.decode(ids) == "red red"


def test_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(str(tmp_path / "gpt2"))  # a hub name is not a local directory
    with pytest.raises(UserError, match="holds no tokenizer"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(UserError, match="empty vocabulary"):
        load_tokenizer(str(tmp_path))


def test_ensure_tokenizer_trains_once_then_reuses(tmp_path):
    config = ml_collections.ConfigDict(dict(tokenizer_dir="", vocab_size=300))
    first = ensure_tokenizer(config, str(tmp_path), lambda: texts())

    def must_not_train():
        raise AssertionError("the tokenizer was trained again")

    again = ensure_tokenizer(config, str(tmp_path), must_not_train)
    assert again.get_vocab() == first.get_vocab()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]  # no temporary directory left behind
    write_gpt2_dir(tmp_path / "gpt2", ["r e"])
    config.tokenizer_dir = str(tmp_path / "gpt2")
    assert len(ensure_tokenizer(config, str(tmp_path), must_not_train)) == 258
