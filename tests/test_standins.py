"""Stand-ins of the full track's Hub repos: one per repo, the real layout and config keys, and
each loads through the coursekit loader the notebooks use; and `hub.pin` finds safetensors."""
import json
from types import SimpleNamespace

import pytest
import torch

from coursekit import cli, data, guidance, hub, inversion, models, standins

ROOT = __import__("pathlib").Path(__file__).parent.parent


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-home")
    standins.write(folder)
    return folder


@pytest.fixture
def cache(home, monkeypatch):
    """The stand-ins' cache as the Hugging Face cache of this process."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    return home


def test_every_full_track_repo_has_a_stand_in_and_every_one_is_used_by_a_notebook():
    assert set(standins.STANDINS) == set(hub.MODELS + hub.DATASETS)
    used = {repo for nb in (ROOT / "units").rglob("*.ipynb") for repo, _ in cli.notebook_needs(nb)}
    assert used == set(hub.MODELS + hub.DATASETS), "prefetch downloads exactly what the notebooks load"


def _keys(d):
    return {k: _keys(v) if isinstance(v, dict) else None for k, v in d.items()}


def test_stand_in_configs_keep_the_real_keys_and_class_names():
    files = sorted(p for p in standins.CONFIGS.rglob("*.json"))
    assert files, "the real configs ship with the package"
    for path in files:
        repo = path.relative_to(standins.CONFIGS).parts[0].replace("__", "/")
        inner = path.relative_to(standins.CONFIGS / repo.replace("/", "__")).as_posix()
        real, ours = standins.real_config(repo, inner), standins.config(repo, inner)
        assert _keys(ours) == _keys(real), f"{repo}/{inner}"
        assert ours.get("_class_name") == real.get("_class_name")
    for repo, inner in standins.SHRINK:
        assert (standins.CONFIGS / repo.replace("/", "__") / inner).exists(), (repo, inner)


def test_shrinking_a_key_the_real_config_lacks_is_refused():
    with pytest.raises(KeyError, match="not_a_key"):
        standins._merge({"a": 1}, {"not_a_key": 2})


def test_stand_ins_are_written_at_the_pinned_revision(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "pins", lambda: {"ylecun/mnist": "e" * 40})
    written = standins.write(tmp_path, ["ylecun/mnist"])
    assert written == {"ylecun/mnist": "e" * 40}
    root = tmp_path / "hub" / "datasets--ylecun--mnist"
    assert (root / "refs" / "main").read_text() == "e" * 40 and (root / "snapshots" / ("e" * 40) / "README.md").exists()
    assert json.loads((tmp_path / "standins.json").read_text())["revisions"] == written


def test_diffusion_models_load_through_zoo_load_with_their_real_layout(cache):
    for repo, sub in (("google/ddpm-cat-256", ""), ("anton-l/ddpm-butterflies-128", "unet/")):
        unet, scheduler = models.load_model(repo)
        real = standins.real_config(repo, sub + "config.json")
        assert type(unet).__name__ == real["_class_name"] and list(unet.config.down_block_types) == real["down_block_types"]
        sched = "scheduler/scheduler_config.json" if sub else "scheduler_config.json"
        assert scheduler.config.beta_schedule == standins.real_config(repo, sched)["beta_schedule"]
        x = torch.randn(1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        assert unet(x, 10).sample.shape == x.shape


def test_audio_model_loads_with_its_mel_settings(cache):
    unet, scheduler, preset = models.load_audio_model("kmpartner/audio-diffusion-electronic")
    mel = standins.config("kmpartner/audio-diffusion-electronic", "mel/mel_config.json")
    assert (preset.n_mels, preset.frames, preset.sample_rate) == (mel["y_res"], mel["x_res"], mel["sample_rate"])
    assert unet.config.in_channels == 1 and scheduler.config.beta_schedule == "linear"


def test_stable_diffusion_loads_and_samples_with_coursekits_helpers(cache):
    pipe = inversion.load_stable_diffusion("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert pipe.vae_scale_factor == 8 and type(pipe.text_encoder).__name__ == "CLIPTextModel"
    cond, _ = inversion.encode_prompt(pipe, "a photograph of a cat")
    assert cond.shape == (1, 77, pipe.text_encoder.config.hidden_size)
    from PIL import Image

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    latents = inversion.encode_image(pipe, Image.new("RGB", (size, size), "orange"))
    assert latents.shape == (1, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size)


def test_the_lcm_lora_loads_in_kohya_naming_into_every_target_layer_and_changes_the_samples(cache):
    from safetensors.torch import load_file

    from coursekit import adapters, consistency
    from coursekit import stable_diffusion as sd

    folder = adapters.lora_folder("latent-consistency/lcm-lora-sdv1-5")
    keys = list(load_file(folder / "pytorch_lora_weights.safetensors"))
    assert all(k.startswith("lora_unet_") for k in keys) and any(k.endswith(".alpha") for k in keys)
    pipe = sd.load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    g = lambda: torch.Generator().manual_seed(0)
    before = consistency.lcm_text_to_image(pipe, "a cat", steps=2, generator=g())
    adapters.load_lora(pipe, "latent-consistency/lcm-lora-sdv1-5", "lcm")
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in pipe.unet.named_parameters() if ".lora_A." in n}
    assert len(adapted) == sum(k.endswith(".alpha") for k in keys), "every layer in the file got its adapter"
    assert (consistency.lcm_text_to_image(pipe, "a cat", steps=2, generator=g()) - before).abs().max() > 1e-3


def test_clip_loads_at_its_safetensors_ref_and_scores_images(cache):
    model, tokenizer = guidance.load_clip("openai/clip-vit-base-patch32")
    loss = guidance.clip_loss("a butterfly", (model, tokenizer), cuts=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss(torch.rand(2, 3, 32, 32) * 2 - 1))


def test_datasets_load_through_data_load_with_the_real_columns(cache):
    mnist = data.load_dataset("mnist")
    assert mnist.column_names == ["image", "label"] and mnist.features["label"].names[3] == "3"
    assert mnist[0]["image"].size == (28, 28) and len(data.load_dataset("mnist", split="test")) == 20
    butterflies = data.load_dataset("butterflies")
    assert butterflies.column_names == ["image"] and butterflies[0]["image"].mode == "RGB"
    music = data.load_dataset("music_genres")
    assert music.column_names == ["audio", "label"] and {"Electronic", "Hip-Hop", "Jazz"} <= set(music.features["label"].names)
    row = music[0]
    assert row["sampling_rate"] == 44100 and row["audio"].ndim == 1 and len(row["audio"]) > 44100


def test_a_missing_stand_in_fails_its_loader_naming_the_repo(tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    standins.write(tmp_path, ["huggan/smithsonian_butterflies_subset"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    with pytest.raises(data.DataError, match=r"ylecun/mnist .*data.load_dataset\('digits'\)"):
        data.load_dataset("mnist")
    with pytest.raises(models.ModelError, match="google/ddpm-cat-256"):
        models.load_model("google/ddpm-cat-256")


class FakeApi:
    """The few HfApi calls `hub.pin` makes, answered from a dict of commits and their files."""

    def __init__(self, main, files, prs=()):
        self.main, self.files, self.prs = main, files, prs

    def model_info(self, repo):
        return SimpleNamespace(sha=self.main)

    def dataset_info(self, repo):
        return SimpleNamespace(sha="d" * 40)

    def list_repo_refs(self, repo, include_pull_requests=False):
        return SimpleNamespace(pull_requests=[SimpleNamespace(name=n, target_commit=c) for n, c in self.prs])

    def list_repo_files(self, repo, revision=None):
        return self.files[revision]


def test_pin_takes_main_when_it_has_safetensors_and_the_conversion_pr_when_not(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "PINS_FILE", tmp_path / "pins.json")
    good = FakeApi("a" * 40, {"a" * 40: ["config.json", "diffusion_pytorch_model.safetensors"]})
    assert hub.safetensors_revision(good, "org/ddpm") == ("a" * 40, "main")
    converted = FakeApi("a" * 40, {"a" * 40: ["config.json", "diffusion_pytorch_model.bin"],
                                   "b" * 40: ["config.json", "diffusion_pytorch_model.safetensors"],
                                   "c" * 40: ["README.md"]},
                        prs=[("refs/pr/3", "b" * 40), ("refs/pr/7", "c" * 40)])
    assert hub.safetensors_revision(converted, "org/ddpm") == ("b" * 40, "refs/pr/3")
    pinned = hub.pin(("org/ddpm", "huggan/smithsonian_butterflies_subset"), api=converted)
    assert pinned == {"org/ddpm": "b" * 40, "huggan/smithsonian_butterflies_subset": "d" * 40}
    assert json.loads((tmp_path / "pins.json").read_text()) == pinned


def test_pin_fails_naming_a_model_with_no_safetensors_anywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "PINS_FILE", tmp_path / "pins.json")
    pickles = FakeApi("a" * 40, {"a" * 40: ["diffusion_pytorch_model.bin"]})
    with pytest.raises(hub.NoSafetensors, match="org/old .*does not unpickle"):
        hub.pin(("org/old", "ylecun/mnist"), api=pickles)
    assert json.loads((tmp_path / "pins.json").read_text()) == {"ylecun/mnist": "d" * 40}, "the others are still pinned"


def test_stable_diffusion_needs_every_component_as_safetensors():
    partial = FakeApi("a" * 40, {"a" * 40: ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                            "text_encoder/pytorch_model.bin"]})
    with pytest.raises(hub.NoSafetensors, match="text_encoder/model.safetensors"):
        hub.safetensors_revision(partial, "stable-diffusion-v1-5/stable-diffusion-v1-5")


def test_the_full_track_digit_judge_is_fit_on_mnist_and_measures_against_it(cache):
    from coursekit import metrics

    judge = metrics.digit_judge(16, dataset="mnist")
    mnist, _ = data.tensors(data.load_dataset("mnist"), 16, 1)
    assert judge.real_features.shape == (len(mnist), 20), "FD and diversity are measured against MNIST"
    assert 0 <= judge.held_out_accuracy <= 1
    assert judge.fid(mnist) < judge.fid(-mnist), "its reference is MNIST, not scikit-learn's digits"
    small = metrics.digit_judge(16)
    assert small.real_features.shape[0] == 1797
