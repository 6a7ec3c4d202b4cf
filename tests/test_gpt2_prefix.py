"""GPT-2 with a prefix of embeddings (image conditioning): equals feeding the vectors as extra tokens; KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_cache, init_params
from llmimg_jax.text.sampling import generate, generate_naive

VOCAB, P, E = 50, 3, 64


@pytest.fixture(scope="module")
def tiny():
    model = GPT2(gpt2_config("tiny", vocab_size=VOCAB, n_positions=40))
    params = init_params(model, jax.random.key(0))
    # Larger position embeddings make the random model's greedy continuations change token now and then.
    return model, {**params, "wpe": {"embedding": params["wpe"]["embedding"] * 4.0}}


def _prefix(batch, seed=5):
    return jax.random.normal(jax.random.key(seed), (batch, P, E)) * 0.5


def _prompts():
    """Three left-padded prompts of lengths 5, 3, 1."""
    ids = np.random.default_rng(0).integers(1, VOCAB, (3, 5))
    mask = (np.arange(5)[None] >= np.array([0, 2, 4])[:, None]).astype(np.int32)
    return np.where(mask > 0, ids, 0), mask


def _as_tokens(model, params, prefix_row):
    """A model whose vocabulary has P extra tokens embedding to `prefix_row`: feeding those ids first is the
    prefix written out by hand."""
    wte = params["wte"]["embedding"]
    extended = {**params, "wte": {"embedding": jnp.concatenate([wte, prefix_row], axis=0)}}
    cfg = model.config
    return GPT2(gpt2_config("tiny", vocab_size=VOCAB + P, n_positions=cfg.n_positions)), extended


def test_prefix_equals_extra_token_embeddings(tiny):
    model, params = tiny
    ids, mask = _prompts()
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()  # right padding: positions stay 0..T-1 after the prefix
    prefix = _prefix(3)
    logits, hidden = model.apply({"params": params}, ids, mask, prefix_embeds=prefix, output_hidden_states=True)
    assert logits.shape == (3, 5, VOCAB) and hidden.shape == (3, 3, 5, E)
    for row in range(3):
        ref_model, ref_params = _as_tokens(model, params, prefix[row])
        ref_ids = np.concatenate([VOCAB + np.arange(P), ids[row]])[None]
        ref_mask = np.concatenate([np.ones(P, np.int32), mask[row]])[None]
        ref_logits, ref_hidden = ref_model.apply({"params": ref_params}, ref_ids, ref_mask, output_hidden_states=True)
        real = mask[row] > 0
        np.testing.assert_allclose(logits[row][real], ref_logits[0, P:][real][:, :VOCAB], atol=1e-5)
        np.testing.assert_allclose(hidden[:, row][:, real], ref_hidden[:, 0, P:][:, real], atol=1e-5)


def test_prefix_changes_logits_and_left_padding_does_not(tiny):
    model, params = tiny
    ids = np.asarray([[7, 8, 9, 10]])
    prefix = _prefix(1)
    out = model.apply({"params": params}, ids, prefix_embeds=prefix)
    other = model.apply({"params": params}, ids, prefix_embeds=_prefix(1, seed=6))
    assert float(jnp.max(jnp.abs(out - other))) > 1e-3  # the tokens really read the prefix
    padded = np.asarray([[0, 0, 7, 8, 9, 10]])
    pmask = np.asarray([[0, 0, 1, 1, 1, 1]])
    np.testing.assert_allclose(model.apply({"params": params}, padded, pmask, prefix_embeds=prefix)[:, 2:], out,
                               atol=1e-5)


def test_decode_with_prefix_matches_full_forward(tiny):
    model, params = tiny
    ids, mask = _prompts()
    prefix = _prefix(3)
    full = model.apply({"params": params}, ids, mask, prefix_embeds=prefix)
    cache = init_cache(model, 3, P + 5)
    # Prefill with the prefix and the first 2 slots, then one token per call.
    out, v = model.apply({"params": params, "cache": cache}, ids[:, :2], mask[:, :2], decode=True,
                         prefix_embeds=prefix, mutable=["cache"])
    steps = [out]
    for t in range(2, 5):
        out, v = model.apply({"params": params, "cache": v["cache"]}, ids[:, t:t + 1], mask[:, t:t + 1],
                             decode=True, mutable=["cache"])
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, 1)[mask > 0], np.asarray(full)[mask > 0], atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(greedy=True), dict(temperature=1.2, top_k=10, top_p=0.9)])
def test_cached_sampler_with_prefix_equals_naive(tiny, kwargs):
    model, params = tiny
    ids, mask = _prompts()
    prefix = _prefix(3)
    args = dict(max_new_tokens=10, rng=jax.random.key(7), pad_id=0, prefix_embeds=prefix, **kwargs)
    fast = np.asarray(generate(model, params, ids, mask, **args))
    slow = np.asarray(generate_naive(model, params, ids, mask, **args))
    np.testing.assert_array_equal(fast, slow)
    plain = np.asarray(generate(model, params, ids, mask, **{**args, "prefix_embeds": None}))
    assert (fast != plain).any()  # the prefix conditions what is sampled


def test_prefix_counts_against_the_context(tiny):
    from llmimg_jax.errors import UserError

    model, params = tiny
    ids, mask = _prompts()
    with pytest.raises(UserError, match="prefix 3"):
        generate(model, params, ids, mask, max_new_tokens=33, rng=jax.random.key(0), prefix_embeds=_prefix(3))
    with pytest.raises(UserError, match="prefix vectors"):
        model.apply({"params": params}, np.zeros((1, 38), np.int32), prefix_embeds=_prefix(1))
