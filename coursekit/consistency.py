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

Latent consistency (Luo et al. 2023, *Latent Consistency Models*; *LCM-LoRA*) is the same
distillation on a text-to-image model's latents, learned as a LoRA adapter of its UNet, on the
teacher's 50-step DDIM grid (t = 19, 39, ..., 999, each step skipping k = 20 timesteps) and with
LCMScheduler's boundary scalings c_skip(t), c_out(t), so that diffusers' `LCMScheduler` samples
the student as it was trained. `distill_lora` trains one for any Stable Diffusion pipeline;
`lcm_text_to_image` samples a pipeline carrying one.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .models import as_predictor, check_objective, check_size, declare_objective, not_finite, null_label
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
    student = declare_objective(copy.deepcopy(teacher).train().requires_grad_(True), "consistency")
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
    check_objective(model, ("consistency",), "coursekit.consistency.sample")
    check_size(model, x, "coursekit.consistency.sample")
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


# Latent consistency, as a LoRA (LCM-LoRA).

# The layers an LCM-LoRA adapts, as diffusers' LCM-LoRA distillation script targets them: attention,
# the transformer blocks' projections and feed-forward, and the convolutions and time projections of
# the residual blocks (an attention-only adapter cannot change how a step treats the noise level).
LCM_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def lcm_grid(num_train_timesteps: int = 1000, original_steps: int = 50) -> torch.Tensor:
    """The teacher's DDIM timesteps a latent consistency model is distilled on, ascending:
    t_n = n * k - 1 with k = num_train_timesteps // original_steps (19, 39, ..., 999)."""
    if isinstance(original_steps, bool) or not isinstance(original_steps, int) or not 1 <= original_steps <= num_train_timesteps:
        raise ConsistencyError(f"original_steps must be a whole number from 1 to {num_train_timesteps}, got {original_steps!r}")
    k = num_train_timesteps // original_steps
    return torch.arange(1, original_steps + 1) * k - 1


def boundary_scalings(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """(c_skip, c_out) at timesteps `t`, as LCMScheduler computes them: the consistency function is
    f(z, t) = c_skip(t) z + c_out(t) x0_hat, so f(z, 0) = z exactly, and x0_hat alone from t of about 1."""
    scaled = torch.as_tensor(t, dtype=torch.float64) * timestep_scaling
    c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
    c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
    return c_skip.float(), c_out.float()


def consistency_function(eps: torch.Tensor, z: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor):
    """f(z_t, t) of a latent consistency model from its noise estimate, per image: c_skip z + c_out x0_hat."""
    ab = alphas_cumprod.to(z.device)[t.to(z.device)].reshape(-1, 1, 1, 1)
    c_skip, c_out = (c.to(z.device).reshape(-1, 1, 1, 1) for c in boundary_scalings(t))
    return c_skip * z + c_out * clean_estimate(eps, z, ab)


def distill_lora(pipe, images: torch.Tensor, prompts, *, rank: int = 16, guidance_scale: float = 5.0,
                 original_steps: int = 50, steps: int = 1000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                 out_dir=None, progress: bool = True, callback=None, every: int = 100):
    """Latent consistency distillation of `pipe`'s UNet into a LoRA adapter on it (`LCM_TARGETS`).

    Each step noises the latents of a batch of (image, prompt) pairs at a point t of `lcm_grid`,
    takes one DDIM step of the frozen teacher (the UNet before the adapter) with classifier-free
    guidance at `guidance_scale` to t - k, and trains the adapted UNet so that its consistency
    function at t equals its own (no gradient) at t - k. The guidance is distilled in, so the
    student samples with guidance_scale=1. Returns `fit`'s result; `pipe.unet` keeps the adapter
    (save it with `adapters.save_lora`)."""
    import copy

    from .adapters import add_lora, check_pairs, encode_pairs
    from .stable_diffusion import embed
    from .train import fit

    prompts = check_pairs(pipe, images, prompts)
    if float(guidance_scale) < 1:
        raise ConsistencyError(f"guidance_scale is the teacher's classifier-free guidance, 1 or more, got {guidance_scale!r}")
    if getattr(pipe.unet, "peft_config", None):
        raise ConsistencyError("this UNet already carries a LoRA adapter; distil from a freshly loaded pipeline")
    ts = lcm_grid(pipe.scheduler.config.num_train_timesteps, original_steps)
    skip = pipe.scheduler.config.num_train_timesteps // original_steps
    abar = pipe.scheduler.alphas_cumprod
    latents, table, rows = encode_pairs(pipe, images, prompts)
    uncond = embed(pipe, [""]).cpu()
    teacher = copy.deepcopy(pipe.unet).eval().requires_grad_(False)
    add_lora(pipe.unet, rank=rank, targets=LCM_TARGETS, seed=seed)

    def loss(unet, batch):
        g, n = batch.generator, len(batch.indices)
        z0, text = batch.draw(latents[batch.indices]), batch.draw(table[rows[batch.indices]])
        t = ts[torch.randint(0, len(ts), (n,), generator=g)]
        t_prev = (t - skip).clamp(min=0)
        noise = batch.draw(torch.randn(z0.shape, generator=g))
        a_t, a_prev = (batch.draw(abar[s]).reshape(-1, 1, 1, 1) for s in (t, t_prev))
        t, t_prev = batch.draw(t), batch.draw(t_prev)
        z = a_t.sqrt() * z0 + (1 - a_t).sqrt() * noise
        with torch.no_grad():
            both = teacher(torch.cat([z, z]), torch.cat([t, t]),
                           encoder_hidden_states=torch.cat([text, batch.draw(uncond).expand_as(text)])).sample
            cond, free = both.chunk(2)
            z_prev = ddim_step(z, free + guidance_scale * (cond - free), a_t, a_prev)
            target = consistency_function(unet(z_prev, t_prev, encoder_hidden_states=text).sample, z_prev, t_prev, abar)
        online = consistency_function(unet(z, t, encoder_hidden_states=text).sample, z, t, abar)
        return F.mse_loss(online, target)

    result = fit(pipe.unet, loss, len(latents), steps=steps, batch_size=min(batch_size, len(latents)), lr=lr,
                 warmup=min(50, steps // 5), seed=seed, out_dir=out_dir,
                 run={"objective": "latent consistency distillation (LoRA)", "rank": rank,
                      "guidance_scale": guidance_scale, "original_steps": original_steps},
                 progress=progress, callback=callback, every=every, desc="latent consistency distillation")
    pipe.unet.eval()
    return result


def lcm_scheduler(pipe):
    """diffusers' `LCMScheduler` on `pipe`'s noise schedule: the sampler a latent consistency model needs."""
    from diffusers import LCMScheduler

    from .stable_diffusion import quiet_loading

    with quiet_loading():
        return LCMScheduler.from_config(pipe.scheduler.config)


@torch.no_grad()
def lcm_text_to_image(pipe, prompts, *, steps: int = 4, guidance_scale: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] from a pipeline carrying a latent consistency LoRA, one per prompt: diffusers'
    own `StableDiffusionPipeline` call with `LCMScheduler` for `steps` steps (guidance off at 1,
    since the teacher's guidance is distilled in); `pipe.scheduler` is left as it was."""
    from .stable_diffusion import check_prompts

    prompts = check_prompts(prompts)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 50:
        raise ConsistencyError(f"steps must be a whole number from 1 to 50 (LCMScheduler's grid), got {steps!r}")
    kept = pipe.scheduler
    pipe.scheduler = lcm_scheduler(pipe)
    try:
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator,
                   output_type="pt").images
    finally:
        pipe.scheduler = kept
    return (out * 2 - 1).to(torch.float32)
