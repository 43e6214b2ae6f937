"""EDM: Karras et al. 2022, *Elucidating the Design Space of Diffusion-Based Generative Models*.

Noise is added without shrinking the image, x = x0 + sigma n, and the network F is wrapped so
that its input and target always have unit scale whatever sigma is (the preconditioning):

    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4,          sd = sigma_data = 0.5.

Training draws ln(sigma) from a normal distribution (mean -1.2, std 1.2), the levels where the
loss can still be reduced, and weights the loss by (sigma^2 + sd^2) / (sigma sd)^2 so that every
level contributes on the same scale. Sampling follows the ODE dx/dsigma = (x - D(x; sigma)) / sigma
down Karras' sigma schedule with Heun's second-order steps. diffusers' `EDMEulerScheduler` holds the
same preconditioning (`precondition_inputs`, `precondition_noise`, `precondition_outputs`).
"""
from __future__ import annotations

import os

import torch

from .models import as_predictor, check_objective, check_size, declare_objective, not_finite
from .train import Batch, TrainResult, check_training_data, drop_labels, fit

SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


class EDMError(ValueError):
    """Inputs EDM cannot use; the message says what to change."""


def _column(sigma, x):
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma


def preconditioning(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) at noise level `sigma`."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    total = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


def denoise(network, x: torch.Tensor, sigma) -> torch.Tensor:
    """D(x; sigma): the preconditioned estimate of the clean image. `network(x_in, c_noise)` is F,
    for example a `NoisePredictor` (whose classifier-free guidance then mixes F's outputs)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    c_skip, c_out, c_in, c_noise = (c.to(x.device) for c in preconditioning(sigma))
    f = network(_column(c_in, x) * x, c_noise)
    return _column(c_skip, x) * x + _column(c_out, x) * f


def loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2: with it every noise level's loss has unit scale."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def training_sigmas(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise levels for training: ln(sigma) ~ N(-1.2, 1.2^2)."""
    return (P_MEAN + P_STD * torch.randn(n, generator=generator)).exp()


def train(unet, images: torch.Tensor, labels: torch.Tensor | None = None, *, steps: int, batch_size: int = 64,
          lr: float = 1e-3, warmup: int = 50, p_uncond: float = 0.0, ema_decay: float | None = None, seed: int = 0,
          out_dir: str | os.PathLike | None = None, run: dict | None = None, progress: bool = True,
          **fit_kwargs) -> TrainResult:
    """Train `unet` as EDM's F: the weighted loss lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2 at
    log-normal noise levels, with `coursekit.train.fit`."""
    null = check_training_data(unet, images, labels, p_uncond)
    declare_objective(unet, "edm")

    def edm_loss(model, batch: Batch):
        x0 = images[batch.indices]
        sigma = training_sigmas(len(x0), batch.generator)
        noisy = x0 + _column(sigma, x0) * torch.randn(x0.shape, generator=batch.generator)
        y = None if labels is None else batch.draw(drop_labels(labels[batch.indices], p_uncond, null, batch.generator))
        d = denoise(lambda x_in, c_noise: model(x_in, c_noise, class_labels=y).sample, batch.draw(noisy),
                    batch.draw(sigma))
        per_image = ((d - batch.draw(x0)) ** 2).flatten(1).mean(1)
        return (batch.draw(loss_weight(sigma)) * per_image).mean()

    return fit(unet, edm_loss, len(images), steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
               ema_decay=ema_decay, seed=seed, out_dir=out_dir,
               run={"objective": "EDM (preconditioned, log-normal sigma, weighted)", "p_uncond": p_uncond, **(run or {})},
               progress=progress, **fit_kwargs)


def karras_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """`steps` noise levels from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho), then 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise EDMError(f"steps must be a whole number >= 1, got {steps!r}")
    if not 0 < sigma_min < sigma_max < float("inf"):
        raise EDMError(f"need 0 < sigma_min < sigma_max (finite); got sigma_min {sigma_min}, sigma_max {sigma_max} "
                       f"(EDM's: {SIGMA_MIN} and {SIGMA_MAX})")
    if not 0 < rho < float("inf"):
        raise EDMError(f"rho must be a finite number > 0 (EDM's {RHO} puts more steps at low noise), got {rho}")
    ramp = torch.linspace(0, 1, steps) if steps > 1 else torch.zeros(1)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return torch.cat([inv ** rho, torch.zeros(1)])


def function_evaluations(steps: int) -> int:
    """Network calls of `heun` with `steps` steps: two per step except the last (to sigma = 0)."""
    return 2 * steps - 1


@torch.no_grad()
def heun(model, x: torch.Tensor, *, steps: int = 8, labels=None, guidance_scale: float = 1.0, callback=None,
         progress: bool = False) -> torch.Tensor:
    """EDM's deterministic sampler (Algorithm 1): start at sigma_max times the unit noise `x`, take
    Euler steps along dx/dsigma = (x - D) / sigma and correct each with the slope at its end (Heun),
    except the last step to sigma = 0. `callback(step, {"sigma", "x", "x0"})` after each step."""
    from tqdm.auto import tqdm

    check_objective(model, ("edm",), "coursekit.edm.heun")
    check_size(model, x, "coursekit.edm.heun")
    predictor = as_predictor(model, x, labels=labels, guidance_scale=guidance_scale)
    sigmas = karras_sigmas(steps).to(x.device)
    x = x * sigmas[0]
    for i in tqdm(range(steps), disable=not progress, desc="sampling", leave=False):
        s, s_next = sigmas[i], sigmas[i + 1]
        d0 = denoise(predictor, x, s)
        slope = (x - d0) / s
        x_next = x + (s_next - s) * slope
        if s_next > 0:
            d1 = denoise(predictor, x_next, s_next)
            x_next = x + (s_next - s) * (slope + (x_next - d1) / s_next) / 2
        x = x_next
        if not_finite(x):
            raise EDMError(f"the sample became NaN or infinite at step {i}; check the model and the guidance scale")
        if callback is not None:
            callback(i, {"sigma": s_next, "x": x, "x0": d0})
    return x


def scheduler():
    """diffusers' `EDMEulerScheduler` with this module's constants, saved beside an EDM model."""
    from diffusers import EDMEulerScheduler

    return EDMEulerScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sigma_data=SIGMA_DATA, rho=RHO)

