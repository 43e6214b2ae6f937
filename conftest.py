"""Test-run rules: offline, no sockets outside loopback, and each notebook within its budget."""
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).parent
GUARD = ROOT / "tests" / "netguard"
BUDGET = re.compile(r"time budget[^:\n]*:\s*(\d+(?:\.\d+)?)\s*min", re.IGNORECASE)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("COURSEKIT_NETGUARD_LOG", tempfile.mkstemp(prefix="coursekit-netguard-", suffix=".log")[1])
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(GUARD))
import sitecustomize  # noqa: E402,F401  (installs the guard in this process too)


def notebook_budget_minutes(path) -> float | None:
    """The small-track time budget written in a notebook's first markdown cell."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = BUDGET.search(cell.source)
            return float(m.group(1)) if m else None
    return None


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
            report.outcome, report.longrepr = "failed", f"{path} states no 'Time budget: N minutes' in its first markdown cell"
        elif took > budget * 60:
            report.outcome = "failed"
            report.longrepr = f"{Path(path).name} took {took:.0f} s, over its budget of {budget:g} minutes"
        else:
            report.sections.append(("budget", f"{Path(path).name}: {took:.0f} s of {budget:g} min"))
        print(f"\n[budget] {Path(path).name}: {took:.0f} s of {budget} min", file=sys.stderr)


def pytest_sessionfinish(session, exitstatus):
    log = Path(os.environ["COURSEKIT_NETGUARD_LOG"])
    attempts = log.read_text() if log.exists() else ""
    if attempts.strip():
        print("\nNetwork access outside loopback was attempted during the test run:\n" + attempts, file=sys.stderr)
        session.exitstatus = 1
