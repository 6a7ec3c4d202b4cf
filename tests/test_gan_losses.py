"""GAN losses against float64 numpy references, lazy R1 against finite differences, and a short sanity training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmimg_jax.errors import UserError
from llmimg_jax.generator.gan import losses
from llmimg_jax.generator.gan.augment import augment
from llmimg_jax.generator.gan.discriminator import Discriminator, DOutput, discriminator_config
from llmimg_jax.generator.gan.generator import Generator, generator_config


def _relu(x):
    return np.maximum(x, 0.0)


def _np_info_nce(img, txt, temperature):
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    logits = img @ txt.T / temperature
    diag = np.diag(logits)

    def lse(a, axis):
        m = a.max(axis=axis, keepdims=True)
        return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)

    return 0.5 * (np.mean(lse(logits, 1) - diag) + np.mean(lse(logits, 0) - diag))


def test_hinge_losses_against_numpy():
    rng = np.random.default_rng(0)
    real, fake, mis = (rng.normal(size=32) * 2 for _ in range(3))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    want = _relu(1 - real).mean() + _relu(1 + fake).mean()
    np.testing.assert_allclose(losses.d_hinge_loss(f32(real), f32(fake)), want, rtol=1e-6)
    np.testing.assert_allclose(losses.d_hinge_loss(f32(real), f32(fake), f32(mis), 0.5),
                               want + 0.5 * _relu(1 + mis).mean(), rtol=1e-6)
    np.testing.assert_allclose(losses.g_hinge_loss(f32(fake)), -fake.mean(), rtol=1e-6)


def test_masked_fake_hinge_against_numpy():
    logit = np.array([-2.0, 0.5, -0.3, 3.0], np.float32)
    valid = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    want = _relu(1 + logit)[valid > 0].mean()
    np.testing.assert_allclose(losses.masked_fake_hinge(jnp.asarray(logit), jnp.asarray(valid)), want, rtol=1e-6)
    assert float(losses.masked_fake_hinge(jnp.asarray(logit), jnp.zeros(4))) == 0.0


def test_saturation_penalty_against_numpy_and_its_gradient_pulls_back():
    logits = np.array([[-22.0, -3.5, 0.0], [2.9, 3.0, 80.0]])
    want = np.mean(np.maximum(np.abs(logits) - 3.0, 0.0) ** 2)  # float64
    np.testing.assert_allclose(losses.saturation_penalty(jnp.asarray(logits, jnp.float32), 3.0), want, rtol=1e-6)
    grad = np.asarray(jax.grad(lambda a: losses.saturation_penalty(a, 3.0))(jnp.asarray(logits, jnp.float32)))
    # Zero inside the bound; outside it a descent step moves the input back toward it.
    np.testing.assert_array_equal(grad == 0, np.abs(logits) <= 3.0)
    assert np.all(np.sign(-grad[np.abs(logits) > 3.0]) == -np.sign(logits[np.abs(logits) > 3.0]))


def test_matching_aware_and_objectives_against_numpy():
    rng = np.random.default_rng(1)
    b, d = 6, 5
    phi, text = rng.normal(size=(b, d)), rng.normal(size=(b, d))
    mismatched = np.asarray(losses.mismatched_text(jnp.asarray(text)))
    np.testing.assert_array_equal(mismatched, np.roll(text.astype(np.float32), 1, axis=0))  # row i gets caption i-1
    assert not np.any(np.all(mismatched == text, axis=1))
    # A linear projection discriminator: logit = <text, phi>.
    real_logit, mis_logit = (text * phi).sum(1), (np.roll(text, 1, axis=0) * phi).sum(1)
    fake_logit = rng.normal(size=b)
    img_emb, txt_emb = rng.normal(size=(b, 4)), rng.normal(size=(b, 4))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    real = DOutput(f32(real_logit), f32(real_logit), f32(img_emb), f32(txt_emb), f32(mis_logit))
    fake = DOutput(f32(fake_logit), f32(fake_logit), f32(txt_emb), f32(img_emb), None)
    loss, metrics = losses.discriminator_objective(real, fake, mismatch_weight=0.5, contrastive_weight=2.0,
                                                   temperature=0.2)
    want = (_relu(1 - real_logit).mean() + _relu(1 + fake_logit).mean() + 0.5 * _relu(1 + mis_logit).mean()
            + 2.0 * _np_info_nce(img_emb, txt_emb, 0.2))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["d_mismatch"], mis_logit.mean(), rtol=1e-5, atol=1e-6)
    g_loss, _ = losses.generator_objective(fake, contrastive_weight=0.5, temperature=0.2)
    np.testing.assert_allclose(g_loss, -fake_logit.mean() + 0.5 * _np_info_nce(txt_emb, img_emb, 0.2), rtol=1e-5)


def test_contrastive_against_numpy():
    rng = np.random.default_rng(2)
    img, txt = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
    got = losses.contrastive_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), 0.07)
    np.testing.assert_allclose(got, _np_info_nce(img, txt, 0.07), rtol=1e-5)
    aligned = losses.contrastive_loss(jnp.asarray(img, jnp.float32), jnp.asarray(img * 3.0, jnp.float32), 0.07)
    assert float(aligned) < float(got)  # matching pairs lower the loss


def _np_word_region_scores(regions, words, mask, gamma1=4.0, gamma2=5.0):
    """S[i, j] by loops in float64: each real word of caption j attends over image i's regions (AttnGAN / XMC-GAN)."""
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    scores = np.zeros((len(regions), len(words)))
    for i, r in enumerate(unit(regions)):
        for j, (w, m) in enumerate(zip(unit(words), mask)):
            matches = []
            for word in w[m]:
                a = np.exp(gamma1 * r @ word)
                context = unit((a / a.sum()) @ r)
                matches.append(gamma2 * context @ word)
            scores[i, j] = np.log(np.exp(matches).sum()) / gamma2
    return scores


def test_word_region_loss_against_numpy():
    rng = np.random.default_rng(4)
    b, r, t, e = 5, 9, 6, 8
    regions, words = rng.normal(size=(b, r, e)), rng.normal(size=(b, t, e))
    mask = np.ones((b, t), bool)
    mask[0, 3:], mask[2, 1:] = False, False  # padded captions; caption 2 has a single word
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    got = losses.word_region_scores(f32(regions), f32(words), jnp.asarray(mask))
    want = _np_word_region_scores(regions, words, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    out = DOutput(*(f32(np.zeros(b)),) * 2, None, None, None, f32(regions), f32(words), jnp.asarray(mask))
    lse = lambda a, axis: np.log(np.exp(a).sum(axis=axis))
    logits = want / 0.1
    want_loss = 0.5 * (np.mean(lse(logits, 1) - np.diag(logits)) + np.mean(lse(logits, 0) - np.diag(logits)))
    np.testing.assert_allclose(losses.word_region_loss(out, 0.1), want_loss, rtol=1e-5)
    # Padding words change nothing; a caption whose words each match one region of its own image scores highest.
    np.testing.assert_allclose(losses.word_region_scores(f32(regions), f32(np.where(mask[..., None], words, 7.0)),
                                                         jnp.asarray(mask)), got, rtol=1e-6)
    shown = f32(np.stack([regions[i, rng.permutation(r)[:t]] for i in range(b)]))  # words = some of the regions
    aligned = losses.word_region_scores(f32(regions), shown, jnp.ones((b, t), bool))
    assert np.all(np.argmax(np.asarray(aligned), axis=0) == np.arange(b))


def test_discriminator_word_region_embeddings():
    d = Discriminator(discriminator_config("tiny"))
    images, pooled = jnp.zeros((2, 32, 32, 3)), jnp.ones((2, 16))
    tokens, mask = jnp.ones((2, 5, 16)), jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    variables = d.init(jax.random.key(0), images, pooled, tokens=tokens, token_mask=mask)
    out = d.apply(variables, images, pooled, tokens=tokens, token_mask=mask)
    assert out.region_embedding.shape == (2, 64, 64) and out.word_embedding.shape == (2, 5, 64)  # 8x8 regions
    np.testing.assert_array_equal(out.word_mask, mask.astype(bool))
    plain = d.apply(variables, images, pooled)
    assert plain.region_embedding is None and float(jnp.abs(plain.logit - out.logit).max()) == 0.0
    with pytest.raises(UserError, match="region_resolution=6"):
        discriminator_config("tiny", region_resolution=6)


def _tiny_d_numpy(x, w, v):
    """logit_b = v . tanh(W flat(x_b)) + 0.3 * sum(x_b^2): a small non-linear D."""
    flat = x.reshape(x.shape[0], -1)
    return np.tanh(flat @ w.T) @ v + 0.3 * (flat ** 2).sum(1)


def test_r1_penalty_against_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(3, 4, 4, 3))
    texts = rng.normal(size=(3, 2))
    w, v = rng.normal(size=(5, 48)) * 0.3, rng.normal(size=5)
    gamma = 10.0
    grads = np.zeros_like(x)
    eps = 1e-6
    for idx in np.ndindex(*x.shape[1:]):  # D(x_b) depends only on x_b: perturb all rows at once
        dx = np.zeros_like(x)
        dx[(slice(None),) + idx] = eps
        grads[(slice(None),) + idx] = (_tiny_d_numpy(x + dx, w, v) - _tiny_d_numpy(x - dx, w, v)) / (2 * eps)
    want = gamma / 2 * np.mean(np.sum(grads.reshape(3, -1) ** 2, axis=1))

    wj, vj = jnp.asarray(w, jnp.float32), jnp.asarray(v, jnp.float32)

    def logit_fn(images):
        flat = images.reshape(images.shape[0], -1)
        return jnp.tanh(flat @ wj.T) @ vj + 0.3 * jnp.sum(flat ** 2, axis=1)

    xj = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(losses.r1_penalty(logit_fn, xj, gamma), want, rtol=1e-4)
    # Every 2nd image: rows 0 and 2, each read with its own text (a text-dependent term shows a misaligned pair).
    tj = jnp.asarray(texts, jnp.float32)
    x_grads = grads + 2 * 0.7 * x * texts[:, :1, None, None]  # d/dx of 0.7 * t_b0 * sum(x_b^2)
    want_strided = gamma / 2 * np.mean(np.sum(x_grads[::2].reshape(2, -1) ** 2, axis=1))
    strided = jax.jit(lambda x, t: losses.strided_r1_penalty(
        lambda im, tx: logit_fn(im) + 0.7 * tx[:, 0] * jnp.sum(im.reshape(im.shape[0], -1) ** 2, axis=1),
        x, t, gamma, 2))
    np.testing.assert_allclose(strided(xj, tj), want_strided, rtol=1e-4)


def _sanity_data(key, b, size, dim, class_vecs):
    """Class c = row % 2: a bright red block in the left (c=0) or right (c=1) half; caption vectors per class."""
    k_img, k_txt, k_tok = jax.random.split(key, 3)
    cls = jnp.arange(b) % 2
    cols = jnp.arange(size)
    left = (cols < size // 2)[None, None, :]
    on = jnp.where(cls[:, None, None] == 0, left, ~left)
    img = -0.8 * jnp.ones((b, size, size, 3))
    img = img.at[..., 0].set(jnp.where(on, 0.8, -0.8))
    img = img + 0.1 * jax.random.normal(k_img, img.shape)
    pooled = class_vecs[cls] + 0.05 * jax.random.normal(k_txt, (b, dim))
    tokens = pooled[:, None, :] + 0.05 * jax.random.normal(k_tok, (b, 3, dim))
    return img, pooled, tokens, jnp.ones((b, 3), bool)


@pytest.mark.slow  # ~40 s of CPU, mostly compiling the joint D/G step
def test_sanity_training_learns_matching():
    size, b, dim = 16, 8, 16
    g = Generator(generator_config("tiny", image_size=size, z_dim=16, style_dim=32, channels=(16, 16, 16),
                                   attn_resolutions=(8,), head_dim=8))
    d = Discriminator(discriminator_config("tiny", image_size=size, channels=(16, 32, 32), embed_dim=16))
    class_vecs = jax.random.normal(jax.random.PRNGKey(42), (2, dim))
    img, pooled, tokens, mask = _sanity_data(jax.random.PRNGKey(0), b, size, dim, class_vecs)
    z = jnp.zeros((b, g.config.z_dim))
    g_params = jax.jit(g.init)(jax.random.PRNGKey(1), z, pooled, tokens, mask)["params"]
    d_vars = jax.jit(d.init)(jax.random.PRNGKey(2), img, pooled, pooled)
    d_params, spectral = d_vars["params"], d_vars["spectral"]
    g_tx, d_tx = optax.adam(2e-4, b1=0.0, b2=0.99), optax.adam(1e-3, b1=0.0, b2=0.99)
    g_opt, d_opt = g_tx.init(g_params), d_tx.init(d_params)

    @jax.jit
    def step(g_params, d_params, spectral, g_opt, d_opt, key, i):
        k_data, k_z, k_aug, k_z2 = jax.random.split(key, 4)
        real, pooled, tokens, mask = _sanity_data(k_data, b, size, dim, class_vecs)
        fake = g.apply({"params": g_params}, jax.random.normal(k_z, (b, g.config.z_dim)), pooled, tokens, mask)

        def d_loss_fn(dp):
            x = jnp.concatenate([augment(real, k_aug), augment(jax.lax.stop_gradient(fake), k_aug)])
            text = jnp.concatenate([pooled, pooled])
            out, new = d.apply({"params": dp, "spectral": spectral}, x, text, losses.mismatched_text(text),
                               update=True, mutable=["spectral"])
            real_out, fake_out = jax.tree.map(lambda a: a[:b], out), jax.tree.map(lambda a: a[b:], out)
            loss, _ = losses.discriminator_objective(real_out, fake_out, contrastive_weight=0.1)
            logit_fn = lambda imgs, texts: d.apply({"params": dp, **new}, imgs, texts).logit
            loss = loss + losses.strided_r1_penalty(logit_fn, real, pooled, 0.1, 4)
            return loss, new["spectral"]

        (_, spectral_new), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
        d_updates, d_opt = d_tx.update(d_grads, d_opt)
        d_params = optax.apply_updates(d_params, d_updates)

        def g_loss_fn(gp):
            fake = g.apply({"params": gp}, jax.random.normal(k_z2, (b, g.config.z_dim)), pooled, tokens, mask)
            out = d.apply({"params": d_params, "spectral": spectral_new}, augment(fake, k_aug), pooled)
            return losses.generator_objective(out, contrastive_weight=0.1)[0]

        g_loss, g_grads = jax.value_and_grad(g_loss_fn)(g_params)
        g_updates, g_opt = g_tx.update(g_grads, g_opt)
        return optax.apply_updates(g_params, g_updates), d_params, spectral_new, g_opt, d_opt, g_loss

    @jax.jit
    def gap(d_params, spectral, key):
        real, pooled, _, _ = _sanity_data(key, 64, size, dim, class_vecs)
        out = d.apply({"params": d_params, "spectral": spectral}, real, pooled, losses.mismatched_text(pooled))
        return jnp.mean(out.logit - out.mismatch_logit)

    before = float(gap(d_params, spectral, jax.random.PRNGKey(99)))
    key = jax.random.PRNGKey(3)
    for i in range(40):
        key, sub = jax.random.split(key)
        g_params, d_params, spectral, g_opt, d_opt, g_loss = step(g_params, d_params, spectral, g_opt, d_opt, sub, i)
        assert np.isfinite(float(g_loss))
    after = float(gap(d_params, spectral, jax.random.PRNGKey(99)))
    # D scores real images with their own caption above the same images with the other class's caption.
    assert after > 0.5 and after > before + 0.3, (before, after)
