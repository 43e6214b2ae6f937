import pytest
import torch

from coursekit import cli, finetune, models


def test_refuses_a_dataset_with_other_channels():
    with pytest.raises(finetune.FinetuneError, match=r"3 channel\(s\) \(RGB\) but the model takes 1"):
        finetune.finetune("digits-uncond", "photo-crops", "/nonexistent")


def test_refuses_other_sizes_unless_asked_to_resize(tmp_path):
    with pytest.raises(finetune.FinetuneError, match=r"8x8 but the model takes 16x16; pass --resize"):
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
    assert torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)["step"] == 2
    (tmp_path / "samples" / "step_00000.png").unlink()
    assert cli.main(["finetune", *args, "--steps", "4"]) == 0
    assert not (tmp_path / "samples" / "step_00000.png").exists(), "a resumed run does not redraw the start"
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
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
