"""GAN objectives: hinge loss, matching-aware term, image-text and word-region contrastive losses (InfoNCE),
R1 on a strided subset of the real images.

The terms are pure functions of discriminator outputs; `discriminator_objective` / `generator_objective` combine
them into a scalar plus metrics. A D step typically runs D once on concat([real, fake]) (both augmented with the
same key), with `mismatched_pooled=mismatched_text(pooled)`, and adds `strided_r1_penalty`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from llmimg_jax.generator.gan.discriminator import DOutput

Array = jax.Array


def d_hinge_loss(real_logit: Array, fake_logit: Array, mismatch_logit: Array | None = None,
                 mismatch_weight: float = 1.0) -> Array:
    """E[relu(1 - D(x, t))] + E[relu(1 + D(G(z, t), t))] + mismatch_weight * E[relu(1 + D(x, t'))]."""
    loss = jnp.mean(jax.nn.relu(1.0 - real_logit)) + jnp.mean(jax.nn.relu(1.0 + fake_logit))
    if mismatch_logit is not None:
        loss = loss + mismatch_weight * jnp.mean(jax.nn.relu(1.0 + mismatch_logit))
    return loss


def masked_fake_hinge(logit: Array, valid: Array) -> Array:
    """E[relu(1 + D(x, t'))] over the rows with valid = 1 (0 when none is): mismatched pairs scored as fake."""
    return jnp.sum(jax.nn.relu(1.0 + logit) * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def g_hinge_loss(fake_logit: Array) -> Array:
    return -jnp.mean(fake_logit)


def saturation_penalty(logits: Array, bound: float) -> Array:
    """E[relu(|a| - bound)^2] over G's tanh inputs a: pixels far in tanh's flat tail get no gradient back."""
    return jnp.mean(jnp.square(jax.nn.relu(jnp.abs(logits.astype(jnp.float32)) - bound)))


def mismatched_text(pooled: Array, shift: int = 1) -> Array:
    """Each image's caption replaced by another example's (rolled within the batch). Equal captions in the batch
    then count as mismatched too; with varied captions that noise is rare."""
    return jnp.roll(pooled, shift, axis=0)


def _unit(x: Array) -> Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def info_nce(logits: Array) -> Array:
    """Symmetric InfoNCE of a [B, B] image-by-text score matrix whose diagonal holds the matching pairs."""
    diag = jnp.diagonal(logits)
    i2t = jax.nn.logsumexp(logits, axis=1) - diag
    t2i = jax.nn.logsumexp(logits, axis=0) - diag
    return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))


def contrastive_loss(image_emb: Array, text_emb: Array, temperature: float) -> Array:
    """Symmetric InfoNCE over the batch on cosine similarities / temperature (pair i is the positive of row i)."""
    return info_nce(_unit(image_emb) @ _unit(text_emb).T / temperature)


# AttnGAN's DAMSM / XMC-GAN's word-region sharpness: word-to-region attention, and the soft maximum over words.
WORD_ATTENTION_SHARPNESS = 4.0
WORD_AGGREGATION_SHARPNESS = 5.0


def word_region_scores(regions: Array, words: Array, word_mask: Array) -> Array:
    """S[i, j]: how well image i's regions [B, R, E] show caption j's words [B, T, E] (real where word_mask).

    Each word of caption j attends over image i's regions (cosine similarities, softmax); the word's match is the
    cosine between it and what it attended to; S is the soft maximum (log-sum-exp, sharpness 5) of the matches
    over the caption's real words. A caption is matched when every word finds its region."""
    r, w = _unit(regions), _unit(words)
    attention = jax.nn.softmax(WORD_ATTENTION_SHARPNESS * jnp.einsum("ire,jte->ijtr", r, w), axis=-1)
    context = _unit(jnp.einsum("ijtr,ire->ijte", attention, r))
    match = jnp.einsum("ijte,jte->ijt", context, w)
    # Padding words count as a very poor match (finite: a caption always has a real token).
    match = jnp.where(word_mask[None, :, :], WORD_AGGREGATION_SHARPNESS * match, -1e4)
    return jax.nn.logsumexp(match, axis=-1) / WORD_AGGREGATION_SHARPNESS


def word_region_loss(out: DOutput, temperature: float) -> Array:
    """Symmetric InfoNCE of `word_region_scores` over the batch (XMC-GAN's word-region contrastive loss)."""
    return info_nce(word_region_scores(out.region_embedding, out.word_embedding, out.word_mask) / temperature)


def r1_penalty(logit_fn: Callable[[Array], Array], images: Array, gamma: float) -> Array:
    """gamma/2 * E_x ||d D(x) / d x||^2 on real images (`logit_fn` maps images [B, ...] to logits [B])."""
    grads = jax.grad(lambda x: jnp.sum(logit_fn(x)))(images)
    return 0.5 * gamma * jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=tuple(range(1, grads.ndim))))


def strided_r1_penalty(logit_fn: Callable[[Array, Array], Array], images: Array, texts: Array, gamma: float,
                       every: int) -> Array:
    """R1 on every `every`-th real image of the batch (with its text), each step: 1/every of the full penalty's cost
    with the same expected gradient. `logit_fn(images, texts)` -> logits [B]. StyleGAN2's lazy R1 (the full batch
    every N steps, scaled by N) saves as much, but its `lax.cond` around a double backward ran ~70x slower than the
    same code outside it on XLA CPU (convolutions inside the branch keep layouts the fast kernels do not take), so
    every N-th step cost ~20 ordinary ones."""
    some_texts = texts[::every]
    return r1_penalty(lambda x: logit_fn(x, some_texts), images[::every], gamma)


def _add_embedding_terms(out: DOutput, loss: Array, metrics: dict, player: str, *, contrastive_weight: float,
                         temperature: float, word_region_weight: float) -> tuple[Array, dict]:
    """Adds the weighted image-text and word-region InfoNCE terms of `out` (weight 0: term skipped) to `loss`,
    and records each under `{player}_contrastive` / `{player}_word_region`."""
    terms = (("contrastive", contrastive_weight,
              lambda: contrastive_loss(out.image_embedding, out.text_embedding, temperature)),
             ("word_region", word_region_weight, lambda: word_region_loss(out, temperature)))
    for name, weight, term in terms:
        if weight:
            value = term()
            loss, metrics[f"{player}_{name}"] = loss + weight * value, value
    return loss, metrics


def discriminator_objective(real: DOutput, fake: DOutput, *, mismatch_weight: float = 1.0,
                            contrastive_weight: float = 0.0, temperature: float = 0.1,
                            word_region_weight: float = 0.0) -> tuple[Array, dict]:
    """Hinge (+ matching-aware if `real.mismatch_logit` is set) (+ contrastive and word-region terms on real
    pairs) -> (loss, metrics)."""
    hinge = d_hinge_loss(real.logit, fake.logit, real.mismatch_logit, mismatch_weight)
    metrics = {"d_hinge": hinge, "d_real": jnp.mean(real.logit), "d_fake": jnp.mean(fake.logit)}
    if real.mismatch_logit is not None:
        metrics["d_mismatch"] = jnp.mean(real.mismatch_logit)
    return _add_embedding_terms(real, hinge, metrics, "d", contrastive_weight=contrastive_weight,
                                temperature=temperature, word_region_weight=word_region_weight)


def generator_objective(fake: DOutput, *, contrastive_weight: float = 0.0, temperature: float = 0.1,
                        word_region_weight: float = 0.0) -> tuple[Array, dict]:
    """Hinge (+ contrastive and word-region terms between D's embeddings of fake images and their texts)
    -> (loss, metrics)."""
    hinge = g_hinge_loss(fake.logit)
    return _add_embedding_terms(fake, hinge, {"g_hinge": hinge}, "g", contrastive_weight=contrastive_weight,
                                temperature=temperature, word_region_weight=word_region_weight)
