"""Test-run rules: offline, no sockets outside loopback, one torch thread per worker, and each notebook
executed once, within its budget (tests/executed.py)."""
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent
GUARD = ROOT / "tests" / "netguard"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("COURSEKIT_NETGUARD_LOG", tempfile.mkstemp(prefix="coursekit-netguard-", suffix=".log")[1])
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(GUARD))
import sitecustomize  # noqa: E402,F401  (installs the guard in this process too)

pytest_plugins = ["tests.executed"]   # nbval's one execution kept in build/, budgets and progress checked


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the two cores: one torch thread each, in the tests and in the notebooks' kernels.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus):
    log = Path(os.environ["COURSEKIT_NETGUARD_LOG"])
    attempts = log.read_text() if log.exists() else ""
    if attempts.strip():
        print("\nNetwork access outside loopback was attempted during the test run:\n" + attempts, file=sys.stderr)
        session.exitstatus = 1


def _expected_minutes() -> dict[str, float]:
    """Each notebook's small-track minutes in the instructor guide's table (committed, so every worker
    reads the same order)."""
    import re

    guide = (ROOT / "units" / "README.md").read_text()
    return {name: float(m) for name, m in re.findall(r"^\| `(unit[^`]+\.ipynb)` \| ([\d.]+) min", guide, re.M)}


def pytest_collection_modifyitems(session, config, items):
    """The longest first, so that two workers finish together: the notebooks from the slowest, the
    rehearsals, then the unit tests in their order."""
    minutes = _expected_minutes()

    def key(item):
        path = Path(str(item.path))
        if path.suffix == ".ipynb":
            return (0, -minutes.get(f"{path.parent.name}/{path.name}", 5.0))
        if path.name == "test_rehearsal.py":
            return (1, 0.0)
        return (2, 0.0)

    items.sort(key=key)


@pytest.hookimpl(optionalhook=True)      # a hook of pytest-xdist: none without it
def pytest_xdist_make_scheduler(config, log):
    """Two workers (`make test` runs `pytest -n 2`) share the tests file by file: a notebook's cells run in
    order in one kernel and a module's fixtures once, except the rehearsal, whose notebooks are shared one
    by one. (xdist's `--dist loadgroup` would say the same with marks, but its grouping does not work
    with pytest 9.2, which ignores the node ids it rewrites.)"""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False    # keep the longest-first order above, not the largest files first

    class FilesAndRehearsals(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:      # the scope hook LoadFileScheduling overrides too
            path = nodeid.split("::", 1)[0]
            return nodeid if path.endswith("test_rehearsal.py") and "[" in nodeid else path

    return FilesAndRehearsals(config, log)
