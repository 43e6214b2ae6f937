"""The counting functions of benchmarks/full_track_memory.py: saved activations, live memory,
parameter/gradient/optimizer bytes and FLOPs, checked against sums worked out by hand from
shapes and against the same run on the CPU."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ftm():
    name = "full_track_memory"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "full_track_memory.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module           # dataclasses look the module up while it loads
        spec.loader.exec_module(module)
    return sys.modules[name]


F32 = 4


def mlp(device):
    torch.manual_seed(0)
    with torch.device(device):
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def convnet(device):
    torch.manual_seed(0)
    with torch.device(device):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 2, 1))


def saved_bytes(ftm, model, x):
    with ftm.SavedTensors(exclude=[*model.parameters(), *model.buffers()]) as saved:
        model(x).sum()
        return saved.bytes


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_saved_activations_of_an_mlp_are_the_sum_from_its_shapes(ftm, device):
    n = 5
    x = torch.randn(n, 8, device=device)
    # Linear 1 keeps its input (n x 8) for the weight's gradient; ReLU keeps its output (n x 16),
    # which is also what Linear 2 keeps: one storage, counted once. Weights are left out.
    assert saved_bytes(ftm, mlp(device), x) == (n * 8 + n * 16) * F32


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_saved_activations_of_a_convnet_are_the_sum_from_its_shapes(ftm, device):
    x = torch.randn(2, 3, 8, 8, device=device)
    # conv 1 keeps its input (2x3x8x8), SiLU its input (2x4x8x8), conv 2 its input (2x4x8x8)
    assert saved_bytes(ftm, convnet(device), x) == (2 * 3 * 64 + 2 * 4 * 64 + 2 * 4 * 64) * F32


def test_nothing_is_saved_without_grad(ftm):
    with torch.no_grad():
        assert saved_bytes(ftm, convnet("cpu"), torch.randn(2, 3, 8, 8)) == 0


def test_tensors_sharing_a_storage_are_counted_once(ftm):
    x = torch.randn(6, 10, requires_grad=True)
    with ftm.SavedTensors() as saved:
        y = x.exp()                 # exp keeps its result y
        (y[:3] * y[3:]).sum()       # mul keeps both operands: two views of y's storage
        assert saved.bytes == y.untyped_storage().nbytes() == 6 * 10 * F32
        assert len(saved.sizes) == 1


def test_excluded_storages_and_their_views_are_left_out(ftm):
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    with ftm.SavedTensors() as everything:
        layer(x)
        with_weight = everything.bytes
    with ftm.SavedTensors(exclude=list(layer.parameters())) as activations:
        layer(x)
        without_weight = activations.bytes
    # addmm keeps the input (for the weight's gradient) and the transposed weight (for the
    # input's), a view of the weight's storage
    assert with_weight - without_weight == layer.weight.numel() * F32
    assert without_weight == x.numel() * F32


def test_meta_and_cpu_counts_agree_on_a_unet_training_step(ftm):
    from diffusers import UNet2DModel

    config = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                  norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False)
    results = {}
    for device in ("cpu", "meta"):
        torch.manual_seed(0)
        with torch.device(device):
            unet = UNet2DModel(**config)

        def step(unet=unet, device=device):
            x = torch.randn(2, 3, 16, 16, device=device)
            out = unet(x, torch.full((2,), 10, device=device)).sample
            ((out - x) ** 2).mean().backward()

        results[device] = ftm.measure(step, exclude=[*unet.parameters(), *unet.buffers()], device_type=device)
    cpu, meta = results["cpu"], results["meta"]
    assert cpu.saved > 0 and cpu.live > cpu.saved
    assert (meta.saved, meta.live, meta.flops, meta.kernels) == (cpu.saved, cpu.live, cpu.flops, cpu.kernels)


def test_live_memory_peak_of_a_chain_is_the_widest_pair(ftm):
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x = torch.randn(5, 8)           # made outside: not counted
    with torch.no_grad(), ftm.LiveMemory() as live:
        out = model(x)
        x.add_(1.0)                 # in place: no new storage
    a = b = 5 * 32 * F32            # Linear 1's output and ReLU's output, alive together inside ReLU
    c = 5 * 4 * F32
    assert live.peak == max(a + b, b + c)
    assert live.live == c           # only the returned output is still alive
    del out
    assert live.live == 0


def test_live_memory_follows_a_backward_pass(ftm):
    model = mlp("cpu")
    x = torch.randn(5, 8)
    with ftm.LiveMemory() as live:
        model(x).sum().backward()
    grads = sum(p.numel() for p in model.parameters()) * F32
    assert live.live == grads       # what survives the step: the parameters' gradients
    assert live.peak > grads


def test_parameter_gradient_and_adamw_bytes_of_a_known_model(ftm):
    model = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.Linear(5, 3))
    n = 10 * 5 + 5 + 5 * 3 + 3
    assert ftm.param_bytes(model) == n * F32
    assert ftm.grad_bytes(model) == n * F32
    assert ftm.adamw_bytes(model) == 2 * n * F32

    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 10)).sum().backward()
    optimizer.step()
    states = [s[k] for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert ftm.storage_bytes(states) == ftm.adamw_bytes(model)
    assert ftm.storage_bytes([p.grad for p in model.parameters()]) == ftm.grad_bytes(model)

    model[1].requires_grad_(False)  # frozen parameters take no gradient and no AdamW state
    assert ftm.grad_bytes(model) == (10 * 5 + 5) * F32
    assert ftm.adamw_bytes(model) == 2 * (10 * 5 + 5) * F32
    assert ftm.param_bytes(model) == n * F32


def test_shared_parameters_are_counted_once(ftm):
    a = torch.nn.Linear(4, 4, bias=False)
    b = torch.nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    assert ftm.param_bytes(torch.nn.ModuleList([a, b])) == 16 * F32


def test_flops_are_flop_counter_modes(ftm):
    from torch.utils.flop_counter import FlopCounterMode

    model, x = convnet("cpu"), torch.randn(2, 3, 8, 8)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    with ftm.LiveMemory() as live:
        model(x).sum().backward()
    assert live.flops == counter.get_total_flops() > 0
    # conv 1 forward by hand: 2 FLOPs per multiply-add, 2x4x8x8 outputs of 3x3x3 products each
    with torch.no_grad(), ftm.LiveMemory() as live:
        model[0](x)
    assert live.flops == 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)


def test_t4_attention_keeps_no_attention_matrix(ftm):
    heads, length, dim = 2, 64, 8
    q, k, v = (torch.randn(1, heads, length, dim, device="meta", requires_grad=True) for _ in range(3))
    matrix = heads * length * length * F32

    def attend():
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum()

    with ftm.SavedTensors() as math_path:
        attend()
        math_saved = math_path.bytes
    efficient = ftm.measure(attend)
    assert math_saved >= matrix                      # the math path keeps the softmax
    assert efficient.saved < matrix                  # q, k, v, output and log-sum-exp only
    with ftm.t4_attention():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert out.shape == (1, heads, length, dim)
    assert torch.nn.functional.scaled_dot_product_attention is ftm._SDPA   # restored


def test_gradient_checkpointing_lowers_what_is_saved(ftm):
    from diffusers import UNet2DModel

    config = dict(sample_size=16, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(8, 16),
                  norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False)
    plain = ftm.train_step_measure(ftm.meta_module(lambda: UNet2DModel(**config)), 4)
    ckpt = ftm.train_step_measure(ftm.meta_module(lambda: UNet2DModel(**config)), 4, checkpointing=True)
    assert ckpt.saved < plain.saved
    assert ckpt.flops > plain.flops                  # each block runs forward again in backward


def test_row_peak_adds_the_allowances(ftm):
    row = ftm.Row("nb", "cell", "1", "infer", params=2e9, saved=0, live=1e9, baseline=2e9, resident=1e9)
    assert row.peak == pytest.approx(ftm.CONTEXT + (1 + ftm.SLACK) * 4e9)
    assert not row.over
    row.live = 20e9
    assert row.over


def test_notebook_constants_are_read_from_the_cell_source(ftm):
    source = ("plan = {'ddim': [3, 5]}\nn_compare = 128\n"
              "guided = guidance.guided_sample(u, s, x, guidance.clip_loss(p, clip, cuts=8), scale=1)\n"
              "score = guidance.clip_loss(p, clip, cuts=16)")
    assert ftm.assigned(source, "n_compare") == 128
    assert ftm.assigned(source, "plan") == {"ddim": [3, 5]}
    assert ftm.guided_clip_cuts(source) == 8


@pytest.mark.slow
def test_the_instructor_guides_t4_table_is_what_the_estimate_writes_today(ftm, tmp_path):
    """The whole estimate runs on the notebooks' current settings and coursekit's current code,
    and writes the same table the instructor guide shows (a change to either that moves a number
    must refresh the guide with `--guide units/README.md`)."""
    guide = tmp_path / "README.md"
    guide.write_text((ROOT / "units" / "README.md").read_text())
    threads = torch.get_num_threads()
    try:
        assert ftm.main(["--guide", str(guide), "--out", str(tmp_path / "memory.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert guide.read_text() == (ROOT / "units" / "README.md").read_text()
