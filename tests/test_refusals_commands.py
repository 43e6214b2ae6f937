"""Bad input to the commands (`coursekit run`, `doctor`, `prefetch`) and to the explorers: each
case is refused with a non-zero exit (commands) or its error type (widgets) and a message that
names the fix; a broken or slow notebook fails on its own row of the index while the others
still run (issue 14, "Commands that carry on")."""
import json
import math
import subprocess
import sys
from functools import cache

import nbformat
import pytest
import torch

from coursekit import audio, cli, data, inversion, models, samplers, tracks, widgets
from tests.helpers import tiny_scheduler, tiny_unet
from tests.test_cli import ROOT, write

pytest.importorskip("ipywidgets")

NAN = math.nan


def scene(tmp):
    """Folders and files the command cases point at."""
    (tmp / "empty").mkdir()
    (tmp / "docs").mkdir()
    (tmp / "docs" / "README.md").write_text("no notebooks here\n")
    (tmp / "notes.txt").write_text("not a notebook\n")
    (tmp / "taken").write_text("a file where the output folder should go\n")
    (tmp / "one").mkdir()
    write(tmp / "one" / "good.ipynb", "print(1)")
    return tmp


def status_and_message(argv) -> tuple[int, str]:
    """The exit status of `coursekit ARGV` and the message it exits with (as `sys.exit(message)`
    gives it: status 1, the message on stderr)."""
    try:
        return cli.main(argv), ""
    except SystemExit as e:
        return (1 if isinstance(e.code, str) else e.code), str(e.code)


COMMANDS = [
    pytest.param(lambda t: ["run", str(t / "empty"), "--out", str(t / "build")], {},
                 ["coursekit run: no notebooks (.ipynb) in", "pass notebooks or a folder that holds them"],
                 id="run-empty-folder"),
    pytest.param(lambda t: ["run", str(t / "docs"), "--out", str(t / "build")], {},
                 ["no notebooks (.ipynb) in", "docs", "such as `coursekit run units`"], id="run-folder-without-notebooks"),
    pytest.param(lambda t: ["run", str(t / "notes.txt"), "--out", str(t / "build")], {},
                 ["notes.txt is neither a notebook nor a folder", "pass notebooks (.ipynb) or folders"],
                 id="run-a-file-that-is-not-a-notebook"),
    pytest.param(lambda t: ["run", str(t / "missing.ipynb"), "--out", str(t / "build")], {},
                 ["neither a notebook nor a folder (nothing is there)", "pass notebooks (.ipynb)"],
                 id="run-a-missing-notebook"),
    pytest.param(lambda t: ["run", str(t / "one"), "--timeout", "0", "--out", str(t / "build")], {},
                 ["--timeout is the seconds each cell may take", "whole number >= 1", "got 0"], id="run-timeout-zero"),
    pytest.param(lambda t: ["run", str(t / "one"), "--out", str(t / "taken")], {},
                 ["is a file", "pass a folder for the executed notebooks"], id="run-out-is-a-file"),
    pytest.param(lambda t: ["run", str(t / "one"), "--rehearse", "--track", "small", "--out", str(t / "build")], {},
                 ["--rehearse rehearses the full track", "drop --track small"], id="run-rehearse-small"),
    pytest.param(lambda t: ["doctor", str(t / "one")], {"COURSEKIT_TRACK": "medium"},
                 ["coursekit doctor: COURSEKIT_TRACK='medium' is not a track", "use 'small' or 'full', or unset it"],
                 id="doctor-track-not-a-track"),
    pytest.param(lambda t: ["doctor", str(t / "one")], {"COURSEKIT_TRACK": "full"},
                 ["COURSEKIT_TRACK=full, but the full track needs a GPU", "unset COURSEKIT_TRACK"],
                 id="doctor-full-forced-without-gpu"),
    pytest.param(lambda t: ["doctor", str(t / "notes.txt")], {},
                 ["neither a notebook nor a folder", "pass notebooks (.ipynb)"], id="doctor-not-a-notebook"),
    pytest.param(lambda t: ["prefetch", "--unit", "9", "--units-dir", str(ROOT / "units")], {},
                 ["unit9; units are unit1, unit2, unit3, unit4"], id="prefetch-unknown-unit"),
]


@pytest.mark.parametrize("argv, env, words", COMMANDS)
def test_commands_refuse_what_they_cannot_do_with_a_non_zero_exit_naming_the_fix(tmp_path, monkeypatch, argv, env,
                                                                                  words):
    monkeypatch.delenv("COURSEKIT_TRACK", raising=False)
    monkeypatch.delenv("COURSEKIT_REHEARSE", raising=False)
    monkeypatch.setattr(tracks, "device", lambda: "cpu")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    status, message = status_and_message(argv(scene(tmp_path)))
    assert status != 0
    assert all(w in message for w in words), message
    assert "\n" not in message, "one line"
    assert not (tmp_path / "build").exists(), "refused before anything ran"
    if "COURSEKIT_TRACK" in env:
        with pytest.raises(tracks.TrackError) as notebook:
            tracks.Settings(steps=(1, 2))
        assert message.endswith(str(notebook.value)), "the doctor says what the notebook's settings cell would"


@pytest.mark.slow
def test_an_empty_folder_is_one_line_on_stderr_and_exit_status_1_not_a_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-m", "coursekit.cli", "run", str(tmp_path / "empty"), "--out",
                           str(tmp_path / "build")], capture_output=True, text=True, cwd=ROOT)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith("coursekit run: no notebooks (.ipynb) in") and "pass notebooks" in last


def test_run_lists_an_unreadable_notebook_as_failed_and_runs_the_rest(tmp_path, capsys):
    write(tmp_path / "good.ipynb", "print(1)")
    (tmp_path / "bad.ipynb").write_text('{"cells": [ this is not json')
    out = tmp_path / "build"
    assert cli.main(["run", str(tmp_path), "--out", str(out), "--track", "small", "--timeout", "60"]) == 1
    rows = {r["notebook"].split("/")[-1]: r for r in json.loads((out / "run.json").read_text())["notebooks"]}
    assert sorted(rows) == ["bad.ipynb", "good.ipynb"]
    assert rows["good.ipynb"]["status"] == "ok"
    bad = rows["bad.ipynb"]["status"]
    assert bad.startswith("failed: cannot read the notebook (NotJSONError: ") and "repair the file" in bad, bad
    assert "\n" not in bad and rows["bad.ipynb"]["html"] is None
    executed = nbformat.read(next(out.rglob("good.ipynb")), 4)
    assert executed.cells[0].outputs[0]["text"] == "1\n"
    index = (out / "index.html").read_text()
    assert "bad.ipynb</td>" in index and "good.html" in index
    assert "FAILED " in capsys.readouterr().err


def test_a_cell_that_times_out_is_named_with_the_option_that_allows_it_longer(tmp_path):
    nb = write(tmp_path / "slow.ipynb", "import time", "time.sleep(60)  # longer than the limit\nprint('never')")
    out = tmp_path / "build"
    code = cli.cmd_run(type("A", (), {"paths": [str(nb)], "track": "small", "out": str(out), "timeout": 2})())
    status = json.loads((out / "run.json").read_text())["notebooks"][0]["status"]
    assert code == 1
    assert status.startswith("failed: cell 1: timed out after 2 s running `time.sleep(60)  # longer than the limit`")
    assert "--timeout SECONDS (now 2)" in status


@cache
def unet(channels=1, classes=None):
    return tiny_unet(channels=channels, classes=classes)


def images(n=2, channels=1):
    return torch.rand(n, channels, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def with_nan():
    x = images()
    x[0, 0, 0, 0] = NAN
    return x


PRESET = audio.MelPreset(sample_rate=8000, n_fft=64, hop_length=32, n_mels=8, frames=8, n_iter=4)
SEED = ["seed must be a whole number from 0 to", "(2**63 - 1), such as 0 or 42"]
COLOUR = ["colour must be '#rrggbb'", "or three numbers R, G, B in 0..1"]
S = tiny_scheduler()


def colour_panel(**kw):
    return widgets.colour_guidance(unet(3), S, **{"n": 1, "steps": 2, **kw})


def editor(**kw):
    return widgets.inversion_editor(unet(classes=3), S, images(), kw.pop("labels", torch.tensor([0, 2])),
                                    **{"steps": 4, "k": 2, **kw})


WIDGETS = [
    pytest.param(lambda: widgets.noisy(images(), 10, "linear", seed=-1), widgets.WidgetError, SEED, id="seed-negative"),
    pytest.param(lambda: widgets.noisy(images(), 10, "linear", seed=2**63), widgets.WidgetError, SEED, id="seed-too-big"),
    pytest.param(lambda: widgets.noisy(images(), 10, "linear", seed=1.5), widgets.WidgetError, SEED, id="seed-fraction"),
    pytest.param(lambda: widgets.noisy(images(), 10, "linear", seed="7"), widgets.WidgetError, SEED, id="seed-text"),
    pytest.param(lambda: widgets.noisy(images(), 10, "linear", seed=True), widgets.WidgetError, SEED, id="seed-bool"),
    pytest.param(lambda: widgets.audio_clip(unet(), S, PRESET, seed=-3), widgets.WidgetError, SEED, id="audio-seed"),
    pytest.param(lambda: widgets.noisy(images(), 1000, "linear"), widgets.WidgetError,
                 ["t must be a whole number from 0 to 999", "1000-step schedule"], id="t-past-the-schedule"),
    pytest.param(lambda: widgets.noisy(images(), 10, "cosine"), widgets.WidgetError,
                 ["unknown noise schedule 'cosine'", "use one of 'linear', 'scaled_linear', 'squaredcos_cap_v2'"],
                 id="schedule-unknown"),
    pytest.param(lambda: widgets.noisy(with_nan(), 10, "linear"), data.DataError, ["x0 got NaN", "rebuild the images"],
                 id="x0-nan"),
    pytest.param(lambda: widgets.noisy(images()[0], 10, "linear"), data.DataError, ["add a batch axis with x[None]"],
                 id="x0-no-batch-axis"),
    pytest.param(lambda: widgets.noise_schedule(images(), t=-1), widgets.WidgetError,
                 ["t must be a whole number from 0 to 999"], id="noise-schedule-t-negative"),
    pytest.param(lambda: widgets.noise_schedule(images(), schedules=()), widgets.WidgetError,
                 ["schedules is empty", "give at least one schedule name"], id="noise-schedule-no-schedules"),
    pytest.param(lambda: widgets.noise_schedule(images(), schedules=("linear", "fast")), widgets.WidgetError,
                 ["unknown noise schedule 'fast'", "use one of"], id="noise-schedule-unknown"),
    pytest.param(lambda: widgets.sampler(unet(), S, n=0), widgets.WidgetError,
                 ["n must be a whole number >= 1 (images per run)"], id="sampler-no-images"),
    pytest.param(lambda: widgets.sampler(unet(), S, steps=150), widgets.WidgetError,
                 ["steps must be a whole number from 1 to 100", "the steps slider's range"], id="sampler-steps-past-slider"),
    pytest.param(lambda: widgets.sampler(unet(), S, steps=2.5), widgets.WidgetError,
                 ["steps must be a whole number from 1 to 100"], id="sampler-steps-fraction"),
    pytest.param(lambda: widgets.sampler(unet(classes=3), S, n=1, steps=2, labels=[0], guidance_scale=NAN),
                 models.ModelError, ["guidance_scale must be a finite number", "1.5 to 7.5 is usual"],
                 id="sampler-guidance-nan"),
    pytest.param(lambda: widgets.sampler(unet(classes=3), S, n=1, steps=2, labels=[7]), models.ModelError,
                 ["labels must lie in 0..2"], id="sampler-label-out-of-range"),
    pytest.param(lambda: colour_panel(colour="#12345"), widgets.WidgetError, COLOUR, id="colour-hex-too-short"),
    pytest.param(lambda: colour_panel(colour=(0.5, 0.5)), widgets.WidgetError, COLOUR, id="colour-two-numbers"),
    pytest.param(lambda: colour_panel(colour=(1.5, 0.0, 0.0)), widgets.WidgetError, COLOUR, id="colour-above-1"),
    pytest.param(lambda: colour_panel(colour=(0.2, -0.1, 0.0)), widgets.WidgetError, COLOUR, id="colour-negative"),
    pytest.param(lambda: colour_panel(colour=(NAN, 0.0, 0.0)), widgets.WidgetError, COLOUR, id="colour-nan"),
    pytest.param(lambda: colour_panel(colour="red"), widgets.WidgetError, COLOUR, id="colour-name"),
    pytest.param(lambda: colour_panel(colour=None), widgets.WidgetError, COLOUR, id="colour-none"),
    pytest.param(lambda: colour_panel(scale=60.0), widgets.WidgetError,
                 ["scale must be a finite number from 0.0 to 50.0", "raise max_scale"], id="colour-scale-past-slider"),
    pytest.param(lambda: colour_panel(scale=-1.0), widgets.WidgetError,
                 ["scale must be a finite number from 0.0 to 50.0"], id="colour-scale-negative"),
    pytest.param(lambda: colour_panel(scale=NAN), widgets.WidgetError, ["scale must be a finite number"],
                 id="colour-scale-nan"),
    pytest.param(lambda: colour_panel(max_scale=math.inf), widgets.WidgetError,
                 ["max_scale must be a finite number >= 0.5", "top of the scale slider"], id="colour-max-scale-infinite"),
    pytest.param(lambda: colour_panel(n=-2), widgets.WidgetError, ["n must be a whole number >= 1"], id="colour-n-negative"),
    pytest.param(lambda: colour_panel(steps=0), samplers.SamplerError,
                 ["steps must be a whole number from 1 to 1000"], id="colour-steps-zero"),
    pytest.param(lambda: widgets.edit_pair(unet(), S, images(1), 0, 1, 2, steps=4), widgets.WidgetError,
                 ["needs a class-conditional UNet", "such as the zoo's 'digits-cond'"], id="edit-unconditional-unet"),
    pytest.param(lambda: widgets.edit_pair(unet(classes=3), S, images(1), 0, 5, 2, steps=4), widgets.WidgetError,
                 ["target must be a whole number from 0 to 2", "the model's classes"], id="edit-target-unknown"),
    pytest.param(lambda: widgets.edit_pair(unet(classes=3), S, images(1), -1, 1, 2, steps=4), widgets.WidgetError,
                 ["source must be a whole number from 0 to 2"], id="edit-source-negative"),
    pytest.param(lambda: widgets.edit_pair(unet(classes=3), S, images(1), 0, 1, 9, steps=4), inversion.InversionError,
                 ["k must be a whole number between 0 and 4"], id="edit-k-past-steps"),
    pytest.param(lambda: editor(k=9), inversion.InversionError, ["k must be a whole number between 0 and 4"],
                 id="editor-k-past-steps"),
    pytest.param(lambda: editor(steps=0), inversion.InversionError, ["steps must be a whole number from 1 to 1000"],
                 id="editor-steps-zero"),
    pytest.param(lambda: editor(labels=torch.tensor([0.0, 1.0])), widgets.WidgetError,
                 ["labels must be one whole-number class per image (2 of them)"], id="editor-labels-float"),
    pytest.param(lambda: editor(labels=torch.tensor([0])), widgets.WidgetError,
                 ["labels must be one whole-number class per image (2 of them)", "shape (1,)"], id="editor-labels-short"),
    pytest.param(lambda: editor(labels=torch.tensor([0, 7])), widgets.WidgetError,
                 ["labels must lie in 0..2", "the model's classes"], id="editor-labels-unknown"),
    pytest.param(lambda: editor(classes=[]), widgets.WidgetError, ["classes is empty", "such as range(3)"],
                 id="editor-no-classes"),
    pytest.param(lambda: editor(classes=[0, 9]), widgets.WidgetError,
                 ["each of classes must be a whole number from 0 to 2"], id="editor-class-unknown"),
    pytest.param(lambda: widgets.inversion_editor(unet(), S, images(), torch.tensor([0, 1]), steps=4, k=2),
                 widgets.WidgetError, ["the inversion editor needs a class-conditional UNet"], id="editor-unconditional"),
    pytest.param(lambda: widgets.inversion_editor(unet(classes=3), S, images() * 5, torch.tensor([0, 1]), steps=4, k=2),
                 inversion.InversionError, ["images must be in [-1, 1]", "x * 2 - 1"], id="editor-images-out-of-range"),
    pytest.param(lambda: widgets.audio_clip(unet(), S, PRESET, steps=0), samplers.SamplerError,
                 ["steps must be a whole number from 1 to 1000"], id="audio-clip-steps-zero"),
    pytest.param(lambda: widgets.audio_generator(unet(), S, PRESET, steps=1), widgets.WidgetError,
                 ["steps must be a whole number from 2 to 100", "the steps slider's range"], id="audio-steps-below-slider"),
]


@pytest.mark.parametrize("call, error, words", WIDGETS)
def test_widgets_refuse_settings_they_cannot_use_naming_the_fix(call, error, words):
    with pytest.raises(error) as refused:
        call()
    assert isinstance(refused.value, ValueError), "a ValueError, whatever module refuses it"
    assert all(w in str(refused.value) for w in words), str(refused.value)


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_a_seed_typed_into_a_panel_is_refused_in_its_status_line(seed):
    ex = widgets.sampler(unet(), S, n=1, steps=2)
    ex.controls["seed"].value = seed
    runs, shown = ex.runs, bytes(ex.image.value)
    ex.button.click()
    assert ex.status.value.startswith("failed: WidgetError: seed must be a whole number from 0 to 9223372036854775807")
    assert "such as 0 or 42" in ex.status.value and ex.runs == runs and bytes(ex.image.value) == shown
    with pytest.raises(widgets.WidgetError, match=r"seed must be a whole number .*such as 0 or 42, got "):
        ex.update()


def test_valid_colours_in_either_form_reach_the_picker_as_hex():
    assert widgets.check_colour("#E07020") == "#e07020"
    assert widgets.check_colour((1.0, 0.0, 0.2)) == "#ff0033"
    ex = colour_panel(colour=(0.1, 0.3, 0.9), scale=0.0)
    assert ex.controls["colour"].value == "#1a4ce6" and ex.runs == 1
