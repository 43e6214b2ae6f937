"""Sampling loops over diffusers schedulers: DDPM ancestral, DDIM (with eta) and any other.

Each sampler is a short function of (model, scheduler, x). `model` is a UNet, with `labels` and
`guidance_scale` for a class-conditional one, or a `coursekit.models.NoisePredictor` that already
holds its conditioning: either way the noise estimate comes from one NoisePredictor, which does
classifier-free guidance as one batched UNet call. `x` is the starting noise, so the same noise
can be handed to several samplers and the results compared.

Every loop in coursekit reports progress the same way: `callback(step, state)` after each step,
`state` a dict of what that loop has (here `t`, `x` and `x0`, the scheduler's guess of the
clean image, or None for schedulers that make none).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from .models import ModelError, NoisePredictor, as_predictor


class SamplerError(ModelError):
    """Inputs a sampler cannot use; the message says what to change."""


@dataclass
class Trajectory:
    """x_t before each step and the model's prediction of x_0 at that step."""

    timesteps: list = field(default_factory=list)
    xs: list = field(default_factory=list)
    x0s: list = field(default_factory=list)


def _unet(model):
    return model.unet if isinstance(model, NoisePredictor) else model


def noise(model, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Starting noise for `n` samples, drawn exactly as diffusers' pipelines draw it."""
    from diffusers.utils.torch_utils import randn_tensor

    unet = _unet(model)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return randn_tensor((n, unet.config.in_channels, *size), generator=generator,
                        device=unet.device, dtype=unet.dtype)


def predict_noise(unet, x, t, labels=None, guidance_scale: float = 1.0) -> torch.Tensor:
    """The UNet's noise estimate at step t; with guidance_scale != 1, classifier-free guided:
    uncond + scale * (cond - uncond), both halves as one batch of 2N (Ho and Salimans 2022).
    A one-off call of `coursekit.models.NoisePredictor`, which loops build once and reuse."""
    return as_predictor(unet, x, labels=labels, guidance_scale=guidance_scale)(x, t)


@torch.no_grad()
def sample(model, scheduler, x: torch.Tensor, *, steps: int = 25, labels=None,
           guidance_scale: float = 1.0, generator: torch.Generator | None = None,
           callback=None, trajectory: bool = False, progress: bool = True, guide=None, **step_kwargs):
    """Run `scheduler` from the noise `x` for `steps` steps; returns the sample (and Trajectory).

    Works with any diffusers scheduler (DDPM, DDIM, DPM-Solver++, Euler, ...): it scales the
    noise by `init_noise_sigma` and the input by `scale_model_input` as the scheduler asks.
    Extra keywords (eta=...) go to `step`. `guide(predictor, x, t) -> (x, eps)`, if given,
    replaces the noise estimate and may move x first (coursekit.guidance uses it for loss
    guidance).
    """
    from tqdm.auto import tqdm

    predictor = as_predictor(model, x, labels=labels, guidance_scale=guidance_scale)
    scheduler.set_timesteps(steps)
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator
    x = x * scheduler.init_noise_sigma
    traj = Trajectory() if trajectory else None
    for i, t in enumerate(tqdm(scheduler.timesteps, disable=not progress, desc="sampling", leave=False)):
        if guide is not None:
            x, eps = guide(predictor, x, t)
        else:
            eps = predictor(scheduler.scale_model_input(x, t), t)
        out = scheduler.step(eps, t, x, **step_kwargs)
        x0 = getattr(out, "pred_original_sample", None)
        if traj is not None:
            traj.timesteps.append(int(t))
            traj.xs.append(x.cpu())
            traj.x0s.append(None if x0 is None else x0.cpu())
        x = out.prev_sample
        if callback is not None:
            callback(i, {"t": t, "x": x, "x0": x0})
    return (x, traj) if trajectory else x


def ddpm(model, scheduler, x, *, steps: int | None = None, **kwargs):
    """DDPM ancestral sampling (Ho et al., 2020): by default all the training timesteps."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(scheduler.config)
    return sample(model, scheduler, x, steps=steps or scheduler.config.num_train_timesteps, **kwargs)


def ddim(model, scheduler, x, *, steps: int = 25, eta: float = 0.0, **kwargs):
    """DDIM sampling (Song et al., 2020): deterministic at eta=0, DDPM-like noise at eta=1."""
    from diffusers import DDIMScheduler

    if not 0.0 <= eta <= 1.0:
        raise SamplerError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    scheduler = DDIMScheduler.from_config(scheduler.config)
    return sample(model, scheduler, x, steps=steps, eta=eta, **kwargs)


SCHEDULERS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
}


def scheduler_named(name: str, scheduler):
    """A diffusers scheduler of kind `name` ('ddpm', 'ddim', 'dpm++', 'euler', 'euler-karras')
    built from another scheduler's config, so it uses the model's own noise schedule."""
    import diffusers

    if name not in SCHEDULERS:
        raise SamplerError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    return getattr(diffusers, cls).from_config(scheduler.config, **extra)
