"""Text encoder API: layer selection, masking, pooling, and gradients (trainable vs frozen)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.errors import UserError
from llmimg_jax.text.config import default_text_config
from llmimg_jax.text.encoder import TextEncoder, encode, text_encoder_from_config
from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params

VOCAB = 60


@pytest.fixture(scope="module")
def tiny():
    model = GPT2(gpt2_config("tiny", vocab_size=VOCAB))
    return model, init_params(model, jax.random.key(0))


def _batch():
    ids = np.random.default_rng(0).integers(1, VOCAB, (3, 8))
    lengths = np.array([8, 5, 2])
    mask = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)  # right padding, as a tokenizer pads
    return jnp.asarray(np.where(mask > 0, ids, 0)), jnp.asarray(mask), lengths


@pytest.mark.parametrize("layer", [-1, 0, 1, 2])
def test_states_mask_and_pooling(tiny, layer):
    model, params = tiny
    ids, mask, lengths = _batch()
    _, hidden = model.apply({"params": params}, ids, mask, output_hidden_states=True)
    hidden = np.asarray(hidden, np.float64)
    for pooling in ("last", "mean"):
        enc = encode(model, params, ids, mask, layer=layer, pooling=pooling)
        assert enc.states.shape == (3, 8, 64) and enc.pooled.shape == (3, 64)
        np.testing.assert_array_equal(enc.mask, mask)
        for row, n in enumerate(lengths):
            np.testing.assert_allclose(enc.states[row, :n], hidden[layer, row, :n], atol=1e-6)
            assert not np.asarray(enc.states[row, n:]).any()  # padding zeroed
            ref = hidden[layer, row, n - 1] if pooling == "last" else hidden[layer, row, :n].mean(0)
            np.testing.assert_allclose(enc.pooled[row], ref, atol=1e-5)


def test_layer_minus_one_is_after_ln_f_and_padding_side_is_irrelevant(tiny):
    model, params = tiny
    ids, mask, lengths = _batch()
    enc = encode(model, params, ids, mask)
    row = 1  # re-encode one prompt alone and left-padded: the same states and pooled vector
    alone = encode(model, params, ids[row:row + 1, :lengths[row]], mask[row:row + 1, :lengths[row]])
    np.testing.assert_allclose(enc.pooled[row], alone.pooled[0], atol=1e-5)
    left_ids = jnp.roll(ids[row:row + 1], 8 - lengths[row], axis=1)
    left = encode(model, params, left_ids, jnp.roll(mask[row:row + 1], 8 - lengths[row], axis=1))
    np.testing.assert_allclose(left.pooled[0], alone.pooled[0], atol=1e-5)
    # after ln_f (fresh init: unit scale, zero bias): every real token's state has zero mean over the width
    real = np.asarray(enc.states)[np.asarray(mask) > 0]
    np.testing.assert_allclose(real.mean(-1), 0, atol=1e-5)
    assert real.std(-1).min() > 0.9


class _Generator(nn.Module):
    """A stand-in generator: text encoder + a head reading the pooled vector and the token states."""
    config: object
    trainable: bool

    @nn.compact
    def __call__(self, ids, mask):
        enc = TextEncoder(self.config, trainable=self.trainable, name="text_encoder")(ids, mask)
        tokens = nn.Dense(4, name="token_head")(enc.states).sum((1, 2))
        return nn.Dense(4, name="head")(enc.pooled) + tokens[:, None]


@pytest.mark.parametrize("trainable", [True, False])
def test_gradients_reach_lm_only_when_trainable(tiny, trainable):
    model, lm_params = tiny
    ids, mask, _ = _batch()
    gen = _Generator(model.config, trainable)
    params = nn.meta.unbox(gen.init(jax.random.key(1), ids, mask)["params"])
    params["text_encoder"]["lm"] = lm_params  # e.g. an imported, pretrained GPT-2

    def loss(p):
        return jnp.mean((gen.apply({"params": p}, ids, mask) - 1.0) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    lm_grads = jax.tree.leaves(grads["text_encoder"]["lm"])
    assert len(lm_grads) == len(jax.tree.leaves(lm_params))
    if trainable:
        assert all(float(jnp.abs(g).max()) > 0 for g in lm_grads)
    else:
        assert all(not np.asarray(g).any() for g in lm_grads)  # exactly zero
    assert float(jnp.abs(grads["head"]["kernel"]).max()) > 0


def test_from_config_and_errors(tiny):
    text = default_text_config()
    enc = text_encoder_from_config(text, vocab_size=VOCAB)
    assert enc.config == gpt2_config("tiny", vocab_size=VOCAB) and enc.layer == -1 and not enc.trainable
    model, params = tiny
    ids, mask, _ = _batch()
    with pytest.raises(UserError, match="layer=5"):
        encode(model, params, ids, mask, layer=5)
    with pytest.raises(UserError, match="pooling"):
        encode(model, params, ids, mask, pooling="max")
