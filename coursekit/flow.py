"""Flow matching and rectified flow (Lipman et al. 2023, *Flow Matching for Generative Modeling*;
Liu et al. 2023, *Flow Straight and Fast*), the objective of Stable Diffusion 3 and Flux.

Noise and data are joined by a straight line: at time s in [0, 1] (s = 1 pure noise, diffusers'
convention) x_s = (1 - s) x0 + s noise. Along it the point moves with constant velocity
v = noise - x0, and the network learns to predict that velocity from (x_s, s); its timestep
input is 1000 s, as in `FlowMatchEulerDiscreteScheduler`. Sampling integrates dx/ds = v(x, s)
from s = 1 to 0 with Euler steps. Reflow trains a second model on (noise, sample) pairs drawn by
the first, so that each noise has one straight path to its sample and few steps suffice.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .models import as_predictor, check_objective, check_size, declare_objective, not_finite
from .train import Batch, SettingsError, TrainResult, check_training_data, drop_labels, fit

TRAIN_TIMESTEPS = 1000


class FlowError(ValueError):
    """Inputs flow matching cannot use; the message says what to change."""


def interpolate(x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The point at time `s` (one per image) on the straight line from x0 (s = 0) to noise (s = 1)."""
    s = torch.as_tensor(s, dtype=x0.dtype, device=x0.device)
    if not torch.isfinite(s).all() or s.min() < 0 or s.max() > 1:
        raise FlowError("s is the time along the line, in [0, 1] (0: the data, 1: the noise); got values outside it")
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity along that line, d x_s / d s: what the network learns to predict."""
    return noise - x0


def scheduler():
    """diffusers' `FlowMatchEulerDiscreteScheduler` with this module's conventions (no shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_TIMESTEPS, shift=1.0)


def sigmas(steps: int) -> torch.Tensor:
    """`steps` + 1 evenly spaced times from 1 (noise) to 0 (data): every step count starts at pure noise."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise FlowError(f"steps must be a whole number >= 1, got {steps!r}")
    return torch.linspace(1.0, 0.0, steps + 1)


def train(unet, images: torch.Tensor, labels: torch.Tensor | None = None, *, steps: int, batch_size: int = 64,
          lr: float = 1e-3, warmup: int = 50, p_uncond: float = 0.0, ema_decay: float | None = None, seed: int = 0,
          pairs: torch.Tensor | None = None, out_dir: str | os.PathLike | None = None, run: dict | None = None,
          progress: bool = True, **fit_kwargs) -> TrainResult:
    """Train `unet` to predict the velocity noise - x0 at a uniform random time, with `coursekit.train.fit`.

    With `pairs` (the noise each image was sampled from, same shape as `images`) the line joins each
    image to its own noise: reflow. Otherwise a fresh noise is drawn for every image at every step.
    """
    null = check_training_data(unet, images, labels, p_uncond)
    if pairs is not None and pairs.shape != images.shape:
        raise FlowError(f"pairs must hold one noise per image, shape {tuple(images.shape)}, got {tuple(pairs.shape)}")
    declare_objective(unet, "flow")

    def flow_loss(model, batch: Batch):
        x0 = images[batch.indices]
        s = torch.rand(len(x0), generator=batch.generator)
        noise = torch.randn(x0.shape, generator=batch.generator) if pairs is None else pairs[batch.indices]
        y = None if labels is None else batch.draw(drop_labels(labels[batch.indices], p_uncond, null, batch.generator))
        pred = model(batch.draw(interpolate(x0, noise, s)), batch.draw(s * TRAIN_TIMESTEPS), class_labels=y).sample
        return F.mse_loss(pred, batch.draw(velocity(x0, noise)))

    objective = "rectified flow (reflow)" if pairs is not None else "flow matching"
    return fit(unet, flow_loss, len(images), steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
               ema_decay=ema_decay, seed=seed, out_dir=out_dir, run={"objective": objective, "p_uncond": p_uncond,
                                                                     **(run or {})},
               progress=progress, **fit_kwargs)


@torch.no_grad()
def euler(model, x: torch.Tensor, *, steps: int = 8, labels=None, guidance_scale: float = 1.0, callback=None,
          progress: bool = False) -> torch.Tensor:
    """Integrate dx/ds = v(x, s) from the noise `x` at s = 1 to s = 0 in `steps` Euler steps.
    `callback(step, {"s", "x"})` after each step; guidance is classifier-free, on the velocity."""
    from tqdm.auto import tqdm

    check_objective(model, ("flow",), "coursekit.flow.euler")
    check_size(model, x, "coursekit.flow.euler")
    predictor = as_predictor(model, x, labels=labels, guidance_scale=guidance_scale)
    s = sigmas(steps).to(x.device)
    for i in tqdm(range(steps), disable=not progress, desc="sampling", leave=False):
        v = predictor(x, s[i] * TRAIN_TIMESTEPS)
        x = x + (s[i + 1] - s[i]) * v
        if not_finite(x):
            raise FlowError(f"the sample became NaN or infinite at step {i}; check the model and the guidance scale")
        if callback is not None:
            callback(i, {"s": s[i + 1], "x": x})
    return x


@torch.no_grad()
def reflow_pairs(model, labels: torch.Tensor | None, n: int, *, steps: int = 32, guidance_scale: float = 1.0,
                 batch: int = 500, generator: torch.Generator | None = None, progress: bool = True):
    """(noise, sample, labels): `n` samples of `model`, each with the noise it was drawn from, the
    training pairs of one reflow round. `labels` (one per sample) for a class-conditional model."""
    from tqdm.auto import tqdm

    from .samplers import noise as draw_noise

    if labels is not None and len(labels) != n:
        raise SettingsError(f"labels must hold one class per sample ({n}), got {len(labels)}")
    z = draw_noise(model, n, generator)
    out = []
    for i in tqdm(range(0, n, batch), disable=not progress, desc="reflow pairs", leave=False):
        y = None if labels is None else labels[i:i + batch]
        out.append(euler(model, z[i:i + batch], steps=steps, labels=y, guidance_scale=guidance_scale))
    return z, torch.cat(out).clamp(-1, 1), labels
