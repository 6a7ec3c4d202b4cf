"""Samplers: single-step parity with diffusers' schedulers, analytic Gaussian sanity, guidance, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llmimg_jax.errors import UserError
from llmimg_jax.generator.diffusion import samplers
from llmimg_jax.generator.diffusion.schedules import make_schedule
from tests.helpers import run_with_devices

diffusers = pytest.importorskip("diffusers")

PRED = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
SCHED = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def _reference(sampler, schedule, prediction, **kw):
    common = dict(num_train_timesteps=1000, beta_schedule=SCHED[schedule], prediction_type=PRED[prediction])
    if sampler == "ddpm":
        return diffusers.DDPMScheduler(variance_type="fixed_small", **common, **kw)
    if sampler == "ddim":
        return diffusers.DDIMScheduler(set_alpha_to_one=True, **common, **kw)
    return diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                 solver_type="midpoint", lower_order_final=True, **common, **kw)


def _run_both(sampler, schedule, prediction, steps, eta=0.0, offset=0, clip=False, threshold=None, scale=1.0,
              spacing="leading"):
    """Runs `steps` consecutive steps of ours and diffusers' on the same fixed model outputs and noises."""
    kw = {} if sampler == "dpm++2m" else {"timestep_spacing": spacing}
    if sampler != "dpm++2m":
        kw["clip_sample"] = clip
        kw["steps_offset"] = offset
    if threshold is not None:
        kw.update(thresholding=True, dynamic_thresholding_ratio=threshold, sample_max_value=1e4)
    ref = _reference(sampler, schedule, prediction, **kw)
    ref.set_timesteps(steps)
    sched = make_schedule(schedule, 1000)
    plan = samplers.make_plan(sched, sampler, steps, eta=eta, steps_offset=offset, spacing=spacing)
    np.testing.assert_array_equal(plan.timesteps, ref.timesteps.numpy())

    rng = np.random.default_rng(0)
    shape = (2, 3, 4, 4)
    x_ref = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    x = jnp.asarray(x_ref.numpy())
    x0_prev = jnp.zeros_like(x)
    for i, t in enumerate(ref.timesteps):
        out = rng.standard_normal(shape).astype(np.float32) * scale
        noise = rng.standard_normal(shape).astype(np.float32)
        if sampler == "ddpm":
            # DDPM draws its noise from the generator; feed the same tensor through a patched randn.
            orig = diffusers.schedulers.scheduling_ddpm.randn_tensor
            diffusers.schedulers.scheduling_ddpm.randn_tensor = lambda *a, **k: torch.from_numpy(noise)
            try:
                x_ref = ref.step(torch.from_numpy(out), t, x_ref).prev_sample
            finally:
                diffusers.schedulers.scheduling_ddpm.randn_tensor = orig
        elif sampler == "ddim":
            x_ref = ref.step(torch.from_numpy(out), t, x_ref, eta=eta, use_clipped_model_output=True,
                             variance_noise=torch.from_numpy(noise) if eta > 0 else None).prev_sample
        else:
            x_ref = ref.step(torch.from_numpy(out), t, x_ref).prev_sample
        x, x0_prev = samplers.denoise_step(plan.row(i), x, jnp.asarray(out), x0_prev, jnp.asarray(noise),
                                           prediction=prediction, clip_x0=clip, thresholding=threshold)
        scale_ref = max(1.0, float(np.abs(x_ref.numpy()).max()))
        np.testing.assert_allclose(np.asarray(x) / scale_ref, x_ref.numpy() / scale_ref, rtol=0, atol=1e-5,
                                   err_msg=f"step {i} (t={int(t)})")


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler,eta,steps", [("ddpm", 0.0, 10), ("ddim", 0.0, 10), ("ddim", 0.7, 10),
                                               ("dpm++2m", 0.0, 8), ("dpm++2m", 0.0, 20)])
def test_steps_match_diffusers(sampler, eta, steps, prediction):
    _run_both(sampler, "linear", prediction, steps, eta=eta)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_steps_match_diffusers_cosine_x0_offset(sampler):
    _run_both(sampler, "cosine", "x0", 6, offset=0 if sampler == "dpm++2m" else 1, eta=0.3 * (sampler == "ddim"))


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_trailing_spacing_matches_diffusers(sampler, eta):
    _run_both(sampler, "cosine", "v", 7, eta=eta, spacing="trailing")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clipping_matches_diffusers(sampler):
    _run_both(sampler, "scaled_linear", "eps", 5, clip=True, scale=2.0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_dynamic_thresholding_matches_diffusers(sampler):
    _run_both(sampler, "linear", "v", 5, threshold=0.9, scale=3.0)


def test_dynamic_threshold_float64_reference():
    x0 = np.random.default_rng(1).standard_normal((3, 5, 5, 3)) * np.array([0.3, 2.0, 5.0])[:, None, None, None]
    s = np.maximum(np.quantile(np.abs(x0.reshape(3, -1)), 0.95, axis=1), 1.0)[:, None, None, None]
    np.testing.assert_allclose(samplers.dynamic_threshold(jnp.asarray(x0, jnp.float32), 0.95),
                               np.clip(x0, -s, s) / s, atol=1e-6)


# ---------------------------------------------------------------- analytic Gaussian data
MU, SD = np.array([0.5, -1.0]), np.array([1.0, 0.5])


def _gaussian_model(schedule, prediction):
    """The exact model for x0 ~ N(MU, SD²) per dimension: E[ε | x_t] = s (x_t - a MU) / (a² SD² + s²)."""
    acp = jnp.asarray(schedule.alphas_cumprod)

    def model_fn(params, x, t, cond):
        a, s = jnp.sqrt(acp[t])[:, None], jnp.sqrt(1 - acp[t])[:, None]
        eps = s * (x - a * MU) / (a ** 2 * SD ** 2 + s ** 2)
        x0 = (x - s * eps) / a
        return {"eps": eps, "v": a * eps - s * x0, "x0": x0}[prediction].astype(jnp.float32)
    return model_fn


_COND = {"context": jnp.zeros((4096, 1, 1)), "context_mask": jnp.ones((4096, 1), bool)}


@pytest.mark.parametrize("sampler,eta,prediction", [("ddpm", 0.0, "eps"), ("ddim", 0.0, "eps"), ("ddim", 0.5, "v"),
                                                    ("dpm++2m", 0.0, "eps"), ("dpm++2m", 0.0, "v")])
def test_gaussian_data_moments(sampler, eta, prediction):
    schedule = make_schedule("linear")
    model_fn = _gaussian_model(schedule, prediction)
    errors = []
    for steps in (5, 25, 250):
        out = np.asarray(samplers.sample(model_fn, None, (4096, 2), _COND, None, jax.random.key(1),
                                         schedule=schedule, sampler=sampler, steps=steps, guidance=1.0, eta=eta,
                                         prediction=prediction, clip_x0=False), np.float64)
        # Mean error in units of SD plus relative std error; sampling noise of each is ~1/64.
        errors.append(np.abs((out.mean(0) - MU) / SD).max() + np.abs(out.std(0) / SD - 1).max())
    # More steps never make it worse (up to sampling noise), and 250 steps are right within ~3 noise units.
    assert errors[1] <= errors[0] + 0.02 and errors[2] <= errors[1] + 0.02, errors
    assert errors[2] < 0.08, errors
    assert errors[0] > errors[2], errors  # the check can tell discretisation error apart


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_a_clipped_overshoot_steps_towards_the_clipped_image(sampler, spacing):
    """From x = 0, a model output of x0 = +3 (guidance overshoots so), clipped to +1, must move x towards +1 at
    every step. DDIM with the model's own ε, not one re-derived from the clipped x0, moves it towards -1 at the
    noisiest steps."""
    plan = samplers.make_plan(make_schedule("cosine"), sampler, 50, spacing=spacing)
    x = jnp.zeros((1, 4))
    for i in range(len(plan.timesteps)):
        x_prev, _ = samplers.denoise_step(plan.row(i), x, jnp.full_like(x, 3.0), jnp.zeros_like(x), jnp.zeros_like(x),
                                          prediction="x0", clip_x0=True, thresholding=None)
        assert float(x_prev.min()) > 0, (i, int(plan.timesteps[i]), float(x_prev.min()))


# ---------------------------------------------------------------- guidance
def _cond(batch, tokens=3, width=4, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, tokens), bool)
    mask[:, -1] = False
    return {"context": jnp.asarray(rng.standard_normal((batch, tokens, width)), jnp.float32),
            "context_mask": jnp.asarray(mask), "pooled": jnp.asarray(rng.standard_normal((batch, width)), jnp.float32)}


def test_guidance_is_one_batched_call():
    calls = []

    def model_fn(params, x, t, cond):
        calls.append(x.shape[0])
        text = jnp.sum(cond["context"] * cond["context_mask"][..., None], axis=(1, 2)) + cond["pooled"].sum(-1)
        return params * x + text[:, None, None, None] + 0.001 * t[:, None, None, None]

    cond, uncond = _cond(3), _cond(1, seed=1)
    x, t = jnp.ones((3, 2, 2, 3)), jnp.array([10, 20, 30])
    got = samplers.guided_output(model_fn, 0.5, x, t, cond, uncond, 4.0)
    assert calls == [6]
    u = model_fn(0.5, x, t, jax.tree.map(lambda a: jnp.broadcast_to(a, (3,) + a.shape[1:]), uncond))
    c = model_fn(0.5, x, t, cond)
    np.testing.assert_allclose(got, u + 4.0 * (c - u), rtol=1e-6)

    calls.clear()
    schedule = make_schedule("linear", 100)
    out = samplers.sample(model_fn, 0.5, (3, 2, 2, 3), cond, None, jax.random.key(0), schedule=schedule,
                          sampler="ddim", steps=4, guidance=2.0)
    assert calls == [6], calls  # traced once inside the scan, with the concatenated batch
    assert out.shape == (3, 2, 2, 3) and float(jnp.abs(out).max()) <= 1.0
    calls.clear()
    samplers.sample(model_fn, 0.5, (3, 2, 2, 3), cond, None, jax.random.key(0), schedule=schedule,
                    sampler="dpm++2m", steps=4, guidance=1.0)
    assert calls == [3], calls  # guidance 1: no unconditional half


def test_sample_user_errors():
    schedule = make_schedule("linear", 100)
    with pytest.raises(UserError, match="prediction"):
        samplers.sample(None, None, (1, 2), _cond(1), None, jax.random.key(0), schedule=schedule, prediction="e")
    with pytest.raises(UserError, match="thresholding"):
        samplers.sample(None, None, (1, 2), _cond(1), None, jax.random.key(0), schedule=schedule,
                        thresholding=99.5)


# ---------------------------------------------------------------- sharding
def test_sharded_sampling_equals_unsharded():
    result = run_with_devices("""
        import json, jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from llmimg_jax.generator.diffusion import samplers
        from llmimg_jax.generator.diffusion.schedules import make_schedule
        from llmimg_jax.generator.diffusion.unet import UNet, unet_config, unet_model_fn
        import flax.linen as nn

        unet = UNet(unet_config("tiny", base_channels=8, attention_resolutions=(4,)))
        model_fn = unet_model_fn(unet)
        rng = np.random.default_rng(0)
        mask = np.ones((8, 5), bool); mask[:, 3:] = False
        cond = {"context": jnp.asarray(rng.standard_normal((8, 5, 12)), jnp.float32),
                "context_mask": jnp.asarray(mask), "pooled": jnp.asarray(rng.standard_normal((8, 12)), jnp.float32)}
        params = nn.unbox(jax.jit(unet.init)(jax.random.key(0), jnp.zeros((8, 8, 8, 3)),
                                             jnp.zeros((8,), jnp.int32), **cond))["params"]
        kw = dict(schedule=make_schedule("linear", 1000), sampler="ddpm", steps=3, guidance=2.5)
        plain = samplers.sample(model_fn, params, (8, 8, 8, 3), cond, None, jax.random.key(7), **kw)
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
        put = lambda a: jax.device_put(a, NamedSharding(mesh, P(("data", "fsdp"), *([None] * (a.ndim - 1)))))
        sharded = samplers.sample(model_fn, params, (8, 8, 8, 3), jax.tree.map(put, cond), None,
                                  jax.random.key(7), **kw)
        print(json.dumps({"diff": float(jnp.abs(plain - sharded).max()), "spec": str(sharded.sharding.spec),
                          "std": float(plain.std())}))
    """)
    # Per-device batch changes XLA CPU convolution blocking: float32 rounding (~1e-6), amplified by 1/sqrt(ᾱ).
    assert result["diff"] < 1e-4, result
    assert "data" in result["spec"] and "fsdp" in result["spec"], result
    assert result["std"] > 0.05, result
