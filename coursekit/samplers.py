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

from .models import OBJECTIVES, SCHEDULER_OBJECTIVES, ModelError, NoisePredictor, as_predictor, check_objective, not_finite


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

    check_objective(model, ("epsilon", "v_prediction", "sample"), "coursekit.samplers.sample (DDPM, DDIM, ...)")
    predictor = as_predictor(model, x, labels=labels, guidance_scale=guidance_scale)
    check_noise_schedule(scheduler)
    check_steps(steps, scheduler)
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
        if not_finite(x):
            raise SamplerError(f"the sample became NaN or infinite at step {i} (t={int(t)}); check the model's weights, "
                               "the guidance scale and the scheduler")
        if callback is not None:
            callback(i, {"t": t, "x": x, "x0": x0})
    return (x, traj) if trajectory else x


SIGMA_MAX = 20.0


def spaced(cls, scheduler, **extra):
    """A `cls` scheduler on `scheduler`'s noise schedule with "trailing" timestep spacing, so that
    any number of steps starts at the noisiest training timestep (Lin et al. 2024, *Common
    Diffusion Noise Schedules and Sample Steps are Flawed*). diffusers' default, "leading",
    starts 4 DDIM steps at t = 750 and 1 step at t = 0, skipping the noisiest part.

    Where a schedule ends with almost no signal (the cosine schedule's alpha-bar at t = 999 is
    about 2e-9), a noise-predicting model's estimate of x0 there is huge and must be clipped, as
    DDIM and DDPM do when the config says `clip_sample`: DPM-Solver++ gets the same clipping
    (`thresholding` to the same range), and Karras sigmas (Karras et al. 2022) start no higher
    than sigma = 20, where 1/400 of the variance is still signal (Stable Diffusion's schedule
    ends at 14.6). Plain Euler can do neither, so it keeps diffusers' "leading" spacing.
    """
    import diffusers

    check_noise_schedule(scheduler)
    settings = {"timestep_spacing": "trailing"}
    clip = bool(scheduler.config.get("clip_sample", False))
    if issubclass(cls, diffusers.DPMSolverMultistepScheduler) and clip:
        settings.update(thresholding=True, sample_max_value=float(scheduler.config.get("clip_sample_range", 1.0)))
    if issubclass(cls, diffusers.EulerDiscreteScheduler):
        if extra.get("use_karras_sigmas"):
            ab = scheduler.alphas_cumprod
            settings["sigma_max"] = min(SIGMA_MAX, float(((1 - ab[-1]) / ab[-1]) ** 0.5))
        else:
            settings["timestep_spacing"] = "leading"
    return cls.from_config(scheduler.config, **{**settings, **extra})


def check_noise_schedule(scheduler) -> None:
    """Refuse the scheduler of a model trained for another objective than noise prediction on a
    DDPM noise schedule: DDIM and the others would run on the wrong schedule without an error."""
    name = type(scheduler).__name__
    objective = SCHEDULER_OBJECTIVES.get(name) or SCHEDULER_OBJECTIVES.get(scheduler.config.get("_class_name", ""))
    if objective:
        what, right = OBJECTIVES[objective]
        raise SamplerError(f"this model comes with a {name}, so it was trained for {what}: sample it with {right} "
                           "(coursekit.zoo.draw picks the sampler for a zoo model)")


def check_steps(steps, scheduler) -> int:
    """`steps` as a whole number from 1 to the scheduler's training timesteps, else a SamplerError."""
    most = scheduler.config.num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise SamplerError(f"steps must be a whole number from 1 to {most} (the training timesteps), got {steps!r}")
    return steps


def ddpm(model, scheduler, x, *, steps: int | None = None, **kwargs):
    """DDPM ancestral sampling (Ho et al., 2020): by default all the training timesteps."""
    from diffusers import DDPMScheduler

    scheduler = spaced(DDPMScheduler, scheduler)
    return sample(model, scheduler, x, steps=scheduler.config.num_train_timesteps if steps is None else steps, **kwargs)


def ddim(model, scheduler, x, *, steps: int = 25, eta: float = 0.0, **kwargs):
    """DDIM sampling (Song et al., 2020): deterministic at eta=0, DDPM-like noise at eta=1."""
    from diffusers import DDIMScheduler

    if not 0.0 <= eta <= 1.0:
        raise SamplerError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    scheduler = spaced(DDIMScheduler, scheduler)
    if eta > 0:   # near t = 999, 1 - alpha-bar_prev - sigma^2 cancels to below zero in float32
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
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
    built from another scheduler's config, so it uses the model's own noise schedule, with
    trailing spacing (`spaced`)."""
    import diffusers

    if name not in SCHEDULERS:
        raise SamplerError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    return spaced(getattr(diffusers, cls), scheduler, **extra)


NESTED_T_MAX = 960


def nested_grid(steps: int) -> list[int]:
    """DDIM timesteps on the nested grid t_k = k * 960 / steps, from 960 down: halving the steps keeps
    every other point. It stops at 960, where the cosine schedule still leaves some signal, and its
    last step lands on the clean image (alpha-bar 1). Progressive distillation and consistency
    distillation share it."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or NESTED_T_MAX % steps:
        raise SamplerError(f"{steps} steps do not divide the grid ({NESTED_T_MAX} training steps); use 1, 2, 4, ..., 64")
    return [k * NESTED_T_MAX // steps for k in range(steps, 0, -1)]


def alpha_bar(scheduler, t, device) -> torch.Tensor:
    """alpha-bar at timestep `t` (an int or a tensor of them), with alpha-bar = 1 (the clean image)
    at t <= 0, where the nested grid ends; a tensor `t` gives one value per image, shaped to broadcast."""
    if isinstance(t, torch.Tensor) and t.ndim:
        ab = scheduler.alphas_cumprod.to(device)[t.clamp(min=0).to(device)]
        return torch.where(t.to(device) > 0, ab, torch.ones_like(ab)).reshape(-1, 1, 1, 1)
    return torch.tensor(1.0, device=device) if int(t) <= 0 else scheduler.alphas_cumprod.to(device)[int(t)]


def ddim_step(x, eps, ab_t, ab_next):
    """x_next = sqrt(ab_next) x0_hat + sqrt(1 - ab_next) eps, x0_hat = (x - sqrt(1 - ab_t) eps) / sqrt(ab_t)."""
    x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    return ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
