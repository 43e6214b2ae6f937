"""Audio for diffusion: waveforms to mel-spectrogram images and back, WAV files, slicing, display,
and a small music corpus rendered offline from music21's scores.

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
with the same frequency detail; 32 mel rows lost half the round trip's SNR).
"""
from __future__ import annotations

import hashlib
import json
import os
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


# The small-track corpus: music21 scores rendered by additive synthesis (pip only, no soundfont).

GENRES = ("chorale", "fiddle")
CORPUS_VERSION = 1


def _voice(freq: float, seconds: float, rate: int, timbre: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    if timbre == "organ":
        harmonics = {1: 1.0, 2: 0.5, 3: 0.25, 4: 0.12, 8: 0.06}
        phase = 2 * np.pi * freq * t
        attack = np.minimum(1, t / 0.02)
    else:  # violin-like: bright sawtooth partials, vibrato, bowed attack
        harmonics = {k: 1 / k for k in range(1, 9)}
        vibrato = 0.006 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi)) * np.minimum(1, t / 0.15)
        phase = 2 * np.pi * freq * np.cumsum(1 + vibrato) / rate
        attack = np.minimum(1, t / 0.06)
    out = sum(a * np.sin(k * phase) for k, a in harmonics.items() if k * freq < rate / 2)
    release = np.minimum(1, (seconds - t) / 0.03).clip(0, 1)
    return out * attack * release


def render_score(score, rate: int, timbre: str, seconds_per_quarter: float, seed: int = 0) -> np.ndarray:
    """Every note of a music21 score as a sum of harmonics, normalised to peak 0.9."""
    rng = np.random.default_rng(seed)
    flat = score.flatten().notes
    total = float(score.flatten().highestTime) * seconds_per_quarter + 0.5
    out = np.zeros(int(total * rate) + 1)
    for el in flat:
        start = int(float(el.offset) * seconds_per_quarter * rate)
        dur = float(el.quarterLength) * seconds_per_quarter
        if dur <= 0:
            continue
        for p in el.pitches:
            note = _voice(p.frequency, dur, rate, timbre, rng)
            out[start:start + len(note)] += note[: len(out) - start]
    peak = np.abs(out).max()
    return (out / peak * 0.9 if peak > 0 else out).astype(np.float32)


def _cache_dir() -> Path:
    return Path(os.environ.get("COURSEKIT_CACHE", Path.home() / ".cache" / "coursekit"))


def music_corpus(per_genre: int = 40, rate: int = 8000, cache: bool = True) -> dict:
    """{'wave': [float32 arrays], 'genre': [0/1], 'title': [...]} rendered from music21: Bach
    chorales on an organ-like timbre (genre 0) and reels from Ryan's Mammoth Collection on a
    violin-like timbre (genre 1). Cached on disk (COURSEKIT_CACHE, default ~/.cache/coursekit)."""
    import music21

    key = hashlib.sha1(json.dumps([CORPUS_VERSION, per_genre, rate, music21.__version__]).encode()).hexdigest()[:12]
    path = _cache_dir() / f"music-{key}.npz"
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as f:
            lengths = f["lengths"]
            waves = np.split(f["waves"], np.cumsum(lengths)[:-1])
            return {"wave": waves, "genre": f["genre"].tolist(), "title": f["title"].tolist()}
    from music21 import corpus

    root = Path(corpus.__file__).parent
    sources = [("chorale", sorted((root / "bach").glob("bwv*.mxl")), "organ", 0.55),
               ("fiddle", sorted(p for p in (root / "ryansMammoth").glob("*Reel*.abc")), "violin", 0.22)]
    waves, genres, titles = [], [], []
    for genre, files, timbre, spq in sources:
        done = 0
        for f in files:
            if done == per_genre:
                break
            try:
                score = music21.converter.parse(f)
                if isinstance(score, music21.stream.Opus):
                    score = score.scores[0]
                score = score.expandRepeats() if genre == "fiddle" else score
                wave = render_score(score, rate, timbre, spq, seed=done)
            except Exception:  # about 1 score in 40 fails to parse or expand; skip it
                continue
            if len(wave) < rate * 2:
                continue
            waves.append(wave)
            genres.append(GENRES.index(genre))
            titles.append(f.stem)
            done += 1
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, waves=np.concatenate(waves), lengths=np.array([len(w) for w in waves]),
                            genre=np.array(genres), title=np.array(titles))
        tmp.replace(path)
    return {"wave": waves, "genre": genres, "title": titles}


def spectrogram_dataset(corpus: dict, preset: MelPreset, genre: int | None = None, hop: int | None = None):
    """(images (N, 1, n_mels, frames), genre labels) from every slice of every piece."""
    images, labels = [], []
    for wave, g in zip(corpus["wave"], corpus["genre"]):
        if genre is not None and g != genre:
            continue
        for piece in slices(torch.from_numpy(np.asarray(wave)), preset, preset.sample_rate, hop):
            if piece.abs().max() < 1e-3:
                continue
            images.append(to_image(piece, preset))
            labels.append(g)
    return torch.stack(images), torch.tensor(labels)


def dataset_images(dataset, preset: MelPreset, genre: str | int | None = None, hop: int | None = None,
                   pieces: int | None = None):
    """(images, genre labels) of every slice of a `coursekit.data.load('music')`-style dataset
    (columns audio, sampling_rate, label), resampled to the preset's rate; `genre` keeps one,
    `pieces` keeps the first that many recordings."""
    if isinstance(genre, str):
        names = dataset.features["label"].names
        if genre not in names:
            raise AudioError(f"unknown genre {genre!r}; this dataset has {', '.join(names)}")
        genre = names.index(genre)
    if genre is not None:
        dataset = dataset.select([i for i, g in enumerate(dataset.with_format(None)["label"]) if g == genre])
    if pieces is not None:
        dataset = dataset.select(range(min(pieces, len(dataset))))
    waves, labels = [], []
    for row in dataset:
        wave = torch.as_tensor(np.asarray(row["audio"], dtype=np.float32))
        if row["sampling_rate"] != preset.sample_rate:
            wave = resample(wave, row["sampling_rate"], preset.sample_rate)
        if len(wave) < preset.slice_samples:
            continue
        waves.append(wave.numpy())
        labels.append(row["label"])
    if not waves:
        raise AudioError(f"no audio of at least one slice ({preset.slice_seconds:.2f} s) of genre {genre} in the dataset")
    return spectrogram_dataset({"wave": waves, "genre": labels}, preset, hop=hop)


def load_model(name: str, device: str = "cpu"):
    """(unet, scheduler, preset) of an audio-diffusion checkpoint (a zoo name, a folder, or a Hub
    id such as kmpartner/audio-diffusion-electronic): UNet and scheduler from their
    subfolders, mel settings from mel_config.json when present; no deprecated pipeline."""
    from . import zoo

    unet, scheduler = zoo.load(name, device=device)
    folder = zoo._resolve(name)
    config = next((p for p in (folder / "mel" / "mel_config.json", folder / "mel_config.json") if p.exists()), None)
    preset = preset_from_config(json.loads(config.read_text())) if config else PRESETS["teticio"]
    return unet, scheduler, preset


def spectrogram_features(images: torch.Tensor) -> np.ndarray:
    """Per image: the mean and spread of each mel row over time, a timbre summary that ignores
    which notes are played when."""
    x = images.detach().float().cpu().reshape(len(images), images.shape[-2], images.shape[-1])
    return torch.cat([x.mean(-1), x.std(-1)], dim=1).numpy()


@dataclass
class GenreJudge:
    """A logistic regression on `spectrogram_features`, fit on real slices only, to score
    generated spectrograms by genre."""

    model: object
    held_out_accuracy: float

    def predict(self, images: torch.Tensor) -> np.ndarray:
        return self.model.predict(spectrogram_features(images))

    def share(self, images: torch.Tensor, genre: int) -> float:
        """Share of `images` classified as `genre`."""
        return float(np.mean(self.predict(images) == genre))


@lru_cache(maxsize=None)
def corpus_judge(preset: str = "small") -> GenreJudge:
    """The genre judge fit on every slice of the small corpus (`coursekit.data.load('music')`)."""
    from . import data

    images, labels = dataset_images(data.load("music"), PRESETS[preset])
    return genre_judge(images, labels)


def genre_judge(images: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> GenreJudge:
    """Fit the judge on 80% of the slices and report its accuracy on the other 20%."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    feats, y = spectrogram_features(images), np.asarray(labels)
    f_train, f_test, y_train, y_test = train_test_split(feats, y, test_size=0.2, random_state=seed, stratify=y)
    model = LogisticRegression(max_iter=2000, C=1.0).fit(f_train, y_train)
    return GenreJudge(model, float(model.score(f_test, y_test)))
