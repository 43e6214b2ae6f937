import pytest
import torch

from coursekit import distill, models, samplers, train
from tests.helpers import tiny_scheduler, tiny_unet


def test_grid_is_nested_and_halves():
    assert distill.grid(4) == [960, 720, 480, 240]
    assert distill.grid(8)[::2] == distill.grid(4)
    assert distill.grid(64)[::2] == distill.grid(32)
    with pytest.raises(distill.DistillError, match="divide"):
        distill.grid(7)


def test_targets_make_one_student_step_land_where_two_teacher_steps_do():
    teacher, sched = tiny_unet(classes=2), tiny_scheduler()
    torch.nn.init.normal_(teacher.class_embedding.weight)
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    eps, weight = distill.targets(teacher, sched, z, 480, 8, y, guidance_scale=2.0)
    ab = lambda t: sched.alphas_cumprod[t]
    with torch.no_grad():
        mid = distill.ddim_step(z, samplers.predict_noise(teacher, z, 480, y, 2.0), ab(480), ab(360))
        two = distill.ddim_step(mid, samplers.predict_noise(teacher, mid, 360, y, 2.0), ab(360), ab(240))
    torch.testing.assert_close(distill.ddim_step(z, eps, ab(480), ab(240)), two, atol=1e-4, rtol=1e-4)
    assert weight == pytest.approx(max(1.0, float((1 - ab(480)) / ab(480))))


def test_sample_on_the_grid_is_diffusers_ddim_at_its_timesteps():
    """With the same timesteps and no clipping, coursekit's grid sampler is DDIM."""
    unet, sched = tiny_unet(), tiny_scheduler()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = distill.sample_on_grid(unet, sched, x, steps=4, progress=False)
    by_hand = x
    ts = distill.grid(4)
    for i, t in enumerate(ts):
        with torch.no_grad():
            eps = unet(by_hand, t).sample
        a_next = sched.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        a_t = sched.alphas_cumprod[t]
        by_hand = a_next.sqrt() * (by_hand - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_next).sqrt() * eps
    torch.testing.assert_close(ours, by_hand)


def _toy_images(n=256):
    g = torch.Generator().manual_seed(2)
    x = -torch.ones(n, 1, 8, 8)
    left = torch.rand(n, generator=g) < 0.5
    x[left, :, :, :4] = 0.8
    x[~left, :, 2:6, 2:6] = 0.8
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


@pytest.mark.slow
def test_one_round_halves_the_steps_and_beats_the_teacher_at_the_student_count():
    images = _toy_images()
    teacher, sched = tiny_unet(), tiny_scheduler()
    teacher = train.train(teacher, sched, images, steps=200, batch_size=32, lr=3e-3, warmup=10, progress=False).unet.eval()
    student, losses = distill.distill_round(teacher, sched, images, teacher_steps=4, steps=200, batch_size=32,
                                            lr=5e-4, progress=False)
    assert losses[-1] < losses[0] or sum(losses[-20:]) < sum(losses[:20])
    noise = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    reference = distill.sample_on_grid(teacher, sched, noise, steps=64, progress=False)
    error = lambda x: float(((x - reference) ** 2).mean())
    student_2 = distill.sample_on_grid(student, sched, noise, steps=2, progress=False)
    teacher_2 = distill.sample_on_grid(teacher, sched, noise, steps=2, progress=False)
    assert error(student_2) < 0.8 * error(teacher_2)


def test_round_refuses_odd_teacher_steps_and_missing_labels():
    teacher, sched = tiny_unet(classes=2), tiny_scheduler()
    with pytest.raises(distill.DistillError, match="even"):
        distill.distill_round(teacher, sched, torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long), teacher_steps=3)
    with pytest.raises(distill.DistillError, match="labels"):
        distill.distill_round(teacher, sched, torch.zeros(8, 1, 8, 8), teacher_steps=4)


def test_missing_student_names_the_command():
    with pytest.raises(distill.DistillError, match="coursekit distill digits-cond"):
        distill.load_student("digits-cond", 64)


@pytest.mark.parametrize("steps,bar", [(32, 0.9), (16, 0.9), (8, 0.9), (4, 0.9), (2, 0.8), (1, 0.5)])
def test_zoo_students_ship_with_model_cards(steps, bar):
    from coursekit import zoo

    unet, scheduler = distill.load_student("digits-cond", steps)
    folder = zoo.ZOO_DIR / distill.student_name("digits-cond", steps)
    card = (folder / "README.md").read_text()
    assert "coursekit distill digits-cond" in card and "## Measured quality" in card
    record = __import__("json").loads((folder / "distill.json").read_text())
    assert record["steps"] == steps and record["quality"]["conditional_accuracy"] >= bar, "measured: 4 steps 0.928, 1 step 0.54"
    assert unet.config.sample_size == 16 and models.null_label(unet) == 10


def test_a_chain_extends_from_a_saved_student_and_refuses_one_it_cannot_find(tmp_path):
    written = distill.train_chain("digits-cond", tmp_path, steps_per_round=2, evaluate_after=False, progress=False,
                                  resume_at=2)
    assert [p.name for p in written] == ["digits-cond-1step"]
    record = __import__("json").loads((written[0] / "distill.json").read_text())
    assert [r["from"] for r in record["rounds"]] == [64, 32, 16, 8, 4, 2], "the earlier rounds' history is kept"
    card = (written[0] / "README.md").read_text()
    assert "2 or 500 steps per round" in card, "the card states what ran: the shipped rounds' 500 steps and this one's 2"
    assert not list(tmp_path.glob("*.work")), "each round's checkpoints go once its student is saved"
    with pytest.raises(distill.DistillError, match="resume_at must name a saved student"):
        distill.train_chain("digits-cond", tmp_path, steps_per_round=2, resume_at=3)
