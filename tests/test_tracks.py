import os
import subprocess
import sys

import pytest
import torch

from coursekit import hub, tracks


def test_settings_hold_both_tracks_and_print_a_table(monkeypatch):
    monkeypatch.setenv("COURSEKIT_TRACK", "small")
    S = tracks.Settings(model=("digits-uncond", "org/big-model"), steps=(25, 50))
    assert (S.track, S.model, S.steps) == ("small", "digits-uncond", 25)
    assert S.as_dict() == {"model": "digits-uncond", "steps": 25}
    table = S.table().splitlines()
    assert table[0].split() == ["setting", "small", "*", "full"]
    assert table[2].split() == ["model", "digits-uncond", "org/big-model"]
    assert "track: small" in repr(S)
    with pytest.raises(AttributeError, match="known: model, steps"):
        _ = S.batch
    with pytest.raises(TypeError, match="pair"):
        tracks.Settings(steps=25)


def test_auto_track_is_small_without_gpu(monkeypatch):
    monkeypatch.delenv("COURSEKIT_TRACK", raising=False)
    monkeypatch.setattr(tracks, "device", lambda: "cpu")
    assert tracks.pick_track([("org/model", "model")]) == "small"


def test_auto_track_is_full_with_gpu_and_cached_weights(monkeypatch):
    monkeypatch.delenv("COURSEKIT_TRACK", raising=False)
    monkeypatch.setattr(tracks, "device", lambda: "cuda")
    monkeypatch.setattr(hub, "is_cached", lambda repo, kind="model": True)
    assert tracks.pick_track([("org/model", "model")]) == "full"
    monkeypatch.setattr(hub, "is_cached", lambda repo, kind="model": False)
    assert tracks.pick_track([("org/model", "model")]) == "small"  # offline in tests, not cached


def test_forcing_full_without_gpu_fails_at_once_naming_the_gpu(monkeypatch):
    monkeypatch.setenv("COURSEKIT_TRACK", "full")
    monkeypatch.setattr(tracks, "device", lambda: "cpu")
    with pytest.raises(tracks.TrackError, match="a GPU"):
        tracks.pick_track([])
    with pytest.raises(tracks.TrackError, match="a GPU"):
        tracks.Settings(model=("digits-uncond", "org/model"))


def test_forcing_full_without_weights_names_the_missing_repo(monkeypatch):
    monkeypatch.setenv("COURSEKIT_TRACK", "full")
    monkeypatch.setattr(tracks, "device", lambda: "cuda")
    with pytest.raises(tracks.TrackError, match=r"org/model .*HF_HUB_OFFLINE"):
        tracks.pick_track([("org/model", "model")])


def test_forcing_an_unknown_track_is_refused(monkeypatch):
    monkeypatch.setenv("COURSEKIT_TRACK", "medium")
    with pytest.raises(tracks.TrackError, match="'small' or 'full'"):
        tracks.pick_track()


@pytest.mark.parametrize("env, expected", [({"COLAB_RELEASE_TAG": "x"}, "colab"),
                                           ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle"), ({}, "local")])
def test_host_detection(monkeypatch, env, expected):
    for key in ("COLAB_RELEASE_TAG", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if expected == "local" and os.path.isdir("/kaggle/working"):
        pytest.skip("this machine looks like Kaggle")
    assert tracks.host() == expected


def test_device_is_a_known_kind():
    assert tracks.device() in {"cuda", "mps", "cpu"}


SEEDED = """
import torch, hashlib
from coursekit import tracks, samplers
from tests.helpers import tiny_unet, tiny_scheduler
g = tracks.seed_everything(123)
w = torch.randn(1000)
unet = tiny_unet()
x = samplers.ddim(unet, tiny_scheduler(), samplers.noise(unet, 4, g), steps=5, eta=1.0, generator=g, progress=False)
print(hashlib.sha256(w.numpy().tobytes() + x.numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_seeding_is_bit_reproducible_across_processes():
    root = os.path.dirname(os.path.dirname(__file__))
    runs = [subprocess.run([sys.executable, "-c", SEEDED], capture_output=True, text=True, cwd=root, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 64


def test_seed_everything_returns_a_seeded_generator():
    a = tracks.seed_everything(5)
    b = torch.Generator().manual_seed(5)
    assert torch.equal(torch.randn(3, generator=a), torch.randn(3, generator=b))


def test_the_rehearsal_rule_scales_counts_down_and_keeps_everything_else():
    r = tracks.rehearsal_value
    assert r(100, 2000) == 100 and r(32, 4) == 4, "a count takes the smaller value"
    assert r((10, 20, 50, 100), (10, 25, 50)) == (10, 25, 50), "a collection of counts: the smaller total"
    assert r((16, 32, 32), (32, 64, 128, 128)) == (16, 32, 32)
    assert r({"ddim": [50, 4]}, {"ddpm": [1000], "ddim": [50, 4]}) == {"ddim": [50, 4]}
    assert r(5e-4, 1e-5) == 1e-5 and r(1.5, 5.0) == 5.0, "scales and rates keep the full track's"
    assert r("digits", "ylecun/mnist") == "ylecun/mnist" and r(None, "a prompt") == "a prompt"
    assert r((20, 30), None) is None, "a full-track None stays None: the rehearsal follows the full track's branches"
    assert r(False, True) is True and r((0.1, 0.3), (0.2, 0.4)) == (0.2, 0.4)


def test_a_rehearsal_runs_the_full_track_on_the_cpu_with_scaled_settings(monkeypatch):
    monkeypatch.setenv("COURSEKIT_TRACK", "full")
    monkeypatch.setenv("COURSEKIT_REHEARSE", "1")
    monkeypatch.setattr(tracks, "device", lambda: "cpu")
    monkeypatch.setattr(hub, "is_cached", lambda repo, kind="model": True)
    S = tracks.Settings(model=("digits-uncond", "org/model"), steps=(25, 50), lr=(1e-3, 1e-4))
    assert (S.track, S.rehearsal, S.device) == ("full", True, "cpu")
    assert (S.model, S.steps, S.lr) == ("org/model", 25, 1e-4)
    assert S.as_dict() == {"model": "org/model", "steps": 25, "lr": 1e-4}
    assert "rehearsal" in repr(S) and "full (rehearsal) *" in S.table().splitlines()[0]
    monkeypatch.setenv("COURSEKIT_REHEARSE", "0")
    monkeypatch.setattr(tracks, "device", lambda: "cuda")
    assert tracks.Settings(model=("digits-uncond", "org/model"), steps=(25, 50)).steps == 50


def test_a_rehearsal_takes_the_notebooks_own_sizes_and_refuses_unknown_ones(monkeypatch):
    """A notebook's metadata coursekit.rehearsal (handed over by `coursekit run --rehearse`) sets the sizes that
    only need to reach each code path; the rest follow the rule; the small and full tracks never see them."""
    monkeypatch.setenv("COURSEKIT_TRACK", "full")
    monkeypatch.setenv("COURSEKIT_REHEARSE", "1")
    monkeypatch.setenv("COURSEKIT_REHEARSAL_SIZES", '{"steps": 2, "prompts": ["a", "b"]}')
    monkeypatch.setattr(tracks, "device", lambda: "cpu")
    monkeypatch.setattr(hub, "is_cached", lambda repo, kind="model": True)
    rows = dict(model=("digits-uncond", "org/model"), steps=(25, 50), n=(8, 16), prompts=(("x",) * 4, ("y",) * 6))
    S = tracks.Settings(**rows)
    assert (S.steps, S.n, S.prompts) == (2, 8, ["a", "b"])
    assert "2" in S.table().splitlines()[3]
    with pytest.raises(tracks.TrackError, match="lacks: lr"):
        monkeypatch.setenv("COURSEKIT_REHEARSAL_SIZES", '{"lr": 0.1}')
        tracks.Settings(**rows)
    monkeypatch.setenv("COURSEKIT_REHEARSE", "0")
    monkeypatch.setattr(tracks, "device", lambda: "cuda")
    assert tracks.Settings(**rows).steps == 50
    monkeypatch.setenv("COURSEKIT_TRACK", "small")
    assert tracks.Settings(**rows).steps == 25


def test_mps_gets_the_small_track_unless_the_full_one_is_asked_for(monkeypatch):
    monkeypatch.delenv("COURSEKIT_TRACK", raising=False)
    monkeypatch.delenv("COURSEKIT_REHEARSE", raising=False)
    monkeypatch.setattr(tracks, "device", lambda: "mps")
    monkeypatch.setattr(hub, "is_cached", lambda repo, kind="model": True)
    assert tracks.pick_track([("org/model", "model")]) == "small"
    assert any("MPS" in m for m in tracks.missing_for_full([("org/model", "model")]))
    monkeypatch.setenv("COURSEKIT_TRACK", "full")
    assert tracks.pick_track([("org/model", "model")]) == "full"
    assert tracks.Settings(model=("digits-uncond", "org/model")).device == "mps"
