import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from coursekit import cli


def write(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_run_writes_executed_notebooks_html_and_an_index(tmp_path):
    good = write(tmp_path / "good.ipynb", "print(6 * 7)")
    bad = write(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('broken on purpose')", "print('after')")
    out = tmp_path / "build"
    code = cli.cmd_run(type("A", (), {"paths": [str(good), str(bad)], "track": "small", "out": str(out), "timeout": 60})())
    assert code == 1
    run = json.loads((out / "run.json").read_text())
    status = {r["notebook"].split("/")[-1]: r["status"] for r in run["notebooks"]}
    assert status["good.ipynb"] == "ok"
    assert status["bad.ipynb"].startswith("failed: cell 1: CellExecutionError") and "broken on purpose" in status["bad.ipynb"]
    index = (out / "index.html").read_text()
    assert "good.ipynb" in index and "bad.ipynb" in index
    executed = list(out.rglob("good.ipynb"))[0]
    assert "42" in nbformat.read(executed, 4).cells[0].outputs[0]["text"]
    partial = nbformat.read(list(out.rglob("bad.ipynb"))[0], 4)
    assert partial.cells[1].outputs[0]["ename"] == "ValueError"
    assert list(out.rglob("good.html"))


@pytest.mark.slow
def test_run_reports_each_notebook_and_its_cells_and_keeps_the_kernel_notice_out(tmp_path):
    """`coursekit run` as a workshop sees it: one line per notebook with its place in the run, a bar over its
    cells, cell timings kept in the executed copy, and no kernel transport notice in the log."""
    import subprocess
    import sys

    first = write(tmp_path / "a.ipynb", "print(1)", "import time; time.sleep(0.2)")
    second = write(tmp_path / "b.ipynb", "print(2)")
    run = subprocess.run([sys.executable, "-m", "coursekit.cli", "run", str(first), str(second), "--track", "small",
                          "--out", str(tmp_path / "build")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"[1/2] {first}" in run.stdout and f"[2/2] {second}" in run.stdout and "[2/2] ok in" in run.stdout
    assert "a.ipynb: 100%" in run.stderr and "2/2 [" in run.stderr, "a bar over the notebook's cells"
    assert "TCP" not in run.stderr and "WARNING" not in run.stderr, run.stderr
    executed = nbformat.read(next((tmp_path / "build").rglob("a.ipynb")), 4)
    assert all("shell.execute_reply" in c.metadata["execution"] for c in executed.cells)


def test_run_never_writes_over_a_notebook_and_keeps_its_copies_under_out(tmp_path, monkeypatch):
    (tmp_path / "units").mkdir()
    nb = write(tmp_path / "units" / "a.ipynb", "print(1)")
    before = nb.read_bytes()
    monkeypatch.chdir(tmp_path / "units")
    args = lambda paths, out, overwrite=False: type("A", (), {"paths": paths, "track": "small", "out": out, "timeout": 60,
                                                              "overwrite": overwrite})()
    with pytest.raises(cli.CommandError, match="already holds files that `coursekit run` did not write"):
        cli.cmd_run(args(["a.ipynb"], "."))
    with pytest.raises(cli.CommandError, match="over the notebook itself; pass another folder"):
        cli.cmd_run(args(["a.ipynb"], ".", overwrite=True))
    assert nb.read_bytes() == before
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert cli.executed_folder(Path("out"), Path("../units/a.ipynb")) == Path("out") / str(tmp_path / "units").lstrip("/")
    assert cli.executed_folder(Path("out"), Path("units/x/a.ipynb")) == Path("out/units/x")
    assert cli.cmd_run(args(["../units/a.ipynb"], "out")) == 0
    assert [p for p in (tmp_path / "units").iterdir()] == [nb] and nb.read_bytes() == before
    assert list((tmp_path / "work" / "out").rglob("a.ipynb")), "the copy stays under --out"


def test_run_refuses_a_path_that_is_not_a_notebook(tmp_path):
    import pytest

    with pytest.raises(cli.CommandError, match="neither a notebook nor a folder"):
        cli.find_notebooks([str(tmp_path / "missing.txt")])


ROOT = __import__("pathlib").Path(__file__).parent.parent


def test_notebook_settings_and_needs_are_read_without_running(tmp_path):
    nb = write(tmp_path / "s.ipynb", "from coursekit import tracks\n"
               "S = tracks.Settings(model=('digits-cond', 'org/model'), dataset=('digits', 'org/data'), steps=(5, 50))")
    assert cli.notebook_settings(nb) == {"model": ("digits-cond", "org/model"), "dataset": ("digits", "org/data"),
                                         "steps": (5, 50)}
    assert cli.notebook_needs(nb) == [("org/model", "model"), ("org/data", "dataset")]
    audio_needs = cli.notebook_needs(ROOT / "units" / "unit4" / "02_diffusion_for_audio.ipynb")
    assert audio_needs == [("kmpartner/audio-diffusion-electronic", "model"), ("lewtun/music_genres_small", "dataset")]


def test_doctor_offline_on_cpu_says_small_track_for_every_notebook(capsys, monkeypatch):
    from coursekit import tracks

    monkeypatch.delenv("COURSEKIT_TRACK", raising=False)
    monkeypatch.setattr(tracks, "device", lambda: "cpu")
    report = cli.doctor([str(ROOT / "units")])
    assert report["device"] == "cpu" and not report["hub_reachable"] and report["zoo_complete"]
    assert len(report["notebooks"]) == len(list((ROOT / "units").rglob("*.ipynb")))
    assert all(n["small"] == "yes" and n["full"].startswith("no: needs a GPU") and n["track"] == "small"
               for n in report["notebooks"])
    assert report["verdict"].startswith("ready for the small track") and report["free_disk"] > 0
    code = cli.cmd_doctor(type("A", (), {"paths": [str(ROOT / "units" / "unit4")]})())
    out = capsys.readouterr().out
    assert code == 0 and "02_diffusion_for_audio.ipynb: small yes; full no" in out and "verdict:" in out
    unit4 = len(list((ROOT / "units" / "unit4").glob("*.ipynb")))
    assert "track:         small (picked automatically" in out and out.count("here: small") == unit4


def test_doctor_sees_the_full_track_with_a_gpu_and_cached_repos(monkeypatch):
    from coursekit import hub, tracks

    monkeypatch.delenv("COURSEKIT_TRACK", raising=False)
    monkeypatch.setattr(tracks, "device", lambda: "cuda")
    monkeypatch.setattr(hub, "is_cached", lambda repo, kind="model": True)
    report = cli.doctor([str(ROOT / "units")])
    assert report["track_picked"] == "full" and report["verdict"] == "ready for the full track on cuda"
    assert all(report["cached"].values()) and all(n["track"] == "full" for n in report["notebooks"])


def test_doctor_honours_coursekit_track_as_the_notebooks_do(monkeypatch, capsys):
    from coursekit import hub, tracks

    monkeypatch.setattr(tracks, "device", lambda: "cuda")
    monkeypatch.setattr(hub, "is_cached", lambda repo, kind="model": True)
    monkeypatch.setenv("COURSEKIT_TRACK", "small")
    report = cli.doctor([str(ROOT / "units")])
    assert report["track_picked"] == "small" and report["track_forced"] == "small" and report["ready"]
    assert all(n["track"] == "small" and n["full"] == "yes" for n in report["notebooks"])
    assert report["verdict"].startswith("ready for the small track, as COURSEKIT_TRACK=small asks")
    monkeypatch.setenv("COURSEKIT_TRACK", "full")
    monkeypatch.setattr(hub, "is_cached", lambda repo, kind="model": repo != "kmpartner/audio-diffusion-electronic")
    code = cli.cmd_doctor(type("A", (), {"paths": [str(ROOT / "units" / "unit4")]})())
    out = capsys.readouterr().out
    assert code == 1 and "track:         full (COURSEKIT_TRACK=full)" in out
    assert "02_diffusion_for_audio.ipynb: small yes; full no: needs the model kmpartner/audio-diffusion-electronic" in out
    assert "here: stops: COURSEKIT_TRACK=full, but the full track needs the model kmpartner" in out
    unit4 = len(list((ROOT / "units" / "unit4").glob("*.ipynb")))
    assert out.count("here: full") == unit4 - 1 and "verdict:       not ready: " in out


def test_doctor_reports_a_notebook_without_settings_and_carries_on(tmp_path, monkeypatch, capsys):
    from coursekit import tracks

    monkeypatch.delenv("COURSEKIT_TRACK", raising=False)
    monkeypatch.setattr(tracks, "device", lambda: "cpu")
    write(tmp_path / "plain.ipynb", "print(1)")
    _settings_notebook(tmp_path / "set.ipynb")
    report = cli.doctor([str(tmp_path)])
    plain, settings = report["notebooks"]
    assert not plain["settings"] and plain["track"] is None and plain["stops"] is None and plain["needs"] == []
    assert settings["settings"] and settings["track"] == "small" and report["ready"]
    assert cli.cmd_doctor(type("A", (), {"paths": [str(tmp_path)]})()) == 0
    assert "plain.ipynb: small no settings cell; full no settings cell; here: no settings cell" in capsys.readouterr().out


def test_doctor_on_a_mac_says_why_mps_gets_the_small_track(monkeypatch):
    from coursekit import hub, tracks

    monkeypatch.delenv("COURSEKIT_TRACK", raising=False)
    monkeypatch.setattr(tracks, "device", lambda: "mps")
    monkeypatch.setattr(hub, "is_cached", lambda repo, kind="model": True)
    report = cli.doctor([str(ROOT / "units")])
    assert report["track_picked"] == "small" and "COURSEKIT_TRACK=full" in report["verdict"]
    assert "T4" in report["verdict"] and all("MPS" in n["full"] for n in report["notebooks"] if n["needs"])


def test_prefetch_offline_fails_fast_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import pytest

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(cli.CommandError, match="(HF_HUB_OFFLINE is set|the Hub is unreachable), so nothing was downloaded"):
        cli.prefetch()
    assert not (tmp_path / "hf").exists()


def test_prefetch_downloads_pinned_revisions_verifies_and_prints_sizes(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from coursekit import hub

    calls = []

    def fake_snapshot_download(repo, repo_type="model", revision=None, local_files_only=False, **patterns):
        calls.append((repo, repo_type, revision, local_files_only, patterns))
        folder = tmp_path / repo_type / repo.replace("/", "--")
        if not local_files_only:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "weights.safetensors").write_bytes(b"0" * 2_000_000)
        return str(folder)

    monkeypatch.setattr(hub, "reachable", lambda timeout=2.0: True)
    plan = cli.prefetch_plan(unit=4, root=str(ROOT / "units"))
    pins = {repo: f"{i:x}" * 40 for i, (repo, _) in enumerate(plan, start=10)}
    monkeypatch.setattr(hub, "pins", lambda: pins)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    done = cli.prefetch(unit=4, root=str(ROOT / "units"))
    assert [d["repo"] for d in done] == [repo for repo, _ in plan] and len(plan) == 5
    assert {kind for _, kind in plan} == {"model", "dataset"}
    assert all(d["bytes"] == 2_000_000 for d in done)
    fetched = [c for c in calls if not c[3]]
    verified = [c for c in calls if c[3]]
    assert [c[2] for c in fetched] == [pins[repo] for repo, _ in plan] and len(verified) == 5
    for repo, kind, _, _, patterns in fetched:
        assert patterns == (hub.model_files(repo) if kind == "model" else hub.dataset_files(repo))
        assert "*.bin" in patterns["ignore_patterns"] if kind == "model" else "*.py" in patterns["ignore_patterns"]
    assert "prefetched 5 repos, 10.0 MB in all" in capsys.readouterr().out


def test_prefetch_of_an_unknown_unit_names_the_units():
    import pytest

    with pytest.raises(cli.CommandError, match="no .*unit9; units are unit1, unit2, unit3, unit4"):
        cli.prefetch_plan(unit=9, root=str(ROOT / "units"))


def test_instructor_times_come_from_coursekit_runs(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import instructor_times

    guide = tmp_path / "guide.md"
    guide.write_text("# Guide\n\n<!-- times -->\n<!-- /times -->\n\nmore text\n")
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"track": "small", "machine": "x86_64, 2 cores", "notebooks": [
        {"notebook": "units/unit1/a.ipynb", "seconds": 90.0, "status": "ok"},
        {"notebook": "units/unit2/b.ipynb", "seconds": 30.0, "status": "failed: CellExecutionError: boom"}]}))
    instructor_times.main(["--small", str(small), "--guide", str(guide)])
    text = guide.read_text()
    assert "| `unit1/a.ipynb` | 1.5 min | not run yet |" in text
    assert "| `unit2/b.ipynb` | failed (failed: CellExecutionError: boom) | not run yet |" in text
    assert "_Small track measured on: x86_64, 2 cores_" in text and text.endswith("more text\n")
    full = tmp_path / "full.json"
    full.write_text(json.dumps({"track": "full", "notebooks": [
        {"notebook": "units/unit1/a.ipynb", "seconds": 600.0, "status": "ok"}]}))
    instructor_times.main(["--full", str(full), "--guide", str(guide)])
    assert "| `unit1/a.ipynb` | 1.5 min | 10.0 min |" in guide.read_text()
    assert "| the whole course, run end to end | 2.0 min | 10.0 min |" in guide.read_text()


def _settings_notebook(path, *cells):
    return write(path, "from coursekit import tracks\n"
                       "S = tracks.Settings(model=('digits-uncond', 'google/ddpm-cat-256'), dataset=('digits', 'ylecun/mnist'), "
                       "steps=(5, 50))\nprint(S.track, S.rehearsal, S.device, S.steps)", *cells)


def _rehearse(monkeypatch, tmp_path, nb, repos):
    from coursekit import standins

    monkeypatch.setattr(standins, "STANDINS", {r: standins.STANDINS[r] for r in repos})
    out = tmp_path / "build"
    code = cli.cmd_run(type("A", (), {"paths": [str(nb)], "track": None, "rehearse": True, "out": str(out), "timeout": 120})())
    run = json.loads((out / "run.json").read_text())
    return code, run, nbformat.read(next(out.rglob(nb.name)), 4)


@pytest.mark.slow
def test_rehearsal_runs_the_full_track_code_on_stand_ins_and_restores_the_environment(tmp_path, monkeypatch):
    import os

    before = {k: os.environ.get(k) for k in ("HF_HOME", "COURSEKIT_TRACK", "COURSEKIT_REHEARSE")}
    nb = _settings_notebook(tmp_path / "r.ipynb",
                            "from coursekit import data, models\nunet, _ = models.load_model(S.model)\n"
                            "ds = data.load_dataset(S.dataset)\n"
                            "print(type(unet).__name__, unet.config.sample_size, ds.column_names, len(ds))")
    code, run, executed = _rehearse(monkeypatch, tmp_path, nb, ["google/ddpm-cat-256", "ylecun/mnist"])
    assert code == 0 and run["track"] == "full (rehearsal)" and run["notebooks"][0]["status"] == "ok"
    stdout = ["".join(o["text"] for o in c.outputs if o.get("name") == "stdout") for c in executed.cells]
    assert stdout[0].split()[:4] == ["full", "True", "cpu", "5"], "counts scaled down"
    assert stdout[1].split()[:2] == ["UNet2DModel", "32"]
    assert {k: os.environ.get(k) for k in before} == before
    sized = nbformat.read(nb, 4)
    sized.metadata["coursekit"] = {"rehearsal": {"steps": 2}}
    nbformat.write(sized, nb)
    code, _, executed = _rehearse(monkeypatch, tmp_path, nb, ["google/ddpm-cat-256", "ylecun/mnist"])
    assert code == 0 and executed.cells[0].outputs[0]["text"].split()[3] == "2", "the notebook's rehearsal sizes"


def test_rehearsal_names_the_notebook_and_cell_of_a_failing_full_track_cell(tmp_path, monkeypatch):
    nb = _settings_notebook(tmp_path / "broken.ipynb", "x = 1",
                            "if S.track == 'full':\n    raise RuntimeError('only the full track breaks here')")
    code, run, _ = _rehearse(monkeypatch, tmp_path, nb, ["google/ddpm-cat-256", "ylecun/mnist"])
    assert code == 1
    status = run["notebooks"][0]["status"]
    assert run["notebooks"][0]["notebook"].endswith("broken.ipynb")
    assert status.startswith("failed: cell 2: ") and "only the full track breaks here" in status


def test_rehearsal_without_a_stand_in_fails_naming_the_repo(tmp_path, monkeypatch):
    nb = _settings_notebook(tmp_path / "missing.ipynb", "from coursekit import data\ndata.load(S.dataset)")
    code, run, _ = _rehearse(monkeypatch, tmp_path, nb, ["google/ddpm-cat-256"])
    status = run["notebooks"][0]["status"]
    assert code == 1 and status.startswith("failed: cell 0: ") and "the dataset ylecun/mnist" in status


def test_rehearse_refuses_the_small_track(tmp_path):
    import pytest

    with pytest.raises(cli.CommandError, match="--rehearse rehearses the full track"):
        cli.cmd_run(type("A", (), {"paths": [], "track": "small", "rehearse": True, "out": str(tmp_path), "timeout": 5})())


@pytest.mark.slow
def test_every_command_is_a_coursekit_subcommand_in_one_style(capsys, tmp_path, monkeypatch):
    import subprocess
    import sys

    import pytest

    from coursekit import distill

    final = distill.RECIPES["digits-cond"].final_steps
    for argv, seen in ((["train", "--list"], "digits-cond:"), (["distill", "--list"], f"64 -> {final} steps")):
        assert cli.main(argv) == 0 and seen in capsys.readouterr().out
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SystemExit, match=r"^coursekit prefetch: .*nothing was downloaded"):
        cli.main(["prefetch"])
    with pytest.raises(SystemExit, match=r"^coursekit finetune: .*3 channel\(s\) \(RGB\) but the model takes 1"):
        cli.main(["finetune", "--model", "digits-uncond", "--dataset", "photo-crops", "--out", str(tmp_path / "run")])
    module = subprocess.run([sys.executable, "-m", "coursekit.zoo", "train", "--list"], capture_output=True, text=True,
                            cwd=ROOT)
    assert module.returncode == 0 and "digits-cond:" in module.stdout, "python -m still works, with the same commands"
