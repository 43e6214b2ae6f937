import pytest
import torch

from coursekit import cli, finetune, models, train


def test_refuses_a_dataset_with_other_channels():
    with pytest.raises(finetune.FinetuneError, match=r"3 channel\(s\) \(RGB\) but the model takes 1"):
        finetune.finetune("digits-uncond", "photo-crops", "/nonexistent")


def test_refuses_other_sizes_unless_asked_to_resize(tmp_path):
    with pytest.raises(finetune.FinetuneError, match=r"8x8 \(width x height\) but the model takes 16x16; pass --resize"):
        finetune.finetune("digits-uncond", "digits", tmp_path)


def test_refuses_conditional_models(tmp_path):
    with pytest.raises(finetune.FinetuneError, match="unconditional"):
        finetune.finetune("digits-cond", "digits", tmp_path, resize=True, steps=1)


def test_finetunes_logs_and_resumes(tmp_path, capsys):
    args = ["--model", "digits-uncond", "--dataset", "digits", "--resize", "--out", str(tmp_path),
            "--batch-size", "8", "--grad-accum", "2", "--sample-every", "2"]
    assert cli.main(["finetune", *args, "--steps", "2"]) == 0
    assert "fine-tuned model" in capsys.readouterr().out
    assert (tmp_path / "samples" / "step_00002.png").exists() and (tmp_path / "loss.png").exists()
    assert (tmp_path / "samples" / "step_00000.png").exists(), "a grid from before fine-tuning, to compare"
    assert torch.load(train.latest_checkpoint(tmp_path) / "state.pt", weights_only=True)["step"] == 2
    (tmp_path / "samples" / "step_00000.png").unlink()
    assert cli.main(["finetune", *args, "--steps", "4"]) == 0
    assert not (tmp_path / "samples" / "step_00000.png").exists(), "a resumed run does not redraw the start"
    state = torch.load(train.latest_checkpoint(tmp_path) / "state.pt", weights_only=True)
    assert state["step"] == 4 and len(state["losses"]) == 4
    assert "resuming from" in capsys.readouterr().out
    unet, scheduler = models.load_model(tmp_path / "model")
    base, _ = models.load_model("digits-uncond")
    assert type(scheduler).__name__ == "DDIMScheduler"
    assert any(not torch.equal(a, b) for a, b in zip(unet.parameters(), base.parameters()))


def test_finetune_loads_the_model_on_the_accelerator_device_before_its_first_sample_grid(tmp_path, monkeypatch):
    """On a GPU the first grid is drawn there too: the model goes to Accelerate's device at load."""
    from accelerate import PartialState

    from coursekit import finetune

    seen = {}
    load = models.load_model

    def spy(name, device="cpu"):
        seen["device"] = device
        return load(name, device=device)

    monkeypatch.setattr(models, "load_model", spy)
    finetune.finetune("digits-uncond", "digits", tmp_path / "run", steps=2, batch_size=8, sample_every=1, resize=True,
                      n_samples=2, progress=False)
    assert str(seen["device"]) == str(PartialState().device)
    assert (tmp_path / "run" / "samples" / "step_00000.png").exists()


def _start(out, *extra):
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "coursekit.finetune", "--model", "digits-uncond", "--dataset", "digits", "--resize",
            "--out", str(out), "--batch-size", "8", "--steps", "30", "--sample-every", "1000", "--checkpoint-every", "2",
            *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(out, proc, at_least=4, timeout=120):
    import time

    began = time.monotonic()
    while time.monotonic() - began < timeout:
        found = train.latest_checkpoint(out)
        if found is not None and int(found.name.split("-")[1]) >= at_least:
            return int(found.name.split("-")[1])
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_killing_fine_tuning_at_any_moment_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path):
    """A real run killed with SIGKILL (no chance to save) and one stopped with Ctrl-C (saves at once):
    rerun, each resumes and ends with exactly the weights of a run that was never interrupted."""
    import signal

    from safetensors.torch import load_file

    whole = _start(tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.communicate()

    killed = _start(tmp_path / "killed")
    seen = _wait_for_checkpoint(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    kept = int(train.latest_checkpoint(tmp_path / "killed").name.split("-")[1])
    assert kept >= seen, "a kill loses only the steps since the last checkpoint (every 2 here)"

    stopped = _start(tmp_path / "stopped")
    seen = _wait_for_checkpoint(tmp_path / "stopped", stopped)
    stopped.send_signal(signal.SIGINT)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 130 and "the same command resumes" in err, err
    kept_at_stop = int(train.latest_checkpoint(tmp_path / "stopped").name.split("-")[1])
    assert kept_at_stop >= seen

    for name, step in (("killed", kept), ("stopped", kept_at_stop)):
        again = _start(tmp_path / name)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        assert f"at step {step}" in out + err
        ours = load_file(str(tmp_path / name / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
        ref = load_file(str(tmp_path / "whole" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
        assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref), name


def test_a_run_folder_holding_another_run_is_refused_by_the_command(tmp_path, capsys):
    args = ["--model", "digits-uncond", "--dataset", "digits", "--resize", "--out", str(tmp_path),
            "--batch-size", "8", "--steps", "1", "--sample-every", "1"]
    assert cli.main(["finetune", *args]) == 0
    with pytest.raises(SystemExit, match=r"holds another run \(lr: 0.0001 there, 0.001 now\).*--overwrite"):
        cli.main(["finetune", *args, "--lr", "1e-3"])
    assert cli.main(["finetune", *args, "--lr", "1e-3", "--overwrite"]) == 0


def test_a_rectangular_model_fine_tunes(tmp_path):
    """A 16x8 model (a spectrogram's mel rows by frames, say) takes resized 8x8 digits as 16x8."""
    from tests.helpers import save_pipeline_layout, tiny_scheduler, tiny_unet

    folder = save_pipeline_layout(tmp_path / "rect", tiny_unet(size=(16, 8)), tiny_scheduler())
    with pytest.raises(finetune.FinetuneError, match=r"8x8 \(width x height\) but the model takes 8x16"):
        finetune.finetune(str(folder), "digits", tmp_path / "refused", steps=1)
    out = finetune.finetune(str(folder), "digits", tmp_path / "run", steps=2, batch_size=8, resize=True, n_samples=2,
                            sample_every=1, progress=False)
    unet, _ = models.load_model(out)
    assert list(unet.config.sample_size) == [16, 8]
