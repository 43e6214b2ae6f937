"""Consistency distillation (Song, Dhariwal, Chen and Sutskever 2023, *Consistency Models*): a
student learns a function f(x_t, t) that maps every point of one sampling trajectory to the same
clean image, so one call draws a sample, and a few calls (noise again, map again) refine it.

Choices, in the course's terms:
- The student keeps the teacher's epsilon parameterisation: f(x_t, t) is its estimate of x0,
  (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t), on progressive distillation's nested grid
  (`coursekit.samplers.nested_grid`, t_k = k * 960 / N). At t = 0 alpha-bar is 1, so f(x, 0) = x
  exactly: the boundary condition the paper enforces with c_skip and c_out holds by construction.
- Each training step picks a grid point t_{n+1} per image, noises the image there, takes one
  guided DDIM step of the teacher to t_n, and asks the student's f at t_{n+1} to equal its own f
  at t_n (with no gradient through the target, as improved consistency training does instead of
  an EMA copy). The loss is written for epsilon with the truncated-SNR weight of progressive
  distillation, capped the same way.
- The teacher's classifier-free guidance is distilled in, so the student samples with
  guidance_scale=1 and one UNet call per step. Multistep sampling is diffusers' `LCMScheduler`
  loop on the nested grid (`sample` is checked against it).
"""
from __future__ import annotations

import copy

import torch

from .models import as_predictor, not_finite, null_label
from .samplers import SamplerError, alpha_bar, ddim_step, nested_grid


class ConsistencyError(ValueError):
    """Models or settings consistency distillation cannot use; the message says why."""


def clean_estimate(eps: torch.Tensor, x: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """f(x_t, t) from a noise estimate: the x0 that the noise estimate implies (x itself at alpha-bar 1)."""
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt()


def distill(teacher, scheduler, images: torch.Tensor, labels: torch.Tensor | None = None, *, grid_steps: int = 32,
            guidance_scale: float = 1.5, steps: int = 600, batch_size: int = 64, lr: float = 1e-4,
            max_weight: float | None = 5.0, seed: int = 0, progress: bool = True, callback=None, out_dir=None):
    """A consistency model distilled from `teacher` (a copy of it, trained with `coursekit.train.fit`)
    on the nested grid of `grid_steps` DDIM steps. Returns (student, losses)."""
    from . import train

    ts = torch.tensor([*nested_grid(grid_steps), 0]).flip(0)          # t_0 = 0 < t_1 < ... < t_N = 960
    null = null_label(teacher)
    if (labels is None) != (null is None):
        raise ConsistencyError("pass labels exactly when the teacher is class-conditional")
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    teacher = teacher.eval().requires_grad_(False)

    def consistency_loss(model, batch):
        g, device = batch.generator, batch.device
        x0 = batch.draw(images[batch.indices])
        y = None if labels is None else batch.draw(labels[batch.indices])
        n = torch.randint(1, len(ts), (len(batch.indices),), generator=g)
        noise = batch.draw(torch.randn((len(batch.indices), *images.shape[1:]), generator=g))
        t, t_prev = batch.draw(ts[n]), batch.draw(ts[n - 1])
        a_t, a_prev = alpha_bar(scheduler, t, device), alpha_bar(scheduler, t_prev, device)
        z = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        with torch.no_grad():
            guided = as_predictor(teacher, z, labels=y, guidance_scale=guidance_scale)
            z_prev = ddim_step(z, guided(z, t), a_t, a_prev)
            target_x0 = clean_estimate(model(z_prev, t_prev, class_labels=y).sample, z_prev, a_prev)
            eps_target = (z - a_t.sqrt() * target_x0) / (1 - a_t).sqrt()
            weight = torch.clamp((1 - a_t) / a_t, min=1.0, max=max_weight)
        return (weight * (model(z, t, class_labels=y).sample - eps_target) ** 2).mean()

    result = train.fit(student, consistency_loss, len(images), steps=steps, batch_size=batch_size, lr=lr,
                       schedule="linear", seed=seed, out_dir=out_dir, callback=callback, progress=progress,
                       desc=f"consistency distillation ({grid_steps}-step grid)")
    return result.unet.eval().requires_grad_(False), result.losses


@torch.no_grad()
def sample(model, scheduler, x: torch.Tensor, *, steps: int = 1, labels=None, guidance_scale: float = 1.0,
           generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Multistep consistency sampling from the noise `x` at t = 960: map to a clean image, noise it
    to the next grid point with fresh noise, map again; `steps` calls in all (1, 2, 4, ... 64)."""
    predictor = as_predictor(model, x, labels=labels, guidance_scale=guidance_scale)
    ts = nested_grid(steps)
    for i, t in enumerate(ts):
        x0 = clean_estimate(predictor(x, t), x, alpha_bar(scheduler, t, x.device))
        if i + 1 < len(ts):
            a_next = alpha_bar(scheduler, ts[i + 1], x.device)
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * torch.randn(x.shape, generator=generator).to(x.device)
        else:
            x = x0
        if not_finite(x):
            raise SamplerError(f"the sample became NaN or infinite at step {i} (t={t}); check the model's weights")
        if callback is not None:
            callback(i, {"t": t, "x": x, "x0": x0})
    return x
