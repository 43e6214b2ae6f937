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
    splits: tuple[str, ...] = ("train",)


FULL = {
    "mnist": HubDataset("ylecun/mnist", label="label", small="digits", splits=("train", "test")),
    "butterflies": HubDataset("huggan/smithsonian_butterflies_subset", small="flower-crops"),
}


def dataset_names() -> list[str]:
    return (sorted(SMALL) + list(AUDIO) + sorted(FULL) + sorted(d.repo for d in FULL.values())
            + sorted(FULL_AUDIO) + sorted(FULL_AUDIO.values()))


def dataset_splits(name: str) -> tuple[str, ...]:
    """The splits `load_dataset(name, split)` serves: the small sets ship one set of images (no
    held-out split), the Hub sets the splits of their repository."""
    if not isinstance(name, str):
        raise DataError(f"a dataset name is a string, got {type(name).__name__}; known: {', '.join(dataset_names())}")
    if name in SMALL or name in AUDIO or name in FULL_AUDIO or name in FULL_AUDIO.values():
        return ("train",)
    spec = FULL.get(name) or next((d for d in FULL.values() if d.repo == name), None)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return spec.splits


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

    `split` is one of `dataset_splits(name)`: 'train' everywhere, and 'test' for MNIST; the small
    sets have no test split (hold images out with `dataset.train_test_split`).
    """
    splits = dataset_splits(name)
    if split not in splits:
        held_out = "" if "test" in splits else "; hold images out with load_dataset(...).train_test_split(test_size=0.2)"
        raise DataError(f"{name!r} has no split {split!r}; its splits: {', '.join(splits)}{held_out}")
    if name in SMALL:
        return _small(name).with_format(None)
    if name in AUDIO:
        return _music().with_format(None)  # a fresh object: set_format on it cannot touch the cache
    if name in FULL_AUDIO or name in FULL_AUDIO.values():
        return _full_audio(FULL_AUDIO.get(name, name), split)
    return _full(FULL.get(name) or next(d for d in FULL.values() if d.repo == name), split)


def check_shape(size, channels: int) -> tuple[int, int]:
    """(height, width) from an image size given as one int (square) or (height, width), with
    `channels` 1 or 3, else a DataError."""
    if channels not in (1, 3) or not isinstance(channels, int) or isinstance(channels, bool):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in pair):
        raise DataError(f"size is a whole number of pixels >= 1 (square) or (height, width), got {size!r}; "
                        "a model's is unet.config.sample_size")
    return pair


def check_images(x, where: str = "images", channels: tuple[int, ...] = (1, 3), at_least: int = 1):
    """`x` as a float tensor (N, C, H, W) with C in `channels`, at least `at_least` images, finite
    values in about [-1, 1], else a DataError that says how to fix it. A little outside [-1, 1] (a
    sampler's overshoot) passes, for the caller to clip; beyond +-8 means another scale (0..255)."""
    import torch

    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{where} takes a torch tensor (N, C, H, W), got {type(x).__name__}; "
                        "use coursekit.data.to_tensor for PIL images")
    kind = "grey images" if channels == (1,) else "images"
    if x.ndim != 4 or x.shape[1] not in channels:
        hint = "; add a batch axis with x[None]" if x.ndim == 3 and x.shape[0] in channels else (
            "; for colour images use x.mean(1, keepdim=True)" if channels == (1,) and x.ndim == 4 else "")
        raise DataError(f"{where} expects {kind} of shape (N, {' or '.join(map(str, channels))}, H, W), "
                        f"got {tuple(x.shape)}{hint}")
    if len(x) < at_least:
        raise DataError(f"{where} needs at least {at_least} image(s), got {len(x)}; pass a non-empty batch")
    if not x.is_floating_point():
        raise DataError(f"{where} expects a float tensor in [-1, 1], got dtype {x.dtype}; "
                        "for 0..255 pixels use x / 127.5 - 1")
    if not torch.isfinite(x).all():
        raise DataError(f"{where} got NaN or infinite values; find the step that made them (a diverged model, "
                        "a division by zero) or rebuild the images with coursekit.data.to_tensor")
    lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    if lo < -8 or hi > 8:
        raise DataError(f"{where} expects values in [-1, 1] (a little outside is clipped), got [{lo:.3g}, {hi:.3g}]; "
                        "for 0..255 pixels use x / 127.5 - 1, for 0..1 use x * 2 - 1")
    return x


def to_tensor(images: Image.Image | Sequence[Image.Image], size: int | tuple[int, int], channels: int):
    """PIL image(s) -> float tensor (N, channels, H, W) with values in [-1, 1]; `size` is H = W or (H, W)."""
    import torch

    height, width = check_shape(size, channels)
    images = [images] if isinstance(images, Image.Image) else list(images)
    if not images:
        raise DataError("to_tensor got no images; pass one PIL image or a non-empty list of them")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in images:
        if not isinstance(im, Image.Image):
            raise DataError(f"to_tensor takes PIL images, got {type(im).__name__}; use to_pil first for tensors")
        im = im.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.float32).reshape(height, width, channels))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def to_pil(x) -> list[Image.Image]:
    """Tensor (N, C, H, W) or (C, H, W) in [-1, 1] -> list of PIL images; C is 1 or 3.

    Values a little outside [-1, 1] (noisy images) are clipped; values far outside, NaN and
    infinity are refused (`check_images`), since they mean another scale (0..255) or a broken model.
    """
    import torch

    if isinstance(x, torch.Tensor) and x.ndim == 3:
        x = x[None]
    x = check_images(x, "to_pil", at_least=0)
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p[..., 0], mode="L") for p in pixels]
    return [Image.fromarray(p, mode="RGB") for p in pixels]


def check_image_dataset(dataset, where: str):
    """Refuse a dataset without an `image` column (an audio set, say) before reading any row."""
    columns = getattr(dataset, "column_names", None)
    if columns is None or "image" not in columns:
        raise DataError(f"{where} takes an image dataset (column 'image', from coursekit.data.load_dataset), got "
                        f"{'columns ' + ', '.join(columns) if columns else type(dataset).__name__}; for audio use "
                        "coursekit.music.dataset_images")


def tensors(dataset, size: int | tuple[int, int], channels: int):
    """The whole dataset as (images in [-1, 1], labels or None), for small sets held in memory."""
    import torch

    check_image_dataset(dataset, "tensors")
    x = to_tensor(dataset["image"], size, channels)
    labels = torch.tensor(dataset["label"]) if "label" in dataset.column_names else None
    return x, labels


def loader(dataset, size: int | tuple[int, int], channels: int, batch_size: int, seed: int = 0, shuffle: bool = True):
    """A torch DataLoader of {'images', 'labels'} batches in [-1, 1], shuffled reproducibly."""
    import torch
    from torch.utils.data import DataLoader

    check_image_dataset(dataset, "loader")
    check_shape(size, channels)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if shuffle and batch_size > len(dataset):
        raise DataError(f"batch_size {batch_size} is larger than the dataset ({len(dataset)} images), and shuffled "
                        "batches drop the last incomplete one, so there would be none; use a smaller batch_size")
    has_labels = "label" in dataset.column_names

    def collate(rows):
        batch = {"images": to_tensor([r["image"] for r in rows], size, channels)}
        if has_labels:
            batch["labels"] = torch.tensor([r["label"] for r in rows])
        return batch

    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed), drop_last=shuffle)
