"""Pictures of what is going on: image grids, sampling trajectories, schedules, loss curves."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image


def image_grid(images, nrow: int | None = None, scale: int = 1, pad: int = 1) -> Image.Image:
    """One PIL image tiling `images` (a tensor (N, C, H, W) in [-1, 1] or a list of PIL images).

    `nrow` images per row (default: about square); `scale` enlarges small images (nearest).
    """
    from .data import to_pil

    if not isinstance(images, (list, tuple)):
        images = to_pil(images)
    if not images:
        raise ValueError("image_grid needs at least one image")
    mode = "RGB" if any(im.mode != "L" for im in images) else "L"
    images = [im.convert(mode) for im in images]
    w, h = images[0].size
    if any(im.size != (w, h) for im in images):
        raise ValueError("image_grid needs images of one size; resize them first")
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / nrow)
    grid = Image.new(mode, (nrow * (w + pad) + pad, rows * (h + pad) + pad), 255 if mode == "L" else (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, (pad + (i % nrow) * (w + pad), pad + (i // nrow) * (h + pad)))
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST) if scale > 1 else grid


def _show(ax, x):
    from .data import to_pil

    im = to_pil(x)[0]
    ax.imshow(np.asarray(im), cmap="gray" if im.mode == "L" else None, vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def trajectory_strip(trajectory, n: int = 8, index: int = 0):
    """A figure of x_t (top) and the predicted x_0 (bottom) at `n` evenly spaced steps."""
    import matplotlib.pyplot as plt

    steps = np.linspace(0, len(trajectory.xs) - 1, min(n, len(trajectory.xs))).round().astype(int)
    has_x0 = any(x0 is not None for x0 in trajectory.x0s)
    fig, axes = plt.subplots(2 if has_x0 else 1, len(steps), figsize=(1.4 * len(steps), 3 if has_x0 else 1.6),
                             squeeze=False)
    for col, i in enumerate(steps):
        _show(axes[0, col], trajectory.xs[i][index])
        axes[0, col].set_title(f"t={trajectory.timesteps[i]}", fontsize=8)
        if has_x0 and trajectory.x0s[i] is not None:
            _show(axes[1, col], trajectory.x0s[i][index])
    axes[0, 0].set_ylabel("x_t")
    if has_x0:
        axes[1, 0].set_ylabel("predicted x_0")
    fig.tight_layout()
    return fig


def schedule_plot(schedules: dict[str, Sequence[float]]):
    """alpha-bar and log10 SNR = log10(alpha-bar / (1 - alpha-bar)) against t, one line per schedule."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, alpha_bar in schedules.items():
        ab = np.asarray(alpha_bar, dtype=np.float64)
        a.plot(ab, label=name)
        b.plot(np.log10(ab / (1 - ab)), label=name)
    a.set(xlabel="t", ylabel="alpha-bar (share of signal variance)", title="alpha-bar")
    b.set(xlabel="t", ylabel="log10 SNR", title="signal-to-noise ratio")
    a.legend()
    fig.tight_layout()
    return fig


def loss_curve(losses, smooth: int = 25, title: str = "training loss"):
    """The loss per step (faint) with a running mean over `smooth` steps; pass a dict
    {name: losses} to compare several runs on one plot."""
    import matplotlib.pyplot as plt

    runs = losses if isinstance(losses, dict) else {"": losses}
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, (name, run) in enumerate(runs.items()):
        run = np.asarray(run, dtype=np.float64)
        colour = f"C{i}"
        ax.plot(run, alpha=0.25, color=colour, label=None if name else "per step")
        if len(run) >= smooth > 1:
            mean = np.convolve(run, np.ones(smooth) / smooth, mode="valid")
            ax.plot(np.arange(smooth - 1, len(run)), mean, color=colour,
                    label=f"{name}, mean of {smooth}" if name else f"mean of {smooth}")
    ax.set(xlabel="step", ylabel="MSE on the noise", title=title, yscale="log")
    ax.legend()
    fig.tight_layout()
    return fig
