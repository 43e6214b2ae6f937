"""Consistency distillation: the boundary condition, the sampler against diffusers' LCMScheduler,
the target on a case with a known answer, and training."""
import warnings

import pytest
import torch

from coursekit import consistency, samplers
from tests.helpers import tiny_scheduler, tiny_unet


def test_the_consistency_function_is_the_identity_at_t_0():
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    ab = samplers.alpha_bar(tiny_scheduler(), torch.tensor([0, 0]), "cpu")
    torch.testing.assert_close(consistency.clean_estimate(eps, x, ab), x)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sample_equals_diffusers_lcm_scheduler_on_the_same_grid(steps):
    from diffusers import LCMScheduler

    unet, sched = tiny_unet(classes=3), tiny_scheduler()
    labels = torch.tensor([0, 1, 2])
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = consistency.sample(unet, sched, x, steps=steps, labels=labels, generator=torch.Generator().manual_seed(5))
    lcm = LCMScheduler.from_config(sched.config, clip_sample=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lcm.set_timesteps(timesteps=samplers.nested_grid(steps))
    g = torch.Generator().manual_seed(5)
    theirs = x
    with torch.no_grad():
        for t in lcm.timesteps:
            theirs = lcm.step(unet(theirs, t, class_labels=labels).sample, t, theirs, generator=g).prev_sample
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_perfect_consistency_model_gives_the_same_image_from_any_point_of_its_trajectory():
    """For data that is one image x0, the exact noise estimate is (x - sqrt(ab) x0) / sqrt(1 - ab): then
    f is x0 everywhere, one step samples exactly and the distillation target equals the student."""
    sched = tiny_scheduler()
    target = torch.full((2, 1, 8, 8), 0.25)

    class Exact(torch.nn.Module):
        config = type("C", (), {"in_channels": 1, "num_class_embeds": None})()

        def forward(self, x, t, class_labels=None):
            ab = samplers.alpha_bar(sched, t, x.device)
            return type("O", (), {"sample": (x - ab.sqrt() * target) / (1 - ab).sqrt()})()

    for steps in (1, 4):
        torch.testing.assert_close(consistency.sample(Exact(), sched, torch.randn(2, 1, 8, 8), steps=steps), target)


def test_distillation_trains_the_student_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    teacher, sched = tiny_unet(classes=3), tiny_scheduler()
    before = [p.clone() for p in teacher.parameters()]
    images, labels = torch.rand(32, 1, 8, 8) * 2 - 1, torch.arange(32) % 3
    student, losses = consistency.distill(teacher, sched, images, labels, grid_steps=4, steps=5, batch_size=8,
                                          progress=False)
    assert len(losses) == 5 and all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))
    with pytest.raises(consistency.ConsistencyError, match="labels"):
        consistency.distill(teacher, sched, images, None, grid_steps=4, steps=1, progress=False)
