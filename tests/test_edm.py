"""EDM: the preconditioning against diffusers' EDMEulerScheduler, the properties that motivate it,
Karras' sigmas, the Heun sampler on a case with a known answer, and training."""
import pytest
import torch

from coursekit import edm
from tests.helpers import tiny_unet


def test_preconditioning_equals_diffusers_edm_scheduler():
    sched = edm.scheduler()
    x = torch.randn(3, 1, 4, 4)
    f = torch.randn(3, 1, 4, 4)
    for sigma in (0.01, 0.5, 3.0, 80.0):
        c_skip, c_out, c_in, c_noise = edm.preconditioning(torch.tensor(sigma))
        torch.testing.assert_close(c_in * x, sched.precondition_inputs(x, sigma))
        torch.testing.assert_close(c_noise.reshape(1), sched.precondition_noise(sigma).reshape(1).float())
        torch.testing.assert_close(edm.denoise(lambda x_in, c: f, x, sigma), sched.precondition_outputs(x, f, sigma))


def test_the_network_sees_and_predicts_unit_scale_at_every_noise_level():
    g = torch.Generator().manual_seed(0)
    x0 = edm.SIGMA_DATA * torch.randn(200_000, generator=g)
    for sigma in (0.02, 0.5, 10.0):
        c_skip, c_out, c_in, _ = edm.preconditioning(torch.tensor(sigma))
        x = x0 + sigma * torch.randn(x0.shape, generator=g)
        assert abs(float((c_in * x).std()) - 1) < 0.01
        target = (x0 - c_skip * x) / c_out              # what F must output for D to equal x0
        assert abs(float(target.std()) - 1) < 0.01
        assert abs(float(edm.loss_weight(torch.tensor(sigma)) * c_out ** 2) - 1) < 1e-5


def test_training_sigmas_are_log_normal():
    s = edm.training_sigmas(100_000, torch.Generator().manual_seed(0)).log()
    assert abs(float(s.mean()) - edm.P_MEAN) < 0.02 and abs(float(s.std()) - edm.P_STD) < 0.02


@pytest.mark.parametrize("steps", [2, 5, 18])
def test_karras_sigmas_equal_diffusers(steps):
    sched = edm.scheduler()
    sched.set_timesteps(steps)
    torch.testing.assert_close(edm.karras_sigmas(steps), sched.sigmas.float())
    assert edm.function_evaluations(steps) == 2 * steps - 1


class Exact(torch.nn.Module):
    """F such that D(x; sigma) is exactly `target`: the ideal denoiser of data that is one image."""

    config = type("C", (), {"in_channels": 1, "num_class_embeds": None})()

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x_in, c_noise, class_labels=None):
        sigma = (4 * c_noise).exp()
        c_skip, c_out, c_in, _ = edm.preconditioning(sigma)
        return type("O", (), {"sample": (self.target - c_skip * x_in / c_in) / c_out})()


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_heun_with_the_exact_denoiser_lands_on_the_data_point(steps):
    target = torch.full((2, 1, 8, 8), -0.3)
    x = edm.heun(Exact(target), torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), steps=steps)
    torch.testing.assert_close(x, target, atol=1e-4, rtol=0)


def test_one_heun_step_is_the_denoised_guess_at_sigma_max_and_calls_are_counted():
    unet = tiny_unet(classes=2)
    calls = []
    unet.register_forward_hook(lambda *a: calls.append(1))
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = edm.heun(unet, z, steps=1, labels=[0, 1])
    from coursekit.models import NoisePredictor

    want = edm.denoise(NoisePredictor(unet, labels=torch.tensor([0, 1])), z * edm.SIGMA_MAX, edm.SIGMA_MAX)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=0)   # x + (0 - sigma) (x - D) / sigma, in float32
    calls.clear()
    edm.heun(unet, z, steps=4, labels=[0, 1])
    assert len(calls) == edm.function_evaluations(4)


def test_training_lowers_the_loss_and_bad_steps_are_refused():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 8, 8) * 2 - 1
    result = edm.train(tiny_unet(classes=3), images, torch.arange(64) % 3, steps=40, batch_size=16, lr=3e-3, warmup=0,
                       p_uncond=0.1, progress=False)
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    with pytest.raises(edm.EDMError, match="whole number"):
        edm.karras_sigmas(0)
