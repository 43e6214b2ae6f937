import warnings
from types import SimpleNamespace

import pytest
import torch

from coursekit import data, inversion, models
from tests.helpers import save_tiny_stable_diffusion, tiny_scheduler, tiny_unet


class ConstantEps(torch.nn.Module):
    """A toy 'UNet' whose noise estimate ignores x_t: DDIM inversion is then exact."""

    def __init__(self, channels=1, size=8):
        super().__init__()
        self.config = SimpleNamespace(in_channels=channels, out_channels=channels, sample_size=size, num_class_embeds=None)
        self.eps = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, x, t, class_labels=None):
        return SimpleNamespace(sample=self.eps.expand_as(x) * (1 + int(t) / 1000))


def test_inversion_is_exact_when_the_noise_estimate_does_not_depend_on_x():
    model, sched = ConstantEps(), tiny_scheduler()
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inv = inversion.invert(model, sched, x0, steps=10, progress=False)
    assert inv.steps == 10 and len(inv.timesteps) == 11 and inv.timesteps[1] < inv.timesteps[-1]
    back = inversion.denoise(model, sched, inv.at(10), steps=10, progress=False)
    torch.testing.assert_close(back, x0, atol=1e-4, rtol=1e-4)
    for k in (0, 3, 7):
        torch.testing.assert_close(inversion.edit(model, sched, inv, k, progress=False), x0, atol=1e-4, rtol=1e-4)


def test_one_inversion_step_follows_the_formula():
    model, sched = ConstantEps(), tiny_scheduler()
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    inv = inversion.invert(model, sched, x0, steps=4, progress=False)
    t1 = inv.timesteps[1]
    eps = model(x0, t1).sample
    a = sched.alphas_cumprod[t1]
    torch.testing.assert_close(inv.at(1), a.sqrt() * x0 + (1 - a).sqrt() * eps)  # from the clean level, alpha-bar 1


@pytest.fixture(scope="module")
def digits():
    x, y = data.tensors(data.load_dataset("digits"), 16, 1)
    return x[:8], y[:8]


def test_inversion_then_sampling_reconstructs_real_digits(digits):
    unet, sched = models.load_model("digits-uncond")
    x, _ = digits
    inv = inversion.invert(unet, sched, x, steps=50, progress=False)
    back = inversion.denoise(unet, sched, inv.at(50), steps=50, progress=False)
    assert inversion.psnr(back, x) > 28
    assert inversion.ssim(back, x) > 0.95
    noise_start = inversion.denoise(unet, sched, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)),
                                    steps=50, progress=False)
    assert inversion.psnr(noise_start, x) < 15


def test_inversion_does_not_depend_on_the_batch(digits):
    unet, sched = models.load_model("digits-cond")
    x, y = digits
    whole = inversion.invert(unet, sched, x, steps=8, labels=y, guidance_scale=2.0, progress=False)
    one = inversion.invert(unet, sched, x[2:3], steps=8, labels=y[2:3], guidance_scale=2.0, progress=False)
    torch.testing.assert_close(whole.at(8)[2:3], one.at(8), atol=1e-4, rtol=1e-4)
    new = (y + 1) % 10
    edited = inversion.edit(unet, sched, whole, 5, labels=new, guidance_scale=2.0, progress=False)
    edited_one = inversion.edit(unet, sched, one, 5, labels=new[2:3], guidance_scale=2.0, progress=False)
    torch.testing.assert_close(edited[2:3], edited_one, atol=1e-4, rtol=1e-4)


def test_sdedit_keeps_the_image_at_k0_and_is_plain_sampling_at_full_strength(digits):
    unet, sched = tiny_unet(size=16), tiny_scheduler()
    x, _ = digits
    torch.testing.assert_close(inversion.sdedit(unet, sched, x, 0, steps=10, progress=False), x)
    noisy = inversion.noise_to_level(sched, x, 10, 10, torch.Generator().manual_seed(3))
    full = inversion.sdedit(unet, sched, x, 10, steps=10, generator=torch.Generator().manual_seed(3), progress=False)
    torch.testing.assert_close(full, inversion.denoise(unet, sched, noisy, steps=10, progress=False))
    mid = inversion.noise_to_level(sched, x, 10, 4, torch.Generator().manual_seed(4))
    assert 0 < (mid - x).abs().mean() < (noisy - x).abs().mean()


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 1, 8, 8), "16x16"),
    (torch.zeros(2, 3, 16, 16), "1 channel"),
    (torch.full((2, 1, 16, 16), 200.0), r"\[-1, 1\].*127.5"),
    (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), "floats"),
    (torch.zeros(1, 16, 16), r"\(N, C, H, W\)"),
    ([[0.0]], "torch tensor"),
])
def test_bad_images_are_refused_with_the_fix(bad, match):
    unet, sched = tiny_unet(size=16), tiny_scheduler()
    with pytest.raises(inversion.InversionError, match=match):
        inversion.invert(unet, sched, bad, steps=4, progress=False)


@pytest.mark.parametrize("sample_size", [(16, 8), [16, 8]])
def test_a_rectangular_model_inverts_and_edits_its_own_shape(sample_size):
    """A 16x8 UNet (sample_size as a tuple, or a list as a saved config gives it back): its images
    invert, denoise and go through SDEdit; the other orientation is refused naming the fix."""
    unet, sched = tiny_unet(size=sample_size), tiny_scheduler()
    x = torch.rand(2, 1, 16, 8, generator=torch.Generator().manual_seed(7)) * 2 - 1
    inv = inversion.invert(unet, sched, x, steps=4, progress=False)
    assert [tuple(latent.shape) for latent in inv.latents] == [(2, 1, 16, 8)] * 5
    back = inversion.denoise(unet, sched, inv.at(4), steps=4, progress=False)
    assert back.shape == x.shape and torch.isfinite(back).all()
    torch.testing.assert_close(inversion.sdedit(unet, sched, x, 0, steps=4, progress=False), x)
    edited = inversion.sdedit(unet, sched, x, 3, steps=4, generator=torch.Generator().manual_seed(0), progress=False)
    assert edited.shape == x.shape
    with pytest.raises(inversion.InversionError, match=r"takes 16x8 images.*to_tensor\(images, \(16, 8\), 1\)"):
        inversion.invert(unet, sched, x.transpose(2, 3), steps=4, progress=False)


def test_a_noise_predictor_is_checked_against_its_unet():
    """invert takes a NoisePredictor as it takes a UNet, and checks images against the UNet inside."""
    unet, sched = tiny_unet(size=16), tiny_scheduler()
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(8)) * 2 - 1
    by_unet = inversion.invert(unet, sched, x, steps=3, progress=False)
    by_predictor = inversion.invert(models.as_predictor(unet), sched, x, steps=3, progress=False)
    torch.testing.assert_close(by_predictor.at(3), by_unet.at(3))
    with pytest.raises(inversion.InversionError, match="16x16"):
        inversion.invert(models.as_predictor(unet), sched, x[..., :8], steps=3, progress=False)


def test_bad_k_is_refused(digits):
    unet, sched = tiny_unet(size=16), tiny_scheduler()
    inv = inversion.invert(unet, sched, digits[0][:1], steps=4, progress=False)
    with pytest.raises(inversion.InversionError, match="between 0 and 4"):
        inversion.edit(unet, sched, inv, 5)
    with pytest.raises(inversion.InversionError, match="between 0 and 4"):
        inversion.sdedit(unet, sched, digits[0][:1], -1, steps=4)


def test_psnr_and_ssim_have_their_known_values():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 1.6 - 0.8
    assert inversion.psnr(x + 0.1, x) == pytest.approx(10 * torch.log10(torch.tensor(1 / 0.05 ** 2)).item(), rel=1e-4)
    assert inversion.ssim(x, x) == pytest.approx(1.0)
    assert inversion.ssim(x, -x) < 0.2
    with pytest.raises(inversion.InversionError, match="equal shapes"):
        inversion.psnr(x, x[:1])


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return inversion.load_stable_diffusion(str(save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "sd")))


def test_stable_diffusion_path_runs_offline_on_current_apis(tiny_sd):
    """The full track's code path on a tiny random pipeline: no deprecated diffusers calls."""
    from PIL import Image

    image = Image.new("RGB", (16, 16), (200, 80, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        inv = inversion.invert_image(tiny_sd, image, "an orange square", steps=6, progress=False)
        edited = inversion.edit_image(tiny_sd, inv, "a blue square", 4, guidance_scale=3.0, progress=False)
    assert inv.at(6).shape == (1, 4, 8, 8) and inv.at(0).shape == (1, 4, 8, 8)
    assert len(edited) == 1 and edited[0].size == (16, 16)


def test_text_conditioned_sampling_matches_the_stable_diffusion_pipeline(tiny_sd):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    text = inversion.encode_prompt(tiny_sd, "a red cat", guidance_scale=4.0)
    ours = inversion.denoise(tiny_sd.unet, tiny_sd.scheduler, latents, steps=5, guidance_scale=4.0, text=text, progress=False)
    theirs = tiny_sd("a red cat", latents=latents, num_inference_steps=5, guidance_scale=4.0, eta=0.0,
                     output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_stable_diffusion_offline_without_cache_names_the_small_track():
    with pytest.raises(ValueError, match="not in the Hugging Face cache.*small track"):
        inversion.load_stable_diffusion()
