from types import SimpleNamespace

import pytest
import torch

from coursekit import demo, guidance, models, samplers
from tests.helpers import tiny_scheduler, tiny_unet


class LinearEps(torch.nn.Module):
    """A toy 'UNet' whose noise estimate is a * x: every gradient has a closed form."""

    def __init__(self, a: float, channels: int = 3):
        super().__init__()
        self.a = a
        self.config = SimpleNamespace(in_channels=channels, num_class_embeds=None, sample_size=4)

    def forward(self, x, t, class_labels=None):
        return SimpleNamespace(sample=self.a * x)


@pytest.mark.parametrize("through_unet", [False, True])
def test_guidance_gradient_has_the_closed_form_answer(through_unet):
    sched = samplers.scheduler_named("ddim", tiny_scheduler())
    a, t = 0.3, 600
    ab = sched.alphas_cumprod[t]
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0.5, -0.2, 0.1]).view(1, 3, 1, 1)
    loss = lambda x0: 0.5 * ((x0 - target) ** 2).sum()
    grad, eps = guidance.guidance_gradient(LinearEps(a), sched, x, torch.tensor(t), loss, through_unet=through_unet)
    x0 = (x - (1 - ab).sqrt() * a * x) / ab.sqrt()
    dx0_dx = (1 - (1 - ab).sqrt() * a) / ab.sqrt() if through_unet else 1 / ab.sqrt()
    torch.testing.assert_close(grad, (x0 - target) * dx0_dx)
    torch.testing.assert_close(eps, a * x)


def test_zero_scale_is_the_plain_ddim_sampler():
    unet, sched = tiny_unet(channels=3), tiny_scheduler()
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain = samplers.ddim(unet, sched, noise, steps=5, progress=False)
    guided = guidance.guided_sample(unet, samplers.scheduler_named("ddim", sched), noise, guidance.colour_loss([1, 0, 0]),
                             scale=0.0, steps=5, progress=False)
    torch.testing.assert_close(guided, plain)


@pytest.mark.parametrize("through_unet", [False, True])
def test_colour_guidance_moves_samples_toward_the_colour(through_unet):
    unet, sched = tiny_unet(channels=3), tiny_scheduler()
    ddim = samplers.scheduler_named("ddim", sched)
    noise = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    red = [0.9, 0.1, 0.1]
    distances = [guidance.mean_colour_distance(
        guidance.guided_sample(unet, ddim, noise, guidance.colour_loss(red), scale=s, steps=10,
                        through_unet=through_unet, progress=False), red) for s in (0.0, 2.5, 10.0)]
    assert distances[2] < distances[1] < distances[0]
    assert distances[2] < 0.5 * distances[0]


def test_classifier_loss_steers_toward_the_class():
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    unet, sched = tiny_unet(channels=3), tiny_scheduler()
    ddim = samplers.scheduler_named("ddim", sched)
    noise = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    share = lambda x: (classifier(x).argmax(1) == 1).float().mean().item()
    run = lambda scale: guidance.guided_sample(unet, ddim, noise, guidance.classifier_loss(classifier, 1), scale=scale,
                                               steps=8, progress=False)
    before, after = share(run(0.0)), share(run(2.0))
    assert after == 1.0 and after > before


def test_mean_colour_distance():
    white = torch.ones(2, 3, 4, 4)
    assert guidance.mean_colour_distance(white, [1, 1, 1]) == pytest.approx(0)
    assert guidance.mean_colour_distance(-white, [1, 1, 1]) == pytest.approx(3 ** 0.5)


def test_bad_guidance_inputs_are_refused():
    unet, sched = tiny_unet(channels=3), tiny_scheduler()
    noise = torch.randn(2, 3, 8, 8)
    with pytest.raises(samplers.SamplerError, match="scalar"):
        guidance.guided_sample(unet, samplers.scheduler_named("ddim", sched), noise, lambda x0: x0.mean(dim=1), scale=1.0,
                        steps=2, progress=False)
    with pytest.raises(samplers.SamplerError, match="DDPM/DDIM-style"):
        guidance.guided_sample(unet, samplers.scheduler_named("euler", sched), noise, guidance.colour_loss([1, 0, 0]),
                        scale=1.0, steps=2, progress=False)
    with pytest.raises(samplers.SamplerError, match="colour has 3 channels but the images have 1"):
        guidance.guided_sample(tiny_unet(), samplers.scheduler_named("ddim", sched), torch.randn(2, 1, 8, 8),
                        guidance.colour_loss([1, 0, 0]), scale=1.0, steps=2, progress=False)


def test_class_channels_unet_conditions_through_extra_input_channels_and_saves_like_any_model(tmp_path):
    kw = dict(layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
              down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    torch.manual_seed(0)
    m = models.ClassChannelsUNet(sample_size=8, in_channels=1, num_class_embeds=4, embed_dim=4, unet_config=kw).eval()
    assert (m.config.in_channels, m.unet.config.in_channels, m.config.num_class_embeds) == (1, 5, 4)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(100)
    with torch.no_grad():
        out = m(x, t, class_labels=torch.tensor([0, 2])).sample
        maps = m.embed(torch.tensor([0, 2]))[:, :, None, None].expand(-1, -1, 8, 8)
        torch.testing.assert_close(out, m.unet(torch.cat([x, maps], 1), t).sample)
        other = m(x, t, class_labels=torch.tensor([1, 1])).sample
    assert not torch.allclose(out, other)
    # it plugs into the samplers with guidance, and into the training loop with label dropout
    y = samplers.ddim(m, tiny_scheduler(), torch.randn(3, 1, 8, 8), steps=3, labels=[0, 1, 2], guidance_scale=2.0,
                      progress=False)
    assert y.shape == (3, 1, 8, 8) and torch.isfinite(y).all()
    from coursekit import train

    r = train.train(m, tiny_scheduler(), torch.rand(16, 1, 8, 8) * 2 - 1, torch.randint(0, 3, (16,)), steps=2,
                    batch_size=8, p_uncond=0.5, ema_decay=0.9, out_dir=tmp_path, progress=False)
    assert len(r.losses) == 2 and isinstance(r.ema_unet, models.ClassChannelsUNet)
    assert (train.latest_checkpoint(tmp_path) / "model.safetensors").exists()
    with pytest.raises(models.ModelError, match="needs class_labels"):
        m(x, t)
    with pytest.raises(models.ModelError, match="1 or 3 channels"):
        models.ClassChannelsUNet(sample_size=8, in_channels=2, unet_config=kw)
    m.eval().save_pretrained(tmp_path / "saved")
    again = models.ClassChannelsUNet.from_pretrained(tmp_path / "saved", use_safetensors=True).eval()
    with torch.no_grad():
        y = torch.tensor([0, 2])
        torch.testing.assert_close(again(x, t, class_labels=y).sample, m(x, t, class_labels=y).sample)
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]


@pytest.mark.parametrize("through_unet", [False, True])
def test_guided_samples_do_not_depend_on_the_batch(through_unet):
    unet, sched = tiny_unet(channels=3), tiny_scheduler()
    ddim = samplers.scheduler_named("ddim", sched)
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    run = lambda x: guidance.guided_sample(unet, ddim, x, guidance.colour_loss([0.2, 0.8, 0.2]), scale=5.0, steps=6,
                                    through_unet=through_unet, progress=False)
    together = run(noise)
    alone = torch.cat([run(noise[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_trained_guide_classifier_learns_the_digits():
    from coursekit import data

    x, y = data.tensors(data.load_dataset("digits"), 16, 1)
    clf = guidance.train_classifier(x[:1200], y[:1200], steps=150)
    with torch.no_grad():
        accuracy = (clf(x[1200:]).argmax(1) == y[1200:]).float().mean().item()
    assert accuracy > 0.8


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tests.helpers import save_tiny_clip

    return guidance.load_clip(str(save_tiny_clip(tmp_path_factory.mktemp("clip"))))


def test_random_cutouts_have_the_size_clip_expects_and_carry_gradients():
    x = torch.rand(3, 3, 16, 12, requires_grad=True)
    cuts = guidance.random_cutouts(x, 32, 5, torch.Generator().manual_seed(0))
    assert cuts.shape == (15, 3, 32, 32)
    cuts.sum().backward()
    assert x.grad.abs().sum() > 0
    again = guidance.random_cutouts(x, 32, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, cuts)


def test_clip_guidance_lowers_the_clip_loss(tiny_clip):
    """On a tiny random CLIP loaded through the same loader as the Hub model: guided samples score
    better on the guide's own loss than unguided ones from the same noise."""
    unet, sched = tiny_unet(channels=3), samplers.scheduler_named("ddim", tiny_scheduler())
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    make = lambda: guidance.clip_loss("an orange flower", tiny_clip, cuts=4, generator=torch.Generator().manual_seed(0))
    plain = samplers.ddim(unet, sched, noise, steps=8, progress=False)
    guided = guidance.guided_sample(unet, sched, noise, make(), scale=20.0, steps=8, progress=False)
    with torch.no_grad():
        assert make()(guided) < make()(plain)


def test_clip_guide_is_refused_clearly_offline_and_on_grey_images(tiny_clip):
    with pytest.raises(ValueError, match="not in the Hugging Face cache.*classifier"):
        guidance.load_clip("openai/clip-vit-base-patch32")
    with pytest.raises(samplers.SamplerError, match="RGB"):
        guidance.clip_loss("a cat", tiny_clip)(torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("text, rgb", [("#ff8000", (1.0, 128 / 255, 0.0)), ("rgba(255, 128, 0, 1)", (1.0, 128 / 255, 0.0)),
                                       ("rgb(0,0,255)", (0.0, 0.0, 1.0)), ((0.2, 0.4, 0.6), (0.2, 0.4, 0.6))])
def test_parse_colour_reads_what_colour_pickers_return(text, rgb):
    assert guidance.parse_colour(text) == pytest.approx(rgb)


@pytest.mark.parametrize("bad", ["orange", "#ff80", (1, 2, 3), (0.5, 0.5)])
def test_parse_colour_refuses_what_it_cannot_read(bad):
    with pytest.raises(samplers.SamplerError, match="colour"):
        guidance.parse_colour(bad)


def test_colour_demo_predicts_without_a_server_and_serves_on_localhost(monkeypatch):
    import numpy as np

    unet, sched = tiny_unet(channels=3), samplers.scheduler_named("ddim", tiny_scheduler())
    app = demo.colour_demo(unet, sched, steps=4, n=3)
    shown = app.fn("#ff0000", 40.0, 1)
    expected = guidance.colour_guided_grid(unet, sched, "#ff0000", 40.0, seed=1, n=3, steps=4)
    assert np.array_equal(np.asarray(shown), np.asarray(expected))
    unguided = guidance.colour_guided_grid(unet, sched, "#ff0000", 0.0, seed=1, n=3, steps=4)
    samples = lambda im: np.asarray(im)[:, im.height + 8:].reshape(-1, 3).mean(0) / 255
    red = np.array([1.0, 0.0, 0.0])
    assert np.linalg.norm(samples(shown) - red) < np.linalg.norm(samples(unguided) - red)
    launched = {}
    monkeypatch.setattr(app, "launch", lambda **kw: launched.update(kw))
    demo.launch_demo(app)
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is False
    with pytest.raises(samplers.SamplerError, match="RGB"):
        demo.colour_demo(tiny_unet(channels=1), sched)


def test_loss_guidance_leaves_out_steps_where_x0_cannot_be_estimated():
    """At t = 999 of the cosine schedule alpha-bar is 2e-9: that step runs unguided."""
    from coursekit import guidance

    unet, sched = tiny_unet(channels=3), samplers.scheduler_named("ddim", tiny_scheduler())
    seen = []
    loss = guidance.colour_loss((1.0, 0.0, 0.0))
    counted = lambda x0: seen.append(1) or loss(x0)
    guidance.guided_sample(unet, sched, torch.randn(1, 3, 8, 8), counted, scale=1.0, steps=4, progress=False)
    assert len(seen) == 3 and sched.alphas_cumprod[999] < guidance.MIN_ALPHA_BAR
