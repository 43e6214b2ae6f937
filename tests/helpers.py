"""Tiny random models and fake Hub caches that tests build on the fly."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel


def tiny_unet(size: int = 8, channels: int = 1, classes: int | None = None, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       num_class_embeds=None if classes is None else classes + 1).eval()


def tiny_scheduler(schedule: str = "squaredcos_cap_v2") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)


def save_pipeline_layout(folder: Path, unet, scheduler) -> Path:
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


def save_flat_layout(folder: Path, unet, scheduler) -> Path:
    """The older single-model layout some Hub repos use: config, weights and scheduler at the top."""
    unet.save_pretrained(folder)
    scheduler.save_pretrained(folder)
    return folder


def fake_hub_snapshot(cache: Path, repo_id: str, revision: str, kind: str = "model") -> Path:
    """An empty snapshot folder laid out as huggingface_hub's cache lays it out."""
    repo = cache / (f"{kind}s--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snap
