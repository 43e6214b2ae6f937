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
    found = train.latest_checkpoint(tmp_path)
    assert found.name == "step-00000005" and (found / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "checkpoint").iterdir()] == [found.name]
    state = torch.load(found / "state.pt", weights_only=True)
    assert state["step"] == 5
    resumed = train.train(tiny_unet(classes=4, seed=99), tiny_scheduler(), x, labels, steps=12, batch_size=8,
                          warmup=2, p_uncond=0.2, ema_decay=0.9, out_dir=tmp_path, checkpoint_every=5, progress=False)
    assert resumed.losses == whole.losses
    for a, b in zip(resumed.unet.parameters(), whole.unet.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(resumed.ema_unet.parameters(), whole.ema_unet.parameters()):
        assert torch.equal(a, b)


def test_nan_in_the_data_is_refused_before_training(tmp_path):
    x, _ = blobs()
    x[3, 0, 0, 0] = float("nan")
    with pytest.raises(train.SettingsError, match="NaN or infinite.*clean the data"):
        train.train(tiny_unet(), tiny_scheduler(), x, steps=20, batch_size=64, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "checkpoint").exists()


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


def small_run(tmp_path, **kw):
    x, _ = blobs(32)
    args = dict(steps=6, batch_size=8, warmup=0, out_dir=tmp_path, progress=False)
    return train.train(tiny_unet(), tiny_scheduler(), x, **{**args, **kw})


class Killed(BaseException):
    """Stands for the process dying at one instant of a checkpoint save."""


def test_a_kill_at_any_instant_of_a_save_leaves_a_complete_checkpoint(tmp_path, monkeypatch):
    import os
    import shutil
    from pathlib import Path

    import safetensors.torch

    ref = tmp_path / "ref"
    small_run(ref, steps=4, checkpoint_every=2)
    model = tiny_unet()
    opt = torch.optim.AdamW(model.parameters())
    from diffusers.optimization import get_scheduler

    sched = get_scheduler("constant", opt)
    operations = [(safetensors.torch, "save_file"), (torch, "save"), (os, "fsync"), (os, "replace"),
                  (shutil, "rmtree"), (Path, "unlink"), (Path, "mkdir")]
    kill_points = 0
    for k in range(40):
        run = tmp_path / f"k{k}"
        shutil.copytree(ref, run)
        calls = []
        for owner, name in operations:
            real = getattr(owner, name)

            def dying(*args, _real=real, _calls=calls, _k=k, **kwargs):
                _calls.append(1)
                if len(_calls) > _k:
                    raise Killed
                return _real(*args, **kwargs)
            monkeypatch.setattr(owner, name, dying)
        try:
            train.save_checkpoint(run, model, opt, sched, 6, [0.1] * 6)
            finished = True
        except Killed:
            finished, kill_points = False, kill_points + 1
        finally:
            monkeypatch.undo()
        found = train.latest_checkpoint(run)
        assert found is not None, f"no complete checkpoint after a kill at operation {k}"
        step = torch.load(found / "state.pt", weights_only=True)["step"]
        assert step == (6 if finished else step) and step in (4, 6)
        safetensors.torch.load_file(found / "model.safetensors")
        if finished:
            assert step == 6 and [p.name for p in (run / "checkpoint").iterdir()] == [found.name]
            break
    assert kill_points >= 5


def test_divergence_gives_the_caller_back_the_last_good_weights(tmp_path):
    x, _ = blobs(32)
    unet = tiny_unet()

    def loss_fn(model, batch):
        from coursekit.train import noisy_batch

        x_t, t, eps = noisy_batch(tiny_scheduler(), x[batch.indices], batch.generator)
        loss = F.mse_loss(model(x_t, t).sample, eps)
        return loss * float("inf") if calls.append(1) or len(calls) == 4 else loss

    calls = []
    good = {}

    def remember(step, state):
        good[step] = {k: v.clone() for k, v in state["model"].state_dict().items()}

    with pytest.raises(train.TrainingDiverged, match=r"loss became inf at step 3.*weights of the last good step.*"
                                                     r"Lower the learning rate"):
        train.fit(unet, loss_fn, len(x), steps=8, batch_size=8, lr=1e-3, callback=remember, every=1, progress=False)
    assert max(good) == 3
    for k, v in unet.state_dict().items():
        assert torch.isfinite(v).all() and torch.equal(v, good[3][k]), k


def test_a_folder_holding_another_run_is_refused_with_the_choices(tmp_path):
    small_run(tmp_path, steps=2)
    small_run(tmp_path, steps=2)   # the same run again: it is done and resumes at its end
    with pytest.raises(train.RunMismatch, match=r"lr: 0\.001 there, 0\.01 now.*new folder.*overwrite"):
        small_run(tmp_path, steps=2, lr=1e-2)
    result = small_run(tmp_path, steps=2, lr=1e-2, overwrite=True)
    assert len(result.losses) == 2
    assert '"lr": 0.01' in (tmp_path / "run.json").read_text()


def test_ctrl_c_saves_the_finished_steps_and_the_run_resumes_from_them(tmp_path):
    import os
    import signal

    whole = small_run(tmp_path / "whole", steps=6)

    def interrupt_at_3(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(train.TrainingInterrupted, match="stopped at step 4 of 6.*resumes"):
        small_run(tmp_path / "cut", steps=6, callback=interrupt_at_3, every=1)
    assert train.latest_checkpoint(tmp_path / "cut").name == "step-00000004"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = small_run(tmp_path / "cut", steps=6)
    assert resumed.losses == whole.losses


def test_checkpoints_follow_the_clock_as_well_as_the_step_count(tmp_path):
    seen = []
    small_run(tmp_path, steps=3, checkpoint_minutes=1e-9,
              callback=lambda step, state: seen.append(train.latest_checkpoint(tmp_path).name), every=1)
    assert seen == ["step-00000001", "step-00000002", "step-00000003"]
