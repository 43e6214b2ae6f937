"""DDIM inversion and editing: run the deterministic DDIM update backwards from a clean image to
noise, then forwards again, with the same or a new condition.

DDIM at eta = 0 maps noise to an image by a fixed sequence of updates. Each update can be run
the other way, from the less noisy level to the noisier one, if we accept one approximation:
the noise estimate at the level we are going to is taken from the latent we are at. With
small steps that error is small, so inverting and then sampling with the same condition gives
the image back; sampling the last k steps with a new condition edits it (Song et al. 2020;
Mokady et al. 2022). The baseline is SDEdit (Meng et al. 2021): add fresh noise to the level
instead of inverting, then denoise.

Conditions: `labels` for class-conditional UNets (classifier-free guidance with
`guidance_scale`), or `text=(cond, uncond)` prompt embeddings for text-conditional UNets such as
Stable Diffusion's (see `encode_prompt`); either way the noise estimate comes from one
`coursekit.models.NoisePredictor`, and `invert` and `denoise` report each step through
`callback(step, state)`, as every loop in coursekit does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .models import NoisePredictor, as_predictor


class InversionError(ValueError):
    """Images or settings that inversion cannot use; the message says how to fix them."""


@dataclass
class Inversion:
    """The latents from the clean input (index 0) to the noisiest (index `steps`), with the
    timesteps they sit at (None for the clean input)."""

    latents: list = field(default_factory=list)
    timesteps: list = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.latents) - 1

    def at(self, k: int) -> torch.Tensor:
        """The latent after k inversion steps (k = 0 is the input itself)."""
        check_k(k, self.steps)
        return self.latents[k]


def check_images(unet, x: torch.Tensor, latent: bool = False) -> None:
    """Refuse images a model cannot take: wrong rank, channels, size, dtype, NaN or infinity, or
    value range. `latent=True` (VAE latents, or noisy latents to denoise) skips size and range;
    `unet=None` checks only what needs no model."""
    if not isinstance(x, torch.Tensor):
        raise InversionError(f"images must be a torch tensor (N, C, H, W), got {type(x).__name__}; "
                             "use coursekit.data.to_tensor for PIL images")
    if x.ndim != 4:
        raise InversionError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}; add a batch axis with x[None]")
    if len(x) == 0:
        raise InversionError("got an empty batch (0 images); pass at least one")
    if not x.is_floating_point():
        raise InversionError(f"images must be floats in [-1, 1], got dtype {x.dtype}; use x / 127.5 - 1 for 0..255 pixels")
    if not torch.isfinite(x).all():
        raise InversionError("the images or latents contain NaN or infinite values; rebuild them (coursekit.data.to_tensor "
                             "for images, inversion.invert for latents) and find the step that made them")
    if unet is None:
        return
    config = (unet.unet if isinstance(unet, NoisePredictor) else unet).config
    channels, size = config.in_channels, config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if x.shape[1] != channels:
        raise InversionError(f"the model takes {channels} channel(s), the images have {x.shape[1]}"
                             + ("; convert with .convert('L') or .convert('RGB') before to_tensor" if not latent else ""))
    if not latent and (x.shape[2], x.shape[3]) != (height, width):
        shape = height if height == width else (height, width)
        raise InversionError(f"the model takes {height}x{width} images (height x width), got {x.shape[2]}x{x.shape[3]}; "
                             f"resize them (coursekit.data.to_tensor(images, {shape}, {channels}))")
    if not latent and (float(x.min()) < -1.001 or float(x.max()) > 1.001):
        raise InversionError(f"images must be in [-1, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]; "
                             "for 0..1 use x * 2 - 1, for 0..255 use x / 127.5 - 1")


def check_steps(steps, scheduler) -> int:
    """`steps` as a whole number from 1 to the scheduler's training timesteps, else an InversionError."""
    most = scheduler.config.num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= most:
        raise InversionError(f"steps must be a whole number from 1 to {most} (the training timesteps), got {steps!r}; "
                             "50 is usual")
    return steps


def check_k(k, steps: int) -> int:
    """`k` as a whole number of inversion steps from 0 to `steps`, else an InversionError."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= steps:
        raise InversionError(f"k must be a whole number between 0 and {steps} (the inversion steps), got {k!r}")
    return k


def _ddim(scheduler, steps: int):
    """DDIM for inversion: no clipping of x0 (it would break reversibility), and "leading" spacing
    (top step 1000 - 1000/steps), since inverting up to t = 999 divides by sqrt(alpha-bar), about
    5e-5 on the cosine schedule."""
    from diffusers import DDIMScheduler

    if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon":
        raise InversionError("inversion here needs a noise-predicting (epsilon) model")
    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=False, timestep_spacing="leading")
    ddim.set_timesteps(steps)
    return ddim


@torch.no_grad()
def invert(unet, scheduler, x0: torch.Tensor, *, steps: int = 50, labels=None, guidance_scale: float = 1.0,
           text=None, latent: bool = False, progress: bool = True, callback=None) -> Inversion:
    """Run DDIM backwards from clean images (or VAE latents, `latent=True`) to noise.

    Step i goes from level t_{i-1} (the clean input for i = 1) up to t_i:
    x0_hat = (x - sqrt(1 - a_prev) eps) / sqrt(a_prev), x <- sqrt(a_i) x0_hat + sqrt(1 - a_i) eps,
    with eps the model's estimate at (x, t_i). Returns every latent on the way.
    """
    from tqdm.auto import tqdm

    check_images(unet, x0, latent)
    check_steps(steps, scheduler)
    predictor = as_predictor(unet, x0, labels=labels, text=text, guidance_scale=guidance_scale)
    ddim = _ddim(scheduler, steps)
    ab = ddim.alphas_cumprod.to(x0.device)
    upward = ddim.timesteps.flip(0).tolist()
    x, a_prev = x0, ddim.final_alpha_cumprod.to(x0.device)
    out = Inversion([x0.cpu()], [None])
    for i, t in enumerate(tqdm(upward, disable=not progress, desc="inverting", leave=False)):
        eps = predictor(x, t)
        x0_hat = (x - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        a_t = ab[t]
        x = a_t.sqrt() * x0_hat + (1 - a_t).sqrt() * eps
        a_prev = a_t
        out.latents.append(x.cpu())
        out.timesteps.append(int(t))
        if callback is not None:
            callback(i, {"t": t, "x": x, "x0": x0_hat})
    return out


@torch.no_grad()
def denoise(unet, scheduler, x: torch.Tensor, *, steps: int = 50, k: int | None = None, labels=None,
            guidance_scale: float = 1.0, text=None, progress: bool = True, callback=None) -> torch.Tensor:
    """Deterministic DDIM from a latent at the level reached after k of `steps` inversion steps
    (k = steps: pure noise, the whole schedule) down to a clean image."""
    from tqdm.auto import tqdm

    check_images(unet, x, latent=True)
    check_steps(steps, scheduler)
    k = check_k(steps if k is None else k, steps)
    predictor = as_predictor(unet, x, labels=labels, text=text, guidance_scale=guidance_scale)
    ddim = _ddim(scheduler, steps)
    for i, t in enumerate(tqdm(ddim.timesteps[steps - k:], disable=not progress, desc="denoising", leave=False)):
        out = ddim.step(predictor(x, t), t, x, eta=0.0)
        x = out.prev_sample
        if callback is not None:
            callback(i, {"t": t, "x": x, "x0": out.pred_original_sample})
    return x


def edit(unet, scheduler, inversion: Inversion, k: int, *, labels=None, guidance_scale: float = 1.0,
         text=None, progress: bool = True) -> torch.Tensor:
    """Regenerate from the latent k inversion steps deep with a (new) condition. Small k keeps
    more of the source; large k gives the new condition more room."""
    if not isinstance(inversion, Inversion):
        raise InversionError(f"edit takes the Inversion that inversion.invert returns, got {type(inversion).__name__}")
    x = inversion.at(k).to(unet.device)
    return denoise(unet, scheduler, x, steps=inversion.steps, k=k, labels=labels,
                   guidance_scale=guidance_scale, text=text, progress=progress)


def noise_to_level(scheduler, x0: torch.Tensor, steps: int, k: int, generator: torch.Generator | None = None):
    """x0 noised in one jump to the level reached after k of `steps` DDIM inversion steps."""
    check_images(None, x0)
    check_k(k, check_steps(steps, scheduler))
    if k == 0:
        return x0
    ddim = _ddim(scheduler, steps)
    t = ddim.timesteps[steps - k]
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    return ddim.add_noise(x0, noise, torch.full((len(x0),), int(t), dtype=torch.long))


def sdedit(unet, scheduler, x0: torch.Tensor, k: int, *, steps: int = 50, labels=None,
           guidance_scale: float = 1.0, text=None, generator: torch.Generator | None = None,
           latent: bool = False, progress: bool = True) -> torch.Tensor:
    """The add-noise baseline (SDEdit, img2img): fresh noise to the level of step k, then denoise."""
    check_images(unet, x0, latent)
    check_k(k, check_steps(steps, scheduler))
    x = noise_to_level(scheduler, x0, steps, k, generator)
    return denoise(unet, scheduler, x, steps=steps, k=k, labels=labels, guidance_scale=guidance_scale,
                   text=text, progress=progress)


def check_pair(x, reference, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and their reference, finite (N, C, H, W) float tensors of equal shapes, as CPU tensors
    with pixels on 0..1, else an InversionError. Values outside [-1, 1] are clipped first, as for
    display: DDIM without clipping (as inversion runs it) can stray far outside from pure noise."""
    check_images(None, x)
    check_images(None, reference)
    if x.shape != reference.shape:
        raise InversionError(f"{where} needs equal shapes, got {tuple(x.shape)} and {tuple(reference.shape)}")
    return tuple((v.detach().float().cpu().clamp(-1, 1) + 1) / 2 for v in (x, reference))


def psnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] against a reference, averaged over
    the batch: 10 log10(peak^2 / MSE) with pixels scaled to 0..1 (peak 1)."""
    a, b = check_pair(x, reference, "psnr")
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def ssim(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Structural similarity (Wang et al. 2004, scikit-image's implementation), averaged over the
    batch: 1 for identical images, compares local means, contrasts and correlations."""
    from skimage.metrics import structural_similarity

    a, b = (v.permute(0, 2, 3, 1).numpy() for v in check_pair(x, reference, "ssim"))
    if min(a.shape[1:3]) < 3:
        raise InversionError(f"ssim needs images of at least 3x3 pixels, got {a.shape[1]}x{a.shape[2]}; use psnr")
    win = min(7, a.shape[1] - (1 - a.shape[1] % 2), a.shape[2] - (1 - a.shape[2] % 2))
    return float(np.mean([structural_similarity(p, q, data_range=1.0, channel_axis=2, win_size=win)
                          for p, q in zip(a, b)]))


# Stable Diffusion (full track): current diffusers APIs only.

SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def load_stable_diffusion(name: str = SD_MODEL, device: str = "cpu", dtype=None):
    """A StableDiffusionPipeline from a Hub id (pinned revision) or a local folder, with a DDIM
    scheduler and without the safety checker: `coursekit.stable_diffusion.load_pipeline`."""
    from .stable_diffusion import load_pipeline

    return load_pipeline(name, device=device, dtype=dtype)


def encode_prompt(pipe, prompt: str, guidance_scale: float = 1.0, negative_prompt: str | None = None):
    """(cond, uncond) text embeddings from a StableDiffusionPipeline's own `encode_prompt`."""
    cond, uncond = pipe.encode_prompt(prompt, device=pipe.device, num_images_per_prompt=1,
                                      do_classifier_free_guidance=guidance_scale != 1.0,
                                      negative_prompt=negative_prompt)
    return cond, uncond


@torch.no_grad()
def encode_image(pipe, images) -> torch.Tensor:
    """PIL image(s) -> VAE latents scaled by the VAE's scaling factor (VaeImageProcessor)."""
    pixels = pipe.image_processor.preprocess(images).to(pipe.device, pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor):
    """VAE latents -> list of PIL images (VaeImageProcessor postprocessing)."""
    pixels = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(pixels, output_type="pil")


def invert_image(pipe, image, prompt: str, *, steps: int = 50, guidance_scale: float = 1.0, progress: bool = True):
    """Invert a PIL image with a Stable Diffusion pipeline under `prompt`; returns the Inversion
    of its VAE latents."""
    text = encode_prompt(pipe, prompt, guidance_scale)
    latents = encode_image(pipe, image)
    return invert(pipe.unet, pipe.scheduler, latents, steps=steps, guidance_scale=guidance_scale, text=text,
                  latent=True, progress=progress)


def edit_image(pipe, inversion: Inversion, prompt: str, k: int, *, guidance_scale: float = 1.0,
               negative_prompt: str | None = None, progress: bool = True):
    """Regenerate an inverted image under a new prompt from k inversion steps deep; PIL images."""
    text = encode_prompt(pipe, prompt, guidance_scale, negative_prompt)
    latents = edit(pipe.unet, pipe.scheduler, inversion, k, guidance_scale=guidance_scale, text=text, progress=progress)
    return decode_latents(pipe, latents)
