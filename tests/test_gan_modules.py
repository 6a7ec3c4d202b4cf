"""GAN generator, discriminator, spectral norm and augmentation: shapes, names, conditioning, sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import run_with_devices
from llmimg_jax.errors import UserError
from llmimg_jax.generator.gan.augment import augment, max_shift
from llmimg_jax.generator.gan.discriminator import Discriminator, discriminator_config
from llmimg_jax.generator.gan.generator import Generator, generator_config, sample
from llmimg_jax.generator.gan.spectral_norm import SNDense, power_iteration

VOCAB = {"vocab", "embed", "mlp", "heads", "kv", "conv_in", "conv_out", "norm", "pos", "time"}
B, T, DIM = 4, 5, 16


def _text(seed, b=B):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    pooled = jax.random.normal(k1, (b, DIM))
    tokens = jax.random.normal(k2, (b, T, DIM))
    mask = jnp.array([[1, 1, 1, 0, 0]] * b, bool)  # last two tokens are padding
    return pooled, tokens, mask


@pytest.fixture(scope="module")
def gen():
    g = Generator(generator_config("tiny", channels=(32, 32, 16, 16)))
    pooled, tokens, mask = _text(0)
    z = jax.random.normal(jax.random.PRNGKey(1), (B, g.config.z_dim))
    variables = jax.jit(g.init)(jax.random.PRNGKey(2), z, pooled, tokens, mask)
    return g, variables, jax.jit(lambda v, *a: g.apply(v, *a))


@pytest.fixture(scope="module")
def disc():
    d = Discriminator(discriminator_config("tiny", channels=(16, 32, 32, 32), embed_dim=32))
    images = jnp.zeros((B, 32, 32, 3))
    pooled, _, _ = _text(0)
    variables = jax.jit(d.init)(jax.random.PRNGKey(3), images, pooled, pooled)
    return d, variables, jax.jit(lambda v, x, t: d.apply(v, x, t))


def _check_names(variables):
    leaves = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
        names, value = leaf.names, leaf.value
        assert len(names) == value.ndim and value.dtype == jnp.float32
        for i, name in enumerate(names):
            # Only the spatial dims of conv kernels [kh, kw, in, out] stay unnamed.
            assert name in VOCAB or (name is None and value.ndim == 4 and i < 2), (names, value.shape)


def test_generator_shapes_range_and_names(gen):
    g, variables, apply = gen
    pooled, tokens, mask = _text(0)
    z = jax.random.normal(jax.random.PRNGKey(5), (B, g.config.z_dim))
    out = apply(variables, z, pooled, tokens, mask)
    assert out.shape == (B, 32, 32, 3) and out.dtype == jnp.float32
    assert float(jnp.min(out)) >= -1.0 and float(jnp.max(out)) <= 1.0 and float(jnp.std(out)) > 1e-3
    _check_names(variables)
    # The tanh inputs G sows on request (gan.saturation_weight) are the ones its images come from.
    images, state = g.apply(variables, z, pooled, tokens, mask, mutable=["intermediates"])
    (logits,) = state["intermediates"]["synthesis"]["rgb_logits"]
    np.testing.assert_allclose(np.tanh(np.asarray(logits)), np.asarray(images), atol=1e-6)


def test_generator_64():
    g = Generator(generator_config("64", channels=(8, 8, 8, 8, 8), style_dim=16, z_dim=8, head_dim=4, groups=4))
    pooled, tokens, mask = _text(0, b=2)
    z = jax.random.normal(jax.random.PRNGKey(0), (2, g.config.z_dim))
    out, variables = jax.jit(lambda *a: g.init_with_output(jax.random.PRNGKey(0), *a))(z, pooled, tokens, mask)
    assert out.shape == (2, 64, 64, 3) and float(jnp.max(jnp.abs(out))) <= 1.0
    assert {"attn8", "attn16"} <= set(variables["params"]["synthesis"])
    _check_names(variables)


def test_generator_bfloat16_keeps_float32_params(gen):
    g, variables, apply = gen
    g16 = Generator(g.config, dtype=jnp.bfloat16)
    pooled, tokens, mask = _text(0)
    z = jax.random.normal(jax.random.PRNGKey(5), (B, g.config.z_dim))
    ref = apply(variables, z, pooled, tokens, mask)
    out = jax.jit(g16.apply)(variables, z, pooled, tokens, mask)
    assert out.dtype == jnp.float32
    assert float(jnp.mean(jnp.abs(out - ref))) < 0.05  # same function, bfloat16 rounding


def test_generator_text_conditioning(gen):
    g, variables, apply = gen
    pooled, tokens, mask = _text(0)
    z = jax.random.normal(jax.random.PRNGKey(5), (B, g.config.z_dim))
    base = np.asarray(apply(variables, z, pooled, tokens, mask))
    other_pooled = np.asarray(apply(variables, z, _text(1)[0], tokens, mask))
    other_tokens = np.asarray(apply(variables, z, pooled, tokens.at[:, 1].set(_text(1)[1][:, 1]), mask))
    padding_only = np.asarray(apply(variables, z, pooled, tokens.at[:, 3:].set(7.0), mask))
    assert np.abs(other_pooled - base).mean() > 1e-3
    assert np.abs(other_tokens - base).mean() > 1e-4
    np.testing.assert_array_equal(padding_only, base)


def test_truncation(gen):
    g, variables, _ = gen
    pooled, tokens, mask = _text(0)
    # One text, four draws of z.
    pooled, tokens = jnp.broadcast_to(pooled[:1], pooled.shape), jnp.broadcast_to(tokens[:1], tokens.shape)
    run = jax.jit(lambda rng, psi: sample(g, variables["params"], rng, pooled, tokens, mask, psi, 8),
                  static_argnums=1)
    free, mean = run(jax.random.PRNGKey(0), 1.0), run(jax.random.PRNGKey(0), 0.0)
    z = jax.random.normal(jax.random.split(jax.random.PRNGKey(0))[0], (B, g.config.z_dim))
    np.testing.assert_allclose(free, g.apply(variables, z, pooled, tokens, mask), atol=1e-5)
    spread = lambda x: float(jnp.std(x, axis=0).mean())
    assert spread(free) > 1e-2 and spread(mean) < 1e-5  # psi=0: every z gives the text's mean style
    with pytest.raises(UserError):
        sample(g, variables["params"], jax.random.PRNGKey(0), pooled, tokens, mask, truncation=1.5)


def test_discriminator_outputs_and_projection(disc):
    d, variables, apply = disc
    images = jax.random.uniform(jax.random.PRNGKey(4), (B, 32, 32, 3), minval=-1, maxval=1)
    pooled, _, _ = _text(0)
    out = apply(variables, images, pooled)
    assert out.logit.shape == (B,) and out.projection.shape == (B,)
    assert out.image_embedding.shape == (B, 32) and out.text_embedding.shape == (B, 32)
    assert out.mismatch_logit is None
    other = apply(variables, images, pooled[::-1])
    uncond = np.asarray(out.logit - out.projection)
    np.testing.assert_allclose(uncond, other.logit - other.projection, atol=1e-5)  # only the text term moves
    assert np.abs(np.asarray(other.projection - out.projection)).min() > 1e-4
    both = d.apply(variables, images, pooled, pooled[::-1])
    np.testing.assert_allclose(both.mismatch_logit, other.logit, rtol=1e-5, atol=1e-5)
    # K other captions per image ([K, B, D]): K rows of logits, each as if D had been called with that caption.
    shifted = pooled[np.roll(np.arange(B), 1)]
    several = d.apply(variables, images, pooled, jnp.stack([pooled[::-1], shifted]))
    assert several.mismatch_logit.shape == (2, B)
    np.testing.assert_allclose(several.mismatch_logit[0], other.logit, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(several.mismatch_logit[1], apply(variables, images, shifted).logit, rtol=1e-5,
                               atol=1e-5)
    _check_names(variables)
    # Training call: u is refined and stored; the matched and mismatched logits share one estimate.
    train = jax.jit(lambda v, x, t: d.apply(v, x, t, t, update=True, mutable=["spectral"]))
    out_t, new = train(variables, images, pooled)
    np.testing.assert_allclose(out_t.mismatch_logit, out_t.logit, rtol=1e-6, atol=1e-6)
    u_old, u_new = variables["spectral"]["stem"]["u"].value, new["spectral"]["stem"]["u"].value
    assert float(jnp.abs(u_new - u_old).max()) > 1e-4


def test_config_errors():
    with pytest.raises(UserError):
        generator_config("16")
    with pytest.raises(UserError):
        generator_config("tiny", channels=(32, 32))
    with pytest.raises(UserError):
        generator_config("tiny", attn_resolutions=(64,))
    with pytest.raises(UserError):
        discriminator_config("64", channels=(16, 16))
    with pytest.raises(UserError):
        discriminator_config("tiny", width=3)


def test_power_iteration_matches_svd():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(48, 24)) * 3.0
    top = np.linalg.svd(matrix, compute_uv=False)[0]
    u = jnp.asarray(rng.normal(size=24), jnp.float32)
    u, sigma = jax.jit(power_iteration, static_argnums=2)(jnp.asarray(matrix, jnp.float32), u, 200)
    assert abs(float(sigma) - top) / top < 1e-3
    _, sigma1 = power_iteration(jnp.asarray(matrix, jnp.float32), jnp.asarray(rng.normal(size=24), jnp.float32), 1)
    assert float(sigma1) < top * (1 + 1e-6)  # ||W u|| never overestimates


def test_spectral_dense_converges_in_jit():
    layer = SNDense(24, ("embed", "mlp"))
    x = jnp.ones((2, 48))
    variables = layer.init(jax.random.PRNGKey(0), x)

    @jax.jit
    def step(variables):
        _, new = layer.apply(variables, x, update=True, mutable=["spectral"])
        return {**variables, **new}

    for _ in range(150):  # one power iteration per training call
        variables = step(variables)
    kernel = np.asarray(nn.unbox(variables)["params"]["kernel"], np.float64)
    top = np.linalg.svd(kernel, compute_uv=False)[0]
    y = layer.apply(variables, x)  # eval: stored u, no update
    y_exact = x @ (kernel / top) + np.asarray(variables["params"]["bias"].value)
    np.testing.assert_allclose(y, y_exact, rtol=1e-3, atol=1e-4)
    u = np.asarray(nn.unbox(variables)["spectral"]["u"], np.float64)
    assert abs(np.linalg.norm(kernel @ u) - top) / top < 1e-3


def _left_square(b=8, s=32):
    x = -np.ones((b, s, s, 3), np.float32)
    x[:, 10:20, 2:12, 0] = 1.0  # a red square in the left half
    return jnp.asarray(x)


def test_augment_keeps_left_and_bounds_translation():
    x = _left_square()
    run = jax.jit(augment)
    shift = max_shift(32)
    assert shift == 2
    for seed in range(6):
        y = np.asarray(run(x, jax.random.PRNGKey(seed)))
        assert y.shape == x.shape
        red = y[..., 0] - y[..., 1]  # the square is where red exceeds green
        for img in red:
            rows, cols = np.nonzero(img > 0.5 * img.max())
            assert cols.max() < 16  # still in the left half: no flip
            assert abs(rows.min() - 10) <= shift and abs(cols.min() - 2) <= shift
            assert rows.max() - rows.min() == 9 and cols.max() - cols.min() == 9  # size kept, nothing cut


def test_augment_same_key_same_op_and_differentiable():
    s = 32
    real = np.full((8, s, s, 3), -1.0, np.float32)
    fake = np.full((8, s, s, 3), -1.0, np.float32)
    real[:, 16, 16] = 1.0
    fake[:, 8, 20] = 1.0
    key = jax.random.PRNGKey(7)
    ar, af = np.asarray(augment(jnp.asarray(real), key)), np.asarray(augment(jnp.asarray(fake), key))
    pos = lambda a: np.array([np.unravel_index(np.argmax(img.sum(-1)), img.shape[:2]) for img in a])
    moves_real, moves_fake = pos(ar) - [16, 16], pos(af) - [8, 20]
    np.testing.assert_array_equal(moves_real, moves_fake)
    assert np.abs(moves_real).max() <= 2 and np.abs(moves_real).max() > 0
    # Same background treatment: the colour jitter depends on the key, not on which batch it is.
    np.testing.assert_allclose(ar[:, 0, 0], af[:, 0, 0], atol=1e-5)
    grad = jax.grad(lambda x: jnp.sum(augment(x, key) ** 2))(_left_square())
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0
    with pytest.raises(UserError):
        augment(_left_square(), key, translation=0.25)


SHARDING_CODE = r"""
import json
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from llmimg_jax.generator.gan.generator import Generator, generator_config
from llmimg_jax.generator.gan.discriminator import Discriminator, discriminator_config
from llmimg_jax.generator.gan import losses

RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("conv_in", "fsdp"), ("mlp", "tensor"),
         ("heads", "tensor"), ("conv_out", "tensor"))
g = Generator(generator_config("tiny", channels=(32, 32, 16, 16)))
d = Discriminator(discriminator_config("tiny", channels=(16, 32, 32, 32), embed_dim=32))
b, t, dim = 8, 6, 16
ks = jax.random.split(jax.random.PRNGKey(0), 6)
z = jax.random.normal(ks[0], (b, g.config.z_dim))
pooled = jax.random.normal(ks[1], (b, dim))
tokens = jax.random.normal(ks[2], (b, t, dim))
mask = jnp.arange(t)[None] < jnp.array([6, 5, 4, 3, 6, 5, 4, 2])[:, None]
real = jax.random.uniform(ks[3], (b, 32, 32, 3), minval=-1, maxval=1)
gvars = jax.jit(g.init)(ks[4], z, pooled, tokens, mask)
dvars = jax.jit(d.init)(ks[5], real, pooled, pooled)

def loss_fn(gp, dv, z, pooled, tokens, mask, real):
    fake = g.apply(gp, z, pooled, tokens, mask)
    out, _ = d.apply(dv, jnp.concatenate([real, fake]), jnp.concatenate([pooled, pooled]),
                     jnp.concatenate([losses.mismatched_text(pooled)] * 2), update=True, mutable=["spectral"])
    d_loss = losses.d_hinge_loss(out.logit[:b], out.logit[b:], out.mismatch_logit[:b])
    return d_loss, losses.g_hinge_loss(out.logit[b:])

inputs = (z, pooled, tokens, mask, real)
params = (nn.unbox(gvars), nn.unbox(dvars))
single = jax.jit(loss_fn)(*params, *inputs)

mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))

def shardings(boxed):
    specs = nn.get_partition_spec(boxed)
    shard = nn.logical_to_mesh_sharding(specs, mesh, RULES)
    def fit(s, x):  # replicate a dimension that its mesh axes do not divide
        parts = []
        for dim, axes in zip(x.shape, tuple(s.spec) + (None,) * (x.ndim - len(s.spec))):
            size = int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else (axes or ()))]))
            parts.append(axes if dim % size == 0 else None)
        return NamedSharding(mesh, P(*parts))
    return jax.tree.map(fit, shard, nn.unbox(boxed))

g_sh, d_sh = shardings(gvars), shardings(dvars)
with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    jax.eval_shape(g.init, ks[4], z, pooled, tokens, mask)  # initialising under the rules works too
    jax.eval_shape(d.init, ks[5], real, pooled, pooled)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    in_sh = (g_sh, d_sh) + (batch,) * len(inputs)
    args = jax.device_put(params + inputs, in_sh)
    sharded = jax.jit(loss_fn, in_shardings=in_sh)(*args)
    n_sharded = sum(len(set(a.sharding.spec) - {None}) > 0 for a in jax.tree.leaves(args[:2]))
print(json.dumps(dict(single=[float(x) for x in single], sharded=[float(x) for x in sharded],
                      n_sharded=n_sharded, devices=len(jax.devices()))))
"""


def test_hinge_losses_sharded_match_single_device():
    result = run_with_devices(SHARDING_CODE, num_devices=8)
    assert result["devices"] == 8 and result["n_sharded"] > 10
    np.testing.assert_allclose(result["sharded"], result["single"], rtol=1e-4, atol=1e-5)
    assert abs(result["single"][0]) > 1e-3
