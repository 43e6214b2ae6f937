"""Where the course runs: device, notebook host, and the small/full track switch.

The small track runs offline on a CPU with bundled data and zoo checkpoints; the full track
uses the course-scale Hub models on a CUDA GPU. `Settings` holds both sets of values side by side
and picks the active one, so a notebook's code is the same on either track.

A *rehearsal* (`coursekit run --track full --rehearse`) runs the full track's code on a CPU with
stand-in Hub repos (`coursekit.standins`) and its settings scaled down by `rehearsal_value`.

Apple's MPS does not pick the full track by itself: the full track's models run in fp32, which on
a laptop's shared memory is slow (Stable Diffusion alone holds about 4 GB of weights) and some
operations fall back to the CPU; its budgets are set for a 16 GB CUDA T4. `COURSEKIT_TRACK=full`
runs it on MPS anyway, as an explicit choice.
"""
from __future__ import annotations

import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass

TRACKS = ("small", "full")
REHEARSE_ENV = "COURSEKIT_REHEARSE"
MPS_NOTE = ("Apple's MPS runs the small track unless COURSEKIT_TRACK=full asks for the full one: the full "
            "track's fp32 models are slow in a laptop's shared memory and its budgets are set for a CUDA T4")


class TrackError(RuntimeError):
    """The requested track cannot run here; the message says what is missing."""


def device() -> str:
    """'cuda', 'mps' or 'cpu', the best torch device available."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def host() -> str:
    """'colab', 'kaggle' or 'local': where the notebook kernel runs."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.path.isdir("/kaggle/working"):
        return "kaggle"
    return "local"


def rehearsing() -> bool:
    """True inside a rehearsal: the full track's code on a CPU with stand-in Hub repos."""
    return os.environ.get(REHEARSE_ENV, "").strip() == "1"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(v) -> bool:
    if isinstance(v, dict):
        return bool(v) and all(_ints(x) or _is_int(x) for x in v.values())
    return isinstance(v, (tuple, list)) and bool(v) and all(_is_int(x) or _ints(x) for x in v)


def _total(v) -> int:
    values = v.values() if isinstance(v, dict) else v
    return sum(_total(x) if _ints(x) else x for x in values)


REHEARSAL_SIZES_ENV = "COURSEKIT_REHEARSAL_SIZES"


def rehearsal_sizes() -> dict:
    """The sizes a rehearsal runs a notebook at, where `rehearsal_value`'s rule would run more than its
    code paths need: {setting: value} from the notebook's metadata `coursekit.rehearsal`, which
    `coursekit run --rehearse` hands its kernel (as JSON in COURSEKIT_REHEARSAL_SIZES)."""
    import json

    text = os.environ.get(REHEARSAL_SIZES_ENV, "").strip()
    return json.loads(text) if text else {}


def rehearsal_value(small, full):
    """A full-track setting scaled down for a rehearsal, by one rule: a count (an integer:
    steps, samples, batch size, image size) becomes the smaller of its two values; a collection
    of counts (a list of step counts, a plan of samplers and steps, widths) becomes the one of
    the two with the smaller total; everything else (models, datasets, prompts, scales, rates,
    None) keeps its full-track value, so the rehearsal follows the full track's code path."""
    if _is_int(small) and _is_int(full):
        return min(small, full)
    if _ints(small) and _ints(full) and type(small) is type(full):
        return small if _total(small) <= _total(full) else full
    return full


def _forced() -> str | None:
    forced = os.environ.get("COURSEKIT_TRACK", "").strip().lower()
    if not forced:
        return None
    if forced not in TRACKS:
        raise TrackError(f"COURSEKIT_TRACK={forced!r} is not a track: use 'small' or 'full', or unset it.")
    return forced


def missing_for_full(needs: list[tuple[str, str]] = (), *, check_hub: bool = True,
                     allow_mps: bool = False) -> list[str]:
    """What stops the full track here: no CUDA GPU (MPS only when `allow_mps`), or Hub repos
    neither cached nor reachable. A rehearsal needs no GPU.

    `needs` is a list of (repo_id, repo_type) pairs, repo_type 'model' or 'dataset'.
    """
    missing = []
    dev = device()
    if rehearsing():
        pass
    elif dev == "cpu":
        missing.append("a GPU (torch sees no CUDA device)")
    elif dev == "mps" and not allow_mps:
        missing.append(f"a CUDA GPU ({MPS_NOTE})")
    from . import hub

    uncached = [(r, t) for r, t in needs if not hub.is_cached(r, t)]
    if uncached and not (check_hub and hub.reachable()):
        why = hub.why_unreachable()
        for repo, kind in uncached:
            missing.append(f"the {kind} {repo} (not in the Hugging Face cache and {why})")
    return missing


def pick_track(needs: list[tuple[str, str]] = ()) -> str:
    """'full' when a GPU is here and every needed Hub repo is cached or reachable, else 'small'.

    COURSEKIT_TRACK=small|full forces the choice; forcing 'full' where it cannot run raises
    TrackError naming what is missing.
    """
    forced = _forced()
    if forced == "small":
        return "small"
    missing = missing_for_full(needs, allow_mps=forced == "full")
    if forced == "full" and missing:
        raise TrackError(
            "COURSEKIT_TRACK=full, but the full track needs "
            + "; ".join(missing)
            + ". Run on a GPU machine with network access (or run `coursekit prefetch` there first), "
            "or unset COURSEKIT_TRACK to fall back to the small track."
        )
    return "small" if missing else "full"


def hub_needs(full_values: dict) -> list[tuple[str, str]]:
    """The Hub repos among a notebook's full-track values: `model`/`*_model` and
    `dataset`/`*_dataset` keys whose values look like Hub ids."""
    needs = []
    for key, value in full_values.items():
        if not isinstance(value, str) or "/" not in value or os.path.exists(value):
            continue
        if key == "model" or key.endswith("_model"):
            needs.append((value, "model"))
        elif key == "dataset" or key.endswith("_dataset"):
            needs.append((value, "dataset"))
    return needs


@dataclass(frozen=True)
class _Row:
    small: object
    full: object


class Settings:
    """A notebook's settings, small and full values side by side; attributes give the active ones.

    >>> S = Settings(model=("digits-uncond", "anton-l/ddpm-butterflies-128"), steps=(25, 50))
    >>> S.model, S.steps  # on the small track
    ('digits-uncond', 25)

    Values for the keys `model`/`*_model` and `dataset`/`*_dataset` that look like Hub ids decide
    whether the full track can run. Pass `track=` to choose it explicitly.
    """

    def __init__(self, track: str | None = None, **rows: tuple):
        for key, pair in rows.items():
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise TypeError(f"setting {key!r} must be a (small, full) pair, got {pair!r}")
        self._rows = {k: _Row(*v) for k, v in rows.items()}
        if track is None:
            track = pick_track(hub_needs({k: r.full for k, r in self._rows.items()}))
        elif track not in TRACKS:
            raise TrackError(f"track={track!r} is not a track: use 'small' or 'full'.")
        elif track == "full":
            missing = missing_for_full(hub_needs({k: r.full for k, r in self._rows.items()}), allow_mps=True)
            if missing:
                raise TrackError("the full track needs " + "; ".join(missing) + ".")
        self.track = track
        self.rehearsal = track == "full" and rehearsing()
        self.device = device() if track == "full" and not self.rehearsal else "cpu"
        self._sizes = rehearsal_sizes() if self.rehearsal else {}
        unknown = sorted(set(self._sizes) - set(self._rows))
        if unknown:
            raise TrackError(f"the rehearsal sizes name settings this notebook lacks: {', '.join(unknown)}; "
                             "correct the notebook's metadata coursekit.rehearsal")

    def _value(self, key: str):
        row = self._rows[key]
        if self.track == "small":
            return row.small
        if not self.rehearsal:
            return row.full
        return self._sizes[key] if key in self._sizes else rehearsal_value(row.small, row.full)

    def __getattr__(self, key: str):
        rows = self.__dict__.get("_rows", {})
        if key not in rows:
            raise AttributeError(f"no setting {key!r}; known: {', '.join(rows)}")
        return self._value(key)

    def as_dict(self) -> dict:
        return {k: self._value(k) for k in self._rows}

    def table(self) -> str:
        """The settings as a text table, the active column marked with '*'."""
        full = "full (rehearsal)" if self.rehearsal else "full"
        head = ["setting", "small" + (" *" if self.track == "small" else ""),
                full + (" *" if self.track == "full" else "")]
        body = [[k, str(r.small), str(self._value(k) if self.rehearsal else r.full)] for k, r in self._rows.items()]
        widths = [max(len(row[i]) for row in [head] + body) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head] + body]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __repr__(self) -> str:
        where = "a rehearsal on the CPU: stand-in models, settings scaled down" if self.rehearsal else f"device: {self.device}"
        return f"track: {self.track} ({where}, host: {host()})\n{self.table()}"


@contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch threads (None: as it is), restoring the count afterwards."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int = 0):
    """Seed Python, NumPy and torch and ask torch for deterministic kernels.

    Returns a CPU torch.Generator seeded with `seed`, to pass to samplers and data loaders.
    On CPU, the same seed then gives bit-identical results run after run.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)
