"""coursekit's differentiable CLIP preprocessing (`guidance.clip_pixels`) against the code the
pretrained CLIP's inputs are made with: transformers' CLIPImageProcessor with its default config,
which is openai/clip-vit-base-patch32's (bicubic resize of the shortest side to 224, centre crop
224, rescale 1/255, normalise with the OpenAI CLIP mean/std), run on the same 8-bit pictures.

Tolerance. PIL resizes 8-bit images in two passes (width, then height) and rounds to 8 bits after
each; `clip_pixels` keeps floats. The final rounding is at most 0.5/255; the first one, carried
through the vertical kernel (sum of |weights| at most 1.25 for PIL's bicubic, a = -0.5), at most
0.625/255. Together 1.125/255 in 0..1, which divided by the smallest std (0.2613) is 0.0169 in
normalised units: MAX_DIFF = 0.02 (about 1.3 grey levels). Rounding errors are spread evenly, so
on average they are far smaller: measured 0.0035..0.0046, MEAN_DIFF = 0.006. Preprocessing that is
wrong in any way that matters (no normalisation, swapped channels, bilinear without antialiasing,
even bicubic in one pass without PIL's clipping between passes) is off by 10x or more.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from coursekit import guidance

MAX_DIFF = 0.02
MEAN_DIFF = 0.006


def reference_processor():
    """CLIPImageProcessor() on the PIL backend, the resize CLIP was trained with (transformers 5 picks
    a torchvision backend for CLIPImageProcessor when torchvision is installed, PIL otherwise)."""
    try:
        from transformers import CLIPImageProcessorPil as processor
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as processor
    return processor()


def pictures():
    from skimage import data

    astronaut, chelsea = data.astronaut(), data.chelsea()
    resized = lambda a, w, h: np.asarray(Image.fromarray(a).resize((w, h), Image.BICUBIC))
    noise = np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    return {
        "astronaut 512x512": astronaut,                        # square, shrunk 2.3x
        "chelsea 451x300": chelsea,                            # landscape, shrunk 1.3x
        "astronaut 300x512": astronaut[:, 100:400],            # portrait
        "astronaut 896x896": resized(astronaut, 896, 896),     # shrunk 4x
        "chelsea 150x100": resized(chelsea, 150, 100),         # enlarged 2.2x
        "noise 131x97": noise,                                 # enlarged, every pixel an edge
        "noise 300x400": np.random.default_rng(1).integers(0, 256, (400, 300, 3), dtype=np.uint8),
    }


PICTURES = pictures()


def as_input(picture: np.ndarray) -> torch.Tensor:
    """The 8-bit picture as coursekit holds images: float (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1)[None].float() / 127.5 - 1


def coursekit_pixels(picture, processor):
    return guidance.clip_pixels(as_input(picture), processor.size["shortest_edge"],
                                (processor.crop_size["height"], processor.crop_size["width"]),
                                processor.image_mean, processor.image_std)


def differences(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    assert ours.shape == reference.shape
    diff = (ours - reference).abs()
    return diff.max().item(), diff.mean().item()


def test_coursekit_defaults_are_the_processors_defaults():
    processor = reference_processor()
    assert processor.size == {"shortest_edge": 224} and processor.crop_size == {"height": 224, "width": 224}
    assert processor.resample == 3  # PIL bicubic
    assert tuple(processor.image_mean) == guidance._CLIP_MEAN and tuple(processor.image_std) == guidance._CLIP_STD
    picture = PICTURES["chelsea 451x300"]
    torch.testing.assert_close(guidance.clip_pixels(as_input(picture)), coursekit_pixels(picture, processor))


@pytest.mark.parametrize("name", PICTURES)
def test_clip_pixels_equal_clip_image_processor(name):
    processor = reference_processor()
    picture = PICTURES[name]
    reference = processor(images=Image.fromarray(picture), return_tensors="pt").pixel_values
    assert reference.shape == (1, 3, 224, 224)
    worst, mean = differences(coursekit_pixels(picture, processor), reference)
    print(f"{name}: max |diff| {worst:.4f}, mean |diff| {mean:.5f} (normalised units)")
    assert worst <= MAX_DIFF and mean <= MEAN_DIFF


def _shortest_to_224(x):
    h, w = x.shape[-2:]
    return (224, int(224 * w / h)) if h <= w else (int(224 * h / w), 224)


def _crop_and_normalise(x, mean=guidance._CLIP_MEAN, std=guidance._CLIP_STD):
    h, w = x.shape[-2:]
    x = x[:, :, (h - 224) // 2:(h - 224) // 2 + 224, (w - 224) // 2:(w - 224) // 2 + 224]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


WRONG = {
    "no normalisation": lambda x: guidance.clip_pixels(x, mean=(0, 0, 0), std=(1, 1, 1)),
    "channels swapped": lambda x: guidance.clip_pixels(x.flip(1)),
    "bilinear, no antialias": lambda x: _crop_and_normalise(
        F.interpolate((x + 1) / 2, size=_shortest_to_224(x), mode="bilinear", align_corners=False)),
    "bicubic antialias, one pass, no clipping": lambda x: _crop_and_normalise(
        F.interpolate((x + 1) / 2, size=_shortest_to_224(x), mode="bicubic", antialias=True, align_corners=False)),
}


@pytest.mark.parametrize("wrong", WRONG)
def test_wrong_preprocessing_fails_the_same_tolerance(wrong):
    """The comparison has teeth: each of these is a plausible mistake and is caught on the 4x-shrunk photo."""
    processor = reference_processor()
    picture = PICTURES["astronaut 896x896"]
    reference = processor(images=Image.fromarray(picture), return_tensors="pt").pixel_values
    worst, mean = differences(WRONG[wrong](as_input(picture)), reference)
    print(f"{wrong}: max |diff| {worst:.4f}, mean |diff| {mean:.5f}")
    assert worst > 5 * MAX_DIFF


def test_gradients_flow_through_clip_pixels():
    x = as_input(PICTURES["chelsea 451x300"]).requires_grad_(True)
    guidance.clip_pixels(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).float().mean() > 0.5
    # the analytic gradient equals finite differences, shrinking and enlarging, away from the clipping
    for shape, edge in [((1, 3, 7, 11), 5), ((2, 3, 6, 5), 9)]:
        small = (torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.5)
        assert torch.autograd.gradcheck(lambda t, edge=edge: guidance.clip_pixels(t, edge), (small.requires_grad_(True),))


def test_clip_loss_prepares_every_square_cutout_with_clip_pixels(monkeypatch, tmp_path):
    from tests.helpers import save_tiny_clip

    clip = guidance.load_clip(str(save_tiny_clip(tmp_path)))
    seen = []
    real = guidance.clip_pixels

    def spy(images, *args, **kwargs):
        out = real(images, *args, **kwargs)
        seen.append((images.shape, out.shape))
        return out

    monkeypatch.setattr(guidance, "clip_pixels", spy)
    x0 = torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = guidance.clip_loss("a cat", clip, cuts=3, generator=torch.Generator().manual_seed(0))(x0)
    assert torch.isfinite(loss) and len(seen) == 3
    for crop, out in seen:
        assert crop[0] == 2 and crop[-1] == crop[-2] and out == (2, 3, 32, 32)  # the tiny CLIP's image size


def test_load_clip_reads_the_preprocessor_config_and_refuses_other_preprocessing(tmp_path):
    import json

    from tests.helpers import save_tiny_clip

    folder = save_tiny_clip(tmp_path)
    # openai/clip-vit-base-patch32's file (old spelling), at the tiny model's image size of 32
    openai = {"crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(guidance._CLIP_MEAN),
              "image_std": list(guidance._CLIP_STD), "resample": 3, "size": 32}
    config = folder / "preprocessor_config.json"
    config.write_text(json.dumps(openai))
    guidance.load_clip(str(folder))
    config.write_text(json.dumps({**openai, "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}))
    guidance.load_clip(str(folder))
    for change, message in [({"resample": 2}, "resample=2"), ({"image_mean": [0.5, 0.5, 0.5]}, "image_mean"),
                            ({"size": 224, "crop_size": 224}, "image size is 32"), ({"do_normalize": False}, "do_normalize")]:
        config.write_text(json.dumps({**openai, **change}))
        with pytest.raises(ValueError, match=message):
            guidance.load_clip(str(folder))
