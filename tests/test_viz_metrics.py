import matplotlib
import numpy as np
import pytest
import torch

from coursekit import metrics, samplers, viz
from tests.helpers import tiny_scheduler, tiny_unet

matplotlib.use("Agg")


def test_image_grid_tiles_tensors_and_pil():
    x = torch.linspace(-1, 1, 5 * 16).reshape(5, 1, 4, 4)
    grid = viz.image_grid(x, nrow=3, pad=1)
    assert grid.size == (3 * 5 + 1, 2 * 5 + 1) and grid.mode == "L"
    big = viz.image_grid(x, nrow=5, scale=3)
    assert big.size == ((5 * 5 + 1) * 3, 6 * 3)
    rgb = viz.image_grid(torch.zeros(2, 3, 4, 4))
    assert rgb.mode == "RGB"
    with pytest.raises(ValueError, match="one size"):
        from PIL import Image

        viz.image_grid([Image.new("L", (4, 4)), Image.new("L", (5, 5))])


def test_plots_return_figures():
    unet, sched = tiny_unet(), tiny_scheduler()
    _, traj = samplers.ddim(unet, sched, torch.randn(1, 1, 8, 8), steps=6, trajectory=True, progress=False)
    fig = viz.trajectory_strip(traj, n=4)
    assert len(fig.axes) == 8
    assert [t.get_text() for t in (ax.title for ax in fig.axes[:4])] == ["t=999", "t=666", "t=499", "t=166"]
    assert len(viz.schedule_plot({"cos": sched.alphas_cumprod}).axes) == 2
    assert viz.loss_curve(list(np.linspace(1, 0.1, 100))).axes[0].get_yscale() == "log"
    both = viz.loss_curve({"a": np.linspace(1, 0.1, 100), "b": np.linspace(2, 0.2, 100)}, smooth=10)
    labels = [line.get_label() for line in both.axes[0].get_lines()]
    assert "a, mean of 10" in labels and "b, mean of 10" in labels


def test_digit_judge_is_accurate_on_real_digits_and_fooled_by_nothing():
    from coursekit import data

    judge = metrics.digit_judge(16)
    assert judge.held_out_accuracy > 0.95
    x, y = data.tensors(data.load_dataset("digits").select(range(200)), 16, 1)
    assert judge.accuracy(x, y) > 0.95
    assert judge.fid(x) < judge.fid(torch.randn(200, 1, 16, 16).clamp(-1, 1))
    assert judge.confidence(x) > judge.confidence(torch.zeros(50, 1, 16, 16))
    with pytest.raises(ValueError, match="grey images"):
        judge.predict(torch.zeros(2, 3, 16, 16))


def test_pixel_fd_prefers_the_real_distribution():
    from coursekit import data

    x, _ = data.tensors(data.load_dataset("digits"), 16, 1)
    real_a, real_b = x[:500], x[500:1000]
    noise = torch.randn(500, 1, 16, 16).clamp(-1, 1)
    assert metrics.pixel_fd(real_a, real_b) < 0.2 * metrics.pixel_fd(noise, real_b)
    with pytest.raises(ValueError, match="channels"):
        metrics.pixel_fd(torch.zeros(30, 3, 16, 16), real_b)


def test_diversity_is_one_for_real_data_and_zero_for_copies():
    from coursekit import data

    judge = metrics.digit_judge(16)
    x, y = data.tensors(data.load_dataset("digits"), 16, 1)
    assert judge.diversity(x, y) == pytest.approx(1.0, rel=1e-6)
    copies = x[:1].repeat(20, 1, 1, 1)
    assert judge.diversity(copies, torch.zeros(20, dtype=torch.long)) == pytest.approx(0.0, abs=1e-6)


def test_fit_judge_on_any_labelled_grey_images():
    from coursekit import data

    x, y = data.tensors(data.load_dataset("digits"), 8, 1)
    judge = metrics.fit_judge(x, y)
    assert judge.held_out_accuracy > 0.95 and judge.accuracy(x[:100], y[:100]) > 0.95
