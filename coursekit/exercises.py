"""Exercises that check themselves.

`check(name, answer)` runs a learner's function on fresh random inputs (or takes a measured value)
and compares it with coursekit's own implementation. The answer is a `Verdict`: correct, or a hint
that names what is off (a shape, a sign, a variance used where a standard deviation belongs, an
off-by-one step), recognised by comparing the answer with typical mistakes. It never shows the
solution or the expected numbers. `EXERCISES` holds every exercise by name; `for_notebook(path)`
lists a notebook's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class ExerciseError(ValueError):
    """An unknown exercise, or an answer of the wrong kind; the message says what to pass."""


@dataclass(frozen=True)
class Exercise:
    """One exercise: `reference(*inputs(generator))` is the right answer (for a value exercise,
    `reference()`); each mistake is (hint, the same computation done wrongly)."""

    name: str
    notebook: str
    task: str
    reference: Callable
    inputs: Callable | None = None
    mistakes: tuple = ()
    hint: str = ""
    rtol: float = 1e-4
    atol: float = 1e-5

    @property
    def kind(self) -> str:
        return "function" if self.inputs is not None else "value"


@dataclass(frozen=True)
class Verdict:
    correct: bool
    message: str

    def __bool__(self) -> bool:
        return self.correct

    def __repr__(self) -> str:
        return ("correct: " if self.correct else "not yet: ") + self.message


def _number_like(v) -> bool:
    import numbers

    import numpy as np

    return (isinstance(v, (torch.Tensor, np.ndarray)) and v.dtype != torch.bool and v.dtype != np.bool_) or \
        (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)))


def _tensor(x) -> torch.Tensor | None:
    """An answer as a float64 tensor, whatever numeric type it came in (Python, NumPy or torch numbers,
    arrays, tensors on any device, or a tuple or list of them), else None."""
    if isinstance(x, (tuple, list)) and x and all(_number_like(v) for v in x):
        parts = [torch.as_tensor(v).detach().cpu().to(torch.float64) for v in x]
        if all(p.shape == parts[0].shape for p in parts):
            return torch.stack(parts)
        return torch.cat([p.flatten() for p in parts])
    if _number_like(x):
        return torch.as_tensor(x).detach().cpu().to(torch.float64)
    return None


def _close(a: torch.Tensor, b: torch.Tensor, ex: Exercise) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=ex.rtol, atol=ex.atol))


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _diagnose(got: torch.Tensor, want: torch.Tensor, wrongs: list[tuple[str, torch.Tensor]], ex: Exercise) -> str:
    for hint, wrong in wrongs:
        if wrong is not None and _close(got, wrong, ex):
            return hint
    if got.shape != want.shape:
        if got.numel() == want.numel():
            return f"the numbers may be right but the shape is {tuple(got.shape)}, not {tuple(want.shape)}: reshape"
        return f"the result has shape {tuple(got.shape)}, expected {tuple(want.shape)}: check what broadcasts with what"
    if _close(got, -want, ex):
        return "the sign is flipped"
    if want.abs().max() > 0 and got.abs().max() > 0:
        ratio = got[want.abs() > 1e-6] / want[want.abs() > 1e-6]
        if len(ratio) > 1 and float(ratio.std()) < 1e-4 * float(ratio.abs().mean()) and abs(float(ratio.mean()) - 1) > 1e-3:
            return "off by a constant factor everywhere: check a scale (a square root, a 2, a weight)"
        if _close(got.abs() ** 2, want.abs(), ex) or _close(got.abs(), want.abs() ** 2, ex):
            return "a square or square root too many or too few: a variance used for a standard deviation, or back"
    return ex.hint or "the values differ from coursekit's; compare your formula with the notebook's, term by term"


def check(name: str, answer, trials: int = 3, seed: int | None = None) -> Verdict:
    """Check `answer` (a function, or a number for a measured answer) for the exercise `name`
    against coursekit's implementation on `trials` (>= 1) fresh random inputs. Numbers may come as any
    numeric type: a Python or NumPy number, a one-element array or tensor."""
    import numbers

    ex = get(name)
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
        raise ExerciseError(f"trials must be a whole number >= 1 (the random inputs to try), got {trials!r}")
    if ex.kind == "value":
        got = _tensor(answer)
        if got is None or got.numel() != 1:
            return Verdict(False, f"give one number, got {type(answer).__name__}")
        got = got.reshape(())
        want = _tensor(ex.reference())
        if _close(got, want, ex):
            return Verdict(True, "that is what coursekit measures")
        wrongs = [(hint, _tensor(wrong())) for hint, wrong in ex.mistakes]
        hint = _diagnose(got, want, wrongs, ex)
        return Verdict(False, hint + (" (your number is too high)" if got > want else " (your number is too low)"))
    if not callable(answer):
        return Verdict(False, f"give your function itself (no brackets), got {type(answer).__name__}")
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, (1,)).item()) if seed is None else seed)
    for _ in range(trials):
        args = ex.inputs(g)
        want = _tensor(ex.reference(*_clone(args)))
        try:
            result = answer(*_clone(args))
        except Exception as e:      # the learner's code: report its error as a hint
            return Verdict(False, f"your function raised {type(e).__name__}: {e}")
        if result is None:
            return Verdict(False, "your function returned None: finish it with `return ...`")
        got = _tensor(result)
        if got is None:
            return Verdict(False, f"return a tensor (or a tuple of them), got {type(result).__name__}")
        if not torch.isfinite(got).all():
            return Verdict(False, "the result has NaN or infinite values: look for a division by zero or a log of 0")
        if not _close(got, want, ex):
            wrongs = [(hint, _tensor(wrong(*_clone(args)))) for hint, wrong in ex.mistakes]
            return Verdict(False, _diagnose(got, want, wrongs, ex))
    return Verdict(True, f"matches coursekit on {trials} random inputs")


# The exercises, by notebook.

def _betas(g):
    lo = float(torch.empty(1).uniform_(1e-4, 1e-3, generator=g))
    return (torch.linspace(lo, 0.02, int(torch.randint(8, 40, (1,), generator=g))).double(),)


def _ab(betas):
    return torch.cumprod(1 - betas, 0)


def _q_inputs(g):
    n = int(torch.randint(2, 5, (1,), generator=g))
    ab = _ab(_betas(g)[0])
    t = torch.randint(0, len(ab), (n,), generator=g)
    shape = (n, int(torch.randint(1, 4, (1,), generator=g)), 4, 4)
    return (torch.randn(shape, generator=g, dtype=torch.float64), t,
            torch.randn(shape, generator=g, dtype=torch.float64), ab)


def _col(v):
    return v.reshape(-1, 1, 1, 1)


def _ddim_inputs(g):
    x, _, eps, ab = _q_inputs(g)
    i, j = sorted(torch.randint(0, len(ab), (2,), generator=g).tolist())
    return x, eps, ab[j], ab[i]


def _edm_calls(steps: int) -> int:
    from . import edm

    return edm.function_evaluations(steps)


def _snr_steps(power: float = 1.0):
    """Steps of the linear schedule below 0.01 of SNR ** power (power 0.5: a ratio of standard deviations)."""
    from diffusers import DDPMScheduler

    ab = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod.double()
    return int(((ab / (1 - ab)) ** power < 0.01).sum())


def _flow_inputs(g):
    shape = (int(torch.randint(2, 5, (1,), generator=g)), 1, 4, 4)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def _euler_inputs(g):
    x, v = _flow_inputs(g)
    s, s_next = sorted(torch.rand(2, generator=g, dtype=torch.float64).tolist(), reverse=True)
    return x, v, s, s_next


def _sigmas(g):
    return (torch.logspace(-2, 1.8, int(torch.randint(5, 20, (1,), generator=g))).double()
            * torch.empty(1, dtype=torch.float64).uniform_(0.5, 1.5, generator=g),)


def _edm(sigma, sigma_data=0.5):
    from . import edm

    return edm.preconditioning(sigma, sigma_data)


def _edm_with(sigma, which: int, value):
    """EDM's (c_skip, c_out, c_in, c_noise) with one of them replaced: a typical mistake."""
    found = list(_edm(sigma))
    found[which] = value
    return tuple(found)


def _x0_inputs(g):
    x, t, eps, ab = _q_inputs(g)
    return x, eps, ab[t]


def _colour_inputs(g):
    n = int(torch.randint(2, 5, (1,), generator=g))
    return (torch.rand((n, 3, 4, 4), generator=g, dtype=torch.float64) * 2 - 1,
            torch.rand(3, generator=g, dtype=torch.float64))


def _colour_loss(x0, colour):
    from .guidance import colour_loss

    return colour_loss(colour)(x0)


def _cfg_inputs(g):
    shape = (int(torch.randint(2, 5, (1,), generator=g)), 1, 4, 4)
    return (torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64),
            float(torch.empty(1).uniform_(1.5, 6, generator=g)))


def _attention_inputs(g):
    n, m, width, d = (int(v) for v in torch.randint(2, 7, (4,), generator=g))
    r = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64)
    return r(2, n, width), r(2, m, width + 1), r(width, d), r(width + 1, d), r(width + 1, d)


def _attention(pixels, tokens, w_q, w_k, w_v, scale=True, dim=-1):
    q, k, v = pixels @ w_q, tokens @ w_k, tokens @ w_v
    scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5 if scale else 1)
    return torch.softmax(scores, dim=dim) @ v


def _zoo_params(name: str, part: str | None = None, rows: int | None = None, tensors: bool = False) -> int:
    """Parameters of a zoo UNet (or of one part's weight, its first `rows`); with `tensors`, how many tensors."""
    from .models import load_model

    unet = load_model(name)[0]
    if part is None:
        return sum(1 if tensors else p.numel() for p in unet.parameters())
    weight = getattr(unet, part).weight
    return weight[:rows].numel() if rows else weight.numel()


UNIT1 = "unit1/01_ddpm_and_ddim.ipynb"
UNIT2_GUIDANCE = "unit2/01_finetuning_and_guidance.ipynb"
UNIT2_CLASSES = "unit2/02_class_conditioned.ipynb"
UNIT4_NEW = "unit4/04_new_directions.ipynb"

def _heads_inputs(g):
    """Never one head (splitting would change nothing) nor one key (any scale gives softmax 1)."""
    b, n = (int(v) for v in torch.randint(1, 6, (2,), generator=g))
    m = int(torch.randint(2, 6, (1,), generator=g))
    heads = int(torch.randint(2, 5, (1,), generator=g))
    d = heads * int(torch.randint(2, 5, (1,), generator=g))
    r = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64)
    return r(b, n, d), r(b, m, d), r(b, m, d), heads


def _heads(q, k, v, heads, head_scale=True, split=True):
    b, n, d = q.shape
    h = heads if split else 1
    sp = lambda z: z.reshape(b, -1, h, d // h).transpose(1, 2)
    qs, ks, vs = sp(q), sp(k), sp(v)
    scale = (d // heads if head_scale else d) ** 0.5
    out = torch.softmax(qs @ ks.transpose(-1, -2) / scale, dim=-1) @ vs
    return out.transpose(1, 2).reshape(b, n, d)


def _blend_inputs(g):
    shape = (int(torch.randint(1, 4, (1,), generator=g)), 4, 6, 6)
    mask = (torch.rand((shape[0], 1, 6, 6), generator=g) > 0.5).double()
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64), mask


def _latent_ratio(shrink_channels=False):
    from .stable_diffusion import load_pipeline

    pipe = load_pipeline("tiny-sd")
    size = pipe.unet.config.sample_size
    pixels = (size * pipe.vae_scale_factor) ** 2 * (1 if shrink_channels else pipe.vae.config.in_channels)
    return pixels / (size ** 2 * (1 if shrink_channels else pipe.unet.config.in_channels))


def _lora_inputs(g):
    """alpha never equal to the rank, where the scale alpha / r is 1 and leaving it out would pass."""
    n, d_in, d_out, r = (int(v) for v in torch.randint(2, 7, (4,), generator=g))
    x = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64)
    alpha = float(torch.randint(1, 16, (1,), generator=g))
    alpha = alpha + 1 if alpha >= r else alpha
    return x(n, d_in), x(d_out, d_in), x(r, d_in), x(d_out, r), alpha, r


def _lora_merge_inputs(g):
    _, w, a, b, alpha, r = _lora_inputs(g)
    return w, a, b, alpha, r


def _lora_params(everything=False):
    from .adapters import add_lora
    from .stable_diffusion import load_pipeline

    unet = load_pipeline("tiny-sd").unet
    n = add_lora(unet, rank=4)
    return sum(p.numel() for p in unet.parameters()) if everything else n


def _inversion_inputs(g):
    x, eps, a, b = _ddim_inputs(g)
    return x, eps, b, a          # from the less noisy level b = ab_prev up to a = ab_t


def _psnr_inputs(g):
    shape = (int(torch.randint(1, 4, (1,), generator=g)), 3, 5, 5)
    ref = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    return (ref + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(-1, 1), ref


def _psnr(x, ref, peak=1.0, scale=0.5):
    mse = (((x - ref) * scale) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(peak ** 2 / mse)).mean()


def _mel_inputs(g):
    return (torch.rand(int(torch.randint(3, 12, (1,), generator=g)), generator=g, dtype=torch.float64) * 8000,)


def _fbank_inputs(g):
    rate = int(torch.tensor([8000, 16000, 22050])[torch.randint(0, 3, (1,), generator=g)])
    n_fft = int(torch.tensor([256, 512])[torch.randint(0, 2, (1,), generator=g)])
    return n_fft // 2 + 1, int(torch.randint(8, 40, (1,), generator=g)), rate


def _fbank(n_freqs, n_mels, sample_rate, norm=None, mel_scale="htk"):
    import torchaudio.functional as AF

    return AF.melscale_fbanks(n_freqs, 0.0, sample_rate / 2, n_mels, sample_rate, norm=norm, mel_scale=mel_scale)


def _image_seconds(hop_only=False):
    from .audio import PRESETS

    p = PRESETS["small"]
    return (p.frames * p.hop_length - (0 if hop_only else 1)) / p.sample_rate


def _one_step_inputs(g):
    x, eps, a, b = _ddim_inputs(g)
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64), a, b


def _one_step_eps(z, z_next, a_t, a_next):
    ratio = (1 - a_next).sqrt() / (1 - a_t).sqrt()
    x0 = (z_next - ratio * z) / (a_next.sqrt() - ratio * a_t.sqrt())
    return (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()


def _trailing(steps, spacing="trailing"):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    s.set_timesteps(int(steps))
    return s.timesteps


UNIT3_SD = "unit3/01_stable_diffusion.ipynb"
UNIT3_LORA = "unit3/02_lora_and_controlnet.ipynb"
UNIT4_INVERSION = "unit4/01_ddim_inversion.ipynb"
UNIT4_AUDIO = "unit4/02_diffusion_for_audio.ipynb"
UNIT4_FASTER = "unit4/03_faster_sampling.ipynb"


EXERCISES = {ex.name: ex for ex in [
    Exercise(
        "unit1.alpha_bar", UNIT1,
        "alpha_bar(betas): alpha-bar_t for every t of a variance schedule (a 1-D tensor of betas).",
        reference=_ab, inputs=_betas,
        mistakes=(("alpha_t is 1 - beta_t: multiply the alphas, not the betas", lambda b: torch.cumprod(b, 0)),
                  ("alpha-bar is a running product, not 1 minus a running sum", lambda b: 1 - torch.cumsum(b, 0)),
                  ("off by one step: alpha-bar_1 is alpha_1 already, so do not start from 1",
                   lambda b: torch.cat([torch.ones(1, dtype=b.dtype), _ab(b)[:-1]]))),
        hint="alpha-bar_t is the product of (1 - beta_s) for s = 1 .. t"),
    Exercise(
        "unit1.q_sample", UNIT1,
        "q_sample(x0, t, noise, alphas_cumprod): x_t drawn from q(x_t | x_0) in closed form, one t per image.",
        reference=lambda x0, t, eps, ab: _col(ab[t]).sqrt() * x0 + (1 - _col(ab[t])).sqrt() * eps,
        inputs=_q_inputs,
        mistakes=(("a variance used where a standard deviation belongs: scale by the square roots of alpha-bar and "
                   "1 - alpha-bar", lambda x0, t, eps, ab: _col(ab[t]) * x0 + (1 - _col(ab[t])) * eps),
                  ("the noise is scaled by its variance 1 - alpha-bar; its standard deviation is the square root",
                   lambda x0, t, eps, ab: _col(ab[t]).sqrt() * x0 + (1 - _col(ab[t])) * eps),
                  ("the image and the noise have swapped weights",
                   lambda x0, t, eps, ab: (1 - _col(ab[t])).sqrt() * x0 + _col(ab[t]).sqrt() * eps)),
        hint="pick alpha-bar at each image's own t and reshape it to (N, 1, 1, 1) so it broadcasts"),
    Exercise(
        "unit1.snr_steps", UNIT1,
        "How many of the 1,000 steps of the linear schedule (beta 1e-4 to 0.02) have a signal-to-noise ratio "
        "below 0.01? Measure it.",
        reference=_snr_steps,
        mistakes=(("SNR is alpha-bar / (1 - alpha-bar), a ratio of variances; you used standard deviations",
                   lambda: _snr_steps(0.5)),),
        hint="SNR_t = alpha-bar_t / (1 - alpha-bar_t); count the t where it is below 0.01", rtol=0, atol=0.5),
    Exercise(
        "unit1.ddim_step", UNIT1,
        "ddim_step(x_t, eps, ab_t, ab_prev): one deterministic DDIM step (eta = 0) from alpha-bar ab_t to ab_prev.",
        reference=lambda x, eps, a, b: b.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - b).sqrt() * eps,
        inputs=_ddim_inputs,
        mistakes=(("x0-hat divides by sqrt(alpha-bar_t) after removing sqrt(1 - alpha-bar_t) times the noise",
                   lambda x, eps, a, b: b.sqrt() * (x - (1 - a) * eps) / a.sqrt() + (1 - b).sqrt() * eps),
                  ("the step goes to ab_prev: the new noise term is sqrt(1 - ab_prev) eps, not sqrt(1 - ab_t) eps",
                   lambda x, eps, a, b: b.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - a).sqrt() * eps),
                  ("the two alpha-bars are swapped", lambda x, eps, a, b: a.sqrt() * (x - (1 - b).sqrt() * eps)
                   / b.sqrt() + (1 - a).sqrt() * eps)),
        hint="first x0-hat from x_t and eps, then put it at the new noise level with the same eps"),
    Exercise(
        "unit2.predict_x0", UNIT2_GUIDANCE,
        "predict_x0(x_t, eps, ab_t): the clean image a noise estimate implies, one alpha-bar per image (N,).",
        reference=lambda x, eps, ab: (x - (1 - _col(ab)).sqrt() * eps) / _col(ab).sqrt(), inputs=_x0_inputs,
        mistakes=(("remove sqrt(1 - alpha-bar) times the noise, then divide by sqrt(alpha-bar): standard deviations, "
                   "not variances", lambda x, eps, ab: (x - (1 - _col(ab)) * eps) / _col(ab)),
                  ("undo the forward process: divide by sqrt(alpha-bar), do not multiply",
                   lambda x, eps, ab: (x - (1 - _col(ab)).sqrt() * eps) * _col(ab).sqrt())),
        hint="solve x_t = sqrt(ab) x0 + sqrt(1 - ab) eps for x0, with ab reshaped to (N, 1, 1, 1)"),
    Exercise(
        "unit2.colour_loss", UNIT2_GUIDANCE,
        "colour_loss(x0, colour): the colour-guidance loss of a batch x0 (N, 3, H, W in [-1, 1]) for an RGB colour "
        "(3,) in 0..1: each image's mean absolute distance to the colour, summed over the batch.",
        reference=_colour_loss, inputs=_colour_inputs,
        mistakes=(("the images are in [-1, 1] but the colour is in 0..1: map it there too (2c - 1)",
                   lambda x, c: (x - c.reshape(1, 3, 1, 1)).abs().mean(dim=(1, 2, 3)).sum()),
                  ("sum the images' losses instead of averaging them, so that one image's gradient does not shrink "
                   "with the batch size", lambda x, c: (x - (c * 2 - 1).reshape(1, 3, 1, 1)).abs().mean()),
                  ("the loss is the absolute distance, not the squared one",
                   lambda x, c: ((x - (c * 2 - 1).reshape(1, 3, 1, 1)) ** 2).mean(dim=(1, 2, 3)).sum())),
        hint="reshape the colour to (1, 3, 1, 1) so it broadcasts over the pixels"),
    Exercise(
        "unit2.uncond_params", UNIT2_GUIDANCE,
        "How many parameters (numbers, not tensors) does the zoo's digits-uncond UNet have? Count them.",
        reference=lambda: _zoo_params("digits-uncond"),
        mistakes=(("count the numbers in each tensor (p.numel()), not the tensors",
                   lambda: _zoo_params("digits-uncond", tensors=True)),),
        hint="sum p.numel() over unet.parameters()", rtol=0, atol=0.5),
    Exercise(
        "unit2.cfg", UNIT2_CLASSES,
        "guide(eps_cond, eps_free, w): the classifier-free guided noise estimate at scale w, in this course's "
        "convention (w = 1 is the conditional model, w = 0 the unconditional one).",
        reference=lambda c, f, w: f + w * (c - f), inputs=_cfg_inputs,
        mistakes=(("that is Ho and Salimans' convention, (1 + w) eps_cond - w eps_free, where w = 0 is the conditional "
                   "model; this course's w is theirs plus one", lambda c, f, w: (1 + w) * c - w * f),
                  ("the two estimates are swapped: move from the unconditional estimate towards the conditional one",
                   lambda c, f, w: c + w * (f - c))),
        hint="start from the unconditional estimate and move w times the difference towards the conditional one"),
    Exercise(
        "unit2.cross_attention", UNIT2_CLASSES,
        "cross_attention(pixels, tokens, w_q, w_k, w_v): single-head cross-attention, queries from the pixels "
        "(B, N, width), keys and values from the tokens (B, M, width_t).",
        reference=_attention, inputs=_attention_inputs,
        mistakes=(("divide the scores by the square root of the query width before the softmax",
                   lambda *a: _attention(*a, scale=False)),
                  ("the softmax runs over the tokens (the last dimension): each pixel's weights sum to one",
                   lambda *a: _attention(*a, dim=-2))),
        hint="scores = q k^T / sqrt(d), softmax over the tokens, then the weighted sum of the values"),
    Exercise(
        "unit2.class_embedding_params", UNIT2_CLASSES,
        "How many parameters does digits-cond spend on its class embedding (unet.class_embedding)? Count them.",
        reference=lambda: _zoo_params("digits-cond", "class_embedding"),
        mistakes=(("there is one more label than digits: the 'no class' label that classifier-free guidance needs",
                   lambda: _zoo_params("digits-cond", "class_embedding", rows=10)),),
        hint="count the numbers in the embedding's weight", rtol=0, atol=0.5),
    Exercise(
        "unit3.latent_ratio", UNIT3_SD,
        "How many times fewer numbers does tiny-sd's UNet work on than the pixels of the image it draws (pixels "
        "times channels over latent positions times channels)? Measure it on the loaded pipeline.",
        reference=_latent_ratio,
        mistakes=(("count the channels too: 3 per pixel, 4 per latent position", lambda: _latent_ratio(True)),),
        hint="compare pipe.vae's image size and channels with pipe.unet's sample size and channels", rtol=1e-6),
    Exercise(
        "unit3.attention_heads", UNIT3_SD,
        "attention_heads(q, k, v, heads): attention of projected queries q (B, N, D) over keys and values (B, M, D) "
        "with `heads` heads of width D / heads each, merged back to (B, N, D).",
        reference=_heads, inputs=_heads_inputs,
        mistakes=(("each head scales its scores by the square root of its own width D / heads, not of D",
                   lambda q, k, v, h: _heads(q, k, v, h, head_scale=False)),
                  ("split the width into heads and let each attend on its own before merging",
                   lambda q, k, v, h: _heads(q, k, v, 1) if h > 1 else None)),
        hint="reshape to (B, heads, N, D / heads), attend, then transpose and reshape back"),
    Exercise(
        "unit3.inpaint_blend", UNIT3_SD,
        "keep_known(z, z_known, mask): the latents after an inpainting step: the model's latents z where the mask "
        "is 1 (the region to paint), the known image's latents z_known (noised to the same step) where it is 0.",
        reference=lambda z, known, m: m * z + (1 - m) * known, inputs=_blend_inputs,
        mistakes=(("the mask is 1 where new content goes: keep the known latents where it is 0",
                   lambda z, known, m: (1 - m) * z + m * known),),
        hint="a weighted sum with the mask and 1 - mask as weights"),
    Exercise(
        "unit3.lora_linear", UNIT3_LORA,
        "lora_linear(x, W, A, B, alpha, r): a linear layer W (out, in) with a LoRA update, for inputs x (N, in).",
        reference=lambda x, w, a, b, alpha, r: x @ w.T + (alpha / r) * (x @ a.T) @ b.T, inputs=_lora_inputs,
        mistakes=(("the update is scaled by alpha / r", lambda x, w, a, b, alpha, r: x @ w.T + (x @ a.T) @ b.T),
                  ("the update is added to the frozen layer's output, not used alone",
                   lambda x, w, a, b, alpha, r: (alpha / r) * (x @ a.T) @ b.T)),
        hint="x W^T plus (alpha / r) times x A^T B^T"),
    Exercise(
        "unit3.lora_merge", UNIT3_LORA,
        "merge(W, A, B, alpha, r): the single weight matrix that does what the layer with its LoRA does, so that "
        "inference costs nothing extra.",
        reference=lambda w, a, b, alpha, r: w + (alpha / r) * b @ a, inputs=_lora_merge_inputs,
        mistakes=(("the update is scaled by alpha / r", lambda w, a, b, alpha, r: w + b @ a),),
        hint="W + (alpha / r) B A has W's shape (out, in)"),
    Exercise(
        "unit3.lora_params", UNIT3_LORA,
        "How many trainable parameters does a rank-4 LoRA on tiny-sd's attention projections have "
        "(coursekit.adapters.add_lora(pipe.unet, rank=4))? Count the parameters that require gradients.",
        reference=_lora_params,
        mistakes=(("count only the parameters that require gradients: the UNet itself is frozen",
                   lambda: _lora_params(everything=True)),),
        hint="sum p.numel() over the parameters with p.requires_grad", rtol=0, atol=0.5),
    Exercise(
        "unit4.inversion_step", UNIT4_INVERSION,
        "invert_step(x, eps, ab_prev, ab_t): one step of DDIM inversion, up from the noise level ab_prev to the "
        "noisier ab_t, with the noise estimate eps.",
        reference=lambda x, eps, b, a: a.sqrt() * (x - (1 - b).sqrt() * eps) / b.sqrt() + (1 - a).sqrt() * eps,
        inputs=_inversion_inputs,
        mistakes=(("x0-hat comes from the current latent, at its own level ab_prev; ab_t is where the step goes",
                   lambda x, eps, b, a: a.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - a).sqrt() * eps),),
        hint="the DDIM step with the two noise levels in the other order"),
    Exercise(
        "unit4.psnr", UNIT4_INVERSION,
        "psnr(x, reference): the PSNR in dB of images in [-1, 1], per image with pixels scaled to 0..1, averaged "
        "over the batch, as the notebook reports it.",
        reference=_psnr, inputs=_psnr_inputs,
        mistakes=(("the images are in [-1, 1]: scale them to 0..1 (a range of 2) before the squared error, or "
                   "use a peak of 2", lambda x, r: _psnr(x, r, scale=1.0)),
                  ("compute the PSNR of each image, then average the decibels",
                   lambda x, r: 10 * torch.log10(1 / (((x - r) / 2) ** 2).mean()))),
        hint="10 log10(1 / MSE) with the pixels in 0..1"),
    Exercise(
        "unit4.inversion_calls", UNIT4_INVERSION,
        "How many UNet calls does inverting one batch with 50 DDIM steps and sampling it back with 50 take? "
        "Count them with a forward hook on the UNet while running coursekit.inversion.invert and denoise.",
        reference=lambda: 100,
        mistakes=(("both directions call the UNet once per step", lambda: 50),),
        hint="count the forward passes of both runs", rtol=0, atol=0.5),
    Exercise(
        "unit4.hz_to_mel", UNIT4_AUDIO,
        "hz_to_mel(f): frequencies in Hz to the mel scale that torchaudio and the notebook use (HTK's).",
        reference=lambda f: 2595 * torch.log10(1 + f / 700), inputs=_mel_inputs,
        mistakes=(("HTK's mel scale uses log10, with the factor 2595", lambda f: 2595 * torch.log(1 + f / 700)),),
        hint="2595 log10(1 + f / 700)", rtol=1e-6),
    Exercise(
        "unit4.mel_filters", UNIT4_AUDIO,
        "mel_filters(n_freqs, n_mels, sample_rate): the (n_freqs, n_mels) matrix of triangular filters that turns "
        "a power spectrum into mel bands, from 0 Hz to the Nyquist frequency, HTK's mel scale, no normalisation.",
        reference=_fbank, inputs=_fbank_inputs,
        mistakes=(("no area normalisation: each triangle peaks at 1", lambda n, m, r: _fbank(n, m, r, norm="slaney")),
                  ("place the centres evenly on HTK's mel scale, not Slaney's",
                   lambda n, m, r: _fbank(n, m, r, mel_scale="slaney")),
                  ("one column per mel band: the result is (n_freqs, n_mels)", lambda n, m, r: _fbank(n, m, r).T)),
        hint="n_mels + 2 points evenly spaced in mel, back to Hz, and a triangle rising and falling between "
             "neighbours, evaluated at the n_freqs bin frequencies", rtol=1e-4, atol=1e-5),
    Exercise(
        "unit4.image_seconds", UNIT4_AUDIO,
        "How many seconds of audio does one small-track mel image hold (coursekit.audio.PRESETS['small'])? "
        "Measure it: make a mel image of a slice and count the samples it needs.",
        reference=_image_seconds,
        mistakes=(),
        hint="frames times the hop length, in samples, over the sample rate", rtol=5e-3),   # 1.02 as printed
    Exercise(
        "unit4.one_step_eps", UNIT4_FASTER,
        "one_step_eps(z, z_target, ab_t, ab_next): the noise estimate with which one DDIM step from z (at ab_t) "
        "lands exactly on z_target (at ab_next): progressive distillation's target.",
        reference=_one_step_eps, inputs=_one_step_inputs,
        hint="write z_target = sqrt(ab_next) x0 + sqrt(1 - ab_next) eps with x0 from z and eps, and solve for eps; "
             "check that a DDIM step with your eps lands on z_target", rtol=1e-4, atol=1e-6),
    Exercise(
        "unit4.trailing_timesteps", UNIT4_FASTER,
        "trailing_timesteps(steps): the timesteps, from the noisiest down, that DDIM with trailing spacing visits "
        "in `steps` steps of a 1000-step schedule.",
        reference=_trailing, inputs=lambda g: (int(torch.randint(1, 60, (1,), generator=g)),),
        mistakes=(("that is leading spacing, which starts below t = 999; trailing counts down from 999",
                   lambda n: _trailing(n, "leading")),
                  ("that is linspace spacing; trailing steps are 1000 / steps apart from 999 down",
                   lambda n: _trailing(n, "linspace"))),
        hint="999, then 1000 / steps lower each time, rounded", rtol=0, atol=0.5),
    Exercise(
        "unit4.distilled_calls", UNIT4_FASTER,
        "How many times less UNet work per sample does the 4-step student need than its 64-step teacher with "
        "classifier-free guidance? Measure it: a forward hook that adds up the batch size of every UNet call "
        "(a guided step runs both halves in one batch of twice the size).",
        reference=lambda: 64 * 2 / 4,
        mistakes=(("the guided teacher's batches are twice the size: count images through the UNet, not calls",
                   lambda: 64 / 4),),
        hint="images through the UNet per sample, for each", rtol=1e-6),
    Exercise(
        "unit4.flow_target", UNIT4_NEW,
        "velocity(x0, noise): the flow-matching target on the straight path x_s = (1 - s) x0 + s noise.",
        reference=lambda x0, noise: noise - x0, inputs=_flow_inputs,
        mistakes=(("the velocity is d x_s / ds: it points from the data towards the noise as s grows",
                   lambda x0, noise: x0 - noise),),
        hint="differentiate x_s with respect to s"),
    Exercise(
        "unit4.euler_step", UNIT4_NEW,
        "euler_step(x, v, s, s_next): one Euler step of the flow ODE from level s down to s_next.",
        reference=lambda x, v, s, s_next: x + (s_next - s) * v, inputs=_euler_inputs,
        mistakes=(("s_next is below s, so the step (s_next - s) is negative: x moves against the velocity",
                   lambda x, v, s, s_next: x + (s - s_next) * v),
                  ("an Euler step adds the velocity times the step size, not the velocity alone",
                   lambda x, v, s, s_next: x - v)),
        hint="x at s_next = x at s + (s_next - s) times the velocity at s"),
    Exercise(
        "unit4.edm_preconditioning", UNIT4_NEW,
        "preconditioning(sigma): EDM's (c_skip, c_out, c_in, c_noise) with sigma_data = 0.5, as a tuple.",
        reference=_edm, inputs=_sigmas,
        mistakes=(("c_noise is log(sigma) / 4", lambda s: _edm_with(s, 3, s.log())),
                  ("c_in scales the input to unit variance: divide by the square root of sigma^2 + sigma_data^2",
                   lambda s: _edm_with(s, 2, 1 / (s ** 2 + 0.25))),
                  ("c_out is sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)",
                   lambda s: _edm_with(s, 1, s / (s ** 2 + 0.25).sqrt()))),
        hint="return the four as a tuple in the order (c_skip, c_out, c_in, c_noise)"),
    Exercise(
        "unit4.heun_calls", UNIT4_NEW,
        "How many network calls does EDM's Heun sampler (coursekit.edm.heun) make with 13 steps? Measure it: "
        "count the model's forward passes with `unet.register_forward_hook`.",
        reference=lambda: _edm_calls(13),
        mistakes=(("the last step ends at sigma = 0, where Heun's correction would divide by zero: it has none",
                   lambda: 2 * 13),),
        hint="count the forward passes, not the steps", rtol=0, atol=0.5),
]}


def get(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ExerciseError(f"no exercise named {name!r}; known: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def for_notebook(notebook: str) -> list[Exercise]:
    """The exercises of a notebook, given as 'unitN/NN_name.ipynb' (a longer path works too)."""
    return [ex for ex in EXERCISES.values() if str(notebook).replace("\\", "/").endswith(ex.notebook)]
