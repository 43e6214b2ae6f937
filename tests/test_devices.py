"""The measuring and display functions take tensors from any device: a GPU learner's samples
stay on the GPU until a function needs them on the CPU. `GPUTensor` behaves like a CUDA tensor
where it matters here: NumPy refuses it until `.cpu()` is called."""
import numpy as np
import pytest
import torch

from coursekit import audio, data, guidance, inversion, metrics, viz


class GPUTensor(torch.Tensor):
    """A CPU tensor that, like a CUDA one, cannot become a NumPy array without `.cpu()`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.cpu,) or getattr(func, "__name__", "") == "cpu":
            return super().__torch_function__(func, types, args, kwargs).as_subclass(torch.Tensor)
        if getattr(func, "__name__", "") in ("numpy", "__array__", "tolist", "item"):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")
        return super().__torch_function__(func, types, args, kwargs)

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")


def on_gpu(x):
    return x.as_subclass(GPUTensor)


def test_the_stand_in_refuses_numpy_until_moved():
    x = on_gpu(torch.zeros(3))
    with pytest.raises(TypeError, match="cpu"):
        (x + 1).numpy()
    with pytest.raises(TypeError, match="cpu"):
        np.asarray(x)
    assert (x + 1).cpu().numpy().tolist() == [1.0, 1.0, 1.0]


def test_digit_measures_take_gpu_samples_and_labels():
    images, labels = data.tensors(data.load_dataset("digits").select(range(60)), 16, 1)
    judge = metrics.digit_judge(16)
    x, y = on_gpu(images), on_gpu(labels)
    assert judge.accuracy(x, y) == judge.accuracy(images, labels)
    assert judge.diversity(x, y) == pytest.approx(judge.diversity(images, labels))
    assert judge.fid(x) == pytest.approx(judge.fid(images))
    assert judge.confidence(x) == pytest.approx(judge.confidence(images))
    assert metrics.pixel_fd(x, images) == pytest.approx(metrics.pixel_fd(images, images))


def test_image_measures_and_pictures_take_gpu_tensors():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    g = on_gpu(x)
    assert inversion.psnr(g, x) == inversion.psnr(x, x)
    assert inversion.ssim(g, x) == pytest.approx(1.0)
    assert guidance.mean_colour_distance(g, (0.5, 0.5, 0.5)) == guidance.mean_colour_distance(x, (0.5, 0.5, 0.5))
    assert data.to_pil(g)[0].size == (16, 16)
    assert viz.image_grid(g).size == viz.image_grid(x).size


def test_audio_from_a_gpu_image_and_its_features():
    preset = audio.PRESETS["small"]
    image = torch.rand(1, preset.n_mels, preset.frames) * 2 - 1
    wave = audio.from_image(on_gpu(image), preset, generator=torch.Generator().manual_seed(0))
    assert type(wave) is torch.Tensor and wave.shape == ((preset.frames - 1) * preset.hop_length,)
    assert np.allclose(audio.spectrogram_features(on_gpu(image[None])), audio.spectrogram_features(image[None]))
