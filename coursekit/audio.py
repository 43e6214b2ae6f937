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

Silence (RMS below `SILENCE_RMS`, -100 dBFS) has no loudest bin to be relative to: it becomes the
all -1 image, and that image becomes silence again. NaN or infinite samples, and spectrogram images
that are not floats in about [-1, 1], are refused with the fix (`check_wave`, `check_image`).
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

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "frames", "n_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AudioError(f"{name} must be a whole number >= 1, got {value!r}; start from a preset in "
                                 "coursekit.audio.PRESETS or a model's mel_config.json")
        if not (isinstance(self.top_db, (int, float)) and 0 < self.top_db < float("inf")):
            raise AudioError(f"top_db must be a finite number of decibels > 0 (80 is usual), got {self.top_db!r}")

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
    except (TypeError, ValueError) as e:
        raise AudioError(f"mel config values must be numbers ({e}); compare it with coursekit.audio.mel_config("
                         "coursekit.audio.PRESETS['teticio'])") from None


def mel_config(preset: MelPreset) -> dict:
    """The preset as an audio-diffusion `mel_config.json`, the inverse of `preset_from_config`."""
    return {"x_res": preset.frames, "y_res": preset.n_mels, "sample_rate": preset.sample_rate, "n_fft": preset.n_fft,
            "hop_length": preset.hop_length, "top_db": preset.top_db, "n_iter": preset.n_iter}


SILENCE_RMS = 1e-5


def check_rate(sample_rate, name: str = "sample_rate") -> int:
    """A sampling rate in Hz as a whole number >= 1, else an AudioError."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise AudioError(f"{name} must be a whole number of Hz >= 1 (8000, 22050, ...), got {sample_rate!r}")
    return int(sample_rate)


def check_wave(wave, sample_rate: int, preset: MelPreset | None = None) -> torch.Tensor:
    """A mono float waveform tensor (samples,) of finite samples, or a clear error saying what to change."""
    check_rate(sample_rate)
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
    if not torch.isfinite(wave).all():
        raise AudioError("the audio contains NaN or infinite samples; find the step that made them (a division by a "
                         "zero peak is the usual one) or replace them: torch.nan_to_num(wave, nan=0.0, posinf=1.0, "
                         "neginf=-1.0)")
    if preset is not None and sample_rate != preset.sample_rate:
        raise AudioError(f"the audio is at {sample_rate} Hz but the preset expects {preset.sample_rate} Hz; "
                         f"use coursekit.audio.resample(wave, {sample_rate}, {preset.sample_rate})")
    return wave.float()


def resample(wave, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling (torchaudio's sinc interpolation)."""
    import torchaudio.functional as AF

    wave = check_wave(wave, orig_rate)
    check_rate(new_rate, "new_rate")
    return wave if orig_rate == new_rate else AF.resample(wave, orig_rate, new_rate)


def read_wav(path, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """(mono waveform, rate) from a sound file (soundfile: WAV, FLAC, OGG); stereo is refused
    rather than silently mixed, and `sample_rate` resamples."""
    import soundfile as sf

    if sample_rate is not None:
        check_rate(sample_rate)
    try:
        data, rate = sf.read(path if hasattr(path, "read") else str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path} is not a readable sound file ({e}); use WAV, FLAC or OGG") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no audio (0 samples)")
    if data.shape[1] != 1:
        raise AudioError(f"{path} has {data.shape[1]} channels; coursekit's models take mono audio: "
                         "mix it down (wave.mean(0)) or pick one channel")
    wave = check_wave(torch.from_numpy(data[:, 0].copy()), rate)
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


def _silent(wave: torch.Tensor, preset: MelPreset) -> bool:
    """Whether the slice `to_image` makes of `wave` (padded or cut) has an RMS below SILENCE_RMS."""
    return float(wave[:preset.slice_samples].double().pow(2).sum()) < SILENCE_RMS ** 2 * preset.slice_samples


def to_image(wave, preset: MelPreset, sample_rate: int | None = None) -> torch.Tensor:
    """One slice of mono audio -> a (1, n_mels, frames) image in [-1, 1] on 256 grey levels, row 0
    the lowest mel band, 0 dB (the slice's loudest bin) at 1 and -top_db or quieter at -1: the
    image audio-diffusion's `Mel.audio_slice_to_image` makes, read as `AudioDiffusionPipeline`
    reads it. Audio shorter than a slice is padded with silence, longer audio is cut.

    A silent slice (RMS below SILENCE_RMS, -100 dBFS, under the noise floor of 16-bit audio) has no
    loudest bin to be relative to: it gives the all -1 image, which `from_image` turns back into
    silence (the reference's relative scale makes it all 1, full loudness)."""
    wave = check_wave(wave, preset.sample_rate if sample_rate is None else sample_rate, preset)
    if _silent(wave, preset):
        return -torch.ones(1, preset.n_mels, preset.frames)
    wave = torch.nn.functional.pad(wave, (0, max(0, preset.slice_samples - len(wave))))[:preset.slice_samples]
    window, filters = _transforms(preset)[:2]
    power = torch.stft(wave, preset.n_fft, preset.hop_length, window=window, center=True, pad_mode="constant",
                       return_complex=True).abs() ** 2
    mel = filters.T @ power
    db = 10 * torch.log10(mel.clamp(min=1e-10))
    db = (db - db.max()).clamp(min=-preset.top_db)
    grey = torch.floor((db + preset.top_db) * 255 / preset.top_db + 0.5)
    return (grey / 255 * 2 - 1)[None]


def _check_values(x, where: str) -> torch.Tensor:
    """`x` as a float CPU tensor of finite values in about [-1, 1], else an AudioError."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise AudioError(f"{where} is a torch tensor in [-1, 1], got {type(x).__name__}; "
                         "make one with coursekit.audio.to_image")
    if not x.is_floating_point():
        raise AudioError(f"{where} is floats in [-1, 1], got dtype {x.dtype}; for 8-bit grey levels g use "
                         "g / 255 * 2 - 1")
    x = x.detach().float().cpu()
    if not torch.isfinite(x).all():
        raise AudioError(f"{where} contains NaN or infinite values; find the step that made them (a diverged "
                         "model or sampler) or regenerate it")
    lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    if lo < -8 or hi > 8:
        raise AudioError(f"{where} must be in [-1, 1] (a sampler's small overshoot is clipped), got "
                         f"[{lo:.3g}, {hi:.3g}]; for 8-bit grey levels g use g / 255 * 2 - 1")
    return x


def check_image(image, preset: MelPreset) -> torch.Tensor:
    """One spectrogram image of the preset ((n_mels, frames), with or without leading axes of size
    1) as a float CPU tensor (n_mels, frames), else an AudioError that says how to fix it."""
    x = _check_values(image, "a spectrogram image")
    if x.ndim < 2 or tuple(x.shape[-2:]) != (preset.n_mels, preset.frames) or x.numel() != preset.n_mels * preset.frames:
        raise AudioError(f"expected a ({preset.n_mels}, {preset.frames}) spectrogram image, got {tuple(x.shape)}; "
                         "pass one image of the preset's size (images[i] of a batch)")
    return x.reshape(preset.n_mels, preset.frames)


def check_images(images) -> torch.Tensor:
    """A batch of spectrogram images, (N, 1, n_mels, frames) or (N, n_mels, frames) with N >= 1, as
    a float CPU tensor (N, n_mels, frames), else an AudioError that says how to fix it."""
    x = _check_values(images, "the spectrogram images")
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[1] == 1)):
        raise AudioError(f"expected spectrogram images (N, 1, n_mels, frames), got {tuple(x.shape)}; "
                         "add a batch axis with image[None]")
    if len(x) == 0:
        raise AudioError("got an empty batch of spectrogram images; pass at least one")
    return x.reshape(len(x), x.shape[-2], x.shape[-1])


def _grey_levels(image, preset: MelPreset) -> torch.Tensor:
    """The image as `AudioDiffusionPipeline` saves it: values clipped to [-1, 1], as 8-bit grey levels."""
    return ((check_image(image, preset) / 2 + 0.5).clamp(0, 1) * 255).round()


def _magnitude(grey: torch.Tensor, preset: MelPreset) -> torch.Tensor:
    power = 10 ** ((grey * preset.top_db / 255 - preset.top_db) / 10)
    return _transforms(preset)[2](power).clamp(min=0).sqrt()


def magnitude_from_image(image: torch.Tensor, preset: MelPreset) -> torch.Tensor:
    """The STFT magnitude (n_fft // 2 + 1, frames) that `from_image` gives Griffin-Lim: the image
    read as 8-bit grey levels (as `AudioDiffusionPipeline` saves images: values a little outside
    [-1, 1] are clipped, far outside, NaN and infinity refused), back to decibels and
    power, then the least-squares inverse of the Slaney mel filters with negatives set to 0
    (torchaudio's `InverseMelScale`), square-rooted. librosa's `mel_to_stft`, which the reference
    uses, starts its non-negative least squares from the same point and agrees to about 1e-4.
    The relative level is kept; the absolute level is not."""
    return _magnitude(_grey_levels(image, preset), preset)


def from_image(image: torch.Tensor, preset: MelPreset, generator: torch.Generator | None = None) -> torch.Tensor:
    """A (1, n_mels, frames) image in [-1, 1] back to a waveform of (frames - 1) * hop_length samples,
    peak 0.9, with Griffin-Lim on `magnitude_from_image` (the phase is estimated, so the result
    sounds like, but is not sample-equal to, the original). An image with every pixel at the
    lowest grey level (what `to_image` makes of silence) gives silence, not noise at peak 0.9."""
    grey = _grey_levels(image, preset)
    if not grey.any():
        return torch.zeros((preset.frames - 1) * preset.hop_length)
    magnitude = _magnitude(grey, preset)
    with torch.random.fork_rng(devices=[]):   # Griffin-Lim draws its first phases from torch's own generator
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        wave = _transforms(preset)[3](magnitude)
    peak = wave.abs().max()
    return wave / peak * 0.9 if peak > 0 else wave


def slices(wave, preset: MelPreset, sample_rate: int | None = None, hop: int | None = None) -> list[torch.Tensor]:
    """Cut long audio into model-sized pieces (`hop` samples apart; default: no overlap)."""
    wave = check_wave(wave, preset.sample_rate if sample_rate is None else sample_rate, preset)
    if hop is not None and (isinstance(hop, bool) or not isinstance(hop, int) or hop < 1):
        raise AudioError(f"hop is a whole number of samples >= 1 (None: {preset.slice_samples}, no overlap), got {hop!r}")
    n, hop = preset.slice_samples, hop or preset.slice_samples
    if len(wave) < n:
        raise AudioError(f"the audio is {len(wave) / preset.sample_rate:.2f} s, shorter than one slice "
                         f"({preset.slice_seconds:.2f} s)")
    return [wave[i:i + n] for i in range(0, len(wave) - n + 1, hop)]


def join(pieces, preset: MelPreset, fade: int | None = None) -> torch.Tensor:
    """Join generated pieces end to end with a short linear crossfade (default 1/16 of a slice)."""
    if isinstance(pieces, (torch.Tensor, np.ndarray)) and pieces.ndim < 2:
        raise AudioError("join takes a list of waveforms (the slices to join), got one waveform; wrap it: [wave]")
    if not len(pieces):
        raise AudioError("join got no pieces; pass a non-empty list of waveforms")
    pieces = [check_wave(p, preset.sample_rate) for p in pieces]
    fade = preset.slice_samples // 16 if fade is None else fade
    shortest = min(len(p) for p in pieces)
    if isinstance(fade, bool) or not isinstance(fade, int) or not 0 <= fade <= shortest:
        raise AudioError(f"fade is a whole number of samples from 0 to the shortest piece ({shortest}), got {fade!r}")
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
    cannot recover the exact phase), for one slice. Silence is refused: it has no SNR."""
    wave = check_wave(wave, preset.sample_rate if sample_rate is None else sample_rate, preset)[:preset.slice_samples]
    if _silent(wave, preset):
        raise AudioError(f"the slice is silent (RMS below {SILENCE_RMS:g}), so its round trip is silence and has no "
                         "SNR; measure slices with sound (skip those with wave.abs().max() < 1e-3, as "
                         "coursekit.music.spectrogram_dataset does)")
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

    img = check_image(image, preset)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
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
    x = check_images(images)
    return torch.cat([x.mean(-1), x.std(-1)], dim=1).numpy()
