"""Bad input to datasets, image conversion, audio, music, inversion and the measures: each case is
refused at the entrance with its error type and a message that names the fix, never a silent
wrong result (issue 14, "Nothing silent")."""
import math
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image

from coursekit import audio, data, inversion, metrics, music
from tests.helpers import tiny_scheduler, tiny_unet

P = audio.PRESETS["small"]
NAN = math.nan


def tone(seconds=None, freq=440.0, amp=0.5):
    n = int((seconds or P.slice_seconds) * P.sample_rate)
    return amp * torch.sin(2 * math.pi * freq * torch.arange(n) / P.sample_rate)


def images(n=4, channels=1, size=16):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def spoiled(x, value):
    """`x` with its first value replaced by `value` (NaN, infinity)."""
    x = x.clone()
    x.view(-1)[0] = value
    return x


@cache
def image_dataset():
    import datasets

    return datasets.Dataset.from_dict({"image": [Image.new("L", (8, 8))] * 4, "label": [0, 1, 0, 1]})


@cache
def music_dataset():
    import datasets

    features = datasets.Features({"audio": datasets.Sequence(datasets.Value("float32")),
                                  "sampling_rate": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=list(music.GENRES))})
    wave = tone(1.5).tolist()
    return datasets.Dataset.from_dict({"audio": [wave, wave], "sampling_rate": [8000, 8000], "label": [0, 1]},
                                      features=features)


@cache
def digit_judge():
    x, y = data.tensors(data.load_dataset("digits").select(range(400)), 8, 1)
    return metrics.fit_judge(x, y)


@cache
def genre_judge():
    x = torch.rand(40, 1, P.n_mels, P.frames, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x[20:, :, : P.n_mels // 2] -= 0.5
    return metrics.genre_judge(x, torch.arange(40) // 20)


@cache
def unet():
    return tiny_unet(size=16)


@cache
def rectangular_unet():
    return tiny_unet(size=(16, 8))


@cache
def inverted():
    return inversion.invert(unet(), tiny_scheduler(), images(1), steps=4, progress=False)


DATA_CASES = {
    "digits has no test split": (lambda: data.load_dataset("digits", split="test"),
                                 r"'digits' has no split 'test'; its splits: train; hold images out with .*train_test_split"),
    "photo crops have no validation split": (lambda: data.load_dataset("photo-crops", split="validation"),
                                             r"no split 'validation'; its splits: train.*train_test_split"),
    "flower crops have no test split": (lambda: data.load_dataset("flower-crops", split="test"),
                                        r"no split 'test'; its splits: train.*train_test_split"),
    "music has no test split": (lambda: data.load_dataset("music", split="test"),
                                r"'music' has no split 'test'; its splits: train.*train_test_split"),
    "music genres have no test split": (lambda: data.load_dataset("music_genres", split="test"),
                                        r"no split 'test'; its splits: train.*train_test_split"),
    "MNIST has no validation split": (lambda: data.load_dataset("mnist", split="validation"),
                                      r"'mnist' has no split 'validation'; its splits: train, test$"),
    "butterflies by Hub id have no test split": (
        lambda: data.load_dataset("huggan/smithsonian_butterflies_subset", split="test"), r"its splits: train"),
    "unknown dataset": (lambda: data.load_dataset("cifar"),
                        r"unknown dataset 'cifar'; known: digits, flower-crops, photo-crops, music, .*mnist"),
    "dataset name not a string": (lambda: data.load_dataset(None), r"a dataset name is a string.*known: digits"),
    "two channels": (lambda: data.to_tensor(Image.new("L", (8, 8)), 8, 2), r"channels must be 1 \(grey\) or 3 \(RGB\)"),
    "zero size": (lambda: data.to_tensor(Image.new("L", (8, 8)), 0, 1), r"size is a whole number of pixels >= 1.*sample_size"),
    "size of one number in a tuple": (lambda: data.to_tensor(Image.new("L", (8, 8)), (16,), 1),
                                      r"size is .* or \(height, width\)"),
    "no images": (lambda: data.to_tensor([], 8, 1), "no images; pass one PIL image or a non-empty list"),
    "tensors to to_tensor": (lambda: data.to_tensor([torch.zeros(8, 8)], 8, 1), "PIL images.*use to_pil"),
    "NaN to to_pil": (lambda: data.to_pil(spoiled(images(), NAN)), r"NaN or infinite.*coursekit.data.to_tensor"),
    "infinity to to_pil": (lambda: data.to_pil(spoiled(images(), math.inf)), r"NaN or infinite.*coursekit.data.to_tensor"),
    "0..255 pixels to to_pil": (lambda: data.to_pil(images() * 127.5 + 127.5), r"0\.\.255 pixels use x / 127.5 - 1"),
    "integer pixels to to_pil": (lambda: data.to_pil(images().mul(127).to(torch.uint8)), r"float tensor.*x / 127.5 - 1"),
    "two-channel images to to_pil": (lambda: data.to_pil(torch.zeros(2, 2, 8, 8)), r"shape \(N, 1 or 3, H, W\)"),
    "a list to to_pil": (lambda: data.to_pil([[0.0]]), r"torch tensor.*coursekit.data.to_tensor"),
    "audio dataset to tensors": (lambda: data.tensors(music_dataset(), 8, 1),
                                 r"image dataset.*columns audio, sampling_rate, label.*coursekit.music.dataset_images"),
    "batch size zero": (lambda: data.loader(image_dataset(), 8, 1, 0), "batch_size must be a whole number >= 1"),
    "batch larger than the dataset": (lambda: data.loader(image_dataset(), 8, 1, 5),
                                      "larger than the dataset.*use a smaller batch_size"),
    "four channels to the loader": (lambda: data.loader(image_dataset(), 8, 4, 2),
                                            r"channels must be 1 \(grey\) or 3 \(RGB\)"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_data_refusals(case):
    call, message = DATA_CASES[case]
    with pytest.raises(data.DataError, match=message):
        call()


def nan_wav(tmp_path):
    import soundfile as sf

    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), 8000, subtype="FLOAT")
    return path


IMAGE = torch.zeros(1, P.n_mels, P.frames)

AUDIO_CASES = {
    "NaN sample to to_image": (lambda tmp: audio.to_image(spoiled(tone(), NAN), P), r"NaN or infinite samples.*torch.nan_to_num"),
    "infinite sample to to_image": (lambda tmp: audio.to_image(spoiled(tone(), -math.inf), P), r"NaN or infinite.*nan_to_num"),
    "NaN sample to write_wav": (lambda tmp: audio.write_wav(tmp / "a.wav", spoiled(tone(), NAN), 8000), "nan_to_num"),
    "NaN sample to slices": (lambda tmp: audio.slices(spoiled(tone(3), NAN), P), "nan_to_num"),
    "NaN sample to the player": (lambda tmp: audio.player(spoiled(tone(), NAN), 8000), "nan_to_num"),
    "NaN samples in a float WAV file": (lambda tmp: audio.read_wav(nan_wav(tmp)), "NaN or infinite samples.*nan_to_num"),
    "zero sample rate": (lambda tmp: audio.to_image(tone(), P, sample_rate=0), r"sample_rate must be a whole number of Hz >= 1"),
    "fractional sample rate": (lambda tmp: audio.resample(tone(), 8000.5, 16000), r"sample_rate must be a whole number of Hz"),
    "negative target rate": (lambda tmp: audio.resample(tone(), 8000, -16000), r"new_rate must be a whole number of Hz >= 1"),
    "zero rate to read_wav": (lambda tmp: audio.read_wav(tmp / "missing.wav", sample_rate=0),
                              "sample_rate must be a whole number"),
    "zero hop": (lambda tmp: audio.slices(tone(3), P, hop=0), r"hop is a whole number of samples >= 1 \(None"),
    "negative hop": (lambda tmp: audio.slices(tone(3), P, hop=-10), r"hop is a whole number of samples >= 1"),
    "join nothing": (lambda tmp: audio.join([], P), "no pieces; pass a non-empty list of waveforms"),
    "join one waveform": (lambda tmp: audio.join(tone(), P), r"got one waveform; wrap it: \[wave\]"),
    "fade longer than a piece": (lambda tmp: audio.join([tone(0.1), tone(0.1)], P, fade=5000),
                                 r"fade is a whole number of samples from 0 to the shortest piece \(800\)"),
    "round trip of silence": (lambda tmp: audio.roundtrip_db(torch.zeros(P.slice_samples), P),
                              r"slice is silent .*has no SNR; measure slices with sound"),
    "round trip of dither-level noise": (lambda tmp: audio.roundtrip_db(1e-7 * torch.randn(P.slice_samples), P),
                                         r"silent.*skip those with wave.abs\(\).max\(\) < 1e-3"),
    "NaN in a spectrogram": (lambda tmp: audio.from_image(spoiled(IMAGE, NAN), P), r"NaN or infinite.*regenerate it"),
    "infinity in a spectrogram": (lambda tmp: audio.magnitude_from_image(spoiled(IMAGE, math.inf), P), "NaN or infinite"),
    "0..255 spectrogram": (lambda tmp: audio.from_image(IMAGE + 200, P), r"8-bit grey levels g use g / 255 \* 2 - 1"),
    "integer spectrogram": (lambda tmp: audio.from_image(IMAGE.to(torch.uint8), P), r"floats.*g / 255 \* 2 - 1"),
    "spectrogram of the wrong size": (lambda tmp: audio.from_image(torch.zeros(1, 32, 32), P), r"\(64, 32\) spectrogram"),
    "transposed spectrogram": (lambda tmp: audio.spectrogram_plot(torch.zeros(P.frames, P.n_mels), P),
                               r"expected a \(64, 32\) spectrogram image, got \(32, 64\)"),
    "a batch where one image is expected": (lambda tmp: audio.from_image(torch.zeros(2, 1, P.n_mels, P.frames), P),
                                            r"pass one image.*images\[i\]"),
    "a list as a spectrogram": (lambda tmp: audio.from_image([[0.0]], P), r"torch tensor.*coursekit.audio.to_image"),
    "NaN in spectrogram features": (lambda tmp: audio.spectrogram_features(spoiled(IMAGE[None], NAN)), "NaN or infinite"),
    "empty batch of spectrograms": (lambda tmp: audio.spectrogram_features(torch.zeros(0, 1, 64, 32)),
                                    "empty batch of spectrogram images; pass at least one"),
    "spectrograms without a batch axis": (lambda tmp: audio.spectrogram_features(torch.zeros(64, 32)),
                                          r"\(N, 1, n_mels, frames\).*image\[None\]"),
    "preset with no mel rows": (lambda tmp: audio.MelPreset(8000, 512, 256, 0, 32),
                                r"n_mels must be a whole number >= 1.*PRESETS"),
    "preset with negative top_db": (lambda tmp: audio.MelPreset(8000, 512, 256, 64, 32, top_db=-80.0),
                                    r"top_db must be a finite number of decibels > 0"),
    "mel config with text": (lambda tmp: audio.preset_from_config({**audio.mel_config(P), "n_fft": "big"}),
                             r"must be numbers.*coursekit.audio.mel_config"),
    "unknown timbre": (lambda tmp: music.render_score(None, 8000, "piano", 0.5),
                       r"unknown timbre 'piano'; coursekit renders organ, violin"),
    "zero tempo": (lambda tmp: music.render_score(None, 8000, "organ", 0.0), r"seconds_per_quarter must be a finite number > 0"),
    "zero rate to render": (lambda tmp: music.render_score(None, 0, "organ", 0.5), "rate must be a whole number of Hz >= 1"),
    "no pieces per genre": (lambda tmp: music.music_corpus(per_genre=0, cache=False), "per_genre must be a whole number"),
    "a silent corpus": (lambda tmp: music.spectrogram_dataset({"wave": [np.zeros(20000, np.float32)], "genre": [0]}, P),
                        r"no slice with sound.*give longer or louder audio"),
    "a genre the corpus lacks": (lambda tmp: music.spectrogram_dataset({"wave": [tone(3).numpy()], "genre": [0]}, P, genre=1),
                                 r"of genre 1 .*or a genre among \[0\]"),
    "a wave without a genre": (lambda tmp: music.spectrogram_dataset({"wave": [tone(3).numpy()] * 2, "genre": [0]}, P),
                               "give one genre per wave"),
    "an image dataset as music": (lambda tmp: music.dataset_images(image_dataset(), P),
                                  r"music dataset.*coursekit.data.load_dataset\('music'\).*lacks audio"),
    "genre index out of range": (lambda tmp: music.dataset_images(music_dataset(), P, genre=5),
                                 r"genre is a name \(chorale, fiddle\) or an index 0..1, got 5"),
    "no pieces of a dataset": (lambda tmp: music.dataset_images(music_dataset(), P, pieces=0),
                               r"pieces is a whole number of recordings >= 1 \(None: all\)"),
}


@pytest.mark.parametrize("case", sorted(AUDIO_CASES))
def test_audio_and_music_refusals(case, tmp_path):
    call, message = AUDIO_CASES[case]
    with pytest.raises(audio.AudioError, match=message):
        call(tmp_path)


SCHED = tiny_scheduler()

INVERSION_CASES = {
    "NaN image": (lambda: inversion.invert(unet(), SCHED, spoiled(images(2), NAN), steps=4, progress=False),
                  r"NaN or infinite.*coursekit.data.to_tensor"),
    "infinite latent": (lambda: inversion.denoise(unet(), SCHED, spoiled(images(2), math.inf), steps=4, progress=False),
                        r"NaN or infinite.*inversion.invert for latents"),
    "NaN in SDEdit's source": (lambda: inversion.sdedit(unet(), SCHED, spoiled(images(2), NAN), 2, steps=4, progress=False),
                               "NaN or infinite"),
    "NaN to noise_to_level": (lambda: inversion.noise_to_level(SCHED, spoiled(images(2), NAN), 4, 2), "NaN or infinite"),
    "empty batch": (lambda: inversion.invert(unet(), SCHED, images(0), steps=4, progress=False),
                    "empty batch.*pass at least one"),
    "zero inversion steps": (lambda: inversion.invert(unet(), SCHED, images(1), steps=0, progress=False),
                             r"steps must be a whole number from 1 to 1000 \(the training timesteps\)"),
    "negative denoising steps": (lambda: inversion.denoise(unet(), SCHED, images(1), steps=-3, progress=False),
                                 "steps must be a whole number from 1 to 1000"),
    "fractional SDEdit steps": (lambda: inversion.sdedit(unet(), SCHED, images(1), 1, steps=2.5, progress=False),
                                "steps must be a whole number"),
    "more steps than training steps": (lambda: inversion.invert(unet(), SCHED, images(1), steps=1001, progress=False),
                                       "from 1 to 1000"),
    "k beyond the steps": (lambda: inversion.denoise(unet(), SCHED, images(1), steps=4, k=5, progress=False),
                           r"k must be a whole number between 0 and 4 \(the inversion steps\), got 5"),
    "negative k": (lambda: inversion.noise_to_level(SCHED, images(1), 4, -1), "k must be a whole number between 0 and 4"),
    "fractional k": (lambda: inversion.edit(unet(), SCHED, inverted(), 2.5, progress=False),
                     r"k must be a whole number between 0 and 4 \(the inversion steps\), got 2.5"),
    "k past the inversion": (lambda: inverted().at(5), "between 0 and 4"),
    "edit without an inversion": (lambda: inversion.edit(unet(), SCHED, images(1), 2, progress=False),
                                  "edit takes the Inversion that inversion.invert returns"),
    "landscape images for a portrait model": (
        lambda: inversion.invert(rectangular_unet(), SCHED, torch.zeros(2, 1, 8, 16), steps=4, progress=False),
        r"takes 16x8 images \(height x width\), got 8x16; resize them \(coursekit.data.to_tensor\(images, \(16, 8\), 1\)\)"),
    "square images for a rectangular model": (
        lambda: inversion.sdedit(rectangular_unet(), SCHED, torch.zeros(2, 1, 16, 16), 2, steps=4, progress=False),
        r"takes 16x8 images.*to_tensor\(images, \(16, 8\), 1\)"),
    "NaN to psnr": (lambda: inversion.psnr(spoiled(images(), NAN), images()), "NaN or infinite"),
    "empty batch to ssim": (lambda: inversion.ssim(images(0), images(0)), "empty batch.*pass at least one"),
    "images too small for ssim": (lambda: inversion.ssim(images(2, size=2), images(2, size=2)), r"at least 3x3 pixels.*use psnr"),
    "unequal shapes to psnr": (lambda: inversion.psnr(images(2), images(3)), "psnr needs equal shapes"),
}


@pytest.mark.parametrize("case", sorted(INVERSION_CASES))
def test_inversion_refusals(case):
    call, message = INVERSION_CASES[case]
    with pytest.raises(inversion.InversionError, match=message):
        call()


METRICS_CASES = {
    "NaN to digit features": (lambda: metrics.to_digit_features(spoiled(images(), NAN)), data.DataError,
                              "NaN or infinite.*coursekit.data.to_tensor"),
    "empty batch to digit features": (lambda: metrics.to_digit_features(images(0)), data.DataError,
                                      r"at least 1 image\(s\), got 0; pass a non-empty batch"),
    "colour images to the digit judge": (lambda: digit_judge().predict(images(channels=3)), data.DataError,
                                         r"grey images of shape \(N, 1, H, W\).*x.mean\(1, keepdim=True\)"),
    "0..255 digits": (lambda: digit_judge().confidence(images() * 127.5 + 127.5), data.DataError,
                      r"0\.\.255 pixels use x / 127.5 - 1"),
    "too few labels for accuracy": (lambda: digit_judge().accuracy(images(4), [1, 2]), metrics.MetricsError,
                                    r"one label per image: 4 images"),
    "float labels for accuracy": (lambda: digit_judge().accuracy(images(2), [1.5, 2.0]), metrics.MetricsError,
                                  r"whole-number classes \(ints or a long tensor\)"),
    "one sample per class for diversity": (lambda: digit_judge().diversity(images(2), [0, 1]), metrics.MetricsError,
                                           "at least two images of one class; give several samples per label"),
    "NaN labels to fit_judge": (lambda: metrics.fit_judge(images(4), torch.tensor([0.0, NAN, 1.0, 1.0])),
                                metrics.MetricsError, "whole-number classes"),
    "zero judge size": (lambda: metrics.digit_judge(0), metrics.MetricsError, "size must be a whole number >= 1"),
    "NaN samples to pixel_fd": (lambda: metrics.pixel_fd(spoiled(images(), NAN), images()), data.DataError,
                                r"pixel_fd \(samples\) got NaN or infinite"),
    "one reference image to pixel_fd": (lambda: metrics.pixel_fd(images(), images(1)), data.DataError,
                                        r"pixel_fd \(reference\) needs at least 2 image\(s\), got 1"),
    "empty samples to pixel_fd": (lambda: metrics.pixel_fd(images(0), images()), data.DataError, "pass a non-empty batch"),
    "zero pixel_fd size": (lambda: metrics.pixel_fd(images(), images(), size=0), metrics.MetricsError,
                           "size must be a whole number >= 1"),
    "mixed channels to pixel_fd": (lambda: metrics.pixel_fd(images(channels=3), images()), metrics.MetricsError,
                                   "differ in channels: 3 vs 1"),
    "NaN features": (lambda: metrics.frechet_distance(np.full((5, 3), NAN), np.zeros((5, 3))), metrics.MetricsError,
                     "NaN or infinite values; check the images they come from"),
    "one feature row": (lambda: metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3))), metrics.MetricsError,
                        r"N >= 2, dims\) for a covariance"),
    "features of different dims": (lambda: metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4))),
                                   metrics.MetricsError, "same feature dims, got 3 and 4"),
    "unknown audio preset": (lambda: metrics.corpus_judge("huge"), metrics.MetricsError,
                             r"unknown preset 'huge'; known: teticio, small"),
    "a genre the judge does not know": (lambda: genre_judge().share(torch.zeros(2, 1, 64, 32), 7), metrics.MetricsError,
                                        r"one of the judge's classes \[0, 1\].*coursekit.music.GENRES"),
    "NaN spectrograms to the genre judge": (lambda: genre_judge().predict(spoiled(torch.zeros(2, 1, 64, 32), NAN)),
                                            audio.AudioError, "NaN or infinite"),
    "labels that do not match the spectrograms": (lambda: metrics.genre_judge(torch.zeros(4, 1, 64, 32), [0, 1]),
                                                  metrics.MetricsError, "one label per image: 4 images"),
}


@pytest.mark.parametrize("case", sorted(METRICS_CASES))
def test_metrics_refusals(case):
    call, error, message = METRICS_CASES[case]
    with pytest.raises(error, match=message):
        call()
