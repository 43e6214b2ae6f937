import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

from coursekit import models, samplers
from tests.helpers import tiny_scheduler, tiny_unet


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_equals_diffusers_ddim_pipeline(eta):
    unet, sched = tiny_unet(), tiny_scheduler()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(sched.config, timestep_spacing="trailing"))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), eta=eta,
                    num_inference_steps=10, output_type="np").images
    g = torch.Generator().manual_seed(0)
    x = samplers.ddim(unet, sched, samplers.noise(unet, 3, g), steps=10, eta=eta, generator=g, progress=False)
    ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    if eta == 0:
        np.testing.assert_array_equal(ours, expected)
    else:   # coursekit's alpha-bars are float64 at eta > 0, so that the first step cannot cancel below zero
        np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_ddpm_equals_diffusers_ddpm_pipeline():
    unet, sched = tiny_unet(), tiny_scheduler("linear")
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(sched.config, timestep_spacing="trailing"))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=20,
                    output_type="np").images
    g = torch.Generator().manual_seed(1)
    x = samplers.ddpm(unet, sched, samplers.noise(unet, 2, g), steps=20, generator=g, progress=False)
    np.testing.assert_array_equal((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), expected)


def test_ddpm_defaults_to_every_training_step():
    unet, sched = tiny_unet(), tiny_scheduler()
    seen = []
    samplers.ddpm(unet, sched, torch.randn(1, 1, 8, 8), callback=lambda step, state: seen.append(int(state["t"])), progress=False)
    assert seen == list(range(999, -1, -1))


def test_batched_cfg_equals_two_separate_calls():
    unet = tiny_unet(classes=3)
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor(500), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond = unet(x, t, class_labels=labels).sample
        free = unet(x, t, class_labels=torch.full((4,), 3)).sample
        guided = samplers.predict_noise(unet, x, t, labels, guidance_scale=4.0)
    torch.testing.assert_close(guided, free + 4.0 * (cond - free), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(samplers.predict_noise(unet, x, t, labels, 1.0), cond)


def test_conditional_model_without_labels_samples_unconditionally():
    unet, sched = tiny_unet(classes=3), tiny_scheduler()
    noise = torch.randn(2, 1, 8, 8)
    a = samplers.ddim(unet, sched, noise, steps=4, progress=False)
    b = samplers.ddim(unet, sched, noise, steps=4, labels=[3, 3], progress=False)
    torch.testing.assert_close(a, b)


def test_single_label_is_broadcast():
    unet, sched = tiny_unet(classes=3), tiny_scheduler()
    noise = torch.randn(2, 1, 8, 8)
    a = samplers.ddim(unet, sched, noise, steps=3, labels=1, guidance_scale=2.0, progress=False)
    b = samplers.ddim(unet, sched, noise, steps=3, labels=[1, 1], guidance_scale=2.0, progress=False)
    torch.testing.assert_close(a, b)


def test_trajectory_and_callback():
    unet, sched = tiny_unet(), tiny_scheduler()
    calls = []
    x, traj = samplers.ddim(unet, sched, torch.randn(2, 1, 8, 8), steps=5, trajectory=True,
                            callback=lambda step, state: calls.append(step), progress=False)
    assert calls == [0, 1, 2, 3, 4]
    assert traj.timesteps == [999, 799, 599, 399, 199]
    assert len(traj.xs) == len(traj.x0s) == 5 and traj.x0s[0].shape == x.shape


@pytest.mark.parametrize("steps", [1, 2, 4, 50])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_samplers_start_at_the_noisiest_step_for_any_count(name, steps):
    sched = samplers.scheduler_named(name, tiny_scheduler())
    sched.set_timesteps(steps)
    assert len(sched.timesteps) == steps and int(sched.timesteps[0]) == 999


def test_dpm_solver_clips_its_x0_estimate_as_ddim_does():
    sched = samplers.scheduler_named("dpm++", tiny_scheduler())
    assert sched.config.thresholding and sched.config.sample_max_value == 1.0
    latent = samplers.scheduler_named("dpm++", DDPMScheduler(clip_sample=False))
    assert not latent.config.thresholding, "no clipping for models whose config does not ask for it (latents)"


@pytest.mark.parametrize("steps", [1, 4, 50])
def test_karras_sigmas_start_at_sigma_max_or_the_schedules_top(steps):
    sched = samplers.scheduler_named("euler-karras", tiny_scheduler())   # cosine: top sigma about 20,000
    sched.set_timesteps(steps)
    assert float(sched.sigmas[0]) == pytest.approx(samplers.SIGMA_MAX, rel=1e-4)
    linear = samplers.scheduler_named("euler-karras", DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                                    beta_end=0.012))   # Stable Diffusion's: top 14.6
    linear.set_timesteps(steps)
    assert float(linear.sigmas[0]) == pytest.approx(14.6, abs=0.05)


def test_plain_euler_keeps_leading_spacing():
    sched = samplers.scheduler_named("euler", tiny_scheduler())
    sched.set_timesteps(4)
    assert [round(float(t)) for t in sched.timesteps] == [750, 500, 250, 0]


def test_one_ddim_step_denoises_instead_of_returning_the_clipped_noise():
    unet, sched = tiny_unet(), tiny_scheduler()
    seen = []
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    x = samplers.ddim(unet, sched, noise, steps=1, callback=lambda step, state: seen.append(int(state["t"])), progress=False)
    assert seen == [999]
    assert not torch.allclose(x, noise.clamp(-1, 1))
    old = []
    leading = samplers.sample(unet, DDIMScheduler.from_config(sched.config, timestep_spacing="leading"), noise, steps=1,
                              callback=lambda step, state: old.append(int(state["t"])), progress=False)
    assert old == [0]   # diffusers' default: the one step sits at t = 0 and returns about the clipped noise
    torch.testing.assert_close(leading, noise.clamp(-1, 1), atol=0.05, rtol=0)


@pytest.mark.parametrize("name", sorted(samplers.SCHEDULERS))
def test_every_named_scheduler_samples_finite_images(name):
    unet, sched = tiny_unet(), tiny_scheduler()
    s = samplers.scheduler_named(name, sched)
    assert s.config.beta_schedule == "squaredcos_cap_v2"
    x = samplers.sample(unet, s, torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
                        steps=6, generator=torch.Generator().manual_seed(1), progress=False)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_bad_inputs_get_clear_errors():
    unet, cond, sched = tiny_unet(), tiny_unet(classes=3), tiny_scheduler()
    with pytest.raises(models.ModelError, match=r"shape \(N, 1, H, W\)"):
        samplers.ddim(unet, sched, torch.randn(2, 3, 8, 8), progress=False)
    with pytest.raises(models.ModelError, match="unconditional"):
        samplers.ddim(unet, sched, torch.randn(2, 1, 8, 8), labels=[0, 1], progress=False)
    with pytest.raises(models.ModelError, match="class-conditional UNet"):
        samplers.ddim(unet, sched, torch.randn(2, 1, 8, 8), guidance_scale=3.0, progress=False)
    with pytest.raises(models.ModelError, match="3 labels for 2 samples"):
        samplers.ddim(cond, sched, torch.randn(2, 1, 8, 8), labels=[0, 1, 2], progress=False)
    with pytest.raises(models.ModelError, match=r"0\.\.2"):
        samplers.ddim(cond, sched, torch.randn(2, 1, 8, 8), labels=[0, 7], progress=False)
    with pytest.raises(samplers.SamplerError, match="eta must lie in"):
        samplers.ddim(unet, sched, torch.randn(2, 1, 8, 8), eta=2.0, progress=False)
    with pytest.raises(samplers.SamplerError, match="unknown scheduler 'heun'; known"):
        samplers.scheduler_named("heun", sched)


def test_noise_matches_the_pipelines_draw():
    unet = tiny_unet(size=8, channels=3)
    a = samplers.noise(unet, 2, torch.Generator().manual_seed(4))
    assert torch.equal(a, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)))
