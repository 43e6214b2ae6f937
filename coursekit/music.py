"""Music for the small track, and music datasets as spectrogram images.

`music_corpus()` renders scores from music21's corpus by additive synthesis (pip only, no
soundfont or system library): Bach chorales on an organ-like timbre and reels from Ryan's
Mammoth Collection on a violin-like one, cached on disk. `coursekit.data.load_dataset("music")`
serves it as a dataset; `dataset_images` turns any music dataset with its columns (the full
track's too) into the spectrogram images of a `coursekit.audio` preset.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .audio import AudioError, MelPreset, check_rate, resample, slices, to_image

GENRES = ("chorale", "fiddle")
TIMBRES = ("organ", "violin")
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
    """Every note of a music21 score as a sum of harmonics, normalised to peak 0.9 (a score with
    no notes gives silence)."""
    check_rate(rate, "rate")
    if timbre not in TIMBRES:
        raise AudioError(f"unknown timbre {timbre!r}; coursekit renders {', '.join(TIMBRES)}")
    if not (isinstance(seconds_per_quarter, (int, float)) and 0 < seconds_per_quarter < float("inf")):
        raise AudioError(f"seconds_per_quarter must be a finite number > 0 (0.5 is 120 beats a minute), "
                         f"got {seconds_per_quarter!r}")
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

    check_rate(rate, "rate")
    if isinstance(per_genre, bool) or not isinstance(per_genre, int) or per_genre < 1:
        raise AudioError(f"per_genre must be a whole number of pieces >= 1, got {per_genre!r}")

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
    """(images (N, 1, n_mels, frames), genre labels) from every slice of every piece, less the
    near-silent ones (peak below 1e-3), which teach a model nothing about the music."""
    if not isinstance(corpus, dict) or not {"wave", "genre"} <= set(corpus):
        raise AudioError("corpus is a dict with lists 'wave' (float arrays) and 'genre' (ints), as "
                         "coursekit.music.music_corpus() returns; for a dataset use dataset_images")
    if len(corpus["wave"]) != len(corpus["genre"]):
        raise AudioError(f"corpus has {len(corpus['wave'])} waves but {len(corpus['genre'])} genres; give one genre per wave")
    images, labels = [], []
    for wave, g in zip(corpus["wave"], corpus["genre"]):
        if genre is not None and g != genre:
            continue
        for piece in slices(torch.from_numpy(np.asarray(wave)), preset, preset.sample_rate, hop):
            if piece.abs().max() < 1e-3:
                continue
            images.append(to_image(piece, preset))
            labels.append(g)
    if not images:
        raise AudioError(f"no slice with sound ({preset.slice_seconds:.2f} s, peak at least 1e-3)"
                         + ("" if genre is None else f" of genre {genre}") + " in the corpus; give longer or louder audio"
                         + ("" if genre is None else f", or a genre among {sorted(set(corpus['genre']))}"))
    return torch.stack(images), torch.tensor(labels)


def dataset_images(dataset, preset: MelPreset, genre: str | int | None = None, hop: int | None = None,
                   pieces: int | None = None):
    """(images, genre labels) of every slice of a `coursekit.data.load_dataset('music')`-style dataset
    (columns audio, sampling_rate, label), resampled to the preset's rate; `genre` keeps one,
    `pieces` keeps the first that many recordings."""
    missing = {"audio", "label"} - set(getattr(dataset, "column_names", None) or ())
    if missing:
        raise AudioError(f"dataset_images takes a music dataset (columns audio, sampling_rate, label, as "
                         f"coursekit.data.load_dataset('music') gives); this one lacks {', '.join(sorted(missing))}")
    if pieces is not None and (isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1):
        raise AudioError(f"pieces is a whole number of recordings >= 1 (None: all), got {pieces!r}")
    names = dataset.features["label"].names
    if isinstance(genre, str):
        if genre not in names:
            raise AudioError(f"unknown genre {genre!r}; this dataset has {', '.join(names)}")
        genre = names.index(genre)
    elif genre is not None:
        if isinstance(genre, bool) or not isinstance(genre, int) or not 0 <= genre < len(names):
            raise AudioError(f"genre is a name ({', '.join(names)}) or an index 0..{len(names) - 1}, got {genre!r}")
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
