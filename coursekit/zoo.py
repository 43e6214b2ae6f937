"""The zoo: small pretrained checkpoints that coursekit trains itself, their recipes and cards.

Each zoo checkpoint is a diffusers-format folder (`unet/` with config and safetensors,
`scheduler/`, and a model card `README.md`) shipped inside the package, so `pip install`
alone gives a working small track; `coursekit.models.load_model(name)` loads it, as it loads a
folder or a Hub id. Every checkpoint is retrained from its recipe with

    coursekit train digits-cond --out runs/digits-cond     (or: python -m coursekit.zoo train ...)

and only `--into-package` (full recipe only) replaces the checkpoint shipped in the package.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .models import CHECKPOINTS as ZOO_DIR
from .models import ClassChannelsUNet, ClassDiT, declare_objective, load_model, save_model


class ZooError(ValueError):
    """A recipe or checkpoint name the zoo does not have; the message says why and what to do."""


@dataclass(frozen=True)
class Recipe:
    """Everything needed to retrain a zoo checkpoint from scratch."""

    description: str
    dataset: str
    size: int
    channels: int
    unet: dict
    steps: int
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float | None = 0.995
    p_uncond: float = 0.0
    beta_schedule: str = "squaredcos_cap_v2"
    seed: int = 0
    eval_steps: int = 25
    eval_guidance: float = 1.0
    conditioning: str = "embedding"
    num_classes: int | None = None
    audio_preset: str | None = None
    genre: str | None = None
    objective: str = "epsilon"
    extra: dict = field(default_factory=dict)

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the model's images: mel rows by frames for audio, else size by size."""
        if self.audio_preset:
            from .audio import PRESETS

            return PRESETS[self.audio_preset].n_mels, PRESETS[self.audio_preset].frames
        return self.size, self.size


_DIGITS_UNET = dict(
    layers_per_block=1, block_out_channels=(32, 64, 64), norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
)

RECIPES = {
    "digits-uncond": Recipe(
        description="Unconditional 16x16 digits (scikit-learn's 8x8 digits, upscaled).",
        dataset="digits", size=16, channels=1, unet=_DIGITS_UNET, steps=1200,
    ),
    "digits-cond": Recipe(
        description="Class-conditional 16x16 digits with classifier-free guidance "
                    "(class embedding added to the timestep embedding; label 10 means 'no class').",
        dataset="digits", size=16, channels=1, unet=_DIGITS_UNET, num_classes=10,
        steps=1500, p_uncond=0.15, eval_guidance=1.5,
    ),
    "digits-channels": Recipe(
        description="Class-conditional 16x16 digits with classifier-free guidance, conditioned through "
                    "4 extra input channels holding a learned embedding of the label (label 10 means 'no class').",
        dataset="digits", size=16, channels=1, unet=_DIGITS_UNET, num_classes=10, conditioning="channels",
        steps=1500, p_uncond=0.15, eval_guidance=1.5,
    ),
    "photos": Recipe(
        description="Unconditional 16x16 colour photo crops (six photos bundled with scikit-learn, "
                    "matplotlib and scikit-image); the starting point for fine-tuning on flower crops.",
        dataset="photo-crops", size=16, channels=3, unet=_DIGITS_UNET, steps=1500,
    ),
    "chorales": Recipe(
        description="Unconditional mel spectrograms (64 mel rows by 32 frames, about one second at 8 kHz) of "
                    "Bach chorales rendered on an organ-like timbre; the starting point for fine-tuning on fiddle reels.",
        dataset="music", size=64, channels=1, unet=_DIGITS_UNET, steps=800, batch_size=32, lr=1e-3,
        audio_preset="small", genre="chorale",
    ),
    "digits-flow": Recipe(
        description="Class-conditional 16x16 digits by flow matching (Lipman et al. 2023): the same UNet, data, "
                    "steps and label dropout as digits-cond, trained to predict the velocity noise - x0 on the "
                    "straight path between them; sampled with Euler steps (coursekit.flow).",
        dataset="digits", size=16, channels=1, unet=_DIGITS_UNET, num_classes=10, objective="flow",
        steps=1500, p_uncond=0.15, eval_guidance=1.5, eval_steps=8,
    ),
    "digits-flow-reflow": Recipe(
        description="digits-flow after one reflow round (Liu et al. 2023): fine-tuned from digits-flow on 4,000 "
                    "(noise, sample) pairs that digits-flow drew with 32 guided Euler steps, so each noise has one "
                    "straight path to its digit; the guidance is learned into the pairs, so it samples without it.",
        dataset="digits", size=16, channels=1, unet=_DIGITS_UNET, num_classes=10, objective="flow",
        steps=600, lr=5e-4, warmup=20, p_uncond=0.0, eval_guidance=1.0, eval_steps=2,
        extra={"teacher": "digits-flow", "pairs": 4000, "pair_steps": 32, "pair_guidance": 1.5},
    ),
    "digits-edm": Recipe(
        description="Class-conditional 16x16 digits with Karras et al.'s EDM: the same UNet, data, steps and label "
                    "dropout as digits-cond, with EDM's preconditioning, log-normal noise levels and loss weight; "
                    "sampled with their Heun sampler (coursekit.edm).",
        dataset="digits", size=16, channels=1, unet=_DIGITS_UNET, num_classes=10, objective="edm",
        steps=1500, p_uncond=0.15, eval_guidance=1.5, eval_steps=13,
    ),
    "digits-dit": Recipe(
        description="Class-conditional 16x16 digits with a transformer denoiser (DiT, Peebles and Xie 2023: 2x2 "
                    "patches as 64 tokens, adaLN-Zero conditioning on time and class) of about the UNet's parameter "
                    "count, trained like digits-cond (same data, steps, noise schedule and label dropout).",
        dataset="digits", size=16, channels=1, unet=dict(patch_size=2, width=112, depth=4, heads=4), num_classes=10,
        conditioning="adaln", steps=1500, lr=1e-3, p_uncond=0.15, eval_guidance=1.5,
    ),
    "digits-cold": Recipe(
        description="Class-conditional 16x16 digits by cold diffusion (Bansal et al. 2022): no noise, a Gaussian "
                    "blur growing over 16 levels to 8 pixels, and the same UNet trained to restore the image "
                    "(L1); generated from a flat patch at the training images' mean (coursekit.cold).",
        dataset="digits", size=16, channels=1, unet=_DIGITS_UNET, num_classes=10, objective="cold",
        steps=1500, p_uncond=0.15, eval_guidance=1.5, eval_steps=16,
        extra={"levels": 16, "sigma_max": 8.0, "start_noise": 0.0},
    ),
    "digits-consistency": Recipe(
        description="A consistency model distilled from digits-cond (Song et al. 2023): starts from digits-cond's "
                    "weights and learns to map any point of a 32-step guided DDIM trajectory to its end, so it "
                    "samples in 1, 2 or 4 steps (coursekit.consistency); guidance 1.5 is distilled in.",
        dataset="digits", size=16, channels=1, unet=_DIGITS_UNET, num_classes=10, objective="consistency",
        steps=600, batch_size=64, lr=1e-4, warmup=0, ema_decay=None, eval_guidance=1.0, eval_steps=2,
        extra={"teacher": "digits-cond", "grid_steps": 32, "teacher_guidance": 1.5},
    ),
}

@dataclass(frozen=True)
class ControlRecipe:
    """A ControlNet for a zoo text-to-image model, trained on Canny edges of its own training images."""

    description: str
    base: str
    steps: int
    shift: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    p_uncond: float = 0.1
    seed: int = 0
    eval_steps: int = 25
    eval_guidance: float = 5.0


CONTROL_RECIPES = {
    "tiny-sd-controlnet": ControlRecipe(
        description="A ControlNet for tiny-sd on Canny edges (OpenCV, thresholds 100 and 200) of its 32x32 "
                    "captioned coloured digits, each moved off-centre by up to 4 pixels (tiny-sd alone draws them "
                    "centred): ControlNetModel.from_unet, zero-initialised, the UNet frozen.",
        base="tiny-sd", steps=1500,
    ),
}


@dataclass(frozen=True)
class LcmRecipe:
    """A latent consistency LoRA (LCM-LoRA) distilled from a zoo text-to-image model on its own data."""

    description: str
    base: str
    steps: int
    rank: int = 16
    guidance_scale: float = 5.0
    original_steps: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    eval_steps: tuple = (1, 2, 4, 8)


LCM_RECIPES = {
    "tiny-sd-lcm-lora": LcmRecipe(
        description="A latent consistency LoRA for tiny-sd (LCM-LoRA): consistency distillation of its UNet on the "
                    "teacher's 50-step DDIM grid with guidance 5 distilled in, as a rank-16 LoRA on LCM-LoRA's target "
                    "layers; sampled with LCMScheduler in 1 to 8 steps at guidance 1.",
        base="tiny-sd", steps=1000,
    ),
}


def recipe_names() -> list[str]:
    return sorted([*RECIPES, *TEXT_RECIPES, *CONTROL_RECIPES, *LCM_RECIPES])


def describe(name: str) -> str:
    return (RECIPES.get(name) or TEXT_RECIPES.get(name) or CONTROL_RECIPES.get(name) or LCM_RECIPES[name]).description


def is_shipped(name: str) -> bool:
    """Whether the package holds the zoo checkpoint `name` (its weights beside their config)."""
    folder = ZOO_DIR / name
    return any(folder.glob("*/*.safetensors")) or any(folder.glob("*.safetensors"))


@dataclass(frozen=True)
class TextRecipe:
    """Everything needed to retrain the zoo's tiny Stable Diffusion from scratch: the tokenizer from
    the captions, then the VAE, then the UNet and text encoder on the VAE's latents."""

    description: str
    vae_steps: int
    steps: int
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    batch_size: int = 64
    lr: float = 1e-3
    p_uncond: float = 0.1
    p_partial: float = 0.2
    ema_decay: float = 0.995
    seed: int = 0
    eval_steps: int = 25
    eval_guidance: float = 5.0


TEXT_RECIPES = {
    "tiny-sd": TextRecipe(
        description="A tiny Stable Diffusion (VAE, CLIP text encoder and tokenizer, UNet with cross-attention, DDIM "
                    "scheduler) for 32x32 captioned coloured digits ('a red seven'), ten digit-colour pairs held out.",
        vae_steps=1500, steps=2000,
    ),
}


def build(recipe: Recipe):
    """A freshly initialised model, declaring the recipe's objective, and the scheduler that goes with
    that objective, the same for the same seed (torch's global random state is left as it was)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        if recipe.conditioning == "adaln":
            unet = ClassDiT(sample_size=recipe.size, in_channels=recipe.channels,
                            num_class_embeds=recipe.num_classes + 1, **recipe.unet)
        elif recipe.conditioning == "channels":
            unet = ClassChannelsUNet(sample_size=recipe.size, in_channels=recipe.channels,
                                     num_class_embeds=recipe.num_classes + 1, unet_config=dict(recipe.unet))
        else:
            extra = {"num_class_embeds": recipe.num_classes + 1} if recipe.conditional else {}
            size = recipe.size if not recipe.audio_preset else recipe.shape
            unet = UNet2DModel(sample_size=size, in_channels=recipe.channels,
                               out_channels=recipe.channels, **recipe.unet, **extra)
    declare_objective(unet, recipe.objective)
    if recipe.objective == "flow":
        from . import flow

        return unet, flow.scheduler()
    if recipe.objective == "edm":
        from . import edm

        return unet, edm.scheduler()
    if recipe.objective == "cold":
        from .models import BlurSchedule

        return unet, BlurSchedule(**recipe.extra)
    if recipe.objective == "consistency":
        from diffusers import LCMScheduler

        return unet, LCMScheduler(num_train_timesteps=1000, beta_schedule=recipe.beta_schedule, clip_sample=False)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=recipe.beta_schedule, timestep_spacing="trailing")
    return unet, scheduler


def training_images(recipe: Recipe):
    """(images in [-1, 1], labels or None) that `recipe` trains on."""
    from . import data

    if recipe.audio_preset:
        from . import audio, music

        images, _ = music.dataset_images(data.load_dataset(recipe.dataset), audio.PRESETS[recipe.audio_preset], recipe.genre)
        return images, None
    images, labels = data.tensors(data.load_dataset(recipe.dataset), recipe.size, recipe.channels)
    return images, labels if recipe.conditional else None


def consistency_result(recipe: Recipe, images, labels, steps: int, work, progress: bool):
    """Consistency distillation of the recipe's teacher, as a `coursekit.train.TrainResult`."""
    from . import consistency
    from .train import TrainResult

    e = recipe.extra
    teacher, scheduler = load_model(e["teacher"])
    began = time.perf_counter()
    student, losses = consistency.distill(teacher, scheduler, images, labels, grid_steps=e["grid_steps"],
                                          guidance_scale=e["teacher_guidance"], steps=steps,
                                          batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed,
                                          progress=progress, out_dir=work)
    return TrainResult(unet=student, losses=losses, seconds=time.perf_counter() - began)


def reflow_data(recipe: Recipe, progress: bool = True):
    """(samples, their noises, labels, the teacher's UNet to start from) for a reflow recipe: the
    teacher's guided Euler samples, an equal number per digit, each with the noise it came from."""
    import torch

    from . import flow

    e = recipe.extra
    teacher, _ = load_model(e["teacher"])
    labels = torch.arange(10).repeat(e["pairs"] // 10)
    z, x, y = flow.reflow_pairs(teacher, labels, len(labels), steps=e["pair_steps"], guidance_scale=e["pair_guidance"],
                                generator=torch.Generator().manual_seed(recipe.seed), progress=progress)
    return x, z, y, teacher.train().requires_grad_(True)


OBJECTIVES = ("epsilon", "flow", "edm", "consistency", "cold")


def draw(unet, scheduler, objective: str, x, *, steps: int, labels=None, guidance_scale: float = 1.0):
    """Samples from the noise `x` with the sampler that fits the model's objective: DDIM (eta 0) for
    noise prediction, Euler for flow matching, Heun on Karras' sigmas for EDM, multistep consistency
    sampling (its fresh noise seeded with 0) for a consistency model."""
    import torch

    from . import samplers

    if objective == "flow":
        from . import flow

        return flow.euler(unet, x, steps=steps, labels=labels, guidance_scale=guidance_scale)
    if objective == "edm":
        from . import edm

        return edm.heun(unet, x, steps=steps, labels=labels, guidance_scale=guidance_scale)
    if objective == "cold":
        from . import cold

        c = scheduler.config
        start = torch.full_like(x, c.start_mean) + c.start_noise * x
        return cold.sample(unet, start, levels=c.levels, sigma_max=c.sigma_max, steps=min(steps, c.levels), labels=labels,
                           guidance_scale=guidance_scale)
    if objective == "consistency":
        from . import consistency

        return consistency.sample(unet, scheduler, x, steps=steps, labels=labels, guidance_scale=guidance_scale,
                                  generator=torch.Generator().manual_seed(0))
    if objective != "epsilon":
        raise ZooError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    return samplers.ddim(unet, scheduler, x, steps=steps, labels=labels, guidance_scale=guidance_scale, progress=False)


def sampler_name(objective: str, steps: int) -> str:
    if objective == "flow":
        return f"Euler (flow), {steps} steps"
    if objective == "consistency":
        return f"multistep consistency sampling, {steps} steps"
    if objective == "cold":
        return f"cold sampling (improved step), {steps} steps from the flat start"
    if objective == "edm":
        return f"Heun on Karras sigmas, {steps} steps ({2 * steps - 1} function evaluations)"
    return f"DDIM, {steps} steps, eta 0"


def evaluate(unet, scheduler, recipe: Recipe, per_class: int = 50, seed: int = 1) -> dict:
    """Measured quality: the independent digit classifier (coursekit.metrics) for digits, the genre
    judge (coursekit.audio) for spectrograms, pixel FD to the training set otherwise."""
    import torch

    from . import metrics, samplers

    g = torch.Generator().manual_seed(seed)
    if recipe.audio_preset:
        from . import music

        n = per_class * 2
        x = samplers.ddim(unet, scheduler, samplers.noise(unet, n, g), steps=recipe.eval_steps, generator=g, progress=False)
        real, _ = training_images(recipe)
        judge = metrics.corpus_judge(recipe.audio_preset)
        return {"samples": n, "sampler": f"DDIM, {recipe.eval_steps} steps, eta 0",
                "genre_judge_held_out_accuracy": round(judge.held_out_accuracy, 4),
                f"share judged {recipe.genre}": round(judge.share(x, music.GENRES.index(recipe.genre)), 4),
                f"pixel_fd to {recipe.genre} spectrograms": round(metrics.pixel_fd(x, real), 3)}
    n = per_class * 10
    if recipe.dataset != "digits":
        from . import data

        x = samplers.ddim(unet, scheduler, samplers.noise(unet, n, g), steps=recipe.eval_steps, generator=g, progress=False)
        real, _ = data.tensors(data.load_dataset(recipe.dataset), recipe.size, recipe.channels)
        return {"samples": n, "sampler": f"DDIM, {recipe.eval_steps} steps, eta 0",
                f"pixel_fd to {recipe.dataset}": round(metrics.pixel_fd(x, real), 3)}
    judge = metrics.digit_judge(recipe.size)
    labels = torch.arange(10).repeat_interleave(per_class) if recipe.conditional else None
    x = draw(unet, scheduler, recipe.objective, samplers.noise(unet, n, g), steps=recipe.eval_steps, labels=labels,
             guidance_scale=recipe.eval_guidance)
    out = {"samples": n, "sampler": sampler_name(recipe.objective, recipe.eval_steps),
           "judge_held_out_accuracy": round(judge.held_out_accuracy, 4),
           "fid_pca20": round(judge.fid(x), 3), "digit_confidence": round(judge.confidence(x), 4)}
    if recipe.conditional:
        out["guidance_scale"] = recipe.eval_guidance
        out["conditional_accuracy"] = round(judge.accuracy(x, labels), 4)
    return out


def _card(name: str, recipe: Recipe, n_params: int, seconds: float, steps: int, quality: dict, warmup: int,
          threads: int) -> str:
    again = ("; re-measure with `coursekit evaluate " + name + " --folder DIR` (`--into-package` for the checkpoint "
             "the package ships).")
    sweep = ("" if not recipe.conditional else
             " The teacher's guidance is built in, so it samples with guidance scale 1" + again if recipe.extra.get("teacher")
             else f" The guidance scale ({recipe.eval_guidance}) is digits-cond's, kept for a like-for-like comparison"
             + again if recipe.objective != "epsilon" or recipe.conditioning == "adaln"
             else f" The guidance scale ({recipe.eval_guidance}) was chosen by sweeping it after training" + again)
    model = ("`coursekit.models.ClassChannelsUNet` (a diffusers `UNet2DModel` with the label as extra input "
             "channels)" if recipe.conditioning == "channels" else
             "`coursekit.models.ClassDiT` (diffusers' `DiTTransformer2DModel` with adaLN-Zero conditioning, "
             f"{recipe.unet['depth']} blocks of width {recipe.unet['width']}, {recipe.unet['patch_size']}x"
             f"{recipe.unet['patch_size']} patches)" if recipe.conditioning == "adaln" else "diffusers `UNet2DModel`")
    judged = ("Judged by `coursekit.metrics.digit_judge()`, a classifier fit on real digits only." if recipe.dataset == "digits"
              else "`coursekit.metrics.corpus_judge()`, a genre classifier fit on real slices only, and pixel FD to the "
                   "training spectrograms." if recipe.audio_preset
              else "`coursekit.metrics.pixel_fd` between samples and the training set (lower is closer).")
    schedule = {"flow": "`FlowMatchEulerDiscreteScheduler` (no shift); the UNet predicts the velocity noise - x0 at "
                        "time s, timestep input 1000 s",
                "edm": "EDM preconditioning (`coursekit.edm`, sigma_data 0.5; the UNet is F, its timestep input "
                       "c_noise = ln(sigma) / 4), trained at log-normal sigma (-1.2, 1.2) with EDM's loss weight; "
                       "`EDMEulerScheduler` holds the constants",
                "cold": f"no noise: {recipe.extra.get('levels')} blur levels to sigma {recipe.extra.get('sigma_max')} px "
                        "(`coursekit.models.BlurSchedule` in the scheduler's place); the UNet predicts the clean image",
                "consistency": "the teacher's noise schedule in an `LCMScheduler` (diffusers' multistep consistency "
                               "sampler); the UNet keeps the epsilon parameterisation"}.get(
        recipe.objective, f"`DDPMScheduler` with the `{recipe.beta_schedule}` schedule, 1000 training steps")
    e = recipe.extra
    height, width = recipe.shape
    if recipe.objective == "consistency":
        data_line = (f"`coursekit.data.load_dataset({recipe.dataset!r})`, 16x16, noised on the {e['grid_steps']}-step "
                     f"nested grid; targets from `{e['teacher']}` (one guided DDIM step, guidance "
                     f"{e['teacher_guidance']}) and the student itself at the next grid point. The UNet starts from "
                     f"`{e['teacher']}`'s weights.")
    elif e.get("teacher"):
        data_line = (f"{e['pairs']:,} (noise, sample) pairs drawn by `{e['teacher']}` ({e['pair_steps']} Euler steps, "
                     f"guidance {e['pair_guidance']}, {e['pairs'] // 10} per digit); the UNet starts from "
                     f"`{e['teacher']}`'s weights.")
    elif recipe.audio_preset:
        data_line = (f"`coursekit.music.dataset_images(coursekit.data.load_dataset({recipe.dataset!r}), "
                     f"PRESETS[{recipe.audio_preset!r}], {recipe.genre!r})`: {height} mel rows x {width} frames, values "
                     "in [-1, 1]; the mel settings are in `mel_config.json`.")
    else:
        data_line = (f"`coursekit.data.load_dataset({recipe.dataset!r})`, {height}x{width}, {recipe.channels} channel(s), "
                     "values in [-1, 1].")
    rows = "\n".join(f"| {k} | {v} |" for k, v in quality.items())
    lr_schedule = "falling linearly to 0" if recipe.objective == "consistency" else "cosine"
    timed = (" (the training loop only: drawing the pairs from the teacher comes first and is not included)"
             if e.get("pairs") else "")
    return f"""---
library_name: diffusers
tags: [coursekit, diffusion, small-track]
---
# {name}

{recipe.description}

- **Data**: {data_line}
- **Model**: {model}, {n_params:,} parameters; {schedule}.
- **Recipe**: {steps} optimizer steps, batch {recipe.batch_size}, AdamW lr {recipe.lr} ({lr_schedule}, {warmup} warm-up
  steps), EMA {recipe.ema_decay}, label dropout {recipe.p_uncond}, seed {recipe.seed}.
  Full recipe: `coursekit.zoo.RECIPES[{name!r}]`.
- **Training time**: {seconds / 60:.1f} minutes on {platform.machine()} CPU, {_threads(threads)}{timed}.
- **Reproduce**: `coursekit train {name} --out DIR` (`--into-package` replaces this shipped checkpoint)

## Measured quality
{judged}{sweep}

| measure | value |
| --- | --- |
{rows}
"""


def _threads(n: int) -> str:
    return "one torch thread" if n == 1 else f"{n} torch threads"


def warmup_ran(recipe: Recipe, steps: int) -> int:
    """The warm-up steps a run of `steps` steps gives the recipe (at most half the run; none for consistency)."""
    return 0 if recipe.objective == "consistency" else min(recipe.warmup, steps // 2)


def write_card(out: Path, name: str, unet, steps: int, seconds: float, quality: dict, threads: int) -> None:
    """The model card README.md and recipe.json of the checkpoint `unet` saved in `out`, stating what
    ran: the steps, the warm-up they gave and the torch threads, also kept in recipe.json."""
    recipe = RECIPES[name]
    n_params = sum(p.numel() for p in unet.parameters())
    warmup = warmup_ran(recipe, steps)
    (out / "README.md").write_text(_card(name, recipe, n_params, seconds, steps, quality, warmup, threads))
    (out / "recipe.json").write_text(json.dumps({**asdict(recipe), "name": name, "steps": steps, "warmup_ran": warmup,
                                                 "threads": threads, "quality": quality,
                                                 "train_seconds": round(seconds, 1)}, indent=2) + "\n")


def reevaluate(name: str, folder: str | os.PathLike | None = None, per_class: int = 50,
               into_package: bool = False) -> dict:
    """Measure a trained checkpoint again with its recipe's evaluation settings and rewrite its card:
    the checkpoint that `coursekit train` wrote in `folder`, or with `into_package` the shipped one."""
    from . import train as training

    if (folder is None) == (not into_package):
        raise ZooError("say which card to rewrite: --folder DIR (a checkpoint you trained with `coursekit train`) "
                       "or --into-package (the one the package ships), not both")
    out = Path(folder) if folder else ZOO_DIR / name
    if training.inside_package(out) and not into_package:
        raise ZooError(f"{out} is inside the installed coursekit package; pass --into-package (without --folder) "
                       "to rewrite a shipped card")
    if not (out / "recipe.json").is_file():
        raise ZooError(f"{out} holds no recipe.json: give the folder `coursekit train {name} --out DIR` wrote")
    done = json.loads((out / "recipe.json").read_text())
    if done.get("name", name) != name:
        raise ZooError(f"{out} holds the checkpoint {done['name']!r}, not {name!r}")
    if name in LCM_RECIPES:
        from . import stable_diffusion as sd

        recipe = LCM_RECIPES[name]
        quality = evaluate_lcm(sd.load_pipeline(recipe.base), out, recipe, per_pair=max(1, per_class // 12))
        write_lcm(out, name, recipe, {**done, "quality": quality})
        return quality
    if name in CONTROL_RECIPES:
        from . import adapters
        from . import stable_diffusion as sd

        recipe = CONTROL_RECIPES[name]
        quality = evaluate_control(sd.load_pipeline(recipe.base), adapters.load_controlnet(out), recipe)
        card = (out / "README.md").read_text().split("| measure | value |")[0]
        rows = "\n".join(f"| {k} | {v} |" for k, v in quality.items())
        (out / "README.md").write_text(card + "| measure | value |\n| --- | --- |\n" + rows + "\n")
        (out / "recipe.json").write_text(json.dumps({**done, "quality": quality}, indent=2) + "\n")
        return quality
    if name in TEXT_RECIPES:
        from . import stable_diffusion as sd

        pipe = sd.load_pipeline(out)
        quality = evaluate_text(pipe, TEXT_RECIPES[name], per_pair=max(1, per_class // 12))
        seconds = {**done["train_seconds"]}
        (out / "README.md").write_text(_text_card(name, TEXT_RECIPES[name], pipe, seconds, quality,
                                                  done["steps"], done["vae_steps"]))
        (out / "recipe.json").write_text(json.dumps({**done, "quality": quality}, indent=2) + "\n")
        return quality
    unet, scheduler = load_model(out)
    quality = evaluate(unet, scheduler, RECIPES[name], per_class=per_class)
    write_card(out, name, unet, done["steps"], done["train_seconds"], quality, done.get("threads", 1))
    return quality


def output_folder(out, into_package: bool, default: Path, shortened: bool, what: str, command: str,
                  settings: dict | None = None, overwrite: bool = False, work=("training",)) -> Path:
    """Where a training command writes: `out`, claimed for this run (`train.check_folder`: new, empty,
    an earlier run of the same command and `settings`, which resumes, or `overwrite`, which also clears
    the command's own `work` folders there so that nothing resumes from another run), or the package's
    own `default` only when asked with `into_package` and never for a run shorter than its recipe (a
    shipped checkpoint is what every notebook loads)."""
    from . import train as training

    if into_package:
        if out is not None:
            raise ZooError("give either an output folder or into_package (--into-package), not both")
        if shortened:
            raise ZooError(f"a shorter run than the recipe would replace the shipped {what} that every notebook "
                           "uses; train it into a folder of your own (--out DIR) instead")
        return default
    if out is None:
        raise ZooError(f"say where to write the {what}: --out DIR (a folder of your own), or --into-package to "
                       f"replace the shipped {what} with a full-recipe run")
    out = training.check_folder(out, command, overwrite)
    training.run_record(out, {"command": command, **(settings or {})}, overwrite)
    if overwrite:
        for name in work:
            shutil.rmtree(out / name, ignore_errors=True)
    return out


def train_checkpoint(name: str, out: str | os.PathLike | None = None, steps: int | None = None,
                     threads: int | None = None, evaluate_after: bool = True, progress: bool = True,
                     into_package: bool = False, overwrite: bool = False) -> Path:
    """Retrain zoo checkpoint `name` from its recipe into the folder `out` (new or empty, or this
    recipe's earlier run there, which resumes; `overwrite` writes over a folder holding other files and
    keeps them), or, with `into_package`, into the package's own zoo (full recipe only), with `threads`
    torch threads. Checkpoints go to OUT/training, removed once the model is saved."""
    import torch

    from . import train as training
    from .tracks import torch_threads

    if name in LCM_RECIPES:
        return train_lcm_checkpoint(name, out, steps, threads=threads, evaluate_after=evaluate_after, overwrite=overwrite,
                                    progress=progress, into_package=into_package)
    if name in CONTROL_RECIPES:
        return train_control_checkpoint(name, out, steps, threads=threads, evaluate_after=evaluate_after, overwrite=overwrite,
                                        progress=progress, into_package=into_package)
    if name in TEXT_RECIPES:
        return train_text_checkpoint(name, out, steps, threads=threads, evaluate_after=evaluate_after, overwrite=overwrite,
                                     progress=progress, into_package=into_package)
    if name not in RECIPES:
        raise ZooError(f"no recipe named {name!r}; known: {', '.join(recipe_names())}")
    recipe = RECIPES[name]
    steps = recipe.steps if steps is None else training.positive_int("steps", steps)
    out = output_folder(out, into_package, ZOO_DIR / name, steps < recipe.steps, f"checkpoint {name!r}",
                        f"coursekit train {name}", {"steps": steps}, overwrite)
    unet, scheduler = build(recipe)
    images, labels = training_images(recipe)
    work = out / "training"
    settings = dict(steps=steps, batch_size=recipe.batch_size, lr=recipe.lr, warmup=warmup_ran(recipe, steps),
                    ema_decay=recipe.ema_decay, p_uncond=recipe.p_uncond, seed=recipe.seed, out_dir=work,
                    run={"recipe": name}, progress=progress)
    with torch_threads(threads):
        if recipe.objective == "consistency":
            result = consistency_result(recipe, images, labels, steps, work, progress)
        elif recipe.objective == "flow":
            from . import flow

            pairs = None
            if recipe.extra.get("teacher"):
                images, pairs, labels, unet = reflow_data(recipe, progress)
            result = flow.train(unet, images, labels, pairs=pairs, **settings)
        elif recipe.objective == "edm":
            from . import edm

            result = edm.train(unet, images, labels, **settings)
        elif recipe.objective == "cold":
            from . import cold

            scheduler.register_to_config(start_mean=round(float(images.mean()), 4))
            result = cold.train(unet, images, labels, levels=scheduler.config.levels,
                                sigma_max=scheduler.config.sigma_max, **settings)
        else:
            result = training.train(unet, scheduler, images, labels, **settings)
        model = result.best
        save_model(model, scheduler, out)
        if recipe.audio_preset:
            from . import audio

            mel = audio.mel_config(audio.PRESETS[recipe.audio_preset])
            (out / "mel_config.json").write_text(json.dumps(mel, indent=2) + "\n")
        write_card(out, name, model, steps, result.seconds, evaluate(model, scheduler, recipe) if evaluate_after else {},
                   torch.get_num_threads())
    shutil.rmtree(work, ignore_errors=True)
    return out


def evaluate_text(pipe, recipe: TextRecipe, per_pair: int = 4, guidance_scale: float | None = None,
                  seed: int = 1) -> dict:
    """Prompt accuracy of a tiny Stable Diffusion by `captions.prompt_judge()`: `per_pair` samples of
    each digit-colour pair seen in training, and 2 * `per_pair` of each held-out pair; beside it the
    digit accuracy by `captions.second_judge()`, which reads them another way."""
    import torch

    from . import captions
    from . import stable_diffusion as sd

    judge, second = captions.prompt_judge(), captions.second_judge()
    scale = recipe.eval_guidance if guidance_scale is None else guidance_scale
    seen = [captions.caption(d, c) for d in range(10) for c in captions.COLOURS if (d, c) not in captions.HELD_OUT]
    held = [captions.caption(d, c) for d, c in captions.HELD_OUT]
    out = {"sampler": f"DDIM, {recipe.eval_steps} steps, guidance scale {scale}"}
    for what, prompts in (("seen", seen * per_pair), ("held_out", held * 2 * per_pair)):
        g = torch.Generator().manual_seed(seed)
        x = torch.cat([sd.text_to_image(pipe, prompts[i:i + 200], steps=recipe.eval_steps, guidance_scale=scale,
                                        generator=g) for i in range(0, len(prompts), 200)])
        scores = judge.scores(x, prompts)
        out[f"{what}_samples"] = len(prompts)
        out[f"{what}_prompt_accuracy"] = round(scores["both"], 4)
        out[f"{what}_digit_accuracy"] = round(scores["digit"], 4)
        out[f"{what}_colour_accuracy"] = round(scores["colour"], 4)
        out[f"{what}_digit_accuracy_second_judge"] = round(second.digit_accuracy(x, prompts), 4)
    return out


def _text_card(name: str, recipe: TextRecipe, pipe, seconds: dict, quality: dict, steps: int, vae_steps: int) -> str:
    from . import captions

    rows = "\n".join(f"| {k} | {v} |" for k, v in quality.items())
    params = {part: sum(p.numel() for p in getattr(pipe, part).parameters()) for part in ("vae", "text_encoder", "unet")}
    held = ", ".join(captions.caption(d, c) for d, c in captions.HELD_OUT)
    return f"""---
library_name: diffusers
pipeline_tag: text-to-image
tags: [coursekit, stable-diffusion, small-track]
---
# {name}

{recipe.description}

- **Data**: `coursekit.captions.dataset()`: scikit-learn's 1,797 digits upscaled to 32x32 and painted in six colours
  on black, captioned "a <colour> <digit>"; held out of training entirely: {held}. The VAE trained on the same
  digits in random colours.
- **Parts** (load with `StableDiffusionPipeline.from_pretrained` or `coursekit.stable_diffusion.load_pipeline({name!r})`):
  `AutoencoderKL` ({params['vae']:,} parameters, 32x32x3 -> 8x8x4, scaling factor {pipe.vae.config.scaling_factor:.4f}),
  `CLIPTextModel` ({params['text_encoder']:,}; {pipe.tokenizer.model_max_length} tokens x {pipe.text_encoder.config.hidden_size}),
  `CLIPTokenizer` (byte-level BPE learned from the captions, {len(pipe.tokenizer)} tokens),
  `UNet2DConditionModel` ({params['unet']:,}, cross-attention to the text), `DDIMScheduler` with Stable Diffusion
  v1's scaled-linear betas.
- **Recipe**: VAE {vae_steps} steps of batch {recipe.vae_batch_size} (lr {recipe.vae_lr}); then UNet and text
  encoder together, {steps} steps of batch {recipe.batch_size} (AdamW lr {recipe.lr}, cosine), caption
  dropout {recipe.p_uncond}, one-attribute captions ('a seven', 'a red digit') {recipe.p_partial}, EMA {recipe.ema_decay},
  seed {recipe.seed}. Full recipe:
  `coursekit.zoo.TEXT_RECIPES[{name!r}]`.
- **Training time**: VAE {seconds['vae'] / 60:.1f} min, UNet and text encoder {seconds['unet'] / 60:.1f} min on
  {platform.machine()} CPU, {seconds['threads']} torch thread(s).
- **Reproduce**: `coursekit train {name} --out DIR` (`--into-package` replaces this shipped checkpoint)

## Measured quality
Judged by `coursekit.captions.prompt_judge()`: the digit by a classifier fit on real digits only (with thicker,
thinner and softer redrawings of their strokes), the colour as the palette colour nearest the mean of the bright
pixels. The `_second_judge` rows read the same samples' digits with `coursekit.captions.second_judge()`, a small
network trained on real digits another way, as a check on the first.

| measure | value |
| --- | --- |
{rows}
"""


def train_text_checkpoint(name: str, out=None, steps: int | None = None, vae_steps: int | None = None,
                          threads: int | None = None, evaluate_after: bool = True, progress: bool = True,
                          into_package: bool = False, overwrite: bool = False) -> Path:
    """Retrain the tiny Stable Diffusion `name` from its recipe: tokenizer, VAE, scaling factor,
    then UNet and text encoder on the VAE's latents; save the pipeline and its card in `out`."""
    import torch

    from . import captions
    from . import stable_diffusion as sd
    from . import train as training
    from .tracks import torch_threads

    recipe = TEXT_RECIPES[name]
    steps = recipe.steps if steps is None else training.positive_int("steps", steps)
    vae_steps = recipe.vae_steps if vae_steps is None else training.positive_int("vae_steps", vae_steps)
    out = output_folder(out, into_package, ZOO_DIR / name, steps < recipe.steps or vae_steps < recipe.vae_steps,
                        f"checkpoint {name!r}", f"coursekit train {name}", {"steps": steps, "vae_steps": vae_steps},
                        overwrite)
    work = out / "training"
    with torch_threads(threads):
        tokenizer = captions.build_tokenizer(work / "tokenizer")
        vae, text, unet, scheduler = sd.build_tiny(tokenizer, recipe.seed)
        fitted = sd.train_vae(vae, steps=vae_steps, batch_size=recipe.vae_batch_size, lr=recipe.vae_lr,
                              seed=recipe.seed, out_dir=work / "vae", progress=progress)
        vae = fitted.model.eval()
        images, _, digits, colours = captions.dataset()
        texts = [captions.partial(int(d), c) for d, c in zip(digits, colours)]
        with torch.no_grad():
            sd.set_scaling_factor(vae, images[::7])
            latents = torch.cat([vae.encode(images[i:i + 512]).latent_dist.mean for i in range(0, len(images), 512)])
        latents = latents * vae.config.scaling_factor
        result = sd.train_text_to_image(unet, text, tokenizer, scheduler, latents, texts, steps=steps,
                                        batch_size=recipe.batch_size, lr=recipe.lr, p_uncond=recipe.p_uncond,
                                        p_partial=recipe.p_partial, ema_decay=recipe.ema_decay, seed=recipe.seed,
                                        out_dir=work / "unet",
                                        progress=progress)
        best = result.best
        sd.save_pipeline(out, vae, best.text_encoder, tokenizer, best.unet, scheduler)
        pipe = sd.load_pipeline(out)
        quality = evaluate_text(pipe, recipe) if evaluate_after else {}
        seconds = {"vae": fitted.seconds, "unet": result.seconds, "threads": torch.get_num_threads()}
        (out / "README.md").write_text(_text_card(name, recipe, pipe, seconds, quality, steps, vae_steps))
        (out / "recipe.json").write_text(json.dumps({**asdict(recipe), "name": name, "steps": steps,
                                                     "vae_steps": vae_steps, "quality": quality,
                                                     "train_seconds": {k: round(v, 1) for k, v in seconds.items()}},
                                                    indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return out


def evaluate_control(pipe, controlnet, recipe: ControlRecipe, n: int = 100, seed: int = 1) -> dict:
    """Edge agreement (`adapters.edge_agreement`) of samples drawn with and without the ControlNet for the
    edges and captions of `n` training images moved off-centre (by other offsets than in training),
    and prompt accuracy with it and without."""
    import torch

    from . import adapters, captions
    from . import stable_diffusion as sd

    images, texts, _, _ = captions.dataset()
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    x, prompts = captions.shifted(images[pick], recipe.shift, seed=recipe.seed + 1), [texts[i] for i in pick]
    edges = adapters.canny(x)
    common = dict(steps=recipe.eval_steps, guidance_scale=recipe.eval_guidance)
    with_control = adapters.controlled_image(pipe, controlnet, prompts, edges, generator=torch.Generator().manual_seed(seed),
                                             **common)
    without = sd.text_to_image(pipe, prompts, generator=torch.Generator().manual_seed(seed), **common)
    return {"samples": n, "sampler": f"DDIM, {recipe.eval_steps} steps, guidance scale {recipe.eval_guidance}",
            "edge_agreement_with_control": round(adapters.edge_agreement(with_control, edges), 4),
            "edge_agreement_without_control": round(adapters.edge_agreement(without, edges), 4),
            "prompt_accuracy_with_control": round(captions.prompt_judge().accuracy(with_control, prompts), 4),
            "prompt_accuracy_without_control": round(captions.prompt_judge().accuracy(without, prompts), 4)}


def train_control_checkpoint(name: str, out=None, steps: int | None = None, threads: int | None = None,
                             evaluate_after: bool = True, progress: bool = True, into_package: bool = False,
                             overwrite: bool = False) -> Path:
    """Retrain the zoo ControlNet `name` from its recipe on its base model; save it (config and
    safetensors, diffusers' `ControlNetModel` layout) with its card in `out`."""
    import torch

    from . import adapters, captions
    from . import stable_diffusion as sd
    from . import train as training
    from .tracks import torch_threads

    recipe = CONTROL_RECIPES[name]
    steps = recipe.steps if steps is None else training.positive_int("steps", steps)
    out = output_folder(out, into_package, ZOO_DIR / name, steps < recipe.steps, f"checkpoint {name!r}",
                        f"coursekit train {name}", {"steps": steps}, overwrite)
    work = out / "training"
    with torch_threads(threads):
        pipe = sd.load_pipeline(recipe.base)
        images, texts, _, _ = captions.dataset()
        images = captions.shifted(images, recipe.shift, seed=recipe.seed)
        net = adapters.controlnet_from_unet(pipe.unet, pipe.vae_scale_factor, recipe.seed)
        result = adapters.train_controlnet(pipe, net, images, texts, adapters.canny(images), steps=steps,
                                           batch_size=recipe.batch_size, lr=recipe.lr, p_uncond=recipe.p_uncond,
                                           seed=recipe.seed, out_dir=work, progress=progress)
        net = result.model.eval()
        net.save_pretrained(out, safe_serialization=True)
        quality = evaluate_control(pipe, net, recipe) if evaluate_after else {}
        n_params = sum(p.numel() for p in net.parameters())
        rows = "\n".join(f"| {k} | {v} |" for k, v in quality.items())
        (out / "README.md").write_text(f"""---
library_name: diffusers
tags: [coursekit, controlnet, small-track]
---
# {name}

{recipe.description}

- **Base model**: the zoo's `{recipe.base}` (load both with `coursekit.stable_diffusion.load_pipeline({recipe.base!r})` and
  `coursekit.adapters.load_controlnet({name!r})`).
- **Data**: `coursekit.captions.dataset()`, each image moved by `captions.shifted(images, {recipe.shift})`, with
  `coursekit.adapters.canny` of each as the condition.
- **Model**: `ControlNetModel` ({n_params:,} parameters), condition embedding 16/32/96 channels (32x32 -> 8x8).
- **Recipe**: {steps} steps of batch {recipe.batch_size}, AdamW lr {recipe.lr} (cosine), prompt dropout {recipe.p_uncond},
  seed {recipe.seed}. Full recipe: `coursekit.zoo.CONTROL_RECIPES[{name!r}]`.
- **Training time**: {result.seconds / 60:.1f} minutes on {platform.machine()} CPU, {torch.get_num_threads()} torch thread(s).
- **Reproduce**: `coursekit train {name} --out DIR` (`--into-package` replaces this shipped checkpoint)

## Measured quality
Edge agreement: the F1 score between the Canny edges of a sample and the condition's edges, within one pixel.

| measure | value |
| --- | --- |
{rows}
""")
        (out / "recipe.json").write_text(json.dumps({**asdict(recipe), "name": name, "steps": steps, "quality": quality,
                                                     "train_seconds": round(result.seconds, 1)}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return out


def evaluate_lcm(pipe, folder, recipe: LcmRecipe, per_pair: int = 4, seed: int = 1) -> dict:
    """Prompt accuracy (`captions.prompt_judge`) and pixel FD at 16x16 to the real coloured digits of the
    LCM-LoRA in `folder` on `pipe` (its base model, loaded fresh) at each of `recipe.eval_steps`, with
    LCMScheduler at guidance 1; beside it the base model with DDIM at its card's guidance (4 and 25
    steps) and with LCMScheduler but no adapter (the same step counts). Same prompts and seed for every row."""
    import torch

    from . import adapters, captions, consistency, metrics
    from . import stable_diffusion as sd

    judge = captions.prompt_judge()
    prompts = [captions.caption(d, c) for d in range(10) for c in captions.COLOURS if (d, c) not in captions.HELD_OUT]
    prompts = prompts * per_pair
    images = captions.dataset()[0]
    real = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:len(prompts)]]
    g = lambda: torch.Generator().manual_seed(seed)
    out = {"samples": len(prompts)}

    def measure(key, x):
        out[f"{key}_prompt_accuracy"] = round(judge.accuracy(x, prompts), 4)
        out[f"{key}_pixel_fd16"] = round(metrics.pixel_fd(x, real, size=16, dims=20), 3)

    base_guidance = TEXT_RECIPES[recipe.base].eval_guidance
    for steps in (4, 25):
        measure(f"base_ddim{steps}", sd.text_to_image(pipe, prompts, steps=steps, guidance_scale=base_guidance, generator=g()))
    for steps in recipe.eval_steps:
        measure(f"base_lcm{steps}", consistency.lcm_text_to_image(pipe, prompts, steps=steps, generator=g()))
    adapters.load_lora(pipe, folder, "lcm")
    for steps in recipe.eval_steps:
        measure(f"lcm_lora{steps}", consistency.lcm_text_to_image(pipe, prompts, steps=steps, generator=g()))
    return out


def write_lcm(out: Path, name: str, recipe: LcmRecipe, record: dict) -> None:
    """The adapter's card and recipe.json, both from `record` (steps, train_seconds, threads,
    trainable_parameters, quality and the recipe's fields)."""
    (out / "README.md").write_text(_lcm_card(name, recipe, record["steps"], record["train_seconds"], record["threads"],
                                             record["trainable_parameters"], record["quality"]))
    (out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")


def _lcm_card(name: str, recipe: LcmRecipe, steps: int, seconds: float, threads: int, trainable: int,
              quality: dict) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in quality.items())
    base_guidance = TEXT_RECIPES[recipe.base].eval_guidance
    return f"""---
library_name: diffusers
tags: [coursekit, lcm, lora, small-track]
---
# {name}

{recipe.description}

- **Base model**: the zoo's `{recipe.base}` (load both with `coursekit.stable_diffusion.load_pipeline({recipe.base!r})` and
  `coursekit.adapters.load_lora(pipe, {name!r})`; sample with `coursekit.consistency.lcm_text_to_image`, which is
  diffusers' pipeline with `LCMScheduler`).
- **Data**: `coursekit.captions.dataset()`, the base model's own training images and captions.
- **Adapter**: LoRA rank {recipe.rank} on `coursekit.consistency.LCM_TARGETS` ({trainable:,} trainable parameters), saved
  as `pytorch_lora_weights.safetensors` in peft's key naming.
- **Recipe**: `coursekit.consistency.distill_lora`: {steps} steps of batch {recipe.batch_size}, AdamW lr {recipe.lr} (cosine),
  teacher guidance {recipe.guidance_scale} on the {recipe.original_steps}-step DDIM grid, seed {recipe.seed}. Full recipe:
  `coursekit.zoo.LCM_RECIPES[{name!r}]`.
- **Training time**: {seconds / 60:.1f} minutes on {platform.machine()} CPU, {threads} torch thread(s).
- **Reproduce**: `coursekit train {name} --out DIR` (`--into-package` replaces this shipped adapter)

## Measured quality
Prompt accuracy by `coursekit.captions.prompt_judge()`; pixel FD: Fréchet distance at 16x16 to as many real coloured
digits (`coursekit.metrics.pixel_fd`, 20 principal components; lower is closer). `base_ddim*`: the base model with
DDIM at guidance {base_guidance}; `base_lcm*`: the base model with LCMScheduler and no adapter; `lcm_lora*`: with the
adapter, LCMScheduler, guidance 1. Same prompts and noise seed for every row.

| measure | value |
| --- | --- |
{rows}
"""


def train_lcm_checkpoint(name: str, out=None, steps: int | None = None, threads: int | None = None,
                         evaluate_after: bool = True, progress: bool = True, into_package: bool = False,
                         overwrite: bool = False) -> Path:
    """Distil the zoo LCM-LoRA `name` from its recipe's base model; save the adapter
    (`pytorch_lora_weights.safetensors`) with its card in `out`."""
    import torch

    from . import adapters, captions, consistency
    from . import stable_diffusion as sd
    from . import train as training
    from .tracks import torch_threads

    recipe = LCM_RECIPES[name]
    steps = recipe.steps if steps is None else training.positive_int("steps", steps)
    out = output_folder(out, into_package, ZOO_DIR / name, steps < recipe.steps, f"adapter {name!r}",
                        f"coursekit train {name}", {"steps": steps}, overwrite)
    work = out / "training"
    with torch_threads(threads):
        pipe = sd.load_pipeline(recipe.base)
        images, texts, _, _ = captions.dataset()
        result = consistency.distill_lora(pipe, images, texts, rank=recipe.rank, guidance_scale=recipe.guidance_scale,
                                          original_steps=recipe.original_steps, steps=steps,
                                          batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed,
                                          out_dir=work, progress=progress)
        adapters.save_lora(pipe, out)
        trainable = adapters.trainable_parameters(pipe.unet)
        quality = evaluate_lcm(sd.load_pipeline(recipe.base), out, recipe) if evaluate_after else {}
        write_lcm(out, name, recipe, {**asdict(recipe), "name": name, "steps": steps, "quality": quality,
                                      "train_seconds": round(result.seconds, 1), "threads": torch.get_num_threads(),
                                      "trainable_parameters": trainable})
    shutil.rmtree(work, ignore_errors=True)
    return out


def add_commands(sub) -> None:
    """`train NAME` (retrain a checkpoint from its recipe, or `--list` them) and `evaluate NAME`."""
    t = sub.add_parser("train", help="retrain a zoo checkpoint from its recipe (--list: the recipes)")
    t.add_argument("name", nargs="?", choices=recipe_names())
    t.add_argument("--list", action="store_true", help="list the recipes and stop")
    t.add_argument("--out", help="output folder (required unless --into-package)")
    t.add_argument("--into-package", action="store_true",
                   help="replace the checkpoint shipped in the package (full recipe only; for maintainers)")
    t.add_argument("--steps", type=int, help="override the recipe's step count (for quick checks, with --out)")
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    t.add_argument("--no-eval", action="store_true", help="skip the quality evaluation")
    t.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder that holds other files (those are kept)")
    t.set_defaults(run=_train_command)
    e = sub.add_parser("evaluate", help="measure a trained checkpoint again and rewrite its model card")
    e.add_argument("name", choices=recipe_names())
    e.add_argument("--folder", help="the checkpoint folder `coursekit train NAME --out DIR` wrote")
    e.add_argument("--into-package", action="store_true",
                   help="rewrite the card of the checkpoint the package ships (for maintainers)")
    e.set_defaults(run=lambda args: print(json.dumps(reevaluate(args.name, args.folder, into_package=args.into_package),
                                                     indent=2)))


def _train_command(args) -> None:
    if args.list or not args.name:
        for n in recipe_names():
            print(f"{n}: {describe(n)}")
        return
    began = time.perf_counter()
    path = train_checkpoint(args.name, args.out, args.steps, args.threads, evaluate_after=not args.no_eval,
                            into_package=args.into_package, overwrite=args.overwrite)
    print(f"wrote {path} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    import sys

    from .commands import run_commands

    sys.exit(run_commands("python -m coursekit.zoo", __doc__.split("\n")[0], [add_commands]))
