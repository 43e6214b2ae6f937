"""Test-run rules: offline, no sockets outside loopback, one torch thread per worker, and each notebook
executed once, within its budget (tests/executed.py)."""
import os
import sys
import tempfile
from pathlib import Path

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


def run_track() -> str:
    from tests.executed import run_track

    return run_track()


def notebook_budget_minutes(path, track: str | None = None) -> float | None:
    from tests.executed import notebook_budget_minutes

    return notebook_budget_minutes(path, track)

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
