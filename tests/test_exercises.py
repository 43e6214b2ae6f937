"""Self-checking exercises: every solution in units/solutions passes its check, a typical wrong answer
to each gets the hint meant for it (never the solution), and the generic diagnoses work."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from coursekit import exercises

ROOT = Path(__file__).parent.parent
SOLUTIONS = sorted((ROOT / "units" / "solutions").glob("*.py"))


def solutions() -> dict:
    found = {}
    for path in SOLUTIONS:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found.update(module.ANSWERS)
    return found


def answer_of(ex, solution):
    return solution() if ex.kind == "value" else solution


def test_every_exercise_has_a_solution_and_a_notebook():
    assert set(solutions()) == set(exercises.EXERCISES)
    for ex in exercises.EXERCISES.values():
        assert (ROOT / "units" / ex.notebook).is_file(), ex.notebook
        assert ex.task and (ex.mistakes or ex.hint)


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_each_solution_passes_its_check(name):
    ex = exercises.get(name)
    verdict = exercises.check(name, answer_of(ex, solutions()[name]), seed=0)
    assert verdict and verdict.correct, verdict.message
    assert exercises.check(name, answer_of(ex, solutions()[name]), seed=123)


# A typical wrong answer per exercise, written here (not taken from the module), and the hint it must get.
WRONG = {
    "unit1.alpha_bar": (lambda betas: torch.cumprod(betas, 0), "multiply the alphas"),
    "unit1.q_sample": (lambda x0, t, eps, ab: ab[t].reshape(-1, 1, 1, 1) * x0 + (1 - ab[t].reshape(-1, 1, 1, 1)) * eps,
                       "a variance used where a standard deviation belongs"),
    "unit1.snr_steps": (None, "ratio of variances"),
    "unit1.ddim_step": (lambda x, eps, a, b: b.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - a).sqrt() * eps,
                        "the new noise term is sqrt(1 - ab_prev)"),
    "unit2.predict_x0": (lambda x, eps, ab: (x - (1 - ab.reshape(-1, 1, 1, 1)) * eps) / ab.reshape(-1, 1, 1, 1),
                         "standard deviations, not variances"),
    "unit2.colour_loss": (lambda x, c: (x - c.reshape(1, 3, 1, 1)).abs().mean(dim=(1, 2, 3)).sum(), "map it there too"),
    "unit2.uncond_params": (None, "not the tensors"),
    "unit2.cfg": (lambda c, f, w: (1 + w) * c - w * f, "Ho and Salimans' convention"),
    "unit2.cross_attention": (lambda p, t, q, k, v: torch.softmax((p @ q) @ (t @ k).transpose(-1, -2), -1) @ (t @ v),
                              "square root of the query width"),
    "unit2.class_embedding_params": (1280, "the 'no class' label"),
    "unit3.latent_ratio": (16.0, "count the channels too"),
    "unit3.attention_heads": (lambda q, k, v, h: torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v,
                              "split the width into heads"),
    "unit3.inpaint_blend": (lambda z, known, m: (1 - m) * z + m * known, "the mask is 1 where new content goes"),
    "unit3.lora_linear": (lambda x, w, a, b, alpha, r: x @ w.T + (x @ a.T) @ b.T, "scaled by alpha / r"),
    "unit3.lora_merge": (lambda w, a, b, alpha, r: w + b @ a, "scaled by alpha / r"),
    "unit3.lora_params": (None, "the UNet itself is frozen"),
    "unit4.inversion_step": (lambda x, eps, b, a: a.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - a).sqrt() * eps,
                             "x0-hat comes from the current latent"),
    "unit4.psnr": (lambda x, r: (10 * torch.log10(1 / ((x - r) ** 2).flatten(1).mean(1))).mean(), "scale them to 0..1"),
    "unit4.inversion_calls": (50, "both directions"),
    "unit4.hz_to_mel": (lambda f: 2595 * torch.log(1 + f / 700), "log10"),
    "unit4.mel_filters": (None, "no area normalisation"),
    "unit4.image_seconds": (0.5, "frames times the hop length"),
    "unit4.one_step_eps": (lambda z, zt, a, b: (zt - b.sqrt() * z) / (1 - b).sqrt(), "solve for eps"),
    "unit4.trailing_timesteps": (lambda n: torch.linspace(0, 999, n).round().long().flip(0), "linspace spacing"),
    "unit4.distilled_calls": (16.0, "count images through the UNet"),
    "unit4.flow_target": (lambda x0, noise: x0 - noise, "points from the data towards the noise"),
    "unit4.euler_step": (lambda x, v, s, s_next: x + (s - s_next) * v, "the step (s_next - s) is negative"),
    "unit4.edm_preconditioning": (None, "c_noise is log(sigma) / 4"),
    "unit4.heun_calls": (26, "the last step ends at sigma = 0"),
}


def wrong_snr_steps():
    from diffusers import DDPMScheduler

    ab = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod
    return int(((ab / (1 - ab)).sqrt() < 0.01).sum())


def wrong_preconditioning(sigma, sigma_data=0.5):
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    return c_skip, c_out, 1 / (sigma ** 2 + sigma_data ** 2).sqrt(), sigma.log()


def wrong_param_count():
    from coursekit import models

    return len(list(models.load_model("digits-uncond")[0].parameters()))


def wrong_lora_count():
    from coursekit import adapters, stable_diffusion

    pipe = stable_diffusion.load_pipeline("tiny-sd")
    adapters.add_lora(pipe.unet, rank=4)
    return sum(p.numel() for p in pipe.unet.parameters())


def wrong_mel_filters(n_freqs, n_mels, sample_rate):
    import torchaudio.functional as AF

    return AF.melscale_fbanks(n_freqs, 0.0, sample_rate / 2, n_mels, sample_rate, norm="slaney", mel_scale="htk")


def test_every_exercise_has_a_wrong_answer_tested():
    assert set(WRONG) == set(exercises.EXERCISES)


@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_typical_wrong_answer_gets_its_hint_and_not_the_solution(name):
    answer, hint = WRONG[name]
    answer = {"unit1.snr_steps": wrong_snr_steps(), "unit4.edm_preconditioning": wrong_preconditioning,
              "unit2.uncond_params": wrong_param_count(), "unit3.lora_params": wrong_lora_count(),
              "unit4.mel_filters": wrong_mel_filters}.get(name, answer)
    verdict = exercises.check(name, answer, seed=1)
    assert not verdict and hint in verdict.message, verdict.message
    ex = exercises.get(name)
    if ex.kind == "value":
        assert str(int(round(float(ex.reference())))) not in verdict.message.replace(str(answer), "")


def test_generic_diagnoses():
    def none(betas):
        pass

    assert "returned None" in exercises.check("unit1.alpha_bar", none).message
    assert "raised ZeroDivisionError" in exercises.check("unit1.alpha_bar", lambda b: 1 / 0).message
    assert "no brackets" in exercises.check("unit1.alpha_bar", 3.0).message
    assert "one number" in exercises.check("unit1.snr_steps", lambda: 3).message
    assert "NaN" in exercises.check("unit1.alpha_bar", lambda b: b / 0 * 0).message
    assert "shape" in exercises.check("unit1.alpha_bar", lambda b: torch.cumprod(1 - b, 0)[None]).message
    assert "constant factor" in exercises.check("unit4.flow_target", lambda x0, n: 2 * (n - x0)).message
    assert "sign is flipped" in exercises.check("unit1.alpha_bar", lambda b: -torch.cumprod(1 - b, 0)).message
    assert repr(exercises.check("unit4.flow_target", lambda x0, n: n - x0)).startswith("correct")
    with pytest.raises(exercises.ExerciseError, match="no exercise named"):
        exercises.check("unit9.nothing", None)


def test_a_notebook_with_exercises_checks_each_of_them_in_its_exercises_section():
    for notebook in sorted({ex.notebook for ex in exercises.EXERCISES.values()}):
        cells = json.loads((ROOT / "units" / notebook).read_text())["cells"]
        heads = [i for i, c in enumerate(cells)
                 if c["cell_type"] == "markdown" and "".join(c["source"]).startswith("## Exercises")]
        assert len(heads) == 1, f"{notebook} needs one '## Exercises' section"
        code = "\n".join("".join(c["source"]) for c in cells[heads[0]:] if c["cell_type"] == "code")
        for ex in exercises.for_notebook(notebook):
            assert f'exercises.check("{ex.name}"' in code, f"{notebook} does not check {ex.name}"
