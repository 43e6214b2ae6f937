"""The models: the noise predictor every loop calls, and building, saving and loading every kind
of model the course uses.

- `NoisePredictor`: a UNet with its conditioning (class labels, or text embeddings for a
  text-conditional UNet) and the classifier-free guidance scale, checked once. Calling it gives
  the noise estimate, guided as one batched UNet call (Ho and Salimans 2022). Every sampling,
  loss-guidance, inversion and distillation loop in coursekit calls one.
- `ClassChannelsUNet`: class conditioning through extra input channels, a diffusers model like
  any other (`save_pretrained`, `from_pretrained`).
- `load_model(name)`: (unet, scheduler) from a zoo name, a local folder or a Hub id at its pinned
  revision; `save_model` writes the layout it reads; `load_audio_model` adds the mel settings.
  Only safetensors weights load.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config

CHECKPOINTS = Path(__file__).with_name("checkpoints")


class ModelError(ValueError):
    """A model, or inputs to it, that coursekit cannot use; the message says why and what to do."""


def not_finite(x: torch.Tensor) -> bool:
    """Whether `x` holds a NaN or an infinity (never for tensors without data, on the meta device)."""
    return not x.is_meta and not bool(torch.isfinite(x).all())


OBJECTIVES = {
    "epsilon": ("noise prediction", "coursekit.samplers.ddim (or ddpm, sample)"),
    "v_prediction": ("v-prediction", "coursekit.samplers.ddim (or ddpm, sample)"),
    "sample": ("clean-image prediction", "coursekit.samplers.ddim (or ddpm, sample)"),
    "flow": ("flow matching (velocity)", "coursekit.flow.euler"),
    "edm": ("EDM's preconditioned F", "coursekit.edm.heun"),
    "consistency": ("consistency distillation", "coursekit.consistency.sample"),
    "cold": ("blur restoration (cold diffusion)", "coursekit.cold.sample"),
}
SCHEDULER_OBJECTIVES = {"FlowMatchEulerDiscreteScheduler": "flow", "EDMEulerScheduler": "edm",
                        "LCMScheduler": "consistency", "BlurSchedule": "cold"}


def declare_objective(model, objective: str):
    """Mark `model` with what it was trained to predict (one of `OBJECTIVES`), so that every sampler can
    refuse a model of another objective; `load_model`, `zoo.build` and the training loops do it."""
    if objective not in OBJECTIVES:
        raise ModelError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    model.coursekit_objective = objective
    return model


def objective_of(model) -> str | None:
    """What `model` (or a NoisePredictor's UNet) declares it predicts (see `declare_objective`), or None
    for a model built by hand."""
    if isinstance(model, NoisePredictor):
        model = model.unet
    return getattr(model, "coursekit_objective", None)


def scheduler_objective(scheduler) -> str:
    """The objective a saved model's scheduler stands for: its class for flow, EDM, consistency and cold
    diffusion, else the DDPM family's `prediction_type` (epsilon, v_prediction or sample)."""
    name = type(scheduler).__name__
    return SCHEDULER_OBJECTIVES.get(name) or scheduler.config.get("prediction_type", "epsilon")


def check_size(model, x: torch.Tensor, sampler: str) -> None:
    """Refuse images of another height and width than the model was trained on (its config's
    `sample_size`): a UNet runs at any size and returns images of chance quality."""
    unet = model.unet if isinstance(model, NoisePredictor) else model
    size = getattr(getattr(unet, "config", None), "sample_size", None)
    if size is None or not isinstance(x, torch.Tensor) or x.ndim != 4:
        return
    wanted = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) != wanted:
        raise ModelError(f"{sampler}: this model was trained on {wanted[0]}x{wanted[1]} images, x is "
                         f"{x.shape[-2]}x{x.shape[-1]}; draw the starting noise with coursekit.samplers.noise(model, n)")


def check_objective(model, wanted: tuple[str, ...], sampler: str) -> None:
    """Refuse a model that declares another objective than one of `wanted`: `sampler` would run on it
    without an error and return images of chance quality. The message names the sampler that fits."""
    declared = objective_of(model)
    if declared is not None and declared not in wanted:
        what, right = OBJECTIVES[declared]
        raise ModelError(f"{sampler} samples models trained for {OBJECTIVES[wanted[0]][0]}, but this model was trained "
                         f"for {what}: sample it with {right} (coursekit.zoo.draw picks the sampler for a zoo model)")


def null_label(unet) -> int | None:
    """The 'no class' label of a class-conditional UNet (its last class), or None if unconditional."""
    n = getattr(unet.config, "num_class_embeds", None)
    return None if n is None else n - 1


class NoisePredictor:
    """A UNet and its conditioning, checked once; `predictor(x, t)` is the noise estimate.

    labels: class labels for a class-conditional UNet (one per sample, or one for all; the last
    class means 'no class', which unconditional sampling of such a UNet uses).
    text: (cond, uncond) prompt embeddings for a text-conditional UNet (`uncond` may be None
    without guidance).
    guidance_scale: classifier-free guidance, uncond + scale * (cond - uncond), the two halves
    run as one batch; 1 means the plain conditional estimate.
    """

    def __init__(self, unet, *, labels=None, text=None, guidance_scale: float = 1.0):
        import math

        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale):
            raise ModelError("guidance_scale must be a finite number (1: no guidance; 1.5 to 7.5 is usual), "
                             f"got {guidance_scale!r}")
        self.unet, self.guidance_scale = unet, float(guidance_scale)
        self.text = text
        null = null_label(unet)
        if text is not None:
            if labels is not None:
                raise ModelError("give class labels or text embeddings, not both")
            if guidance_scale != 1.0 and text[1] is None:
                raise ModelError("classifier-free guidance needs the unconditional embeddings: text=(cond, uncond)")
            self.labels = None
            return
        if labels is not None:
            if null is None:
                raise ModelError("labels were given but this UNet is unconditional (no num_class_embeds); drop labels=")
            labels = torch.as_tensor(labels)
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ModelError("labels must be whole-number class indices (a list of ints or a long tensor), "
                                 f"got {labels.dtype}")
            labels = labels.long().reshape(-1)
            if labels.numel() and (labels.min() < 0 or labels.max() > null):
                raise ModelError(f"labels must lie in 0..{null - 1} ({null} means 'no class'), got {labels.tolist()}")
            labels = labels.to(unet.device)
        if guidance_scale != 1.0 and null is None:
            raise ModelError("classifier-free guidance needs a class-conditional UNet; use guidance_scale=1")
        self.labels = labels

    def for_batch(self, x: torch.Tensor) -> "NoisePredictor":
        """Check images or latents `x` against the model and the labels; returns self."""
        channels = self.unet.config.in_channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise ModelError(f"x must have shape (N, {channels}, H, W) for this model, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ModelError(f"x must be a float tensor (noise or images in [-1, 1]), got {x.dtype}")
        if not_finite(x):
            raise ModelError("x contains NaN or infinite values; start from samplers.noise(...) or images in [-1, 1]")
        n = x.shape[0]
        if self.labels is not None and self.labels.numel() not in (1, n):
            raise ModelError(f"got {self.labels.numel()} labels for {n} samples; give one label per sample")
        return self

    def _labels(self, x):
        null = null_label(self.unet)
        if null is None:
            return None
        if self.labels is None:
            return torch.full((len(x),), null, device=x.device, dtype=torch.long)
        labels = self.labels.to(x.device)
        return labels.expand(len(x)) if labels.numel() == 1 else labels

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        t2 = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.ndim == 1 and len(t) == len(x) > 1 else t
        if self.text is not None:
            cond, uncond = (e.expand(len(x), -1, -1) if e is not None else None for e in self.text)
            if self.guidance_scale == 1.0:
                return self.unet(x, t, encoder_hidden_states=cond).sample
            both = self.unet(torch.cat([x, x]), t2, encoder_hidden_states=torch.cat([cond, uncond])).sample
        else:
            labels = self._labels(x)
            if labels is None or self.guidance_scale == 1.0:
                return self.unet(x, t, class_labels=labels).sample
            null = torch.full_like(labels, null_label(self.unet))
            both = self.unet(torch.cat([x, x]), t2, class_labels=torch.cat([labels, null])).sample
        cond_eps, free_eps = both.chunk(2)
        return free_eps + self.guidance_scale * (cond_eps - free_eps)


def as_predictor(model, x: torch.Tensor | None = None, *, labels=None, text=None, guidance_scale: float = 1.0):
    """`model` itself when it is a NoisePredictor (then no conditioning may be given again),
    else a NoisePredictor of the UNet with this conditioning; checked against `x` when given."""
    if isinstance(model, NoisePredictor):
        if labels is not None or text is not None or guidance_scale != 1.0:
            raise ModelError("the NoisePredictor already holds its conditioning; give labels, text and "
                             "guidance_scale to it, not again here")
        found = model
    else:
        found = NoisePredictor(model, labels=labels, text=text, guidance_scale=guidance_scale)
    return found.for_batch(x) if x is not None else found


class ClassChannelsUNet(ModelMixin, ConfigMixin):
    """Class conditioning as extra input channels: a learned embedding of the label is spread over
    every pixel and stacked under the image before an inner `UNet2DModel` sees it.

    It behaves like a class-conditional diffusers UNet (`model(x, t, class_labels=y).sample`,
    `config.in_channels` the image's channels, `config.num_class_embeds` with the last label
    meaning 'no class'), and saves and loads like one; `unet_config` holds the inner UNet's
    settings other than its size and channels.
    """

    @register_to_config
    def __init__(self, sample_size: int = 16, in_channels: int = 1, num_class_embeds: int = 11, embed_dim: int = 4,
                 unet_config: dict | None = None):
        super().__init__()
        if in_channels not in (1, 3):
            raise ModelError(f"images have 1 or 3 channels, got {in_channels}")
        self.unet = UNet2DModel(sample_size=sample_size, in_channels=in_channels + embed_dim, out_channels=in_channels,
                                **(unet_config or {}))
        self.embed = torch.nn.Embedding(num_class_embeds, embed_dim)

    def forward(self, sample, timestep, class_labels=None, return_dict: bool = True):
        if class_labels is None:
            raise ModelError("ClassChannelsUNet needs class_labels (use the last label for 'no class')")
        maps = self.embed(class_labels)[:, :, None, None].expand(-1, -1, *sample.shape[-2:])
        return self.unet(torch.cat([sample, maps.to(sample.dtype)], dim=1), timestep, return_dict=return_dict)


class ClassDiT(ModelMixin, ConfigMixin):
    """A transformer denoiser (DiT; Peebles and Xie 2023): the image is cut into patches, each patch
    becomes a token, and transformer blocks whose LayerNorms are shifted, scaled and gated by an
    embedding of the time and the class (adaLN-Zero: the layers that compute every shift, scale and gate,
    and the output layer, start at zero as in the paper, so each block starts as the identity and a
    fresh model predicts zero) predict the noise; diffusers' `DiTTransformer2DModel` inside.

    It behaves like a class-conditional diffusers UNet (`model(x, t, class_labels=y).sample`,
    `config.num_class_embeds` with the last label meaning 'no class') and saves and loads like one.
    The inner model's own random label dropout is switched off: coursekit's training drops labels
    from its seeded generators, so runs resume exactly.
    """

    @register_to_config
    def __init__(self, sample_size: int = 16, in_channels: int = 1, num_class_embeds: int = 11, patch_size: int = 2,
                 width: int = 128, depth: int = 4, heads: int = 4):
        from diffusers import DiTTransformer2DModel
        from diffusers.models.embeddings import LabelEmbedding

        super().__init__()
        if width % heads:
            raise ModelError(f"width ({width}) must be a multiple of heads ({heads})")
        if sample_size % patch_size:
            raise ModelError(f"sample_size ({sample_size}) must be a multiple of patch_size ({patch_size})")
        self.dit = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=width // heads,
                                         in_channels=in_channels, out_channels=in_channels, num_layers=depth,
                                         sample_size=sample_size, patch_size=patch_size,
                                         num_embeds_ada_norm=num_class_embeds - 1)
        for m in self.dit.modules():
            if isinstance(m, LabelEmbedding):
                m.dropout_prob = 0.0
        for layer in [block.norm1.linear for block in self.dit.transformer_blocks] + [self.dit.proj_out_1,
                                                                                       self.dit.proj_out_2]:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, sample, timestep, class_labels=None, return_dict: bool = True):
        if class_labels is None:
            raise ModelError("ClassDiT needs class_labels (use the last label for 'no class')")
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(1).expand(len(sample)) if t.numel() == 1 else t
        return self.dit(sample, timestep=t, class_labels=class_labels, return_dict=return_dict)


MODEL_CLASSES = {"ClassChannelsUNet": ClassChannelsUNet, "ClassDiT": ClassDiT}


class BlurSchedule(ConfigMixin):
    """The corruption schedule of a cold-diffusion model (`coursekit.cold`): `levels` blur levels
    whose width rises linearly to `sigma_max` pixels; generation starts from a flat patch at
    `start_mean` (the training images' mean, what full blur leaves) plus noise of std `start_noise`.
    Saved as a model folder's scheduler_config.json, so `load_model` returns it in the scheduler's place."""

    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, levels: int = 16, sigma_max: float = 8.0, start_mean: float = 0.0, start_noise: float = 0.0):
        pass

    def save_pretrained(self, folder) -> None:
        self.save_config(folder)


SCHEDULE_CLASSES = {"BlurSchedule": BlurSchedule}


def model_class(name: str):
    """The class a config's `_class_name` names: coursekit's own, or diffusers'."""
    import diffusers

    cls = MODEL_CLASSES.get(name) or getattr(diffusers, name, None)
    if cls is None:
        raise ModelError(f"unknown model class {name!r}: neither coursekit's ({', '.join(MODEL_CLASSES)}) nor diffusers'")
    return cls


def zoo_names() -> list[str]:
    """The checkpoints that ship in the package."""
    return sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "unet").is_dir()) if CHECKPOINTS.is_dir() else []


def model_folder(name: str | os.PathLike) -> Path:
    """The local folder of a zoo name, a folder, or a Hub id (fetched at its pinned revision)."""
    if (CHECKPOINTS / str(name) / "unet").is_dir():
        return CHECKPOINTS / str(name)
    if os.path.isdir(name):
        return Path(name)
    name = str(name)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        from . import hub

        try:
            return hub.fetch(name, f"use a zoo model ({', '.join(zoo_names())})", **hub.model_files(name))
        except hub.HubUnavailable as e:
            raise ModelError(str(e)) from None
    raise ModelError(f"unknown model {name!r}: not a zoo name ({', '.join(zoo_names())}), not a folder, "
                     "and not a Hub id of the form 'org/name'")


def load_model(name: str | os.PathLike, device="cpu"):
    """(unet, scheduler) from a zoo name, a Hub id (at its pinned revision) or a local folder.

    The folder may hold `unet/` and `scheduler/` subfolders (pipeline layout) or the UNet's config
    and weights at its top level (single-model layout). Only safetensors weights load.
    """
    import diffusers

    folder = model_folder(name)
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").exists() else folder
    sched_dir = folder / "scheduler" if (folder / "scheduler").is_dir() else folder
    if not (unet_dir / "config.json").exists():
        raise ModelError(f"{folder} has no UNet config (looked for unet/config.json and config.json)")
    if not any(unet_dir.glob("*.safetensors")):
        raise ModelError(f"{unet_dir} has no .safetensors weights; coursekit does not unpickle weights it did not "
                         "write (for a Hub model, `coursekit pin` finds a revision that has them)")
    config = json.loads((unet_dir / "config.json").read_text())
    cls = model_class(config.get("_class_name", "UNet2DModel"))
    unet = cls.from_pretrained(unet_dir, use_safetensors=True).to(device).eval()
    sched_file = sched_dir / "scheduler_config.json"
    if not sched_file.exists():
        raise ModelError(f"{folder} has no scheduler_config.json (looked in scheduler/ and the top level)")
    sched_name = json.loads(sched_file.read_text()).get("_class_name", "DDPMScheduler")
    sched_cls = SCHEDULE_CLASSES.get(sched_name) or getattr(diffusers, sched_name)
    scheduler = (BlurSchedule.from_config(BlurSchedule.load_config(sched_dir)) if sched_cls is BlurSchedule
                 else sched_cls.from_pretrained(sched_dir))
    return declare_objective(unet, scheduler_objective(scheduler)), scheduler


def save_model(unet, scheduler, folder: str | os.PathLike) -> Path:
    """Write a model in the layout `load_model` reads: unet/ and scheduler/."""
    folder = Path(folder)
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def load_audio_model(name: str | os.PathLike, device="cpu"):
    """(unet, scheduler, mel preset) of an audio-diffusion checkpoint (a zoo name, a folder or a
    Hub id such as kmpartner/audio-diffusion-electronic): UNet and scheduler from their
    subfolders, the mel settings from mel/mel_config.json or mel_config.json (the course's
    teticio preset when there is none); no deprecated pipeline."""
    from . import audio

    unet, scheduler = load_model(name, device=device)
    folder = model_folder(name)
    config = next((p for p in (folder / "mel" / "mel_config.json", folder / "mel_config.json") if p.exists()), None)
    preset = audio.preset_from_config(json.loads(config.read_text())) if config else audio.PRESETS["teticio"]
    return unet, scheduler, preset
