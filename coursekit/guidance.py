"""Loss guidance: steer sampling with the gradient of any differentiable loss on the predicted x0.

At each step the model's noise estimate gives a guess of the clean image,
x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar). A loss on that guess (distance to a
colour, a classifier's -log p(class), ...) is differentiated with respect to x_t, x_t is moved
a little downhill, and the scheduler's ordinary step follows. Two variants:

- `through_unet=False`: the noise estimate is held fixed, so the gradient flows only through
  the x0 formula. Cheap: one forward pass, no UNet backward.
- `through_unet=True`: the gradient also flows through the UNet's noise estimate. It costs a
  backward pass through the UNet and more memory. At equal scale it moves a colour loss less
  than the x-only variant on the course's models (Unit 2 measures both): the network changes its
  noise estimate in response and absorbs part of the nudge.

Losses here: a colour, a classifier's (`train_classifier` fits a small one), and CLIP's
similarity to a prompt (`load_clip`, `clip_loss`, with `clip_pixels` preparing each cut-out as
CLIP's own image processor does). The noise estimate comes from the same
`coursekit.models.NoisePredictor` every sampler uses; the Gradio demo is in `coursekit.demo`.
"""
from __future__ import annotations

import torch

from . import samplers
from .models import as_predictor
from .samplers import SamplerError


def _check_scheduler(scheduler) -> None:
    if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon":
        raise SamplerError("loss guidance here needs a noise-predicting (epsilon) model")
    if not hasattr(scheduler, "alphas_cumprod") or scheduler.init_noise_sigma != 1.0:
        raise SamplerError("loss guidance works with DDPM/DDIM-style schedulers; use samplers.scheduler_named('ddim', ...)")


def predict_x0(scheduler, x: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), for noise-predicting models."""
    _check_scheduler(scheduler)
    ab = scheduler.alphas_cumprod.to(x.device)[int(t)]
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt()


def guidance_gradient(model, scheduler, x, t, loss_fn, *, through_unet: bool = False, labels=None,
                      guidance_scale: float = 1.0):
    """(gradient of loss_fn(x0) with respect to x_t, the noise estimate eps) at step t; `model` is
    a UNet (with its labels and guidance scale) or a NoisePredictor."""
    predictor = as_predictor(model, labels=labels, guidance_scale=guidance_scale)
    x = x.detach().requires_grad_(True)
    if through_unet:
        eps = predictor(x, t)
    else:
        with torch.no_grad():
            eps = predictor(x, t)
    loss = loss_fn(predict_x0(scheduler, x, eps, t))
    if loss.ndim != 0:
        raise SamplerError(f"the guidance loss must be a scalar, got shape {tuple(loss.shape)}")
    (grad,) = torch.autograd.grad(loss, x)
    return grad, eps.detach()


MIN_ALPHA_BAR = 1e-3


def guided_sample(model, scheduler, x: torch.Tensor, loss_fn, *, scale: float, steps: int = 25,
                  through_unet: bool = False, labels=None, guidance_scale: float = 1.0, **kwargs):
    """Loss-guided sampling from the noise `x`: before each scheduler step, x_t -= scale * grad.

    `loss_fn(x0)` takes the predicted clean images (N, C, H, W in about [-1, 1]) and returns a
    scalar. `scale=0` gives the unguided sampler's result exactly. Steps where alpha-bar_t is
    below MIN_ALPHA_BAR are not guided: x0's estimate there is the noise scaled up more than 30
    times, and so would be the gradient (the first step from t = 999 on a cosine schedule, where
    alpha-bar is 2e-9). Other keywords (generator,
    callback, progress, trajectory, eta, ...) go to `coursekit.samplers.sample`.
    """
    import math

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise SamplerError(f"scale must be a finite number (0: no guidance), got {scale!r}")
    predictor = as_predictor(model, x, labels=labels, guidance_scale=guidance_scale)
    _check_scheduler(scheduler)

    def guide(predictor, x, t):
        if scheduler.alphas_cumprod[int(t)] < MIN_ALPHA_BAR:
            return x, predictor(x, t)
        with torch.enable_grad():
            grad, eps = guidance_gradient(predictor, scheduler, x, t, loss_fn, through_unet=through_unet)
        return x - scale * grad, eps

    return samplers.sample(predictor, scheduler, x, steps=steps, guide=guide if scale else None, **kwargs)


def colour_loss(colour) -> "callable":
    """A loss on x0: each image's mean absolute distance of its pixels to an RGB `colour` in
    0..1, summed over the batch (so each image's gradient does not depend on the batch size)."""
    target = check_colour(colour).reshape(1, -1, 1, 1) * 2 - 1

    def loss(x0):
        if x0.shape[1] != target.shape[1]:
            raise SamplerError(f"colour has {target.shape[1]} channels but the images have {x0.shape[1]}")
        return (x0 - target.to(x0.device)).abs().mean(dim=(1, 2, 3)).sum()

    return loss


def check_colour(colour) -> torch.Tensor:
    """`colour` as a tensor of 1 (grey) or 3 (RGB) finite values in 0..1, else a SamplerError."""
    try:
        target = torch.as_tensor(colour, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise SamplerError(f"colour must be numbers in 0..1, such as (0.9, 0.2, 0.1) for red, got {colour!r}") from None
    if target.numel() not in (1, 3) or not torch.isfinite(target).all() or target.min() < 0 or target.max() > 1:
        raise SamplerError(f"colour must be 3 numbers (R, G, B) in 0..1 (or 1 for grey), such as (0.9, 0.2, 0.1), "
                           f"got {colour!r}")
    return target


def mean_colour_distance(x: torch.Tensor, colour) -> float:
    """Euclidean distance, in 0..1 units, between each image's mean colour and `colour`, averaged."""
    target = check_colour(colour).reshape(1, -1)
    mean = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).mean(dim=(2, 3))
    return float((mean - target).norm(dim=1).mean())


def classifier_loss(classifier, labels) -> "callable":
    """A loss on x0: -log p(label | x0) under `classifier` (images to logits), summed over the batch."""
    labels = torch.as_tensor(labels).long()

    def loss(x0):
        wanted = labels.to(x0.device).expand(len(x0)) if labels.ndim == 0 else labels.to(x0.device)
        return torch.nn.functional.cross_entropy(classifier(x0), wanted, reduction="sum")

    return loss


def small_classifier(channels: int, num_classes: int) -> torch.nn.Module:
    """A small CNN from images (N, channels, H, W in [-1, 1]) to class logits, any H and W."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.SiLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
        nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, steps: int = 400, batch_size: int = 64,
                     lr: float = 2e-3, blur_noise: float = 0.3, seed: int = 0, device="cpu",
                     progress: bool = False) -> torch.nn.Module:
    """Fit `small_classifier` on clean images to guide sampling, with `coursekit.train.fit`;
    returns it in eval mode, on `device`.

    The guide sees predicted x0, which early in sampling is far from a clean digit, so training
    images get Gaussian noise with a standard deviation drawn up to `blur_noise` (noise, not
    blur, despite the name). This guide is separate
    from `coursekit.metrics`' judge, which stays an independent measure.
    """
    from . import train

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = small_classifier(images.shape[1], int(labels.max()) + 1).to(device)

    def cross_entropy(model, batch):
        x = images[batch.indices]
        strength = torch.rand(len(x), 1, 1, 1, generator=batch.generator) * blur_noise
        x = x + strength * torch.randn(x.shape, generator=batch.generator)
        return torch.nn.functional.cross_entropy(model(batch.draw(x)), batch.draw(labels[batch.indices]))

    result = train.fit(model, cross_entropy, len(images), steps=steps, batch_size=batch_size, lr=lr,
                       schedule="constant", weight_decay=0.01, clip=None, seed=seed, progress=progress,
                       desc="training the guide classifier")
    return result.unet


CLIP_MODEL = "openai/clip-vit-base-patch32"
# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD: CLIPImageProcessor's defaults, and the values in
# openai/clip-vit-base-patch32's preprocessor_config.json.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_BICUBIC = 3


def load_clip(name: str = CLIP_MODEL, device: str = "cpu"):
    """(model, tokenizer) of a transformers CLIP from a Hub id (pinned revision) or a local folder,
    frozen, safetensors weights only. A full-track guide: no CLIP weights ship offline.

    The folder's preprocessor_config.json, when it has one, is read and must describe what
    `clip_loss` does to each cut-out (`clip_pixels` with the model's image size and CLIP's
    mean/std); a checkpoint prepared otherwise is refused rather than fed pixels unlike its training."""
    import os

    from transformers import CLIPModel, CLIPTokenizer

    from . import hub

    folder = name if os.path.isdir(name) else hub.fetch(
        name, "on the small track guide with a classifier instead (coursekit.guidance.train_classifier)",
        allow_patterns=hub.CLIP_FILES)
    model = CLIPModel.from_pretrained(folder, use_safetensors=True).to(device).eval().requires_grad_(False)
    _check_clip_preprocessing(folder, model.config.vision_config.image_size)
    return model, CLIPTokenizer.from_pretrained(folder)


def _check_clip_preprocessing(folder, image_size: int) -> None:
    """Refuse a CLIP whose preprocessor_config.json asks for other pixels than `clip_loss` gives it.
    Missing keys take CLIPImageProcessor's defaults; both the old (`size: 224`) and the new
    (`size: {"shortest_edge": 224}`) spellings are read."""
    import json
    import math
    import os

    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        config = json.load(f)
    size, crop = config.get("size", 224), config.get("crop_size", 224)
    size = size.get("shortest_edge") if isinstance(size, dict) else size
    crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    wrong = []
    if size != image_size or crop != (image_size, image_size):
        wrong.append(f"resize to {size} and crop {crop} (the model's image size is {image_size})")
    if config.get("resample", _PIL_BICUBIC) != _PIL_BICUBIC:
        wrong.append(f"resample={config['resample']} (coursekit resizes bicubically, PIL's 3)")
    wrong += [f"{key}=false" for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize")
              if not config.get(key, True)]
    if not math.isclose(config.get("rescale_factor", 1 / 255), 1 / 255):
        wrong.append(f"rescale_factor={config['rescale_factor']}")
    for key, ours in (("image_mean", _CLIP_MEAN), ("image_std", _CLIP_STD)):
        values = config.get(key, ours)
        if len(values) != 3 or not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(values, ours)):
            wrong.append(f"{key}={config[key]}")
    if wrong:
        raise ValueError(f"{path} asks for preprocessing that coursekit's CLIP guide does not do: {'; '.join(wrong)}. "
                         f"It reproduces CLIPImageProcessor's defaults (openai/clip-vit-base-patch32) at the model's image size.")


def clip_pixels(images: torch.Tensor, shortest_edge: int = 224, crop_size: int | tuple[int, int] | None = None,
                mean=_CLIP_MEAN, std=_CLIP_STD) -> torch.Tensor:
    """CLIP's `pixel_values` for images in [-1, 1] (N, 3, H, W), differentiably: what transformers'
    CLIPImageProcessor does to the same picture as an 8-bit PIL image.

    Resize so the shortest side is `shortest_edge` (the long side `int(shortest_edge * long / short)`),
    bicubically; centre crop to `crop_size` (default: `shortest_edge`), the top-left corner at
    ((H - h) // 2, (W - w) // 2); then (x - mean) / std with x in 0..1.

    The resize follows PIL's: bicubic with a = -0.5 and the kernel widened when shrinking (torch's
    `antialias=True`), width first, then height, each pass clipped to 0..1 as PIL clips to 0..255.
    What is left is PIL's rounding to 8 bits after each pass (it is not differentiable, so it is
    not copied): under 0.017 in normalised units, and tests/test_clip_preprocessing.py checks it."""
    import torch.nn.functional as F

    if images.ndim != 4 or images.shape[1] != 3:
        raise SamplerError(f"clip_pixels needs RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
    crop_size = shortest_edge if crop_size is None else crop_size
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    h, w = images.shape[-2:]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(shortest_edge * long / short)  # CLIPImageProcessor's rounding (get_resize_output_image_size)
    new_h, new_w = (new_long, shortest_edge) if w <= h else (shortest_edge, new_long)
    if crop_h > new_h or crop_w > new_w:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the resized image {new_h}x{new_w}")
    x = (images.clamp(-1, 1) + 1) / 2
    if new_w != w:
        x = F.interpolate(x, size=(h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    if new_h != h:
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    x = x[:, :, top:top + crop_h, left:left + crop_w]
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _cutouts(images: torch.Tensor, cuts: int, generator: torch.Generator | None, min_share: float):
    """The random square crops behind `random_cutouts`, one (N, C, side, side) tensor per cut, not resized."""
    n, _, h, w = images.shape
    side_max = min(h, w)
    for _ in range(cuts):
        side = int(side_max * (min_share + (1 - min_share) * torch.rand(1, generator=generator).item()))
        side = max(1, side)
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        crop = images[:, :, top:top + side, left:left + side]
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        yield crop


def random_cutouts(images: torch.Tensor, size: int, cuts: int, generator: torch.Generator | None = None,
                   min_share: float = 0.5) -> torch.Tensor:
    """`cuts` random square crops of each image (side between `min_share` and all of the image),
    randomly mirrored and resized to `size`: (cuts * N, C, size, size), differentiable.

    CLIP judges the crops, not one fixed view, so guidance cannot satisfy it with a
    pattern that only fools it at one position and scale (the adversarial-pixels problem).
    The resize here is bilinear; `clip_loss` draws the same crops and prepares each with
    `clip_pixels`, as CLIP's own preprocessing would."""
    return torch.cat([torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
                      for crop in _cutouts(images, cuts, generator, min_share)])


def clip_loss(prompt: str, clip, *, cuts: int = 8, generator: torch.Generator | None = None):
    """A loss on x0: the squared great-circle distance between CLIP's embedding of `prompt` and of
    random cut-outs of each image, averaged over cut-outs and summed over the batch.

    Each cut-out is square and becomes CLIP's input through `clip_pixels` (bicubic resize to the
    model's image size, CLIP's mean/std), the preprocessing the pretrained model was trained with."""
    model, tokenizer = clip
    device = next(model.parameters()).device
    with torch.no_grad():
        tokens = tokenizer([prompt], padding=True, return_tensors="pt").to(device)
        text = torch.nn.functional.normalize(_features(model.get_text_features(**tokens)), dim=-1)
    size = model.config.vision_config.image_size

    def loss(x0):
        if x0.shape[1] != 3:
            raise SamplerError(f"CLIP guidance needs RGB images, got {x0.shape[1]} channel(s)")
        pixels = torch.cat([clip_pixels(crop, size) for crop in _cutouts(x0.clamp(-1, 1), cuts, generator, 0.5)])
        image = torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
        distance = (image - text).norm(dim=-1).div(2).arcsin().pow(2).mul(2)
        return distance.view(cuts, len(x0)).mean(0).sum()

    return loss


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts, clip) -> torch.Tensor:
    """CLIP score per image (Hessel et al. 2021): 100 x the cosine similarity between CLIP's
    embedding of each image (prepared by `clip_pixels`, as CLIP's own processor does) and of its
    prompt (one per image, or one for all), floored at 0."""
    model, tokenizer = clip
    device = next(model.parameters()).device
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise SamplerError(f"got {len(prompts)} prompts for {len(images)} images; give one per image, or one for all")
    tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
    text = torch.nn.functional.normalize(_features(model.get_text_features(**tokens)), dim=-1)
    pixels = clip_pixels(images.to(device, torch.float32), model.config.vision_config.image_size)
    image = torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
    return (100 * (image * text).sum(-1)).clamp_min(0).cpu()


@torch.no_grad()
def clip_image_similarity(images: torch.Tensor, references: torch.Tensor, clip) -> torch.Tensor:
    """Per image, the cosine similarity between CLIP's embedding of it and the mean embedding of
    `references` (DreamBooth's CLIP-I, Ruiz et al. 2022): how much the images show the references' subject."""
    model, _ = clip
    device = next(model.parameters()).device
    size = model.config.vision_config.image_size

    def embed(x):
        pixels = clip_pixels(x.to(device, torch.float32), size)
        return torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)

    target = torch.nn.functional.normalize(embed(references).mean(0, keepdim=True), dim=-1)
    return (embed(images) * target).sum(-1).cpu()


def parse_colour(colour) -> tuple[float, float, float]:
    """An RGB triple in 0..1 from '#rrggbb', 'rgb(r, g, b)' / 'rgba(...)' (0..255) or a triple in 0..1."""
    import re

    if isinstance(colour, str):
        text = colour.strip().lower()
        if re.fullmatch(r"#[0-9a-f]{6}", text):
            return tuple(int(text[i:i + 2], 16) / 255 for i in (1, 3, 5))
        m = re.fullmatch(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(,\s*[\d.]+\s*)?\)", text)
        if m:
            return tuple(min(float(v), 255.0) / 255 for v in m.groups()[:3])
        raise SamplerError(f"cannot read the colour {colour!r}; use '#rrggbb', 'rgb(r, g, b)' or three numbers in 0..1")
    values = tuple(float(v) for v in colour)
    if len(values) != 3 or not all(0 <= v <= 1 for v in values):
        raise SamplerError(f"a colour is three numbers in 0..1 (R, G, B), got {colour!r}")
    return values


def colour_guided_grid(unet, scheduler, colour, scale: float, *, seed: int = 0, n: int = 8, steps: int = 20,
                       through_unet: bool = False, callback=None):
    """`n` samples guided toward `colour` at `scale`, as one PIL grid with a swatch of the target
    beside them; what the demo shows for one press of its button."""
    from PIL import Image

    from . import viz

    rgb = parse_colour(colour)
    g = torch.Generator().manual_seed(int(seed))
    x = guided_sample(unet, scheduler, samplers.noise(unet, n, g), colour_loss(rgb), scale=float(scale), steps=steps,
                      through_unet=through_unet, generator=g, progress=False, callback=callback)
    grid = viz.image_grid(x, nrow=n, scale=max(1, 64 // unet.config.sample_size))
    swatch = Image.new("RGB", (grid.height, grid.height), tuple(round(v * 255) for v in rgb))
    out = Image.new("RGB", (grid.width + swatch.width + 8, grid.height), "white")
    out.paste(swatch, (0, 0))
    out.paste(grid.convert("RGB"), (swatch.width + 8, 0))
    return out
