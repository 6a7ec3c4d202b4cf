"""The generators' text side: token rows end with the end token, and over-long prompts are truncated loudly."""

import jax
import numpy as np
import pytest

from llmimg_jax.data.tokenizer import train_tokenizer
from llmimg_jax.generator.text_side import TextSide
from llmimg_jax.text.gpt2 import GPT2, gpt2_config

TEXTS = ["a small red circle at the top left, on a white background", "a large blue square in the center"] * 30


def _side(tmp_path, positions: int, length: int | None = None) -> TextSide:
    tok = train_tokenizer(TEXTS, 300, str(tmp_path / "tok"))
    return TextSide(tok, GPT2(gpt2_config("tiny", vocab_size=len(tok), n_positions=positions)), -1, "last", False,
                    length=length)


def test_rows_end_with_the_end_token_and_pad(tmp_path):
    side = _side(tmp_path, 32)
    batch = side.tokenize(["a red circle", "a large blue square in the center"])
    for ids, mask in zip(batch["ids"], batch["attention_mask"]):
        n = int(mask.sum())
        assert ids[n - 1] == side.tokenizer.eos_token_id
        assert (ids[n:] == side.tokenizer.pad_token_id).all() and mask[:n].all()


def test_long_prompts_are_truncated_with_a_warning(tmp_path):
    side = _side(tmp_path, 8)
    with pytest.warns(UserWarning, match="1 of 2 prompts are longer than the text encoder's 8 tokens"):
        batch = side.tokenize(["a red circle", TEXTS[0]])
    assert batch["ids"].shape == (2, 8) and batch["attention_mask"][1].all()
    # the encoder runs on the truncated rows
    params = side.init(jax.random.key(0))
    cond = side.condition(params, batch["ids"], batch["attention_mask"])
    assert cond["context"].shape == (2, 8, side.model.config.n_embd)


def test_rows_are_text_max_length_within_the_lm_context(tmp_path):
    # An expander's context (instruction + description) is longer than the descriptions a generator reads: its rows
    # are text.max_length, and the states of a text that fits are the same as in full-context rows.
    full = _side(tmp_path, 32)
    texts = ["a red circle", "a large blue square"]
    length = max(int(m.sum()) for m in full.tokenize(texts)["attention_mask"]) + 1
    short = _side(tmp_path, 32, length=length)
    assert _side(tmp_path, 32, length=64).max_length == 32
    with pytest.warns(UserWarning, match=f"longer than the text encoder's {length} tokens"):
        short.tokenize([TEXTS[0]])
    rows, full_rows = short.tokenize(texts), full.tokenize(texts)
    assert rows["ids"].shape == (2, length) < full_rows["ids"].shape
    params = full.init(jax.random.key(0))
    a = short.condition(params, rows["ids"], rows["attention_mask"])
    b = full.condition(params, full_rows["ids"], full_rows["attention_mask"])
    np.testing.assert_allclose(a["pooled"], b["pooled"], atol=1e-5)
    np.testing.assert_allclose(a["context"], b["context"][:, :length], atol=1e-5)
