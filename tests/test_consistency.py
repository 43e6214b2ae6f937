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


# Latent consistency as a LoRA (LCM-LoRA) on a text-to-image pipeline.


def test_the_lcm_grid_is_lcm_schedulers_fifty_step_schedule():
    from diffusers import LCMScheduler

    lcm = LCMScheduler(num_train_timesteps=1000)
    lcm.set_timesteps(50)
    assert consistency.lcm_grid(1000, 50).flip(0).tolist() == lcm.timesteps.tolist()
    assert consistency.lcm_grid(1000, 50)[:3].tolist() == [19, 39, 59]
    with pytest.raises(consistency.ConsistencyError, match="original_steps"):
        consistency.lcm_grid(1000, 0)


def test_the_latent_consistency_function_is_lcm_schedulers_denoised_sample():
    """f = c_skip z + c_out x0_hat, the `denoised` of LCMScheduler.step, at every grid point; f(z, 0) = z."""
    from diffusers import LCMScheduler

    lcm = LCMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    lcm.set_timesteps(4)
    z, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    for t in lcm.timesteps:
        lcm._step_index = None
        out = lcm.step(eps, t, z, generator=torch.Generator().manual_seed(0))
        ours = consistency.consistency_function(eps, z, torch.tensor([int(t)]), lcm.alphas_cumprod)
        torch.testing.assert_close(ours, out.denoised, atol=1e-5, rtol=1e-5)
    c_skip, c_out = consistency.boundary_scalings(torch.tensor([0, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[1] < 1e-6
    torch.testing.assert_close(consistency.consistency_function(eps, z, torch.tensor([0]), lcm.alphas_cumprod), z)


@pytest.fixture()
def tiny_pipe(tmp_path):
    from coursekit import stable_diffusion as sd
    from tests.helpers import save_tiny_stable_diffusion

    return sd.load_pipeline(str(save_tiny_stable_diffusion(tmp_path / "pipe")))


def squares(n=4, size=16):
    x = -torch.ones(n, 3, size, size)
    for i in range(n):
        x[i, i % 3, 2 + i:10 + i, 3:9] = 1
    return x


def test_lcm_lora_distillation_trains_only_the_adapter_and_reloads_from_its_file(tiny_pipe, tmp_path):
    from coursekit import adapters
    from coursekit import stable_diffusion as sd

    frozen = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    prompts = ["a red square", "a green square", "a blue square", "a red square"]
    result = consistency.distill_lora(tiny_pipe, squares(), prompts, rank=2, steps=4, batch_size=2, lr=1e-2,
                                      progress=False)
    assert len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    after = tiny_pipe.unet.state_dict()
    assert all(torch.equal(after[k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")]
                           if k not in after else after[k], v) for k, v in frozen.items()), "only the adapter moves"
    adapted = {k.split(".lora_")[0] for k in after if ".lora_" in k}
    assert any("conv1" in k for k in adapted) and any("time_emb_proj" in k for k in adapted) and any("to_q" in k for k in adapted)
    g = lambda: torch.Generator().manual_seed(3)
    want = consistency.lcm_text_to_image(tiny_pipe, prompts[:2], steps=2, generator=g())
    assert want.shape == (2, 3, 16, 16) and type(tiny_pipe.scheduler).__name__ == "DDIMScheduler"
    adapters.save_lora(tiny_pipe, tmp_path / "lcm")
    fresh = sd.load_pipeline(str(tmp_path / "pipe"))
    plain = consistency.lcm_text_to_image(fresh, prompts[:2], steps=2, generator=g())
    adapters.load_lora(fresh, tmp_path / "lcm", "lcm")
    torch.testing.assert_close(consistency.lcm_text_to_image(fresh, prompts[:2], steps=2, generator=g()), want,
                               atol=1e-5, rtol=0)
    assert (plain - want).abs().max() > 1e-4, "the adapter changes the samples"


def test_lcm_lora_distillation_is_seeded(tiny_pipe, tmp_path):
    from coursekit import stable_diffusion as sd

    runs = []
    for _ in range(2):
        pipe = sd.load_pipeline(str(tmp_path / "pipe"))
        consistency.distill_lora(pipe, squares(2), ["a red square", "a green square"], rank=2, steps=2, batch_size=2,
                                 progress=False)
        runs.append({k: v for k, v in pipe.unet.state_dict().items() if ".lora_" in k})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_lcm_lora_refusals(tiny_pipe):
    with pytest.raises(consistency.ConsistencyError, match="guidance"):
        consistency.distill_lora(tiny_pipe, squares(2), ["a", "b"], guidance_scale=0.5, steps=1, progress=False)
    with pytest.raises(consistency.ConsistencyError, match="steps must be"):
        consistency.lcm_text_to_image(tiny_pipe, ["a"], steps=0)
    consistency.distill_lora(tiny_pipe, squares(2), ["a", "b"], rank=2, steps=1, batch_size=2, progress=False)
    with pytest.raises(consistency.ConsistencyError, match="already carries"):
        consistency.distill_lora(tiny_pipe, squares(2), ["a", "b"], steps=1, progress=False)
