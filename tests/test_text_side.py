"""The generators' text side: token rows end with the end token, and over-long prompts are truncated loudly."""

import jax
import pytest

from llmimg_jax.data.tokenizer import train_tokenizer
from llmimg_jax.generator.text_side import TextSide
from llmimg_jax.text.gpt2 import GPT2, gpt2_config

TEXTS = ["a small red circle at the top left, on a white background", "a large blue square in the center"] * 30


def _side(tmp_path, positions: int) -> TextSide:
    tok = train_tokenizer(TEXTS, 300, str(tmp_path / "tok"))
    return TextSide(tok, GPT2(gpt2_config("tiny", vocab_size=len(tok), n_positions=positions)), -1, "last", False)


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
