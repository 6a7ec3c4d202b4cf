"""Batched GPT-2 generation as one compiled loop: KV-cache sampling, and a naive re-run-the-prefix sampler.

Prompts are padded to a common length P on either side; `attention_mask` marks the real tokens. Generated tokens
go to slots P, P+1, ... of every row; padding slots are never attended to and positions count real tokens only,
so a row's result does not depend on how much padding it has (left padding is the usual choice).
Step t draws with `jax.random.fold_in(rng, t)`, so both samplers (and reruns with the same seed) agree.
An optional `prefix_embeds [B, P, E]` (an image prefix, see gpt2.py) is read before every prompt: the cached
sampler feeds it with the prefill only (the cache holds P + prompt + new slots), the naive one with every re-run.
`prefix_mask [B, P]` marks padded prefix slots (a text prefix of variable length); they are never attended to.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax.errors import UserError
from llmimg_jax.text.gpt2 import GPT2, init_cache

_STATIC = ("model", "max_new_tokens", "temperature", "top_k", "top_p", "greedy", "eos_id", "pad_id")


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets logits outside the top-k and outside the top-p nucleus to -inf (last axis)."""
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token if the mass of the tokens ranked above it is below top_p (the top token always stays).
        keep = jnp.cumsum(probs, axis=-1) - probs < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def sample_logits(logits: jax.Array, key: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, greedy: bool = False) -> jax.Array:
    """logits [B, V] -> token ids [B] (temperature, then top-k, then top-p, as Hugging Face orders them)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _last_real_index(attention_mask: jax.Array) -> jax.Array:
    slots = jnp.arange(attention_mask.shape[1])
    return jnp.max(jnp.where(attention_mask > 0, slots, -1), axis=1)


def _step(t, logits, out, done, rng, temperature, top_k, top_p, greedy, eos_id, pad_id):
    """Draws token t for every row; finished rows get pad_id."""
    tok = sample_logits(logits, jax.random.fold_in(rng, t), temperature=temperature, top_k=top_k, top_p=top_p,
                        greedy=greedy)
    tok = jnp.where(done, pad_id, tok)
    out = out.at[:, t].set(tok)
    if eos_id is not None:
        done = done | (tok == eos_id)
    return tok, out, done


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_cached(params, input_ids, attention_mask, rng, prefix_embeds, prefix_mask, *, model, max_new_tokens,
                     temperature, top_k, top_p, greedy, eos_id, pad_id):
    batch, prompt_len = input_ids.shape
    num_prefix = 0 if prefix_embeds is None else prefix_embeds.shape[1]
    cache = init_cache(model, batch, num_prefix + prompt_len + max_new_tokens)
    logits, variables = model.apply({"params": params, "cache": cache}, input_ids, attention_mask=attention_mask,
                                    decode=True, prefix_embeds=prefix_embeds, prefix_mask=prefix_mask,
                                    mutable=["cache"])
    first_logits = logits[jnp.arange(batch), _last_real_index(attention_mask)]

    def cond(state):
        t, _, _, _, done = state
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(state):
        t, logits, cache, out, done = state
        tok, out, done = _step(t, logits, out, done, rng, temperature, top_k, top_p, greedy, eos_id, pad_id)
        logits, variables = model.apply({"params": params, "cache": cache}, tok[:, None],
                                        attention_mask=jnp.ones((batch, 1), jnp.int32), decode=True, mutable=["cache"])
        return t + 1, logits[:, 0], variables["cache"], out, done

    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    state = (jnp.zeros((), jnp.int32), first_logits, variables["cache"], out, jnp.zeros((batch,), bool))
    return jax.lax.while_loop(cond, body, state)[3]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_naive(params, input_ids, attention_mask, rng, prefix_embeds, prefix_mask, *, model, max_new_tokens,
                    temperature, top_k, top_p, greedy, eos_id, pad_id):
    batch, prompt_len = input_ids.shape
    ids = jnp.concatenate([input_ids, jnp.full((batch, max_new_tokens), pad_id, input_ids.dtype)], axis=1)
    mask = jnp.concatenate([attention_mask, jnp.zeros((batch, max_new_tokens), attention_mask.dtype)], axis=1)
    first_slot = _last_real_index(attention_mask)

    def cond(state):
        t, _, _, _, done = state
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(state):
        t, ids, mask, out, done = state
        logits = model.apply({"params": params}, ids, attention_mask=mask,  # the whole buffer, every step
                             prefix_embeds=prefix_embeds, prefix_mask=prefix_mask)
        slot = jnp.where(t == 0, first_slot, prompt_len + t - 1)
        tok, out, done = _step(t, logits[jnp.arange(batch), slot], out, done, rng, temperature, top_k, top_p,
                               greedy, eos_id, pad_id)
        ids = ids.at[:, prompt_len + t].set(tok.astype(ids.dtype))
        mask = mask.at[:, prompt_len + t].set(1)
        return t + 1, ids, mask, out, done

    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    state = (jnp.zeros((), jnp.int32), ids, mask, out, jnp.zeros((batch,), bool))
    return jax.lax.while_loop(cond, body, state)[3]


def _run(impl, model: GPT2, params: Any, input_ids, attention_mask, prefix_embeds, prefix_mask, *,
         max_new_tokens: int, rng: jax.Array, temperature: float, top_k: int, top_p: float, greedy: bool,
         eos_id: int | None, pad_id: int) -> jax.Array:
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not greedy and temperature <= 0:
        raise UserError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax decoding")
    if not 0.0 < top_p <= 1.0 or top_k < 0:
        raise UserError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    if not isinstance(attention_mask, jax.core.Tracer) and np.any(np.asarray(attention_mask).sum(-1) == 0):
        raise UserError("a prompt has no real tokens (attention_mask all 0); give every row at least one token, "
                        "e.g. the BOS/EOS token")
    # The prefix's shapes are checked by GPT2 itself (when the loop is traced); here only its length counts.
    prefix_embeds = None if prefix_embeds is None else jnp.asarray(prefix_embeds)
    prefix_mask = None if prefix_mask is None else jnp.asarray(prefix_mask, jnp.int32)
    num_prefix = prefix_embeds.shape[1] if prefix_embeds is not None and prefix_embeds.ndim == 3 else 0
    if num_prefix + input_ids.shape[1] + max_new_tokens > model.config.n_positions:
        head = f"prefix {num_prefix} + " if num_prefix else ""
        raise UserError(f"{head}prompt length {input_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
                        f"n_positions={model.config.n_positions}; shorten one of them")
    return impl(params, input_ids, attention_mask, rng, prefix_embeds, prefix_mask, model=model,
                max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                greedy=bool(greedy), eos_id=eos_id, pad_id=int(pad_id))


def generate(model: GPT2, params: Any, input_ids, attention_mask=None, *, max_new_tokens: int, rng: jax.Array,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             eos_id: int | None = None, pad_id: int = 0, prefix_embeds=None, prefix_mask=None) -> jax.Array:
    """KV-cache generation: new token ids [B, max_new_tokens]; a row stops at its EOS and is pad_id after it.
    `prefix_embeds [B, P, E]`, when given, is read before the prompt (an image or text prefix); `prefix_mask
    [B, P]` (1 = real) marks its padding."""
    return _run(_generate_cached, model, params, input_ids, attention_mask, prefix_embeds, prefix_mask,
                max_new_tokens=max_new_tokens, rng=rng, temperature=temperature, top_k=top_k, top_p=top_p,
                greedy=greedy, eos_id=eos_id, pad_id=pad_id)


def generate_naive(model: GPT2, params: Any, input_ids, attention_mask=None, *, max_new_tokens: int,
                   rng: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   greedy: bool = False, eos_id: int | None = None, pad_id: int = 0, prefix_embeds=None,
                   prefix_mask=None) -> jax.Array:
    """Same results as `generate`, re-running the model over the whole sequence for every token (benchmark)."""
    return _run(_generate_naive, model, params, input_ids, attention_mask, prefix_embeds, prefix_mask,
                max_new_tokens=max_new_tokens, rng=rng, temperature=temperature, top_k=top_k, top_p=top_p,
                greedy=greedy, eos_id=eos_id, pad_id=pad_id)
