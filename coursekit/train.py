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
import json
import math
import numbers
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
        raise SettingsError(f"the dataset has {n} items, fewer than one global batch of {batch_size}")
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


class SettingsError(ValueError):
    """A training setting or input that would silently do nothing or nonsense; the message says what to give."""


class RunMismatch(ValueError):
    """A run folder holds a run with other settings; the message lists them and the choices."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training; a checkpoint of the last finished step was saved."""


def _complete(folder: Path) -> bool:
    return (folder / "complete").is_file()


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in OUT/checkpoint/ (step-NNNNNNNN folders), or None."""
    root = Path(out_dir) / "checkpoint"
    found = sorted(p for p in root.glob("step-*") if _complete(p)) if root.is_dir() else []
    return found[-1] if found else None


def save_checkpoint(out_dir: str | os.PathLike, model, optimizer, lr_sched, step: int, losses, ema=None) -> Path:
    """Write OUT/checkpoint/step-NNNNNNNN/ and only then remove older ones, so that a kill at any
    instant leaves at least one complete checkpoint: a folder counts once its `complete` marker is
    written (after its files reach the disk), and a removal deletes the marker first."""
    from safetensors.torch import save_file

    root = Path(out_dir) / "checkpoint"
    folder = root / f"step-{step:08d}"
    if folder.exists():
        _remove(folder)
    folder.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    state = {"step": step, "losses": torch.tensor(losses), "optimizer": optimizer.state_dict(),
             "lr_scheduler": lr_sched.state_dict()}
    if ema is not None:
        state["ema"] = ema.state_dict()
    torch.save(state, folder / "state.pt")
    for name in ("model.safetensors", "state.pt"):
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())
    with open(folder / "complete", "w") as f:
        f.write(f"{step}\n")
        f.flush()
        os.fsync(f.fileno())
    for old in root.iterdir():
        if old != folder:
            _remove(old)
    return folder


def _remove(folder: Path) -> None:
    (folder / "complete").unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


PACKAGE_DIR = Path(__file__).resolve().parent


def inside_package(path: str | os.PathLike) -> bool:
    """Whether `path` lies inside the installed coursekit package (its code or its shipped zoo)."""
    return Path(path).resolve().is_relative_to(PACKAGE_DIR)


def check_folder(out: str | os.PathLike, command: str, overwrite: bool = False, into_package: bool = False) -> Path:
    """Refuse an output folder that is not `command`'s to write, before anything is written (a folder is
    the user's): a file; a place inside the installed package unless `into_package`; a folder that holds
    files but no run of a coursekit command (OUT/run.json), unless `overwrite`, with which the command
    writes its own files over and leaves every other file where it is."""
    out = Path(out)
    if inside_package(out) and not into_package:
        raise RunMismatch(f"{out} is inside the installed coursekit package ({PACKAGE_DIR}); write to a folder of your "
                          "own with --out DIR, or pass --into-package to replace the files the package ships")
    if out.exists() and not out.is_dir():
        raise RunMismatch(f"{out} is a file, not a folder; give --out a new or empty folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not into_package and not overwrite and not (out / "run.json").is_file():
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise RunMismatch(f"{out} already holds files that `{command}` did not write ({shown}); give a new or empty "
                          "folder, or pass overwrite=True (--overwrite) to write this run's files over them and keep "
                          "the rest")
    return out


def run_record(out_dir: str | os.PathLike, settings: dict, overwrite: bool = False) -> None:
    """Record what a run folder holds (OUT/run.json) and refuse to mix runs: a folder holding a run
    with other settings is refused with the differences and the choices, unless `overwrite`
    (which deletes that run's checkpoints). Only `steps` may change: a run can be extended."""
    path = Path(out_dir) / "run.json"
    wanted = json.loads(json.dumps(settings, default=str))
    if path.exists() and not overwrite:
        held = json.loads(path.read_text())
        differ = {k: (held.get(k), wanted.get(k)) for k in sorted(set(held) | set(wanted))
                  if k != "steps" and held.get(k) != wanted.get(k)}
        if differ:
            lines = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
            raise RunMismatch(f"{out_dir} holds another run ({lines}). Resume it with the same settings, pick a new "
                              "folder, or pass overwrite=True (--overwrite) to start again there.")
    if overwrite:
        shutil.rmtree(Path(out_dir) / "checkpoint", ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2) + "\n")


def positive_int(name: str, value, at_most: int | None = None) -> int:
    """`value` as an int >= 1 (and <= at_most), else a SettingsError that names `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingsError(f"{name} must be a whole number >= 1, got {value!r}")
    value = int(value)
    if value < 1 or (at_most is not None and value > at_most):
        upper = f" and at most {at_most}" if at_most is not None else ""
        raise SettingsError(f"{name} must be at least 1{upper}, got {value}")
    return value


def check_training_settings(*, steps, batch_size, lr, grad_accum=1, warmup=0, checkpoint_every=None,
                            checkpoint_minutes=None, ema_decay=None, clip=None) -> None:
    """Refuse settings with which training would silently do nothing or nonsense."""
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    positive_int("grad_accum", grad_accum)
    if checkpoint_every is not None:
        positive_int("checkpoint_every", checkpoint_every)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise SettingsError(f"the learning rate must be a finite number > 0 (try 1e-4), got {lr!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise SettingsError(f"warmup must be a whole number of steps >= 0, got {warmup!r}")
    if checkpoint_minutes is not None and not (math.isfinite(checkpoint_minutes) and checkpoint_minutes > 0):
        raise SettingsError(f"checkpoint_minutes must be a finite number > 0, got {checkpoint_minutes!r}")
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise SettingsError(f"ema_decay must lie strictly between 0 and 1 (try 0.995), or be None, got {ema_decay!r}")
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise SettingsError(f"clip must be a finite number > 0, or None for no clipping, got {clip!r}")


def fit(model, loss_fn, n: int, *, steps: int, batch_size: int, lr: float, warmup: int = 0,
        schedule: str = "cosine", weight_decay: float = 0.0, grad_accum: int = 1, clip: float | None = 1.0,
        ema_decay: float | None = None, seed: int = 0, out_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None, checkpoint_minutes: float = 2.0, run: dict | None = None,
        overwrite: bool = False, callback=None, every: int = 100, progress: bool = True,
        desc: str = "training") -> TrainResult:
    """Train `model` on `n` items: `loss_fn(model, batch)` gives the loss of this process's share
    of each micro-batch (`Batch`). One optimizer step = `grad_accum` micro-batches of
    `batch_size` per process. `schedule` is a diffusers `get_scheduler` name ('cosine',
    'linear', 'constant', ...) with `warmup` steps. `callback(step, state)` runs every `every`
    steps with state {'losses', 'model'}.

    With `out_dir`, nothing is lost: a checkpoint is saved every `checkpoint_every` steps (when
    given), whenever `checkpoint_minutes` of work have passed since the last one, at the end, and
    on Ctrl-C or SIGTERM (then `TrainingInterrupted` is raised); a run that finds one resumes from
    it exactly. OUT/run.json records `run` (what the caller trains on) and these settings, and a
    folder holding a run with other settings is refused (`RunMismatch`) unless `overwrite`.
    If the loss or the weights stop being finite, `model` gets back the weights of the last good
    step and `TrainingDiverged` is raised.
    Training runs on the device the model is on (a model on the CPU stays there even when a GPU
    is present); under `accelerate launch`, put it on Accelerate's device first.
    """
    import signal
    import threading
    import time

    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    check_training_settings(steps=steps, batch_size=batch_size, lr=lr, grad_accum=grad_accum, warmup=warmup,
                            checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes,
                            ema_decay=ema_decay, clip=clip)
    positive_int("n (the number of training items)", n)
    positive_int("every", every)
    on_cpu = next(model.parameters()).device.type == "cpu"
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum, cpu=on_cpu)
    if out_dir is not None and accelerator.is_main_process:
        run_record(out_dir, {**(run or {}), "n": n, "steps": steps, "global_batch": batch_size * accelerator.num_processes,
                             "lr": lr, "warmup": warmup, "schedule": schedule, "weight_decay": weight_decay,
                             "grad_accum": grad_accum, "clip": clip, "ema_decay": ema_decay, "seed": seed}, overwrite)
    accelerator.wait_for_everyone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    lr_sched = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    ema = None
    if ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(model.parameters(), decay=ema_decay)

    start, losses = 0, []
    found = latest_checkpoint(out_dir) if out_dir is not None else None
    if found is not None:
        from safetensors.torch import load_file

        state = torch.load(found / "state.pt", weights_only=True)
        model.load_state_dict(load_file(found / "model.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, losses = int(state["step"]), state["losses"].tolist()
        if start > steps:
            raise RunMismatch(f"{found} is at step {start}, beyond steps={steps}; ask for at least {start} steps to "
                              "resume it, or pick a new folder, or pass overwrite=True (--overwrite)")
        accelerator.print(f"resuming from {found} at step {start}")

    trainable = [p for p in model.parameters() if p.requires_grad]
    good = [p.detach().clone() for p in trainable]
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    mine = slice(rank * batch_size, (rank + 1) * batch_size)
    stop = []
    restore = {}
    if out_dir is not None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore[sig] = signal.signal(sig, lambda signum, frame: stop.append(signum))

    def save(done):
        if accelerator.is_main_process:
            save_checkpoint(out_dir, accelerator.unwrap_model(wrapped), optimizer, lr_sched, done, losses, ema)
        accelerator.wait_for_everyone()

    began = last_save = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc,
               disable=not (progress and accelerator.is_main_process))
    try:
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
            weights_finite = bool(torch.stack([torch.isfinite(p).all() for p in trainable]).all())   # one sync
            with torch.no_grad():
                if not (math.isfinite(total) and weights_finite):
                    for p, g in zip(trainable, good):
                        p.copy_(g)
                    last = latest_checkpoint(out_dir) if out_dir is not None else None
                    where = f"the last checkpoint is {last}" if last else "no checkpoint was saved"
                    raise TrainingDiverged(
                        f"the loss became {total} at step {step}; the model holds the weights of the last good step "
                        f"({step}) again and {where}. Lower the learning rate (lr={lr}) or check the data for NaNs, "
                        "then run again."
                    )
                for p, g in zip(trainable, good):
                    g.copy_(p)
            lr_sched.step()
            if ema is not None:
                ema.step(accelerator.unwrap_model(wrapped).parameters())
            losses.append(total)
            bar.set_postfix(loss=f"{total:.4f}")
            done = step + 1
            if out_dir is not None and (stop or done == steps
                                        or (checkpoint_every is not None and done % checkpoint_every == 0)
                                        or time.perf_counter() - last_save >= checkpoint_minutes * 60):
                save(done)
                last_save = time.perf_counter()
            if stop:
                raise TrainingInterrupted(f"stopped at step {done} of {steps}; the checkpoint in {out_dir} holds it "
                                          "and the same command resumes from there")
            if callback is not None and done % every == 0 and accelerator.is_main_process:
                callback(done, {"losses": losses, "model": accelerator.unwrap_model(wrapped)})
    finally:
        bar.close()
        for sig, handler in restore.items():
            signal.signal(sig, handler)
    trained = accelerator.unwrap_model(wrapped).eval()
    ema_model = None
    if ema is not None:
        ema_model = copy.deepcopy(trained)
        ema.copy_to(ema_model.parameters())
        ema_model.eval()
    return TrainResult(unet=trained, losses=losses, ema_unet=ema_model, seconds=time.perf_counter() - began)


def check_training_data(unet, images: torch.Tensor, labels: torch.Tensor | None, p_uncond: float = 0.0) -> int | None:
    """Refuse images and labels a UNet cannot be trained on, with what to do; returns its 'no class'
    label (None for an unconditional UNet)."""
    from .models import null_label

    if images.ndim != 4 or images.shape[1] != unet.config.in_channels:
        raise SettingsError(f"images must be (N, {unet.config.in_channels}, H, W) for this UNet, got {tuple(images.shape)}")
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size or images.shape[-2:])
    if tuple(images.shape[-2:]) != size:
        raise SettingsError(f"images are {images.shape[-2]}x{images.shape[-1]} but the UNet expects "
                         f"{size[0]}x{size[1]}; resize them")
    if not images.is_floating_point():
        raise SettingsError(f"images must be floats in [-1, 1], got {images.dtype}; use coursekit.data.to_tensor")
    if not torch.isfinite(images).all():
        raise SettingsError("images contain NaN or infinite values; clean the data (coursekit.data.to_tensor makes "
                         "images in [-1, 1])")
    if images.min() < -1.001 or images.max() > 1.001:
        raise SettingsError("images must lie in [-1, 1]; use coursekit.data.to_tensor")
    null = null_label(unet)
    if (labels is None) != (null is None):
        raise SettingsError("pass labels exactly when the UNet is class-conditional (num_class_embeds set)")
    if labels is not None:
        if labels.is_floating_point() or labels.shape != (len(images),):
            raise SettingsError(f"labels must be one whole-number class per image, shape ({len(images)},), got "
                             f"{labels.dtype} of shape {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= null:
            raise SettingsError(f"labels must lie in 0..{null - 1} for this UNet, got {labels.min()}..{labels.max()}")
    if not 0.0 <= p_uncond < 1.0:
        raise SettingsError(f"p_uncond is a probability in [0, 1) (0.1 to 0.2 is usual), got {p_uncond}")
    return null


def train(unet, scheduler, images: torch.Tensor, labels: torch.Tensor | None = None, *,
          steps: int, batch_size: int = 64, lr: float = 1e-3, warmup: int = 50,
          grad_accum: int = 1, p_uncond: float = 0.0, ema_decay: float | None = None,
          seed: int = 0, out_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
          checkpoint_minutes: float = 2.0, run: dict | None = None, overwrite: bool = False,
          callback=None, every: int = 100, progress: bool = True) -> TrainResult:
    """Train `unet` to predict the noise added to `images` (N, C, H, W in [-1, 1]), with `fit`.

    labels: class labels for a class-conditional UNet; with p_uncond > 0 each is replaced by
    the 'no class' label with that probability, which is what classifier-free guidance needs.
    batch_size is per process and per micro-batch; the other keywords are `fit`'s (`run` describes
    the model and data for the run folder's record).
    """
    from .models import declare_objective

    null = check_training_data(unet, images, labels, p_uncond)
    declare_objective(unet, "epsilon")

    def noise_prediction_loss(model, batch: Batch):
        x_t, t, eps = noisy_batch(scheduler, images[batch.indices], batch.generator)
        y = None if labels is None else batch.draw(drop_labels(labels[batch.indices], p_uncond, null, batch.generator))
        return F.mse_loss(model(batch.draw(x_t), batch.draw(t), class_labels=y).sample, batch.draw(eps))

    return fit(unet, noise_prediction_loss, len(images), steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
               grad_accum=grad_accum, ema_decay=ema_decay, seed=seed, out_dir=out_dir,
               checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes,
               run={"objective": "noise prediction", "p_uncond": p_uncond, **(run or {})}, overwrite=overwrite,
               callback=callback, every=every, progress=progress)
