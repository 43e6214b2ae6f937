"""The repository's promises about itself: environments agree, commands are wired as documented."""
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_pyproject_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    assert listed == wanted


def test_tested_torch_and_torchaudio_are_declared_together():
    constraints = (ROOT / "constraints.txt").read_text()
    env = (ROOT / "environment.yml").read_text()
    for pkg in ("torch", "torchaudio"):
        pin = re.search(rf"^{pkg}==(\S+)$", constraints, re.M).group(1)
        assert f"{pkg}=={pin}" in env
        assert f"{pkg} {pin}" in (ROOT / "README.md").read_text()


def test_ci_runs_make_test_as_the_readme_gives_it():
    readme = (ROOT / "README.md").read_text()
    assert "make course" in readme and "make test" in readme
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_makefile_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("course:", "test:", "lab:", "bench:"):
        assert re.search(rf"^{target}", makefile, re.M)
    assert "coursekit run units" in makefile


def test_zoo_checkpoints_and_hub_configs_are_package_data():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["coursekit"]
    shipped = [p.relative_to(ROOT / "coursekit") for folder in ("checkpoints", "hub_configs")
               for p in (ROOT / "coursekit" / folder).rglob("*")
               if p.is_file() and not any(part.endswith(".work") for part in p.parts)]  # .work: a run in progress
    assert any(p.parts[0] == "hub_configs" for p in shipped) and any(p.parts[0] == "checkpoints" for p in shipped)
    for path in shipped:
        assert any(path.match(p) for p in patterns), f"{path} would not be installed"
