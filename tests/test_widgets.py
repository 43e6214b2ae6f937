"""Each explorer driven headless: set its controls, and what it shows changes and equals what the
underlying coursekit function returns for the same settings."""
import io

import pytest
import torch
from PIL import Image

from coursekit import audio, guidance, inversion, samplers, widgets
from tests.helpers import tiny_scheduler, tiny_unet

pytest.importorskip("ipywidgets")


def picture(ex) -> torch.Tensor:
    return torch.tensor(__import__("numpy").array(Image.open(io.BytesIO(bytes(ex.image.value))).convert("RGB"))).float()


def test_noise_schedule_follows_the_slider_and_the_menu():
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ex = widgets.noise_schedule(x0, t=100)
    first, shown = ex.result[0].clone(), ex.image.value
    ex.controls["t"].value = 800
    expected, snr = widgets.noisy(x0, 800, "squaredcos_cap_v2")
    s = tiny_scheduler("squaredcos_cap_v2")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(expected, s.add_noise(x0, noise, torch.full((3,), 800)))
    torch.testing.assert_close(ex.result[0], expected)
    assert bytes(ex.image.value) != shown and not torch.allclose(first, ex.result[0])
    assert f"SNR {snr:.3g}" in ex.status.value and ex.progress.value == ex.progress.max
    ex.controls["schedule"].value = "linear"
    torch.testing.assert_close(ex.result[0], widgets.noisy(x0, 800, "linear")[0])
    assert ex.runs == 3


def test_sampler_explorer_runs_on_the_button_and_matches_samplers_sample():
    unet, sched = tiny_unet(), tiny_scheduler()
    ex = widgets.sampler(unet, sched, n=4, steps=5)
    shown = bytes(ex.image.value)
    ex.controls["name"].value = "dpm++"
    ex.controls["steps"].value = 7
    assert ex.runs == 1, "slow explorers wait for the Run button"
    ex.button.click()
    g = torch.Generator().manual_seed(0)
    expected = samplers.sample(unet, samplers.scheduler_named("dpm++", sched), samplers.noise(unet, 4, g), steps=7,
                               generator=g, progress=False)
    torch.testing.assert_close(ex.result, expected)
    assert bytes(ex.image.value) != shown and ex.progress.value == 7 and "done in" in ex.status.value
    ex.controls["name"].value, ex.controls["eta"].value, ex.controls["seed"].value = "ddim", 1.0, 3
    ex.button.click()
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(ex.result, samplers.ddim(unet, sched, samplers.noise(unet, 4, g), steps=7, eta=1.0,
                                                        generator=g, progress=False))


def test_colour_guidance_explorer_shows_colour_guided_grid():
    unet, sched = tiny_unet(channels=3), tiny_scheduler()
    ex = widgets.colour_guidance(unet, sched, n=2, steps=3, scale=0.0)
    shown = bytes(ex.image.value)
    ex.controls["colour"].value = "#0000ff"
    ex.controls["scale"].value = 20.0
    ex.button.click()
    expected = guidance.colour_guided_grid(unet, sched, "#0000ff", 20.0, seed=0, n=2, steps=3)
    assert bytes(ex.image.value) != shown
    assert list(ex.result.getdata()) == list(expected.getdata())
    assert picture(ex).shape[:2] == (expected.height, expected.width)


def test_inversion_editor_shows_source_reconstruction_and_edit():
    unet, sched = tiny_unet(classes=3), tiny_scheduler()
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.tensor([0, 2])
    ex = widgets.inversion_editor(unet, sched, images, labels, steps=6, k=4, classes=[0, 1, 2])
    shown = bytes(ex.image.value)
    ex.controls["index"].value = 1
    ex.controls["target"].value = 1
    source, recon, edited = ex.result
    inv = inversion.invert(unet, sched, images[1:2], steps=6, labels=torch.tensor([2]), progress=False)
    torch.testing.assert_close(source, images[1:2])
    torch.testing.assert_close(recon, inversion.edit(unet, sched, inv, 4, labels=torch.tensor([2]), guidance_scale=1.5, progress=False))
    torch.testing.assert_close(edited, inversion.edit(unet, sched, inv, 4, labels=torch.tensor([1]), guidance_scale=1.5, progress=False))
    assert bytes(ex.image.value) != shown and ex.progress.value == 2
    ex.controls["k"].value = 0
    torch.testing.assert_close(ex.result[1], images[1:2], atol=1e-5, rtol=0)


def test_audio_generator_shows_and_plays_the_generated_slice():
    unet, sched = tiny_unet(), tiny_scheduler()
    preset = audio.MelPreset(sample_rate=8000, n_fft=64, hop_length=32, n_mels=8, frames=8, n_iter=4)
    ex = widgets.audio_generator(unet, sched, preset, steps=3)
    shown, sound = bytes(ex.image.value), bytes(ex.player.value)
    ex.controls["seed"].value = 5
    ex.button.click()
    image, wave = widgets.audio_clip(unet, sched, preset, seed=5, steps=3)
    g = torch.Generator().manual_seed(5)
    torch.testing.assert_close(image, samplers.ddim(unet, sched, samplers.noise(unet, 1, g), steps=3, generator=g, progress=False)[0])
    torch.testing.assert_close(ex.result[0], image)
    torch.testing.assert_close(ex.result[1], wave)
    assert bytes(ex.image.value) != shown and bytes(ex.player.value) != sound
    back, rate = audio.read_wav(io.BytesIO(bytes(ex.player.value)))
    assert rate == 8000 and len(back) == len(wave)


def test_enable_colab_does_nothing_elsewhere():
    widgets.enable_colab()
