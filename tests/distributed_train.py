"""Run by tests/test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` with no
GPU visible, so two gloo processes on the CPU: train.train on a fixed toy set with a global batch
of 8, checkpointing every 2 steps. A second argument K stops the main process at step K, as an
interruption would; the main process saves the final weights."""
import sys

import torch
from safetensors.torch import save_file

from coursekit import train
from tests.helpers import tiny_scheduler, tiny_unet

GLOBAL_BATCH, STEPS = 8, 4


def toy():
    g = torch.Generator().manual_seed(0)
    return torch.rand(32, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 3, (32,), generator=g)


def run(out: str, world: int, crash_at: int | None = None):
    images, labels = toy()

    def crash(step, state):
        if step == crash_at:
            raise SystemExit(f"interrupted at step {step}")

    result = train.train(tiny_unet(classes=3), tiny_scheduler(), images, labels, steps=STEPS,
                         batch_size=GLOBAL_BATCH // world, lr=3e-3, warmup=1, p_uncond=0.2, ema_decay=0.9, seed=3,
                         out_dir=out, checkpoint_every=2, callback=crash if crash_at else None, every=1, progress=False)
    return result


if __name__ == "__main__":
    from accelerate import PartialState

    out, crash_at = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None
    state = PartialState(cpu=True)
    assert state.num_processes == 2 and state.distributed_type.value == "MULTI_CPU", state
    result = run(out, state.num_processes, crash_at)
    if state.is_main_process:
        save_file({k: v.contiguous() for k, v in result.best.state_dict().items()}, f"{out}/weights.safetensors")
