"""Bad input to training, sampling and the training commands: each case is refused at the
entrance with its error type and a message that names the fix, and nothing is written."""
import math
import re

import pytest
import torch

from coursekit import cli, distill, guidance, models, samplers, train, zoo
from tests.helpers import tiny_scheduler, tiny_unet


def images(n=16):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


TRAIN_CASES = {
    "zero steps": (dict(steps=0), "steps must be at least 1"),
    "negative steps": (dict(steps=-5), "steps must be at least 1"),
    "fractional steps": (dict(steps=2.5), "steps must be a whole number"),
    "zero batch": (dict(batch_size=0), "batch_size must be at least 1"),
    "zero accumulation": (dict(grad_accum=0), "grad_accum must be at least 1"),
    "zero learning rate": (dict(lr=0.0), "learning rate must be a finite number > 0"),
    "negative learning rate": (dict(lr=-1e-3), "learning rate must be a finite number > 0"),
    "NaN learning rate": (dict(lr=math.nan), "learning rate must be a finite number > 0"),
    "negative warm-up": (dict(warmup=-1), "warmup must be a whole number of steps >= 0"),
    "EMA decay of 1": (dict(ema_decay=1.0), "ema_decay must lie strictly between 0 and 1"),
    "zero checkpoint interval": (dict(checkpoint_every=0), "checkpoint_every must be at least 1"),
    "label dropout of 1": (dict(p_uncond=1.0), r"p_uncond is a probability in \[0, 1\)"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_training_settings_are_refused(case, tmp_path):
    change, message = TRAIN_CASES[case]
    args = dict(steps=2, batch_size=8, warmup=0, out_dir=tmp_path / "run", progress=False)
    with pytest.raises(train.SettingsError, match=message):
        train.train(tiny_unet(), tiny_scheduler(), images(), **{**args, **change})
    assert not (tmp_path / "run").exists()


DATA_CASES = {
    "NaN pixel": (lambda x, y: (x.index_put((torch.tensor([0]),), torch.tensor(math.nan)), None), "NaN or infinite"),
    "0..255 scale": (lambda x, y: (x * 127.5 + 127.5, None), r"\[-1, 1\]; use coursekit.data.to_tensor"),
    "integer images": (lambda x, y: (x.round().long(), None), "must be floats"),
    "float labels": (lambda x, y: (x, y.float()), "one whole-number class per image"),
    "label out of range": (lambda x, y: (x, y + 3), r"labels must lie in 0..2"),
    "too few labels": (lambda x, y: (x, y[:3]), "one whole-number class per image"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_training_data_is_refused(case):
    make, message = DATA_CASES[case]
    x, y = make(images(), torch.arange(16) % 3)
    unet = tiny_unet(classes=3) if y is not None else tiny_unet()
    with pytest.raises(train.SettingsError, match=message):
        train.train(unet, tiny_scheduler(), x, y, steps=1, batch_size=8, progress=False)


SAMPLE_CASES = {
    "zero steps": (dict(steps=0), samplers.SamplerError, "steps must be a whole number from 1 to 1000"),
    "negative steps": (dict(steps=-3), samplers.SamplerError, "steps must be a whole number from 1 to 1000"),
    "more steps than training steps": (dict(steps=1001), samplers.SamplerError, "from 1 to 1000"),
    "fractional steps": (dict(steps=2.5), samplers.SamplerError, "whole number"),
    "NaN guidance": (dict(labels=[0, 1], guidance_scale=math.nan), models.ModelError, "guidance_scale must be a finite"),
    "float labels": (dict(labels=[0.4, 1.7]), models.ModelError, "whole-number class indices"),
    "label out of range": (dict(labels=[0, 7]), models.ModelError, r"labels must lie in 0\.\.2"),
    "NaN noise": (dict(x=torch.full((2, 1, 8, 8), math.nan)), models.ModelError, "NaN or infinite.*samplers.noise"),
    "integer noise": (dict(x=torch.zeros(2, 1, 8, 8, dtype=torch.long)), models.ModelError, "float tensor"),
    "eta above 1": (dict(eta=2.0), samplers.SamplerError, r"eta must lie in \[0, 1\]"),
}


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_sampling_inputs_are_refused(case):
    change, error, message = SAMPLE_CASES[case]
    args = {"x": torch.randn(2, 1, 8, 8), "steps": 3, "progress": False, **change}
    with pytest.raises(error, match=message):
        samplers.ddim(tiny_unet(classes=3), tiny_scheduler(), args.pop("x"), **args)


def test_ddpm_with_zero_steps_is_refused_instead_of_running_all_of_them():
    with pytest.raises(samplers.SamplerError, match="steps must be a whole number from 1"):
        samplers.ddpm(tiny_unet(), tiny_scheduler(), torch.randn(1, 1, 8, 8), steps=0, progress=False)


class BreaksAt(torch.nn.Module):
    """A UNet that returns NaN from its `k`-th call on."""

    def __init__(self, unet, k):
        super().__init__()
        self.unet, self.k, self.calls = unet, k, 0
        self.config = unet.config

    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, *args, **kwargs):
        self.calls += 1
        out = self.unet(*args, **kwargs)
        if self.calls > self.k:
            out.sample.fill_(math.nan)
        return out


def test_nan_during_sampling_stops_and_names_the_step():
    with pytest.raises(samplers.SamplerError, match=r"NaN or infinite at step 2 \(t=\d+\)"):
        samplers.ddim(BreaksAt(tiny_unet(), 2), tiny_scheduler(), torch.randn(2, 1, 8, 8), steps=5, progress=False)


def test_nan_during_loss_guidance_stops_and_names_the_step():
    loss = lambda x0: (x0 * math.nan).sum() if x0.requires_grad else x0.sum()
    with pytest.raises(samplers.SamplerError, match=r"NaN or infinite at step 1 \(t=666\)"):   # t=999 is not guided
        guidance.guided_sample(tiny_unet(), samplers.scheduler_named("ddim", tiny_scheduler()), torch.randn(2, 1, 8, 8),
                               loss, scale=1.0, steps=3, progress=False)


@pytest.mark.parametrize("scale", [math.nan, math.inf, "big"])
def test_loss_guidance_scale_must_be_finite(scale):
    with pytest.raises(samplers.SamplerError, match="scale must be a finite number"):
        guidance.guided_sample(tiny_unet(), samplers.scheduler_named("ddim", tiny_scheduler()), torch.randn(1, 1, 8, 8),
                               lambda x0: x0.sum(), scale=scale, steps=2, progress=False)


@pytest.mark.parametrize("colour", [(1.2, 0, 0), (0.5, 0.5), (math.nan, 0, 0), "red", (-0.1, 0.2, 0.3)])
def test_colours_outside_rgb_are_refused(colour):
    with pytest.raises(samplers.SamplerError, match=r"3 numbers \(R, G, B\) in 0\.\.1|numbers in 0\.\.1"):
        guidance.colour_loss(colour)


def test_a_nan_in_the_nested_grid_sampler_names_the_step():
    with pytest.raises(samplers.SamplerError, match=r"NaN or infinite at step 1"):
        distill.sample_on_grid(BreaksAt(tiny_unet(), 1), tiny_scheduler(), torch.randn(1, 1, 8, 8), steps=4, progress=False)


COMMAND_CASES = {
    "zoo run without --out": (["train", "digits-uncond", "--steps", "3"], "--out DIR.*--into-package"),
    "short run into the package": (["train", "digits-uncond", "--steps", "3", "--into-package"],
                                   "shorter run than the recipe would replace the shipped.*--out DIR"),
    "both --out and --into-package": (["train", "digits-uncond", "--out", "x", "--into-package"], "not both"),
    "distillation without --out": (["distill", "digits-cond", "--steps-per-round", "2"], "--out DIR.*--into-package"),
    "short distillation into the package": (["distill", "digits-cond", "--steps-per-round", "2", "--into-package"],
                                            "shorter run than the recipe"),
    "zero zoo steps": (["train", "digits-uncond", "--steps", "0", "--out", "{tmp}/z"], "steps must be at least 1"),
    "fine-tune with zero steps": (["finetune", "--model", "digits-uncond", "--dataset", "digits", "--resize",
                                   "--out", "{tmp}/f", "--steps", "0"], "steps must be at least 1"),
    "fine-tune with lr 0": (["finetune", "--model", "digits-uncond", "--dataset", "digits", "--resize",
                             "--out", "{tmp}/f", "--lr", "0"], "learning rate must be a finite number > 0"),
    "fine-tune with no accumulation": (["finetune", "--model", "digits-uncond", "--dataset", "digits", "--resize",
                                        "--out", "{tmp}/f", "--grad-accum", "0"], "grad_accum must be at least 1"),
    "fine-tune sampling every 0 steps": (["finetune", "--model", "digits-uncond", "--dataset", "digits", "--resize",
                                          "--out", "{tmp}/f", "--sample-every", "0"], "sample_every must be at least 1"),
}


@pytest.mark.parametrize("case", sorted(COMMAND_CASES))
def test_training_commands_refuse_and_write_nothing(case, tmp_path):
    argv, message = COMMAND_CASES[case]
    shipped = {p: p.stat().st_mtime_ns for p in zoo.ZOO_DIR.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=message):
        cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert {p: p.stat().st_mtime_ns for p in zoo.ZOO_DIR.rglob("*") if p.is_file()} == shipped
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("module,argv", [("zoo", ["train", "digits-uncond", "--steps", "3"]),
                                         ("distill", ["digits-cond", "--steps-per-round", "2"])])
@pytest.mark.slow
def test_python_dash_m_commands_refuse_in_one_line_too(module, argv):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", f"coursekit.{module}", *argv], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "--out DIR" in done.stderr and len(done.stderr.strip().splitlines()) == 1


OBJECTIVE_MODELS = {"epsilon": "digits-cond", "flow": "digits-flow", "edm": "digits-edm",
                    "consistency": "digits-consistency", "cold": "digits-cold"}


def _draw(objective, unet, scheduler, y):
    """One call of the sampler made for `objective` on `unet`."""
    from coursekit import cold, consistency, edm, flow

    x = torch.randn(len(y), 1, 16, 16, generator=torch.Generator().manual_seed(0))
    if objective == "epsilon":
        return samplers.ddim(unet, scheduler, x, steps=1, labels=y, progress=False)
    if objective == "flow":
        return flow.euler(unet, x, steps=1, labels=y)
    if objective == "edm":
        return edm.heun(unet, x, steps=1, labels=y)
    if objective == "consistency":
        return consistency.sample(unet, scheduler, x, steps=1, labels=y)
    real, _ = zoo.training_images(zoo.RECIPES["digits-cold"])
    return cold.sample(unet, cold.start(real, len(y)), steps=1, labels=y)


@pytest.mark.parametrize("sampler", sorted(OBJECTIVE_MODELS))
@pytest.mark.parametrize("objective", sorted(OBJECTIVE_MODELS))
def test_every_sampler_refuses_a_model_of_another_objective_naming_the_right_one(objective, sampler):
    """Each zoo model declares what it predicts when loaded; each sampler runs only models of its own
    objective, and names the sampler that fits the others (they used to return chance-level images)."""
    from coursekit import models

    unet, scheduler = models.load_model(OBJECTIVE_MODELS[objective])
    assert models.objective_of(unet) == objective
    y = torch.arange(2)
    if sampler == objective:
        assert torch.isfinite(_draw(sampler, unet, scheduler, y)).all()
    else:
        what, right = models.OBJECTIVES[objective]
        with pytest.raises((models.ModelError, samplers.SamplerError),
                           match=rf"trained for {re.escape(what)}.*sample it with {re.escape(right.split()[0])}"):
            _draw(sampler, unet, scheduler, y)


def test_a_fresh_or_trained_model_declares_the_objective_it_is_trained_for():
    from coursekit import flow, models

    fresh, _ = zoo.build(zoo.RECIPES["digits-flow"])
    assert models.objective_of(fresh) == "flow"
    result = flow.train(zoo.build(zoo.RECIPES["digits-cond"])[0], images(8).repeat(1, 1, 2, 2), torch.arange(8) % 10,
                        steps=1, batch_size=4, warmup=0, progress=False)
    assert models.objective_of(result.unet) == "flow", "flow matching training makes an epsilon model a flow model"
    with pytest.raises(models.ModelError, match="sample it with coursekit.flow.euler"):
        samplers.ddim(result.unet, tiny_scheduler(), torch.randn(1, 1, 16, 16), steps=1, labels=torch.tensor([1]),
                      progress=False)
    with pytest.raises(models.ModelError, match="unknown objective 'noise'"):
        models.declare_objective(fresh, "noise")


def test_cold_sampling_from_gaussian_noise_is_refused_and_names_the_flat_start():
    from coursekit import cold, models

    unet, blur = models.load_model("digits-cold")
    with pytest.raises(cold.ColdError, match=r"standard deviation of 1\.0.*coursekit\.cold\.start"):
        cold.sample(unet, torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)),
                    levels=blur.config.levels, sigma_max=blur.config.sigma_max, labels=torch.arange(2))
