"""KV-cache sampling: equals the naive sampler, top-k/top-p support vs numpy, EOS, padding, seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.errors import UserError
from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params
from llmimg_jax.text.sampling import filter_logits, generate, generate_naive, sample_logits

VOCAB = 50


@pytest.fixture(scope="module")
def tiny():
    model = GPT2(gpt2_config("tiny", vocab_size=VOCAB, n_positions=32))
    params = init_params(model, jax.random.key(0))
    # Larger position embeddings make the random model's greedy continuations change token now and then.
    return model, {**params, "wpe": {"embedding": params["wpe"]["embedding"] * 4.0}}


def _prompts():
    """Three left-padded prompts of lengths 5, 3, 1."""
    ids = np.random.default_rng(0).integers(1, VOCAB, (3, 5))
    mask = (np.arange(5)[None] >= np.array([0, 2, 4])[:, None]).astype(np.int32)
    return np.where(mask > 0, ids, 0), mask


def _np_support(logits, top_k, top_p):
    """float64 reference: the set of token ids top-k then top-p keep (distinct logits)."""
    order = np.argsort(-logits)
    keep = order[:top_k] if top_k else order
    probs = np.exp(logits[keep] - logits[keep].max())
    probs /= probs.sum()
    cum = np.cumsum(probs)
    n = int(np.searchsorted(cum, top_p - 1e-12) + 1) if top_p < 1 else len(keep)  # smallest prefix with mass >= p
    return set(keep[:n].tolist())


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (0, 0.95), (8, 0.7), (1, 1.0), (0, 1e-4)])
def test_filter_logits_support_matches_numpy(top_k, top_p):
    logits = np.random.default_rng(1).normal(0, 2.0, (4, 30)).astype(np.float32)
    filtered = np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p))
    for row, f in zip(logits, filtered):
        support = set(np.flatnonzero(np.isfinite(f)).tolist())
        assert support == _np_support(row.astype(np.float64), top_k, top_p)
        np.testing.assert_array_equal(f[list(support)], row[list(support)])  # kept logits unchanged


def test_samples_stay_in_support_with_right_frequencies():
    logits = jnp.asarray(np.random.default_rng(2).normal(0, 1.5, (1, 20)).astype(np.float32))
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: sample_logits(logits, k, temperature=0.7, top_k=6, top_p=0.8))(keys))[:, 0]
    scaled = np.asarray(logits[0], np.float64) / 0.7
    support = _np_support(scaled, 6, 0.8)
    assert set(np.unique(draws).tolist()) <= support
    expected = np.zeros(20)
    idx = sorted(support)
    expected[idx] = np.exp(scaled[idx] - scaled[idx].max())
    expected /= expected.sum()
    freq = np.bincount(draws, minlength=20) / len(draws)
    assert np.max(np.abs(freq - expected)) < 0.03


@pytest.mark.parametrize("kwargs", [dict(greedy=True), dict(temperature=0.9, top_k=10, top_p=0.9),
                                    dict(temperature=1.3)])
def test_kv_cache_equals_naive_sampler(tiny, kwargs):
    model, params = tiny
    ids, mask = _prompts()
    args = dict(max_new_tokens=12, rng=jax.random.key(7), pad_id=0, **kwargs)
    fast = np.asarray(generate(model, params, ids, mask, **args))
    slow = np.asarray(generate_naive(model, params, ids, mask, **args))
    np.testing.assert_array_equal(fast, slow)
    assert fast.shape == (3, 12)
    if not kwargs.get("greedy"):
        assert len(np.unique(fast)) > 3  # really sampled, not a constant


def test_rows_do_not_depend_on_padding(tiny):
    model, params = tiny
    ids, mask = _prompts()
    args = dict(max_new_tokens=8, rng=jax.random.key(0), greedy=True)
    batched = np.asarray(generate(model, params, ids, mask, **args))
    for row in range(3):
        alone = np.asarray(generate(model, params, ids[row:row + 1, mask[row] > 0], None, **args))
        np.testing.assert_array_equal(batched[row], alone[0])
    # Right padding of the same prompts gives the same tokens.
    right_ids = np.stack([np.roll(r, -int((m == 0).sum())) for r, m in zip(ids, mask)])
    right_mask = mask[:, ::-1].copy()
    np.testing.assert_array_equal(np.asarray(generate(model, params, right_ids, right_mask, **args)), batched)


def test_eos_stops_a_row(tiny):
    model, params = tiny
    ids, mask = _prompts()
    args = dict(max_new_tokens=10, rng=jax.random.key(3), temperature=1.0, pad_id=0)
    free = np.asarray(generate(model, params, ids, mask, **args))
    eos = int(free[1, 2])
    first = [int(np.argmax(r == eos)) if (r == eos).any() else None for r in free]
    stopped = np.asarray(generate(model, params, ids, mask, eos_id=eos, **args))
    for row, f in enumerate(first):
        if f is None:
            np.testing.assert_array_equal(stopped[row], free[row])
        else:
            np.testing.assert_array_equal(stopped[row, :f + 1], free[row, :f + 1])  # same keys until EOS
            assert (stopped[row, f + 1:] == 0).all()
    assert first[1] is not None and first[1] <= 2
    naive = np.asarray(generate_naive(model, params, ids, mask, eos_id=eos, **args))
    np.testing.assert_array_equal(stopped, naive)


def test_same_seed_same_output(tiny):
    model, params = tiny
    ids, mask = _prompts()
    args = dict(max_new_tokens=10, temperature=1.0)
    a = np.asarray(generate(model, params, ids, mask, rng=jax.random.key(11), **args))
    b = np.asarray(generate(model, params, ids, mask, rng=jax.random.key(11), **args))
    c = np.asarray(generate(model, params, ids, mask, rng=jax.random.key(12), **args))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_generation_is_one_compiled_loop(tiny):
    model, params = tiny
    ids, mask = _prompts()
    jaxpr = jax.make_jaxpr(lambda p: generate(model, p, ids, mask, max_new_tokens=6, rng=jax.random.key(0),
                                              greedy=True))(params)
    text = str(jaxpr)
    assert text.count("while[") == 1 and "body_jaxpr" in text


def test_bad_arguments(tiny):
    model, params = tiny
    ids, mask = _prompts()
    with pytest.raises(UserError, match="n_positions"):
        generate(model, params, ids, mask, max_new_tokens=40, rng=jax.random.key(0))
    with pytest.raises(UserError, match="temperature"):
        generate(model, params, ids, mask, max_new_tokens=4, rng=jax.random.key(0), temperature=0.0)
    with pytest.raises(UserError, match="no real tokens"):
        generate(model, params, ids, np.zeros_like(mask), max_new_tokens=4, rng=jax.random.key(0))
