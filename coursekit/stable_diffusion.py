"""Stable Diffusion from its parts (Rombach et al. 2022), on either track, through diffusers' own
`StableDiffusionPipeline`.

The parts: a VAE (`AutoencoderKL`) that compresses images into latents, a CLIP text encoder with
its tokenizer that turns a prompt into one vector per token, a `UNet2DConditionModel` that predicts
the noise in a latent and reads the text through cross-attention, and a scheduler. `load_pipeline`
loads the full track's stable-diffusion-v1-5 (pinned) or the zoo's `tiny-sd`, which has every one
of those parts and is trained by `train_tiny` on captioned coloured digits (`coursekit.captions`).

`text_to_image` is the loop the course writes out once: encode the prompt and the empty (or
negative) prompt, start from noise, guide each noise estimate with classifier-free guidance, step
the scheduler, decode. `img2img` starts part-way from a noised encoding of an image (SDEdit, Meng et
al. 2021); `inpaint` keeps the unmasked latents on the input's noised trajectory at every step, so
any text-to-image model can fill a mask.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .models import CHECKPOINTS, ModelError, NoisePredictor

SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY = "tiny-sd"

TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1,
                block_out_channels=(16, 32, 64), norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 projection_dim=64, hidden_act="quick_gelu")
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                 attention_head_dim=8, norm_num_groups=16)
# Stable Diffusion v1's noise schedule, sampled with DDIM and trailing spacing.
TINY_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")


class PipelineError(ModelError):
    """A prompt, image, mask or setting the Stable Diffusion helpers cannot use; the message says why."""


def model_names() -> list[str]:
    return [TINY, SD_MODEL]


def load_pipeline(name: str | os.PathLike = TINY, device: str = "cpu", dtype=None):
    """A `StableDiffusionPipeline` from the zoo (`tiny-sd`), a local folder, or a Hub id at its pinned
    revision (only the fp32 safetensors of each part), with a DDIM scheduler on the model's own
    noise schedule, no safety checker and no progress bar."""
    from . import hub

    with quiet_loading():
        from diffusers import DDIMScheduler, StableDiffusionPipeline

    name = str(name)
    if (CHECKPOINTS / name / "model_index.json").exists():
        folder = CHECKPOINTS / name
    elif os.path.isdir(name):
        folder = Path(name)
        if not (folder / "model_index.json").exists():
            raise PipelineError(f"{folder} has no model_index.json: not a saved pipeline (save one with "
                                "pipe.save_pretrained(folder))")
    elif name.count("/") == 1 and not name.startswith((".", "/")):
        try:
            folder = hub.fetch(name, f"use the small track (the zoo's {TINY!r})", allow_patterns=hub.SD_FILES)
        except hub.HubUnavailable as e:
            raise PipelineError(str(e)) from None
    else:
        raise PipelineError(f"unknown text-to-image model {name!r}: use {TINY!r} (small track), {SD_MODEL!r} (full "
                            "track) or a folder saved with save_pretrained")
    with quiet_loading():
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                       use_safetensors=True, dtype=dtype or torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class quiet_loading:
    """Within it, diffusers and transformers load without progress bars and notices (a notebook
    shows the parts it loaded instead); both libraries' settings come back afterwards."""

    def __enter__(self):
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        self.state = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled(), tlog.get_verbosity(),
                      dlog.get_verbosity())
        dlog.disable_progress_bar()
        dlog.set_verbosity_error()
        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        d_bar, t_bar, t_verbosity, d_verbosity = self.state
        (dlog.enable_progress_bar if d_bar else dlog.disable_progress_bar)()
        (tlog.enable_progress_bar if t_bar else tlog.disable_progress_bar)()
        tlog.set_verbosity(t_verbosity)
        dlog.set_verbosity(d_verbosity)


def check_prompts(prompts, n: int | None = None) -> list[str]:
    """One prompt or a list of them, as a list (repeated to `n` when one is given)."""
    if isinstance(prompts, str):
        prompts = [prompts] * (n or 1)
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise PipelineError(f"prompts are a string or a non-empty list of strings, got {prompts!r}")
    if n is not None and len(prompts) != n:
        raise PipelineError(f"got {len(prompts)} prompts for {n} images; give one per image, or one for all")
    return list(prompts)


@torch.no_grad()
def token_ids(pipe, prompts) -> torch.Tensor:
    """Token ids (N, model_max_length): start token, the prompt's tokens, then end tokens as padding,
    truncated to the text encoder's length, as the pipeline tokenizes."""
    tok = pipe.tokenizer
    return tok(check_prompts(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


@torch.no_grad()
def embed(pipe, prompts) -> torch.Tensor:
    """Prompt embeddings (N, tokens, width): the text encoder's last hidden state, one vector per token."""
    ids = token_ids(pipe, prompts).to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0].to(pipe.unet.dtype)


def predictor(pipe, prompts, guidance_scale: float = 7.5, negative_prompt=None) -> NoisePredictor:
    """The guided noise estimate for these prompts: the UNet with (cond, uncond) embeddings, where
    uncond is the empty prompt or `negative_prompt`."""
    prompts = check_prompts(prompts)
    cond = embed(pipe, prompts)
    uncond = None
    if guidance_scale != 1.0:
        uncond = embed(pipe, check_prompts(negative_prompt if negative_prompt is not None else "", len(prompts)))
    return NoisePredictor(pipe.unet, text=(cond, uncond), guidance_scale=guidance_scale)


def latent_shape(pipe, n: int) -> tuple[int, ...]:
    size = pipe.unet.config.sample_size
    return (n, pipe.unet.config.in_channels, size, size)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1] (N, 3, H, W): undo the scaling factor, run the decoder."""
    return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)


@torch.no_grad()
def encode(pipe, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) -> latents times the scaling factor: the encoder's mean, or,
    with a `generator`, a draw from the encoder's distribution (as diffusers' img2img does)."""
    from .data import check_images

    x = check_images(images, "stable_diffusion.encode", channels=(3,))
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise PipelineError(f"image sides must be multiples of {factor} for this VAE, got {tuple(x.shape[-2:])}")
    dist = pipe.vae.encode(x.to(pipe.vae.device, pipe.vae.dtype)).latent_dist
    z = dist.mean if generator is None else dist.sample(generator)
    return z * pipe.vae.config.scaling_factor


def text_to_image(pipe, prompts, *, steps: int = 25, guidance_scale: float = 7.5, negative_prompt=None,
                  generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                  callback=None, progress: bool = False) -> torch.Tensor:
    """Images in [-1, 1] for `prompts` (one image per prompt): noise drawn as the pipeline draws it,
    `steps` of `pipe.scheduler` with classifier-free guidance, then the decoder."""
    from diffusers.utils.torch_utils import randn_tensor

    from .samplers import sample

    model = predictor(pipe, prompts, guidance_scale, negative_prompt)
    n = len(model.text[0])
    if latents is None:
        latents = randn_tensor(latent_shape(pipe, n), generator=generator, device=pipe.unet.device, dtype=pipe.unet.dtype)
    elif not isinstance(latents, torch.Tensor) or tuple(latents.shape) != latent_shape(pipe, n):
        raise PipelineError(f"latents must be a tensor of shape {latent_shape(pipe, n)} (one per prompt, the UNet's "
                            f"channels and size), got {tuple(getattr(latents, 'shape', ())) or type(latents).__name__}")
    x = sample(model, pipe.scheduler, latents, steps=steps, generator=generator, callback=callback, progress=progress)
    return decode(pipe, x)


def noised(scheduler, latents: torch.Tensor, t, generator: torch.Generator | None = None) -> torch.Tensor:
    """q(z_t | z_0): latents with fresh noise at timestep t."""
    from diffusers.utils.torch_utils import randn_tensor

    eps = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    return scheduler.add_noise(latents, eps, torch.as_tensor([int(t)] * len(latents), device=latents.device))


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise PipelineError(f"strength is the share of the steps to run again, in (0, 1] (0.3: a light touch, 1: "
                            f"ignore the image), got {strength!r}")
    return float(strength)


def img2img(pipe, images: torch.Tensor, prompts, *, strength: float = 0.6, steps: int = 25,
            guidance_scale: float = 7.5, negative_prompt=None, generator: torch.Generator | None = None,
            progress: bool = False) -> torch.Tensor:
    """SDEdit (Meng et al. 2021): encode the images, noise them to the level `strength` of the way
    to pure noise, and run the last `strength` share of the sampling steps under `prompts`
    (int(steps * strength) of them, at least one, as `StableDiffusionImg2ImgPipeline` counts)."""
    from .samplers import check_steps

    strength = check_strength(strength)
    check_steps(steps, pipe.scheduler)
    model = predictor(pipe, check_prompts(prompts, len(images)), guidance_scale, negative_prompt)
    z0 = encode(pipe, images, generator if generator is not None else torch.Generator().manual_seed(0))
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    run = min(steps, max(1, int(steps * strength)))
    timesteps = scheduler.timesteps[steps - run:]
    z = noised(scheduler, z0, timesteps[0], generator)
    for t in _bar(timesteps, progress):
        z = scheduler.step(model(scheduler.scale_model_input(z, t), t), t, z).prev_sample
    return decode(pipe, z)


def check_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1 \
            or mask.shape[-2:] != images.shape[-2:] or mask.shape[0] not in (1, len(images)):
        raise PipelineError(f"mask must be a tensor (N or 1, 1, H, W) the size of the images {tuple(images.shape[-2:])}, "
                            f"1 where to paint and 0 where to keep, got {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.min() < 0 or mask.max() > 1:
        raise PipelineError("mask values lie in [0, 1] (1: paint here, 0: keep)")
    return mask.float()


def inpaint(pipe, images: torch.Tensor, mask: torch.Tensor, prompts, *, steps: int = 25, guidance_scale: float = 7.5,
            negative_prompt=None, generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Fill the masked part (mask 1) of `images` under `prompts` with any text-to-image model: sample
    as usual, but after every step put back the unmasked latents of the input, noised to the level
    the sample has reached, so only the masked part is generated, in keeping with what surrounds it."""
    from diffusers.utils.torch_utils import randn_tensor

    from .samplers import check_steps

    check_steps(steps, pipe.scheduler)
    z0 = encode(pipe, images)
    mask = check_mask(mask, images)
    keep = 1 - F.interpolate(mask, size=z0.shape[-2:], mode="area").gt(0).float().to(z0)
    model = predictor(pipe, check_prompts(prompts, len(z0)), guidance_scale, negative_prompt)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    z = randn_tensor(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype) * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(_bar(timesteps, progress)):
        z = scheduler.step(model(scheduler.scale_model_input(z, t), t), t, z).prev_sample
        known = z0 if i + 1 == len(timesteps) else noised(scheduler, z0, timesteps[i + 1], generator)
        z = keep * known + (1 - keep) * z
    painted = decode(pipe, z)
    return mask * painted + (1 - mask) * images.to(painted)


class Scorer:
    """How well images match their prompts, one number per image. Without `clip_model` (the small
    track), the judge of the tiny model's captions: 1 when the digit and colour the prompt names are
    read back (`captions.prompt_judge`), else 0. With one (the full track), the CLIP score
    (`guidance.clip_score`)."""

    def __init__(self, clip_model: str | None = None, device: str = "cpu"):
        self.kind = "prompt accuracy" if clip_model is None else "CLIP score"
        if clip_model is not None:
            from .guidance import load_clip

            if not isinstance(clip_model, str):
                raise PipelineError(f"clip_model is a Hub id or folder of a CLIP model, or None, got {clip_model!r}")
            self.clip = load_clip(clip_model, device=device)

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        if self.kind == "CLIP score":
            from .guidance import clip_score

            return clip_score(images, prompts, self.clip)
        from . import captions

        judge = captions.prompt_judge()
        prompts = check_prompts(prompts, len(images))
        digits, colours = judge.read(images)
        hits = []
        for p, d, c in zip(prompts, digits, colours):
            want_d, want_c = captions.parse(p)
            hits.append(float((want_d is None or d == want_d) and (want_c is None or c == want_c)))
        return torch.tensor(hits)

    def concept(self, images: torch.Tensor, prompts, references: torch.Tensor) -> torch.Tensor:
        """How much images drawn for a taught concept show it: on the small track, whether the digit and
        colour the prompt names are read back; on the full track, CLIP's image similarity to the
        concept's own pictures (DreamBooth's CLIP-I)."""
        if self.kind == "CLIP score":
            from .guidance import clip_image_similarity

            return clip_image_similarity(images, references, self.clip)
        return self(images, prompts)

    def __repr__(self) -> str:
        return f"Scorer({self.kind!r})"


@torch.no_grad()
def diversity(images: torch.Tensor, size: int = 16) -> float:
    """Mean distance between two images of a batch drawn for one prompt, per pixel, at `size` x `size`
    (0: copies; higher: more varied), the same measure on both tracks."""
    x = F.interpolate(images.detach().float().cpu(), size=(size, size), mode="area").flatten(1)
    if len(x) < 2:
        raise PipelineError("diversity needs at least two images")
    return float(torch.pdist(x).mean() / x.shape[1] ** 0.5)


def _bar(items, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(items, disable=not progress, desc="sampling", leave=False)


# The tiny Stable Diffusion of the zoo.


def build_tiny(tokenizer, seed: int = 0):
    """(vae, text_encoder, unet, scheduler) of the tiny model, freshly initialised, the same for the
    same seed: Stable Diffusion's classes and layout at a few million parameters, 32x32 RGB images,
    8x8x4 latents (a compression factor of 4 per side), 64-wide text embeddings."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**TINY_VAE)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                            pad_token_id=tokenizer.pad_token_id, **TINY_TEXT))
        unet = UNet2DConditionModel(**TINY_UNET)
    return vae, text, unet, DDIMScheduler(**TINY_SCHEDULER)


def vae_loss(vae, x: torch.Tensor, generator: torch.Generator, kl_weight: float = 1e-5) -> torch.Tensor:
    """Reconstruction error of a sampled latent plus a small KL pull towards N(0, 1), which keeps
    the latent space smooth without blurring the images (Kingma and Welling 2014; Rombach et al. 2022)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x.device)
    return F.mse_loss(vae.decode(z).sample, x) + kl_weight * posterior.kl().mean() / x[0].numel()


def train_vae(vae, *, steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, out_dir=None,
              progress: bool = True):
    """Train the autoencoder on digits in random colours (`captions.random_colour_images`); returns
    `train.fit`'s result."""
    from . import captions
    from .train import fit

    shapes, _ = captions.digit_shapes()

    def loss(model, batch):
        x = captions.random_colour_images(len(batch.indices), batch.generator)
        return vae_loss(model, batch.draw(x), batch.generator)

    return fit(vae, loss, len(shapes), steps=steps, batch_size=batch_size, lr=lr, warmup=min(100, steps // 2),
               seed=seed, out_dir=out_dir, run={"part": "vae"}, progress=progress, desc="training the VAE")


@torch.no_grad()
def set_scaling_factor(vae, images: torch.Tensor) -> float:
    """Set (and return) the VAE's latent scaling factor to 1 / std of the latents of `images`, so
    the diffusion model sees latents of unit variance, as Rombach et al. did for Stable Diffusion."""
    std = float(vae.encode(images).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return 1.0 / std


class TextToImage(torch.nn.Module):
    """The UNet and the text encoder, trained together: what `train_text_to_image` optimises."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder


def train_text_to_image(unet, text_encoder, tokenizer, scheduler, latents: torch.Tensor, captions, *,
                        steps: int, batch_size: int = 64, lr: float = 1e-3, p_uncond: float = 0.1,
                        p_partial: float = 0.0, ema_decay: float | None = 0.995, seed: int = 0, out_dir=None,
                        progress: bool = True):
    """Train the UNet and text encoder on (latent, caption) pairs with the noise-prediction
    objective; each caption is replaced by the empty prompt with probability `p_uncond`, so the
    model learns the unconditional estimate classifier-free guidance needs. A caption may come with
    shorter variants (a tuple: full caption first); one of those is used with probability `p_partial`,
    so that a prompt naming one attribute, or a negative prompt, means something too."""
    from .train import drop_labels, fit, noisy_batch

    rows = [(c,) if isinstance(c, str) else tuple(c) for c in captions]
    width = max(len(r) for r in rows)
    table = [r[i] if i < len(r) else r[0] for r in rows for i in range(width)]
    ids = tokenizer(table + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    empty = len(table)
    model = TextToImage(unet, text_encoder)

    def loss(m, batch):
        z_t, t, eps = noisy_batch(scheduler, latents[batch.indices], batch.generator)
        n = len(batch.indices)
        partial = torch.rand(n, generator=batch.generator) < p_partial
        variant = torch.where(partial, torch.randint(1, max(width, 2), (n,), generator=batch.generator), 0)
        chosen = drop_labels(batch.indices * width + variant.clamp(max=width - 1), p_uncond, empty, batch.generator)
        text = m.text_encoder(batch.draw(ids[chosen]))[0]
        return F.mse_loss(m.unet(batch.draw(z_t), batch.draw(t), encoder_hidden_states=text).sample, batch.draw(eps))

    return fit(model, loss, len(latents), steps=steps, batch_size=batch_size, lr=lr, warmup=min(200, steps // 2),
               ema_decay=ema_decay, seed=seed, out_dir=out_dir,
               run={"part": "unet+text_encoder", "p_uncond": p_uncond, "p_partial": p_partial},
               progress=progress, desc="training the UNet and text encoder")


def save_pipeline(folder, vae, text_encoder, tokenizer, unet, scheduler) -> Path:
    """Write the parts as a `StableDiffusionPipeline` folder (model_index.json, one subfolder per
    part, safetensors), which `load_pipeline` and `StableDiffusionPipeline.from_pretrained` read."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
