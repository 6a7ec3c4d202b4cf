"""Noise schedules and sampler timestep lists against diffusers' schedulers (torch, CPU)."""

import numpy as np
import pytest

from llmimg_jax.errors import UserError
from llmimg_jax.generator.diffusion.samplers import sampler_timesteps
from llmimg_jax.generator.diffusion.schedules import make_schedule

diffusers = pytest.importorskip("diffusers")

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("name,beta_end", [("linear", 0.02), ("scaled_linear", 0.012), ("cosine", 0.02)])
def test_schedule_matches_diffusers(name, beta_end):
    ours = make_schedule(name, 1000, beta_start=0.00085 if name == "scaled_linear" else 1e-4, beta_end=beta_end)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAME[name],
                                  beta_start=0.00085 if name == "scaled_linear" else 1e-4, beta_end=beta_end)
    assert ours.betas.dtype == np.float32 and ours.alphas_cumprod.shape == (1000,)
    np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.alphas, ref.alphas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
    # SNR against float64 from diffusers' betas (float32 ᾱ would lose digits of 1 - ᾱ near t = 0).
    acp = np.cumprod(1 - ref.betas.double().numpy())
    np.testing.assert_allclose(ours.snr, acp / (1 - acp), rtol=5e-5)  # float32 betas differ ~1e-7


def test_cosine_betas_capped_and_float64_reference():
    sched = make_schedule("cosine", 50)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    i = np.arange(50, dtype=np.float64)
    expected = np.minimum(1 - f((i + 1) / 50) / f(i / 50), 0.999)
    np.testing.assert_allclose(sched.betas, expected, rtol=1e-6)
    assert sched.betas[-1] == np.float32(0.999)


@pytest.mark.parametrize("steps", [1, 7, 10, 50, 999])
@pytest.mark.parametrize("offset", [0, 1])
def test_leading_timesteps_match_ddim_and_ddpm(steps, offset):
    sched = make_schedule("linear", 1000)
    for cls in (diffusers.DDIMScheduler, diffusers.DDPMScheduler):
        ref = cls(num_train_timesteps=1000, steps_offset=offset, timestep_spacing="leading")
        ref.set_timesteps(steps)
        for sampler in ("ddim", "ddpm"):
            np.testing.assert_array_equal(sampler_timesteps(sched, sampler, steps, offset), ref.timesteps.numpy())


@pytest.mark.parametrize("steps", [1, 7, 30, 50, 999])
def test_trailing_timesteps_match_ddim_and_ddpm_and_start_at_the_last_step(steps):
    sched = make_schedule("linear", 1000)
    for cls in (diffusers.DDIMScheduler, diffusers.DDPMScheduler):
        ref = cls(num_train_timesteps=1000, timestep_spacing="trailing")
        ref.set_timesteps(steps)
        for sampler in ("ddim", "ddpm"):
            got = sampler_timesteps(sched, sampler, steps, spacing="trailing")
            np.testing.assert_array_equal(got, ref.timesteps.numpy())
            assert got[0] == 999


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 25])
def test_linspace_timesteps_match_dpm_solver(steps):
    sched = make_schedule("linear", 1000)
    ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000)
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(sampler_timesteps(sched, "dpm++2m", steps), ref.timesteps.numpy())


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="unknown noise schedule"):
        make_schedule("quadratic")
    with pytest.raises(UserError, match="unknown timestep spacing 'middle'"):
        sampler_timesteps(make_schedule("linear", 100), "ddim", 10, spacing="middle")
    with pytest.raises(UserError, match="steps=0"):
        sampler_timesteps(make_schedule("linear", 100), "ddim", 0)
    with pytest.raises(UserError, match="unknown sampler"):
        sampler_timesteps(make_schedule("linear", 100), "euler", 10)
