"""Each explorer driven headless: set its controls, and what it shows changes and equals what the
underlying coursekit function returns for the same settings; its progress bar ticks once per step."""
import io
import sys
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from coursekit import audio, guidance, inversion, samplers, tracks, viz, widgets
from tests.helpers import tiny_scheduler, tiny_unet

pytest.importorskip("ipywidgets")


def picture(ex) -> np.ndarray:
    """The PNG the panel shows, as an RGB array."""
    return np.asarray(Image.open(io.BytesIO(bytes(ex.image.value))).convert("RGB"))


def grid(x: torch.Tensor, nrow=None) -> np.ndarray:
    """What an image panel should show for the tensor x: its grid, enlarged to about 96 pixels per image."""
    return np.asarray(viz.image_grid(x.clamp(-1, 1), nrow=nrow, scale=max(1, 96 // x.shape[-1])).convert("RGB"))


def record_ticks(ex) -> list:
    """Every (step, of) the panel's progress bar receives from here on."""
    ticks, real = [], ex._tick
    ex._tick = lambda i, n: (ticks.append((i, n)), real(i, n))
    return ticks


def test_noise_schedule_follows_the_slider_and_the_menu():
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ex = widgets.noise_schedule(x0, t=100)
    first = ex.result[0].clone()
    ticks = record_ticks(ex)
    ex.controls["t"].value = 800
    s = tiny_scheduler("squaredcos_cap_v2")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    expected = s.add_noise(x0, noise, torch.full((3,), 800))
    torch.testing.assert_close(ex.result[0], expected)
    assert not torch.allclose(first, ex.result[0])
    np.testing.assert_array_equal(picture(ex), grid(expected))
    ab = float(s.alphas_cumprod[800])
    assert ex.status.value.endswith(f"SNR {ab / (1 - ab):.3g}"), ex.status.value
    assert ticks == [(0, 1)] and ex.progress.value == ex.progress.max == 1
    ex.controls["schedule"].value = "linear"
    linear = tiny_scheduler("linear")
    torch.testing.assert_close(ex.result[0], linear.add_noise(x0, noise, torch.full((3,), 800)))
    ab = float(linear.alphas_cumprod[800])
    assert ex.status.value.endswith(f"SNR {ab / (1 - ab):.3g}"), ex.status.value
    assert ex.runs == 3


def test_sampler_explorer_runs_on_the_button_and_matches_samplers_sample():
    unet, sched = tiny_unet(), tiny_scheduler()
    ex = widgets.sampler(unet, sched, n=4, steps=5)
    shown = picture(ex)
    ticks = record_ticks(ex)
    ex.controls["name"].value = "dpm++"
    ex.controls["steps"].value = 7
    assert ex.runs == 1 and ticks == [], "slow explorers wait for the Run button"
    ex.button.click()
    g = torch.Generator().manual_seed(0)
    expected = samplers.sample(unet, samplers.scheduler_named("dpm++", sched), samplers.noise(unet, 4, g), steps=7,
                               generator=g, progress=False)
    torch.testing.assert_close(ex.result, expected)
    np.testing.assert_array_equal(picture(ex), grid(expected))
    assert not np.array_equal(picture(ex), shown) and "done in" in ex.status.value
    assert ticks == [(i, 7) for i in range(7)] and ex.progress.value == ex.progress.max == 7
    ex.controls["name"].value, ex.controls["eta"].value, ex.controls["seed"].value = "ddim", 1.0, 3
    ex.button.click()
    g = torch.Generator().manual_seed(3)
    noisy = samplers.ddim(unet, sched, samplers.noise(unet, 4, g), steps=7, eta=1.0, generator=g, progress=False)
    torch.testing.assert_close(ex.result, noisy)
    ex.controls["eta"].value = 0.0
    ex.button.click()
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(ex.result, samplers.ddim(unet, sched, samplers.noise(unet, 4, g), steps=7, progress=False))
    assert (ex.result - noisy).abs().mean() > 1e-3, "eta changes the samples"
    assert ex.runs == 4 and len(ticks) == 3 * 7


def test_colour_guidance_explorer_shows_colour_guided_grid():
    unet, sched = tiny_unet(channels=3), tiny_scheduler()
    ex = widgets.colour_guidance(unet, sched, n=2, steps=3, scale=0.0)
    unguided = np.asarray(ex.result)
    ticks = record_ticks(ex)
    ex.controls["colour"].value = "#0000ff"
    ex.controls["scale"].value = 20.0
    assert ex.runs == 1
    ex.button.click()
    expected = np.asarray(guidance.colour_guided_grid(unet, sched, "#0000ff", 20.0, seed=0, n=2, steps=3))
    np.testing.assert_array_equal(np.asarray(ex.result), expected)
    np.testing.assert_array_equal(picture(ex), expected)
    assert ticks == [(i, 3) for i in range(3)]
    samples = lambda im: im[:, im.shape[0] + 8:].astype(float)  # right of the swatch and its 8-pixel gap
    assert samples(expected)[..., 2].mean() > samples(unguided)[..., 2].mean() + 10, "guided toward blue"
    ex.controls["scale"].value = 0.0
    ex.button.click()
    np.testing.assert_array_equal(samples(np.asarray(ex.result)), samples(unguided))


def test_inversion_editor_shows_source_reconstruction_and_edit(monkeypatch):
    unet, sched = tiny_unet(classes=3), tiny_scheduler()
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.tensor([0, 2])
    inverted = []
    real_invert = inversion.invert
    monkeypatch.setattr(inversion, "invert", lambda *a, **k: inverted.append(a[2]) or real_invert(*a, **k))
    ex = widgets.inversion_editor(unet, sched, images, labels, steps=6, k=4, classes=[0, 1, 2])
    shown = picture(ex)
    ticks = record_ticks(ex)
    assert ex.controls["target"].value == 1
    ex.controls["index"].value = 1
    ex.controls["target"].value = 0
    source, recon, edited = ex.result
    inv = real_invert(unet, sched, images[1:2], steps=6, labels=torch.tensor([2]), progress=False)
    edit = lambda k, c: inversion.edit(unet, sched, inv, k, labels=torch.tensor([c]), guidance_scale=1.5, progress=False)
    torch.testing.assert_close(source, images[1:2])
    torch.testing.assert_close(recon, edit(4, 2))
    torch.testing.assert_close(edited, edit(4, 0))
    assert not torch.allclose(recon, edited), "the target class changes the edit"
    np.testing.assert_array_equal(picture(ex), grid(torch.cat([source, recon, edited]), nrow=3))
    assert not np.array_equal(picture(ex), shown)
    assert ticks == [(0, 2), (1, 2)] * 2 and ex.progress.value == 2
    ex.controls["k"].value = 0
    torch.testing.assert_close(ex.result[1], images[1:2], atol=1e-5, rtol=0)
    assert len(inverted) == 2, "each image is inverted once, then moving k or the target reuses it"
    torch.testing.assert_close(inverted[1], images[1:2])


def test_audio_generator_shows_and_plays_the_generated_slice():
    unet, sched = tiny_unet(), tiny_scheduler()
    preset = audio.MelPreset(sample_rate=8000, n_fft=64, hop_length=32, n_mels=8, frames=8, n_iter=4)
    ex = widgets.audio_generator(unet, sched, preset, steps=3)
    shown, sound = bytes(ex.image.value), bytes(ex.player.value)
    ticks = record_ticks(ex)
    ex.controls["seed"].value = 5
    ex.button.click()
    g = torch.Generator().manual_seed(5)
    image = samplers.ddim(unet, sched, samplers.noise(unet, 1, g), steps=3, generator=g, progress=False)[0]
    torch.testing.assert_close(ex.result[0], image)
    torch.testing.assert_close(ex.result[1], audio.from_image(image, preset, generator=torch.Generator().manual_seed(5)))
    assert bytes(ex.image.value) != shown and bytes(ex.player.value) != sound
    assert ticks == [(i, 3) for i in range(3)]
    back, rate = audio.read_wav(io.BytesIO(bytes(ex.player.value)))
    assert rate == 8000 and len(back) == (preset.frames - 1) * preset.hop_length
    torch.testing.assert_close(back, ex.result[1].clamp(-1, 1), atol=1 / 32768, rtol=0)  # 16-bit WAV of the wave


@pytest.mark.parametrize("host, turned_on", [("colab", 1), ("local", 0), ("kaggle", 0)])
def test_enable_colab_turns_on_colabs_widget_manager_only_in_colab(monkeypatch, host, turned_on):
    calls = []
    colab = ModuleType("google.colab")
    colab.output = ModuleType("google.colab.output")
    colab.output.enable_custom_widget_manager = lambda: calls.append(1)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.output", colab.output)
    monkeypatch.setattr(tracks, "host", lambda: host)
    widgets.enable_colab()
    assert len(calls) == turned_on
