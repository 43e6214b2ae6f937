"""Progressive distillation (Salimans and Ho 2022): a student learns to do in one DDIM step what
its teacher does in two; repeat, and 64 steps become 4.

    coursekit distill digits-cond --out runs/students   # all rounds 64 -> 1 (or python -m coursekit.distill)
    coursekit distill digits-cond --into-package        # the same, replacing the students shipped in the zoo
    coursekit distill --list

Choices, and how they differ from the paper:
- Students keep the teacher's epsilon parameterisation (the paper switches to v or x), so every
  student is an ordinary diffusers UNet. The loss is on the noise that makes one student step
  land where two teacher steps do, weighted by max(1, 1/SNR(t)): the paper's "truncated SNR"
  weighting of the x-error, written for epsilon. Near t = 960 that weight reaches about 260; we
  cap it (`max_weight`, 5 by default) and let the learning rate fall linearly to zero over each
  round. Uncapped at a constant rate, the later rounds first learned and then drifted (8-step
  student: 0.79 digit accuracy after 500 steps, against 0.95 when the same round stopped at
  300). `benchmarks/run.py distilled_4step_accuracy` measures the result.
- Steps lie on one nested grid t_k = k * 960 / N (N = 64, 32, ..., 4), so each student step is
  exactly two teacher steps. The top stays at 960 rather than 999, where the cosine schedule
  leaves almost no signal and an epsilon model's estimate of x0 is ill-conditioned; the last
  step lands on the clean image (alpha-bar 1). No clipping of x0 anywhere, so a DDIM step stays
  linear in (x_t, eps), which the distillation target relies on.
- Class labels pass through, and the first round distils the teacher's classifier-free guided
  prediction at a fixed scale: students then sample with guidance_scale=1 and one UNet call per
  step (guided distillation in the spirit of Meng et al. 2023, without the scale as an input).
"""
from __future__ import annotations

import copy
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .models import as_predictor, check_objective, not_finite, null_label
from .samplers import NESTED_T_MAX, SamplerError, alpha_bar, ddim_step, nested_grid

T_MAX = NESTED_T_MAX


class DistillError(ValueError):
    """Step counts or models that distillation cannot use; the message says why."""


def grid(steps: int) -> list[int]:
    """The nested DDIM timesteps for `steps` steps, from T_MAX down (`coursekit.samplers.nested_grid`)."""
    try:
        return nested_grid(steps)
    except SamplerError as e:
        raise DistillError(str(e)) from None


@torch.no_grad()
def sample_on_grid(model, scheduler, x: torch.Tensor, *, steps: int, labels=None, guidance_scale: float = 1.0,
                   callback=None, progress: bool = True) -> torch.Tensor:
    """DDIM (eta 0, no clipping) on the nested grid: the sampler teachers and students share.
    `model` is a UNet (with its labels and guidance scale) or a NoisePredictor."""
    from tqdm.auto import tqdm

    check_objective(model, ("epsilon",), "coursekit.distill.sample_on_grid")
    predictor = as_predictor(model, x, labels=labels, guidance_scale=guidance_scale)
    ts = grid(steps)
    for i, t in enumerate(tqdm(ts, disable=not progress, desc=f"{steps}-step sampling", leave=False)):
        eps = predictor(x, t)
        a_t = alpha_bar(scheduler, t, x.device)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = ddim_step(x, eps, a_t, alpha_bar(scheduler, ts[i + 1] if i + 1 < len(ts) else 0, x.device))
        if not_finite(x):
            raise SamplerError(f"the sample became NaN or infinite at step {i} (t={t}); check the model's weights "
                               "and the guidance scale")
        if callback is not None:
            callback(i, {"t": t, "x": x, "x0": x0})
    return x


def targets(teacher, scheduler, z, t: int, teacher_steps: int, labels=None, guidance_scale: float = 1.0,
            max_weight: float | None = None):
    """(eps_target, weight): the noise estimate with which ONE student DDIM step from (z, t)
    lands where TWO teacher steps do, and the loss weight max(1, 1/SNR(t)), capped at max_weight.
    `teacher` is a UNet (with its labels and guidance scale) or a NoisePredictor."""
    half = T_MAX // teacher_steps
    device = z.device
    predictor = as_predictor(teacher, z, labels=labels, guidance_scale=guidance_scale)
    a_t, a_mid, a_next = (alpha_bar(scheduler, s, device) for s in (t, t - half, t - 2 * half))
    with torch.no_grad():
        z_mid = ddim_step(z, predictor(z, t), a_t, a_mid)
        z_next = ddim_step(z_mid, predictor(z_mid, t - half), a_mid, a_next)
    ratio = (1 - a_next).sqrt() / (1 - a_t).sqrt()
    x0 = (z_next - ratio * z) / (a_next.sqrt() - ratio * a_t.sqrt())
    eps = (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    return eps, torch.clamp((1 - a_t) / a_t, min=1.0, max=max_weight)


def distill_round(teacher, scheduler, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                  teacher_steps: int, guidance_scale: float = 1.0, steps: int = 400, batch_size: int = 64,
                  lr: float = 1e-4, max_weight: float | None = 5.0, p_uncond: float = 0.1, seed: int = 0,
                  progress: bool = True, callback=None, out_dir=None):
    """One round: a copy of `teacher` trained to sample in teacher_steps // 2 steps, with
    `coursekit.train.fit` (so with Accelerate, a progress bar, resumable checkpoints in `out_dir`
    and a stop on NaN).

    Returns (student, losses). `guidance_scale` is the teacher's classifier-free guidance (use it
    for the first round only: later teachers have it built in). The learning rate falls linearly
    from `lr` to zero over the round; `max_weight` caps the truncated-SNR weight (None: uncapped).
    """
    from . import train

    if teacher_steps < 2 or teacher_steps % 2:
        raise DistillError(f"a round halves the steps, so the teacher's count must be even, got {teacher_steps}")
    grid(teacher_steps)
    null = null_label(teacher)
    if (labels is None) != (null is None):
        raise DistillError("pass labels exactly when the teacher is class-conditional")
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    teacher = teacher.eval().requires_grad_(False)
    student_grid = grid(teacher_steps // 2)

    def distillation_loss(model, batch):
        g, device = batch.generator, batch.device
        x0 = batch.draw(images[batch.indices])
        y = None if labels is None else batch.draw(train.drop_labels(labels[batch.indices], p_uncond, null, g))
        t = student_grid[int(torch.randint(0, len(student_grid), (1,), generator=g))]
        noise = batch.draw(torch.randn((len(batch.indices), *images.shape[1:]), generator=g))
        a_t = alpha_bar(scheduler, t, device)
        z = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        eps_target, weight = targets(teacher, scheduler, z, t, teacher_steps, y, guidance_scale, max_weight)
        return (weight * (model(z, t, class_labels=y).sample - eps_target) ** 2).mean()

    result = train.fit(student, distillation_loss, len(images), steps=steps, batch_size=batch_size, lr=lr,
                       schedule="linear", seed=seed, out_dir=out_dir, callback=callback, every=1, progress=progress,
                       desc=f"distilling {teacher_steps} -> {teacher_steps // 2} steps")
    return result.unet.requires_grad_(False), result.losses


@dataclass(frozen=True)
class DistillRecipe:
    """Every setting of a chain of rounds from a zoo teacher down to `final_steps`."""

    teacher: str
    teacher_steps: int = 64
    final_steps: int = 1
    guidance_scale: float = 1.5
    steps_per_round: int = 500
    batch_size: int = 64
    lr: float = 1e-4
    max_weight: float = 5.0
    p_uncond: float = 0.1
    seed: int = 0


RECIPES = {"digits-cond": DistillRecipe(teacher="digits-cond")}


def student_name(teacher: str, steps: int) -> str:
    return f"{teacher}-{steps}step"


def evaluate_student(unet, scheduler, steps: int, guidance_scale: float = 1.0, per_class: int = 50, seed: int = 1) -> dict:
    """The independent digit judge's accuracy on `per_class` samples of each digit at `steps` steps."""
    from . import metrics, samplers

    judge = metrics.digit_judge(unet.config.sample_size)
    labels = torch.arange(10).repeat_interleave(per_class)
    x = sample_on_grid(unet, scheduler, samplers.noise(unet, len(labels), torch.Generator().manual_seed(seed)),
                       steps=steps, labels=labels, guidance_scale=guidance_scale, progress=False)
    return {"samples": len(labels), "sampler": f"DDIM on the nested grid, {steps} steps",
            "conditional_accuracy": round(judge.accuracy(x, labels), 4), "fid_pca20": round(judge.fid(x), 3)}


def _card(name: str, recipe: DistillRecipe, steps: int, rounds: list, quality: dict) -> str:
    """The student's model card, stating what its rounds ran (steps and threads of each, from `rounds`;
    rounds recorded before these were kept ran the recipe's steps on one thread)."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in quality.items())
    per_round = sorted({r.get("steps", recipe.steps_per_round) for r in rounds})
    threads = sorted({r.get("threads", 1) for r in rounds})
    per_round_text = " or ".join(map(str, per_round)) + " steps per round"
    threads_text = "one torch thread" if threads == [1] else " or ".join(map(str, threads)) + " torch thread(s)"
    history = "\n".join(f"| {r['from']} -> {r['to']} | {r['seconds'] / 60:.1f} min | {r['last_loss']:.4f} |" for r in rounds)
    return f"""---
library_name: diffusers
tags: [coursekit, diffusion, small-track, progressive-distillation]
---
# {name}

A {steps}-step student of the zoo model `{recipe.teacher}`, by progressive distillation
(Salimans and Ho 2022; `coursekit.distill`). Sample it with
`coursekit.distill.sample_on_grid(unet, scheduler, noise, steps={steps}, labels=...)` and guidance scale 1:
the teacher's classifier-free guidance at scale {recipe.guidance_scale} is built in.

- **Teacher**: `{recipe.teacher}` with {recipe.teacher_steps}-step DDIM on the nested grid t_k = k * {T_MAX} / N.
- **Recipe**: {per_round_text}, batch {recipe.batch_size}, AdamW lr {recipe.lr} falling
  linearly to 0 in each round, loss weight max(1, 1/SNR) capped at {recipe.max_weight}, label dropout
  {recipe.p_uncond}, seed {recipe.seed}; full recipe `coursekit.distill.RECIPES[{recipe.teacher!r}]`.
- **Hardware**: {platform.machine()} CPU, {threads_text}.
- **Reproduce**: `coursekit distill {recipe.teacher} --out DIR` (every round; `--into-package` replaces the shipped students).

## Rounds

| steps | time | last loss |
| --- | --- | --- |
{history}

## Measured quality
Judged by `coursekit.metrics.digit_judge()`, a classifier fit on real digits only.

| measure | value |
| --- | --- |
{rows}
"""


def train_chain(name: str, out_dir: str | Path | None = None, steps_per_round: int | None = None,
                threads: int | None = None, evaluate_after: bool = True, progress: bool = True,
                into_package: bool = False, resume_at: int | None = None, overwrite: bool = False) -> list[Path]:
    """All rounds of RECIPES[name]; each student saved as a zoo folder with its model card in
    `out_dir`, or with `into_package` in the package's zoo (full recipe only), with `threads`
    torch threads for the run. `resume_at` starts from the saved student with that many steps
    (in `out_dir`, else the zoo) instead of the teacher, to extend a chain: every round is seeded
    by its step count, so the result is what the whole chain gives. Each round checkpoints in
    `<student>.work` and resumes from there when run again. `out_dir` must be new or empty, or hold
    this recipe's earlier run (which resumes), unless `overwrite` (students written over, other files kept)."""
    from . import data, models, train, zoo
    from .tracks import torch_threads

    if name not in RECIPES:
        raise DistillError(f"no distillation recipe named {name!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    per_round = recipe.steps_per_round if steps_per_round is None else train.positive_int("steps_per_round", steps_per_round)
    out_dir = zoo.output_folder(out_dir, into_package, zoo.ZOO_DIR, per_round < recipe.steps_per_round,
                                f"students of {name!r}", f"coursekit distill {name}",
                                {"steps_per_round": per_round}, overwrite,
                                work=[f"{student_name(name, n)}.work" for n in _halvings(recipe)])
    base = zoo.RECIPES[recipe.teacher]
    images, labels = data.tensors(data.load_dataset(base.dataset), base.size, base.channels)
    if resume_at is None:
        teacher, scheduler = models.load_model(recipe.teacher)
        steps, guidance, rounds = recipe.teacher_steps, recipe.guidance_scale, []
    else:
        saved = next((f / student_name(name, resume_at) for f in (out_dir, zoo.ZOO_DIR)
                      if (f / student_name(name, resume_at) / "distill.json").is_file()), None)
        if saved is None or resume_at <= recipe.final_steps:
            raise DistillError(f"resume_at must name a saved student with more than {recipe.final_steps} steps; "
                               f"no {student_name(name, resume_at)} with its distill.json in {out_dir} or the zoo")
        teacher, scheduler = models.load_model(saved)
        steps, guidance = resume_at, 1.0
        rounds = json.loads((saved / "distill.json").read_text())["rounds"]
    written = []
    with torch_threads(threads):
        while steps > recipe.final_steps:
            began = time.perf_counter()
            teacher, losses = distill_round(teacher, scheduler, images, labels if base.conditional else None,
                                            teacher_steps=steps, guidance_scale=guidance, steps=per_round,
                                            batch_size=recipe.batch_size, lr=recipe.lr, max_weight=recipe.max_weight,
                                            p_uncond=recipe.p_uncond, seed=recipe.seed + steps, progress=progress,
                                            out_dir=out_dir / f"{student_name(name, steps // 2)}.work")
            rounds.append({"from": steps, "to": steps // 2, "steps": per_round, "threads": torch.get_num_threads(),
                           "seconds": time.perf_counter() - began, "last_loss": sum(losses[-20:]) / len(losses[-20:])})
            steps, guidance = steps // 2, 1.0
            folder = out_dir / student_name(name, steps)
            shutil.rmtree(folder, ignore_errors=True)
            models.save_model(teacher, scheduler, folder)
            quality = evaluate_student(teacher, scheduler, steps) if evaluate_after else {}
            (folder / "README.md").write_text(_card(folder.name, recipe, steps, rounds, quality))
            (folder / "distill.json").write_text(json.dumps({**asdict(recipe), "steps": steps, "steps_per_round": per_round,
                                                             "rounds": rounds, "quality": quality}, indent=2) + "\n")
            shutil.rmtree(out_dir / f"{folder.name}.work", ignore_errors=True)
            written.append(folder)
    return written


def _halvings(recipe) -> list[int]:
    """The step counts of a recipe's students, first round first."""
    counts, steps = [], recipe.teacher_steps
    while steps > recipe.final_steps:
        steps //= 2
        counts.append(steps)
    return counts


def load_student(name: str, steps: int, device: str = "cpu"):
    """(unet, scheduler) of the zoo's `steps`-step student of teacher `name`."""
    from . import models

    folder = models.CHECKPOINTS / student_name(name, steps)
    if not folder.is_dir():
        raise DistillError(f"no {steps}-step student of {name!r} in the zoo; "
                           f"train it with `coursekit distill {name}`")
    return models.load_model(folder, device=device)


def add_commands(sub) -> None:
    """`distill NAME`: every round of a recipe, each student into the zoo (`--list`: the recipes)."""
    t = sub.add_parser("distill", help="run every round of a distillation recipe, saving each student (--out DIR)")
    t.add_argument("name", nargs="?", choices=sorted(RECIPES))
    t.add_argument("--list", action="store_true", help="list the recipes and stop")
    t.add_argument("--out", help="folder for the students (required unless --into-package)")
    t.add_argument("--into-package", action="store_true",
                   help="replace the students shipped in the package (full recipe only; for maintainers)")
    t.add_argument("--steps-per-round", type=int, help="override the recipe (for quick checks, with --out)")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--no-eval", action="store_true")
    t.add_argument("--resume-at", type=int, help="start from the saved student with this many steps (extends a chain)")
    t.add_argument("--overwrite", action="store_true",
                   help="write the students into an --out folder that holds other files (those are kept)")
    t.set_defaults(run=_distill_command)


def _distill_command(args) -> None:
    if args.list or not args.name:
        for n, r in RECIPES.items():
            print(f"{n}: {r.teacher_steps} -> {r.final_steps} steps, {r.steps_per_round} steps per round")
        return
    for path in train_chain(args.name, args.out, args.steps_per_round, args.threads, not args.no_eval,
                            into_package=args.into_package, resume_at=args.resume_at, overwrite=args.overwrite):
        print(f"wrote {path}")


if __name__ == "__main__":
    import sys

    from .commands import run_commands

    sys.exit(run_commands("python -m coursekit.distill", __doc__.split("\n")[0], [add_commands], default="distill"))
