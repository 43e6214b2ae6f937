"""`make bench`: the course's speed and quality figures, each measured side by side in one run.

Prints a table and writes build/bench.json as {figure: {value, target, unit, met, ...}}.
Timings interleave the two contenders (A, B, A, B, ...) and compare medians, because this
machine is noisy; ratios, not absolute seconds, are the figures.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coursekit import models, music, samplers, zoo  # noqa: E402


def interleaved(a, b, repeats: int = 8):
    """Median seconds of a() and b(), run alternately (A B, then B A, ...) after a warm-up each,
    so that neither always runs first."""
    a(), b()
    times = {a: [], b: []}
    for i in range(repeats):
        for f in ((a, b) if i % 2 == 0 else (b, a)):
            began = time.perf_counter()
            f()
            times[f].append(time.perf_counter() - began)
    return statistics.median(times[a]), statistics.median(times[b])


def ddim_vs_diffusers(steps: int = 25, batch: int = 64) -> dict:
    from diffusers import DDIMPipeline, DDIMScheduler

    unet, scheduler = models.load_model("digits-uncond")
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=True)

    def ours():
        g = torch.Generator().manual_seed(0)
        return samplers.ddim(unet, scheduler, samplers.noise(unet, batch, g), steps=steps, generator=g, progress=False)

    def theirs():
        return pipe(batch_size=batch, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                    output_type="np").images

    equal = np.array_equal((ours() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), theirs())
    t_ours, t_theirs = interleaved(ours, theirs)
    return {"value": t_ours / t_theirs, "target": "<= 1.03", "unit": "ratio", "met": t_ours / t_theirs <= 1.03,
            "outputs_equal": bool(equal), "coursekit_s": t_ours, "diffusers_s": t_theirs,
            "setting": f"digits-uncond, DDIM {steps} steps, batch {batch}"}


def cfg_batched_vs_naive(steps: int = 25, batch: int = 10) -> dict:
    scale = zoo.RECIPES["digits-cond"].eval_guidance
    unet, scheduler = models.load_model("digits-cond")
    labels = torch.arange(batch) % 10
    null = torch.full_like(labels, models.null_label(unet))

    def batched():
        x = samplers.noise(unet, batch, torch.Generator().manual_seed(0))
        return samplers.ddim(unet, scheduler, x, steps=steps, labels=labels, guidance_scale=scale, progress=False)

    @torch.no_grad()
    def naive():
        sched = samplers.scheduler_named("ddim", scheduler)
        sched.set_timesteps(steps)
        x = samplers.noise(unet, batch, torch.Generator().manual_seed(0))
        for t in sched.timesteps:
            cond = unet(x, t, class_labels=labels).sample
            free = unet(x, t, class_labels=null).sample
            x = sched.step(free + scale * (cond - free), t, x).prev_sample
        return x

    same = torch.allclose(batched(), naive(), atol=1e-4)
    t_b, t_n = interleaved(batched, naive)
    return {"value": t_b / t_n, "target": "<= 0.6", "unit": "ratio", "met": t_b / t_n <= 0.6,
            "outputs_equal": bool(same), "batched_s": t_b, "naive_s": t_n,
            "setting": f"digits-cond, DDIM {steps} steps, {batch} samples, guidance {scale}"}


FIRST_IMAGE = """
import sys
from coursekit import models, samplers, viz
import torch
unet, scheduler = models.load_model("digits-uncond")
g = torch.Generator().manual_seed(0)
x = samplers.ddim(unet, scheduler, samplers.noise(unet, 16, g), steps=25, generator=g, progress=False)
viz.image_grid(x, scale=4).save(sys.argv[1])
"""


def first_image_s(repeats: int = 3) -> dict:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            out = Path(tmp) / f"first-{i}.png"
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", FIRST_IMAGE, str(out)], check=True, cwd=ROOT)
            times.append(time.perf_counter() - began)
            assert out.exists()
    import_s = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch; from diffusers import UNet2DModel"], check=True)
        import_s.append(time.perf_counter() - began)
    value = statistics.median(times)
    return {"value": value, "target": "< 5", "unit": "s", "met": value < 5,
            "of_which_import_torch_and_diffusers_s": statistics.median(import_s),
            "setting": "fresh process: load digits-uncond, 16 samples, DDIM 25 steps, grid PNG"}


def digits_cond_accuracy() -> dict:
    recipe = zoo.RECIPES["digits-cond"]
    unet, scheduler = models.load_model("digits-cond")
    quality = zoo.evaluate(unet, scheduler, recipe)
    value = quality["conditional_accuracy"]
    return {"value": value, "target": ">= 0.95", "unit": "share", "met": value >= 0.95,
            "judge_held_out_accuracy": quality["judge_held_out_accuracy"],
            "setting": f"{quality['samples']} samples, {quality['sampler']}, guidance {quality['guidance_scale']}"}


def classifier_guidance_success(per_class: int = 10) -> dict:
    """Unconditional digits steered to a class by a small guide classifier's -log p(y | x0),
    the gradient taken through the UNet; success judged by the independent classifier."""
    from coursekit import data, guidance, metrics

    x, y = data.tensors(data.load_dataset("digits"), 16, 1)
    guide = guidance.train_classifier(x, y)
    for p in guide.parameters():
        p.requires_grad_(False)
    unet, scheduler = models.load_model("digits-uncond")
    ddim = samplers.scheduler_named("ddim", scheduler)
    scale = notebook_setting(UNIT2_GUIDE, "classifier_scale")
    labels = torch.arange(10).repeat(per_class)
    noise = samplers.noise(unet, len(labels), torch.Generator().manual_seed(3))
    judge = metrics.digit_judge(16)
    out = {}
    for name, s, through in (("unguided", 0.0, False), ("x_only", scale, False), ("through_unet", scale, True)):
        sample = guidance.guided_sample(unet, ddim, noise, guidance.classifier_loss(guide, labels), scale=s, steps=25,
                                 through_unet=through, progress=False)
        out[name] = judge.accuracy(sample, labels)
    value = out["through_unet"]
    return {"value": value, "target": ">= 0.8", "unit": "share", "met": value >= 0.8,
            "unguided_success": out["unguided"], "x_only_success": out["x_only"],
            "setting": f"digits-uncond, DDIM 25 steps, {len(labels)} samples, scale {scale}"}


def notebook_setting(notebook: str, key: str, track: int = 0):
    """The small-track (track 0) value of `key` in a notebook's settings cell, read from the
    notebook itself so that a figure measured "at the notebook's setting" follows it."""
    from coursekit.cli import notebook_settings

    settings = notebook_settings(ROOT / "units" / notebook)
    if key not in settings:
        raise KeyError(f"{notebook} has no setting {key!r}")
    return settings[key][track]


UNIT2_GUIDE = "unit2/01_finetuning_and_guidance.ipynb"
UNIT2_COND = "unit2/02_class_conditioned.ipynb"


_TUNED: dict = {}


def _finetuned() -> tuple:
    """(folder of the model fine-tuned with the notebook's settings, seconds), made once per run."""
    from coursekit import finetune

    if not _TUNED:
        get = lambda key: notebook_setting(UNIT2_GUIDE, key)
        _TUNED["dir"] = tempfile.TemporaryDirectory()
        began = time.perf_counter()
        folder = finetune.finetune(get("model"), get("dataset"), _TUNED["dir"].name, steps=get("finetune_steps"),
                                   batch_size=get("batch_size"), grad_accum=get("grad_accum"), lr=get("lr"),
                                   resize=True, sample_every=10**9, progress=False)
        _TUNED["result"] = (folder, time.perf_counter() - began)
    return _TUNED["result"]


def finetune_gain(n: int = 256) -> dict:
    """pixel_fd of samples to the new dataset before fine-tuning over after, with the notebook's
    fine-tuning settings, through the same coursekit.finetune.finetune the notebook calls."""
    from coursekit import data, metrics

    get = lambda key: notebook_setting(UNIT2_GUIDE, key)
    model, dataset = get("model"), get("dataset")
    pretrained = models.load_model(model)[0]
    real, _ = data.tensors(data.load_dataset(dataset), pretrained.config.sample_size, 3)
    noise = samplers.noise(pretrained, n, torch.Generator().manual_seed(5))

    def fd(unet, scheduler):
        return metrics.pixel_fd(samplers.ddim(unet, scheduler, noise, steps=get("ddim_steps"), progress=False), real)

    before = fd(*models.load_model(model))
    folder, seconds = _finetuned()
    after = fd(*models.load_model(folder))
    value = before / after
    return {"value": value, "target": "> 1", "unit": "ratio", "met": value > 1,
            "pixel_fd_before": before, "pixel_fd_after": after, "finetune_seconds": seconds,
            "setting": f"{model} -> {dataset}, {get('finetune_steps')} steps of {get('batch_size')}x{get('grad_accum')}, "
                       f"{n} samples, DDIM {get('ddim_steps')} steps"}


def colour_guidance_gain(n: int = 64) -> dict:
    """Mean-colour distance to the target at the notebook's scale over unguided, same noise, on the
    fine-tuned model the notebook guides."""
    from coursekit import guidance

    get = lambda key: notebook_setting(UNIT2_GUIDE, key)
    unet, scheduler = models.load_model(_finetuned()[0])
    ddim = samplers.scheduler_named("ddim", scheduler)
    colour, scale = get("colour"), get("colour_scale")
    noise = samplers.noise(unet, n, torch.Generator().manual_seed(6))
    out = {}
    for name, s, through in (("unguided", 0.0, False), ("x_only", scale, False), ("through_unet", scale, True)):
        x = guidance.guided_sample(unet, ddim, noise, guidance.colour_loss(colour), scale=s, steps=get("ddim_steps"),
                            through_unet=through, progress=False)
        out[name] = guidance.mean_colour_distance(x, colour)
    value = out["x_only"] / out["unguided"]
    return {"value": value, "target": "<= 0.5", "unit": "ratio", "met": value <= 0.5,
            "through_unet_ratio": out["through_unet"] / out["unguided"], "unguided_distance": out["unguided"],
            "setting": f"{get('model')} fine-tuned on {get('dataset')}, colour {colour}, scale {scale} "
                       f"(gradient through x only), {n} samples"}


def cfg_accuracy(per_class: int = 50) -> dict:
    """The independent judge's accuracy on digits-cond samples at the class-conditioning notebook's scale."""
    from coursekit import metrics

    scale = notebook_setting(UNIT2_COND, "guidance_scale")
    steps = notebook_setting(UNIT2_COND, "ddim_steps")
    unet, scheduler = models.load_model("digits-cond")
    labels = torch.arange(10).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(7)
    x = samplers.ddim(unet, scheduler, samplers.noise(unet, len(labels), g), steps=steps, labels=labels,
                      guidance_scale=scale, progress=False)
    judge = metrics.digit_judge(16)
    value = judge.accuracy(x, labels)
    return {"value": value, "target": ">= 0.95", "unit": "share", "met": value >= 0.95,
            "diversity": judge.diversity(x, labels),
            "setting": f"digits-cond, guidance {scale}, DDIM {steps} steps, {len(labels)} samples"}


UNIT4_INV = "unit4/01_ddim_inversion.ipynb"


def inversion_psnr_50(n: int = 64) -> dict:
    """Reconstruction PSNR of real (in-distribution) digits: DDIM inversion with digits-uncond,
    then DDIM sampling back, at 50 steps; 10, 20 and 100 steps beside it."""
    from coursekit import data, inversion

    unet, scheduler = models.load_model("digits-uncond")
    x, _ = data.tensors(data.load_dataset("digits"), 16, 1)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(8))[:n]]
    out = {}
    for steps in (10, 20, 50, 100):
        inv = inversion.invert(unet, scheduler, x, steps=steps, progress=False)
        back = inversion.denoise(unet, scheduler, inv.at(steps), steps=steps, progress=False)
        out[steps] = (inversion.psnr(back, x), inversion.ssim(back, x))
    value = out[50][0]
    return {"value": value, "target": ">= 30", "unit": "dB", "met": value >= 30,
            **{f"psnr_{s}": p for s, (p, _) in out.items() if s != 50}, "ssim_50": out[50][1],
            "setting": f"digits-uncond, {n} real digits"}


def edit_success(n: int = 200) -> dict:
    """Class edits of real digits by inversion at the notebook's k: the share the independent judge
    reads as the new class; similarity (SSIM to the source) against the add-noise baseline's at
    equal success, interpolated along the baseline's curve over k."""
    from coursekit import data, inversion, metrics

    get = lambda key: notebook_setting(UNIT4_INV, key)
    steps, k, w, ks = get("steps"), get("k"), get("edit_guidance"), get("ks")
    unet, scheduler = models.load_model(get("edit_model"))
    judge = metrics.digit_judge(16)
    x, y = data.tensors(data.load_dataset("digits"), 16, 1)
    g = torch.Generator().manual_seed(9)
    pick = torch.randperm(len(x), generator=g)[:n]
    source, old = x[pick], y[pick]
    new = (old + 1 + torch.randint(0, 9, old.shape, generator=g)) % 10
    inv = inversion.invert(unet, scheduler, source, steps=steps, labels=old, progress=False)
    edited = inversion.edit(unet, scheduler, inv, k, labels=new, guidance_scale=w, progress=False)
    success, similarity = judge.accuracy(edited, new), inversion.ssim(edited, source)
    curve = []
    for kk in sorted(set(ks) | {k}):
        b = inversion.sdedit(unet, scheduler, source, kk, steps=steps, labels=new, guidance_scale=w,
                             generator=torch.Generator().manual_seed(kk), progress=False)
        curve.append((judge.accuracy(b, new), inversion.ssim(b, source)))
    curve.sort()
    baseline = float(np.interp(success, [c[0] for c in curve], [c[1] for c in curve]))
    return {"value": success, "target": ">= 0.8", "unit": "share", "met": success >= 0.8,
            "edit_similarity": similarity, "baseline_similarity_at_equal_success": baseline,
            "similarity_higher_than_baseline": similarity > baseline,
            "setting": f"digits-cond, {n} real digits to another class, k={k} of {steps}, guidance {w}; SSIM"}


UNIT4_FAST = "unit4/03_faster_sampling.ipynb"


def distilled_4step_accuracy(per_class: int = 50) -> dict:
    """The zoo's 4-step student over the 64-step teacher (plain DDIM on the same grid, guided at
    the notebook's scale), both judged on the same noise and labels; the teacher's own 4-step
    DDIM over the same, for contrast."""
    from coursekit import distill, metrics

    scale = notebook_setting(UNIT4_FAST, "guidance_scale")
    teacher, scheduler = models.load_model("digits-cond")
    student, s_sched = distill.load_student("digits-cond", 4)
    judge = metrics.digit_judge(16)
    labels = torch.arange(10).repeat_interleave(per_class)
    noise = samplers.noise(teacher, len(labels), torch.Generator().manual_seed(10))
    run = lambda m, sch, n, w: distill.sample_on_grid(m, sch, noise, steps=n, labels=labels, guidance_scale=w, progress=False)
    t64, t4, s4 = run(teacher, scheduler, 64, scale), run(teacher, scheduler, 4, scale), run(student, s_sched, 4, 1.0)
    acc = {k: judge.accuracy(x, labels) for k, x in (("t64", t64), ("t4", t4), ("s4", s4))}
    value = acc["s4"] / acc["t64"]
    return {"value": value, "target": ">= 0.9", "unit": "ratio", "met": value >= 0.9,
            "teacher_4step_over_64step": acc["t4"] / acc["t64"], "teacher_64step_accuracy": acc["t64"],
            "student_4step_accuracy": acc["s4"], "teacher_4step_accuracy": acc["t4"],
            "fd_teacher_64": judge.fid(t64), "fd_teacher_4": judge.fid(t4), "fd_student_4": judge.fid(s4),
            "setting": f"digits-cond, guidance {scale}, {len(labels)} samples, nested grid"}


def faster_sampling_setup(per_class: int, seed: int):
    """(guidance scale of the faster-sampling notebook, digits-cond and its scheduler, the digit
    judge, labels 0..9 `per_class` times each, seeded starting noise)."""
    from coursekit import metrics

    scale = notebook_setting(UNIT4_FAST, "guidance_scale")
    unet, scheduler = models.load_model("digits-cond")
    labels = torch.arange(10).repeat_interleave(per_class)
    noise = samplers.noise(unet, len(labels), torch.Generator().manual_seed(seed))
    return scale, unet, scheduler, metrics.digit_judge(16), labels, noise


def few_step_table(per_class: int = 50) -> dict:
    """digits-cond at 1, 2 and 4 steps, same noise and labels: DDIM and DPM-Solver++ with trailing
    spacing (guided at the notebook's scale) against the zoo's distilled students (one UNet call
    per step). Value: the 4-step DDIM accuracy."""
    from coursekit import distill

    scale, unet, scheduler, judge, labels, noise = faster_sampling_setup(per_class, seed=13)
    rows = {}
    for n in (1, 2, 4):
        for name in ("ddim", "dpm++"):
            x = samplers.sample(unet, samplers.scheduler_named(name, scheduler), noise, steps=n, labels=labels,
                                guidance_scale=scale, progress=False)
            rows[f"{name}@{n}"] = (judge.accuracy(x, labels), judge.fid(x))
        student, s_sched = distill.load_student("digits-cond", n)
        x = distill.sample_on_grid(student, s_sched, noise, steps=n, labels=labels, progress=False)
        rows[f"student@{n}"] = (judge.accuracy(x, labels), judge.fid(x))
    value = rows["ddim@4"][0]
    return {"value": value, "target": ">= 0.9", "unit": "share", "met": value >= 0.9,
            **{k: f"accuracy {a:.3f}, FD {f:.2f}" for k, (a, f) in rows.items()},
            "setting": f"digits-cond, guidance {scale} (students: built in), {len(labels)} samples, trailing spacing"}


def samplers_table(per_class: int = 20) -> dict:
    """Seconds and the judge's accuracy for each sampler and step count of the notebook's plan."""
    plan = notebook_setting(UNIT4_FAST, "plan")
    scale, unet, scheduler, judge, labels, noise = faster_sampling_setup(per_class, seed=11)
    table = {}
    for name, counts in plan.items():
        for steps in counts:
            sched = samplers.scheduler_named(name, scheduler)
            began = time.perf_counter()
            x = samplers.sample(unet, sched, noise, steps=steps, labels=labels, guidance_scale=scale,
                                generator=torch.Generator().manual_seed(12), progress=False)
            table[f"{name}@{steps}"] = f"{time.perf_counter() - began:.2f} s, accuracy {judge.accuracy(x, labels):.3f}"
    fastest = min(table, key=lambda k: float(table[k].split()[0]))
    slowest = max(table, key=lambda k: float(table[k].split()[0]))
    value = float(table[slowest].split()[0]) / float(table[fastest].split()[0])
    return {"value": value, "target": "info", "unit": "x", "met": True, **table,
            "setting": f"digits-cond, guidance {scale}, {len(labels)} samples; value = slowest time over fastest"}


UNIT4_AUDIO = "unit4/02_diffusion_for_audio.ipynb"


def audio_roundtrip_db(per_genre: int = 100) -> dict:
    """Spectral SNR of audio -> mel image -> Griffin-Lim audio over slices of the small corpus,
    the audio notebook's preset (the model's mel_config.json)."""
    from coursekit import audio, data

    _, _, preset = models.load_audio_model(notebook_setting(UNIT4_AUDIO, "model"))
    ds, out = data.load_dataset("music"), {}
    for genre in music.GENRES:
        rows = ds.select([i for i, g in enumerate(ds["label"]) if g == music.GENRES.index(genre)])
        pieces = [p for row in rows for p in audio.slices(torch.tensor(row["audio"]), preset) if p.abs().max() > 1e-3]
        picked = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(0))[:per_genre]
        out[genre] = float(np.mean([audio.roundtrip_db(pieces[i], preset) for i in picked]))
    value = float(np.mean(list(out.values())))
    return {"value": value, "target": ">= 5", "unit": "dB", "met": value >= 5,
            **{f"{g}_db": v for g, v in out.items()},
            "setting": f"{per_genre} random slices per genre, {preset.n_mels}x{preset.frames} mel, "
                       f"Griffin-Lim {preset.n_iter} iterations; the 5 dB target is this project's choice"}


def genre_shift(n: int = 100) -> dict:
    """Share of generated clips the genre judge calls the second genre after fine-tuning over
    before, with the audio notebook's settings, model, judge and fine-tuning loop."""
    import copy

    from coursekit import data, metrics, train

    get = lambda key: notebook_setting(UNIT4_AUDIO, key)
    unet, scheduler, preset = models.load_audio_model(get("model"))
    ds = data.load_dataset(get("dataset"))
    source = music.dataset_images(ds, preset, get("source_genre"), pieces=get("pieces"))[0]
    target = music.dataset_images(ds, preset, get("target_genre"), pieces=get("pieces"))[0]
    labels = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).long()
    judge = metrics.genre_judge(torch.cat([source, target]), labels)
    noise = samplers.noise(unet, n, torch.Generator().manual_seed(1))
    share = lambda model: judge.share(samplers.ddim(model, scheduler, noise, steps=get("ddim_steps"), progress=False), 1)
    before = share(unet)
    began = time.perf_counter()
    tuned = train.train(copy.deepcopy(unet), scheduler, target, steps=get("finetune_steps"), batch_size=get("batch_size"),
                        lr=get("lr"), warmup=10, seed=0, progress=False).unet.eval()
    seconds = time.perf_counter() - began
    after = share(tuned)
    value = after / max(before, 1 / n)
    return {"value": value, "target": ">= 3, after >= 0.7", "unit": "ratio", "met": value >= 3 and after >= 0.7,
            "share_before": before, "share_after": after, "judge_held_out_accuracy": judge.held_out_accuracy,
            "finetune_seconds": seconds,
            "setting": f"{get('model')}: {get('source_genre')} -> {get('target_genre')}, {get('finetune_steps')} steps "
                       f"of {get('batch_size')}, lr {get('lr')}, {n} clips, DDIM {get('ddim_steps')} steps "
                       f"(before floored at 1/{n})"}


_TINY_SD: dict = {}


def _tiny_sd_quality() -> dict:
    """The zoo's evaluation of tiny-sd (prompts seen in training and held out), measured once per run."""
    from coursekit import stable_diffusion

    if not _TINY_SD:
        recipe = zoo.TEXT_RECIPES["tiny-sd"]
        _TINY_SD.update(zoo.evaluate_text(stable_diffusion.load_pipeline("tiny-sd"), recipe, per_pair=8))
    return _TINY_SD


def tiny_sd_prompt_accuracy() -> dict:
    q = _tiny_sd_quality()
    value = q["seen_prompt_accuracy"]
    return {"value": value, "target": ">= 0.9", "unit": "share", "met": value >= 0.9,
            "digit": q["seen_digit_accuracy"], "colour": q["seen_colour_accuracy"],
            "setting": f"{q['seen_samples']} samples of the 50 digit-colour pairs seen in training, {q['sampler']}"}


def tiny_sd_heldout_accuracy() -> dict:
    q = _tiny_sd_quality()
    value = q["held_out_prompt_accuracy"]
    return {"value": value, "target": ">= 0.7", "unit": "share", "met": value >= 0.7,
            "digit": q["held_out_digit_accuracy"], "colour": q["held_out_colour_accuracy"],
            "setting": f"{q['held_out_samples']} samples of the 10 pairs held out of training, {q['sampler']}"}


UNIT3_LORA = "unit3/02_lora_and_controlnet.ipynb"


def lora_vs_full_forgetting(per_prompt: int = 6, seeds=(0, 1, 2)) -> dict:
    """Section 4 of the LoRA notebook on more samples and several training seeds (one run varies by
    up to 0.3 in either accuracy): LoRA and full fine-tuning of tiny-sd on the same 20 orange digits
    for the notebook's steps; value = mean old-prompt accuracy after LoRA minus after full
    fine-tuning (how much less LoRA forgets)."""
    from coursekit import adapters, captions, stable_diffusion

    steps = notebook_setting(UNIT3_LORA, "compare_steps")
    x, texts, digits, _ = captions.dataset(pairs=[(d, "orange") for d in range(10)], held_out=())
    pick = torch.cat([torch.nonzero(digits == d)[:2, 0] for d in range(10)])
    x, texts = x[pick], [texts[i] for i in pick]
    judge = captions.prompt_judge()
    new = [captions.caption(d, "orange") for d in range(10) for _ in range(per_prompt)]
    old = [captions.caption(d, c) for d in range(10) for c in ("red", "blue", "yellow") for _ in range(per_prompt // 2)]

    def scores(p):
        g = torch.Generator().manual_seed(0)
        a = stable_diffusion.text_to_image(p, new, steps=25, guidance_scale=5.0, generator=g)
        b = stable_diffusion.text_to_image(p, old, steps=25, guidance_scale=5.0, generator=g)
        return judge.accuracy(a, new), judge.accuracy(b, old)

    base = scores(stable_diffusion.load_pipeline("tiny-sd"))
    runs = {"lora": [], "full": []}
    for seed in seeds:
        for name, lr in (("lora", 3e-3), ("full", 3e-4)):
            p = stable_diffusion.load_pipeline("tiny-sd")
            if name == "lora":
                n = adapters.add_lora(p.unet, rank=4)
            else:
                n = adapters.trainable_parameters(p.unet.requires_grad_(True))
            began = time.perf_counter()
            adapters.train_unet(p, x, texts, steps=steps, batch_size=16, lr=lr, seed=seed, progress=False)
            runs[name].append((n, time.perf_counter() - began, *scores(p)))
    mean = lambda name, k: float(np.mean([r[k] for r in runs[name]]))
    value = mean("lora", 3) - mean("full", 3)
    return {"value": value, "target": ">= 0", "unit": "share", "met": value >= 0,
            "base_concept": base[0], "base_old": base[1],
            "lora_concept": mean("lora", 2), "lora_old": mean("lora", 3), "lora_trainable": runs["lora"][0][0],
            "full_concept": mean("full", 2), "full_old": mean("full", 3), "full_trainable": runs["full"][0][0],
            "lora_old_per_seed": [round(r[3], 3) for r in runs["lora"]],
            "full_old_per_seed": [round(r[3], 3) for r in runs["full"]],
            "lora_concept_per_seed": [round(r[2], 3) for r in runs["lora"]],
            "full_concept_per_seed": [round(r[2], 3) for r in runs["full"]],
            "time_ratio_lora_over_full": mean("lora", 1) / mean("full", 1),
            "setting": f"tiny-sd, 20 orange digits, {steps} steps of batch 16, seeds {list(seeds)}; LoRA rank 4 lr 3e-3, "
                       "full lr 3e-4"}


def controlnet_agreement_gain(n: int = 100) -> dict:
    from coursekit import adapters, stable_diffusion

    recipe = zoo.CONTROL_RECIPES["tiny-sd-controlnet"]
    q = zoo.evaluate_control(stable_diffusion.load_pipeline(recipe.base), adapters.load_controlnet("tiny-sd-controlnet"),
                             recipe, n=n)
    value = q["edge_agreement_with_control"] / q["edge_agreement_without_control"]
    return {"value": value, "target": ">= 1.5", "unit": "ratio", "met": value >= 1.5,
            "with_control": q["edge_agreement_with_control"], "without_control": q["edge_agreement_without_control"],
            "prompt_accuracy_with_control": q["prompt_accuracy_with_control"],
            "setting": f"tiny-sd with tiny-sd-controlnet, Canny edges of {n} training images, {q['sampler']}"}


def _compared(nfes, methods, per_class: int, seed: int = 10) -> dict:
    """{(method, calls): (accuracy, FD, pixel FD at 16x16)} from `coursekit.compare`, the function
    Unit 4's table comes from, on the same labels and noise for every method."""
    from coursekit import compare

    rows = compare.compare(nfes, per_class=per_class, methods=methods, seed=seed, progress=False)
    return {(m, n): (acc, fd, pfd) for m, n, _, acc, fd, pfd in rows}


def _sampler(name: str, steps: int) -> str:
    recipe = zoo.RECIPES[name]
    return f"{zoo.sampler_name(recipe.objective, steps)} (w {recipe.eval_guidance})"


def flow_vs_ddim_4step(per_class: int = 50) -> dict:
    """digits-flow with 4 Euler steps against digits-cond with 4 DDIM steps (same UNet, data and
    training steps; each at its card's guidance scale), on the same noise and labels."""
    r = _compared((4,), ["flow matching", "DDIM"], per_class)
    flow, ddim = r["flow matching", 4], r["DDIM", 4]
    value = flow[0] / ddim[0]
    return {"value": value, "target": ">= 1", "unit": "ratio", "met": value >= 1,
            "flow_accuracy": flow[0], "ddim_accuracy": ddim[0], "flow_fd": flow[1], "ddim_fd": ddim[1],
            "flow_pixel_fd_16": flow[2], "ddim_pixel_fd_16": ddim[2],
            "setting": f"{10 * per_class} samples; {_sampler('digits-flow', 4)} vs {_sampler('digits-cond', 4)}"}


def edm_vs_eps_fd(per_class: int = 50) -> dict:
    """FD to real digits of digits-edm (Heun, 13 steps = 25 network calls) over digits-cond's (DDIM,
    25 steps), trained for the same steps on the same data; below 1 means EDM is closer."""
    r = _compared((25,), ["EDM (Heun)", "DDIM"], per_class)
    edm, eps = r["EDM (Heun)", 25], r["DDIM", 25]
    value = edm[1] / eps[1]
    return {"value": value, "target": "< 1", "unit": "ratio", "met": value < 1,
            "edm_fd": edm[1], "eps_fd": eps[1], "edm_pixel_fd_16": edm[2], "eps_pixel_fd_16": eps[2],
            "edm_accuracy": edm[0], "eps_accuracy": eps[0],
            "setting": f"{10 * per_class} samples, 25 network calls each; {_sampler('digits-edm', 13)} vs "
                       f"{_sampler('digits-cond', 25)}"}


def consistency_2step_accuracy(per_class: int = 50) -> dict:
    """digits-consistency in 2 steps (1 and 4 beside it), against digits-cond's 2-step progressive-
    distillation student and digits-cond itself with 2 DDIM steps, on the same labels and noise."""
    r = _compared((1, 2, 4), ["consistency", "progressive students", "DDIM"], per_class)
    value = r["consistency", 2][0]
    return {"value": value, "target": ">= 0.9", "unit": "share", "met": value >= 0.9,
            "consistency_1step": r["consistency", 1][0], "consistency_4step": r["consistency", 4][0],
            "consistency_2step_fd": r["consistency", 2][1], "progressive_2step_accuracy": r["progressive students", 2][0],
            "progressive_2step_fd": r["progressive students", 2][1], "ddim_2step_accuracy": r["DDIM", 2][0],
            "setting": f"{10 * per_class} samples; {_sampler('digits-consistency', 2)}"}


def dit_vs_unet_fd(per_class: int = 50) -> dict:
    """FD to real digits of digits-dit (a DiT of about the UNet's parameter count) over digits-cond's,
    both DDIM 25 steps at their guidance scale, trained for the same steps on the same data."""
    r = _compared((25,), ["DiT (DDIM)", "DDIM"], per_class)
    dit, unet = r["DiT (DDIM)", 25], r["DDIM", 25]
    n_dit = sum(p.numel() for p in models.load_model("digits-dit")[0].parameters())
    n_unet = sum(p.numel() for p in models.load_model("digits-cond")[0].parameters())
    value = dit[1] / unet[1]
    return {"value": value, "target": "report", "unit": "ratio", "met": True,
            "dit_fd": dit[1], "unet_fd": unet[1], "dit_accuracy": dit[0], "unet_accuracy": unet[0],
            "dit_pixel_fd_16": dit[2], "unet_pixel_fd_16": unet[2], "dit_parameters": n_dit, "unet_parameters": n_unet,
            "setting": f"{10 * per_class} samples; {_sampler('digits-dit', 25)}"}


UNIT4_NEW = "unit4/04_new_directions.ipynb"


def new_directions_table(per_class: int = 20) -> dict:
    """Unit 4's comparison (coursekit.compare, the notebook's own function and network-call counts):
    every model and sampler of the zoo at 1 to 32 calls. Value: the best accuracy at 2 calls or fewer."""
    from coursekit import compare

    rows = compare.compare(notebook_setting(UNIT4_NEW, "nfes"), per_class=per_class, progress=False)
    few = [r for r in rows if r[1] <= 2]
    best = max(few, key=lambda r: r[3])
    return {"value": best[3], "target": "report", "unit": "share", "met": True, "best_at_2_calls": best[0],
            **{f"{m}@{n}": f"accuracy {a:.3f}, FD {fd:.1f}, pixel FD {p:.2f}, {sec:.2f} s" for m, n, sec, a, fd, p in rows},
            "setting": f"{10 * per_class} samples per row, same labels and noise"}


def lcm_lora_4step_accuracy(per_pair: int = 4, seed: int = 2) -> dict:
    """tiny-sd with the zoo's LCM-LoRA at 4 LCMScheduler steps (guidance 1: 4 UNet calls) over its teacher
    tiny-sd with DDIM at 4 steps (guidance 5: 8 calls), through zoo.evaluate_lcm (the card's function), on
    the same prompts and noise; the teacher at 25 steps and LCMScheduler without the adapter beside them."""
    from coursekit import stable_diffusion

    recipe = zoo.LCM_RECIPES["tiny-sd-lcm-lora"]
    q = zoo.evaluate_lcm(stable_diffusion.load_pipeline(recipe.base), "tiny-sd-lcm-lora", recipe, per_pair=per_pair,
                         seed=seed)
    value = q["lcm_lora4_prompt_accuracy"] / q["base_ddim4_prompt_accuracy"]
    return {"value": value, "target": ">= 1", "unit": "ratio", "met": value >= 1,
            **{k: v for k, v in q.items() if k != "samples"},
            "setting": f"{q['samples']} samples of the seen digit-colour prompts, noise seed {seed}"}


FIGURES = {
    "ddim_vs_diffusers": ddim_vs_diffusers,
    "cfg_batched_vs_naive": cfg_batched_vs_naive,
    "first_image_s": first_image_s,
    "digits_cond_accuracy": digits_cond_accuracy,
    "classifier_guidance_success": classifier_guidance_success,
    "finetune_gain": finetune_gain,
    "colour_guidance_gain": colour_guidance_gain,
    "cfg_accuracy": cfg_accuracy,
    "inversion_psnr_50": inversion_psnr_50,
    "edit_success": edit_success,
    "distilled_4step_accuracy": distilled_4step_accuracy,
    "few_step_table": few_step_table,
    "samplers_table": samplers_table,
    "audio_roundtrip_db": audio_roundtrip_db,
    "genre_shift": genre_shift,
    "tiny_sd_prompt_accuracy": tiny_sd_prompt_accuracy,
    "tiny_sd_heldout_accuracy": tiny_sd_heldout_accuracy,
    "lora_vs_full_forgetting": lora_vs_full_forgetting,
    "controlnet_agreement_gain": controlnet_agreement_gain,
    "flow_vs_ddim_4step": flow_vs_ddim_4step,
    "edm_vs_eps_fd": edm_vs_eps_fd,
    "consistency_2step_accuracy": consistency_2step_accuracy,
    "dit_vs_unet_fd": dit_vs_unet_fd,
    "new_directions_table": new_directions_table,
    "lcm_lora_4step_accuracy": lcm_lora_4step_accuracy,
}


def main(names=None) -> dict:
    results = {}
    for name in names or FIGURES:
        print(f"measuring {name} ...", flush=True)
        results[name] = FIGURES[name]()
    out = ROOT / "build" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"\n{'figure':<24}{'value':>10}  {'target':<10}{'unit':<7}met")
    for name, r in results.items():
        print(f"{name:<24}{r['value']:>10.3f}  {r['target']:<10}{r['unit']:<7}{'yes' if r['met'] else 'NO'}")
        for k, v in r.items():
            if k not in ("value", "target", "unit", "met"):
                print(f"{'':<26}{k}: {v:.3f}" if isinstance(v, float) else f"{'':<26}{k}: {v}")
    print(f"\nwritten: {out.relative_to(ROOT)}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:] or None)
