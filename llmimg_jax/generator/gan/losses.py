"""GAN objectives: hinge loss, matching-aware term, image-text contrastive loss (InfoNCE), lazy R1.

The terms are pure functions of discriminator outputs; `discriminator_objective` / `generator_objective` combine
them into a scalar plus metrics. A D step typically runs D once on concat([real, fake]) (both augmented with the
same key), with `mismatched_pooled=mismatched_text(pooled)`, and adds `lazy_r1_penalty`.
"""

from __future__ import annotations

from typing import Callable, Union

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


def g_hinge_loss(fake_logit: Array) -> Array:
    return -jnp.mean(fake_logit)


def mismatched_text(pooled: Array, shift: int = 1) -> Array:
    """Each image's caption replaced by another example's (rolled within the batch). Equal captions in the batch
    then count as mismatched too; with varied captions that noise is rare."""
    return jnp.roll(pooled, shift, axis=0)


def contrastive_loss(image_emb: Array, text_emb: Array, temperature: float) -> Array:
    """Symmetric InfoNCE over the batch on cosine similarities / temperature (pair i is the positive of row i)."""
    img = image_emb.astype(jnp.float32)
    txt = text_emb.astype(jnp.float32)
    img = img * jax.lax.rsqrt(jnp.sum(img * img, axis=-1, keepdims=True) + 1e-12)
    txt = txt * jax.lax.rsqrt(jnp.sum(txt * txt, axis=-1, keepdims=True) + 1e-12)
    logits = img @ txt.T / temperature
    diag = jnp.diagonal(logits)
    i2t = jax.nn.logsumexp(logits, axis=1) - diag
    t2i = jax.nn.logsumexp(logits, axis=0) - diag
    return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))


def r1_penalty(logit_fn: Callable[[Array], Array], images: Array, gamma: float) -> Array:
    """gamma/2 * E_x ||d D(x) / d x||^2 on real images (`logit_fn` maps images [B, ...] to logits [B])."""
    grads = jax.grad(lambda x: jnp.sum(logit_fn(x)))(images)
    return 0.5 * gamma * jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=tuple(range(1, grads.ndim))))


def lazy_r1_penalty(logit_fn: Callable[[Array], Array], images: Array, gamma: float, every: int,
                    apply: Union[bool, Array]) -> Array:
    """R1 applied only when `apply` (e.g. `step % every == 0`), then scaled by `every` to keep its average weight."""
    return jax.lax.cond(jnp.asarray(apply), lambda x: every * r1_penalty(logit_fn, x, gamma),
                        lambda x: jnp.zeros((), jnp.float32), images)


def discriminator_objective(real: DOutput, fake: DOutput, *, mismatch_weight: float = 1.0,
                            contrastive_weight: float = 0.0, temperature: float = 0.1) -> tuple[Array, dict]:
    """Hinge (+ matching-aware if `real.mismatch_logit` is set) (+ contrastive on real pairs) -> (loss, metrics)."""
    hinge = d_hinge_loss(real.logit, fake.logit, real.mismatch_logit, mismatch_weight)
    loss, metrics = hinge, {"d_hinge": hinge, "d_real": jnp.mean(real.logit), "d_fake": jnp.mean(fake.logit)}
    if real.mismatch_logit is not None:
        metrics["d_mismatch"] = jnp.mean(real.mismatch_logit)
    if contrastive_weight:
        contrastive = contrastive_loss(real.image_embedding, real.text_embedding, temperature)
        loss = loss + contrastive_weight * contrastive
        metrics["d_contrastive"] = contrastive
    return loss, metrics


def generator_objective(fake: DOutput, *, contrastive_weight: float = 0.0,
                        temperature: float = 0.1) -> tuple[Array, dict]:
    """Hinge (+ contrastive between D's embeddings of fake images and their texts) -> (loss, metrics)."""
    hinge = g_hinge_loss(fake.logit)
    loss, metrics = hinge, {"g_hinge": hinge}
    if contrastive_weight:
        contrastive = contrastive_loss(fake.image_embedding, fake.text_embedding, temperature)
        loss = loss + contrastive_weight * contrastive
        metrics["g_contrastive"] = contrastive
    return loss, metrics
