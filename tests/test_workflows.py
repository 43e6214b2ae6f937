"""The GPU workflow can pass: each of its steps is run here, or by the rehearsal, or by a named
test, so a step that would fail on the GPU runner fails here first."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
GPU = ROOT / ".github" / "workflows" / "gpu.yml"

# Each command of the workflow, and where it is exercised off the GPU runner.
EXERCISED = {
    "make install": "test_make_install_is_the_target_make_test_builds",
    '.venv/bin/python -c "import torch, sys; ok = torch.cuda.is_available(); print(\'CUDA:\', ok); '
    'sys.exit(0 if ok else \'no GPU visible to torch\')"': "test_the_gpu_check_fails_loudly_without_cuda",
    ".venv/bin/coursekit pin": "test_hub_pin_command_pins_and_names_a_model_without_safetensors",
    ".venv/bin/coursekit prefetch": "tests/test_cli.py::test_prefetch_downloads_pinned_revisions_verifies_and_prints_sizes",
    '.venv/bin/python -m pytest tests -m "not browser"': "this suite",
    ".venv/bin/coursekit run units --track full --out build": "tests/test_rehearsal.py (the same command with --rehearse)",
    ".venv/bin/python -m pytest units": "test_nbval_on_the_full_track_checks_full_budgets",
    ".venv/bin/python scripts/instructor_times.py --full build/run.json":
        "tests/test_cli.py::test_instructor_times_come_from_coursekit_runs",
}


def steps():
    return yaml.safe_load(GPU.read_text())["jobs"]["full-track"]["steps"]


def test_every_gpu_workflow_command_is_exercised_off_the_runner():
    runs = [s["run"].strip() for s in steps() if "run" in s]
    assert runs and set(runs) == set(EXERCISED), "a new workflow step needs a test that runs it here"


def test_the_workflow_caches_the_venv_keeps_the_hub_cache_and_uploads_its_findings():
    job = yaml.safe_load(GPU.read_text())["jobs"]["full-track"]
    assert "gpu" in job["runs-on"] and job["env"]["HF_HOME"]
    cache = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"] == ".venv" and "constraints.txt" in cache["with"]["key"]
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    for path in ("build/", "coursekit/hub_revisions.json", "units/README.md"):
        assert path in upload["with"]["path"]
    nbval = next(s for s in job["steps"] if s.get("run", "").strip() == ".venv/bin/python -m pytest units")
    assert nbval["env"]["COURSEKIT_TRACK"] == "full"


def test_make_install_is_the_target_make_test_builds():
    out = subprocess.run(["make", "-n", "install"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    makefile = (ROOT / "Makefile").read_text()
    assert "install: $(STAMP)" in makefile and "test: $(STAMP)" in makefile


def test_the_gpu_check_fails_loudly_without_cuda():
    import torch

    command = next(s["run"] for s in steps() if s.get("name") == "Fail when no GPU is visible")
    code = command.split(" -c ", 1)[1].strip().strip('"')
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if torch.cuda.is_available():
        assert run.returncode == 0 and "CUDA: True" in run.stdout
    else:
        assert run.returncode != 0 and "no GPU visible to torch" in run.stderr


def test_hub_pin_command_pins_and_names_a_model_without_safetensors(tmp_path, monkeypatch):
    from coursekit import hub
    from tests.test_standins import FakeApi

    monkeypatch.setattr(hub, "PINS_FILE", tmp_path / "hub_revisions.json")
    files = {"a" * 40: ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                        "text_encoder/model.safetensors", "diffusion_pytorch_model.safetensors", "model.safetensors",
                        "pytorch_lora_weights.safetensors"]}
    import huggingface_hub

    from coursekit import cli

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: FakeApi("a" * 40, files))
    assert cli.main(["pin"]) == 0 and set(hub.pins()) == set(hub.MODELS + hub.DATASETS)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: FakeApi("a" * 40, {"a" * 40: ["diffusion_pytorch_model.bin"]}))
    with pytest.raises(SystemExit, match="coursekit pin: .*has no revision with"):
        cli.main(["pin"])


def test_nbval_on_the_full_track_checks_full_budgets(monkeypatch):
    import conftest
    from coursekit import cli

    for nb in sorted((ROOT / "units").rglob("*.ipynb")):
        budgets = cli.notebook_budgets(nb)
        monkeypatch.setenv("COURSEKIT_TRACK", "full")
        assert conftest.notebook_budget_minutes(nb) == budgets["full"]
        monkeypatch.delenv("COURSEKIT_TRACK")
        assert conftest.notebook_budget_minutes(nb) == budgets["small"]
