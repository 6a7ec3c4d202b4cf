"""U-Net: shapes, GroupNorm against nn.GroupNorm, cross-attention masking, bf16, logical names, sharded loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from llmimg_jax.errors import UserError
from llmimg_jax.generator.layers import GroupNorm
from llmimg_jax.generator.diffusion.unet import PRESETS, UNet, unet_config
from llmimg_jax.training.sharding import gather_for_compute
from tests.helpers import run_with_devices

# Small enough to compile quickly on a busy 2-core machine; attention at 4x4 and in the middle.
CONFIG = unet_config("tiny", base_channels=8, attention_resolutions=(4,))
B, S, T, D = 2, 8, 5, 12


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T), bool)
    mask[0, 3:] = False  # example 0 has two padding tokens
    return (jnp.asarray(rng.uniform(-1, 1, (B, S, S, 3)), jnp.float32), jnp.array([3, 700]),
            jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32), jnp.asarray(mask),
            jnp.asarray(rng.standard_normal((B, D)), jnp.float32))


def fan_in_random(shape, name, rng):
    """Kernels ~ N(0, 1/fan_in) (activations stay O(1)); norm scales ~ 1, biases small."""
    if len(shape) == 1:
        return (name == "scale") + rng.normal(0, 0.1, shape).astype(np.float32)
    return rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape).astype(np.float32)


def random_params(unet, *inputs, seed=0):
    """Random float32 params of the right shapes (from eval_shape; much cheaper than compiling init here)."""
    abstract = nn.unbox(jax.eval_shape(unet.init, jax.random.key(0), *inputs))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, l: jnp.asarray(fan_in_random(l.shape, path[-1].key, rng)), abstract)


@pytest.fixture(scope="module")
def setup():
    unet = UNet(CONFIG)
    inputs = _inputs()
    return unet, inputs, random_params(unet, *inputs)


def test_group_norm_matches_flax():
    x = jnp.asarray(np.random.default_rng(0).normal(0.5, 2.0, (3, 6, 6, 12)), jnp.float32)
    ours = GroupNorm(4)
    params = ours.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + jnp.asarray(np.random.default_rng(1).normal(0, 0.3, p.shape), p.dtype),
                          nn.unbox(params))
    ref = nn.GroupNorm(num_groups=4, epsilon=1e-6).apply(params, x)
    np.testing.assert_allclose(ours.apply(params, x), ref, atol=1e-5, rtol=0)
    # and against a float64 numpy reference
    x64 = np.asarray(x, np.float64).reshape(3, 36, 4, 3)
    y64 = (x64 - x64.mean((1, 3), keepdims=True)) / np.sqrt(x64.var((1, 3), keepdims=True) + 1e-6)
    y64 = y64.reshape(3, 6, 6, 12) * np.asarray(params["params"]["scale"]) + np.asarray(params["params"]["bias"])
    np.testing.assert_allclose(ours.apply(params, x), y64, atol=1e-5, rtol=0)


def test_output_shape_and_timestep_types(setup):
    unet, (x, t, ctx, mask, pooled), params = setup
    out = unet.apply({"params": params}, x, t, ctx, mask, pooled)
    assert out.shape == (B, S, S, 3) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    out_f = unet.apply({"params": params}, x, t.astype(jnp.float32), ctx, mask, pooled)
    np.testing.assert_allclose(out_f, out, atol=1e-5)
    assert float(jnp.abs(unet.apply({"params": params}, x, t + 100, ctx, mask, pooled) - out).max()) > 1e-3


def test_cross_attention_uses_context_and_respects_mask(setup):
    unet, (x, t, ctx, mask, pooled), params = setup
    apply = jax.jit(lambda c, m, p: unet.apply({"params": params}, x, t, c, m, p))
    base = apply(ctx, mask, pooled)
    # Changing a valid token (example 0, token 1) changes example 0's output.
    changed = apply(ctx.at[0, 1].add(1.0), mask, pooled)
    assert float(jnp.abs(changed[0] - base[0]).max()) > 1e-3
    np.testing.assert_allclose(changed[1], base[1], atol=1e-6)  # examples are independent
    # Changing only masked-out tokens (example 0, tokens 3, 4) changes nothing.
    padded = apply(ctx.at[0, 3:].set(100.0), mask, pooled)
    np.testing.assert_allclose(padded, base, atol=1e-6, rtol=0)
    # The pooled vector is used too.
    assert float(jnp.abs(apply(ctx, mask, pooled + 1.0) - base).max()) > 1e-3


def test_bfloat16_compute_keeps_float32_params(setup):
    _, inputs, params = setup
    unet16 = UNet(unet_config("tiny", base_channels=8, attention_resolutions=(4,), dtype="bfloat16"))
    abstract = nn.unbox(jax.eval_shape(unet16.init, jax.random.key(0), *inputs))["params"]
    assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(abstract))
    out16 = unet16.apply({"params": params}, *inputs)
    out32 = UNet(CONFIG).apply({"params": params}, *inputs)
    assert out16.dtype == jnp.float32 and np.isfinite(np.asarray(out16)).all()
    # bf16 has ~3 significant digits; the result must still track the float32 one.
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert rel < 0.05, rel


ALLOWED = {None, "embed", "heads", "kv", "mlp", "conv_in", "conv_out", "time", "norm", "pos"}


@pytest.mark.parametrize("preset,size", [("tiny", 16), ("small", 32), ("base64", 64), ("patched", 32)])
def test_every_param_has_logical_names(preset, size):
    unet = UNet(PRESETS[preset] if preset in PRESETS else unet_config("small", patch_size=2, pos_embed=True))
    boxed = jax.eval_shape(unet.init, jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1,)),
                           jnp.zeros((1, T, D)), jnp.ones((1, T), bool), jnp.zeros((1, D)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned))
    assert len(leaves) > 20
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= ALLOWED, leaf.names
        assert any(n is not None for n in leaf.names)
        assert leaf.value.dtype == jnp.float32
    convs = [l for l in leaves if l.value.ndim == 4]
    assert convs and all(l.names == (None, None, "conv_in", "conv_out") for l in convs)


def test_patches_map_back_to_their_pixels_and_positions_are_learned():
    """patch_size=2: output channel (a * 2 + b) * 3 + c of a feature-map cell is pixel (2i + a, 2j + b), colour c.
    Zero every parameter but conv_out's bias and the output is that bias laid out as 2x2 patches."""
    unet = UNet(unet_config("tiny", patch_size=2, pos_embed=True))
    x, t, ctx, mask = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)), jnp.zeros((1, T, D)), jnp.ones((1, T), bool)
    params = nn.unbox(unet.init(jax.random.key(0), x, t, ctx, mask)["params"])
    # 16 px / patch 2 = 8 x 8 feature maps of 16 channels at the top level, 4 x 4 x 32 in the middle
    assert params["down0_attn0"]["pos_embed"].shape == (8 * 8, 16)
    assert params["mid_attn"]["pos_embed"].shape == (4 * 4, 32)
    zeroed = jax.tree.map(jnp.zeros_like, params)
    bias = jnp.arange(12, dtype=jnp.float32)
    zeroed["conv_out"]["bias"] = bias
    out = np.asarray(unet.apply({"params": zeroed}, x, t, ctx, mask))
    expected = np.asarray(bias).reshape(2, 2, 3)  # [a, b, c]
    for i, j in [(0, 0), (3, 5), (7, 7)]:
        np.testing.assert_array_equal(out[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2], expected)
    with pytest.raises(ValueError, match="patch_size"):
        unet.apply({"params": params}, jnp.zeros((1, 14, 14, 3)), t, ctx, mask)


def test_config_errors():
    with pytest.raises(UserError, match="norm_groups"):
        unet_config("tiny", base_channels=10)
    with pytest.raises(UserError, match="unknown U-Net preset"):
        unet_config("huge")
    with pytest.raises(UserError, match="unknown U-Net config field"):
        unet_config("tiny", width=3)
    with pytest.raises(UserError, match="patch_size"):
        unet_config("tiny", patch_size=0)


@pytest.fixture(scope="module")
def sharded_loss_result():
    """Loss and gradients of the diffusion loss, single-device vs data=2, fsdp=2, tensor=2 (one subprocess), with
    the shardings and context of the training step; also one dense layer in the shape XLA gets wrong by itself."""
    return run_with_devices("""
        import json, jax, jax.numpy as jnp, numpy as np, flax.linen as nn
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from llmimg_jax.generator.layers import dense
        from llmimg_jax.generator.diffusion.loss import diffusion_loss
        from llmimg_jax.generator.diffusion.schedules import make_schedule
        from llmimg_jax.generator.diffusion.unet import UNet, unet_config, unet_model_fn
        from llmimg_jax.training.config import DEFAULT_SHARDING_RULES as RULES
        from llmimg_jax.training.sharding import batch_sharding, gather_for_compute, param_shardings
        from tests.test_unet import fan_in_random

        unet = UNet(unet_config("tiny", base_channels=8, attention_resolutions=(4,)))
        model_fn = unet_model_fn(unet)
        rng = np.random.default_rng(0)
        mask = np.ones((8, 6), bool); mask[::2, 4:] = False
        cond = {"context": rng.standard_normal((8, 6, 16)).astype(np.float32), "context_mask": mask,
                "pooled": rng.standard_normal((8, 16)).astype(np.float32)}
        x0 = rng.uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)
        boxed = jax.eval_shape(unet.init, jax.random.key(0), x0, np.zeros(8), **cond)["params"]
        is_box = lambda l: isinstance(l, nn.LogicallyPartitioned)
        params = jax.tree_util.tree_map_with_path(lambda path, b: fan_in_random(b.value.shape, path[-1].key, rng),
                                                  boxed, is_leaf=is_box)

        mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
        shardings = param_shardings(boxed, mesh, RULES)
        specs = [s.spec for s in jax.tree.leaves(shardings)]
        n_2d = sum("fsdp" in spec and "tensor" in spec for spec in specs)
        batch = batch_sharding(mesh, RULES)
        schedule = make_schedule("cosine", 1000)
        loss_fn = lambda p, x, c, k: diffusion_loss(model_fn, p, x, c, k, schedule, "v", 5.0, p_uncond=0.5)
        key = jax.random.key(3)
        single = jax.jit(loss_fn)(params, x0, cond, key)
        single_grad = jax.jit(jax.grad(loss_fn))(params, x0, cond, key)
        p_sh = jax.device_put(params, shardings)
        x_sh = jax.device_put(x0, batch)
        c_sh = {k: jax.device_put(v, batch) for k, v in cond.items()}
        with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
            sharded = jax.jit(loss_fn)(p_sh, x_sh, c_sh, key)
            sharded_grad = jax.jit(jax.grad(loss_fn))(p_sh, x_sh, c_sh, key)
        gdiff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(single_grad),
                                                                jax.tree.leaves(sharded_grad)))

        # A kernel [mlp -> tensor, embed -> fsdp] applied to rows batch-sharded over (data, fsdp) and features over
        # tensor, output wanted the same way: XLA alone swaps the rows of devices (0, 1) and (1, 0).
        layer = dense(16, "mlp", "embed", "probe", jnp.float32)
        h = rng.standard_normal((8, 16)).astype(np.float32)
        w = {"kernel": rng.standard_normal((16, 16)).astype(np.float32), "bias": np.zeros(16, np.float32)}
        rows = NamedSharding(mesh, P(("data", "fsdp"), "tensor"))
        w_sh = jax.device_put(w, {"kernel": NamedSharding(mesh, P("tensor", "fsdp")),
                                  "bias": NamedSharding(mesh, P("fsdp"))})
        apply = lambda w, h: layer.apply({"params": w}, h)
        with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
            dense_out = jax.jit(apply, out_shardings=rows)(w_sh, jax.device_put(h, rows))
            kernel = jax.device_put(np.zeros((3, 3, 8, 16), np.float32),
                                    NamedSharding(mesh, P(None, None, "fsdp", "tensor")))
            gathered = jax.jit(lambda k: gather_for_compute(k, (None, None, "conv_in", "conv_out")))(kernel)
        dense_err = float(np.abs(np.asarray(dense_out) - h @ w["kernel"]).max())
        print(json.dumps({"single": float(single), "sharded": float(sharded), "n_2d": n_2d, "gdiff": gdiff,
                          "gmax": max(float(jnp.abs(g).max()) for g in jax.tree.leaves(single_grad)),
                          "dense_err": dense_err, "gathered_spec": str(gathered.sharding.spec)}))
    """)


def test_sharded_diffusion_loss_equals_single_device(sharded_loss_result):
    result = sharded_loss_result
    assert result["n_2d"] > 10, result  # many kernels sharded over both fsdp and tensor
    assert np.isfinite(result["single"]) and result["single"] > 0
    assert abs(result["single"] - result["sharded"]) <= 1e-5 * abs(result["single"]), result


def test_sharded_diffusion_grad_equals_single_device(sharded_loss_result):
    result = sharded_loss_result
    assert result["gdiff"] <= 1e-5 * result["gmax"], result


def test_dense_on_3d_mesh_gathers_its_kernel(sharded_loss_result):
    assert sharded_loss_result["dense_err"] < 1e-4, sharded_loss_result
    # the kernel as used keeps its tensor sharding and is gathered over fsdp (a batch axis)
    assert sharded_loss_result["gathered_spec"] == str(P(None, None, None, "tensor")), sharded_loss_result
    # without a mesh and rules in context it is the parameter itself
    kernel = jnp.ones((3, 3, 8, 16))
    assert gather_for_compute(kernel, (None, None, "conv_in", "conv_out")) is kernel
