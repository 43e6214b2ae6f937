"""Stand-ins for the full track's Hub repos, so that its code runs offline on a CPU (a rehearsal).

Each stand-in has its repo's file layout, file names, class names and config keys, with widths,
layers and image sizes shrunk (`SHRINK`: a 256-pixel model becomes a 32-pixel one) and random
weights in safetensors; each dataset has the real
columns and feature types and a few dozen rows. `write(home)` puts them into the Hugging Face
cache that `HF_HOME=home` reads, under the real repo ids, at the pinned revision when
`coursekit.hub` has one and otherwise at a stand-in revision recorded in `home/standins.json`,
so that coursekit's own loaders (`models.load_model`, `data.load_dataset`,
`inversion.load_stable_diffusion`, `guidance.load_clip`, `models.load_audio_model`) read them
exactly as they read the real repos.

The real configs are in `hub_configs/<owner>__<name>/`, as the repos hold them; `CONFIG_SOURCES`
says where each came from. Where a value could not be established offline, the diffusers or
transformers class default for that architecture stands in, and `CONFIG_SOURCES` says so.

    python -m coursekit.standins HOME     # then: HF_HOME=HOME HF_HUB_OFFLINE=1 ...
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

from . import hub

VERSION = 3
SEED = 0
CONFIGS = Path(__file__).with_name("hub_configs")

CONFIG_SOURCES = {
    "google/ddpm-cat-256": "a verbatim clone of main on GitHub, every file the size the Hub lists",
    "anton-l/ddpm-butterflies-128": "model_index seen verbatim; unet and scheduler configs matching the Hub's byte sizes",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "verbatim copies in duplicated repos, byte sizes matching",
    "kmpartner/audio-diffusion-electronic": "seen verbatim or matching the Hub's byte sizes (teticio's architecture "
                                            "and mel settings, saved by diffusers 0.27.2)",
    "openai/clip-vit-base-patch32": "values of the real config.json (transformers' CLIPConfig defaults); the real "
                                    "file's legacy *_config_dict layout is not reproduced",
    "lllyasviel/sd-controlnet-canny": "not seen offline: Stable Diffusion v1.5's UNet config (which the ControlNet "
                                      "copies) with ControlNetModel's conditioning keys at their defaults, which the "
                                      "canny model uses (16/32/96/256 embedding channels, RGB order)",
    "latent-consistency/lcm-lora-sdv1-5": "not seen offline: its one file, pytorch_lora_weights.safetensors, in kohya's "
                                          "key naming (lora_unet_<diffusers module path>.lora_down/lora_up/alpha, as "
                                          "diffusers' LCM-LoRA script writes it) on LCM-LoRA's target layers, in "
                                          "float16; rank 4 here (the real adapter's rank is larger)",
    "huggan/smithsonian_butterflies_subset": "the 18 columns and types of its dataset_infos.json",
    "ylecun/mnist": "its dataset card's features (Image, ClassLabel '0'..'9') and the parquet converter's layout",
    "lewtun/music_genres_small": "its dataset card's features (audio, song_id, genre_id, genre); the genre names "
                                 "of lewtun/music_genres",
}

# What each stand-in shrinks, per (repo, config file); the rest of each config is the real one.
# Stable Diffusion keeps its 64x64 latents: StableDiffusionPipeline resets a smaller sample_size of
# a UNet saved by diffusers before 0.9 (as this one was) to 64. Its UNet and ControlNet get one attention
# head: self-attention over 4096 latent positions is most of a rehearsal's time, and halves with each head.
_DDPM_256 = {"block_out_channels": [8, 8, 16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
             "sample_size": 32}
SHRINK = {
    ("google/ddpm-cat-256", "config.json"): _DDPM_256,
    ("anton-l/ddpm-butterflies-128", "unet/config.json"): {**_DDPM_256, "attention_head_dim": 4},
    ("kmpartner/audio-diffusion-electronic", "unet/config.json"): {**_DDPM_256, "attention_head_dim": 4},
    ("kmpartner/audio-diffusion-electronic", "mel/mel_config.json"): {"x_res": 32, "y_res": 32},
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet/config.json"): {
        "block_out_channels": [16, 32], "layers_per_block": 1, "cross_attention_dim": 32,
        "attention_head_dim": 1, "norm_num_groups": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]},
    ("lllyasviel/sd-controlnet-canny", "config.json"): {
        "block_out_channels": [16, 32], "layers_per_block": 1, "cross_attention_dim": 32,
        "attention_head_dim": 1, "norm_num_groups": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"]},
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "vae/config.json"): {
        "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4},
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "text_encoder/config.json"): {
        "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
        "projection_dim": 32},
    ("openai/clip-vit-base-patch32", "config.json"): {
        "projection_dim": 32,
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                        "num_hidden_layers": 2, "projection_dim": 32},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                          "num_hidden_layers": 2, "projection_dim": 32}},
}


def real_config(repo: str, path: str) -> dict:
    """A config file as the real repo holds it."""
    return json.loads((CONFIGS / repo.replace("/", "__") / path).read_text())


def _merge(config: dict, shrink: dict) -> dict:
    out = dict(config)
    for key, value in shrink.items():
        if key not in config:
            raise KeyError(f"shrinking {key!r}, which the real config does not have")
        out[key] = _merge(config[key], value) if isinstance(value, dict) else value
    return out


def config(repo: str, path: str) -> dict:
    """The stand-in's config: the real one with `SHRINK` applied."""
    return _merge(real_config(repo, path), SHRINK.get((repo, path), {}))


def standin_revision(repo: str) -> str:
    """The revision a stand-in is written at: the pinned one, or a recorded stand-in commit."""
    return hub.pins().get(repo) or hashlib.sha1(f"coursekit stand-in {repo} v{VERSION}".encode()).hexdigest()


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _copy(repo: str, folder: Path, *paths: str) -> None:
    for path in paths:
        _json(folder / path, config(repo, path))


def _save_state(module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}, str(path),
              metadata={"format": "pt"})


def _diffusers_model(repo: str, folder: Path, path: str) -> None:
    """A diffusers model built from the stand-in config at `path`, random weights beside it."""
    import diffusers
    import torch

    cfg = config(repo, path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = getattr(diffusers, cfg["_class_name"]).from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    _save_state(model, (folder / path).with_name("diffusion_pytorch_model.safetensors"))
    _json(folder / path, cfg)


def _transformers_model(folder: Path, cls_name: str, cfg: dict) -> None:
    import torch
    import transformers

    cls = getattr(transformers, cls_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = cls(cls.config_class(**{k: v for k, v in cfg.items() if k not in ("architectures", "_name_or_path")}))
    _save_state(model, folder / "model.safetensors")
    _json(folder / "config.json", cfg)


def _bpe_vocab(folder: Path) -> int:
    """vocab.json and merges.txt in CLIP's byte-level BPE format, small: every byte, as itself and
    word-final, the two special tokens and no merges, so any text tokenizes (letter by letter)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def _token_ids(cfg: dict, vocab: int) -> dict:
    return {**cfg, "vocab_size": vocab, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": vocab - 1}


# Models


def ddpm_flat(repo: str, folder: Path) -> None:
    """The single-model layout of google/ddpm-*: config, weights, scheduler and model_index at the top."""
    _diffusers_model(repo, folder, "config.json")
    _copy(repo, folder, "scheduler_config.json", "model_index.json")


def ddpm_pipeline(repo: str, folder: Path) -> None:
    """A DDPMPipeline as save_pretrained writes it: model_index.json, unet/, scheduler/."""
    _diffusers_model(repo, folder, "unet/config.json")
    _copy(repo, folder, "scheduler/scheduler_config.json", "model_index.json")


def audio_diffusion(repo: str, folder: Path) -> None:
    """The audio-diffusion layout (teticio's and its fine-tunes): unet/, scheduler/,
    mel/mel_config.json, model_index.json."""
    _diffusers_model(repo, folder, "unet/config.json")
    _copy(repo, folder, "scheduler/scheduler_config.json", "mel/mel_config.json", "model_index.json")


def stable_diffusion(repo: str, folder: Path) -> None:
    """Stable Diffusion v1.5's pipeline layout, one subfolder per component (the safety checker,
    which coursekit does not load, left out)."""
    _copy(repo, folder, "model_index.json", "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
          "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json")
    vocab = _bpe_vocab(folder / "tokenizer")
    _transformers_model(folder / "text_encoder", "CLIPTextModel", _token_ids(config(repo, "text_encoder/config.json"), vocab))
    _diffusers_model(repo, folder, "unet/config.json")
    _diffusers_model(repo, folder, "vae/config.json")


def controlnet(repo: str, folder: Path) -> None:
    """A ControlNet's single-model layout: config and weights at the top, shrunk as Stable
    Diffusion's stand-in UNet is, so that its residuals fit that UNet."""
    _diffusers_model(repo, folder, "config.json")


def lcm_lora(repo: str, folder: Path) -> None:
    """An LCM-LoRA for Stable Diffusion v1.5's stand-in UNet: one safetensors file at the top, keys in
    kohya's naming, random non-zero up-projections (so that loading it changes the model)."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .consistency import LCM_TARGETS

    cfg = config("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet/config.json")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = diffusers.UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(LCM_TARGETS)))
        state = {}
        for key, weight in get_peft_model_state_dict(unet).items():
            module, kind = key.rsplit(".lora_", 1)
            up = kind.startswith("B")
            name = "lora_unet_" + module.replace(".", "_")
            state[f"{name}.lora_{'up' if up else 'down'}.weight"] = (torch.randn_like(weight) * 0.02 if up else weight)
            state[f"{name}.alpha"] = torch.tensor(4.0)
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()},
              str(folder / "pytorch_lora_weights.safetensors"))


def clip(repo: str, folder: Path) -> None:
    """openai/clip-vit-base-patch32: config, weights, tokenizer and image processor at the top."""
    _copy(repo, folder, "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json")
    vocab = _bpe_vocab(folder)
    cfg = config(repo, "config.json")
    _transformers_model(folder, "CLIPModel", {**cfg, "text_config": _token_ids(cfg["text_config"], vocab)})


# Datasets


def _rng():
    import numpy as np

    return np.random.default_rng(SEED)


def _parquet(folder: Path, path: str, columns: dict, features, casts: dict | None = None) -> None:
    from datasets import Dataset
    from datasets.utils import logging as dlog

    ds = Dataset.from_dict(columns, features=features)
    for column, feature in (casts or {}).items():
        ds = ds.cast_column(column, feature)
    (folder / path).parent.mkdir(parents=True, exist_ok=True)
    bars = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()      # a bar per tiny file only clutters the rehearsal's log
    try:
        ds.to_parquet(str(folder / path))
    finally:
        if bars:
            dlog.enable_progress_bar()


def _image_bytes(array, fmt: str) -> dict:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return {"bytes": buffer.getvalue(), "path": None}


def butterflies(repo: str, folder: Path) -> None:
    """huggan/smithsonian_butterflies_subset: one parquet file under data/, 18 columns, colour
    photos of varying sizes as JPEG; a card without metadata and the legacy dataset_infos.json."""
    from datasets import Features, Image, Value

    rng = _rng()
    strings = ["image_url", "image_alt", "id", "name", "scientific_name", "gender", "taxonomy", "region", "locality",
               "date", "usnm_no", "guid", "edan_url", "source"]
    order = strings + ["stage", "image", "image_hash", "sim_score"]
    types = {**{k: Value("string") for k in strings + ["image_hash"]}, "stage": Value("float64"), "image": Image(),
             "sim_score": Value("float64")}
    features = Features({k: types[k] for k in order})
    n = 80                            # more than one training batch of the notebooks' settings
    columns = {k: [f"{k} {i}" for i in range(n)] for k in strings + ["image_hash"]}
    columns["stage"] = [None] * n
    columns["sim_score"] = rng.uniform(0, 1, n).tolist()
    columns["image"] = [_image_bytes(rng.integers(0, 256, (int(rng.integers(40, 90)), int(rng.integers(50, 120)), 3),
                                                  dtype="uint8"), "JPEG") for _ in range(n)]
    _parquet(folder, "data/train-00000-of-00001.parquet", columns, features)
    (folder / "README.md").write_text("# A coursekit stand-in of huggan/smithsonian_butterflies_subset\n")
    _json(folder / "dataset_infos.json", {"huggan--smithsonian_butterflies_subset": {
        "features": features.to_dict(), "splits": {"train": {"name": "train", "num_examples": n}}}})


def _card(folder: Path, config_name: str, splits: dict[str, str], features) -> None:
    import yaml

    info = {"dataset_info": {"config_name": config_name, "features": features._to_yaml_list()},
            "configs": [{"config_name": config_name, "default": True,
                         "data_files": [{"split": s, "path": p} for s, p in splits.items()]}]}
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(info, sort_keys=False) + "---\n"
                                      "# A coursekit stand-in: the real columns, a few rows.\n")


def mnist(repo: str, folder: Path) -> None:
    """ylecun/mnist: 28x28 grey PNGs, `image` and `label` (ClassLabel '0'..'9'), train and test."""
    from datasets import ClassLabel, Features, Image

    rng = _rng()
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    for split, n in (("train", 120), ("test", 20)):
        labels = [i % 10 for i in range(n)]
        images = [_image_bytes(rng.integers(0, 256, (28, 28), dtype="uint8"), "PNG") for _ in labels]
        _parquet(folder, f"mnist/{split}-00000-of-00001.parquet", {"image": images, "label": labels}, features)
    _card(folder, "mnist", {"train": "mnist/train-*", "test": "mnist/test-*"}, features)


GENRES = ["Electronic", "Rock", "Punk", "Experimental", "Hip-Hop", "Folk", "Chiptune / Glitch", "Instrumental", "Pop",
          "International", "Ambient Electronic", "Classical", "Old-Time / Historic", "Jazz", "Country", "Soul-RnB",
          "Spoken", "Blues", "Easy Listening"]


def music_genres(repo: str, folder: Path) -> None:
    """lewtun/music_genres_small: one parquet file under data/; `audio` (stereo MP3 at 44.1 kHz),
    `song_id`, `genre_id` and `genre` (a string, not a class label); four genres, eight clips each."""
    import numpy as np
    import soundfile as sf
    from datasets import Audio, Features, Value

    rng = _rng()
    rate, rows = 44100, []
    for genre_id in (0, 4, 13, 1):
        for i in range(8):
            t = np.arange(int(rate * rng.uniform(2.5, 4.0))) / rate
            tone = sum(np.sin(2 * np.pi * (110 * (genre_id + 1) + 37 * i) * k * t) / k for k in range(1, 6))
            wave = np.stack([tone, np.roll(tone, 7)], 1) * 0.1 + 0.01 * rng.standard_normal((len(t), 2))
            buffer = io.BytesIO()
            sf.write(buffer, wave.astype(np.float32), rate, format="MP3")
            rows.append(({"bytes": buffer.getvalue(), "path": f"{len(rows)}.mp3"}, len(rows), genre_id, GENRES[genre_id]))
    audio, song, gid, genre = map(list, zip(*rows))
    struct = {"bytes": Value("binary"), "path": Value("string")}
    features = Features({"audio": struct, "song_id": Value("int64"), "genre_id": Value("int64"), "genre": Value("string")})
    _parquet(folder, "data/train-00000-of-00001-63d68663287b1638.parquet",
             {"audio": audio, "song_id": song, "genre_id": gid, "genre": genre}, features, casts={"audio": Audio()})
    final = Features({**features, "audio": Audio()})
    _card(folder, "default", {"train": "data/train-*"}, final)


STANDINS = {
    "anton-l/ddpm-butterflies-128": ("model", ddpm_pipeline),
    "google/ddpm-cat-256": ("model", ddpm_flat),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("model", stable_diffusion),
    "kmpartner/audio-diffusion-electronic": ("model", audio_diffusion),
    "openai/clip-vit-base-patch32": ("model", clip),
    "lllyasviel/sd-controlnet-canny": ("model", controlnet),
    "latent-consistency/lcm-lora-sdv1-5": ("model", lcm_lora),
    "huggan/smithsonian_butterflies_subset": ("dataset", butterflies),
    "ylecun/mnist": ("dataset", mnist),
    "lewtun/music_genres_small": ("dataset", music_genres),
}


def write(home: str | Path, repos=None) -> dict[str, str]:
    """Write the stand-ins (every one, or those in `repos`) into the cache of HF_HOME=`home`;
    returns {repo: revision} and records it in home/standins.json."""
    home = Path(home)
    written = {}
    for repo in repos or STANDINS:
        kind, build = STANDINS[repo]
        rev = standin_revision(repo)
        root = home / "hub" / (f"{kind}s--" + repo.replace("/", "--"))
        snapshot = root / "snapshots" / rev
        snapshot.mkdir(parents=True, exist_ok=True)
        build(repo, snapshot)
        for ref in ("main", hub.SAFETENSORS_REFS.get(repo)):
            if ref:
                (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
                (root / "refs" / ref).write_text(rev)
        written[repo] = rev
    _json(home / "standins.json", {"version": VERSION, "revisions": written})
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m coursekit.standins HF_HOME_FOLDER")
    for repo, rev in write(sys.argv[1]).items():
        print(f"{repo}: {rev}")
