"""Test-run rules: offline, no sockets outside loopback, and each notebook within its budget."""
import os
import sys
import tempfile
from collections import defaultdict
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


def run_track() -> str:
    """The track the notebooks run on in this test run: COURSEKIT_TRACK, or small (tests are offline)."""
    return os.environ.get("COURSEKIT_TRACK", "").strip().lower() or "small"


def notebook_budget_minutes(path, track: str | None = None) -> float | None:
    """The time budget a notebook's first markdown cell states for `track` (default: this run's)."""
    from coursekit.cli import notebook_budgets

    return notebook_budgets(path).get(track or run_track())


_seconds = defaultdict(float)
_last = {}


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            _last[str(item.parent.path)] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if type(item).__name__ != "IPyNbCell":
        return
    path = str(item.parent.path)
    _seconds[path] += call.duration
    report = outcome.get_result()
    if call.when == "call" and _last.get(path) == item.nodeid:
        budget = notebook_budget_minutes(path)
        took = _seconds[path]
        if budget is None:
            report.outcome, report.longrepr = "failed", (f"{path} states no 'Time budget ({run_track()} track): N minutes' "
                                                         "in its first markdown cell")
        elif took > budget * 60:
            report.outcome = "failed"
            report.longrepr = f"{Path(path).name} took {took:.0f} s, over its {run_track()}-track budget of {budget:g} minutes"
        else:
            report.sections.append(("budget", f"{Path(path).name}: {took:.0f} s of {budget:g} min ({run_track()} track)"))
        print(f"\n[budget] {Path(path).name}: {took:.0f} s of {budget} min ({run_track()} track)", file=sys.stderr)


def pytest_sessionfinish(session, exitstatus):
    log = Path(os.environ["COURSEKIT_NETGUARD_LOG"])
    attempts = log.read_text() if log.exists() else ""
    if attempts.strip():
        print("\nNetwork access outside loopback was attempted during the test run:\n" + attempts, file=sys.stderr)
        session.exitstatus = 1
