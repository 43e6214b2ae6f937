"""Peak GPU memory and time of the full track's heavy cells on a 16 GB NVIDIA T4, estimated on a CPU.

    .venv/bin/python benchmarks/full_track_memory.py            # table + build/full_track_memory.json

Nothing real is allocated: every model is built with its real architecture (the configs the
rehearsal's stand-ins are built from, `coursekit.standins.real_config`, with their sources)
under ``with torch.device("meta")``, so its weights are shapes without data,
and each heavy cell's work (one training micro-step, one UNet call, one guidance gradient) runs on
meta tensors at the notebook's real batch and resolution. The settings (batch sizes, sample
counts, steps) are read from each notebook's ``tracks.Settings(...)`` cell with
``coursekit.cli.notebook_settings``, and the few constants a cell writes inline (``n_compare``,
the sampler plan, CLIP's ``cuts``) from that cell's source, so the figures follow the notebooks.

How each figure is obtained
- params, grads, optimizer: bytes of the parameters (and buffers) of the models the cell runs;
  gradients: one tensor per trainable parameter; AdamW: two fp32 tensors per trainable
  parameter (``exp_avg``, ``exp_avg_sq``; the scalar ``step`` lives on the CPU).
- saved: the activations autograd keeps for backward, counted with
  ``torch.autograd.graph.saved_tensors_hooks``: every packed tensor's storage, each storage
  counted once (views and tensors saved twice share it), parameters and buffers left out.
- live: the peak of the bytes alive at once during the cell's step, tracked by a
  ``TorchDispatchMode`` (``LiveMemory``): each operator output with a storage no input has is a
  new allocation, and a finaliser on that storage subtracts it when the storage dies. It sees
  what autograd saves, gradient tensors, recomputation under gradient checkpointing and the
  temporaries of the AdamW step and of gradient clipping. For inference cells (no grad) it is
  the largest set of activations alive together: skip connections, concatenations, the
  in-flight tensors of the widest layer.
- resident: weights (and optimizer states) of other models the notebook still holds on the GPU
  at that cell (the pretrained UNet beside the fine-tuned copy, CLIP, the demo model, ...).
- peak = CONTEXT + (1 + SLACK) * (resident + max(params + grads + optimizer + saved,
  tensors present at the step's start + live)). CONTEXT (0.5 GB) stands for the CUDA context
  and the cuBLAS/cuDNN handles; SLACK (10%) for the caching allocator's rounding and
  fragmentation and for cuDNN convolution workspaces. A row is flagged when peak > 15 GB.
- attention: on a T4 (sm75) PyTorch's scaled_dot_product_attention picks the memory-efficient
  kernel (flash attention needs sm80), which never stores the attention matrix; on meta tensors
  SDPA would take the math path and materialise it, so ``t4_attention()`` routes meta SDPA to
  ``aten._scaled_dot_product_efficient_attention`` (its own meta shape function, autograd
  formula and FLOP formula).
- FLOPs: the formulas of ``torch.utils.flop_counter`` (FlopCounterMode's registry: matmuls,
  convolutions, attention; forward and backward; 2 FLOPs per multiply-add), applied by the
  same dispatch mode on the same meta run. FlopCounterMode itself gives the same totals (the
  tests check it) but its module tracker rejects ``torch.autograd.grad`` with respect to a
  leaf input, which loss guidance uses.
- T4 seconds, per call: max(FLOPs / (8.1e12 * UTILISATION), kernels * 10 us), where 8.1 TFLOPS
  is the T4's fp32 peak, UTILISATION = 0.35 and kernels is the number of non-view operators the
  call dispatches (eager PyTorch launches them one by one; small models are launch-bound).
  Training adds, per optimizer step, AdamW and gradient clipping as memory-bound work
  (48 bytes per parameter at 70% of 320 GB/s) and 2 ms of loop overhead per micro-step; the
  fine-tuning command adds its checkpoints (weights + AdamW state) written at 150 MB/s. Cell
  seconds = per-call seconds x calls as the notebook makes them (steps x runs).
  Why 35% (an assumption, not a measurement): only matmul/convolution/attention FLOPs are
  counted. A T4 has no TF32, so fp32 work runs on its CUDA cores, and the 8.1 TFLOPS figure
  is at the 1.59 GHz boost clock, which a 70 W card does not hold under sustained load (take
  about 80% of it, ~6.5 TFLOPS). cuDNN's fp32 convolutions at these layer sizes (3x3, 128-512
  channels, 16-256 px) are assumed to reach about 70% of that, and the UNets' uncounted,
  memory-bound work (GroupNorm, SiLU, residual adds, concatenation, upsampling at 320 GB/s)
  to take about a third of the time: 0.8 x 0.7 x 0.65 = 0.36, rounded to 0.35. The plausible
  band is 0.25-0.5 (seconds x1.4 to x0.7); a GPU run's measurement should replace it.

What the figures leave out
- Measured GPU behaviour: allocator fragmentation, cuDNN's workspace choices and the real CUDA
  context size are allowances (CONTEXT, SLACK), not measurements.
- Host memory, data loading, Hub downloads, and CPU work in the cells (FD metrics, judges,
  Griffin-Lim audio, plotting); the text encoder's and scheduler's small per-step work.
- Small-batch calls of the same cells (probes, 4-image checks, widgets, the Gradio demo).
- Unit 4 notebook 3's full track uses the small zoo model: reported as small, not estimated.

Rows over 15 GB get the same measurement under settings that fit: gradient checkpointing
(``unet.enable_gradient_checkpointing()``: the live tracker then sees each block recomputed in
backward), smaller micro-batches with more accumulation, chunks of images, or fp16 weights
for sampling; "weights frozen" is shown for guidance because it does not help (autograd saves
a convolution's input whether or not its weight needs a gradient).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import sys
import time
import weakref
from pathlib import Path

import torch
import torch.utils._pytree
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GB = 1e9
LIMIT = 15e9                   # usable memory of a 16 GB T4
CONTEXT = 0.5e9                # CUDA context + cuBLAS/cuDNN handles and workspaces
SLACK = 0.10                   # caching-allocator rounding/fragmentation, conv workspaces
T4_FP32_PEAK = 8.1e12          # FLOP/s
UTILISATION = 0.35             # share of the fp32 peak reached on the counted FLOPs
UTILISATION_BAND = (0.25, 0.5)
KERNEL_OVERHEAD_S = 10e-6      # eager launch cost per non-view operator
T4_BANDWIDTH = 320e9           # B/s
BANDWIDTH_UTILISATION = 0.7
OPTIMIZER_BYTES_PER_PARAM = 48  # AdamW (param, grad, two states, temporaries) + clip_grad_norm_
LOOP_OVERHEAD_S = 2e-3         # per training micro-step: noise draw, batch gather, copy, loss.item()
DISK_BYTES_PER_S = 150e6       # checkpoint writes

# --------------------------------------------------------------------------------------------
# Counting functions (used by tests/test_memory_estimate.py)
# --------------------------------------------------------------------------------------------


def storage_key(t: torch.Tensor) -> int:
    """An id of the storage behind `t`, shared by all its views (valid while the storage lives)."""
    return t.untyped_storage()._cdata


def storage_bytes(tensors, device_type: str | None = None) -> int:
    """Bytes of the distinct storages behind `tensors` (optionally only those on `device_type`)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        if device_type is not None and t.device.type != device_type:
            continue
        key = storage_key(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def param_bytes(*modules: torch.nn.Module) -> int:
    """Parameters and buffers of `modules`, shared storages counted once."""
    return storage_bytes([t for m in modules for t in (*m.parameters(), *m.buffers())])


def trainable(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def grad_bytes(*modules: torch.nn.Module) -> int:
    """What the gradients of the trainable parameters take (one tensor each, the parameter's dtype)."""
    return sum(p.numel() * p.element_size() for p in trainable(*modules))


def adamw_bytes(*modules: torch.nn.Module) -> int:
    """AdamW's state: exp_avg and exp_avg_sq, two fp32 tensors per trainable parameter."""
    return sum(2 * p.numel() * 4 for p in trainable(*modules))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, device_type: str | None = None) -> int:
    """Bytes of the tensors an optimizer actually holds (after its first step)."""
    return storage_bytes([v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)],
                         device_type)


class SavedTensors:
    """Context manager: the activations autograd saves for backward inside it.

    Every tensor autograd packs goes through `saved_tensors_hooks`; its storage is counted once
    (views and tensors saved by several operators share a storage), and storages of
    `exclude` (parameters, buffers) are left out. The packed tensors are held until exit, so
    storage ids stay unique.
    """

    def __init__(self, exclude=()):
        self.exclude = {storage_key(t) for t in exclude}
        self.sizes: dict[int, int] = {}
        self._held: list[torch.Tensor] = []
        self._hooks = None

    def _pack(self, t):
        key = storage_key(t)
        if key not in self.exclude and key not in self.sizes:
            self.sizes[key] = t.untyped_storage().nbytes()
            self._held.append(t)
        return t

    @staticmethod
    def _unpack(t):
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        self._held.clear()
        return False

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def largest(self) -> int:
        return max(self.sizes.values(), default=0)


class LiveMemory(TorchDispatchMode):
    """Peak bytes of tensor storages allocated inside the context and alive at the same time.

    An operator output whose storage is not one of its inputs' storages (nor already tracked)
    is a new allocation; a finaliser on the storage object (PyTorch keeps one Python object per
    storage alive as long as the storage) subtracts it when the storage is freed. Storages that
    existed before the context (weights, inputs made outside) are never counted. Works on any
    device, meta included. `kernels` counts the non-view operators dispatched, and `flops` their
    FLOPs by the formulas of `torch.utils.flop_counter` (FlopCounterMode's own registry: FlopCounterMode
    itself cannot run here, because its module tracker refuses `torch.autograd.grad` with respect
    to a leaf input, which is what loss guidance does).
    """

    def __init__(self, device_type: str | None = None):
        from torch.utils.flop_counter import flop_registry

        super().__init__()
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        self.kernels = 0
        self.ops = 0
        self.flops = 0
        self._registry = flop_registry
        self._tracked: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self._tracked.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        formula = self._registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        if not func.is_view and func is not torch.ops.aten.detach.default:
            self.kernels += 1
        flat_in, _ = torch.utils._pytree.tree_flatten((args, kwargs))
        inputs = {storage_key(t) for t in flat_in if isinstance(t, torch.Tensor)}
        flat_out, _ = torch.utils._pytree.tree_flatten(out)
        for t in flat_out:
            if not isinstance(t, torch.Tensor):
                continue
            if self.device_type is not None and t.device.type != self.device_type:
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in inputs or key in self._tracked:
                continue
            n = st.nbytes()
            self._tracked.add(key)
            self.live += n
            weakref.finalize(st, self._free, key, n)
        self.peak = max(self.peak, self.live)
        return out


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _t4_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if query.device.type != "meta" or query.dim() != 4 or dropout_p or enable_gqa:
        return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                     scale=scale, enable_gqa=enable_gqa)
    bias = attn_mask
    if bias is not None:
        if bias.dtype == torch.bool:
            bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill(~bias, float("-inf"))
        bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    need_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, need_lse, 0.0, is_causal, scale=scale)[0]


@contextlib.contextmanager
def t4_attention():
    """Inside: SDPA on meta tensors uses the memory-efficient kernel a T4 would run."""
    torch.nn.functional.scaled_dot_product_attention = _t4_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = _SDPA


@dataclasses.dataclass
class Measure:
    flops: int          # FLOPs of the window (forward and backward)
    live: int           # peak bytes allocated inside the window and alive together
    saved: int          # activations saved for backward (deduplicated by storage)
    kernels: int        # non-view operators dispatched
    baseline: int = 0   # bytes on the device when the window started (weights, states, grads)


def measure(fn, *, exclude=(), device_type: str | None = "meta") -> Measure:
    """Run `fn()` once, counting FLOPs, the live-memory peak and the saved activations."""
    with t4_attention(), LiveMemory(device_type) as live, SavedTensors(exclude) as saved:
        fn()
        saved_bytes = saved.bytes
    return Measure(flops=live.flops, live=live.peak, saved=saved_bytes, kernels=live.kernels)


def seconds_per_call(flops: float, kernels: int) -> float:
    """max(compute time at the assumed utilisation, launch-bound time)."""
    return max(flops / (T4_FP32_PEAK * UTILISATION), kernels * KERNEL_OVERHEAD_S)


def optimizer_seconds(n_params: int) -> float:
    return OPTIMIZER_BYTES_PER_PARAM * n_params / (T4_BANDWIDTH * BANDWIDTH_UTILISATION)


# --------------------------------------------------------------------------------------------
# Real architectures (random weights on meta)
# --------------------------------------------------------------------------------------------

# The real configs of the full track's Hub models are the ones coursekit's stand-ins are built
# from (coursekit/hub_configs, with their sources in coursekit.standins.CONFIG_SOURCES): one
# record of each architecture for the rehearsal and for these estimates.
SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CLIP = "openai/clip-vit-base-patch32"


def _args(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def unet_config(model_id: str) -> dict:
    """The UNet2DModel config of a full-track Hub model; a clear error for one not known here."""
    from coursekit import standins

    for path in ("unet/config.json", "config.json"):
        try:
            return _args(standins.real_config(model_id, path))
        except FileNotFoundError:
            continue
    raise SystemExit(f"full_track_memory: no config recorded for {model_id!r} in coursekit/hub_configs")


def sources() -> dict:
    from coursekit import standins

    return {**standins.CONFIG_SOURCES,
            "digits-cond / digits-channels at 32 px": "coursekit.zoo.RECIPES with size=32, as the notebook builds them"}


def zoo_names() -> set[str]:
    from coursekit import zoo

    return set(zoo.recipe_names())


def meta_module(factory):
    with torch.device("meta"):
        return factory()


def unet2d(config: dict):
    from diffusers import UNet2DModel

    return meta_module(lambda: UNet2DModel(**config))


def sd_parts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from coursekit import standins

    text_config = {k: v for k, v in standins.real_config(SD, "text_encoder/config.json").items()
                   if k not in ("architectures", "_name_or_path")}
    unet = meta_module(lambda: UNet2DConditionModel(**_args(standins.real_config(SD, "unet/config.json"))))
    vae = meta_module(lambda: AutoencoderKL(**_args(standins.real_config(SD, "vae/config.json"))))
    text = meta_module(lambda: CLIPTextModel(CLIPTextConfig(**text_config)))
    return unet, vae, text


def clip_b32():
    from transformers import CLIPConfig, CLIPModel

    from coursekit import standins

    config = {k: v for k, v in standins.real_config(CLIP, "config.json").items() if k not in ("architectures", "_name_or_path")}
    return meta_module(lambda: CLIPModel(CLIPConfig(**config))).eval().requires_grad_(False)


def zoo_recipe_unet(name: str, size: int):
    from coursekit import zoo

    recipe = dataclasses.replace(zoo.RECIPES[name], size=size)
    with torch.device("meta"):
        unet, _ = zoo.build(recipe)
    return unet


def meta_randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device="meta", dtype=dtype)


# --------------------------------------------------------------------------------------------
# Windows: one training micro-step, one inference call, one guidance gradient
# --------------------------------------------------------------------------------------------


def _inner(model):
    return getattr(model, "unet", model)


def train_step_measure(model, batch: int, *, grad_accum: int = 1, labels: int | None = None,
                       checkpointing: bool = False) -> Measure:
    """One micro-step of coursekit.train.train (MSE on the noise, backward, clip, AdamW) at the
    steady state: AdamW's states exist; with grad_accum > 1 the gradients of earlier
    micro-batches are alive during the forward pass."""
    import torch.nn.functional as F

    if checkpointing:
        _inner(model).enable_gradient_checkpointing()
    model.train()
    cfg = _inner(model).config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    channels = model.config.in_channels

    def micro(step: bool, zero: bool):
        x = meta_randn(batch, channels, h, w)
        t = torch.randint(0, 1000, (batch,), device="meta")
        y = None if labels is None else torch.randint(0, labels, (batch,), device="meta")
        pred = model(x, t, class_labels=y).sample
        loss = F.mse_loss(pred, meta_randn(batch, channels, h, w))
        loss.backward()
        if step:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        if zero:
            optimizer.zero_grad()

    # foreach=True: what AdamW picks on CUDA (on meta it would default to the per-tensor loop)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, foreach=True)
    micro(step=True, zero=grad_accum == 1)      # creates AdamW's states (and keeps grads when accumulating)
    baseline = param_bytes(model) + optimizer_state_bytes(optimizer, "meta") + \
        storage_bytes([p.grad for p in model.parameters()], "meta")
    exclude = [*model.parameters(), *model.buffers()]
    m = measure(lambda: micro(step=True, zero=True), exclude=exclude)
    m.baseline = baseline
    return m


def infer_measure(models, call) -> Measure:
    """One no-grad call (`call()` makes its own inputs, so they count as allocations)."""
    exclude = [t for mod in models for t in (*mod.parameters(), *mod.buffers())]

    def run():
        with torch.no_grad():
            call()

    m = measure(run, exclude=exclude)
    m.baseline = param_bytes(*models)
    return m


def grad_measure(models, call) -> Measure:
    exclude = [t for mod in models for t in (*mod.parameters(), *mod.buffers())]
    m = measure(call, exclude=exclude)
    m.baseline = param_bytes(*models)
    return m


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    notebook: str
    cell: str
    batch: str
    kind: str                  # train | grad | infer | small
    params: float = 0.0        # bytes
    grads: float = 0.0
    optimizer: float = 0.0
    saved: float = 0.0
    live: float = 0.0
    baseline: float = 0.0
    resident: float = 0.0
    gflops_per_call: float = 0.0
    kernels_per_call: int = 0
    calls: int = 0
    seconds: float = 0.0
    note: str = ""
    model: str = ""
    alternatives: list = dataclasses.field(default_factory=list)

    @property
    def tensors(self) -> float:
        return self.resident + max(self.params + self.grads + self.optimizer + self.saved,
                                   self.baseline + self.live)

    @property
    def peak(self) -> float:
        return 0.0 if self.kind == "small" else CONTEXT + (1 + SLACK) * self.tensors

    @property
    def over(self) -> bool:
        return self.peak > LIMIT

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(peak=self.peak, over_limit=self.over, tensors=self.tensors)
        return d


def fill(row: Row, m: Measure, *, train_models=(), used_models=(), resident: float = 0.0,
         calls: list[tuple[int, float]] = (), per_step_extra_s: float = 0.0, extra_s: float = 0.0) -> Row:
    """Fill `row` from a measurement. `calls` is [(count, batch_scale)]: each call's FLOPs scale
    linearly with its batch relative to the measured one."""
    models = list(used_models) or list(train_models)
    row.params = param_bytes(*models) if models else m.baseline
    row.grads = grad_bytes(*train_models)
    row.optimizer = adamw_bytes(*train_models)
    row.saved = m.saved
    row.live = m.live
    row.baseline = m.baseline
    row.resident = resident
    row.gflops_per_call = m.flops / 1e9
    row.kernels_per_call = m.kernels
    row.calls = sum(count for count, _ in calls)
    seconds = 0.0
    for count, scale in calls:
        seconds += count * (seconds_per_call(m.flops * scale, m.kernels) + per_step_extra_s)
    row.seconds = seconds + extra_s
    return row


def cell_source(path: Path, contains: str) -> str:
    import nbformat

    for cell in nbformat.read(str(path), as_version=4).cells:
        if cell.cell_type == "code" and contains in cell.source:
            return cell.source
    raise ValueError(f"{path}: no code cell contains {contains!r}")


def assigned(source: str, name: str):
    """The literal value assigned to `name` at the top level of a cell's source."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"no literal assignment to {name!r}")


def guided_clip_cuts(source: str) -> int:
    """`cuts` of the clip_loss handed to guidance.guided_sample in the notebook's CLIP cell."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "guided_sample":
            for arg in node.args:
                if isinstance(arg, ast.Call) and getattr(arg.func, "attr", None) == "clip_loss":
                    for kw in arg.keywords:
                        if kw.arg == "cuts":
                            return ast.literal_eval(kw.value)
    raise ValueError("no guidance.guided_sample(..., clip_loss(..., cuts=N), ...) in the CLIP cell")


def settings(path: Path) -> dict:
    from coursekit.cli import notebook_settings

    return {k: v[1] for k, v in notebook_settings(path).items()}


def n_params(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


# ---- Unit 1 ---------------------------------------------------------------------------------


def unit1_rows(units: Path) -> list[Row]:
    from coursekit import samplers

    nb = units / "unit1" / "01_ddpm_and_ddim.ipynb"
    S = settings(nb)
    plan = assigned(cell_source(nb, "plan = {"), "plan")
    n_compare = S.get("n_compare") or assigned(cell_source(nb, "n_compare ="), "n_compare")
    name = nb.relative_to(units.parent).as_posix()
    rows = []

    config = unet_config(S["model"])
    butterflies = unet2d(config).eval()
    widths = tuple(S["demo_widths"])
    # the demo model trains at demo_size, with the pretrained model's channels
    size = S.get("demo_size", config["sample_size"])
    channels = S.get("channels", config["in_channels"])
    tiny_config = dict(sample_size=size, in_channels=channels, out_channels=channels,
                       layers_per_block=1, block_out_channels=widths, norm_num_groups=8,
                       down_block_types=("DownBlock2D",) * len(widths), up_block_types=("UpBlock2D",) * len(widths))

    tiny = unet2d(tiny_config)
    m = train_step_measure(tiny, S["batch_size"])
    rows.append(fill(Row(name, "tiny demo model: train.train, AdamW", f"{S['batch_size']}", "train",
                         note=f"{S['demo_steps']} steps; {S['model']} resident"),
                     m, train_models=[tiny], resident=param_bytes(butterflies),
                     calls=[(S["demo_steps"], 1.0)],
                     per_step_extra_s=optimizer_seconds(n_params(tiny)) + LOOP_OVERHEAD_S))

    x_shape = (n_compare, config["in_channels"], config["sample_size"], config["sample_size"])
    m = infer_measure([butterflies], lambda: samplers.predict_noise(butterflies, meta_randn(*x_shape), 500))
    total_steps = sum(sum(v) for v in plan.values())
    tiny_again = unet2d(tiny_config)
    rows.append(fill(Row(name, "section 5: schedulers compared (no grad)", f"{n_compare}", "infer",
                         note=f"{total_steps} UNet calls over the plan; tiny model + its AdamW resident"),
                     m, resident=param_bytes(tiny_again) + adamw_bytes(tiny_again),
                     calls=[(total_steps, 1.0)]))
    return rows


# ---- Unit 2, notebook 1 -----------------------------------------------------------------------


def unit2_finetune_rows(units: Path, alternatives: bool) -> list[Row]:
    import inspect

    from coursekit import finetune, guidance, samplers, train

    nb = units / "unit2" / "01_finetuning_and_guidance.ipynb"
    S = settings(nb)
    name = nb.relative_to(units.parent).as_posix()
    with_clip = bool(S.get("clip_model"))
    config = unet_config(S["model"])
    size, ch = config["sample_size"], config["in_channels"]
    unet = unet2d(config)                    # the notebook's `unet` / `tuned_unet`
    one_unet = param_bytes(unet)
    steps = S["ddim_steps"]
    rows = []

    # fine-tuning: coursekit.finetune -> train.train, micro-batch batch_size, grad_accum micro-steps
    bs, acc, ft_steps = S["batch_size"], S["grad_accum"], S["finetune_steps"]
    grid_n = S.get("grid_samples") or inspect.signature(finetune.finetune).parameters["n_samples"].default
    every_s = 60 * inspect.signature(train.train).parameters["checkpoint_minutes"].default
    model = unet2d(config)

    def finetune_row(batch, accum, checkpointing=False):
        m = unet2d(config)
        meas = train_step_measure(m, batch, grad_accum=accum, checkpointing=checkpointing)
        args = dict(train_models=[m], resident=one_unet, calls=[(ft_steps * accum, 1.0)],
                    per_step_extra_s=optimizer_seconds(n_params(m)) / accum + LOOP_OVERHEAD_S)
        training_s = fill(Row(name, "", "", "train"), meas, **args).seconds
        n_ckpt = 1 + int(training_s // every_s)                      # one per checkpoint_minutes, and the last
        ckpt_s = n_ckpt * 3 * one_unet / DISK_BYTES_PER_S            # weights + two AdamW states
        return fill(Row(name, "fine-tuning (coursekit.finetune), AdamW", f"{batch} x{accum} accum", "train",
                        note=f"{ft_steps} steps x {accum} micro-batches; pretrained UNet resident; "
                             f"{n_ckpt} checkpoints"), meas, **args, extra_s=ckpt_s)

    row = finetune_row(bs, acc)
    if alternatives and row.over:
        row.alternatives = train_alternatives(lambda b, a, c: finetune_row(b, a, c), bs, acc)
    rows.append(row)

    # sample grids during fine-tuning: grid_samples images, 25 DDIM steps, with AdamW states resident
    m = infer_measure([model], lambda: samplers.predict_noise(model, meta_randn(grid_n, ch, size, size), 500))
    n_grids = 1 + ft_steps // S["sample_every"]
    rows.append(fill(Row(name, "fine-tuning: sample grids (no grad)", f"{grid_n}", "infer",
                         note=f"{n_grids} grids x 25 DDIM steps; AdamW states + pretrained UNet resident"),
                     m, resident=one_unet + adamw_bytes(model), calls=[(n_grids * 25, 1.0)]))

    # DDIM sampling of n_samples, no grad: cell 6 (before), cell 19 (after and first), cell 24
    # (scale 0, both variants: plain sampling), cell 30 (plain, with CLIP)
    n = S["n_samples"]
    runs = 5 + with_clip
    m = infer_measure([unet], lambda: samplers.predict_noise(unet, meta_randn(n, ch, size, size), 500))
    clip_resident = param_bytes(clip_b32()) if with_clip else 0
    rows.append(fill(Row(name, "DDIM sampling, n_samples (no grad)", f"{n}", "infer",
                         note=f"{runs} runs x {steps} steps; 2nd UNet" + (" + CLIP" if with_clip else "")
                              + " resident"),
                     m, resident=one_unet + clip_resident, calls=[(runs * steps, 1.0)]))

    # DDIM sampling of n_measure at once (cells 10 and 19)
    def measure_row(batch, half=False):
        u = unet2d(config)
        dtype = torch.float32
        if half:
            u = u.half()
            dtype = torch.float16
        meas = infer_measure([u], lambda: samplers.predict_noise(u, meta_randn(batch, ch, size, size, dtype=dtype), 500))
        chunks = -(-S["n_measure"] // batch)
        return fill(Row(name, "DDIM sampling, n_measure at once (no grad)" + (", fp16" if half else ""),
                        f"{batch}", "infer",
                        note=f"2 runs x {steps} steps" + (f" x {chunks} chunks" if chunks > 1 else "")
                             + "; the other UNet resident"),
                    meas, resident=param_bytes(u), calls=[(2 * steps * chunks, 1.0)])

    row = measure_row(S["n_measure"])
    if alternatives and row.over:
        row.alternatives = infer_alternatives(measure_row, S["n_measure"])
    rows.append(row)

    # colour guidance, gradient through the UNet (cell 24, through=True, the non-zero scales)
    scales = [s for s in S["colour_scales"] if s]
    loss = guidance.colour_loss(S["colour"])
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler()

    def colour_row(batch, frozen=False, checkpointing=False):
        u = unet2d(config).eval()
        if frozen:
            u.requires_grad_(False)
        if checkpointing:
            u.enable_gradient_checkpointing()
        meas = grad_measure([u], lambda: guidance.guidance_gradient(
            u, ddim, meta_randn(batch, ch, size, size), 500, loss, through_unet=True))
        label = "colour guidance through the UNet" + (", weights frozen" if frozen else "") + \
            (", grad. checkpointing" if checkpointing else "")
        chunks = -(-n // batch)
        return fill(Row(name, label, f"{batch}", "grad",
                        note=f"{len(scales)} scales x {steps} steps" + (f" x {chunks} chunks" if chunks > 1 else "")
                             + "; pretrained UNet resident"),
                    meas, resident=one_unet, calls=[(len(scales) * steps * chunks, 1.0)])

    row = colour_row(n)
    if alternatives and row.over:
        row.alternatives = grad_alternatives(colour_row, n)
    rows.append(row)

    m = grad_measure([unet], lambda: guidance.guidance_gradient(
        unet, ddim, meta_randn(n, ch, size, size), 500, loss, through_unet=False))
    rows.append(fill(Row(name, "colour guidance through x only", f"{n}", "grad",
                         note=f"{len(scales)} scales x {steps} steps; pretrained UNet resident"),
                     m, resident=one_unet, calls=[(len(scales) * steps, 1.0)]))

    # classifier guidance (cell 29): a zoo model, on both tracks
    if S.get("guided_model") in zoo_names():
        rows.append(Row(name, f"classifier guidance on the zoo's {S['guided_model']}", "-", "small",
                        note="small model; not estimated"))
    if not with_clip:
        return rows

    # CLIP guidance through the UNet (cell 30): cuts cut-outs per image through CLIP ViT-B/32
    cuts = guided_clip_cuts(cell_source(nb, "guidance.clip_loss"))

    class _Tokens(dict):
        def to(self, device):
            return self

    class _Tokenizer:
        def __call__(self, texts, **kw):
            return _Tokens(input_ids=torch.zeros(len(texts), 8, dtype=torch.long, device="meta"))

    def clip_row(batch, frozen=False, checkpointing=False):
        u = unet2d(config).eval()
        c = clip_b32()
        if frozen:
            u.requires_grad_(False)
        if checkpointing:
            u.enable_gradient_checkpointing()
        clip_fn = guidance.clip_loss(S["clip_prompt"], (c, _Tokenizer()), cuts=cuts,
                                     generator=torch.Generator().manual_seed(0))
        meas = grad_measure([u, c], lambda: guidance.guidance_gradient(
            u, ddim, meta_randn(batch, ch, size, size), 500, clip_fn, through_unet=True))
        label = f"CLIP guidance through the UNet ({cuts} cut-outs)" + (", weights frozen" if frozen else "") + \
            (", grad. checkpointing" if checkpointing else "")
        chunks = -(-n // batch)
        return fill(Row(name, label, f"{batch}", "grad",
                        note=f"{steps} steps" + (f" x {chunks} chunks" if chunks > 1 else "")
                             + "; pretrained UNet resident"),
                    meas, used_models=[u, c], resident=one_unet, calls=[(steps * chunks, 1.0)])

    row = clip_row(n, checkpointing="enable_gradient_checkpointing" in cell_source(nb, "guidance.clip_loss"))
    if alternatives and row.over:
        row.alternatives = grad_alternatives(clip_row, n)
    rows.append(row)
    return rows


# ---- Unit 2, notebook 2 -----------------------------------------------------------------------


def unit2_class_rows(units: Path) -> list[Row]:
    from coursekit import samplers

    nb = units / "unit2" / "02_class_conditioned.ipynb"
    S = settings(nb)
    name = nb.relative_to(units.parent).as_posix()
    size, bs = S["image_size"], S["batch_size"]
    rows = []
    models = {}
    for i, recipe in enumerate(("digits-channels", "digits-cond")):
        model = zoo_recipe_unet(recipe, size)
        models[recipe] = model
        m = train_step_measure(model, bs, labels=11)
        other = param_bytes(models["digits-channels"]) if i else 0
        rows.append(fill(Row(name, f"training {recipe} at {size} px, AdamW", f"{bs}", "train",
                             note=f"{S['train_steps']} steps" + ("; first model resident" if i else "")),
                         m, train_models=[model], resident=other, calls=[(S["train_steps"], 1.0)],
                         per_step_extra_s=optimizer_seconds(n_params(model)) + LOOP_OVERHEAD_S))

    n = 10 * S["per_class"]
    w = S["guidance_scale"]
    model = zoo_recipe_unet("digits-channels", size).eval()
    labels = torch.arange(10).repeat_interleave(S["per_class"])  # checked on the CPU, then moved to the model
    m = infer_measure([model], lambda: samplers.predict_noise(model, meta_randn(n, 1, size, size), 500, labels, w))
    doubled = 2 * S["ddim_steps"] + sum(1 for s in S["scales"] if s != 1.0) * S["ddim_steps"]
    single = sum(1 for s in S["scales"] if s == 1.0) * S["ddim_steps"]
    rows.append(fill(Row(name, "CFG sampling, 10 x per_class at once (no grad)", f"{n} (x2 = {2 * n})", "infer",
                         note=f"{doubled} doubled + {single} single calls (cells 24, 30); other model resident"),
                     m, resident=param_bytes(zoo_recipe_unet("digits-cond", size)),
                     calls=[(doubled, 1.0), (single, 0.5)]))
    return rows


# ---- Unit 4, notebook 1 -----------------------------------------------------------------------


def unit4_inversion_rows(units: Path) -> list[Row]:
    from coursekit.models import NoisePredictor

    nb = units / "unit4" / "01_ddim_inversion.ipynb"
    S = settings(nb)
    name = nb.relative_to(units.parent).as_posix()
    unet, vae, text = sd_parts()
    for mod in (unet, vae, text):
        mod.eval().requires_grad_(False)
    pipe = param_bytes(unet) + param_bytes(vae) + param_bytes(text)
    rows = [Row(name, "sections 1-3: zoo digit models (16 px)", "-", "small", note="small models; not estimated")]
    # the photo section's settings (older notebooks: steps / k / edit_guidance for Stable Diffusion)
    steps = S["steps"]
    step_counts = tuple(S.get("photo_step_counts") or (steps,))
    k = S.get("photo_k") or S["k"]
    w = S.get("photo_guidance") or S["edit_guidance"]

    m = infer_measure([vae], lambda: vae.encode(meta_randn(1, 3, 512, 512)).latent_dist.mean)
    rows.append(fill(Row(name, "SD v1.5 fp32: VAE encode 512x512", "1", "infer", note="whole pipeline resident"),
                     m, used_models=[vae], resident=pipe - param_bytes(vae), calls=[(1, 1.0)]))

    cond = meta_randn(1, 77, 768)
    m = infer_measure([unet], lambda: NoisePredictor(unet, text=(cond, None))(meta_randn(1, 4, 64, 64), 500))
    rows.append(fill(Row(name, "SD v1.5 fp32: DDIM inversion + reconstruction", "1", "infer",
                         note=f"inversion + denoising at {'/'.join(map(str, step_counts))} steps; "
                              "whole pipeline resident"),
                     m, used_models=[unet], resident=pipe - param_bytes(unet), calls=[(2 * sum(step_counts), 1.0)]))

    m = infer_measure([unet], lambda: NoisePredictor(unet, text=(cond, cond), guidance_scale=w)(meta_randn(1, 4, 64, 64), 500))
    rows.append(fill(Row(name, f"SD v1.5 fp32: edit with CFG {w}", "1 (x2 = 2)", "infer",
                         note=f"{k} steps from k; whole pipeline resident"),
                     m, used_models=[unet], resident=pipe - param_bytes(unet), calls=[(k, 1.0)]))

    m = infer_measure([vae], lambda: vae.decode(meta_randn(1, 4, 64, 64)).sample)
    rows.append(fill(Row(name, "SD v1.5 fp32: VAE decode to 512x512", "1", "infer",
                         note=f"{len(step_counts) + 1} decodes (reconstructions, edit); whole pipeline resident"),
                     m, used_models=[vae], resident=pipe - param_bytes(vae), calls=[(len(step_counts) + 1, 1.0)]))
    return rows


# ---- Unit 3, notebook 1 -----------------------------------------------------------------------


def unit3_sd_rows(units: Path) -> list[Row]:
    from coursekit.models import NoisePredictor

    nb = units / "unit3" / "01_stable_diffusion.ipynb"
    S = settings(nb)
    name = nb.relative_to(units.parent).as_posix()
    unet, vae, text = sd_parts()
    clip = clip_b32()
    for mod in (unet, vae, text):
        mod.eval().requires_grad_(False)
    pipe = param_bytes(unet) + param_bytes(vae) + param_bytes(text) + param_bytes(clip)
    steps = S["steps"]
    sweep = len(S["sweep_prompts"]) * S["per_prompt"]
    batch = max(sweep, S["n_negative"], 4, S["n_inpaint"])
    # (images, steps each): sections 3, 5 (loop, pipeline, coursekit), 6, 7, 9, 10 (inpaint + fresh)
    images = [(1, steps), (3, steps), (sweep * len(S["scales"]), steps), (2 * S["n_negative"], steps),
              (4, sum(max(1, int(steps * st)) for st in S["strengths"])), (2 * S["n_inpaint"], steps)]
    image_steps = sum(n * k for n, k in images)
    cond = meta_randn(batch, 77, 768)
    m = infer_measure([unet], lambda: NoisePredictor(unet, text=(cond, cond), guidance_scale=S["guidance"])(
        meta_randn(batch, 4, 64, 64), 500))
    rows = [fill(Row(name, f"SD v1.5 fp32: UNet with CFG, up to {batch} images at once", f"{batch} (x2 = {2 * batch})",
                     "infer", note=f"{image_steps} image-steps in all (sections 3 to 10); pipeline and CLIP resident"),
                 m, used_models=[unet], resident=pipe - param_bytes(unet), calls=[(image_steps, 1 / batch)])]
    decodes = sum(n for n, _ in images) + 4 * len(S["strengths"]) + S["n_inpaint"] + 1
    m = infer_measure([vae], lambda: vae.decode(meta_randn(batch, 4, 64, 64)).sample)
    rows.append(fill(Row(name, f"SD v1.5 fp32: VAE decode to 512x512, {batch} at once", f"{batch}", "infer",
                         note=f"{decodes} images decoded in all; pipeline and CLIP resident"),
                     m, used_models=[vae], resident=pipe - param_bytes(vae), calls=[(decodes, 1 / batch)]))
    rows.append(Row(name, "section 8: composition on the zoo's tiny-sd", "-", "small", note="small model; not estimated"))
    return rows


def unit3_lora_rows(units: Path) -> list[Row]:
    import torch.nn.functional as F

    from coursekit import adapters
    from coursekit.models import NoisePredictor

    nb = units / "unit3" / "02_lora_and_controlnet.ipynb"
    S = settings(nb)
    name = nb.relative_to(units.parent).as_posix()
    unet, vae, text = sd_parts()
    clip = clip_b32()
    for mod in (vae, text):
        mod.eval().requires_grad_(False)
    resident = param_bytes(vae) + param_bytes(text) + param_bytes(clip)
    bs, steps, k = S["batch_size"], S["steps"], S["n_eval"]
    adapters.add_lora(unet, rank=S["rank"])
    lora = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=1e-4, foreach=True)

    def step():
        pred = unet(meta_randn(bs, 4, 64, 64), torch.randint(0, 1000, (bs,), device="meta"),
                    encoder_hidden_states=meta_randn(bs, 77, 768)).sample
        F.mse_loss(pred, meta_randn(bs, 4, 64, 64)).backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    unet.train()
    step()
    baseline = param_bytes(unet) + optimizer_state_bytes(optimizer, "meta")
    m = measure(step, exclude=[*unet.parameters(), *unet.buffers()])
    m.baseline = baseline
    rows = [fill(Row(name, f"SD v1.5 fp32: LoRA rank {S['rank']} training at 512x512, AdamW", f"{bs}", "train",
                     note=f"{S['lora_steps']} steps; VAE, text encoder and CLIP resident"),
                 m, train_models=[unet], resident=resident, calls=[(S["lora_steps"], 1.0)],
                 per_step_extra_s=optimizer_seconds(sum(p.numel() for p in lora)) + LOOP_OVERHEAD_S)]
    unet.eval().requires_grad_(False)
    n = max(len(S["old_prompts"]), 2) * k       # the concept's 2 prompts, then the old ones, each a batch
    cond = meta_randn(n, 77, 768)
    m = infer_measure([unet], lambda: NoisePredictor(unet, text=(cond, cond), guidance_scale=S["guidance"])(
        meta_randn(n, 4, 64, 64), 500))
    measures = 2 * (2 + 3)   # concept and old prompts: before, after, three adapter scales (a second pipeline then)
    rows.append(fill(Row(name, "SD v1.5 fp32: sampling the concept and old prompts with CFG", f"{n} (x2 = {2 * n})",
                         "infer", note=f"{measures} measurements of {steps} steps; a second pipeline resident in section 3"),
                     m, used_models=[unet], resident=resident + param_bytes(unet), calls=[(measures * steps, 1.0)]))
    unet = sd_parts()[0].eval().requires_grad_(False)     # ControlNetModel.from_unet needs a UNet without adapters
    controlnet = meta_module(lambda: adapters.controlnet_from_unet(unet, 8))
    controlnet.eval().requires_grad_(False)
    c = S["n_control"]
    cond = meta_randn(2 * c, 77, 768)
    m = infer_measure([unet, controlnet], lambda: adapters.controlled_noise(
        unet, controlnet, meta_randn(2 * c, 4, 64, 64), 500, cond, meta_randn(2 * c, 3, 512, 512)))
    rows.append(fill(Row(name, "SD v1.5 + canny ControlNet fp32, CFG", f"{c} (x2 = {2 * c})", "infer",
                         note=f"{2 * steps} steps (loop and pipeline); without control costs as section 2"),
                     m, used_models=[unet, controlnet], resident=resident, calls=[(2 * steps, 1.0)]))
    rows.append(Row(name, "section 4: LoRA against full fine-tuning on the zoo's tiny-sd", "-", "small",
                    note="small model; not estimated"))
    return rows


# ---- Unit 4, notebook 2 -----------------------------------------------------------------------


def unit4_audio_rows(units: Path, alternatives: bool) -> list[Row]:
    from coursekit import samplers

    nb = units / "unit4" / "02_diffusion_for_audio.ipynb"
    S = settings(nb)
    name = nb.relative_to(units.parent).as_posix()
    rows = []
    config = unet_config(S["model"])
    h, w = (config["sample_size"],) * 2 if isinstance(config["sample_size"], int) else config["sample_size"]
    c = config["in_channels"]
    one = param_bytes(unet2d(config))
    bs, steps = S["batch_size"], S["finetune_steps"]

    def finetune_row(batch, accum=1, checkpointing=False):
        m = unet2d(config)
        meas = train_step_measure(m, batch, grad_accum=accum, checkpointing=checkpointing)
        label = f"fine-tuning {h}x{w}x{c}, AdamW" + (", grad. checkpointing" if checkpointing else "")
        return fill(Row(name, label, f"{batch}" + (f" x{accum} accum" if accum > 1 else ""), "train",
                        note=f"{steps} steps" + (f" x {accum} micro-batches" if accum > 1 else "")
                             + "; pretrained UNet resident (deepcopy)"),
                    meas, train_models=[m], resident=one, calls=[(steps * accum, 1.0)],
                    per_step_extra_s=optimizer_seconds(n_params(m)) / accum + LOOP_OVERHEAD_S)

    row = finetune_row(bs)
    if alternatives and row.over:
        row.alternatives = train_alternatives(finetune_row, bs, 1)
    rows.append(row)

    n = S["samples"]
    unet = unet2d(config).eval()
    m = infer_measure([unet], lambda: samplers.predict_noise(unet, meta_randn(n, c, h, w), 500))
    rows.append(fill(Row(name, "DDIM sampling, samples at once (no grad)", f"{n}", "infer",
                         note=f"2 runs x {S['ddim_steps']} steps; the other UNet resident"),
                     m, resident=one, calls=[(2 * S["ddim_steps"], 1.0)]))
    return rows


def unit4_faster_rows(units: Path) -> list[Row]:
    nb = units / "unit4" / "03_faster_sampling.ipynb"
    S = settings(nb)
    return [Row(nb.relative_to(units.parent).as_posix(), f"all cells (full track uses the zoo's {S['model']})",
                "-", "small", note="small model; not estimated")]


def unit4_new_rows(units: Path) -> list[Row]:
    from coursekit.models import NoisePredictor

    nb = units / "unit4" / "04_new_directions.ipynb"
    S = settings(nb)
    name = nb.relative_to(units.parent).as_posix()
    rows = [Row(name, "sections 1 to 6 (the zoo's 16x16 digit models on both tracks)", "-", "small",
                note="small models; not estimated")]
    unet, vae, text = sd_parts()
    clip = clip_b32()
    for mod in (unet, vae, text):
        mod.eval().requires_grad_(False)
    lora = 67_000_000 * 4       # LCM-LoRA for SD v1.5: rank 64 on LCM_TARGETS, about 67 M parameters
    pipe = param_bytes(unet) + param_bytes(vae) + param_bytes(text) + param_bytes(clip) + lora
    n = len(S["sd_prompts"]) * S["sd_per_prompt"]
    cond = meta_randn(n, 77, 768)
    m = infer_measure([unet], lambda: NoisePredictor(unet, text=(cond, cond), guidance_scale=S["sd_guidance"])(
        meta_randn(n, 4, 64, 64), 500))
    # DDIM 25 and 4 steps with CFG (two halves per step), then LCMScheduler 4 steps and LCM-LoRA 1 + 2 + 4, one half each
    calls = [(25 + 4, 1.0), (4 + 1 + 2 + 4, 0.5)]
    rows.append(fill(Row(name, f"section 7, SD v1.5 fp32 with LCM-LoRA: UNet, {n} images at once", f"{n} (x2 = {2 * n})",
                         "infer", note="DDIM 25 and 4 steps with CFG, 11 LCM steps without; pipeline, adapter and CLIP resident"),
                     m, used_models=[unet], resident=pipe - param_bytes(unet), calls=calls))
    m = infer_measure([vae], lambda: vae.decode(meta_randn(n, 4, 64, 64)).sample)
    rows.append(fill(Row(name, f"section 7, SD v1.5 fp32: VAE decode to 512x512, {n} at once", f"{n}", "infer",
                         note=f"{6 * n} images decoded in all"),
                     m, used_models=[vae], resident=pipe - param_bytes(vae), calls=[(6, 1.0)]))
    return rows


# ---- settings that fit --------------------------------------------------------------------------


def train_alternatives(make, batch: int, accum: int) -> list[dict]:
    """Gradient checkpointing at the same micro-batch, and the largest micro-batch (halving) that
    fits without it, with grad_accum raised to keep the effective batch."""
    out = []
    r = make(batch, accum, True)
    out.append(_alt(f"gradient checkpointing (unet.enable_gradient_checkpointing()), micro-batch {batch}", r))
    b, a = batch, accum
    while b > 1:
        b, a = b // 2, a * 2
        r = make(b, a, False)
        if not r.over:
            out.append(_alt(f"micro-batch {b} x grad_accum {a} (same effective batch)", r))
            break
    return out


def grad_alternatives(make, batch: int) -> list[dict]:
    """Frozen UNet weights (shown because it does not help: autograd saves a convolution's input
    whether or not its weight needs a gradient), gradient checkpointing, smaller chunks, and
    both together."""
    out = []
    r = make(batch, True, False)
    out.append(_alt(f"UNet weights frozen (requires_grad_(False)), batch {batch}", r))
    r = make(batch, False, True)
    out.append(_alt(f"gradient checkpointing (unet.enable_gradient_checkpointing()), batch {batch}", r))
    b = batch
    while b > 1:
        b //= 2
        r = make(b, False, False)
        if not r.over:
            out.append(_alt(f"guide in chunks of {b} images", r))
            break
    if batch > 1:
        r = make(batch // 2, False, True)
        out.append(_alt(f"gradient checkpointing and chunks of {batch // 2} images", r))
    return out


def infer_alternatives(make, batch: int) -> list[dict]:
    out = [_alt(f"fp16 weights and activations, batch {batch}", make(batch, True))]
    b = batch
    while b > 1:
        b //= 2
        r = make(b)
        if not r.over:
            out.append(_alt(f"fp32 in chunks of {b} images", r))
            break
    return out


def _alt(setting: str, row: Row) -> dict:
    return {"setting": setting, "peak": row.peak, "fits": not row.over, "seconds": row.seconds,
            "gflops_per_call": row.gflops_per_call, "saved": row.saved, "live": row.live}


# --------------------------------------------------------------------------------------------


def gb(x: float) -> str:
    return f"{x / GB:.2f}"


def table(rows: list[Row]) -> str:
    head = ["notebook", "cell", "batch", "params", "grads", "optim", "saved", "live", "resident",
            "peak GB", "GFLOP/call", "calls", "T4 s", ""]
    body = []
    for r in rows:
        nb = r.notebook.replace("units/", "")
        if r.kind == "small":
            body.append([nb, r.cell, r.batch, "-", "-", "-", "-", "-", "-", "small", "-", "-", "-", ""])
            continue
        body.append([nb, r.cell, r.batch, gb(r.params), gb(r.grads), gb(r.optimizer), gb(r.saved), gb(r.live),
                     gb(r.resident), f"{r.peak / GB:.1f}", f"{r.gflops_per_call:,.0f}" if r.gflops_per_call >= 10
                     else f"{r.gflops_per_call:.2f}", f"{r.calls:,}", f"{r.seconds:,.0f}",
                     "OVER 15 GB" if r.over else ""])
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    right = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
    lines = []
    for row in [head] + body:
        lines.append("  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", default=str(ROOT / "units"))
    p.add_argument("--out", default=str(ROOT / "build" / "full_track_memory.json"))
    p.add_argument("--no-alternatives", action="store_true", help="skip the settings that fit for rows over 15 GB")
    p.add_argument("--guide", help="also write the table into this markdown file, between <!-- t4 --> and <!-- /t4 -->")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    units = Path(a.units)
    began = time.perf_counter()
    alts = not a.no_alternatives
    rows = []
    for part, model_keys in ((lambda: unit1_rows(units), ("model",)),
                             (lambda: unit2_finetune_rows(units, alts), ("model", "clip_model")),
                             (lambda: unit2_class_rows(units), ("dataset",)),
                             (lambda: unit3_sd_rows(units), ("model", "clip_model")),
                             (lambda: unit3_lora_rows(units), ("model", "clip_model", "controlnet_model")),
                             (lambda: unit4_inversion_rows(units), ("model", "photo_model")),
                             (lambda: unit4_audio_rows(units, alts), ("model",)),
                             (lambda: unit4_faster_rows(units), ("model",)),
                             (lambda: unit4_new_rows(units), ())):
        new = part()
        S = settings(units.parent / new[0].notebook)
        for r in new:
            r.model = ", ".join(str(S[k]) for k in model_keys if S.get(k))
        rows += new
    print(table(rows))
    print(f"\npeak = {CONTEXT / GB:.1f} GB context + (1 + {SLACK:.2f}) x (resident + max(params + grads + optim + "
          f"saved, start + live)); limit {LIMIT / GB:.0f} GB.")
    print(f"T4 s = calls x max(FLOP / ({T4_FP32_PEAK / 1e12:.1f} TFLOPS x {UTILISATION}), kernels x "
          f"{KERNEL_OVERHEAD_S * 1e6:.0f} us) (+ AdamW/clip and loop overhead per training step, checkpoints); "
          f"utilisation band {UTILISATION_BAND[0]}-{UTILISATION_BAND[1]} gives x{UTILISATION / UTILISATION_BAND[0]:.1f}"
          f" to x{UTILISATION / UTILISATION_BAND[1]:.1f}.")
    totals: dict[str, float] = {}
    for r in rows:
        totals[r.notebook] = totals.get(r.notebook, 0.0) + r.seconds
    models = {r.notebook: r.model for r in rows}
    print("\nGPU time of the heavy cells per notebook (T4 estimate):")
    for nb, s in totals.items():
        print((f"  {nb:46s} {s / 60:6.1f} min" if s else f"  {nb:46s}    small    ") + f"  ({models[nb]})")
    over = [r for r in rows if r.over]
    if over:
        print("\nRows over 15 GB, and settings that fit:")
        for r in over:
            print(f"  {r.notebook.replace('units/', '')}: {r.cell} (batch {r.batch}): {r.peak / GB:.1f} GB")
            for alt in r.alternatives:
                print(f"    - {alt['setting']}: {alt['peak'] / GB:.1f} GB, {'fits' if alt['fits'] else 'still over'}, "
                      f"~{alt['seconds']:,.0f} s")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": "NVIDIA T4 (16 GB, 15 GB usable), estimated on a CPU with meta tensors",
        "assumptions": {"limit_bytes": LIMIT, "context_bytes": CONTEXT, "slack": SLACK,
                        "fp32_peak_flops": T4_FP32_PEAK, "utilisation": UTILISATION,
                        "utilisation_band": UTILISATION_BAND, "kernel_overhead_s": KERNEL_OVERHEAD_S,
                        "bandwidth": T4_BANDWIDTH, "bandwidth_utilisation": BANDWIDTH_UTILISATION,
                        "optimizer_bytes_per_param": OPTIMIZER_BYTES_PER_PARAM,
                        "loop_overhead_s": LOOP_OVERHEAD_S, "disk_bytes_per_s": DISK_BYTES_PER_S,
                        "attention": "memory-efficient SDPA kernel (no attention matrix)"},
        "sources": sources(),
        "torch": torch.__version__,
        "rows": [r.as_dict() for r in rows],
        "notebook_seconds": totals,
    }, indent=2) + "\n")
    if a.guide:
        write_guide(Path(a.guide), rows, totals)
    print(f"\nwrote {out} in {time.perf_counter() - began:.0f} s")
    return 0


def guide_table(rows: list[Row], totals: dict) -> str:
    """The figures as the instructor guide shows them: one row per heavy cell, then per notebook."""
    lines = ["| notebook | heavy cell | batch | peak GPU memory | T4 time |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.kind == "small":
            lines.append(f"| `{r.notebook.replace('units/', '')}` | {r.cell} | - | small model | - |")
            continue
        over = " (over 15 GB)" if r.over else ""
        lines.append(f"| `{r.notebook.replace('units/', '')}` | {r.cell} | {r.batch} | {r.peak / GB:.1f} GB{over} "
                     f"| {r.seconds / 60:.1f} min |")
    lines += ["", "| notebook | heavy cells on a T4, in all |", "| --- | --- |"]
    lines += [f"| `{nb.replace('units/', '')}` | " + (f"{s / 60:.1f} min |" if s else "small model |")
              for nb, s in totals.items()]
    return "\n".join(lines)


def write_guide(path: Path, rows: list[Row], totals: dict) -> None:
    import re

    text = path.read_text()
    if "<!-- t4 -->" not in text:
        raise SystemExit(f"full_track_memory: {path} has no <!-- t4 --> ... <!-- /t4 --> block")
    block = f"<!-- t4 -->\n{guide_table(rows, totals)}\n<!-- /t4 -->"
    path.write_text(re.sub(r"<!-- t4 -->.*<!-- /t4 -->", lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    raise SystemExit(main())
