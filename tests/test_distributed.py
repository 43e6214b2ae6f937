"""`accelerate launch` for real: two processes on the CPU (gloo) train the same weights as one
process with the same global batch, fine-tuning included, and a two-process run interrupted
after its checkpoint resumes to the same end. (Accelerate starts two CPU processes with
`--multi_gpu --num_processes 2` and no visible GPU; its `--cpu` launcher needs MPI for more than one.)"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coursekit import finetune, models, train
from tests.helpers import tiny_unet

ROOT = Path(__file__).parent.parent
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch(*args, check=True):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([*LAUNCH, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def assert_same(a: dict, b: dict, start: dict):
    """Equal within float tolerance, measured against how far training moved the weights: AdamW's
    first steps move each weight by about the learning rate whatever the size of its gradient, so a
    weight whose gradient is float noise (an attention key's bias) may differ by a few per cent of
    one update when the processes sum their gradients in another order."""
    assert a.keys() == b.keys()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 1e-3, "training moved the weights"
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0.05 * moved, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    close = sum(int(torch.isclose(a[k], b[k], atol=1e-5, rtol=1e-4).sum()) for k in a)
    assert close / sum(v.numel() for v in a.values()) > 0.999, "nearly every weight equal to float precision"


@pytest.mark.slow
def test_two_processes_interrupted_and_resumed_train_what_one_process_trains(tmp_path):
    from tests import distributed_train

    one = distributed_train.run(str(tmp_path / "one"), world=1)
    crashed = launch("tests/distributed_train.py", str(tmp_path / "two"), "2", check=False)
    assert crashed.returncode != 0 and "interrupted at step 2" in crashed.stderr
    assert torch.load(train.latest_checkpoint(tmp_path / "two") / "state.pt", weights_only=True)["step"] == 2
    resumed = launch("tests/distributed_train.py", str(tmp_path / "two"))
    assert "resuming from" in resumed.stdout + resumed.stderr
    start = tiny_unet(classes=3).state_dict()
    assert_same(load_file(str(tmp_path / "two" / "weights.safetensors")), one.best.state_dict(), start)


@pytest.mark.slow
def test_two_process_fine_tuning_matches_one_process_at_the_same_global_batch(tmp_path):
    args = ["--model", "digits-uncond", "--dataset", "digits", "--resize", "--steps", "3", "--lr", "1e-3",
            "--sample-every", "100"]
    finetune.finetune("digits-uncond", "digits", tmp_path / "one", steps=3, batch_size=8, lr=1e-3, resize=True,
                      sample_every=100, progress=False)
    launch("-m", "coursekit.finetune", *args, "--batch-size", "4", "--out", str(tmp_path / "two"))
    one, _ = models.load_model(tmp_path / "one" / "model")
    two, _ = models.load_model(tmp_path / "two" / "model")
    assert_same(two.state_dict(), one.state_dict(), models.load_model("digits-uncond")[0].state_dict())
