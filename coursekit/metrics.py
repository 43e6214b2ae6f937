"""How good are the samples? Independent judges (a digit classifier, a music-genre classifier) and
Fréchet distances.

Each judge is fit on real data only (digits: the track's own, scikit-learn's 8x8 digits or MNIST;
music: real spectrogram slices), never on samples and never used to guide sampling, so it is an
independent judge of whether a generated digit or clip is what was asked for.

Every entrance refuses what it cannot measure (NaN or infinity, empty batches, labels that do not
match the images) with a MetricsError; image batches go through `coursekit.data.check_images`,
whose error is a DataError.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


class MetricsError(ValueError):
    """Labels, features or settings a measure cannot use; the message says how to fix them."""


def check_labels(labels, n: int) -> np.ndarray:
    """One whole-number class label per image (`n` of them; a single label stands for all) as a
    NumPy array, from a list, an array or a tensor on any device, else a MetricsError."""
    array = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if array.ndim == 0:
        array = np.full(n, array)
    if array.ndim != 1 or len(array) != n:
        raise MetricsError(f"give one label per image: {n} images, labels of shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise MetricsError(f"labels must be whole-number classes (ints or a long tensor), got dtype {array.dtype}")
    return array


def check_positive(value, name: str) -> int:
    """A whole-number setting >= 1, else a MetricsError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MetricsError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def to_digit_features(x) -> np.ndarray:
    """Images (N, 1, H, W) in [-1, 1] -> (N, 64) features on the real digits' 8x8, 0..16 scale
    (values a little outside [-1, 1] are clipped, as for display)."""
    import torch.nn.functional as F

    from .data import check_images

    x = check_images(x, "metrics.to_digit_features", channels=(1,)).detach().float().cpu().clamp(-1, 1)
    x = F.adaptive_avg_pool2d(x, 8)
    return ((x + 1) * 8).reshape(len(x), 64).numpy()


@dataclass
class DigitJudge:
    """A classifier of real digits, with its held-out accuracy and a PCA feature space."""

    model: object
    pca: object
    held_out_accuracy: float
    real_features: np.ndarray
    real_spread: float = 1.0

    def predict(self, x) -> np.ndarray:
        return self.model.predict(to_digit_features(x))

    def accuracy(self, x, labels) -> float:
        """Share of samples `x` classified as their requested `labels`."""
        predicted = self.predict(x)
        return float(np.mean(predicted == check_labels(labels, len(predicted))))

    def confidence(self, x) -> float:
        """Mean top-class probability: how digit-like the samples look, whatever the digit."""
        return float(self.model.predict_proba(to_digit_features(x)).max(axis=1).mean())

    def diversity(self, x, labels) -> float:
        """Mean distance between two samples of the same requested class, in the judge's feature
        space, over the same measure for the real images: 1 is as varied as real data, 0 is copies."""
        features = to_digit_features(x)
        return _spread(features, check_labels(labels, len(features))) / self.real_spread

    def fid(self, x) -> float:
        """Fréchet distance between samples and real digits in a 20-d PCA space of 8x8 pixels."""
        return frechet_distance(self.pca.transform(to_digit_features(x)), self.real_features)


@lru_cache(maxsize=4)
def digit_judge(size: int = 16, seed: int = 0, dataset: str = "digits", limit: int = 10000) -> DigitJudge:
    """The judge fit on a labelled digit dataset seen through the same `size` round trip: the
    small track's scikit-learn digits, or the full track's MNIST (`dataset='mnist'`, its first
    `limit` training images), so that accuracy, FD and diversity are measured against the
    digits of the track's own data."""
    from . import data

    check_positive(size, "size")
    check_positive(limit, "limit")
    ds = data.load_dataset(dataset)
    return fit_judge(*data.tensors(ds.select(range(min(limit, len(ds)))), size, 1), seed=seed)


def fit_judge(x, y, seed: int = 0) -> DigitJudge:
    """Fit a judge on 75% of real labelled grey images `x` (N, 1, H, W in [-1, 1]); hold out 25%."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    feats = to_digit_features(x)
    y = check_labels(y, len(feats))
    f_train, f_test, y_train, y_test = train_test_split(feats, y, test_size=0.25, random_state=seed, stratify=y)
    svc = SVC(C=10, gamma="scale", random_state=seed)
    model = make_pipeline(StandardScaler(), CalibratedClassifierCV(svc, ensemble=False))
    model.fit(f_train, y_train)
    pca = PCA(20, random_state=seed).fit(feats)
    return DigitJudge(model, pca, float(model.score(f_test, y_test)), pca.transform(feats), _spread(feats, y))


def _spread(features: np.ndarray, labels: np.ndarray, per_class: int = 100) -> float:
    """Mean pairwise Euclidean distance within each class (first `per_class` of each), averaged."""
    from scipy.spatial.distance import pdist

    spreads = [pdist(features[labels == c][:per_class]).mean() for c in np.unique(labels)
               if (labels == c).sum() > 1]
    if not spreads:
        raise MetricsError("diversity needs at least two images of one class; give several samples per label")
    return float(np.mean(spreads))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fit to rows of a, b."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for name, rows in (("a", a), ("b", b)):
        if rows.ndim != 2 or len(rows) < 2:
            raise MetricsError(f"frechet_distance needs feature rows (N >= 2, dims) for a covariance; {name} has shape "
                               f"{rows.shape}")
        if not np.isfinite(rows).all():
            raise MetricsError(f"the features {name} contain NaN or infinite values; check the images they come from")
    if a.shape[1] != b.shape[1]:
        raise MetricsError(f"a and b must have the same feature dims, got {a.shape[1]} and {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s_a @ s_b)
    if np.iscomplexobj(root):
        root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def pixel_fd(samples, reference, size: int = 8, dims: int = 10) -> float:
    """Fréchet distance between two image sets (N, C, H, W in [-1, 1]) after shrinking both to
    `size` x `size` and projecting onto the reference's first `dims` principal components.

    A cheap stand-in for FID that needs no pretrained network: lower means the samples' coarse
    layout and colours are distributed more like the reference's.
    """
    import torch.nn.functional as F
    from sklearn.decomposition import PCA

    from .data import check_images

    check_positive(size, "size")
    check_positive(dims, "dims")
    samples = check_images(samples, "metrics.pixel_fd (samples)", at_least=2)
    reference = check_images(reference, "metrics.pixel_fd (reference)", at_least=2)
    if samples.shape[1] != reference.shape[1]:
        raise MetricsError(f"samples and reference differ in channels: {samples.shape[1]} vs {reference.shape[1]}")
    a, b = (F.adaptive_avg_pool2d(x.detach().float().cpu().clamp(-1, 1), size).flatten(1).numpy()
            for x in (samples, reference))
    dims = min(dims, len(a) - 1, len(b) - 1, b.shape[1])
    pca = PCA(dims, random_state=0).fit(b)
    return frechet_distance(pca.transform(a), pca.transform(b))


@dataclass
class GenreJudge:
    """A logistic regression on `spectrogram_features`, fit on real slices only, to score
    generated spectrograms by genre."""

    model: object
    held_out_accuracy: float

    def predict(self, images) -> np.ndarray:
        from .audio import spectrogram_features

        return self.model.predict(spectrogram_features(images))

    def share(self, images, genre: int) -> float:
        """Share of `images` classified as `genre`."""
        classes = self.model.classes_.tolist()
        if genre not in classes or isinstance(genre, bool):
            raise MetricsError(f"genre must be one of the judge's classes {classes} (coursekit.music.GENRES for the "
                               f"small corpus), got {genre!r}")
        return float(np.mean(self.predict(images) == genre))


@lru_cache(maxsize=None)
def corpus_judge(preset: str = "small") -> GenreJudge:
    """The genre judge fit on every slice of the small corpus (`coursekit.data.load_dataset('music')`)."""
    from . import audio, data, music

    if preset not in audio.PRESETS:
        raise MetricsError(f"unknown preset {preset!r}; known: {', '.join(audio.PRESETS)}")
    images, labels = music.dataset_images(data.load_dataset("music"), audio.PRESETS[preset])
    return genre_judge(images, labels)


def genre_judge(images, labels, seed: int = 0) -> GenreJudge:
    """Fit the judge on 80% of the slices and report its accuracy on the other 20%."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from .audio import spectrogram_features

    feats = spectrogram_features(images)
    y = check_labels(labels, len(feats))
    f_train, f_test, y_train, y_test = train_test_split(feats, y, test_size=0.2, random_state=seed, stratify=y)
    model = LogisticRegression(max_iter=2000, C=1.0).fit(f_train, y_train)
    return GenreJudge(model, float(model.score(f_test, y_test)))
