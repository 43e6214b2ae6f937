"""Explorers: ipywidgets panels that let a learner feel what one parameter does.

Each explorer is a few controls, a progress bar, a status line and a picture. Moving a control
(or pressing Run, for the slow ones) recomputes through the same coursekit function the notebook
calls without the widget, so what the panel shows is what that function returns:

    from coursekit import widgets
    widgets.noise_schedule(x0)                        # Unit 1: x_t and SNR against t and the schedule
    widgets.sampler(unet, scheduler)                  # Unit 1: scheduler, steps, eta; samples and time
    widgets.colour_guidance(unet, scheduler)          # Unit 2: colour picker and guidance scale
    widgets.inversion_editor(unet, scheduler, x0, y)  # Unit 4: step k and target class
    widgets.audio_generator(unet, scheduler, preset)  # Unit 4: generate, see the spectrogram, listen

`explorer.result` holds the last computed value and `explorer.controls` the controls, so tests
(and curious learners) can drive a panel from code. In Colab the panels need Colab's custom
widget manager; `enable_colab()` turns it on and does nothing elsewhere.

Every setting is checked when the explorer is made (a WidgetError, or the checked function's own
error, says how to fix it), since a slider would silently clamp a value outside its range; a seed
typed into a panel is checked when it runs, and the panel's status line shows the refusal.
"""
from __future__ import annotations

import io
import math
import numbers
import time

import torch

from . import samplers
from .models import null_label

SEED_MAX = 2**63 - 1
SLIDER_STEPS = 100


class WidgetError(ValueError):
    """A setting an explorer cannot use; the message says how to fix it."""


def check_int(value, name: str, low: int, high: int | None = None, why: str = "") -> int:
    """`value` as a whole number in low..high (no upper bound when `high` is None), else a WidgetError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low \
            or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise WidgetError(f"{name} must be a whole number {span}{why}, got {value!r}")
    return int(value)


def check_number(value, name: str, low: float, high: float = math.inf, why: str = "") -> float:
    """`value` as a finite number in low..high, else a WidgetError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not low <= value <= high:
        span = f"from {low} to {high}" if math.isfinite(high) else f">= {low}"
        raise WidgetError(f"{name} must be a finite number {span}{why}, got {value!r}")
    return float(value)


def check_seed(seed) -> int:
    """`seed` as a whole number in 0..2**63 - 1, a seed every torch generator takes, else a WidgetError."""
    return check_int(seed, "seed", 0, SEED_MAX, " (2**63 - 1), such as 0 or 42")


def check_colour(colour) -> str:
    """`colour` as '#rrggbb', from '#rrggbb' or three numbers R, G, B in 0..1, else a WidgetError."""
    import re

    fix = f"colour must be '#rrggbb' (such as '#e07020') or three numbers R, G, B in 0..1 (such as (0.9, 0.2, 0.1)), " \
          f"got {colour!r}"
    if isinstance(colour, str):
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", colour.strip()):
            raise WidgetError(fix)
        return colour.strip().lower()
    try:
        values = tuple(colour)
    except TypeError:
        raise WidgetError(fix) from None
    if len(values) != 3 or not all(not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)
                                   and 0 <= v <= 1 for v in values):
        raise WidgetError(fix)
    return "#" + "".join(f"{round(float(v) * 255):02x}" for v in values)


def beta_schedule(schedule: str, timesteps: int = 1000):
    """diffusers' DDPMScheduler with the noise `schedule` by name, else a WidgetError naming the usual ones."""
    from diffusers import DDPMScheduler

    try:
        return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=schedule)
    except (NotImplementedError, TypeError, ValueError):
        raise WidgetError(f"unknown noise schedule {schedule!r}; use one of 'linear', 'scaled_linear', "
                          "'squaredcos_cap_v2'") from None


def class_count(unet, what: str) -> int:
    """How many classes a class-conditional UNet knows, else a WidgetError: `what` needs classes."""
    null = null_label(unet)
    if null is None:
        raise WidgetError(f"{what} needs a class-conditional UNet (one with num_class_embeds), such as the zoo's "
                          "'digits-cond'; this one is unconditional")
    return int(null)


def enable_colab() -> None:
    """Turn on Colab's custom widget manager (needed for ipywidgets there); elsewhere, nothing."""
    from . import tracks

    if tracks.host() == "colab":
        from google.colab import output  # type: ignore[import-not-found]

        output.enable_custom_widget_manager()


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _grid_png(x: torch.Tensor, nrow: int | None = None) -> bytes:
    from . import viz

    return _png(viz.image_grid(x.clamp(-1, 1), nrow=nrow, scale=max(1, 96 // x.shape[-1])))


class Explorer:
    """Controls -> compute(**values, tick=...) -> render(result) -> PNG, with progress and timing.

    auto=True recomputes whenever a control changes; auto=False waits for the Run button.
    """

    def __init__(self, title: str, controls: dict, compute, render, *, auto: bool = True, extra=None, describe=None):
        import ipywidgets as w

        self.title, self.controls, self.compute, self.render = title, controls, compute, render
        self.result, self.seconds, self.runs = None, 0.0, 0
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="240px"))
        self.status = w.Label("")
        self.image = w.Image(format="png", layout=w.Layout(max_width="560px", height="auto"))
        self.button = w.Button(description="Run", button_style="primary", icon="play")
        self.button.on_click(lambda _: self.update())
        self.extra, self.describe = extra, describe
        if auto:
            for c in controls.values():
                c.observe(lambda _: self.update(), names="value")
        row = list(controls.values()) + ([] if auto else [self.button])
        self.widget = w.VBox([w.HTML(f"<b>{title}</b>"), w.HBox(row[:3]), w.HBox(row[3:]),
                              w.HBox([self.progress, self.status]), self.image] + ([extra] if extra is not None else []))

    def values(self) -> dict:
        return {k: c.value for k, c in self.controls.items()}

    def _tick(self, i: int, n: int) -> None:
        self.progress.max = max(n, 1)
        self.progress.value = min(i + 1, n)

    def update(self):
        self.progress.value, self.status.value = 0, "working..."
        began = time.perf_counter()
        try:
            self.result = self.compute(**self.values(), tick=self._tick)
            self.image.value = self.render(self.result)
        except Exception as e:
            self.status.value = f"failed: {type(e).__name__}: {e}"
            raise
        self.seconds = time.perf_counter() - began
        self.runs += 1
        self.status.value = f"done in {self.seconds:.2f} s" + (f"; {self.describe(self.result)}" if self.describe else "")
        return self.result

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def noisy(x0: torch.Tensor, t: int, schedule: str, seed: int = 0):
    """(x_t, SNR) of clean images `x0` at step t of a 1000-step `schedule`, with seeded noise:
    diffusers' DDPMScheduler.add_noise, the forward process of Unit 1."""
    from . import data

    x0 = data.check_images(x0, "x0")
    t = check_int(t, "t", 0, 999, " (a 1000-step schedule)")
    seed = check_seed(seed)
    scheduler = beta_schedule(schedule)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    ab = scheduler.alphas_cumprod[t]
    return scheduler.add_noise(x0, noise, torch.full((len(x0),), t)), float(ab / (1 - ab))


def noise_schedule(x0: torch.Tensor, schedules=("linear", "scaled_linear", "squaredcos_cap_v2"), t: int = 250) -> Explorer:
    """Slider over t and a schedule menu; shows x_t for each image in `x0` and the SNR."""
    import ipywidgets as w

    from . import data

    x0 = data.check_images(x0, "x0")
    schedules = (schedules,) if isinstance(schedules, str) else tuple(schedules)
    if not schedules:
        raise WidgetError("schedules is empty; give at least one schedule name, such as ('linear', 'squaredcos_cap_v2')")
    for name in schedules:
        beta_schedule(name)
    t = check_int(t, "t", 0, 999, " (a 1000-step schedule)")
    controls = {"t": w.IntSlider(value=t, min=0, max=999, description="t", continuous_update=False),
                "schedule": w.Dropdown(options=list(schedules), value=schedules[-1], description="schedule")}

    def compute(t, schedule, tick):
        tick(0, 1)
        return noisy(x0, t, schedule)

    ex = Explorer("Noise schedule: x_t and signal-to-noise ratio", controls, compute,
                  lambda r: _grid_png(r[0].clamp(-1, 1)), describe=lambda r: f"SNR {r[1]:.3g}")
    ex.update()
    return ex


def sampler(unet, scheduler, *, n: int = 8, labels=None, guidance_scale: float = 1.0, steps: int = 20) -> Explorer:
    """Scheduler menu, steps and eta; Run samples `n` images from seeded noise and times it."""
    import ipywidgets as w

    n = check_int(n, "n", 1, why=" (images per run)")
    steps = check_int(steps, "steps", 1, SLIDER_STEPS, " (the steps slider's range)")
    controls = {"name": w.Dropdown(options=list(samplers.SCHEDULERS), value="ddim", description="scheduler"),
                "steps": w.IntSlider(value=steps, min=1, max=100, description="steps", continuous_update=False),
                "eta": w.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="eta (DDIM)", continuous_update=False),
                "seed": w.IntText(value=0, description="seed")}

    def compute(name, steps, eta, seed, tick):
        g = torch.Generator().manual_seed(check_seed(seed))
        x = samplers.noise(unet, n, g)
        common = dict(steps=steps, labels=labels, guidance_scale=guidance_scale, generator=g, progress=False,
                      callback=lambda step, state: tick(step, steps))
        if name == "ddim":
            return samplers.ddim(unet, scheduler, x, eta=eta, **common)
        return samplers.sample(unet, samplers.scheduler_named(name, scheduler), x, **common)

    ex = Explorer("Samplers: scheduler, steps and eta", controls, compute, lambda x: _grid_png(x), auto=False)
    ex.update()
    return ex


def colour_guidance(unet, scheduler, *, n: int = 8, steps: int = 20, colour: str = "#e07020", scale: float = 4.0,
                    max_scale: float = 50.0) -> Explorer:
    """A colour picker and the guidance scale; Run shows `coursekit.guidance.colour_guided_grid`."""
    import ipywidgets as w

    from . import guidance

    n = check_int(n, "n", 1, why=" (images per run)")
    steps = samplers.check_steps(steps, scheduler)
    colour = check_colour(colour)
    max_scale = check_number(max_scale, "max_scale", 0.5, why=" (the top of the scale slider)")
    scale = check_number(scale, "scale", 0.0, max_scale, " (raise max_scale for a stronger pull)")
    controls = {"colour": w.ColorPicker(value=colour, description="colour"),
                "scale": w.FloatSlider(value=scale, min=0.0, max=max_scale, step=0.5, description="scale",
                                       continuous_update=False),
                "seed": w.IntText(value=0, description="seed")}

    def compute(colour, scale, seed, tick):
        return guidance.colour_guided_grid(unet, scheduler, check_colour(colour), scale, seed=check_seed(seed), n=n,
                                           steps=steps, callback=lambda step, state: tick(step, steps))

    ex = Explorer("Colour guidance: target colour and scale", controls, compute, _png, auto=False)
    ex.update()
    return ex


def edit_pair(unet, scheduler, x0: torch.Tensor, source: int, target: int, k: int, *, steps: int = 50,
              guidance_scale: float = 1.5, inversion=None, tick=None):
    """(reconstruction, edit) of one image: DDIM inversion with its own class, then
    `coursekit.inversion.edit` from step k with the source class and with the target class."""
    from . import inversion as inv

    classes = class_count(unet, "an edit between classes")
    source = check_int(source, "source", 0, classes - 1, " (the model's classes)")
    target = check_int(target, "target", 0, classes - 1, " (the model's classes)")
    inv.check_k(k, inversion.steps if isinstance(inversion, inv.Inversion) else inv.check_steps(steps, scheduler))
    label = lambda c: torch.tensor([c], device=unet.device)
    if inversion is None:
        inversion = inv.invert(unet, scheduler, x0.to(unet.device), steps=steps, labels=label(source), progress=False)
    if tick:
        tick(0, 2)
    recon = inv.edit(unet, scheduler, inversion, k, labels=label(source), guidance_scale=guidance_scale, progress=False)
    if tick:
        tick(1, 2)
    edited = inv.edit(unet, scheduler, inversion, k, labels=label(target), guidance_scale=guidance_scale, progress=False)
    return recon.cpu(), edited.cpu()


def inversion_editor(unet, scheduler, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 50, k: int = 35,
                     guidance_scale: float = 1.5, classes=None) -> Explorer:
    """Pick an image, a step k and a target class; shows source, reconstruction and edit side by side."""
    import ipywidgets as w

    from . import inversion as inv

    known = class_count(unet, "the inversion editor")
    inv.check_images(unet, images)
    steps = inv.check_steps(steps, scheduler)
    k = inv.check_k(k, steps)
    classes = list(range(known) if classes is None else classes)
    if not classes:
        raise WidgetError(f"classes is empty; give the target classes to offer, such as range({known})")
    classes = [check_int(c, "each of classes", 0, known - 1, " (the model's classes)") for c in classes]
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.shape != (len(images),):
        raise WidgetError(f"labels must be one whole-number class per image ({len(images)} of them), "
                          f"got dtype {labels.dtype} and shape {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= known:
        raise WidgetError(f"labels must lie in 0..{known - 1} (the model's classes), got {labels.tolist()}")
    cache: dict = {}
    controls = {"index": w.IntSlider(value=0, min=0, max=len(images) - 1, description="image", continuous_update=False),
                "k": w.IntSlider(value=k, min=0, max=steps, description="step k", continuous_update=False),
                "target": w.Dropdown(options=classes, value=classes[(int(labels[0]) + 1) % len(classes)], description="target")}

    def compute(index, k, target, tick):
        x0, source = images[index:index + 1].cpu(), int(labels[index])
        if index not in cache:
            cache[index] = inv.invert(unet, scheduler, x0.to(unet.device), steps=steps,
                                      labels=torch.tensor([source], device=unet.device), progress=False)
        recon, edited = edit_pair(unet, scheduler, x0, source, target, k, steps=steps, guidance_scale=guidance_scale,
                                  inversion=cache[index], tick=tick)
        return x0, recon, edited

    ex = Explorer("Inversion editor: source, reconstruction, edit", controls, compute,
                  lambda r: _grid_png(torch.cat(r).clamp(-1, 1), nrow=3))
    ex.update()
    return ex


def audio_clip(unet, scheduler, preset, *, seed: int = 0, steps: int = 25, tick=None):
    """(spectrogram image, waveform) of one generated slice: `samplers.ddim` then `audio.from_image`."""
    from . import audio

    seed = check_seed(seed)
    steps = samplers.check_steps(steps, scheduler)
    g = torch.Generator().manual_seed(seed)
    image = samplers.ddim(unet, scheduler, samplers.noise(unet, 1, g), steps=steps, generator=g, progress=False,
                          callback=(lambda step, state: tick(step, steps)) if tick else None)[0].cpu()
    return image, audio.from_image(image, preset, generator=torch.Generator().manual_seed(seed))


def audio_generator(unet, scheduler, preset, *, steps: int = 25) -> Explorer:
    """Seed and steps; Run generates a slice, shows its spectrogram and plays it."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from . import audio

    steps = check_int(steps, "steps", 2, SLIDER_STEPS, " (the steps slider's range)")
    player = w.Audio(format="wav", autoplay=False, loop=False)
    controls = {"seed": w.IntText(value=0, description="seed"),
                "steps": w.IntSlider(value=steps, min=2, max=100, description="steps", continuous_update=False)}

    def compute(seed, steps, tick):
        return audio_clip(unet, scheduler, preset, seed=seed, steps=steps, tick=tick)

    def render(result):
        image, wave = result
        buf = io.BytesIO()
        audio.write_wav(buf, wave, preset.sample_rate)
        player.value = buf.getvalue()
        fig, ax = plt.subplots(figsize=(4, 3))
        audio.spectrogram_plot(image, preset, title=f"seed {controls['seed'].value}", ax=ax)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=80)
        plt.close(fig)
        return out.getvalue()

    ex = Explorer("Audio: generate, look, listen", controls, compute, render, auto=False, extra=player)
    ex.player = player
    ex.update()
    return ex


def text_to_image(pipe, *, prompt: str = "a red seven", n: int = 4, steps: int = 25, guidance_scale: float = 5.0,
                  max_scale: float = 15.0) -> Explorer:
    """Prompt, guidance scale, steps and seed for a Stable Diffusion pipeline (`coursekit.stable_diffusion`);
    Run draws `n` images with `stable_diffusion.text_to_image`."""
    import ipywidgets as w

    from . import stable_diffusion as sd

    n = check_int(n, "n", 1, why=" (images per run)")
    steps = check_int(steps, "steps", 1, SLIDER_STEPS, " (the steps slider's range)")
    guidance_scale = check_number(guidance_scale, "guidance_scale", 0.0, max_scale, " (the slider's range)")
    controls = {"prompt": w.Text(value=str(prompt), description="prompt", continuous_update=False),
                "guidance_scale": w.FloatSlider(value=guidance_scale, min=0.0, max=max_scale, step=0.5,
                                                description="guidance", continuous_update=False),
                "steps": w.IntSlider(value=steps, min=1, max=SLIDER_STEPS, description="steps", continuous_update=False),
                "seed": w.IntText(value=0, description="seed")}

    def compute(prompt, guidance_scale, steps, seed, tick):
        if not str(prompt).strip():
            raise WidgetError("type a prompt (an empty one draws from the unconditional model: use guidance 1 for that)")
        g = torch.Generator(pipe.unet.device).manual_seed(check_seed(seed))
        return sd.text_to_image(pipe, [prompt] * n, steps=steps, guidance_scale=guidance_scale, generator=g,
                                callback=lambda step, state: tick(step, steps))

    ex = Explorer("Text to image: prompt, guidance scale, steps, seed", controls, compute, lambda x: _grid_png(x),
                  auto=False)
    ex.update()
    return ex
