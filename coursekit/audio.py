"""Audio for diffusion: waveforms to mel-spectrogram images and back, WAV files, slicing, display.

A diffusion model for audio here is an image model on mel spectrograms: each slice of audio
becomes a (1, n_mels, frames) image in [-1, 1], and a generated image goes back to sound with
Griffin-Lim, which guesses the phase the spectrogram threw away.

The conversion is audio-diffusion's (its `Mel` class, kept in diffusers as
`diffusers.pipelines.deprecated.audio_diffusion.mel.Mel`), on which the course's pretrained
checkpoints were trained, written with torchaudio for every preset: power spectrogram with
centred, zero-padded frames; librosa's Slaney mel scale and Slaney-normalised filters; decibels
relative to the slice's loudest bin (`power_to_db(ref=max, amin=1e-10, top_db)`); 8-bit grey
levels `round((dB + top_db) * 255 / top_db)`; row 0 = the lowest mel band (no flip); grey level
g in [0, 255] read as g / 255 * 2 - 1, as `AudioDiffusionPipeline` does. A slice is
`frames * hop_length - 1` samples, which gives exactly `frames` columns.

`PRESETS['teticio']` holds the settings of the course's pretrained audio checkpoints (22.05 kHz,
256 x 256, about 6 s per image); `PRESETS['small']` is the small track's: 8 kHz, 64 mel rows by 32
frames of 32 ms, about a second per image (32 frames rather than 64 halves the cost of training
with the same frequency detail; 32 mel rows lost half the round trip's SNR). The small track's
music is in `coursekit.music`; `coursekit.models.load_audio_model` loads a checkpoint with its preset.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


class AudioError(ValueError):
    """Audio that coursekit cannot use as given; the message says how to fix it."""


@dataclass(frozen=True)
class MelPreset:
    """How audio becomes a spectrogram image: `n_mels` rows, `frames` columns of `hop_length` samples."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    frames: int
    top_db: float = 80.0
    n_iter: int = 32

    @property
    def slice_samples(self) -> int:
        """Audio samples in one image: `frames * hop_length - 1`, as audio-diffusion's `Mel` slices,
        which with centred frames gives exactly `frames` columns."""
        return self.frames * self.hop_length - 1

    @property
    def slice_seconds(self) -> float:
        return self.slice_samples / self.sample_rate


PRESETS = {
    # mel settings stored with teticio/audio-diffusion-instrumental-hiphop-256 and its fine-tunes (mel_config.json)
    "teticio": MelPreset(sample_rate=22050, n_fft=2048, hop_length=512, n_mels=256, frames=256, top_db=80.0, n_iter=32),
    "small": MelPreset(sample_rate=8000, n_fft=512, hop_length=256, n_mels=64, frames=32, top_db=80.0, n_iter=32),
}


def preset_from_config(config: dict) -> MelPreset:
    """A MelPreset from an audio-diffusion `mel_config.json` (x_res, y_res, sample_rate, ...)."""
    try:
        return MelPreset(sample_rate=int(config["sample_rate"]), n_fft=int(config["n_fft"]),
                         hop_length=int(config["hop_length"]), n_mels=int(config["y_res"]),
                         frames=int(config["x_res"]), top_db=float(config.get("top_db", 80)),
                         n_iter=int(config.get("n_iter", 32)))
    except KeyError as e:
        raise AudioError(f"mel config lacks {e}; expected x_res, y_res, sample_rate, n_fft, hop_length") from None


def mel_config(preset: MelPreset) -> dict:
    """The preset as an audio-diffusion `mel_config.json`, the inverse of `preset_from_config`."""
    return {"x_res": preset.frames, "y_res": preset.n_mels, "sample_rate": preset.sample_rate, "n_fft": preset.n_fft,
            "hop_length": preset.hop_length, "top_db": preset.top_db, "n_iter": preset.n_iter}


def check_wave(wave, sample_rate: int, preset: MelPreset | None = None) -> torch.Tensor:
    """A mono float waveform tensor (samples,), or a clear error saying what to change."""
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(wave)
    if not isinstance(wave, torch.Tensor):
        raise AudioError(f"a waveform is a 1-D array or tensor of samples, got {type(wave).__name__}")
    if wave.ndim == 2 and 1 in wave.shape:
        wave = wave.reshape(-1)
    if wave.ndim != 1:
        raise AudioError(f"expected mono audio (one channel), got shape {tuple(wave.shape)}; "
                         "mix it down first, e.g. wave.mean(0) for (channels, samples)")
    if wave.numel() == 0:
        raise AudioError("the audio is empty (0 samples)")
    if not wave.is_floating_point():
        raise AudioError(f"expected float samples in [-1, 1], got {wave.dtype}; for 16-bit PCM divide by 32768")
    if preset is not None and sample_rate != preset.sample_rate:
        raise AudioError(f"the audio is at {sample_rate} Hz but the preset expects {preset.sample_rate} Hz; "
                         f"use coursekit.audio.resample(wave, {sample_rate}, {preset.sample_rate})")
    return wave.float()


def resample(wave, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling (torchaudio's sinc interpolation)."""
    import torchaudio.functional as AF

    wave = check_wave(wave, orig_rate)
    return wave if orig_rate == new_rate else AF.resample(wave, orig_rate, new_rate)


def read_wav(path, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """(mono waveform, rate) from a sound file (soundfile: WAV, FLAC, OGG); stereo is refused
    rather than silently mixed, and `sample_rate` resamples."""
    import soundfile as sf

    try:
        data, rate = sf.read(path if hasattr(path, "read") else str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path} is not a readable sound file ({e}); use WAV, FLAC or OGG") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no audio (0 samples)")
    if data.shape[1] != 1:
        raise AudioError(f"{path} has {data.shape[1]} channels; coursekit's models take mono audio: "
                         "mix it down (wave.mean(0)) or pick one channel")
    wave = torch.from_numpy(data[:, 0].copy())
    if sample_rate and sample_rate != rate:
        wave, rate = resample(wave, rate, sample_rate), sample_rate
    return wave, rate


def write_wav(path, wave, sample_rate: int):
    """Write mono float audio as 16-bit WAV (clipped to [-1, 1]) to a path or a binary file object."""
    import soundfile as sf

    wave = check_wave(wave, sample_rate)
    is_file = hasattr(path, "write")
    sf.write(path if is_file else str(path), wave.clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16", format="WAV")
    return path if is_file else Path(path)


@lru_cache(maxsize=None)
def _transforms(preset: MelPreset):
    """The Hann window, the Slaney mel filters (freq bins, n_mels), the inverse-mel and the
    Griffin-Lim transforms of a preset, built once per preset (they hold filter banks and windows;
    building them per slice dominated corpus conversion)."""
    import torchaudio.functional as AF
    import torchaudio.transforms as T

    window = torch.hann_window(preset.n_fft)
    filters = AF.melscale_fbanks(preset.n_fft // 2 + 1, 0.0, preset.sample_rate / 2, preset.n_mels,
                                 preset.sample_rate, norm="slaney", mel_scale="slaney")
    inverse = T.InverseMelScale(n_stft=preset.n_fft // 2 + 1, n_mels=preset.n_mels, sample_rate=preset.sample_rate,
                                norm="slaney", mel_scale="slaney")
    griffin = T.GriffinLim(n_fft=preset.n_fft, hop_length=preset.hop_length, power=1.0, n_iter=preset.n_iter)
    return window, filters, inverse, griffin


def to_image(wave, preset: MelPreset, sample_rate: int | None = None) -> torch.Tensor:
    """One slice of mono audio -> a (1, n_mels, frames) image in [-1, 1] on 256 grey levels, row 0
    the lowest mel band, 0 dB (the slice's loudest bin) at 1 and -top_db or quieter at -1: the
    image audio-diffusion's `Mel.audio_slice_to_image` makes, read as `AudioDiffusionPipeline`
    reads it. Audio shorter than a slice is padded with silence, longer audio is cut."""
    wave = check_wave(wave, sample_rate or preset.sample_rate, preset)
    wave = torch.nn.functional.pad(wave, (0, max(0, preset.slice_samples - len(wave))))[:preset.slice_samples]
    window, filters = _transforms(preset)[:2]
    power = torch.stft(wave, preset.n_fft, preset.hop_length, window=window, center=True, pad_mode="constant",
                       return_complex=True).abs() ** 2
    mel = filters.T @ power
    db = 10 * torch.log10(mel.clamp(min=1e-10))
    db = (db - db.max()).clamp(min=-preset.top_db)
    grey = torch.floor((db + preset.top_db) * 255 / preset.top_db + 0.5)
    return (grey / 255 * 2 - 1)[None]


def magnitude_from_image(image: torch.Tensor, preset: MelPreset) -> torch.Tensor:
    """The STFT magnitude (n_fft // 2 + 1, frames) that `from_image` gives Griffin-Lim: the image
    read as 8-bit grey levels (as `AudioDiffusionPipeline` saves images), back to decibels and
    power, then the least-squares inverse of the Slaney mel filters with negatives set to 0
    (torchaudio's `InverseMelScale`), square-rooted. librosa's `mel_to_stft`, which the reference
    uses, starts its non-negative least squares from the same point and agrees to about 1e-4.
    The relative level is kept; the absolute level is not."""
    if image.ndim == 3:
        image = image[0]
    if image.shape != (preset.n_mels, preset.frames):
        raise AudioError(f"expected a ({preset.n_mels}, {preset.frames}) spectrogram image, got {tuple(image.shape)}")
    grey = ((image.detach().float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round()
    power = 10 ** ((grey * preset.top_db / 255 - preset.top_db) / 10)
    return _transforms(preset)[2](power).clamp(min=0).sqrt()


def from_image(image: torch.Tensor, preset: MelPreset, generator: torch.Generator | None = None) -> torch.Tensor:
    """A (1, n_mels, frames) image in [-1, 1] back to a waveform of (frames - 1) * hop_length samples,
    peak 0.9, with Griffin-Lim on `magnitude_from_image` (the phase is estimated, so the result
    sounds like, but is not sample-equal to, the original)."""
    magnitude = magnitude_from_image(image, preset)
    with torch.random.fork_rng(devices=[]):   # Griffin-Lim draws its first phases from torch's own generator
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        wave = _transforms(preset)[3](magnitude)
    peak = wave.abs().max()
    return wave / peak * 0.9 if peak > 0 else wave


def slices(wave, preset: MelPreset, sample_rate: int | None = None, hop: int | None = None) -> list[torch.Tensor]:
    """Cut long audio into model-sized pieces (`hop` samples apart; default: no overlap)."""
    wave = check_wave(wave, sample_rate or preset.sample_rate, preset)
    n, hop = preset.slice_samples, hop or preset.slice_samples
    if len(wave) < n:
        raise AudioError(f"the audio is {len(wave) / preset.sample_rate:.2f} s, shorter than one slice "
                         f"({preset.slice_seconds:.2f} s)")
    return [wave[i:i + n] for i in range(0, len(wave) - n + 1, hop)]


def join(pieces, preset: MelPreset, fade: int | None = None) -> torch.Tensor:
    """Join generated pieces end to end with a short linear crossfade (default 1/16 of a slice)."""
    fade = preset.slice_samples // 16 if fade is None else fade
    out = pieces[0].clone()
    ramp = torch.linspace(0, 1, fade) if fade else None
    for p in pieces[1:]:
        if fade:
            out[-fade:] = out[-fade:] * (1 - ramp) + p[:fade] * ramp
            out = torch.cat([out, p[fade:]])
        else:
            out = torch.cat([out, p])
    return out


def roundtrip_db(wave, preset: MelPreset, sample_rate: int | None = None) -> float:
    """Quality of audio -> image -> audio, as spectral SNR in dB:
    20 log10(||S|| / || |S| - |S_back| ||) on STFT magnitudes (phase-blind, since Griffin-Lim
    cannot recover the exact phase), for one slice."""
    wave = check_wave(wave, sample_rate or preset.sample_rate, preset)[:preset.slice_samples]
    back = from_image(to_image(wave, preset), preset)[:len(wave)]
    wave = wave / wave.abs().max().clamp(min=1e-8) * 0.9
    window = torch.hann_window(preset.n_fft)
    mag = lambda w: torch.stft(w, preset.n_fft, preset.hop_length, window=window, return_complex=True).abs()
    a, b = mag(wave), mag(torch.nn.functional.pad(back, (0, len(wave) - len(back))))
    b = b * (a.norm() / b.norm().clamp(min=1e-8))
    return float(20 * torch.log10(a.norm() / (a - b).norm().clamp(min=1e-10)))


def mel_centres(preset: MelPreset) -> np.ndarray:
    """The centre frequency (Hz) of each mel row, row 0 first, on librosa's Slaney mel scale
    (linear below 1 kHz, logarithmic above): `librosa.mel_frequencies(n_mels + 2, fmax=sr / 2)[1:-1]`."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        return f / f_sp if f < min_log_hz else min_log_mel + np.log(f / min_log_hz) / logstep

    mels = np.linspace(0.0, hz_to_mel(preset.sample_rate / 2), preset.n_mels + 2)[1:-1]
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def spectrogram_plot(image: torch.Tensor, preset: MelPreset, title: str = "", ax=None):
    """The image with time (s) and frequency (Hz, mel-spaced) axes, low frequencies (row 0) at the bottom."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    img = image.detach().float().cpu().reshape(preset.n_mels, preset.frames)
    ax.imshow(img, origin="lower", aspect="auto", cmap="magma", vmin=-1, vmax=1,
              extent=(0, preset.slice_seconds, 0, preset.n_mels))
    centres = mel_centres(preset)
    ticks = np.linspace(0, preset.n_mels - 1, 5).round().astype(int)
    ax.set_yticks(ticks + 0.5, [f"{centres[i]:.0f}" for i in ticks])
    ax.set(xlabel="time (s)", ylabel="frequency (Hz)", title=title)
    return ax


def player(wave, sample_rate: int):
    """An audio player for the notebook."""
    from IPython.display import Audio

    return Audio(check_wave(wave, sample_rate).numpy(), rate=sample_rate, normalize=True)


def spectrogram_features(images: torch.Tensor) -> np.ndarray:
    """Per image: the mean and spread of each mel row over time, a timbre summary that ignores
    which notes are played when."""
    x = images.detach().float().cpu().reshape(len(images), images.shape[-2], images.shape[-1])
    return torch.cat([x.mean(-1), x.std(-1)], dim=1).numpy()
