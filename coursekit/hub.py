"""The Hugging Face Hub repos the full track uses, and the revisions they are pinned to.

Pins live in `hub_revisions.json` next to this file: repo id -> 40-hex commit. They are written
by `coursekit pin` on a machine that reaches the Hub, so the course never guesses
a hash. coursekit loads only safetensors weights: where a model's `main` has only pickled
weights, `pin` pins the Hub's own safetensors conversion of them instead (the pull request that
its conversion bot opens, refs/pr/N), and fails, naming the repo, when there is none. A repo
without a pin loads from `SAFETENSORS_REFS` or `main`, with a warning.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import warnings
from pathlib import Path

PINS_FILE = Path(__file__).with_name("hub_revisions.json")

# lllyasviel/sd-controlnet-canny is the Canny-edge ControlNet trained for Stable Diffusion v1.5 (Zhang et al. 2023);
# latent-consistency/lcm-lora-sdv1-5 the LCM-LoRA distilled from Stable Diffusion v1.5 (Luo et al. 2023), one
# safetensors file in kohya's key naming, which diffusers' load_lora_weights converts.
# Each model ships safetensors (google/ddpm-celebahq-256, johnowhitaker/ddpm-butterflies-32px and
# teticio/audio-diffusion-instrumental-hiphop-256, which the course used before, ship only pickles):
# the 256-pixel cat DDPM has the celebahq model's architecture, anton-l's 128-pixel butterflies were
# trained on the same butterflies, and kmpartner's model is teticio's hip-hop model fine-tuned on
# electronic music in the Hugging Face course, with teticio's mel settings.
MODELS = (
    "anton-l/ddpm-butterflies-128",
    "google/ddpm-cat-256",
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "kmpartner/audio-diffusion-electronic",
    "openai/clip-vit-base-patch32",
    "lllyasviel/sd-controlnet-canny",
    "latent-consistency/lcm-lora-sdv1-5",
)
DATASETS = (
    "huggan/smithsonian_butterflies_subset",
    "ylecun/mnist",
    "lewtun/music_genres_small",
)
# The weight files each model's loader reads, as safetensors.
WEIGHTS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ["unet/diffusion_pytorch_model.safetensors",
                                                    "vae/diffusion_pytorch_model.safetensors",
                                                    "text_encoder/model.safetensors"],
    "anton-l/ddpm-butterflies-128": ["unet/diffusion_pytorch_model.safetensors"],
    "kmpartner/audio-diffusion-electronic": ["unet/diffusion_pytorch_model.safetensors"],
    "openai/clip-vit-base-patch32": ["model.safetensors"],
    "latent-consistency/lcm-lora-sdv1-5": ["pytorch_lora_weights.safetensors"],
}
DEFAULT_WEIGHTS = ["diffusion_pytorch_model.safetensors"]
# Where, before any pin, a repo's safetensors are known to live when main has only pickles.
SAFETENSORS_REFS = {"openai/clip-vit-base-patch32": "refs/pr/32"}
UNSAFE_WEIGHTS = ["*.bin", "*.ckpt", "*.pt", "*.msgpack", "*.onnx", "*.h5"]
DIFFUSERS_FILES = ["*.json", "*.safetensors", "unet/*", "scheduler/*"]
CLIP_FILES = ["*.json", "*.txt", "*.safetensors"]
CONTROLNET_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
SD_FILES = ["model_index.json", "scheduler/*", "tokenizer/*", "feature_extractor/*",
            "text_encoder/config.json", "text_encoder/model.safetensors",
            "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
_FILES = {"stable-diffusion-v1-5/stable-diffusion-v1-5": SD_FILES, "openai/clip-vit-base-patch32": CLIP_FILES,
          "lllyasviel/sd-controlnet-canny": CONTROLNET_FILES,
          "latent-consistency/lcm-lora-sdv1-5": ["pytorch_lora_weights.safetensors"]}


def model_files(repo_id: str) -> dict:
    """snapshot_download's allow/ignore patterns for a full-track model repo."""
    return {"allow_patterns": _FILES.get(repo_id, DIFFUSERS_FILES), "ignore_patterns": UNSAFE_WEIGHTS}


_DATASET_FILES: dict[str, list[str]] = {}


def dataset_files(repo_id: str) -> dict:
    """snapshot_download's patterns for a full-track dataset repo: its card and data files, no
    loading scripts (datasets no longer runs them)."""
    return {"allow_patterns": _DATASET_FILES.get(repo_id, ["README.md", "*.parquet", "*.json"]),
            "ignore_patterns": ["*.py"]}


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
    """The pinned commit for `repo_id`, or (with a warning) its known safetensors ref or 'main'."""
    pinned = pins().get(repo_id)
    if pinned:
        return pinned
    ref = SAFETENSORS_REFS.get(repo_id, "main")
    warnings.warn(
        f"{repo_id} has no pinned revision in {PINS_FILE.name}; loading {ref!r}. "
        "Run `coursekit pin` on a machine with Hub access to pin it.",
        stacklevel=2,
    )
    return ref


HUB_HOST = ("huggingface.co", 443)


def offline() -> bool:
    """Whether huggingface_hub is in offline mode (HF_HUB_OFFLINE, read when it was imported)."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


def reachable(timeout: float = 2.0) -> bool:
    """Whether huggingface.co answers a TCP connection within `timeout` seconds; False in offline
    mode without trying. Name lookup can hang on a broken network, so the attempt runs in a
    daemon thread and is abandoned after `timeout`."""
    if offline():
        return False
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection(HUB_HOST, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def why_unreachable() -> str:
    """Why the Hub cannot be used now, for error messages."""
    return "HF_HUB_OFFLINE is set" if offline() else "the Hub is unreachable"


def is_cached(repo_id: str, repo_type: str = "model") -> bool:
    """Whether `repo_id` at its pinned revision is in the local Hugging Face cache (another
    revision does not count: loading asks for the pinned one)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    ref = pins().get(repo_id) or SAFETENSORS_REFS.get(repo_id, "main")
    try:
        snapshot_download(repo_id, repo_type=repo_type, revision=ref, local_files_only=True)
    except LocalEntryNotFoundError:
        return False
    return True


class HubUnavailable(ValueError):
    """A full-track repo is neither cached nor reachable; the message says what to use instead."""


def fetch(repo_id: str, instead: str, repo_type: str = "model", **snapshot_kwargs) -> Path:
    """A local snapshot of `repo_id` at its pinned revision (from the cache when offline).

    Fails fast, naming `instead` (the small-track alternative), when the repo is not cached and
    the Hub cannot be reached, rather than hanging on the network.
    """
    from huggingface_hub import snapshot_download

    if not is_cached(repo_id, repo_type) and not reachable():
        why = why_unreachable()
        raise HubUnavailable(f"the {repo_type} {repo_id} is not in the Hugging Face cache and {why}; {instead}, "
                             "or fetch it first on a machine with network access (`coursekit prefetch`)")
    return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision(repo_id), **snapshot_kwargs))


class NoSafetensors(RuntimeError):
    """A model repo has no revision with the safetensors weights coursekit loads."""


def safetensors_revision(api, repo_id: str) -> tuple[str, str]:
    """(commit, ref) of the newest revision of a model repo that holds every file in its
    `WEIGHTS` as safetensors: main if it does, else the newest pull request that adds them."""
    needed = WEIGHTS.get(repo_id, DEFAULT_WEIGHTS)
    main = api.model_info(repo_id).sha
    candidates = [(main, "main")]
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    prs = sorted(refs.pull_requests or [], key=lambda r: int(r.name.rsplit("/", 1)[-1]), reverse=True)
    candidates += [(r.target_commit, r.name) for r in prs]
    for commit, ref in candidates:
        files = set(api.list_repo_files(repo_id, revision=commit))
        if all(f in files for f in needed):
            return commit, ref
    raise NoSafetensors(f"{repo_id} has no revision with {', '.join(needed)} (main has only pickled weights, and no "
                        "pull request adds safetensors); coursekit does not unpickle weights it did not write, so the "
                        "notebooks that use it cannot run on the full track until the Hub's conversion "
                        "(https://huggingface.co/spaces/safetensors/convert) opens one")


def pin(repos: tuple[str, ...] = MODELS + DATASETS, api=None) -> dict[str, str]:
    """Ask the Hub for each repo's revision to use and record it in hub_revisions.json: datasets
    at main, models at their newest revision with safetensors (`safetensors_revision`)."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    found, missing = pins(), []
    for repo in repos:
        if repo in DATASETS:
            found[repo] = api.dataset_info(repo).sha
            print(f"{repo}: {found[repo]}")
            continue
        try:
            found[repo], ref = safetensors_revision(api, repo)
        except NoSafetensors as e:
            missing.append(str(e))
            continue
        print(f"{repo}: {found[repo]}" + (f" ({ref}: main has no safetensors)" if ref != "main" else ""))
    PINS_FILE.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    if missing:
        raise NoSafetensors("\n".join(missing))
    return found


def add_commands(sub) -> None:
    """`pin`: pin every full-track repo (models at a revision with safetensors)."""
    p = sub.add_parser("pin", help="pin every full-track repo's revision in hub_revisions.json (needs the Hub)")
    p.set_defaults(run=lambda args: pin(api=getattr(args, "api", None)) and None)


if __name__ == "__main__":
    import sys

    from .commands import run_commands

    sys.exit(run_commands("python -m coursekit.hub", __doc__.split("\n")[0], [add_commands], default="pin"))
