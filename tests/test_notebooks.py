"""The notebooks' own code, checked outside the notebooks: loops agree with coursekit, and the
notebooks follow the course's conventions (budget, first cell, no stray outputs)."""
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from coursekit import samplers, train
from tests.helpers import tiny_scheduler, tiny_unet

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "units").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
UNIT1 = ROOT / "units" / "unit1" / "01_ddpm_and_ddim.ipynb"


def tagged(path, *tags) -> dict:
    """Run the notebook cells tagged `tags`, in order, and return the names they define."""
    nb = nbformat.read(path, as_version=4)
    names = {"torch": torch, "F": F}
    for tag in tags:
        cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{path.name} should have exactly one cell tagged {tag!r}"
        exec(compile(cells[0].source, f"{path.name}[{tag}]", "exec"), names)
    return names


def test_there_are_notebooks():
    assert UNIT1 in NOTEBOOKS


def test_notebook_add_noise_is_the_forward_process():
    add_noise = tagged(UNIT1, "teach-add-noise")["add_noise"]
    s = tiny_scheduler("linear")
    g = torch.Generator().manual_seed(0)
    x0, eps, t = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g), torch.tensor([1, 400, 999])
    torch.testing.assert_close(add_noise(x0, eps, t, s.alphas_cumprod), s.add_noise(x0, eps, t))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_notebook_ddim_loop_equals_coursekit(eta):
    ddim_loop = tagged(UNIT1, "teach-ddim-loop")["ddim_loop"]
    unet, sched = tiny_unet(), tiny_scheduler()
    ddim = samplers.scheduler_named("ddim", sched)
    ddim.set_timesteps(10)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    by_hand = ddim_loop(unet, noise, sched.alphas_cumprod, ddim.timesteps, eta=eta, generator=torch.Generator().manual_seed(2))
    by_kit = samplers.ddim(unet, sched, noise, steps=10, eta=eta, generator=torch.Generator().manual_seed(2), progress=False)
    torch.testing.assert_close(by_hand, by_kit, atol=1e-4, rtol=1e-4)   # at eta > 0 coursekit's alpha-bars are float64


@pytest.mark.parametrize("steps", [20, 1000])
def test_notebook_ddpm_loop_equals_coursekit(steps):
    ddpm_loop = tagged(UNIT1, "teach-ddpm-loop")["ddpm_loop"]
    unet, sched = tiny_unet(), tiny_scheduler()
    ddpm = samplers.scheduler_named("ddpm", sched)
    ddpm.set_timesteps(steps)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    by_hand = ddpm_loop(unet, noise, sched.alphas_cumprod, ddpm.timesteps, generator=torch.Generator().manual_seed(4))
    by_kit = samplers.ddpm(unet, sched, noise, steps=steps, generator=torch.Generator().manual_seed(4), progress=False)
    torch.testing.assert_close(by_hand, by_kit, atol=1e-4, rtol=1e-4)


def test_notebook_training_step_is_coursekits_objective():
    training_step = tagged(UNIT1, "teach-add-noise", "teach-train-step")["training_step"]
    sched = tiny_scheduler()
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    a, b = tiny_unet(), tiny_unet()
    opt = torch.optim.SGD(a.parameters(), lr=0.0)
    loss_nb = training_step(a, sched, x0, opt, torch.Generator().manual_seed(6))
    x_t, t, eps = train.noisy_batch(sched, x0, torch.Generator().manual_seed(6))
    loss_kit = F.mse_loss(b(x_t, t).sample, eps).item()
    assert loss_nb == pytest.approx(loss_kit, rel=1e-6)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    from tests.executed import notebook_budget_minutes

    nb = nbformat.read(path, as_version=4)
    for track in ("small", "full"):
        assert notebook_budget_minutes(path, track) is not None, f"state 'Time budget ({track} track): N minutes' at the top"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert 'find_spec("coursekit") is None' in first_code.source, "first code cell installs coursekit when missing"
    assert "torch" not in first_code.source.replace("coursekit", ""), "the install cell must not install torch"
    import coursekit

    pin = f"git+https://github.com/coursekit/coursekit@v{coursekit.__version__}"
    assert pin in first_code.source, f"the install cell pins coursekit to the release tag: {pin}"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        checked = "NBVAL_CHECK_OUTPUT" in cell.source
        if checked:
            assert cell.outputs and cell.execution_count, "a checked cell keeps its outputs and execution count"
            assert all(o.output_type == "stream" for o in cell.outputs), "a checked cell prints text only"
        else:
            assert not cell.outputs, "commit notebooks without outputs, except NBVAL_CHECK_OUTPUT cells"
    assert any("NBVAL_CHECK_OUTPUT" in c.source for c in nb.cells if c.cell_type == "code")
    assert "widgets" not in nb.metadata, "no saved widget state"
    settings = [c for c in nb.cells if c.cell_type == "code" and "tracks.Settings(" in c.source]
    assert len(settings) == 1, "one visible settings cell"


UNIT2_COND = ROOT / "units" / "unit2" / "02_class_conditioned.ipynb"


def test_notebook_class_channels_are_what_class_channels_unet_feeds_its_unet():
    from coursekit import models

    with_class_channels = tagged(UNIT2_COND, "teach-class-channels")["with_class_channels"]
    model = models.ClassChannelsUNet(sample_size=8, in_channels=1, num_class_embeds=4, unet_config=dict(
        block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1))
    torch.nn.init.normal_(model.embed.weight)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 50, 900]), torch.tensor([0, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(model.unet(with_class_channels(x, y, model.embed), t).sample,
                                   model(x, t, class_labels=y).sample)


def test_notebook_class_embedding_is_what_diffusers_adds_to_the_timestep_embedding():
    timestep_and_class = tagged(UNIT2_COND, "teach-class-embedding")["timestep_and_class"]
    unet = tiny_unet(classes=4)
    torch.nn.init.normal_(unet.class_embedding.weight)
    seen = {}
    hook = unet.down_blocks[0].resnets[0].register_forward_pre_hook(lambda m, args: seen.update(temb=args[1]))
    t, y = torch.tensor([3, 400]), torch.tensor([1, 4])
    with torch.no_grad():
        unet(torch.randn(2, 1, 8, 8), t, class_labels=y)
        ours = timestep_and_class(unet, t, y)
    hook.remove()
    torch.testing.assert_close(ours, seen["temb"])


def test_notebook_label_dropout_is_coursekits():
    drop_labels = tagged(UNIT2_COND, "teach-drop-labels")["drop_labels"]
    y = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(0))
    ours = drop_labels(y, 0.2, 10, torch.Generator().manual_seed(1))
    assert torch.equal(ours, train.drop_labels(y, 0.2, 10, torch.Generator().manual_seed(1)))
    assert abs((ours == 10).float().mean().item() - 0.2) < 0.02
    assert torch.equal(ours[ours != 10], y[ours != 10])


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_notebook_cfg_formula_is_coursekits_batched_guidance(w):
    cfg_noise = tagged(UNIT2_COND, "teach-cfg")["cfg_noise"]
    unet = tiny_unet(classes=3)
    torch.nn.init.normal_(unet.class_embedding.weight)
    x, y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        torch.testing.assert_close(cfg_noise(unet, x, 300, y, w, null=3),
                                   samplers.predict_noise(unet, x, 300, y, guidance_scale=w), atol=1e-5, rtol=1e-5)


def test_notebook_cross_attention_is_scaled_dot_product_attention():
    cross_attention = tagged(UNIT2_COND, "teach-cross-attention")["cross_attention"]
    g = torch.Generator().manual_seed(3)
    pixels, tokens = torch.randn(2, 10, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    w = [torch.randn(6, 6, generator=g) for _ in range(3)]
    out, weights = cross_attention(pixels, tokens, *w)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(pixels @ w[0], tokens @ w[1], tokens @ w[2]))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 10))


UNIT2_GUIDE = ROOT / "units" / "unit2" / "01_finetuning_and_guidance.ipynb"


def test_notebook_colour_guidance_loop_is_coursekits_x_only_guidance():
    from coursekit import guidance

    colour_guided_ddim = tagged(UNIT2_GUIDE, "teach-colour-guidance")["colour_guided_ddim"]
    unet, sched = tiny_unet(channels=3), samplers.scheduler_named("ddim", tiny_scheduler())
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    colour = (0.9, 0.2, 0.1)
    by_hand = colour_guided_ddim(unet, sched, noise, colour, 7.0, 6)
    by_kit = guidance.guided_sample(unet, sched, noise, guidance.colour_loss(colour), scale=7.0, steps=6, progress=False)
    torch.testing.assert_close(by_hand, by_kit, atol=1e-5, rtol=1e-5)
    plain = samplers.ddim(unet, sched, noise, steps=6, progress=False)
    assert guidance.mean_colour_distance(by_hand, colour) < guidance.mean_colour_distance(plain, colour)


UNIT4_INV = ROOT / "units" / "unit4" / "01_ddim_inversion.ipynb"


def test_notebook_inversion_loop_is_coursekits():
    from coursekit import inversion

    ddim_invert = tagged(UNIT4_INV, "teach-ddim-inversion")["ddim_invert"]
    unet, sched = tiny_unet(), tiny_scheduler()
    ddim = DDIMScheduler.from_config(sched.config, timestep_spacing="leading")   # as the notebook and inversion
    ddim.set_timesteps(7)
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    by_hand = ddim_invert(unet, sched.alphas_cumprod, x0, ddim.timesteps.tolist())
    by_kit = inversion.invert(unet, sched, x0, steps=7, progress=False)
    assert len(by_hand) == len(by_kit.latents) == 8
    for a, b in zip(by_hand, by_kit.latents):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


UNIT4_FAST = ROOT / "units" / "unit4" / "03_faster_sampling.ipynb"


def test_notebook_distillation_target_is_coursekits():
    from coursekit import distill

    distillation_target = tagged(UNIT4_FAST, "teach-distillation-target")["distillation_target"]
    unet, sched = tiny_unet(classes=3), tiny_scheduler()
    torch.nn.init.normal_(unet.class_embedding.weight)
    z, y = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(6)), torch.tensor([0, 1, 3])
    t, half = 720, 120
    ab = sched.alphas_cumprod
    with torch.no_grad():
        eps_of = lambda x, i: samplers.predict_noise(unet, x, [t, t - half][i], y, 2.0)
        ours = distillation_target(eps_of, z, ab[t], ab[t - half], ab[t - 2 * half])
        kit, _ = distill.targets(unet, sched, z, t, 8, y, 2.0)
    torch.testing.assert_close(ours, kit, atol=1e-5, rtol=1e-5)


UNIT4_AUDIO = ROOT / "units" / "unit4" / "02_diffusion_for_audio.ipynb"


def test_notebook_mel_image_is_coursekits_to_image():
    import math

    from coursekit import audio

    mel_image = tagged(UNIT4_AUDIO, "teach-mel-image")["mel_image"]
    for preset in audio.PRESETS.values():
        t = torch.arange(preset.slice_samples) / preset.sample_rate
        wave = 0.3 * torch.sin(2 * math.pi * 330 * t) + 0.1 * torch.sin(2 * math.pi * 1234 * t) * (t > t.mean())
        for w in (wave, wave[: len(wave) // 3]):  # a full slice, and a short one padded with silence
            ours = mel_image(w, preset)
            # the same 8-bit grey levels as to_image (tests/test_audio_conformance.py checks those
            # against audio-diffusion's Mel), row 0 = the lowest mel band, where the 330 Hz tone is
            torch.testing.assert_close(ours, audio.to_image(w, preset), atol=1e-6, rtol=0)
            grey = (ours + 1) / 2 * 255
            torch.testing.assert_close(grey, grey.round(), atol=1e-4, rtol=0)
            assert ours[0].mean(1).argmax() < preset.n_mels // 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_readme_and_unit_page_carry_colab_and_kaggle_badges(path):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from badges import badges

    line = badges(path.relative_to(ROOT).as_posix())
    assert line in (ROOT / "README.md").read_text(), f"README.md lacks the badges of {path.name}"
    assert line in (path.parent / "README.md").read_text(), f"{path.parent.name}/README.md lacks the badges of {path.name}"


def _runs_on(source: str, S) -> bool:
    """Whether a code cell does anything on the track whose settings are `S`: a cell whose every
    top-level statement is an `if` without `else` that is false there does nothing."""
    import ast

    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.If) and not stmt.orelse:
            try:
                if not eval(compile(ast.Expression(stmt.test), "<test>", "eval"), {"S": S}):
                    continue
            except Exception:
                return True
        return True
    return False


def sections(path) -> dict[str, list[str]]:
    """{'## heading': [code cell sources]} in notebook order; code before the first heading is 'top'."""
    nb = nbformat.read(path, as_version=4)
    out, current = {"top": []}, "top"
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            current = cell.source.splitlines()[0]
            out[current] = []
        elif cell.cell_type == "code":
            out[current].append(cell.source)
    return out


def track_settings(path, track: str):
    from types import SimpleNamespace

    from coursekit import cli

    values = {k: v[0 if track == "small" else 1] for k, v in cli.notebook_settings(path).items()}
    return SimpleNamespace(track=track, **values)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_section_runs_on_both_tracks(path):
    skipped = []
    for heading, cells in sections(path).items():
        if not cells:
            continue
        for track in ("small", "full"):
            S = track_settings(path, track)
            if not any(_runs_on(c, S) for c in cells):
                skipped.append(f"{heading!r} does nothing on the {track} track")
    assert not skipped, "; ".join(skipped)


def test_the_section_check_sees_a_one_track_section(tmp_path):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("S = tracks.Settings(model=('a', 'org/b'), ks=((1, 2), None))"),
                             new_markdown_cell("## 1. Both"), new_code_cell("print(S.model)"),
                             new_markdown_cell("## 2. Small only"), new_code_cell("if S.track == 'small':\n    print(1)"),
                             new_code_cell("if S.ks:\n    print(S.ks)"),
                             new_markdown_cell("## 3. Either branch"),
                             new_code_cell("if S.track == 'full':\n    print(1)\nelse:\n    print(2)")])
    nbformat.write(nb, tmp_path / "x.ipynb")
    with pytest.raises(AssertionError, match=r"'## 2. Small only' does nothing on the full track"):
        test_every_section_runs_on_both_tracks(tmp_path / "x.ipynb")


def test_notebook_schedule_labelled_stable_diffusion_is_the_one_it_was_trained_with():
    from diffusers import DDPMScheduler

    from coursekit import standins

    nb = nbformat.read(UNIT1, as_version=4)
    cell = next(c for c in nb.cells if "teach-schedules" in c.metadata.get("tags", []))
    names = {"DDPMScheduler": DDPMScheduler}
    exec(compile(cell.source.split("viz.schedule_plot")[0], "schedules", "exec"), names)
    sd = next(s for name, s in names["schedules"].items() if "Stable Diffusion" in name)
    real = DDPMScheduler.from_config(standins.real_config("stable-diffusion-v1-5/stable-diffusion-v1-5",
                                                          "scheduler/scheduler_config.json"))
    torch.testing.assert_close(sd.alphas_cumprod, real.alphas_cumprod)
    assert 0.004 < float(sd.alphas_cumprod[999]) < 0.006, "the prose: about 0.5% of the variance is still signal at t = 999"
    default = next(s for name, s in names["schedules"].items() if name.startswith("scaled linear 1e-4"))
    assert (default.config.beta_start, default.config.beta_end) == (0.0001, 0.02)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_readme_and_unit_page_state_the_notebooks_own_budgets(path):
    import re

    from coursekit import cli

    b = cli.notebook_budgets(path)
    small, full = (f"{b[t]:g}" for t in ("small", "full"))
    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith(f"| `{path.relative_to(ROOT).as_posix()}`"))
    assert row.rstrip().endswith(f"| {small} / {full} minutes |"), "README's units table"
    page = (path.parent / "README.md").read_text().split(f"## [{path.name}]")[1].split("\n## ")[0]
    assert re.search(rf"Small track: {small} minutes; full track: {full} minutes\.", page), "the unit page"


def test_instructor_guide_shows_the_t4_estimates_of_every_notebook():
    guide = (ROOT / "units" / "README.md").read_text()
    block = guide.split("<!-- t4 -->")[1].split("<!-- /t4 -->")[0]
    for path in NOTEBOOKS:
        assert f"| `{path.relative_to(ROOT / 'units').as_posix()}` |" in block.split("heavy cells on a T4, in all")[1]
    assert "GB" in block and "min" in block


UNIT3_SD = ROOT / "units" / "unit3" / "01_stable_diffusion.ipynb"


@pytest.fixture(scope="module")
def tiny_sd_pipe(tmp_path_factory):
    from coursekit import stable_diffusion
    from tests.helpers import save_tiny_stable_diffusion

    return stable_diffusion.load_pipeline(str(save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "pipe")))


@pytest.mark.parametrize("w", [1.0, 4.0])
def test_notebook_text_to_image_loop_is_the_pipeline_and_coursekits(tiny_sd_pipe, w):
    from coursekit import stable_diffusion

    loop = tagged(UNIT3_SD, "teach-text-to-image")["text_to_image_loop"]
    ours = loop(tiny_sd_pipe, "a red cat", 6, w, torch.Generator().manual_seed(7))
    theirs = tiny_sd_pipe("a red cat", num_inference_steps=6, guidance_scale=w, generator=torch.Generator().manual_seed(7),
                          output_type="pt").images * 2 - 1
    kit = stable_diffusion.text_to_image(tiny_sd_pipe, "a red cat", steps=6, guidance_scale=w,
                                         generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours, kit, atol=1e-4, rtol=0)


def test_notebook_sd_cross_attention_is_the_unets_layer(tiny_sd_pipe):
    cross_attention = tagged(UNIT3_SD, "teach-sd-cross-attention")["cross_attention"]
    attn = tiny_sd_pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    g = torch.Generator().manual_seed(8)
    pixels = torch.randn(2, 64, attn.to_q.in_features, generator=g)
    text = torch.randn(2, 7, attn.to_k.in_features, generator=g)
    with torch.no_grad():
        ours, weights = cross_attention(attn, pixels, text)
        torch.testing.assert_close(ours, attn(pixels, encoder_hidden_states=text), atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, attn.heads, 64, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, attn.heads, 64))


UNIT3_LORA = ROOT / "units" / "unit3" / "02_lora_and_controlnet.ipynb"


def test_notebook_lora_formula_is_pefts_layer(tiny_sd_pipe):
    from coursekit import adapters

    lora_linear = tagged(UNIT3_LORA, "teach-lora")["lora_linear"]
    unet = tiny_sd_pipe.unet
    adapters.add_lora(unet, rank=2, alpha=6)
    try:
        layer = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k
        torch.nn.init.normal_(layer.lora_B["default"].weight)
        h = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            torch.testing.assert_close(lora_linear(h, layer.base_layer.weight, layer.lora_A["default"].weight,
                                                   layer.lora_B["default"].weight, alpha=6, r=2), layer(h))
    finally:
        unet.delete_adapters("default")


UNIT4_NEW = ROOT / "units" / "unit4" / "04_new_directions.ipynb"


def test_new_directions_flow_matching_lines_are_coursekits():
    from coursekit import flow
    from tests.helpers import tiny_unet

    names = tagged(UNIT4_NEW, "teach-flow")
    unet = tiny_unet(classes=3)
    g = torch.Generator().manual_seed(0)
    x0, noise, s = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, generator=g)
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        want = F.mse_loss(unet(flow.interpolate(x0, noise, s), s * flow.TRAIN_TIMESTEPS, class_labels=y).sample,
                          flow.velocity(x0, noise))
        torch.testing.assert_close(names["flow_matching_loss"](unet, x0, noise, s, y), want)
        x, times = noise.clone(), flow.sigmas(4)
        for a, b in zip(times[:-1], times[1:]):
            x = names["euler_step"](x, unet(x, a * 1000, class_labels=y).sample, a, b)
    torch.testing.assert_close(x, flow.euler(unet, noise, steps=4, labels=y))


def test_new_directions_edm_preconditioning_is_coursekits():
    from coursekit import edm

    names = tagged(UNIT4_NEW, "teach-edm")
    sigma = torch.logspace(-3, 2, 40)
    for a, b in zip(names["preconditioning"](sigma), edm.preconditioning(sigma)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(names["loss_weight"](sigma), edm.loss_weight(sigma))


def test_new_directions_patch_embedding_is_the_dits():
    from coursekit.models import ClassDiT

    names = tagged(UNIT4_NEW, "teach-dit")
    dit = ClassDiT(sample_size=8, width=32, depth=1, heads=2)
    proj = dit.dit.pos_embed.proj
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(names["embed_patches"](x, proj.weight, proj.bias, 2), proj(x).flatten(2).transpose(1, 2))


def test_new_directions_consistency_loop_is_coursekits():
    from coursekit import consistency, samplers
    from tests.helpers import tiny_scheduler, tiny_unet

    names = tagged(UNIT4_NEW, "teach-consistency")
    names["samplers"] = samplers
    unet, sched = tiny_unet(classes=3), tiny_scheduler()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        ours = names["consistency_sample"](unet, sched, x, 4, y, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, consistency.sample(unet, sched, x, steps=4, labels=y,
                                                        generator=torch.Generator().manual_seed(3)), atol=1e-5, rtol=0)


def test_new_directions_latent_consistency_function_is_coursekits_and_lcm_schedulers():
    from diffusers import LCMScheduler

    from coursekit import consistency

    names = tagged(UNIT4_NEW, "teach-lcm")
    lcm = LCMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 19, 259, 999])
    z, eps = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    ours = names["latent_consistency_function"](eps, z, t, lcm.alphas_cumprod)
    torch.testing.assert_close(ours, consistency.consistency_function(eps, z, t, lcm.alphas_cumprod))
    torch.testing.assert_close(ours[:1], z[:1])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_rehearsal_sizes_are_settings_of_the_notebook_and_no_larger_than_the_rule(path):
    """The rehearsal proves the full track's code paths, not its sizes: each notebook names, in its metadata
    coursekit.rehearsal, a step or two and a sample or two for its counts; each is one of its settings,
    and never more than what the scaling rule alone would run."""
    from coursekit import cli, tracks

    sizes = cli.rehearsal_sizes(path)
    settings = cli.notebook_settings(path)
    assert sizes, "give the rehearsal its sizes (metadata coursekit.rehearsal)"
    assert set(sizes) <= set(settings), f"not settings of the notebook: {set(sizes) - set(settings)}"

    def total(v):
        if isinstance(v, dict):
            return sum(total(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return sum(total(x) for x in v)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0

    for key, value in sizes.items():
        rule = tracks.rehearsal_value(*settings[key])
        assert total(value) <= total(rule), f"{key}: {value!r} runs more than the rule's {rule!r}"
