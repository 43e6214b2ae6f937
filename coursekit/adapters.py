"""Customising a pretrained text-to-image model without retraining it: LoRA and ControlNet.

LoRA (Hu et al. 2021) freezes every weight and learns a low-rank update W + (alpha / r) B A beside
some of them (here the attention projections of the UNet), through peft and diffusers' adapter
API: the adapter is a small file that loads into the unchanged model and can be scaled at
inference. ControlNet (Zhang et al. 2023) copies the UNet's encoder, feeds it a spatial condition
(Canny edges here) through a small convolutional embedding, and adds its outputs to the frozen
UNet's skip connections through convolutions initialised to zero, so training starts from the
unchanged model.

`train_unet` fine-tunes whatever part of a pipeline's UNet requires gradients (a LoRA adapter, or
everything) on images and prompts; `train_controlnet` trains a ControlNet on images, prompts and
their edges. Both use the course's one training loop (`coursekit.train.fit`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .models import ModelError

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_FILE = "pytorch_lora_weights.safetensors"
CANNY_THRESHOLDS = (100, 200)


class AdapterError(ModelError):
    """An adapter, condition or setting the helpers cannot use; the message says what to do."""


def trainable_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def add_lora(unet, rank: int = 4, alpha: float | None = None, targets=LORA_TARGETS, name: str = "default",
             seed: int = 0) -> int:
    """Freeze `unet` and add a LoRA adapter of rank `rank` to its attention projections (diffusers'
    `add_adapter` with a peft `LoraConfig`); returns the number of trainable parameters. B starts
    at zero, so the model is unchanged until training moves it; A's random start is drawn from
    `seed`, so the same call gives the same adapter whatever ran before it."""
    from peft import LoraConfig

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"rank must be a whole number >= 1 (4 to 16 is usual), got {rank!r}")
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                                    target_modules=list(targets)), adapter_name=name)
    return trainable_parameters(unet)


def lora_state_dict(unet, name: str = "default") -> dict:
    """The adapter's weights as peft names them (`<module>.lora_A.weight`, `<module>.lora_B.weight`),
    which `load_lora_weights` reads for every kind of layer; diffusers' older naming covers only
    attention projections, so an adapter on convolutions too would lose part of itself."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=name)


def save_lora(pipe, folder: str | os.PathLike, name: str = "default") -> Path:
    """Write the UNet's LoRA adapter as `pytorch_lora_weights.safetensors` in `folder`, the standard
    file `pipe.load_lora_weights(folder)` reads, with the adapter's peft config (rank, alpha, targets) in
    the file's metadata, so an adapter whose alpha is not its rank reloads at its own scale; returns the
    file's path."""
    folder = Path(folder)
    config = pipe.unet.peft_config[name].to_dict()
    type(pipe).save_lora_weights(folder, unet_lora_layers=lora_state_dict(pipe.unet, name), safe_serialization=True,
                                 unet_lora_adapter_metadata=config)
    return folder / LORA_FILE


def lora_folder(name: str | os.PathLike) -> Path:
    """The folder holding `pytorch_lora_weights.safetensors` for a zoo adapter name, a local folder, or a
    Hub id (fetched at its pinned revision, that file only)."""
    from . import hub
    from .models import CHECKPOINTS

    is_path = not isinstance(name, str) or name.startswith((".", "/", "~")) or os.path.isdir(name)
    name = str(name)
    if not is_path and (CHECKPOINTS / name / LORA_FILE).is_file():
        return CHECKPOINTS / name
    if is_path:
        folder = Path(name).expanduser()
        if not (folder / LORA_FILE).is_file():
            raise AdapterError(f"no LoRA file at {folder / LORA_FILE}; write one with coursekit.adapters.save_lora(pipe, folder)")
        return folder
    if name.count("/") == 1:
        try:
            return hub.fetch(name, "use the small track (a zoo adapter for 'tiny-sd')", **hub.model_files(name))
        except hub.HubUnavailable as e:
            raise AdapterError(str(e)) from None
    raise AdapterError(f"unknown LoRA {name!r}: give a zoo adapter ({', '.join(zoo_adapters()) or 'none shipped'}), a "
                       f"folder holding {LORA_FILE} or a Hub id")


def zoo_adapters() -> list[str]:
    from .models import CHECKPOINTS

    return sorted(p.parent.name for p in CHECKPOINTS.glob(f"*/{LORA_FILE}"))


def load_lora(pipe, folder: str | os.PathLike, name: str = "default", scale: float = 1.0) -> None:
    """Load a LoRA (a folder written by `save_lora`, a zoo adapter's name, or a Hub id such as
    latent-consistency/lcm-lora-sdv1-5; diffusers' or kohya's key names) into `pipe` as adapter
    `name` at `scale`, by `pipe.load_lora_weights`, without its notice that the text encoder has
    no LoRA keys."""
    from .stable_diffusion import quiet_loading

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale or abs(scale) == float("inf"):
        raise AdapterError(f"scale must be a finite number (0: the base model, 1: the adapter as trained), got {scale!r}")
    folder = lora_folder(folder)
    with quiet_loading():
        pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name=name)
    pipe.set_adapters([name], adapter_weights=[scale])


def check_pairs(pipe, images, prompts) -> list[str]:
    from .data import check_images
    from .stable_diffusion import check_prompts

    check_images(images, "training images", channels=(3,))
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if tuple(images.shape[-2:]) != (size, size):
        raise AdapterError(f"training images must be {size}x{size} for this pipeline, got {tuple(images.shape[-2:])}; "
                           "resize them (coursekit.data.to_tensor)")
    return check_prompts(prompts, len(images))


@torch.no_grad()
def encode_pairs(pipe, images: torch.Tensor, prompts: list[str]):
    """(latents, table, rows) for training on (image, prompt) pairs: the VAE latents of `images`, the
    text embeddings of each distinct prompt, and which row of that table each image's prompt is."""
    from .stable_diffusion import embed, encode

    latents = torch.cat([encode(pipe, images[i:i + 256]) for i in range(0, len(images), 256)]).cpu()
    unique = sorted(set(prompts))
    return latents, embed(pipe, unique).cpu(), torch.tensor([unique.index(p) for p in prompts])


def train_unet(pipe, images: torch.Tensor, prompts, *, steps: int, batch_size: int = 16, lr: float = 1e-3,
               seed: int = 0, out_dir=None, progress: bool = True, callback=None, every: int = 100):
    """Fine-tune the parameters of `pipe.unet` that require gradients (a LoRA adapter after
    `add_lora`, or all of them) with the noise-prediction objective on the VAE latents of `images`
    (N, 3, H, W in [-1, 1]) under `prompts`; the text encoder and VAE stay frozen. Returns `fit`'s result."""
    from .train import fit, noisy_batch

    prompts = check_pairs(pipe, images, prompts)
    if trainable_parameters(pipe.unet) == 0:
        raise AdapterError("nothing in the UNet requires gradients: add a LoRA adapter (adapters.add_lora) or call "
                           "pipe.unet.requires_grad_(True) for full fine-tuning")
    latents, table, rows = encode_pairs(pipe, images, prompts)

    def loss(unet, batch):
        z_t, t, eps = noisy_batch(pipe.scheduler, latents[batch.indices], batch.generator)
        text = batch.draw(table[rows[batch.indices]])
        return F.mse_loss(unet(batch.draw(z_t), batch.draw(t), encoder_hidden_states=text).sample, batch.draw(eps))

    result = fit(pipe.unet, loss, len(latents), steps=steps, batch_size=min(batch_size, len(latents)), lr=lr,
                 warmup=min(20, steps // 5), seed=seed, out_dir=out_dir, run={"objective": "latent noise prediction"},
                 progress=progress, callback=callback, every=every, desc="fine-tuning the UNet")
    pipe.unet.eval()
    return result


# ControlNet


def canny(images: torch.Tensor, low: int = CANNY_THRESHOLDS[0], high: int = CANNY_THRESHOLDS[1]) -> torch.Tensor:
    """Canny edges of images in [-1, 1] (N, 3, H, W) as ControlNet's conditions, (N, 3, H, W) in
    [0, 1]: OpenCV's `cv2.Canny(rgb_uint8, 100, 200)` repeated over three channels, what
    lllyasviel's canny ControlNet was trained on (its annotator)."""
    import cv2

    from .data import check_images

    x = check_images(images, "canny", channels=(3,))
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    edges = np.stack([cv2.Canny(np.ascontiguousarray(p), low, high) for p in pixels])
    return torch.from_numpy(edges).float().div(255)[:, None].expand(-1, 3, -1, -1).contiguous()


def edge_agreement(images: torch.Tensor, conditions: torch.Tensor, tolerance: int = 1) -> float:
    """How well images follow edge conditions: the F1 score between the images' Canny edges and the
    condition's edges, each counted as matched within `tolerance` pixels of the other (1: exact
    placement; about 0 for unrelated images)."""
    found = canny(images)[:, :1] > 0.5
    wanted = conditions.detach().float().cpu()[:, :1] > 0.5
    if found.shape != wanted.shape:
        raise AdapterError(f"images and conditions differ in size: {tuple(images.shape)} vs {tuple(conditions.shape)}")
    grow = lambda m: F.max_pool2d(m.float(), 2 * tolerance + 1, stride=1, padding=tolerance) > 0
    precision = (found & grow(wanted)).sum((1, 2, 3)) / found.sum((1, 2, 3)).clamp_min(1)
    recall = (wanted & grow(found)).sum((1, 2, 3)) / wanted.sum((1, 2, 3)).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-8)
    return float(f1.mean())


def controlnet_from_unet(unet, vae_scale_factor: int = 8, seed: int = 0):
    """A ControlNet for `unet`: a copy of its encoder and middle block with the UNet's weights, a
    condition embedding whose stride-2 convolutions bring the image-sized condition down to the
    latent size (Stable Diffusion's 16/32/96/256 channels for a factor of 8, the first three for
    4), and zero-initialised output convolutions (`ControlNetModel.from_unet`)."""
    from diffusers import ControlNetModel

    downs = {2: 1, 4: 2, 8: 3}.get(vae_scale_factor)
    if downs is None:
        raise AdapterError(f"vae_scale_factor must be 2, 4 or 8 (pipe.vae_scale_factor), got {vae_scale_factor!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:downs + 1])


def load_controlnet(name: str | os.PathLike, device: str = "cpu"):
    """A `ControlNetModel` from the zoo (`tiny-sd-controlnet`), a local folder, or a Hub id at its
    pinned revision (safetensors only)."""
    from diffusers import ControlNetModel

    from . import hub
    from .models import CHECKPOINTS

    name = str(name)
    if (CHECKPOINTS / name / "config.json").exists():
        folder = CHECKPOINTS / name
    elif os.path.isdir(name):
        folder = Path(name)
    elif name.count("/") == 1 and not name.startswith((".", "/")):
        try:
            folder = hub.fetch(name, "use the small track (the zoo's 'tiny-sd-controlnet' with 'tiny-sd')",
                               **hub.model_files(name))
        except hub.HubUnavailable as e:
            raise AdapterError(str(e)) from None
    else:
        raise AdapterError(f"unknown ControlNet {name!r}: use 'tiny-sd-controlnet' (small track), "
                           "'lllyasviel/sd-controlnet-canny' (full track) or a folder saved with save_pretrained")
    from .stable_diffusion import quiet_loading

    with quiet_loading():
        return ControlNetModel.from_pretrained(folder, use_safetensors=True).to(device).eval()


def controlled_noise(unet, controlnet, x, t, text, condition, scale: float = 1.0):
    """The UNet's noise estimate with the ControlNet's residuals added to its skip connections."""
    down, mid = controlnet(x, t, encoder_hidden_states=text, controlnet_cond=condition, conditioning_scale=scale,
                           return_dict=False)
    return unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample


def train_controlnet(pipe, controlnet, images: torch.Tensor, prompts, conditions: torch.Tensor, *, steps: int,
                     batch_size: int = 64, lr: float = 1e-3, p_uncond: float = 0.1, seed: int = 0, out_dir=None,
                     progress: bool = True):
    """Train `controlnet` (the pipeline's UNet, text encoder and VAE frozen) to make the UNet's noise
    estimate follow `conditions` (N, 3, H, W in [0, 1], image-sized); the prompt is dropped with
    probability `p_uncond`, as for the base model, so guidance still works."""
    from .stable_diffusion import embed
    from .train import fit, noisy_batch

    prompts = check_pairs(pipe, images, prompts)
    check_conditions(conditions)
    if conditions.shape != images.shape:
        raise AdapterError(f"conditions must match the images' shape {tuple(images.shape)}, got {tuple(conditions.shape)}")
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    latents, table, rows = encode_pairs(pipe, images, prompts)
    table = torch.cat([table, embed(pipe, [""]).cpu()])
    empty = len(table) - 1
    unet = pipe.unet

    def loss(model, batch):
        z_t, t, eps = noisy_batch(pipe.scheduler, latents[batch.indices], batch.generator)
        which = rows[batch.indices]
        which = torch.where(torch.rand(len(which), generator=batch.generator) < p_uncond, empty, which)
        text = batch.draw(table[which])
        pred = controlled_noise(unet, model, batch.draw(z_t), batch.draw(t), text, batch.draw(conditions[batch.indices]))
        return F.mse_loss(pred, batch.draw(eps))

    return fit(controlnet, loss, len(latents), steps=steps, batch_size=batch_size, lr=lr, warmup=min(100, steps // 5),
               seed=seed, out_dir=out_dir, run={"objective": "controlnet", "p_uncond": p_uncond}, progress=progress,
               desc="training the ControlNet")


def controlnet_pipeline(pipe, controlnet):
    """diffusers' `StableDiffusionControlNetPipeline` from a pipeline's parts and a ControlNet."""
    from diffusers import StableDiffusionControlNetPipeline

    out = StableDiffusionControlNetPipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"},
                                            controlnet=controlnet.to(pipe.device), requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    return out


def check_conditions(conditions) -> torch.Tensor:
    """Condition images as ControlNet takes them: a float tensor (N, 3, H, W) of finite values in [0, 1]
    (edge maps from `canny`), else an AdapterError naming the fix (0..255 images return NaN otherwise)."""
    if not isinstance(conditions, torch.Tensor) or conditions.ndim != 4 or conditions.shape[1] != 3:
        raise AdapterError(f"conditions must be a tensor (N, 3, H, W), such as coursekit.adapters.canny(images) gives, "
                           f"got {getattr(conditions, 'shape', type(conditions).__name__)}")
    if not conditions.is_floating_point() or not torch.isfinite(conditions).all():
        raise AdapterError("conditions must be finite floats in [0, 1]; convert with conditions.float() / 255")
    low, high = float(conditions.min()), float(conditions.max())
    if low < 0 or high > 1:
        hint = " (they look like 0..255: divide by 255)" if high > 1.5 else ""
        raise AdapterError(f"conditions must lie in [0, 1], got values from {low:g} to {high:g}{hint}")
    return conditions


def controlled_image(pipe, controlnet, prompts, conditions: torch.Tensor, *, steps: int = 25,
                     guidance_scale: float = 7.5, conditioning_scale: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] for `prompts` whose edges follow `conditions` (N, 3, H, W in [0, 1]), by the
    text-to-image loop with the ControlNet's residuals added at every step."""
    from diffusers.utils.torch_utils import randn_tensor

    from .samplers import check_steps
    from .stable_diffusion import check_prompts, decode, embed, latent_shape

    check_steps(steps, pipe.scheduler)
    check_conditions(conditions)
    size = latent_shape(pipe, 1)[-1] * pipe.vae_scale_factor
    if tuple(conditions.shape[-2:]) != (size, size):
        raise AdapterError(f"conditions must be image-sized for this pipeline, {size}x{size}, got "
                           f"{tuple(conditions.shape[-2:])}; make them with coursekit.adapters.canny(images)")
    for name, value in (("guidance_scale", guidance_scale), ("conditioning_scale", conditioning_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise AdapterError(f"{name} must be a finite number >= 0 (1: as trained), got {value!r}")
    prompts = check_prompts(prompts, len(conditions))
    cond = embed(pipe, prompts)
    uncond = embed(pipe, [""] * len(prompts))
    condition = conditions.to(pipe.device, pipe.unet.dtype)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    z = randn_tensor(latent_shape(pipe, len(prompts)), generator=generator, device=pipe.device,
                     dtype=pipe.unet.dtype) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(z, t)
            both = controlled_noise(pipe.unet, controlnet, torch.cat([x, x]), t, torch.cat([uncond, cond]),
                                    torch.cat([condition, condition]), conditioning_scale)
            free, guided = both.chunk(2)
            z = scheduler.step(free + guidance_scale * (guided - free), t, z).prev_sample
    return decode(pipe, z)
