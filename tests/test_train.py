import pytest
import torch
import torch.nn.functional as F

from coursekit import train
from tests.helpers import tiny_scheduler, tiny_unet


def blobs(n=64, size=8, seed=0):
    """A toy dataset: a bright square at one of four places."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(n, 1, size, size)
    where = torch.randint(0, 4, (n,), generator=g)
    for i, w in enumerate(where.tolist()):
        r, c = divmod(w, 2)
        x[i, :, r * 4:r * 4 + 4, c * 4:c * 4 + 4] = 1
    return x, where


def test_loss_goes_down():
    x, _ = blobs()
    result = train.train(tiny_unet(), tiny_scheduler(), x, steps=60, batch_size=16, lr=3e-3, warmup=5, progress=False)
    assert len(result.losses) == 60
    assert sum(result.losses[-10:]) / 10 < 0.6 * sum(result.losses[:5]) / 5


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    x, labels = blobs()
    whole = train.train(tiny_unet(classes=4), tiny_scheduler(), x, labels, steps=12, batch_size=8, warmup=2,
                        p_uncond=0.2, ema_decay=0.9, progress=False)
    class Stop(Exception):
        pass

    def stop_at_7(step, state):
        if step == 7:
            raise Stop

    with pytest.raises(Stop):
        train.train(tiny_unet(classes=4), tiny_scheduler(), x, labels, steps=12, batch_size=8, warmup=2,
                    p_uncond=0.2, ema_decay=0.9, out_dir=tmp_path, checkpoint_every=5, callback=stop_at_7,
                    every=1, progress=False)
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    assert not (tmp_path / "checkpoint.tmp").exists()
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 5
    resumed = train.train(tiny_unet(classes=4, seed=99), tiny_scheduler(), x, labels, steps=12, batch_size=8,
                          warmup=2, p_uncond=0.2, ema_decay=0.9, out_dir=tmp_path, checkpoint_every=5, progress=False)
    assert resumed.losses == whole.losses
    for a, b in zip(resumed.unet.parameters(), whole.unet.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(resumed.ema_unet.parameters(), whole.ema_unet.parameters()):
        assert torch.equal(a, b)


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    x, _ = blobs()
    x[3, 0, 0, 0] = float("nan")
    with pytest.raises(train.TrainingDiverged, match=r"loss became nan at step \d+.*Lower the learning rate"):
        train.train(tiny_unet(), tiny_scheduler(), x, steps=20, batch_size=64, out_dir=tmp_path, progress=False)


def test_gradient_accumulation_matches_one_big_batch():
    """Two micro-batches of 8 with accumulation give the same update as their mean gradient."""
    x, _ = blobs(16)
    a = train.train(tiny_unet(), tiny_scheduler(), x, steps=1, batch_size=8, grad_accum=2, warmup=0, progress=False)
    ref = tiny_unet()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0)
    sched = tiny_scheduler()
    total = 0
    for micro in range(2):
        g = train.step_generator(0, micro)
        idx = train.batch_indices(16, 8, micro, 0)
        x_t, t, eps = train.noisy_batch(sched, x[idx], g)
        loss = F.mse_loss(ref(x_t, t).sample, eps) / 2
        loss.backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    opt.step()
    assert a.losses[0] == pytest.approx(total, rel=1e-5)
    for p, q in zip(a.unet.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_bad_training_inputs_are_refused():
    x, labels = blobs()
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        train.train(tiny_unet(), tiny_scheduler(), x.repeat(1, 3, 1, 1), steps=1, progress=False)
    with pytest.raises(ValueError, match="expects 8x8"):
        train.train(tiny_unet(), tiny_scheduler(), torch.zeros(4, 1, 16, 16), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train.train(tiny_unet(), tiny_scheduler(), x * 255, steps=1, progress=False)
    with pytest.raises(ValueError, match="class-conditional"):
        train.train(tiny_unet(), tiny_scheduler(), x, labels, steps=1, progress=False)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train.train(tiny_unet(), tiny_scheduler(), x[:4], steps=1, batch_size=8, progress=False)


def test_batches_cover_each_epoch_once():
    seen = torch.cat([train.batch_indices(20, 5, step, seed=1) for step in range(4)])
    assert sorted(seen.tolist()) == list(range(20))
    assert not torch.equal(train.batch_indices(20, 5, 4, seed=1), train.batch_indices(20, 5, 0, seed=1)), "a new epoch"


def test_each_process_computes_its_rows_of_the_global_batch():
    draws = torch.arange(12.0)
    shares = [train.Batch(torch.arange(12), slice(r * 4, (r + 1) * 4), None, torch.device("cpu")).draw(draws)
              for r in range(3)]
    assert torch.equal(torch.cat(shares), draws)


def test_training_loops_give_the_numbers_they_gave_before_they_shared_one_loop():
    from safetensors.torch import load_file

    from tests.training_cases import REFERENCE, cases

    now, before = cases(), load_file(str(REFERENCE))
    assert set(now) == set(before)
    for name, value in before.items():
        torch.testing.assert_close(now[name], value, atol=1e-6, rtol=1e-5, msg=name)
