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
    ".venv/bin/python -m pytest units": "test_nbval_on_the_full_track_checks_full_budgets; tests/test_rehearsal.py runs "
                                        "the full track's code; tests/test_executed.py the one execution",
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
    from coursekit import cli
    from tests import executed

    for nb in sorted((ROOT / "units").rglob("*.ipynb")):
        budgets = cli.notebook_budgets(nb)
        monkeypatch.setenv("COURSEKIT_TRACK", "full")
        assert executed.notebook_budget_minutes(nb) == budgets["full"]
        monkeypatch.delenv("COURSEKIT_TRACK")
        assert executed.notebook_budget_minutes(nb) == budgets["small"]


CPU = ROOT / ".github" / "workflows" / "cpu.yml"
SITE = ROOT / ".github" / "workflows" / "site.yml"
EXECUTES = ("make course", "coursekit run", "pytest units", "make site-test\n")


def _runs(path) -> list[str]:
    return [s["run"].strip() for job in yaml.safe_load(path.read_text())["jobs"].values() for s in job["steps"] if "run" in s]


def test_the_cpu_workflow_executes_each_notebook_once_caches_and_uploads_the_executed_notebooks():
    job = yaml.safe_load(CPU.read_text())["jobs"]["test"]
    assert _runs(CPU) == ["make test"], "make test executes every notebook once; nothing runs them again"
    python = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["cache"] == "pip" and "constraints.txt" in python["with"]["cache-dependency-path"]
    corpus = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/cache"))
    assert corpus["with"]["path"] == "~/.cache/coursekit"
    from coursekit import music

    assert "default ~/.cache/coursekit" in music.music_corpus.__doc__, "the cached folder is where the corpus is rendered"
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["name"] == "course-small-track" and "build/" in upload["with"]["path"]


def test_the_site_workflow_publishes_what_the_cpu_workflow_executed_and_executes_nothing():
    workflow = yaml.safe_load(SITE.read_text())
    trigger = workflow[True]["workflow_run"]    # yaml reads the key `on` as True
    assert trigger["workflows"] == [yaml.safe_load(CPU.read_text())["name"]]
    steps = workflow["jobs"]["build"]["steps"]
    download = next(s for s in steps if s.get("uses", "").startswith("actions/download-artifact"))
    assert download["with"]["name"] == "course-small-track" and download["with"]["path"] == "build/"
    runs = _runs(SITE)
    assert "make site-test SITE_ARGS=--no-execute" in runs
    assert not any(r.startswith(("make course", "make test")) or "coursekit run" in r for r in runs)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "build/site/_build/html"


def test_every_badge_opens_an_executed_notebook_the_site_workflow_publishes(tmp_path):
    """The badges name the branch and paths that publish_notebooks.py writes and push_branch.sh pushes in
    the site workflow, and what is written there carries outputs."""
    import json
    import re
    import shutil

    sys.path.insert(0, str(ROOT / "scripts"))
    import badges
    import publish_notebooks

    runs = _runs(SITE)
    publish = next(r for r in runs if "publish_notebooks.py" in r)
    out = publish.split("--out", 1)[1].split()[0]
    assert f"bash scripts/push_branch.sh {out} {badges.EXECUTED_BRANCH}" in runs
    # an executed build like make test's: every notebook with an output in each code cell
    build = tmp_path / "build"
    for nb in sorted((ROOT / "units").glob("unit*/*.ipynb")):
        data = json.loads(nb.read_text())
        for i, cell in enumerate(c for c in data["cells"] if c["cell_type"] == "code"):
            cell["execution_count"] = i + 1
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": f"ran {i}\n"}]
        target = build / nb.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data))
    written = publish_notebooks.main(["--executed", str(build), "--out", str(tmp_path / out)])
    published = {p.relative_to(tmp_path / out).as_posix() for p in written}
    targets = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "units").glob("unit*/README.md"))]:
        for url in re.findall(r"\)\]\((https://(?:colab\.research\.google\.com|kaggle\.com)[^)]*)\)", page.read_text()):
            where = re.search(rf"github(?:\.com)?/{badges.REPO}/blob/([^/]+)/(units/\S+\.ipynb)", url)
            assert where, f"{page.name}: a badge that opens no notebook of the repository: {url}"
            assert where.group(1) == badges.EXECUTED_BRANCH, f"{page.name}: a badge opens {where.group(1)}: {url}"
            targets.add(where.group(2))
    assert targets and targets <= published, f"badges open notebooks nobody publishes: {targets - published}"
    assert targets == {nb.relative_to(ROOT).as_posix() for nb in (ROOT / "units").glob("unit*/*.ipynb")}
    for rel in targets:
        nb = json.loads((tmp_path / out / rel).read_text())
        assert all(c["outputs"] for c in nb["cells"] if c["cell_type"] == "code"), f"{rel} has cells without outputs"
    # a notebook that failed is not published
    (build / "run.json").write_text(json.dumps({"track": "small", "notebooks": [
        {"notebook": "units/unit1/01_ddpm_and_ddim.ipynb", "status": "failed: cell 3: ValueError"}]}))
    shutil.rmtree(tmp_path / out)
    with pytest.raises(SystemExit, match="did not run cleanly"):
        publish_notebooks.main(["--executed", str(build), "--out", str(tmp_path / out)])


def test_push_branch_replaces_the_branch_contents_and_keeps_its_history(tmp_path):
    def git(*args, cwd):
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout

    remote, clone, folder = tmp_path / "remote.git", tmp_path / "clone", tmp_path / "published"
    git("init", "-q", "--bare", str(remote), cwd=tmp_path)
    git("init", "-q", str(clone), cwd=tmp_path)
    (clone / "a.txt").write_text("a")
    git("add", "a.txt", cwd=clone)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first", cwd=clone)
    git("remote", "add", "origin", str(remote), cwd=clone)
    for files in ({"units/x.ipynb": "1", "old.md": "o"}, {"units/x.ipynb": "2"}):
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        subprocess.run(["bash", str(ROOT / "scripts" / "push_branch.sh"), str(folder), "notebooks"], cwd=clone, check=True,
                       capture_output=True)
    tree = git("ls-tree", "-r", "--name-only", "notebooks", cwd=remote).split()
    assert tree == ["units/x.ipynb"], "a file gone from the folder is gone from the branch"
    assert git("show", "notebooks:units/x.ipynb", cwd=remote) == "2"
    assert len(git("log", "--oneline", "notebooks", cwd=remote).splitlines()) == 2
