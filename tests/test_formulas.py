"""Every formula the course teaches, in the notebooks' teaching cells and in coursekit, checked against an
independent computation: a closed form in float64 NumPy, a hand-computed small case, or diffusers' scheduler.

Schedules and SNR: the notebook's schedules, `widgets.noisy`, `viz.schedule_plot`, `distill.targets`' weight.
Forward process and x0: the notebook's `add_noise`, `train.noisy_batch`, `widgets.noisy`, `guidance.predict_x0`.
Reverse steps: the notebook's DDPM and DDIM loops (posterior mean in both forms, variance, eta), `samplers.ddim`,
`distill.ddim_step` / `sample_on_grid` / `targets`, `inversion.invert` / `denoise` and the notebook's inversion.
CFG: `NoisePredictor` (labels and text) and the notebook's `cfg_noise`. Metrics: `metrics.frechet_distance`,
`inversion.psnr`. Elsewhere: the mel scale against librosa (test_audio_conformance.py), the distillation target's
defining property (test_distill.py), the notebook cells against coursekit (test_notebooks.py).
"""
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from coursekit import distill, guidance, inversion, metrics, samplers, train, viz, widgets
from coursekit.models import NoisePredictor
from tests.helpers import tiny_scheduler
from tests.test_notebooks import UNIT1, UNIT2_COND, UNIT4_INV, tagged

T = 1000


def cosine_betas() -> np.ndarray:
    """Nichol and Dhariwal's schedule: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2),
    as betas 1 - f(t+1)/f(t) capped at 0.999."""
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(np.array([1 - f(t + 1) / f(t) for t in range(T)]), 0.999)


BETAS = {"linear": lambda: np.linspace(1e-4, 0.02, T),
         "scaled_linear": lambda: np.linspace(1e-4 ** 0.5, 0.02 ** 0.5, T) ** 2,
         "squaredcos_cap_v2": cosine_betas}


def alpha_bar(schedule: str) -> np.ndarray:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), in float64, from the closed-form betas."""
    return np.cumprod(1 - BETAS[schedule]())


def q_sample(ab: np.ndarray, t, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps in float64; t=None is the clean image."""
    a = 1.0 if t is None else float(ab[int(t)])
    return (math.sqrt(a) * x0.double() + math.sqrt(1 - a) * eps.double()).float()


class FixedEps:
    """A stand-in UNet whose noise estimate is always `eps`, and which records every (x, t) it is called with:
    given the very noise that made x_t, each sampler step has a closed form, and the input of call i + 1 is
    what step i produced."""

    def __init__(self, eps: torch.Tensor):
        self.eps, self.calls = eps, []
        self.config = SimpleNamespace(in_channels=eps.shape[1], sample_size=eps.shape[-1], num_class_embeds=None)
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def __call__(self, x, t, class_labels=None, **kwargs):
        self.calls.append((x.detach().clone(), int(t)))
        return SimpleNamespace(sample=self.eps.to(x.dtype).expand_as(x))


def clean_and_noise(seed: int, shape=(3, 1, 8, 8)):
    """x0 inside [-0.9, 0.9] (so no sampler's clipping of x0 applies) and Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 1.8 - 0.9, torch.randn(shape, generator=g)


# Schedules and the signal-to-noise ratio


def test_notebook_schedules_are_the_ones_their_labels_name():
    """Each schedule of the notebook's plot has the betas its label states, and alpha_bar = cumprod(1 - beta)."""
    nb = __import__("nbformat").read(UNIT1, as_version=4)
    cell = next(c for c in nb.cells if "teach-schedules" in c.metadata.get("tags", []))
    names = {"DDPMScheduler": DDPMScheduler}
    exec(compile(cell.source.split("viz.schedule_plot")[0], "schedules", "exec"), names)
    seen = set()
    for label, s in names["schedules"].items():
        m = re.match(r"(scaled linear|linear) ([\d.e-]+)\.\.([\d.e-]+)", label)
        if m:
            start, end = float(m[2]), float(m[3])
            betas = (np.linspace(start, end, T) if m[1] == "linear"
                     else np.linspace(start ** 0.5, end ** 0.5, T) ** 2)
            seen.add(m[1])
        else:
            assert label == "cosine", f"no closed form in this test for the schedule {label!r}"
            betas = cosine_betas()
            seen.add(label)
            f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
            np.testing.assert_allclose(s.alphas_cumprod.double().numpy()[:-1], [f(t + 1) / f(0) for t in range(T - 1)],
                                       rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(s.betas.double().numpy(), betas, rtol=1e-4, atol=1e-8, err_msg=label)
        np.testing.assert_allclose(s.alphas_cumprod.double().numpy(), np.cumprod(1 - betas), rtol=1e-4, atol=1e-9,
                                   err_msg=label)
    assert seen == {"linear", "scaled linear", "cosine"}


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_snr_shown_by_the_explorer_and_the_schedule_plot_is_alpha_bar_over_one_minus_alpha_bar(schedule):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ab = alpha_bar(schedule)
    snr = ab / (1 - ab)
    x0 = torch.zeros(1, 1, 4, 4)
    for t in (0, 250, 600, 998):
        assert widgets.noisy(x0, t, schedule)[1] == pytest.approx(snr[t], rel=2e-3)
    fig = viz.schedule_plot({schedule: DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule).alphas_cumprod})
    try:
        np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata()[:-1], np.log10(snr[:-1]), atol=2e-3)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("max_weight", [None, 5.0])
def test_distillation_weight_is_truncated_inverse_snr_and_the_target_is_the_true_noise(max_weight):
    """weight = max(1, 1/SNR(t)), capped; and with a teacher that knows the noise, two DDIM steps land on q's
    x_t'' for that noise, so the one-step target is that noise itself."""
    ab = alpha_bar("squaredcos_cap_v2")
    sched = tiny_scheduler()
    x0, eps = clean_and_noise(0)
    for t in (240, 480, 720, 960):
        target, weight = distill.targets(FixedEps(eps), sched, q_sample(ab, t, x0, eps), t, 8, max_weight=max_weight)
        expected = max(1.0, (1 - ab[t]) / ab[t])
        assert float(weight) == pytest.approx(expected if max_weight is None else min(expected, max_weight), rel=1e-4)
        torch.testing.assert_close(target, eps, atol=2e-4, rtol=1e-4)


# The forward process and the clean-image estimate


def test_forward_process_in_the_notebook_and_coursekit_is_the_closed_form():
    add_noise = tagged(UNIT1, "teach-add-noise")["add_noise"]
    ab = alpha_bar("linear")
    x0, eps = clean_and_noise(1, (4, 1, 8, 8))
    t = torch.tensor([0, 250, 600, 999])
    expected = torch.cat([q_sample(ab, ti, x0[i:i + 1], eps[i:i + 1]) for i, ti in enumerate(t)])
    torch.testing.assert_close(add_noise(x0, eps, t, torch.tensor(ab, dtype=torch.float32)), expected, atol=1e-5, rtol=1e-5)
    # coursekit's training batches and the noise-schedule explorer, on the cosine schedule of the course's models
    cos = alpha_bar("squaredcos_cap_v2")
    x0 = torch.rand(256, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x_t, t, eps = train.noisy_batch(tiny_scheduler(), x0, torch.Generator().manual_seed(3))
    a = torch.tensor(cos)[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, (a.sqrt() * x0 + (1 - a).sqrt() * eps).float(), atol=1e-5, rtol=1e-5)
    assert t.min() < 50 and t.max() > 950 and abs(t.float().mean().item() - 499.5) < 60, "t uniform over 0..999"
    shown, _ = widgets.noisy(x0[:3], 700, "squaredcos_cap_v2", seed=4)
    noise = torch.randn(x0[:3].shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(shown, q_sample(cos, 700, x0[:3], noise), atol=1e-5, rtol=1e-5)


def test_one_jump_of_the_notebook_equals_many_small_steps_and_preserves_variance():
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z, step by step, has the distribution of the notebook's
    one-jump `add_noise`; and on unit-variance data the jump keeps the variance at 1 at every t."""
    add_noise = tagged(UNIT1, "teach-add-noise")["add_noise"]
    sched = tiny_scheduler("linear")
    betas = BETAS["linear"]()
    g = torch.Generator().manual_seed(5)
    n = 50_000
    x = torch.full((n, 1, 1, 1), -0.5, dtype=torch.float64)
    for t in range(400):
        x = math.sqrt(1 - betas[t]) * x + math.sqrt(betas[t]) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    jump = add_noise(torch.full((n, 1, 1, 1), -0.5), torch.randn(n, 1, 1, 1, generator=g),
                     torch.full((n,), 399), sched.alphas_cumprod)
    assert jump.mean().item() == pytest.approx(x.mean().item(), abs=0.015)
    assert jump.var().item() == pytest.approx(x.var().item(), rel=0.03)
    assert x.mean().item() == pytest.approx(-0.5 * math.sqrt(alpha_bar("linear")[399]), abs=0.01)
    unit = torch.randn(n, 1, 1, 1, generator=g)
    for t in (0, 250, 500, 999):
        x_t = add_noise(unit, torch.randn(n, 1, 1, 1, generator=g), torch.full((n,), t), sched.alphas_cumprod)
        assert x_t.var().item() == pytest.approx(1.0, abs=0.03), f"variance preserving at t={t}"


def test_predicted_x0_inverts_the_forward_process():
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), in coursekit.guidance, on x_t from the closed form."""
    ab = alpha_bar("squaredcos_cap_v2")
    sched = samplers.scheduler_named("ddim", tiny_scheduler())
    x0, eps = clean_and_noise(6)
    for t in (5, 200, 600, 900):
        torch.testing.assert_close(guidance.predict_x0(sched, q_sample(ab, t, x0, eps), eps, t), x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(guidance.predict_x0(sched, q_sample(ab, t, x0, eps), eps, torch.tensor(t)), x0,
                                   atol=1e-4, rtol=1e-4)


# The reverse process: one step of the notebook's DDPM and DDIM loops


def one_step(loop, x_t, eps, ab, t, t_prev, seed, **kwargs):
    """x_t' after the first step of a notebook loop run over [t, t_prev] (the input of its second UNet call)."""
    unet = FixedEps(eps)
    loop(unet, x_t, torch.tensor(ab), [t, t_prev], generator=torch.Generator().manual_seed(seed), **kwargs)
    assert [c[1] for c in unet.calls] == [t, t_prev]
    return unet.calls[1][0]


@pytest.mark.parametrize("t", [999, 500, 1])
def test_notebook_ddpm_step_is_the_posterior_in_its_noise_form(t):
    """The notebook writes the posterior mean with x0; the DDPM paper with the noise:
    mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(1 - beta_t), variance (1 - ab_{t-1}) / (1 - ab_t) beta_t;
    beta_t here is the schedule's own (linspace), not derived from alpha_bar. Also diffusers' DDPM step."""
    ddpm_loop = tagged(UNIT1, "teach-ddpm-loop")["ddpm_loop"]
    ab, beta = alpha_bar("linear"), BETAS["linear"]()[t]
    x0, eps = clean_and_noise(7)
    x_t = q_sample(ab, t, x0, eps)  # x_t and eps consistent with an x0 inside [-1, 1]: the notebook's clip is idle
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(8))
    mean = (x_t.double() - beta / math.sqrt(1 - ab[t]) * eps.double()) / math.sqrt(1 - beta)
    var = (1 - ab[t - 1]) / (1 - ab[t]) * beta
    expected = (mean + math.sqrt(var) * z.double()).float()
    torch.testing.assert_close(one_step(ddpm_loop, x_t, eps, ab, t, t - 1, seed=8), expected, atol=1e-5, rtol=1e-4)
    reference = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    out = reference.step(eps, t, x_t, generator=torch.Generator().manual_seed(8)).prev_sample
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("t, t_prev", [(900, 800), (300, 200), (100, 0)])
def test_notebook_ddim_step_with_eta_is_diffusers_ddim_step(eta, t, t_prev):
    ddim_loop = tagged(UNIT1, "teach-ddim-loop")["ddim_loop"]
    ab = alpha_bar("linear")
    x0, eps = clean_and_noise(9, (2, 1, 8, 8))
    x_t = q_sample(ab, t, x0, eps)
    ours = one_step(ddim_loop, x_t, eps, ab, t, t_prev, seed=10, eta=eta)
    reference = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False)
    reference.set_timesteps(T // (t - t_prev))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(10))
    expected = reference.step(eps, t, x_t, eta=eta, variance_noise=z).prev_sample
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("t, t_prev", [(999, 998), (900, 850), (400, 100)])
def test_notebook_ddim_at_eta_one_is_the_notebooks_ddpm_step(t, t_prev):
    """sigma at eta = 1 is the DDPM posterior's standard deviation, so the two loops' steps coincide (same x_t,
    noise estimate and fresh noise), for consecutive and for skipped steps."""
    names = tagged(UNIT1, "teach-ddpm-loop", "teach-ddim-loop")
    ab = alpha_bar("squaredcos_cap_v2")
    x0, eps = clean_and_noise(11)
    x_t = q_sample(ab, t, x0, eps)
    ddim = one_step(names["ddim_loop"], x_t, eps, ab, t, t_prev, seed=12, eta=1.0)
    ddpm = one_step(names["ddpm_loop"], x_t, eps, ab, t, t_prev, seed=12)
    torch.testing.assert_close(ddim, ddpm, atol=1e-5, rtol=1e-4)
    no_noise = one_step(names["ddim_loop"], x_t, eps, ab, t, t_prev, seed=12, eta=0.0)
    assert (ddim - no_noise).abs().mean() > 1e-3, "eta = 1 adds fresh noise"


# The reverse process with the true noise: DDIM at eta = 0 retraces q(x_t | x0) exactly


def test_coursekit_ddim_with_the_true_noise_lands_on_the_forward_process_at_every_step():
    ab = alpha_bar("linear")   # the cosine schedule's alpha-bar at t = 999 (2e-9) is below float32's reach here
    sched = tiny_scheduler("linear")
    x0, eps = clean_and_noise(13)
    states = []
    out = samplers.ddim(FixedEps(eps), sched, q_sample(ab, 999, x0, eps), steps=10, progress=False,
                        callback=lambda i, s: states.append(s))
    assert [int(s["t"]) for s in states] == list(range(999, -1, -100)), "trailing spacing: from t = 999"
    for s in states:
        t_prev = int(s["t"]) - 100
        torch.testing.assert_close(s["x"], q_sample(ab, t_prev if t_prev >= 0 else None, x0, eps), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(s["x0"], x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_distill_ddim_step_and_grid_sampler_follow_the_closed_form_and_diffusers():
    ab = alpha_bar("squaredcos_cap_v2")
    sched = tiny_scheduler()
    x0, eps = clean_and_noise(14)
    states = []
    out = distill.sample_on_grid(FixedEps(eps), sched, q_sample(ab, 960, x0, eps), steps=4, progress=False,
                                 callback=lambda i, s: states.append(s))
    for s, t_next in zip(states, [720, 480, 240, None]):
        torch.testing.assert_close(s["x"], q_sample(ab, t_next, x0, eps), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(s["x0"], x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)
    # and one step with any noise estimate is diffusers' DDIM step (eta 0, no clipping), the last one to alpha_bar 1
    reference = DDIMScheduler.from_config(sched.config, clip_sample=False, set_alpha_to_one=True)
    reference.set_timesteps(25)
    g = torch.Generator().manual_seed(15)
    x, e = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    a = sched.alphas_cumprod
    for t, t_prev in [(520, 480), (40, 0), (0, None)]:
        ours = distill.ddim_step(x, e, a[t], a[t_prev] if t_prev is not None else torch.tensor(1.0))
        torch.testing.assert_close(ours, reference.step(e, t, x, eta=0.0).prev_sample, atol=1e-5, rtol=1e-5)


def test_inversion_with_the_true_noise_climbs_the_forward_process_and_denoise_comes_back():
    ddim_invert = tagged(UNIT4_INV, "teach-ddim-inversion")["ddim_invert"]
    ab = alpha_bar("squaredcos_cap_v2")
    sched = tiny_scheduler()
    x0, eps = clean_and_noise(16)
    inv = inversion.invert(FixedEps(eps), sched, x0, steps=5, progress=False)
    assert inv.timesteps == [None, 0, 200, 400, 600, 800]
    by_hand = ddim_invert(FixedEps(eps), torch.tensor(ab), x0, [800, 600, 400, 200, 0])
    for t, latent, hand in zip(inv.timesteps, inv.latents, by_hand):
        torch.testing.assert_close(latent, q_sample(ab, t, x0, eps), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hand, q_sample(ab, t, x0, eps), atol=1e-5, rtol=1e-5)
    states = []
    back = inversion.denoise(FixedEps(eps), sched, inv.at(5), steps=5, progress=False, callback=lambda i, s: states.append(s))
    for s, t_prev in zip(states, [600, 400, 200, 0, None]):
        torch.testing.assert_close(s["x"], q_sample(ab, t_prev, x0, eps), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(back, x0, atol=1e-4, rtol=1e-4)


# Classifier-free guidance


class LabelShift:
    """A stand-in class-conditional UNet whose noise estimate is x + label: guidance is hand-computable."""

    def __init__(self, classes: int = 3):
        self.config = SimpleNamespace(in_channels=1, sample_size=2, num_class_embeds=classes + 1)
        self.device, self.batches = torch.device("cpu"), []

    def __call__(self, x, t, class_labels=None, encoder_hidden_states=None):
        self.batches.append(len(x))
        shift = class_labels if encoder_hidden_states is None else encoder_hidden_states.mean(dim=(1, 2))
        return SimpleNamespace(sample=x + shift.float().view(-1, 1, 1, 1))


@pytest.mark.parametrize("w, shift", [(0.0, [3.0, 3.0, 3.0]), (1.0, [0.0, 1.0, 2.0]), (2.5, [-4.5, -2.0, 0.5])])
def test_classifier_free_guidance_is_uncond_plus_w_times_cond_minus_uncond(w, shift):
    """eps(x, y) = x + y with 'no class' = 3: guided = x + 3 + w (y - 3), by hand; in coursekit (labels, one batch
    of 2N, and text embeddings) and in the notebook's cfg_noise."""
    cfg_noise = tagged(UNIT2_COND, "teach-cfg")["cfg_noise"]
    x, y = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(17)), torch.tensor([0, 1, 2])
    expected = x + torch.tensor(shift).view(-1, 1, 1, 1)
    unet = LabelShift()
    torch.testing.assert_close(samplers.predict_noise(unet, x, 10, y, guidance_scale=w), expected)
    assert unet.batches == ([3] if w == 1.0 else [6]), "guidance runs both halves as one batch"
    torch.testing.assert_close(cfg_noise(LabelShift(), x, 10, y, w, null=3), expected)
    cond, uncond = torch.full((1, 4, 5), 2.0), torch.full((1, 4, 5), -1.0)
    text = NoisePredictor(LabelShift(), text=(cond, uncond), guidance_scale=w)
    torch.testing.assert_close(text(x, 10), x - 1 + w * 3)


# Metrics


def test_frechet_distance_has_the_closed_form_of_diagonal_gaussians():
    """Rows = the 8 sign patterns, scaled per axis: mean exactly mu, sample covariance exactly diag(8/7 s^2), so
    FD = |mu_a - mu_b|^2 + sum_i (sqrt(va_i) - sqrt(vb_i))^2 = |mu_a - mu_b|^2 + 8/7 sum_i (sa_i - sb_i)^2."""
    signs = np.array([[i >> k & 1 for k in range(3)] for i in range(8)], dtype=float) * 2 - 1
    sa, sb = np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, 0.5])
    mu_a, mu_b = np.array([0.5, -1.0, 2.0]), np.array([0.0, 1.0, 2.0])
    expected = 0.25 + 4.0 + 8 / 7 * (1 + 1 + 6.25)
    assert metrics.frechet_distance(signs * sa + mu_a, signs * sb + mu_b) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(signs * sa + mu_a, signs * sa + mu_a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_an_eigenvalue_computation_on_correlated_data():
    """Tr (S_a S_b)^(1/2) = sum of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2) (NumPy's eigh)."""
    g = np.random.default_rng(0)
    a = g.normal(size=(500, 4)) @ g.normal(size=(4, 4)) + 1.0
    b = g.normal(size=(400, 4)) @ g.normal(size=(4, 4))
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = v @ np.diag(np.sqrt(w)) @ v.T
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_psnr_is_ten_log10_of_one_over_mse_on_0_1_pixels_averaged_per_image():
    """Offsets of 0.2 and 0.02 in [-1, 1] are 0.1 and 0.01 in 0..1: MSE 0.01 and 0.0001, so 20 dB and 40 dB,
    30 dB on average per image (not the 22.97 dB of the pooled MSE)."""
    ref = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(18)) * 1.6 - 0.8
    x = ref + torch.tensor([0.2, 0.02]).view(2, 1, 1, 1)
    assert inversion.psnr(x[:1], ref[:1]) == pytest.approx(20.0, rel=1e-4)
    assert inversion.psnr(x[1:], ref[1:]) == pytest.approx(40.0, rel=1e-4)
    assert inversion.psnr(x, ref) == pytest.approx(30.0, rel=1e-4)
