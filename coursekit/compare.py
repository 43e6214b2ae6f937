"""The new directions of Unit 4 side by side: every sampler and model of the zoo on the class-
conditional 16x16 digits at the same numbers of network calls, judged the same way. The notebook
and `make bench` call the same function."""
from __future__ import annotations

import time

from . import distill, metrics, models, samplers, zoo


class CompareError(ValueError):
    """A comparison asked for methods or counts that do not exist; the message lists the valid ones."""


COMPARED = {
    "DDPM": ("digits-cond", "ddpm"), "DDIM": ("digits-cond", "ddim"), "DPM-Solver++": ("digits-cond", "dpm++"),
    "progressive students": ("digits-cond", "students"), "consistency": ("digits-consistency", None),
    "flow matching": ("digits-flow", None), "flow + reflow": ("digits-flow-reflow", None), "EDM (Heun)": ("digits-edm", None),
    "DiT (DDIM)": ("digits-dit", None), "cold diffusion": ("digits-cold", None),
}


def compare(nfes=(1, 2, 4, 8, 16, 32), per_class: int = 10, methods=None, seed: int = 1, progress: bool = True,
            judge=None) -> list:
    """Every method of `COMPARED` at each number of function evaluations (network calls per sample,
    a guided call counted once): one row (method, nfe, seconds, accuracy by the digit judge, FD in
    its feature space, pixel FD at 16x16) per setting that the method can run. Same labels and
    starting noise for all. Heun spends 2n - 1 calls on n steps, so EDM runs at odd counts; cold
    diffusion has 16 levels, progressive students exist for 1 to 32 steps. `judge`: an already fit
    `metrics.digit_judge(16)` to reuse (fitting one takes seconds)."""
    import torch
    from tqdm.auto import tqdm

    unknown = [m for m in (methods or ()) if m not in COMPARED]
    if unknown:
        raise CompareError(f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(COMPARED)}")
    if isinstance(nfes, (int, str)) or not nfes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nfes):
        raise CompareError(f"nfes must be a list of whole numbers >= 1 (network calls per sample), got {nfes!r}")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 2:
        raise CompareError(f"per_class must be a whole number >= 2 (diversity and FD need two samples), got {per_class!r}")
    judge = judge or metrics.digit_judge(16)
    real, _ = zoo.training_images(zoo.RECIPES["digits-cond"])
    labels = torch.arange(10).repeat_interleave(per_class)
    rows, loaded = [], {}
    todo = [(m, n) for m in (methods or COMPARED) for n in nfes]
    for method, nfe in tqdm(todo, disable=not progress, desc="comparing", leave=False):
        name, kind = COMPARED[method]
        if method == "EDM (Heun)":
            steps = (nfe + 1) // 2
            nfe = 2 * steps - 1
            if any(r[0] == method and r[1] == nfe for r in rows):
                continue
        elif method == "cold diffusion" and nfe > zoo.RECIPES[name].extra["levels"]:
            continue
        else:
            steps = nfe
        if kind == "students":
            if nfe > 32:
                continue
            unet, scheduler = distill.load_student(name, nfe)
        else:
            if name not in loaded:
                loaded[name] = models.load_model(name)
            unet, scheduler = loaded[name]
        recipe = zoo.RECIPES[name]
        x = samplers.noise(unet, len(labels), torch.Generator().manual_seed(seed))
        began = time.perf_counter()
        if kind == "students":
            out = distill.sample_on_grid(unet, scheduler, x, steps=steps, labels=labels, progress=False)
        elif kind is not None:
            out = samplers.sample(unet, samplers.scheduler_named(kind, scheduler), x, steps=steps, labels=labels,
                                  guidance_scale=recipe.eval_guidance, generator=torch.Generator().manual_seed(seed),
                                  progress=False)
        else:
            out = zoo.draw(unet, scheduler, recipe.objective, x, steps=steps, labels=labels,
                       guidance_scale=recipe.eval_guidance)
        seconds = time.perf_counter() - began
        out = out.clamp(-1, 1)
        rows.append((method, nfe, seconds, judge.accuracy(out, labels), judge.fid(out), metrics.pixel_fd(out, real, size=16)))
    return rows
