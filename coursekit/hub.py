"""The Hugging Face Hub repos the full track uses, and the revisions they are pinned to.

Pins live in `hub_revisions.json` next to this file: repo id -> 40-hex commit. They are written
by `python -m coursekit.hub pin` on a machine that reaches the Hub (it asks the Hub for each
repo's current commit), so the course never guesses a hash. A repo without a pin loads from
`main` with a warning.
"""
from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

PINS_FILE = Path(__file__).with_name("hub_revisions.json")

MODELS = (
    "google/ddpm-celebahq-256",
    "google/ddpm-bedroom-256",
    "johnowhitaker/ddpm-butterflies-32px",
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "teticio/audio-diffusion-instrumental-hiphop-256",
    "openai/clip-vit-base-patch32",
)
DATASETS = (
    "huggan/smithsonian_butterflies_subset",
    "huggan/wikiart",
    "ylecun/mnist",
    "lewtun/music_genres",
)
# Which files the loaders read: configs and safetensors only (coursekit never unpickles weights
# it did not write), and for Stable Diffusion only the fp32 component files, not the multi-GB
# single-file checkpoints beside them. `coursekit prefetch` downloads exactly these.
UNSAFE_WEIGHTS = ["*.bin", "*.ckpt", "*.pt", "*.msgpack", "*.onnx", "*.h5"]
DIFFUSERS_FILES = ["*.json", "*.safetensors", "unet/*", "scheduler/*"]
CLIP_FILES = ["*.json", "*.txt", "*.safetensors"]
SD_FILES = ["model_index.json", "scheduler/*", "tokenizer/*", "feature_extractor/*",
            "text_encoder/config.json", "text_encoder/model.safetensors",
            "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
_FILES = {"stable-diffusion-v1-5/stable-diffusion-v1-5": SD_FILES, "openai/clip-vit-base-patch32": CLIP_FILES}


def model_files(repo_id: str) -> dict:
    """snapshot_download's allow/ignore patterns for a full-track model repo."""
    return {"allow_patterns": _FILES.get(repo_id, DIFFUSERS_FILES), "ignore_patterns": UNSAFE_WEIGHTS}


_SHA = re.compile(r"^[0-9a-f]{40}$")


def pins() -> dict[str, str]:
    if not PINS_FILE.exists():
        return {}
    data = json.loads(PINS_FILE.read_text())
    bad = {k: v for k, v in data.items() if not _SHA.match(str(v))}
    if bad:
        raise ValueError(f"{PINS_FILE} holds revisions that are not 40-hex commits: {bad}")
    return data


def revision(repo_id: str) -> str:
    """The pinned commit for `repo_id`, or 'main' (with a warning) when none is recorded."""
    pinned = pins().get(repo_id)
    if pinned:
        return pinned
    warnings.warn(
        f"{repo_id} has no pinned revision in {PINS_FILE.name}; loading 'main'. "
        "Run `python -m coursekit.hub pin` on a machine with Hub access to pin it.",
        stacklevel=2,
    )
    return "main"


class HubUnavailable(ValueError):
    """A full-track repo is neither cached nor reachable; the message says what to use instead."""


def fetch(repo_id: str, instead: str, **snapshot_kwargs) -> Path:
    """A local snapshot of `repo_id` at its pinned revision (from the cache when offline).

    Fails fast, naming `instead` (the small-track alternative), when the repo is not cached and
    the Hub cannot be reached, rather than hanging on the network.
    """
    from huggingface_hub import snapshot_download

    from . import tracks

    if not tracks.is_cached(repo_id) and not tracks.hub_reachable():
        why = "HF_HUB_OFFLINE is set" if tracks.hub_offline_flag() else "the Hub is unreachable"
        raise HubUnavailable(f"{repo_id} is not in the Hugging Face cache and {why}; {instead}, "
                             "or fetch it first on a machine with network access")
    return Path(snapshot_download(repo_id, revision=revision(repo_id), **snapshot_kwargs))


def pin(repos: tuple[str, ...] = MODELS + DATASETS) -> dict[str, str]:
    """Ask the Hub for each repo's current commit and record it in hub_revisions.json."""
    from huggingface_hub import HfApi

    api = HfApi()
    found = pins()
    for repo in repos:
        info = api.dataset_info(repo) if repo in DATASETS else api.model_info(repo)
        found[repo] = info.sha
        print(f"{repo}: {info.sha}")
    PINS_FILE.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    return found


if __name__ == "__main__":
    if sys.argv[1:] != ["pin"]:
        sys.exit("usage: python -m coursekit.hub pin")
    pin()
