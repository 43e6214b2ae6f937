"""A small noise-prediction training loop on Accelerate.

The objective is the DDPM one (Ho et al., 2020): pick t, add noise to a clean image with the
closed form q(x_t | x_0), and regress the UNet's output on the added noise. Batches, timesteps
and noise are drawn from generators seeded by (seed, step), so a run resumed from a checkpoint
continues exactly as if it had never stopped; `accelerate launch` spreads the batch over GPUs.
"""
from __future__ import annotations

import copy
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message says where the last good checkpoint is."""


@dataclass
class TrainResult:
    unet: torch.nn.Module
    losses: list[float] = field(default_factory=list)
    ema_unet: torch.nn.Module | None = None
    seconds: float = 0.0

    @property
    def best(self):
        """The EMA weights when they were kept, else the trained weights."""
        return self.ema_unet if self.ema_unet is not None else self.unet


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of this process's share of the global batch at `step`, from seeded epoch permutations."""
    per_epoch = n // (batch_size * world)
    if per_epoch == 0:
        raise ValueError(f"the dataset has {n} images, fewer than one global batch of {batch_size * world}")
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
    start = (k * world + rank) * batch_size
    return perm[start:start + batch_size]


def noisy_batch(scheduler, x0: torch.Tensor, generator: torch.Generator):
    """(x_t, t, noise) for a batch of clean images, with t uniform over the training steps."""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    return scheduler.add_noise(x0, eps, t), t, eps


def drop_labels(labels: torch.Tensor, p: float, null: int, generator: torch.Generator) -> torch.Tensor:
    """Label dropout for classifier-free guidance: each label becomes `null` with probability p,
    so one network learns both the conditional and the unconditional noise estimate."""
    labels = labels.clone()
    labels[torch.rand(len(labels), generator=generator) < p] = null
    return labels


def _save_checkpoint(folder: Path, unet, ema, scheduler, optimizer, lr_sched, step, losses):
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, tmp / "model.safetensors")
    scheduler.save_pretrained(tmp / "scheduler")
    state = {"step": step, "losses": torch.tensor(losses), "optimizer": optimizer.state_dict(),
             "lr_scheduler": lr_sched.state_dict()}
    if ema is not None:
        state["ema"] = ema.state_dict()
    torch.save(state, tmp / "state.pt")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def train(unet, scheduler, images: torch.Tensor, labels: torch.Tensor | None = None, *,
          steps: int, batch_size: int = 64, lr: float = 1e-3, warmup: int = 50,
          grad_accum: int = 1, p_uncond: float = 0.0, ema_decay: float | None = None,
          seed: int = 0, out_dir: str | os.PathLike | None = None, checkpoint_every: int = 200,
          callback=None, every: int = 100, progress: bool = True) -> TrainResult:
    """Train `unet` to predict the noise added to `images` (N, C, H, W in [-1, 1]).

    labels: class labels for a class-conditional UNet; with p_uncond > 0 each is replaced by
    the 'no class' label with that probability, which is what classifier-free guidance needs.
    grad_accum: optimizer steps every `grad_accum` micro-batches (one `step` = one optimizer step).
    out_dir: where `checkpoint/` is written atomically every `checkpoint_every` steps and at
    the end; a run started with an existing checkpoint resumes from it.
    callback(step, losses, unet) runs every `every` steps, for sample grids during training.
    Training runs on the device the model is on (a model on the CPU stays there even when a GPU
    is present); under `accelerate launch`, put it on Accelerate's device first.
    """
    import time

    from accelerate import Accelerator
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from tqdm.auto import tqdm

    from .samplers import null_label

    if images.ndim != 4 or images.shape[1] != unet.config.in_channels:
        raise ValueError(f"images must be (N, {unet.config.in_channels}, H, W) for this UNet, got {tuple(images.shape)}")
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size or images.shape[-2:])
    if tuple(images.shape[-2:]) != size:
        raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]} but the UNet expects {size[0]}x{size[1]}; resize them")
    if images.min() < -1.001 or images.max() > 1.001:
        raise ValueError("images must lie in [-1, 1]; use coursekit.data.to_tensor")
    null = null_label(unet)
    if (labels is None) != (null is None):
        raise ValueError("pass labels exactly when the UNet is class-conditional (num_class_embeds set)")

    on_cpu = next(unet.parameters()).device.type == "cpu"   # train where the model is: move it to the GPU first
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum, cpu=on_cpu)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    lr_sched = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    ema = None
    if ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(unet.parameters(), decay=ema_decay)

    start, losses = 0, []
    ckpt = Path(out_dir) / "checkpoint" if out_dir else None
    if ckpt is not None and ckpt.exists():
        from safetensors.torch import load_file

        state = torch.load(ckpt / "state.pt", weights_only=True)
        unet.load_state_dict(load_file(ckpt / "model.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, losses = int(state["step"]), state["losses"].tolist()
        accelerator.print(f"resuming from {ckpt} at step {start}")

    model, optimizer = accelerator.prepare(unet, optimizer)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    began = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="training",
               disable=not (progress and accelerator.is_main_process))
    for step in bar:
        model.train()
        total = 0.0
        for micro in range(grad_accum):
            g = step_generator(seed, step * grad_accum + micro)
            idx = batch_indices(len(images), batch_size, step * grad_accum + micro, seed, rank, world)
            x_t, t, eps = noisy_batch(scheduler, images[idx], g)
            y = None if labels is None else drop_labels(labels[idx], p_uncond, null, g).to(device)
            with accelerator.accumulate(model):
                pred = model(x_t.to(device), t.to(device), class_labels=y).sample
                loss = F.mse_loss(pred, eps.to(device))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
            total += loss.item() / grad_accum
        if not math.isfinite(total):
            where = f"the last good checkpoint is {ckpt}" if ckpt and ckpt.exists() else "no checkpoint was saved"
            raise TrainingDiverged(
                f"the loss became {total} at step {step}; {where}. Lower the learning rate (lr={lr}) "
                "or check the data for NaNs, then run again (it resumes from the checkpoint)."
            )
        lr_sched.step()
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
        losses.append(total)
        bar.set_postfix(loss=f"{total:.4f}")
        done = step + 1
        if ckpt is not None and accelerator.is_main_process and (done % checkpoint_every == 0 or done == steps):
            _save_checkpoint(ckpt, accelerator.unwrap_model(model), ema, scheduler, optimizer, lr_sched, done, losses)
        if callback is not None and done % every == 0 and accelerator.is_main_process:
            callback(done, losses, accelerator.unwrap_model(model))
    bar.close()
    unet = accelerator.unwrap_model(model).eval()
    ema_unet = None
    if ema is not None:
        ema_unet = copy.deepcopy(unet)
        ema.copy_to(ema_unet.parameters())
        ema_unet.eval()
    return TrainResult(unet=unet, losses=losses, ema_unet=ema_unet, seconds=time.perf_counter() - began)
