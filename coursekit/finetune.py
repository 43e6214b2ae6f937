"""Fine-tune a pretrained diffusion model on another dataset, from the command line.

    coursekit finetune --model digits-uncond --dataset digits --resize --out runs/ft --steps 300
    python -m coursekit.finetune ...                   # the same
    accelerate launch -m coursekit.finetune ...        # the same on several GPUs

The model is any `coursekit.models.load_model` name (zoo name, Hub id, folder); the dataset any
`coursekit.data.load_dataset` name. Checkpoints go to OUT/checkpoint and a run started again with the
same OUT resumes from there; OUT/run.json records the model, data and settings, and a run with
other settings into the same OUT is refused unless `--overwrite`. A checkpoint is saved every
`--checkpoint-every` steps or two minutes of work, and on Ctrl-C, so an interrupted run loses at
most the work since the last one. Sample grids land in OUT/samples, the loss curve in
OUT/loss.png, and the result in diffusers format in OUT/model.
"""
from __future__ import annotations

from pathlib import Path


class FinetuneError(ValueError):
    """The model and dataset do not fit together; the message says how to fix it."""


def check_fit(unet, dataset, resize: bool = False) -> None:
    """Refuse a dataset whose images differ from the model in channels, or in size unless `resize`."""
    first = dataset[0]["image"]
    channels = 1 if first.mode in ("L", "1", "I", "F") else 3
    height, width = model_shape(unet)
    if channels != unet.config.in_channels:
        raise FinetuneError(f"the dataset's images have {channels} channel(s) ({first.mode}) but the model takes "
                            f"{unet.config.in_channels}; pick a dataset or model with matching channels")
    if first.size != (width, height) and not resize:
        raise FinetuneError(f"the dataset's images are {first.size[0]}x{first.size[1]} (width x height) but the model "
                            f"takes {width}x{height}; pass --resize to scale them, or pick a matching model")


def model_shape(unet) -> tuple[int, int]:
    """(height, width) of a UNet's images, from an int or a (height, width) sample_size."""
    size = unet.config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)


def finetune(model: str, dataset: str, out: str | Path, *, steps: int = 300, batch_size: int = 16,
             grad_accum: int = 1, lr: float = 1e-4, resize: bool = False, sample_every: int = 100,
             n_samples: int = 16, seed: int = 0, checkpoint_every: int | None = None,
             checkpoint_minutes: float = 2.0, overwrite: bool = False, progress: bool = True,
             into_package: bool = False) -> Path:
    """Fine-tune `model` on `dataset`; returns OUT/model, a diffusers-format pipeline folder.
    OUT must be new or empty, or hold an earlier run of this command (same settings: it resumes);
    `overwrite` starts again there, writing this run's files over and keeping the others; a folder
    inside the installed package needs `into_package`.
    Under `accelerate launch`, `batch_size` is per process and the main process writes the files."""
    import torch
    from accelerate import PartialState
    from diffusers import DDIMPipeline, DDIMScheduler

    from . import data, models, samplers, train, viz

    train.check_training_settings(steps=steps, batch_size=batch_size, lr=lr, grad_accum=grad_accum,
                                  checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes)
    train.positive_int("sample_every", sample_every)
    train.positive_int("n_samples", n_samples)
    out = train.check_folder(out, "coursekit finetune", overwrite, into_package)
    state = PartialState(cpu=not torch.cuda.is_available())
    unet, scheduler = models.load_model(model, device=state.device)   # on the GPU from the first grid on
    ds = data.load_dataset(dataset)
    check_fit(unet, ds, resize)
    images, labels = data.tensors(ds, model_shape(unet), unet.config.in_channels)
    if models.null_label(unet) is not None:
        raise FinetuneError("this command fine-tunes unconditional models; the model is class-conditional")
    noise = samplers.noise(unet, n_samples, torch.Generator().manual_seed(seed)).cpu()
    (out / "samples").mkdir(parents=True, exist_ok=True)

    def grid(model):
        x = samplers.ddim(model, scheduler, noise.to(model.device), steps=25, progress=False)
        return viz.image_grid(x, scale=max(1, 64 // max(model_shape(unet))))

    pending = {0: grid(unet)} if state.is_main_process and (overwrite or train.latest_checkpoint(out) is None) else {}

    def log_samples(step, state):
        pending[step] = grid(state["model"])
        for s, picture in sorted(pending.items()):
            picture.save(out / "samples" / f"step_{s:05d}.png")
        pending.clear()

    run = {"command": "coursekit finetune", "model": str(model), "dataset": dataset, "resize": resize}
    refused = False
    try:
        result = train.train(unet, scheduler, images, steps=steps, batch_size=batch_size, grad_accum=grad_accum,
                             lr=lr, warmup=min(50, steps // 10), seed=seed, out_dir=out,
                             checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes, run=run,
                             overwrite=overwrite, callback=log_samples, every=sample_every, progress=progress)
    except train.RunMismatch:
        refused = True
        raise
    finally:
        for s, picture in pending.items() if not refused else ():
            picture.save(out / "samples" / f"step_{s:05d}.png")
    if state.is_main_process:
        viz.loss_curve(result.losses, title=f"fine-tuning {model} on {dataset}").savefig(out / "loss.png")
        pipeline = DDIMPipeline(unet=result.unet, scheduler=samplers.spaced(DDIMScheduler, scheduler))
        pipeline.save_pretrained(out / "model")
    state.wait_for_everyone()
    return out / "model"


def add_commands(sub) -> None:
    """`finetune --model M --dataset D --out RUN ...`."""
    p = sub.add_parser("finetune", help="fine-tune a model on a dataset (resumes when run again with the same --out)")
    p.add_argument("--model", required=True, help="zoo name, Hub id or folder")
    p.add_argument("--dataset", required=True, help="a coursekit.data.load_dataset name")
    p.add_argument("--out", required=True, help="run folder: checkpoints, samples, loss curve, final model")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--resize", action="store_true", help="scale the dataset's images to the model's size")
    p.add_argument("--sample-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, help="also save a checkpoint every N steps (default: every 2 minutes)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out folder that holds another run or other files (those are kept)")
    p.add_argument("--into-package", action="store_true",
                   help="allow an --out inside the installed coursekit package (for maintainers)")
    p.set_defaults(run=_finetune_command)


def _finetune_command(a) -> None:
    path = finetune(a.model, a.dataset, a.out, steps=a.steps, batch_size=a.batch_size, grad_accum=a.grad_accum,
                    lr=a.lr, resize=a.resize, sample_every=a.sample_every, seed=a.seed,
                    checkpoint_every=a.checkpoint_every, overwrite=a.overwrite, into_package=a.into_package)
    print(f"fine-tuned model: {path}")


if __name__ == "__main__":
    import sys

    from .commands import run_commands

    sys.exit(run_commands("python -m coursekit.finetune", __doc__.split("\n")[0], [add_commands], default="finetune"))
