"""Flow matching: the straight path and its velocity, the Euler sampler against diffusers'
FlowMatchEulerDiscreteScheduler, training and reflow pairs."""
import pytest
import torch

from coursekit import flow
from tests.helpers import tiny_unet


def test_the_path_runs_from_data_to_noise_with_the_velocity_the_network_learns():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    s = torch.tensor([0.2, 0.5, 0.9])
    torch.testing.assert_close(flow.interpolate(x0, noise, torch.zeros(3)), x0)
    torch.testing.assert_close(flow.interpolate(x0, noise, torch.ones(3)), noise)
    h = 1e-3
    slope = (flow.interpolate(x0, noise, s + h) - flow.interpolate(x0, noise, s - h)) / (2 * h)
    torch.testing.assert_close(slope, flow.velocity(x0, noise), atol=1e-3, rtol=0)


def test_euler_with_the_exact_velocity_of_one_data_point_lands_on_it_in_one_step():
    """For data that is a single image x0, the best velocity at (x, s) is (x - x0) / s."""
    target = torch.full((2, 1, 8, 8), 0.5)

    class Exact(torch.nn.Module):
        config = type("C", (), {"in_channels": 1, "num_class_embeds": None})()

        def forward(self, x, t, class_labels=None):
            return type("O", (), {"sample": (x - target[: len(x)]) / (t / flow.TRAIN_TIMESTEPS)})()

    for steps in (1, 3):
        x = flow.euler(Exact(), torch.randn(2, 1, 8, 8), steps=steps)
        torch.testing.assert_close(x, target, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 4])
def test_euler_equals_diffusers_flow_match_scheduler(steps):
    unet = tiny_unet(classes=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 8, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 0])
    ours = flow.euler(unet, x, steps=steps, labels=labels, guidance_scale=2.0)
    sched = flow.scheduler()
    sched.set_timesteps(sigmas=flow.sigmas(steps)[:-1].tolist())
    theirs = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            both = unet(torch.cat([theirs, theirs]), t, class_labels=torch.cat([labels, torch.full_like(labels, 3)])).sample
            c, u = both.chunk(2)
            theirs = sched.step(u + 2.0 * (c - u), t, theirs).prev_sample
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_training_lowers_the_loss_and_reflow_pairs_are_reproducible():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 8, 8) * 2 - 1
    labels = torch.arange(64) % 3
    unet = tiny_unet(classes=3)
    result = flow.train(unet, images, labels, steps=40, batch_size=16, lr=3e-3, warmup=0, p_uncond=0.1, progress=False)
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    z, x, y = flow.reflow_pairs(result.unet, labels[:5], 5, steps=3, generator=torch.Generator().manual_seed(2),
                                progress=False)
    assert z.shape == x.shape == (5, 1, 8, 8) and x.abs().max() <= 1
    torch.testing.assert_close(flow.euler(result.unet, z, steps=3, labels=y).clamp(-1, 1), x)
    again = flow.train(tiny_unet(classes=3), x, y, pairs=z, steps=2, batch_size=5, warmup=0, progress=False)
    assert len(again.losses) == 2


def test_bad_inputs_name_the_fix():
    unet = tiny_unet(classes=3)
    with pytest.raises(flow.FlowError, match="whole number"):
        flow.euler(unet, torch.randn(1, 1, 8, 8), steps=0, labels=[0])
    with pytest.raises(flow.FlowError, match="one noise per image"):
        flow.train(unet, torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), pairs=torch.zeros(3, 1, 8, 8),
                   steps=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="\\[-1, 1\\]"):
        flow.train(unet, torch.full((4, 1, 8, 8), 3.0), torch.zeros(4, dtype=torch.long), steps=1, batch_size=2,
                   progress=False)


def test_ddim_refuses_a_flow_or_edm_model_instead_of_using_the_wrong_schedule():
    from coursekit import edm, samplers

    unet = tiny_unet(classes=3)
    for sched, fix in ((flow.scheduler(), "flow.euler"), (edm.scheduler(), "edm.heun")):
        with pytest.raises(samplers.SamplerError, match=fix):
            samplers.ddim(unet, sched, torch.randn(1, 1, 8, 8), steps=2, labels=[0])
