"""Cold diffusion: the blur against SciPy's, the degradation levels, the improved sampling step on a
case with a known answer, the starting points, and training."""
import pytest
import torch
from scipy.ndimage import gaussian_filter

from coursekit import cold
from tests.helpers import tiny_unet


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0])
def test_blur_equals_scipys_gaussian_filter(sigma):
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    want = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0))
    torch.testing.assert_close(cold.blur(x, sigma), want, atol=1e-5, rtol=0)


def test_degradation_starts_at_the_image_and_ends_almost_flat():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(cold.degrade(x, 0), x)
    flat = cold.degrade(x, cold.LEVELS)
    assert float(flat.flatten(1).std(1).max()) < 0.1 * float(x.flatten(1).std(1).min())
    per_image = cold.degrade(x, torch.tensor([0, 3, 3, cold.LEVELS]))
    torch.testing.assert_close(per_image[1:3], cold.degrade(x[1:3], 3))
    torch.testing.assert_close(per_image[3:], flat[3:])


class Exact(torch.nn.Module):
    """A restorer that knows the answer: data that is one image."""

    config = type("C", (), {"in_channels": 1, "num_class_embeds": None})()

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x, t, class_labels=None):
        return type("O", (), {"sample": self.target.expand_as(x)})()


@pytest.mark.parametrize("steps", [1, 4, cold.LEVELS])
def test_the_improved_step_with_a_perfect_restorer_ends_on_the_image(steps):
    target = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x = cold.degrade(target, cold.LEVELS).expand(2, -1, -1, -1)
    torch.testing.assert_close(cold.sample(Exact(target), x, steps=steps), target.expand(2, -1, -1, -1), atol=1e-5, rtol=0)


def test_start_without_noise_gives_every_sample_the_same_point():
    images = torch.rand(20, 1, 16, 16) * 2 - 1
    same = cold.start(images, 3)
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])
    varied = cold.start(images, 3, noise=0.05, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(varied[0], varied[1])


def test_training_lowers_the_loss_and_bad_settings_are_refused():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 8, 8) * 2 - 1
    result = cold.train(tiny_unet(classes=3), images, torch.arange(64) % 3, steps=40, levels=4, sigma_max=3.0,
                        batch_size=16, lr=3e-3, warmup=0, progress=False)
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    with pytest.raises(cold.ColdError, match="levels"):
        cold.blur_sigmas(0)
    with pytest.raises(cold.ColdError, match="steps"):
        cold.sample(result.unet, torch.zeros(1, 1, 8, 8), levels=4, steps=5, labels=[0])


def test_a_cold_model_keeps_its_schedule_in_its_folder_and_ddim_refuses_it(tmp_path):
    from coursekit import models, samplers

    unet = tiny_unet(classes=3)
    schedule = models.BlurSchedule(levels=4, sigma_max=3.0, start_mean=-0.4)
    models.save_model(unet, schedule, tmp_path / "cold")
    _, again = models.load_model(tmp_path / "cold")
    assert type(again) is models.BlurSchedule and again.config.start_mean == -0.4 and again.config.levels == 4
    with pytest.raises(samplers.SamplerError, match="cold.sample"):
        samplers.ddim(unet, again, torch.randn(1, 1, 8, 8), steps=2, labels=[0])


def test_restoring_from_an_intermediate_level_with_a_perfect_restorer_ends_on_the_image():
    target = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    x = cold.degrade(target, 6)
    torch.testing.assert_close(cold.sample(Exact(target), x, start=6, steps=3), target, atol=1e-5, rtol=0)
    with pytest.raises(cold.ColdError, match="start"):
        cold.sample(Exact(target), x, start=cold.LEVELS + 1)
