import json

import pytest
import torch

from coursekit import cli, hub, models, samplers, zoo
from tests.helpers import fake_hub_snapshot, save_flat_layout, save_pipeline_layout, tiny_scheduler, tiny_unet


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", sorted(zoo.RECIPES))
def test_every_zoo_checkpoint_ships_with_a_model_card(name):
    unet, scheduler = models.load_model(name)
    folder = zoo.ZOO_DIR / name
    card = (folder / "README.md").read_text()
    recipe = json.loads((folder / "recipe.json").read_text())
    assert f"coursekit train {name}" in card
    assert "## Measured quality" in card
    r = zoo.RECIPES[name]
    if r.objective == "cold":     # every sample of a digit is the same image: the FD is large by design (Unit 4)
        assert recipe["quality"]["conditional_accuracy"] >= 0.5 and recipe["quality"]["fid_pca20"] < 1000
    elif r.dataset == "digits":
        assert "judge_held_out_accuracy" in card and 0 < recipe["quality"]["fid_pca20"] < 50, "uniform noise scores about 1000"
    elif r.audio_preset:
        from coursekit import audio

        assert recipe["quality"][f"share judged {r.genre}"] >= 0.8
        assert models.load_audio_model(name)[2] == audio.PRESETS[r.audio_preset]
    else:
        assert 0 < recipe["quality"][f"pixel_fd to {r.dataset}"] < 20, "uniform noise scores about 50"
    size = unet.config.sample_size
    assert (tuple(size) if isinstance(size, (list, tuple)) else (size, size)) == r.shape
    assert list(folder.glob("unet/*.safetensors"))


def test_tiny_stable_diffusion_ships_as_a_pipeline_with_its_card_and_meets_its_bars():
    from diffusers import StableDiffusionPipeline

    folder = zoo.ZOO_DIR / "tiny-sd"
    card = (folder / "README.md").read_text()
    quality = json.loads((folder / "recipe.json").read_text())["quality"]
    assert "coursekit train tiny-sd" in card and "## Measured quality" in card
    assert quality["seen_prompt_accuracy"] >= 0.9, "the issue's bar on prompts seen in training"
    assert 0 < quality["held_out_prompt_accuracy"] <= 1 and quality["held_out_samples"] >= 80
    for part in ("seen", "held_out"):       # the prompt judge reads the card's samples as the second judge does
        assert abs(quality[f"{part}_digit_accuracy"] - quality[f"{part}_digit_accuracy_second_judge"]) <= 0.02, part
    pipe = StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    assert {type(getattr(pipe, p)).__name__ for p in ("vae", "text_encoder", "tokenizer", "unet")} == {
        "AutoencoderKL", "CLIPTextModel", "CLIPTokenizer", "UNet2DConditionModel"}
    assert not [p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".ckpt", ".pkl")]


@pytest.mark.slow
def test_tiny_stable_diffusion_recipe_trains_for_a_few_steps(tmp_path):
    from coursekit import stable_diffusion

    out = zoo.train_text_checkpoint("tiny-sd", tmp_path / "m", steps=3, vae_steps=3, evaluate_after=False,
                                    progress=False)
    pipe = stable_diffusion.load_pipeline(out)
    shipped = stable_diffusion.load_pipeline("tiny-sd")
    assert pipe.unet.config.cross_attention_dim == shipped.unet.config.cross_attention_dim
    assert pipe.vae.config.block_out_channels == shipped.vae.config.block_out_channels
    assert len(pipe.tokenizer) == len(shipped.tokenizer)
    assert pipe.vae.config.scaling_factor != 0.18215, "the scaling factor is measured on the data"
    assert "VAE 3 steps" in (out / "README.md").read_text() and not (tmp_path / "m.work").exists()
    with pytest.raises(zoo.ZooError, match="shorter run"):
        zoo.train_text_checkpoint("tiny-sd", steps=3, into_package=True)


def test_tiny_controlnet_ships_with_its_card_and_follows_edges_better_than_without():
    from coursekit import adapters

    folder = zoo.ZOO_DIR / "tiny-sd-controlnet"
    card = (folder / "README.md").read_text()
    quality = json.loads((folder / "recipe.json").read_text())["quality"]
    assert "coursekit train tiny-sd-controlnet" in card and "## Measured quality" in card
    assert quality["edge_agreement_with_control"] > quality["edge_agreement_without_control"] + 0.1
    net = adapters.load_controlnet("tiny-sd-controlnet")
    assert type(net).__name__ == "ControlNetModel" and list(folder.glob("*.safetensors"))


@pytest.mark.slow
def test_tiny_controlnet_recipe_trains_for_a_few_steps(tmp_path):
    from coursekit import adapters

    out = zoo.train_checkpoint("tiny-sd-controlnet", tmp_path / "c", steps=2, evaluate_after=False, progress=False)
    net = adapters.load_controlnet(str(out))
    assert net.config.conditioning_embedding_out_channels == [16, 32, 96] or \
        tuple(net.config.conditioning_embedding_out_channels) == (16, 32, 96)
    assert "2 steps of batch" in (out / "README.md").read_text() and not (tmp_path / "c.work").exists()


def test_tiny_lcm_lora_ships_with_its_card_and_beats_four_ddim_steps():
    from coursekit import adapters

    folder = zoo.ZOO_DIR / "tiny-sd-lcm-lora"
    card = (folder / "README.md").read_text()
    quality = json.loads((folder / "recipe.json").read_text())["quality"]
    assert "coursekit train tiny-sd-lcm-lora" in card and "## Measured quality" in card
    assert quality["lcm_lora4_prompt_accuracy"] > quality["base_ddim4_prompt_accuracy"] + 0.1
    assert quality["lcm_lora4_pixel_fd16"] < quality["base_ddim4_pixel_fd16"] / 2, "and far closer to real digits"
    assert quality["lcm_lora1_prompt_accuracy"] > quality["base_lcm1_prompt_accuracy"]
    assert adapters.lora_folder("tiny-sd-lcm-lora") == folder and "tiny-sd-lcm-lora" in adapters.zoo_adapters()
    assert zoo.is_shipped("tiny-sd-lcm-lora")


@pytest.mark.slow
def test_tiny_lcm_lora_recipe_trains_for_a_few_steps_and_loads(tmp_path):
    from coursekit import adapters, consistency
    from coursekit import stable_diffusion as sd

    out = zoo.train_checkpoint("tiny-sd-lcm-lora", tmp_path / "l", steps=2, evaluate_after=False, progress=False)
    assert "2 steps of batch" in (out / "README.md").read_text() and not (tmp_path / "l.work").exists()
    pipe = sd.load_pipeline("tiny-sd")
    adapters.load_lora(pipe, out, "lcm")
    x = consistency.lcm_text_to_image(pipe, ["a red seven"], steps=1, generator=__import__("torch").Generator().manual_seed(0))
    assert x.shape == (1, 3, 32, 32)
    with pytest.raises(zoo.ZooError, match="shorter run"):
        zoo.train_checkpoint("tiny-sd-lcm-lora", steps=2, into_package=True)


def test_class_channel_models_save_and_load_like_any_model(tmp_path):
    from coursekit.models import ClassChannelsUNet

    unet, sched = zoo.build(zoo.RECIPES["digits-channels"])
    torch.nn.init.normal_(unet.embed.weight)
    models.save_model(unet, sched, tmp_path / "m")
    got, _ = models.load_model(tmp_path / "m")
    assert isinstance(got, ClassChannelsUNet) and got.config.num_class_embeds == 11
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["scheduler", "unet"], "no side file"
    assert same_weights(got, unet)
    x, t, y = torch.randn(3, 1, 16, 16), torch.tensor([5, 500, 900]), torch.tensor([0, 3, 10])
    with torch.no_grad():
        assert torch.equal(got(x, t, class_labels=y).sample, unet(x, t, class_labels=y).sample)


@pytest.mark.slow
def test_shipped_conditional_model_draws_the_digit_asked_for():
    """A quick re-measurement of the model card's figure (the benchmark measures it on more samples)."""
    from coursekit import metrics

    unet, scheduler = models.load_model("digits-cond")
    judge = metrics.digit_judge(16)
    assert judge.held_out_accuracy > 0.95
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(10).repeat(6)
    x = samplers.ddim(unet, scheduler, samplers.noise(unet, len(labels), g), steps=25, labels=labels,
                      guidance_scale=zoo.RECIPES["digits-cond"].eval_guidance, progress=False)
    assert judge.accuracy(x, labels) >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.RECIPES))
def test_every_recipe_trains_for_a_few_steps(name, tmp_path, monkeypatch):
    import dataclasses

    recipe = zoo.RECIPES[name]
    if recipe.extra.get("pairs"):      # reflow: a few pairs, drawn in few steps
        small = dataclasses.replace(recipe, extra={**recipe.extra, "pairs": 20, "pair_steps": 2}, batch_size=10)
        monkeypatch.setitem(zoo.RECIPES, name, small)
    out = zoo.train_checkpoint(name, tmp_path / name, steps=3, evaluate_after=False, progress=False)
    unet, scheduler = models.load_model(out)
    built = zoo.build(zoo.RECIPES[name])[0]
    inner = lambda m: getattr(m, "unet", m)
    public = lambda config: json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))
    assert type(unet) is type(built)
    assert public(inner(unet).config) == public(inner(built).config)
    card = (out / "README.md").read_text()
    assert "3 optimizer steps" in card and "one torch thread" in card
    assert f"{zoo.warmup_ran(zoo.RECIPES[name], 3)} warm-up" in card, "the card states the warm-up that ran"
    assert not (tmp_path / f"{name}.work").exists() and not (out / "training").exists()


def test_reevaluate_rewrites_the_card_with_fresh_measurements(tmp_path):
    out = zoo.train_checkpoint("digits-cond", tmp_path / "m", steps=2, evaluate_after=False, progress=False)
    assert "conditional_accuracy" not in (out / "README.md").read_text()
    quality = zoo.reevaluate("digits-cond", out, per_class=2)
    assert quality["samples"] == 20 and 0 <= quality["conditional_accuracy"] <= 1
    card = (out / "README.md").read_text()
    assert "| conditional_accuracy |" in card and "chosen by sweeping" in card and "2 optimizer steps" in card


def test_a_card_states_the_warm_up_and_threads_that_ran_not_the_recipes(tmp_path):
    out = zoo.train_checkpoint("digits-cond", tmp_path / "m", steps=6, threads=2, evaluate_after=False, progress=False)
    card = (out / "README.md").read_text()
    assert zoo.RECIPES["digits-cond"].warmup == 100 and "(cosine, 3 warm-up" in card and "2 torch threads" in card
    record = json.loads((out / "recipe.json").read_text())
    assert (record["steps"], record["warmup_ran"], record["threads"]) == (6, 3, 2)
    zoo.reevaluate("digits-cond", out, per_class=1)
    assert "(cosine, 3 warm-up" in (out / "README.md").read_text() and "2 torch threads" in (out / "README.md").read_text()


def test_zoo_command_line_trains(tmp_path):
    assert cli.main(["train", "digits-uncond", "--steps", "2", "--no-eval", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "unet" / "config.json").exists()


@pytest.mark.parametrize("layout", [save_pipeline_layout, save_flat_layout])
def test_load_reads_local_folders_in_both_layouts(layout, tmp_path):
    unet, sched = tiny_unet(classes=2), tiny_scheduler()
    folder = layout(tmp_path / "m", unet, sched)
    got, got_sched = models.load_model(folder)
    assert same_weights(got, unet)
    assert type(got_sched).__name__ == "DDPMScheduler" and got_sched.config.beta_schedule == "squaredcos_cap_v2"


def test_load_takes_a_hub_id_at_its_pinned_revision(monkeypatch, tmp_path):
    """The Hub path, through huggingface_hub's own cache lookup, on a tiny model saved as a snapshot."""
    from huggingface_hub import constants

    sha = "c" * 40
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "pins", lambda: {"tiny-org/tiny-ddpm": sha})
    unet, sched = tiny_unet(), tiny_scheduler()
    save_pipeline_layout(fake_hub_snapshot(tmp_path, "tiny-org/tiny-ddpm", sha), unet, sched)
    got, _ = models.load_model("tiny-org/tiny-ddpm")
    assert same_weights(got, unet)


def test_hub_id_offline_and_not_cached_says_so(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(models.ModelError, match=r"google/ddpm-cat-256 is not in the Hugging Face cache and HF_HUB_OFFLINE"):
        models.load_model("google/ddpm-cat-256")


def test_unknown_model_names_list_the_zoo():
    with pytest.raises(models.ModelError, match=r"unknown model 'digits-xl'.*digits-cond, .*digits-uncond"):
        models.load_model("digits-xl")
    with pytest.raises(zoo.ZooError, match="no recipe named"):
        zoo.train_checkpoint("digits-xl")


def test_pickled_weights_are_refused(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "m", safe_serialization=False)
    tiny_scheduler().save_pretrained(tmp_path / "m")
    with pytest.raises(models.ModelError, match="does not unpickle"):
        models.load_model(tmp_path / "m")


def test_folder_without_scheduler_is_refused(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "m")
    with pytest.raises(models.ModelError, match="scheduler_config.json"):
        models.load_model(tmp_path / "m")


def test_hub_pins_must_be_commits(monkeypatch, tmp_path):
    f = tmp_path / "pins.json"
    f.write_text(json.dumps({"org/m": "main"}))
    monkeypatch.setattr(hub, "PINS_FILE", f)
    with pytest.raises(ValueError, match="40-hex"):
        hub.revision("org/m")
    f.write_text(json.dumps({"org/m": "d" * 40}))
    assert hub.revision("org/m") == "d" * 40
    with pytest.warns(UserWarning, match="no pinned revision"):
        assert hub.revision("org/other") == "main"


def test_reflow_trains_on_the_teachers_own_noise_sample_pairs_starting_from_its_weights():
    import dataclasses

    from coursekit import flow

    recipe = dataclasses.replace(zoo.RECIPES["digits-flow-reflow"],
                                 extra={**zoo.RECIPES["digits-flow-reflow"].extra, "pairs": 20, "pair_steps": 2})
    x, z, y, start = zoo.reflow_data(recipe, progress=False)
    teacher, _ = models.load_model(recipe.extra["teacher"])
    assert same_weights(start, teacher) and torch.equal(y, torch.arange(10).repeat(2))
    again = flow.euler(teacher, z, steps=2, labels=y, guidance_scale=recipe.extra["pair_guidance"]).clamp(-1, 1)
    torch.testing.assert_close(again, x)


@pytest.mark.parametrize("objective", ["flow", "edm", "epsilon"])
def test_draw_picks_the_sampler_of_the_objective(objective):
    unet = tiny_unet(classes=2)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = zoo.draw(unet, tiny_scheduler(), objective, x, steps=2, labels=[0, 1])
    from coursekit import edm, flow

    want = {"flow": lambda: flow.euler(unet, x, steps=2, labels=[0, 1]),
            "edm": lambda: edm.heun(unet, x, steps=2, labels=[0, 1]),
            "epsilon": lambda: samplers.ddim(unet, tiny_scheduler(), x, steps=2, labels=[0, 1], progress=False)}[objective]()
    torch.testing.assert_close(out, want)
    with pytest.raises(zoo.ZooError, match="unknown objective"):
        zoo.draw(unet, tiny_scheduler(), "score", x, steps=2)


def test_a_fresh_dit_is_adaln_zero_every_block_the_identity_and_the_output_zero():
    """As Peebles and Xie initialise it: the layers that compute each block's shifts, scales and gates, and
    the output layer, start at zero."""
    unet, _ = zoo.build(zoo.RECIPES["digits-dit"])
    dit = unet.dit
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor([10, 500, 990]), torch.tensor([1, 2, 10])
    with torch.no_grad():
        h = dit.pos_embed(x)
        for block in dit.transformer_blocks:
            out = block(h, timestep=t, class_labels=labels)
            torch.testing.assert_close(out, h, atol=0, rtol=0)
            h = out + torch.randn(h.shape, generator=torch.Generator().manual_seed(1))   # any input passes unchanged
        assert float(unet(x, t, class_labels=labels).sample.abs().max()) == 0.0


def test_the_transformer_denoiser_behaves_like_a_class_conditional_unet(tmp_path):
    unet, sched = zoo.build(zoo.RECIPES["digits-dit"])
    n = sum(p.numel() for p in unet.parameters())
    unet_params = sum(p.numel() for p in zoo.build(zoo.RECIPES["digits-cond"])[0].parameters())
    assert abs(n / unet_params - 1) < 0.1, "the DiT is compared with a UNet of about its size"
    assert models.null_label(unet) == 10
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2, 10])
    unet.train()
    with torch.no_grad():
        for p in unet.parameters():      # away from adaLN-Zero's start, where every output is zero
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
        a = unet(x, 500, class_labels=labels).sample
        b = unet(x, torch.full((3,), 500), class_labels=labels).sample
    torch.testing.assert_close(a, b)     # no hidden label dropout in training mode, timesteps broadcast
    folder = models.save_model(unet.eval(), sched, tmp_path / "dit")
    again, _ = models.load_model(folder)
    assert type(again).__name__ == "ClassDiT" and same_weights(again, unet)
    out = samplers.ddim(again, sched, x, steps=2, labels=[3, 4, 5], guidance_scale=1.5, progress=False)
    assert out.shape == x.shape
