"""Every sampling, guidance, inversion and distillation path on tiny random models, seeded: the
numbers `tests/data/predictor_reference.safetensors` holds, written by this module (`python -m
tests.predictor_cases`) from coursekit as it was before the noise predictor (commit 59f7398),
and recomputed by `tests/test_predictor.py` from coursekit as it is. The samplers now space their
steps "trailing" (`coursekit.samplers.spaced`); the cases hand `samplers.sample` the schedulers
built as they were when the references were recorded (each scheduler's own default spacing), so
they test the same arithmetic."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

REFERENCE = Path(__file__).with_name("data") / "predictor_reference.safetensors"


def _first(module, *names):
    return next(getattr(module, n) for n in names if hasattr(module, n))


def cases() -> dict[str, torch.Tensor]:
    from coursekit import distill, guidance, inversion, samplers
    from tests.helpers import save_tiny_stable_diffusion, tiny_scheduler, tiny_unet

    guided_sample = _first(guidance, "guided_sample", "sample")
    grid_sample = _first(distill, "sample_on_grid", "sample")
    g = lambda seed: torch.Generator().manual_seed(seed)
    out = {}

    def leading(name):
        import diffusers

        cls, extra = samplers.SCHEDULERS[name]
        return getattr(diffusers, cls).from_config(sched.config, **extra)

    with torch.no_grad():
        plain, cond = tiny_unet(), tiny_unet(classes=3)
        torch.nn.init.normal_(cond.class_embedding.weight, generator=g(9))
        sched = tiny_scheduler()
        x = torch.randn(4, 1, 8, 8, generator=g(1))
        y = torch.tensor([0, 1, 2, 1])
        out["ddim"] = samplers.sample(plain, leading("ddim"), x, steps=6, eta=0.0, progress=False)
        out["ddim_eta1"] = samplers.sample(plain, leading("ddim"), x, steps=6, eta=1.0, generator=g(2), progress=False)
        out["ddpm"] = samplers.sample(plain, leading("ddpm"), x, steps=8, generator=g(3), progress=False)
        for name in ("ddim", "dpm++", "euler-karras"):
            out[f"cfg_{name}"] = samplers.sample(cond, leading(name), x, steps=5, labels=y,
                                                 guidance_scale=2.0, generator=g(4), progress=False)
        out["cond_no_guidance"] = samplers.sample(cond, leading("ddim"), x, steps=5, labels=y, eta=0.0, progress=False)
        out["cond_null_label"] = samplers.sample(cond, leading("ddim"), x, steps=5, eta=0.0, progress=False)
        out["predict_noise_cfg"] = samplers.predict_noise(cond, x, 300, y, guidance_scale=2.5)
        inv = inversion.invert(cond, sched, x.clamp(-1, 1), steps=6, labels=y, guidance_scale=1.5, progress=False)
        out["invert_last"] = inv.at(6)
        out["denoise"] = inversion.denoise(cond, sched, inv.at(6), steps=6, labels=y, guidance_scale=1.5, progress=False)
        out["edit_k3"] = inversion.edit(cond, sched, inv, 3, labels=(y + 1) % 3, guidance_scale=1.5, progress=False)
        out["sdedit_k4"] = inversion.sdedit(cond, sched, x.clamp(-1, 1), 4, steps=6, labels=y, guidance_scale=1.5,
                                            generator=g(5), progress=False)
        target, weight = distill.targets(cond, sched, x, 720, 8, y, 2.0, max_weight=5.0)
        out["distill_target"], out["distill_weight"] = target, weight.reshape(1)
        out["grid_sample"] = grid_sample(cond, sched, x, steps=4, labels=y, guidance_scale=1.5, progress=False)
    rgb = tiny_unet(channels=3, seed=4)
    ddim = leading("ddim")
    xr = torch.randn(3, 3, 8, 8, generator=g(6))
    for through in (False, True):
        out[f"colour_guided_{through}"] = guided_sample(rgb, ddim, xr, guidance.colour_loss((0.9, 0.2, 0.1)), scale=5.0,
                                                        steps=5, through_unet=through, progress=False)
    torch.manual_seed(7)
    classifier = guidance.small_classifier(1, 3).eval()
    out["classifier_guided_cfg"] = guided_sample(cond, leading("ddim"), x,
                                                 guidance.classifier_loss(classifier, y), scale=0.5, steps=5,
                                                 through_unet=True, labels=y, guidance_scale=1.5, progress=False)
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        from PIL import Image

        pipe = inversion.load_stable_diffusion(save_tiny_stable_diffusion(Path(folder) / "sd"))
        photo = Image.fromarray((torch.rand(64, 64, 3, generator=g(8)) * 255).to(torch.uint8).numpy())
        sd_inv = inversion.invert_image(pipe, photo, "a cat", steps=5, progress=False)
        out["sd_invert_last"] = sd_inv.at(5)
        text = inversion.encode_prompt(pipe, "a fox", guidance_scale=3.0)
        out["sd_edit_latents"] = inversion.edit(pipe.unet, pipe.scheduler, sd_inv, 3, guidance_scale=3.0, text=text,
                                                progress=False)
    return {k: v.detach().float().contiguous() for k, v in out.items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    REFERENCE.parent.mkdir(exist_ok=True)
    save_file(cases(), str(REFERENCE))
    print(f"wrote {REFERENCE}")
