"""Every formula Unit 1 teaches, checked numerically against first principles and diffusers."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from coursekit import metrics


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alpha_bar_is_the_product_of_one_minus_beta(schedule):
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)
    manual = np.cumprod(1 - s.betas.double().numpy())
    np.testing.assert_allclose(s.alphas_cumprod.double().numpy(), manual, rtol=1e-5)


def test_linear_and_scaled_linear_betas():
    lin = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    np.testing.assert_allclose(lin.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-5)
    sl = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    np.testing.assert_allclose(sl.betas.numpy(), np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, rtol=1e-5)


def test_cosine_schedule_follows_nichol_and_dhariwal():
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    T, off = 1000, 0.008
    f = lambda t: math.cos((t / T + off) / (1 + off) * math.pi / 2) ** 2
    alpha_bar = np.array([f(t + 1) / f(0) for t in range(T)])
    betas = np.minimum(1 - np.array([f(t + 1) / f(t) for t in range(T)]), 0.999)
    np.testing.assert_allclose(s.betas.double().numpy(), betas, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(s.alphas_cumprod.double().numpy()[:-1], alpha_bar[:-1], rtol=1e-3, atol=1e-6)


def test_closed_form_q_xt_given_x0_has_the_right_mean_and_variance():
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7)
    for t in [10, 300, 900]:
        xt = s.add_noise(x0, torch.randn(x0.shape, generator=g), torch.full(x0.shape, t))
        ab = s.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=5e-3)
        assert xt.var().item() == pytest.approx(1 - ab, rel=2e-2)


def test_one_jump_equals_many_small_steps_in_distribution():
    """Applying x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z step by step gives q(x_t | x_0)."""
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    g = torch.Generator().manual_seed(1)
    x = torch.full((100_000,), -0.5)
    for t in range(400):
        x = (1 - s.betas[t]).sqrt() * x + s.betas[t].sqrt() * torch.randn(x.shape, generator=g)
    ab = s.alphas_cumprod[399].item()
    assert x.mean().item() == pytest.approx(math.sqrt(ab) * -0.5, abs=5e-3)
    assert x.var().item() == pytest.approx(1 - ab, rel=2e-2)


def test_variance_preserving_and_the_std_variance_mistake():
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(200_000, generator=g), torch.randn(200_000, generator=g)
    ab = s.alphas_cumprod[250]
    right = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    wrong = ab * x0 + (1 - ab) * eps
    assert right.var().item() == pytest.approx(1.0, abs=0.01)
    assert wrong.var().item() == pytest.approx((ab**2 + (1 - ab) ** 2).item(), abs=0.01)
    assert wrong.var().item() < 0.6


def test_snr_is_alpha_bar_over_one_minus_alpha_bar():
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ab = s.alphas_cumprod
    sigma = ((1 - ab) / ab).sqrt()   # Karras-style sigma of the same schedule
    torch.testing.assert_close(ab / (1 - ab), 1 / sigma**2, rtol=1e-4, atol=0)


def test_x0_from_epsilon_inverts_the_forward_process():
    s = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(3)
    x0, eps, t = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1, torch.randn(4, 1, 4, 4, generator=g), torch.tensor([5, 200, 600, 990])
    xt = s.add_noise(x0, eps, t)
    ab = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close((xt - (1 - ab).sqrt() * eps) / ab.sqrt(), x0, atol=2e-4, rtol=1e-3)


def test_ddpm_posterior_mean_x0_form_equals_the_noise_form_without_clipping():
    s = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    g = torch.Generator().manual_seed(4)
    xt, eps = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    for t in [999, 500, 10]:
        ab_t, ab_prev = s.alphas_cumprod[t].double(), s.alphas_cumprod[t - 1].double()
        beta = 1 - ab_t / ab_prev
        x0 = (xt.double() - (1 - ab_t).sqrt() * eps.double()) / ab_t.sqrt()
        mean_x0 = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t) * xt.double()
        mean_eps = (xt.double() - beta / (1 - ab_t).sqrt() * eps.double()) / (1 - beta).sqrt()
        torch.testing.assert_close(mean_x0, mean_eps, rtol=1e-9, atol=1e-9)
        # and diffusers' step, with its noise switched off, lands on the same mean
        out = s.step(eps, t, xt, generator=None)
        var = (1 - ab_prev) / (1 - ab_t) * beta
        assert ((out.prev_sample.double() - mean_x0) / var.sqrt()).abs().max() < 8


def test_ddpm_posterior_variance_matches_diffusers():
    s = DDPMScheduler(num_train_timesteps=1000)
    for t in [1, 100, 999]:
        ab_t, ab_prev = s.alphas_cumprod[t], s.alphas_cumprod[t - 1]
        expected = (1 - ab_prev) / (1 - ab_t) * s.betas[t]
        torch.testing.assert_close(s._get_variance(t), expected)


def test_ddim_sigma_at_eta_one_is_the_ddpm_posterior_std():
    s = DDPMScheduler(num_train_timesteps=1000)
    for t, prev in [(999, 959), (400, 360), (40, 0)]:
        ab_t, ab_prev = s.alphas_cumprod[t], s.alphas_cumprod[prev]
        sigma = ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        beta = 1 - ab_t / ab_prev
        torch.testing.assert_close(sigma**2, (1 - ab_prev) / (1 - ab_t) * beta)


def test_ddim_update_matches_diffusers_step():
    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    s.set_timesteps(25)
    g = torch.Generator().manual_seed(5)
    x, eps = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    t, prev = 520, 480
    ab_t, ab_prev = s.alphas_cumprod[t], s.alphas_cumprod[prev]
    x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    manual = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    torch.testing.assert_close(s.step(eps, t, x, eta=0.0).prev_sample, manual, atol=1e-5, rtol=1e-5)


def test_ddim_at_eta_zero_keeps_the_noise_direction():
    """With the true noise, one DDIM jump from x_t lands exactly on q's x_t' for that noise."""
    s = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(6)
    x0, eps = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1, torch.randn(2, 1, 4, 4, generator=g)
    xt = s.add_noise(x0, eps, torch.tensor([900]))
    torch.testing.assert_close(s.step(eps, 900, xt).prev_sample, s.add_noise(x0, eps, torch.tensor([800])),
                               atol=1e-4, rtol=1e-4)


def test_classifier_free_guidance_formula_extrapolates_from_uncond_to_cond():
    cond, free = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    guided = lambda w: free + w * (cond - free)
    torch.testing.assert_close(guided(0.0), free)
    torch.testing.assert_close(guided(1.0), cond)
    torch.testing.assert_close(guided(3.0), torch.tensor([3.0, 4.0]))


def test_frechet_distance_formula():
    g = np.random.default_rng(0)
    a = g.normal(size=(4000, 3))
    assert metrics.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shifted = a + np.array([1.0, 2.0, 0.0])
    assert metrics.frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-6)
    scaled = a * 2
    # for isotropic covariances s^2 I and (2s)^2 I: Tr(S_a + S_b - 2 sqrt(S_a S_b)) = d (1 + 4 - 4) s^2
    assert metrics.frechet_distance(a, scaled) == pytest.approx(3.0, rel=0.1)
