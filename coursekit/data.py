"""Image datasets for both tracks, and the conversion between images and model tensors.

`load_dataset(name)` gives a `datasets.Dataset` with an `image` column (PIL) and, where the data has
one, a `label` column. Small-track sets are built from data that ships inside pip packages, so
they load offline; full-track sets come from the Hub at a pinned revision.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from PIL import Image


class DataError(ValueError):
    """A dataset name or an image batch that coursekit cannot use; the message says why."""


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    images = [Image.fromarray(p, mode="L") for p in pixels]
    return images, digits.target.tolist(), [str(i) for i in range(10)]


@lru_cache(maxsize=None)
def _bundled_photos() -> dict[str, np.ndarray]:
    """RGB photos that ship inside scikit-learn, matplotlib and scikit-image (no download)."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = dict(zip(["china", "flower"], load_sample_images().images))
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photos[name] = getattr(skimage.data, name)()
    return photos


def _crops(photos: dict[str, np.ndarray], size: int = 32, windows=(64, 96, 128, 192)):
    """Square crops at several scales (stride half the window) and their mirror images, resized
    to `size`, labelled by the photo they come from."""
    images, labels = [], []
    for label, photo in enumerate(photos.values()):
        h, w = photo.shape[:2]
        for window in windows:
            stride = window // 2
            for top in range(0, h - window + 1, stride):
                for left in range(0, w - window + 1, stride):
                    crop = Image.fromarray(photo[top:top + window, left:left + window])
                    crop = crop.resize((size, size), Image.Resampling.BICUBIC)
                    images += [crop, crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
                    labels += [label, label]
    return images, labels, list(photos)


def _photo_crops():
    return _crops({name: photo for name, photo in _bundled_photos().items() if name != "flower"})


def _flower_crops():
    return _crops({"flower": _bundled_photos()["flower"]})


SMALL: dict[str, Callable] = {"digits": _digits, "photo-crops": _photo_crops, "flower-crops": _flower_crops}
AUDIO = ("music",)
FULL_AUDIO = {"music_genres": "lewtun/music_genres_small"}


@dataclass(frozen=True)
class HubDataset:
    repo: str
    image: str = "image"
    label: str | None = None
    small: str = "digits"


FULL = {
    "mnist": HubDataset("ylecun/mnist", label="label", small="digits"),
    "butterflies": HubDataset("huggan/smithsonian_butterflies_subset", small="flower-crops"),
}


def dataset_names() -> list[str]:
    return (sorted(SMALL) + list(AUDIO) + sorted(FULL) + sorted(d.repo for d in FULL.values())
            + sorted(FULL_AUDIO) + sorted(FULL_AUDIO.values()))


@lru_cache(maxsize=None)
def _small(name: str):
    """Built once per process: datasets are immutable, and building one encodes every image."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    images, labels, label_names = SMALL[name]()
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=label_names)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


@lru_cache(maxsize=None)
def _music():
    """Bach chorales (organ-like) and fiddle reels (violin-like) rendered from music21 at 8 kHz.
    Audio is a float column beside its sampling rate (no audio decoder needed)."""
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    from . import music

    corpus = music.music_corpus()
    features = Features({"audio": Sequence(Value("float32")), "sampling_rate": Value("int32"),
                         "label": ClassLabel(names=list(music.GENRES)), "title": Value("string")})
    return Dataset.from_dict({"audio": [w.tolist() for w in corpus["wave"]], "sampling_rate": [8000] * len(corpus["wave"]),
                              "label": corpus["genre"], "title": corpus["title"]}, features=features)


def _hub_dataset(repo: str, small: str, split: str):
    """A Hub dataset at its pinned revision, loaded from its local snapshot, so that a cache
    filled by `coursekit prefetch` (or copied from another machine) loads with no network."""
    import datasets

    from . import hub

    try:
        folder = hub.fetch(repo, f"use the small-track equivalent: coursekit.data.load_dataset({small!r})",
                           repo_type="dataset", **hub.dataset_files(repo))
    except hub.HubUnavailable as e:
        raise DataError(f"{repo} is a full-track dataset: {e}") from None
    return datasets.load_dataset(str(folder), split=split)


def _decode_audio(batch):
    import io

    import soundfile as sf

    waves, rates = [], []
    for item in batch["audio"]:
        source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
        wave, rate = sf.read(source, dtype="float32", always_2d=True)
        waves.append(wave.mean(1))
        rates.append(rate)
    return {**batch, "audio": waves, "sampling_rate": rates}


def _full_audio(repo: str, split: str):
    """A Hub audio dataset (columns audio, genre) with the small set's columns: audio as float
    samples (decoded with soundfile when a row is read, stereo mixed down), sampling_rate, label."""
    from datasets import Audio

    ds = _hub_dataset(repo, "music", split).cast_column("audio", Audio(decode=False))
    ds = ds.class_encode_column("genre").rename_column("genre", "label").select_columns(["audio", "label"])
    return ds.with_transform(_decode_audio)


def _full(spec: HubDataset, split: str):
    ds = _hub_dataset(spec.repo, spec.small, split)
    keep = {spec.image: "image"}
    if spec.label:
        keep[spec.label] = "label"
    ds = ds.select_columns(list(keep))
    for old, new in keep.items():
        if old != new:
            ds = ds.rename_column(old, new)
    return ds


def load_dataset(name: str, split: str = "train"):
    """A `datasets.Dataset` with columns `image` (and `label` where there is one).

    Small track: 'digits' (scikit-learn's 8x8 digits, 10 classes), 'photo-crops' (32x32 colour
    crops of six bundled photos, labelled by photo) and 'flower-crops' (crops of one orange flower
    on a dark green ground, the set to fine-tune towards). Full track: 'mnist', 'butterflies' or
    their Hub ids.

    Audio: 'music' (small track: Bach chorales and fiddle reels rendered offline, columns audio,
    sampling_rate, label, title) and 'music_genres' (full track: lewtun/music_genres_small, 1,000
    clips of 19 genres, the same columns, decoded as rows are read).
    """
    if name in SMALL:
        return _small(name).with_format(None)
    if name in AUDIO:
        return _music().with_format(None)  # a fresh object: set_format on it cannot touch the cache
    if name in FULL_AUDIO or name in FULL_AUDIO.values():
        return _full_audio(FULL_AUDIO.get(name, name), split)
    spec = FULL.get(name) or next((d for d in FULL.values() if d.repo == name), None)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return _full(spec, split)


def to_tensor(images: Image.Image | Sequence[Image.Image], size: int, channels: int):
    """PIL image(s) -> float tensor (N, channels, size, size) with values in [-1, 1]."""
    import torch

    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if isinstance(images, Image.Image):
        images = [images]
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in images:
        if not isinstance(im, Image.Image):
            raise DataError(f"to_tensor takes PIL images, got {type(im).__name__}; use to_pil first for tensors")
        im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.float32).reshape(size, size, channels))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def to_pil(x) -> list[Image.Image]:
    """Tensor (N, C, H, W) or (C, H, W) in [-1, 1] -> list of PIL images; C is 1 or 3.

    Values outside [-1, 1] (noisy images) are clipped; values far outside are refused, since
    they mean the tensor is on another scale (0..255).
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise DataError(f"to_pil takes a torch tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"to_pil expects shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise DataError(f"to_pil expects a float tensor in [-1, 1], got dtype {x.dtype}; use x / 127.5 - 1")
    lo, hi = float(x.min()), float(x.max())
    if lo < -8 or hi > 8:  # noisy x_t strays past [-1, 1]; 0..255 pixels stray far beyond
        raise DataError(
            f"to_pil expects values in [-1, 1] (clipped for display), got [{lo:.3g}, {hi:.3g}]; "
            "for 0..255 pixels use x / 127.5 - 1, for 0..1 use x * 2 - 1"
        )
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p[..., 0], mode="L") for p in pixels]
    return [Image.fromarray(p, mode="RGB") for p in pixels]


def tensors(dataset, size: int, channels: int):
    """The whole dataset as (images in [-1, 1], labels or None), for small sets held in memory."""
    import torch

    x = to_tensor(dataset["image"], size, channels)
    labels = torch.tensor(dataset["label"]) if "label" in dataset.column_names else None
    return x, labels


def loader(dataset, size: int, channels: int, batch_size: int, seed: int = 0, shuffle: bool = True):
    """A torch DataLoader of {'images', 'labels'} batches in [-1, 1], shuffled reproducibly."""
    import torch
    from torch.utils.data import DataLoader

    has_labels = "label" in dataset.column_names

    def collate(rows):
        batch = {"images": to_tensor([r["image"] for r in rows], size, channels)}
        if has_labels:
            batch["labels"] = torch.tensor([r["label"] for r in rows])
        return batch

    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed), drop_last=shuffle)
