"""Cold diffusion (Bansal et al. 2022, *Cold Diffusion: Inverting Arbitrary Image Transforms
Without Noise*): replace the Gaussian noise by a deterministic corruption, here a Gaussian blur
that grows with t, and train a network R(x_t, t) to restore the clean image.

    degrade(x0, t) = blur(x0, sigma_t),  sigma_t rising linearly from 0 (t = 0) to sigma_max (t = T)
    train:  min |R(degrade(x0, t), t) - x0|                                     (L1, as the paper)
    sample: x_{t-1} = x_t - degrade(x0_hat, t) + degrade(x0_hat, t - 1),  x0_hat = R(x_t, t)

The sampling step is the paper's improved one (its Algorithm 2): it moves x_t by the difference
between two corruptions of the same estimate, so errors in x0_hat largely cancel. At t = T every
image of a 16x16 digit is blurred to almost the same flat patch, so generation from there is
nearly deterministic: what varies the samples has to be added (`start(..., noise=...)`).
The network's timestep input is t scaled to 0..999, so a diffusers UNet takes it as it is.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from .models import as_predictor, check_objective, check_size, declare_objective, not_finite
from .train import Batch, TrainResult, check_training_data, drop_labels, fit

LEVELS = 16
SIGMA_MAX = 8.0


class ColdError(ValueError):
    """Inputs cold diffusion cannot use; the message says what to change."""


def blur_sigmas(levels: int = LEVELS, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """The blur width sigma_t for t = 0..levels, rising linearly from 0."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ColdError(f"levels must be a whole number >= 1, got {levels!r}")
    return torch.linspace(0.0, sigma_max, levels + 1)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of width `sigma` pixels (reflected edges; the identity at sigma 0)."""
    if sigma <= 0:
        return x
    radius = min(int(math.ceil(3 * sigma)), x.shape[-1] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1),
                   groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


def degrade(x0: torch.Tensor, t, levels: int = LEVELS, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """x0 blurred to level t (an int, or one level per image)."""
    sigmas = blur_sigmas(levels, sigma_max)
    t = torch.as_tensor(t).reshape(-1)
    if t.is_floating_point() or t.numel() == 0 or t.min() < 0 or t.max() > levels:
        raise ColdError(f"t is a whole blur level from 0 (sharp) to {levels} (the last), one for all or one per image; "
                        f"got {t.tolist()[:8]}")
    if t.numel() == 1:
        return blur(x0, float(sigmas[int(t)]))
    out = torch.empty_like(x0)
    for level in t.unique().tolist():
        rows = t == level
        out[rows] = blur(x0[rows], float(sigmas[level]))
    return out


def timestep_input(t, levels: int = LEVELS) -> torch.Tensor:
    """Level t as the UNet's timestep, scaled to 0..999."""
    return torch.as_tensor(t, dtype=torch.float32) * 999 / levels


def train(unet, images: torch.Tensor, labels: torch.Tensor | None = None, *, steps: int, levels: int = LEVELS,
          sigma_max: float = SIGMA_MAX, batch_size: int = 64, lr: float = 1e-3, warmup: int = 50, p_uncond: float = 0.0,
          ema_decay: float | None = None, seed: int = 0, out_dir: str | os.PathLike | None = None,
          run: dict | None = None, progress: bool = True, **fit_kwargs) -> TrainResult:
    """Train `unet` as the restoration network R: the L1 distance between R(degrade(x0, t), t) and x0,
    at a level t drawn uniformly from 1..levels, with `coursekit.train.fit`."""
    null = check_training_data(unet, images, labels, p_uncond)
    blur_sigmas(levels, sigma_max)
    declare_objective(unet, "cold")

    def restoration_loss(model, batch: Batch):
        x0 = images[batch.indices]
        t = torch.randint(1, levels + 1, (len(x0),), generator=batch.generator)
        y = None if labels is None else batch.draw(drop_labels(labels[batch.indices], p_uncond, null, batch.generator))
        restored = model(batch.draw(degrade(x0, t, levels, sigma_max)), batch.draw(timestep_input(t, levels)),
                         class_labels=y).sample
        return (restored - batch.draw(x0)).abs().mean()

    return fit(unet, restoration_loss, len(images), steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
               ema_decay=ema_decay, seed=seed, out_dir=out_dir,
               run={"objective": "cold diffusion (blur restoration)", "levels": levels, "sigma_max": sigma_max,
                    "p_uncond": p_uncond, **(run or {})}, progress=progress, **fit_kwargs)


def start(images: torch.Tensor, n: int, levels: int = LEVELS, sigma_max: float = SIGMA_MAX, noise: float = 0.0,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Starting points for generation: `n` copies of the mean fully blurred training image, plus
    Gaussian noise of standard deviation `noise` (0: every sample of a class starts the same)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ColdError(f"n is the number of starting points, a whole number >= 1, got {n!r}")
    if not 0 <= noise < float("inf"):
        raise ColdError(f"noise is a standard deviation, a finite number >= 0 (0.3 is what Unit 4 tries), got {noise}")
    flat = degrade(images, levels, levels, sigma_max).mean(0, keepdim=True).expand(n, -1, -1, -1)
    return flat + noise * torch.randn(flat.shape, generator=generator)


START_SPREAD = 0.5   # the largest per-image standard deviation accepted as a start at the last level


@torch.no_grad()
def sample(model, x: torch.Tensor, *, levels: int = LEVELS, sigma_max: float = SIGMA_MAX, steps: int | None = None,
           start: int | None = None, labels=None, guidance_scale: float = 1.0, callback=None) -> torch.Tensor:
    """Restore `x`, degraded to level `start` (T = `levels` by default), with the improved cold
    sampling step, visiting `steps` of the levels (all of them by default) evenly spaced down to 0."""
    check_objective(model, ("cold",), "coursekit.cold.sample")
    check_size(model, x, "coursekit.cold.sample")
    predictor = as_predictor(model, x, labels=labels, guidance_scale=guidance_scale)
    top = levels if start is None else start
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= levels:
        raise ColdError(f"start must be a level from 1 to {levels}, got {top!r}")
    steps = top if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= top:
        raise ColdError(f"steps must be a whole number from 1 to the starting level ({top}), got {steps!r}")
    spread = float(x.detach().flatten(1).std(1).max()) if x.shape[-1] * x.shape[-2] > 1 else 0.0
    if top == levels and spread > START_SPREAD:
        raise ColdError(f"from the last level cold diffusion starts at a fully blurred, nearly flat image, but this "
                        f"start varies with a standard deviation of {spread:.2f} inside an image (Gaussian noise has "
                        f"1): start from coursekit.cold.start(images, n) (its `noise` adds a little, as Unit 4 shows), "
                        "or give `start` the level the images were blurred to")
    ts = torch.linspace(top, 0, steps + 1).round().long().tolist()
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = predictor(x, timestep_input(t, levels).to(x.device))
        x = x - degrade(x0, t, levels, sigma_max) + degrade(x0, t_next, levels, sigma_max)
        if not_finite(x):
            raise ColdError(f"the sample became NaN or infinite at step {i}; check the model")
        if callback is not None:
            callback(i, {"t": t_next, "x": x, "x0": x0})
    return x
