"""The course's one training loop, on Accelerate, and the noise-prediction objective on it.

`fit(model, loss_fn, n, ...)` is the loop every trainer in coursekit uses (`train` here, the
distillation rounds of `coursekit.distill`, the guide classifier of `coursekit.guidance`): AdamW
with a learning-rate schedule from diffusers (`get_scheduler`), gradient accumulation, gradient
clipping, optional EMA weights, a progress bar, atomic checkpoints it resumes from exactly, and a
clear stop when the loss turns into NaN. Batches and every random draw come from generators
seeded by (seed, step) and are drawn for the whole global batch, each process keeping its share,
so a resumed run continues as if it had never stopped, and `accelerate launch` on several
processes trains the same weights as one process with the same global batch.

`train` is the DDPM objective (Ho et al., 2020): pick t, add noise to a clean image with the
closed form q(x_t | x_0), and regress the UNet's output on the added noise.
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

    @property
    def model(self):
        return self.unet


@dataclass
class Batch:
    """What a loss function gets at each micro-step: the indices of the whole global batch, the
    rows of it this process computes (`mine`), the generator seeded by (seed, micro-step) to draw
    the global batch's randomness from, and the device."""

    indices: torch.Tensor
    mine: slice
    generator: torch.Generator
    device: torch.device

    def draw(self, values: torch.Tensor) -> torch.Tensor:
        """This process's rows of something drawn for the whole global batch, on the device."""
        return values[self.mine].to(self.device)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the (global) batch at `step` of `n` items, from seeded epoch permutations."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"the dataset has {n} items, fewer than one global batch of {batch_size}")
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
    return perm[k * batch_size:(k + 1) * batch_size]


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


def _save_checkpoint(folder: Path, model, ema, optimizer, lr_sched, step, losses):
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
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


def fit(model, loss_fn, n: int, *, steps: int, batch_size: int, lr: float, warmup: int = 0,
        schedule: str = "cosine", weight_decay: float = 0.0, grad_accum: int = 1, clip: float | None = 1.0,
        ema_decay: float | None = None, seed: int = 0, out_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 200, callback=None, every: int = 100, progress: bool = True,
        desc: str = "training") -> TrainResult:
    """Train `model` on `n` items: `loss_fn(model, batch)` gives the loss of this process's share
    of each micro-batch (`Batch`). One optimizer step = `grad_accum` micro-batches of
    `batch_size` per process. `schedule` is a diffusers `get_scheduler` name ('cosine',
    'linear', 'constant', ...) with `warmup` steps. With `out_dir`, `checkpoint/` is written
    atomically every `checkpoint_every` steps and at the end, and a run that finds one resumes
    from it. `callback(step, state)` runs every `every` steps with state {'losses', 'model'}.
    Training runs on the device the model is on (a model on the CPU stays there even when a GPU
    is present); under `accelerate launch`, put it on Accelerate's device first.
    """
    import time

    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    on_cpu = next(model.parameters()).device.type == "cpu"
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum, cpu=on_cpu)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    lr_sched = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    ema = None
    if ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(model.parameters(), decay=ema_decay)

    start, losses = 0, []
    ckpt = Path(out_dir) / "checkpoint" if out_dir else None
    if ckpt is not None and ckpt.exists():
        from safetensors.torch import load_file

        state = torch.load(ckpt / "state.pt", weights_only=True)
        model.load_state_dict(load_file(ckpt / "model.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, losses = int(state["step"]), state["losses"].tolist()
        accelerator.print(f"resuming from {ckpt} at step {start}")

    wrapped, optimizer = accelerator.prepare(model, optimizer)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    mine = slice(rank * batch_size, (rank + 1) * batch_size)
    began = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc,
               disable=not (progress and accelerator.is_main_process))
    for step in bar:
        wrapped.train()
        total = 0.0
        for micro in range(grad_accum):
            i = step * grad_accum + micro
            batch = Batch(batch_indices(n, batch_size * world, i, seed), mine, step_generator(seed, i), device)
            with accelerator.accumulate(wrapped):
                loss = loss_fn(wrapped, batch)
                accelerator.backward(loss)
                if clip is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(wrapped.parameters(), clip)
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
            ema.step(accelerator.unwrap_model(wrapped).parameters())
        losses.append(total)
        bar.set_postfix(loss=f"{total:.4f}")
        done = step + 1
        if ckpt is not None and (done % checkpoint_every == 0 or done == steps):
            if accelerator.is_main_process:
                _save_checkpoint(ckpt, accelerator.unwrap_model(wrapped), ema, optimizer, lr_sched, done, losses)
            accelerator.wait_for_everyone()
        if callback is not None and done % every == 0 and accelerator.is_main_process:
            callback(done, {"losses": losses, "model": accelerator.unwrap_model(wrapped)})
    bar.close()
    trained = accelerator.unwrap_model(wrapped).eval()
    ema_model = None
    if ema is not None:
        ema_model = copy.deepcopy(trained)
        ema.copy_to(ema_model.parameters())
        ema_model.eval()
    return TrainResult(unet=trained, losses=losses, ema_unet=ema_model, seconds=time.perf_counter() - began)


def train(unet, scheduler, images: torch.Tensor, labels: torch.Tensor | None = None, *,
          steps: int, batch_size: int = 64, lr: float = 1e-3, warmup: int = 50,
          grad_accum: int = 1, p_uncond: float = 0.0, ema_decay: float | None = None,
          seed: int = 0, out_dir: str | os.PathLike | None = None, checkpoint_every: int = 200,
          callback=None, every: int = 100, progress: bool = True) -> TrainResult:
    """Train `unet` to predict the noise added to `images` (N, C, H, W in [-1, 1]), with `fit`.

    labels: class labels for a class-conditional UNet; with p_uncond > 0 each is replaced by
    the 'no class' label with that probability, which is what classifier-free guidance needs.
    batch_size is per process and per micro-batch; the other keywords are `fit`'s.
    """
    from .models import null_label

    if images.ndim != 4 or images.shape[1] != unet.config.in_channels:
        raise ValueError(f"images must be (N, {unet.config.in_channels}, H, W) for this UNet, got {tuple(images.shape)}")
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size or images.shape[-2:])
    if tuple(images.shape[-2:]) != size:
        raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]} but the UNet expects "
                         f"{size[0]}x{size[1]}; resize them")
    if images.min() < -1.001 or images.max() > 1.001:
        raise ValueError("images must lie in [-1, 1]; use coursekit.data.to_tensor")
    null = null_label(unet)
    if (labels is None) != (null is None):
        raise ValueError("pass labels exactly when the UNet is class-conditional (num_class_embeds set)")

    def noise_prediction_loss(model, batch: Batch):
        x_t, t, eps = noisy_batch(scheduler, images[batch.indices], batch.generator)
        y = None if labels is None else batch.draw(drop_labels(labels[batch.indices], p_uncond, null, batch.generator))
        return F.mse_loss(model(batch.draw(x_t), batch.draw(t), class_labels=y).sample, batch.draw(eps))

    return fit(unet, noise_prediction_loss, len(images), steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
               grad_accum=grad_accum, ema_decay=ema_decay, seed=seed, out_dir=out_dir,
               checkpoint_every=checkpoint_every, callback=callback, every=every, progress=progress)
