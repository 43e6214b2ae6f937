"""coursekit's spectrogram images against audio-diffusion's own conversion.

The reference is the `Mel` class the teticio audio checkpoints were trained with (kept in diffusers
as `diffusers.pipelines.deprecated.audio_diffusion.mel.Mel`, built on librosa), with its images
read the way `AudioDiffusionPipeline` reads them (grey level g -> g / 255 * 2 - 1). Every preset
follows it, the small track's included, so the checks run on both presets.
"""
import librosa
import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.audio_diffusion.mel import Mel

from coursekit import audio

ONE_GREY_LEVEL = 2 / 255  # in [-1, 1] units


def reference_mel(P: audio.MelPreset) -> Mel:
    return Mel(x_res=P.frames, y_res=P.n_mels, sample_rate=P.sample_rate, n_fft=P.n_fft,
               hop_length=P.hop_length, top_db=int(P.top_db), n_iter=P.n_iter)


def pipeline_tensor(image) -> torch.Tensor:
    """A `Mel` image as AudioDiffusionPipeline turns it into a model input: (1, height, width) in [-1, 1]."""
    grey = np.frombuffer(image.tobytes(), dtype="uint8").reshape((image.height, image.width))
    return torch.tensor(((grey / 255) * 2 - 1)[np.newaxis, :, :], dtype=torch.float)


def reference_image(mel: Mel, wave, slice: int = 0):
    mel.load_audio(raw_audio=np.asarray(wave, dtype=np.float32))
    return mel.audio_slice_to_image(slice)


def sound(name: str, P: audio.MelPreset) -> np.ndarray:
    """Test waveforms of one slice at the preset's rate (float32)."""
    sr, n = P.sample_rate, P.slice_samples
    t = np.arange(n) / sr
    if name == "chord":  # A minor triad, five harmonics each
        w = sum(0.15 / k * np.sin(2 * np.pi * f * k * t) for f in (220.0, 261.6, 329.6) for k in range(1, 6))
    elif name == "chirp":  # 100 Hz up to 0.45 sr
        f0, f1 = 100.0, 0.45 * sr
        w = 0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * t[-1]) * t ** 2))
    elif name == "noise":
        w = 0.3 * np.random.default_rng(0).standard_normal(n)
    elif name == "quiet tail":  # a decaying tone about 66 dB below full scale: amin=1e-10 sets the floor
        w = 5e-4 * np.sin(2 * np.pi * 440 * t) * np.exp(-t / (0.08 * t[-1]))
    elif name == "short":  # a third of a slice: padded with silence
        w = 0.5 * np.sin(2 * np.pi * 660 * t[: n // 3])
    else:
        raise ValueError(name)
    return w.astype(np.float32)


SOUNDS = ["chord", "chirp", "noise", "quiet tail", "short"]
PRESETS = ["small", "teticio"]


@pytest.mark.parametrize("name", SOUNDS)
@pytest.mark.parametrize("preset", PRESETS)
def test_image_is_the_reference_mel_image_as_the_pipeline_reads_it(preset, name):
    P = audio.PRESETS[preset]
    wave = sound(name, P)
    ref = pipeline_tensor(reference_image(reference_mel(P), wave))
    ours = audio.to_image(torch.from_numpy(wave), P)
    assert ours.shape == ref.shape == (1, P.n_mels, P.frames)
    diff = (ours - ref).abs()
    assert diff.max() <= ONE_GREY_LEVEL + 1e-6, f"{diff.max() * 255 / 2:.1f} grey levels apart"
    assert (diff > 1e-6).float().mean() < 0.01, "more than 1% of the pixels a grey level off"


@pytest.mark.parametrize("preset", PRESETS)
def test_slices_are_the_references(preset):
    P = audio.PRESETS[preset]
    mel = reference_mel(P)
    assert P.slice_samples == mel.slice_size
    t = np.arange(int(2.6 * P.slice_samples)) / P.sample_rate
    wave = (0.4 * np.sin(2 * np.pi * 300 * t * (1 + t / t[-1]))).astype(np.float32)
    mel.load_audio(raw_audio=wave)
    pieces = audio.slices(torch.from_numpy(wave), P)
    assert len(pieces) == mel.get_number_of_slices() == 2
    for k, piece in enumerate(pieces):
        np.testing.assert_array_equal(piece.numpy(), mel.get_audio_slice(k))
        ref = pipeline_tensor(mel.audio_slice_to_image(k))
        assert (audio.to_image(piece, P) - ref).abs().max() <= ONE_GREY_LEVEL + 1e-6


@pytest.mark.parametrize("name", SOUNDS)
@pytest.mark.parametrize("preset", PRESETS)
def test_magnitude_from_image_is_librosas_mel_to_stft(preset, name):
    """The STFT magnitude Griffin-Lim starts from: what `Mel.image_to_audio` hands librosa's
    Griffin-Lim (grey levels -> dB -> power -> `mel_to_stft`), on the same 8-bit image."""
    P = audio.PRESETS[preset]
    image = reference_image(reference_mel(P), sound(name, P))
    grey = np.asarray(image).astype(np.float64)
    power = librosa.db_to_power(grey * P.top_db / 255 - P.top_db)
    ref = librosa.feature.inverse.mel_to_stft(power, sr=P.sample_rate, n_fft=P.n_fft)
    ours = audio.magnitude_from_image(pipeline_tensor(image), P).numpy()
    assert ours.shape == ref.shape == (P.n_fft // 2 + 1, P.frames)
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert rel < 1e-3, f"relative difference {rel:.2e}"


def test_magnitude_from_image_reads_float_images_as_the_pipeline_saves_them():
    """Generated images are not on the grey-level grid; the pipeline rounds them to 8 bits first."""
    P = audio.PRESETS["small"]
    image = audio.to_image(torch.from_numpy(sound("chord", P)), P)
    jitter = (torch.rand(image.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.9 * ONE_GREY_LEVEL
    torch.testing.assert_close(audio.magnitude_from_image(image + jitter, P), audio.magnitude_from_image(image, P))


@pytest.mark.parametrize("preset", PRESETS)
def test_griffin_lim_round_trip_is_the_references(preset):
    """A chord's image back to sound by coursekit and by `Mel.image_to_audio`, each turned back into
    an image by the reference `Mel`: the two re-imaged spectrograms agree to a few grey levels on
    average, and coursekit's is no further from the original image than the reference's own
    (Griffin-Lim guesses the phase from a random start, so samples are not compared)."""
    P = audio.PRESETS[preset]
    mel = reference_mel(P)
    image = reference_image(mel, sound("chord", P))
    grey = np.asarray(image).astype(np.float64)
    np.random.seed(0)  # librosa's Griffin-Lim starts from np.random phases
    ref_wave = mel.image_to_audio(image)
    our_wave = audio.from_image(pipeline_tensor(image), P, generator=torch.Generator().manual_seed(0)).numpy()
    assert len(our_wave) == len(ref_wave) == (P.frames - 1) * P.hop_length
    ref_back = np.asarray(reference_image(mel, ref_wave)).astype(np.float64)
    our_back = np.asarray(reference_image(mel, our_wave)).astype(np.float64)
    apart = np.abs(our_back - ref_back).mean()
    ours_lost, ref_lost = np.abs(our_back - grey).mean(), np.abs(ref_back - grey).mean()
    assert apart < 4, f"re-imaged round trips {apart:.1f} grey levels apart on average"
    assert ours_lost < 1.1 * ref_lost + 1, \
        f"coursekit's round trip loses {ours_lost:.1f} grey levels, the reference's {ref_lost:.1f}"


@pytest.mark.parametrize("preset", PRESETS)
def test_plot_puts_row_0_at_the_bottom_with_slaney_mel_centres(preset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    P = audio.PRESETS[preset]
    centres = librosa.mel_frequencies(n_mels=P.n_mels + 2, fmin=0.0, fmax=P.sample_rate / 2)[1:-1]
    np.testing.assert_allclose(audio.mel_centres(P), centres, rtol=1e-9)
    image = audio.to_image(torch.from_numpy(sound("short", P)), P)
    ax = audio.spectrogram_plot(image, P)
    try:
        assert ax.images[0].origin == "lower"
        ticks = ax.get_yticks()
        rows = (ticks - 0.5).round().astype(int)
        assert rows[0] == 0 and rows[-1] == P.n_mels - 1
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"{centres[r]:.0f}" for r in rows]
    finally:
        plt.close(ax.figure)
