"""Inputs checked at the entrance of the modules added in the second half of the course (captions,
exercises, ...): a prompt parsed so that no word goes unread, and exercises that judge the answer, not
its type (issue 25)."""
import numpy as np
import pytest
import torch

from coursekit import adapters, captions, compare, exercises, samplers
from coursekit import stable_diffusion as sd


@pytest.mark.parametrize("prompt,wanted", [("a red seven", (7, "red")), ("a red seven.", (7, "red")),
                                           ("a red 7", (7, "red")), ("A Red Seven!", (7, "red")),
                                           ("an orange digit", (None, "orange")), ("a seven", (7, None))])
def test_prompts_are_read_whole_whatever_their_punctuation_or_numerals(prompt, wanted):
    assert captions.parse(prompt) == wanted


@pytest.mark.parametrize("prompt,unread", [("a red sevn", "'sevn'"), ("a red 17", "'17'"),
                                           ("a red seven and a blue two", "'and'"),
                                           ("a red seven on grass", "'on', 'grass' are not words")])
def test_a_prompt_with_a_word_the_captions_never_use_is_refused_not_half_read(prompt, unread):
    with pytest.raises(captions.CaptionError, match=f"such as 'a red seven'.*{unread}.* of the captions"):
        captions.parse(prompt)


@pytest.mark.parametrize("answer", [12, 12.0, np.float32(12), np.int64(12), torch.tensor(12.0), torch.tensor([12]),
                                    np.array([12.0])], ids=lambda a: type(a).__name__ + str(getattr(a, "shape", "")))
def test_a_right_number_is_right_in_any_numeric_type(answer):
    assert exercises.get("unit3.latent_ratio").reference() == 12
    assert exercises.check("unit3.latent_ratio", answer).correct


@pytest.mark.parametrize("answer", [True, "12", [12, 13], torch.tensor([12.0, 12.0])], ids=repr)
def test_what_is_not_one_number_is_told_so(answer):
    verdict = exercises.check("unit3.latent_ratio", answer)
    assert not verdict.correct and "give one number" in verdict.message


@pytest.mark.parametrize("trials", [0, -1, 1.5, True])
def test_trials_must_be_at_least_one(trials):
    with pytest.raises(exercises.ExerciseError, match="trials must be a whole number >= 1"):
        exercises.check("unit1.alpha_bar", lambda betas: betas, trials=trials)


def test_a_tuple_mixing_numbers_and_tensors_is_judged_not_crashed_on():
    def preconditioning(sigma, sigma_data=0.5):
        return 1.0, sigma, sigma, sigma           # c_skip as a bare float: wrong, and told so
    verdict = exercises.check("unit4.edm_preconditioning", preconditioning)
    assert not verdict.correct and "raised" not in verdict.message


@pytest.mark.parametrize("kwargs,message", [
    (dict(methods=["DDIM", "DDMI"]), r"unknown method\(s\) 'DDMI'; known: DDPM, DDIM"),
    (dict(nfes=[0, 2]), "nfes must be a list of whole numbers >= 1"),
    (dict(nfes=4), "nfes must be a list"),
    (dict(per_class=1), "per_class must be a whole number >= 2"),
])
def test_compare_refuses_unknown_methods_and_bad_counts_before_any_work(kwargs, message):
    with pytest.raises(compare.CompareError, match=message):
        compare.compare(**{"nfes": (1,), "per_class": 2, "progress": False, **kwargs})


@pytest.fixture(scope="module")
def tiny_sd():
    return sd.load_pipeline("tiny-sd")


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_inpainting_with_no_steps_is_refused(tiny_sd, steps):
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(samplers.SamplerError, match="steps must be a whole number from 1"):
        sd.inpaint(tiny_sd, images, torch.ones(1, 1, 32, 32), ["a red seven"], steps=steps)


@pytest.mark.parametrize("conditions,message", [
    (torch.full((1, 3, 32, 32), 255.0), r"must lie in \[0, 1\].*look like 0\.\.255: divide by 255"),
    (torch.full((1, 3, 32, 32), 255, dtype=torch.uint8), r"finite floats in \[0, 1\]; convert with"),
    (torch.full((1, 3, 32, 32), float("nan")), r"finite floats"),
    (torch.zeros(1, 1, 32, 32), r"tensor \(N, 3, H, W\)"),
])
def test_controlnet_conditions_outside_zero_to_one_are_refused_not_turned_into_nan(tiny_sd, conditions, message):
    controlnet = adapters.load_controlnet("tiny-sd-controlnet")
    with pytest.raises(adapters.AdapterError, match=message):
        adapters.controlled_image(tiny_sd, controlnet, ["a red seven"], conditions, steps=2)


def test_a_measured_answer_is_accepted_as_the_notebook_prints_it():
    assert exercises.check("unit4.image_seconds", 1.02).correct, "the notebook prints the slice as 1.02 s"
    assert not exercises.check("unit4.image_seconds", 1.1).correct


def _one_head(q, k, v, heads):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v


def _lora_without_scale(x, w, a, b, alpha, r):
    return x @ w.T + (x @ a.T) @ b.T


@pytest.mark.parametrize("name,wrong", [("unit3.attention_heads", _one_head), ("unit3.lora_linear", _lora_without_scale)])
def test_no_random_draw_lets_a_known_mistake_pass(name, wrong):
    """The random inputs exclude degenerate draws: one head (splitting changes nothing) and alpha = rank
    (a scale of 1), where leaving the step out would be judged correct."""
    assert not any(exercises.check(name, wrong, trials=1, seed=seed).correct for seed in range(200))


def _new_direction_cases():
    from coursekit import cold, edm, flow, models

    x, y = torch.randn(2, 1, 16, 16), torch.tensor([1, 2])
    small = torch.randn(2, 1, 8, 8)
    return {
        "flow at another size": (lambda: flow.euler(models.load_model("digits-flow")[0], small, steps=2, labels=y),
                                 models.ModelError, "trained on 16x16 images, x is 8x8.*samplers.noise"),
        "EDM at another size": (lambda: edm.heun(models.load_model("digits-edm")[0], small, steps=2, labels=y),
                                models.ModelError, "trained on 16x16 images"),
        "cold at another size": (lambda: cold.sample(models.load_model("digits-cold")[0], torch.zeros(2, 1, 8, 8),
                                                     labels=y), models.ModelError, "trained on 16x16 images"),
        "Karras rho 0": (lambda: edm.karras_sigmas(4, rho=0), edm.EDMError, "rho must be a finite number > 0"),
        "Karras sigma_min above sigma_max": (lambda: edm.karras_sigmas(4, sigma_min=100.0), edm.EDMError,
                                             "need 0 < sigma_min < sigma_max"),
        "flow time outside 0..1": (lambda: flow.interpolate(x, x, torch.tensor([0.5, 2.0])), flow.FlowError,
                                   r"s is the time along the line, in \[0, 1\]"),
        "blur level -1": (lambda: cold.degrade(x, -1), cold.ColdError, "whole blur level from 0"),
        "blur level past the last": (lambda: cold.degrade(x, 99), cold.ColdError, "whole blur level from 0"),
        "blur level as a fraction": (lambda: cold.degrade(x, 2.5), cold.ColdError, "whole blur level"),
        "no starting points": (lambda: cold.start(x, 0), cold.ColdError, "n is the number of starting points"),
        "negative start noise": (lambda: cold.start(x, 2, noise=-1.0), cold.ColdError, "noise is a standard deviation"),
    }


@pytest.mark.parametrize("case", sorted(_new_direction_cases()))
def test_the_new_directions_refuse_sizes_times_levels_and_counts_they_cannot_use(case):
    call, error, message = _new_direction_cases()[case]
    with pytest.raises(error, match=message):
        call()


def test_latents_of_another_shape_are_refused(tiny_sd):
    shape = sd.latent_shape(tiny_sd, 2)
    with pytest.raises(sd.PipelineError, match=rf"latents must be a tensor of shape \({shape[0]}, {shape[1]}"):
        sd.text_to_image(tiny_sd, ["a red seven", "a blue two"], steps=2, latents=torch.randn(2, shape[1], 4, 4))


@pytest.mark.parametrize("kwargs,message", [
    (dict(conditioning_scale=float("nan")), "conditioning_scale must be a finite number >= 0"),
    (dict(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0"),
    (dict(conditions=torch.zeros(1, 3, 16, 16)), "conditions must be image-sized for this pipeline, 32x32"),
])
def test_controlnet_scales_and_condition_sizes_are_checked(tiny_sd, kwargs, message):
    controlnet = adapters.load_controlnet("tiny-sd-controlnet")
    args = {"conditions": torch.zeros(1, 3, 32, 32), "steps": 2, **kwargs}
    with pytest.raises(adapters.AdapterError, match=message):
        adapters.controlled_image(tiny_sd, controlnet, ["a red seven"], args.pop("conditions"), **args)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "1"])
def test_a_lora_scale_must_be_a_finite_number(tiny_sd, scale):
    with pytest.raises(adapters.AdapterError, match="scale must be a finite number"):
        adapters.load_lora(tiny_sd, "tiny-sd-lcm-lora", "lcm", scale=scale)
