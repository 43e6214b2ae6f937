"""Training runs on tiny seeded models, whose weights `tests/data/training_reference.safetensors`
holds (written by `python -m tests.training_cases` from coursekit before its training loops were
merged into one, commit 59f7398 plus the noise predictor): `train.train` with labels, label dropout,
accumulation and EMA, and one distillation round; `tests/test_train.py` recomputes them."""
from __future__ import annotations

from pathlib import Path

import torch

REFERENCE = Path(__file__).with_name("data") / "training_reference.safetensors"


def cases() -> dict[str, torch.Tensor]:
    from coursekit import distill, train
    from tests.helpers import tiny_scheduler, tiny_unet

    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.randint(0, 3, (24,), generator=g)
    out = {}
    result = train.train(tiny_unet(classes=3), tiny_scheduler(), images, labels, steps=4, batch_size=4, lr=1e-3,
                         warmup=1, grad_accum=2, p_uncond=0.3, ema_decay=0.9, seed=5, progress=False)
    out.update({f"train.{k}": v for k, v in result.unet.state_dict().items() if k.startswith("conv_out")})
    out.update({f"train_ema.{k}": v for k, v in result.ema_unet.state_dict().items() if k.startswith("conv_out")})
    out["train.losses"] = torch.tensor(result.losses)
    teacher = tiny_unet(classes=3, seed=1)
    student, losses = distill.distill_round(teacher, tiny_scheduler(), images, labels, teacher_steps=8, guidance_scale=1.5,
                                            steps=3, batch_size=4, lr=1e-3, seed=2, progress=False)
    out.update({f"distill.{k}": v for k, v in student.state_dict().items() if k.startswith("conv_out")})
    out["distill.losses"] = torch.tensor(losses)
    return {k: v.detach().float().contiguous() for k, v in out.items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    save_file(cases(), str(REFERENCE))
    print(f"wrote {REFERENCE}")
