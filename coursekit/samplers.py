"""Sampling loops over diffusers schedulers: DDPM ancestral, DDIM (with eta) and any other.

Each sampler is a short function of (unet, scheduler, x): `x` is the starting noise, so the
same noise can be handed to several samplers and the results compared. Class labels and
classifier-free guidance are supported for class-conditional UNets (the last class index is
the 'no class' label the model was trained with), done as one batched UNet call per step.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch


class SamplerError(ValueError):
    """Inputs a sampler cannot use; the message says what to change."""


@dataclass
class Trajectory:
    """x_t before each step and the model's prediction of x_0 at that step."""

    timesteps: list = field(default_factory=list)
    xs: list = field(default_factory=list)
    x0s: list = field(default_factory=list)


def null_label(unet) -> int | None:
    """The 'no class' label of a class-conditional UNet (its last class), or None if unconditional."""
    n = getattr(unet.config, "num_class_embeds", None)
    return None if n is None else n - 1


def noise(unet, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Starting noise for `n` samples, drawn exactly as diffusers' pipelines draw it."""
    from diffusers.utils.torch_utils import randn_tensor

    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return randn_tensor((n, unet.config.in_channels, *size), generator=generator,
                        device=unet.device, dtype=unet.dtype)


def _check(unet, x, labels, guidance_scale):
    if x.ndim != 4 or x.shape[1] != unet.config.in_channels:
        raise SamplerError(f"x must have shape (N, {unet.config.in_channels}, H, W) for this model, got {tuple(x.shape)}")
    null = null_label(unet)
    if labels is not None:
        if null is None:
            raise SamplerError("labels were given but this UNet is unconditional (no num_class_embeds); drop labels=")
        labels = torch.as_tensor(labels, device=x.device).long().reshape(-1)
        if labels.numel() == 1 and x.shape[0] > 1:
            labels = labels.expand(x.shape[0])
        if labels.shape[0] != x.shape[0]:
            raise SamplerError(f"got {labels.shape[0]} labels for {x.shape[0]} samples; give one label per sample")
        if labels.min() < 0 or labels.max() > null:
            raise SamplerError(f"labels must lie in 0..{null - 1} ({null} means 'no class'), got {labels.tolist()}")
    elif null is not None:
        labels = torch.full((x.shape[0],), null, device=x.device, dtype=torch.long)
    if guidance_scale != 1.0 and null is None:
        raise SamplerError("classifier-free guidance needs a class-conditional UNet; use guidance_scale=1")
    return labels


def predict_noise(unet, x, t, labels=None, guidance_scale: float = 1.0) -> torch.Tensor:
    """The UNet's output at step t; with guidance_scale != 1, classifier-free guided.

    Guidance runs the conditional and unconditional predictions as one batch of 2N and
    returns uncond + scale * (cond - uncond) (Ho and Salimans, 2022).
    """
    if labels is None or guidance_scale == 1.0:
        return unet(x, t, class_labels=labels).sample
    uncond = torch.full_like(labels, null_label(unet))
    both = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, uncond])).sample
    cond, free = both.chunk(2)
    return free + guidance_scale * (cond - free)


@torch.no_grad()
def sample(unet, scheduler, x: torch.Tensor, *, steps: int = 25, labels=None,
           guidance_scale: float = 1.0, generator: torch.Generator | None = None,
           callback=None, trajectory: bool = False, progress: bool = True, guide=None, **step_kwargs):
    """Run `scheduler` from the noise `x` for `steps` steps; returns the sample (and Trajectory).

    Works with any diffusers scheduler (DDPM, DDIM, DPM-Solver++, Euler, ...): it scales the
    noise by `init_noise_sigma` and the input by `scale_model_input` as the scheduler asks.
    `callback(i, t, x, x0)` is called after each step. Extra keywords (eta=...) go to `step`.
    `guide(x, t) -> (x, eps)`, if given, replaces the noise prediction and may move x first
    (coursekit.guidance uses it for loss guidance).
    """
    from tqdm.auto import tqdm

    labels = _check(unet, x, labels, guidance_scale)
    scheduler.set_timesteps(steps)
    takes = inspect.signature(scheduler.step).parameters
    if "generator" in takes:
        step_kwargs["generator"] = generator
    x = x * scheduler.init_noise_sigma
    traj = Trajectory() if trajectory else None
    for i, t in enumerate(tqdm(scheduler.timesteps, disable=not progress, desc="sampling", leave=False)):
        if guide is not None:
            x, eps = guide(x, t)
        else:
            eps = predict_noise(unet, scheduler.scale_model_input(x, t), t, labels, guidance_scale)
        out = scheduler.step(eps, t, x, **step_kwargs)
        x0 = getattr(out, "pred_original_sample", None)
        if traj is not None:
            traj.timesteps.append(int(t))
            traj.xs.append(x.cpu())
            traj.x0s.append(None if x0 is None else x0.cpu())
        x = out.prev_sample
        if callback is not None:
            callback(i, t, x, x0)
    return (x, traj) if trajectory else x


def ddpm(unet, scheduler, x, *, steps: int | None = None, **kwargs):
    """DDPM ancestral sampling (Ho et al., 2020): by default all the training timesteps."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(scheduler.config)
    return sample(unet, scheduler, x, steps=steps or scheduler.config.num_train_timesteps, **kwargs)


def ddim(unet, scheduler, x, *, steps: int = 25, eta: float = 0.0, **kwargs):
    """DDIM sampling (Song et al., 2020): deterministic at eta=0, DDPM-like noise at eta=1."""
    from diffusers import DDIMScheduler

    if not 0.0 <= eta <= 1.0:
        raise SamplerError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    scheduler = DDIMScheduler.from_config(scheduler.config)
    return sample(unet, scheduler, x, steps=steps, eta=eta, **kwargs)


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
