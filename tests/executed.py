"""One execution per notebook and track: nbval runs every cell once, and this plugin keeps what that run
produced as the executed notebook in the build folder (outputs, widget state, each cell's timing), with its
page for reading, a row in `run.json` and the index page, the same files `coursekit run` writes. The
site, the published notebooks and the instructor guide's times read them; nothing executes a notebook again.

At each notebook's last cell it also checks the notebook as a whole: its time budget for the track
(`Time budget (small track): N minutes` at its top, cell times added up) and, on the small track, that no
cell ran longer than LONG_CELL seconds without showing a progress bar.

Options: --executed-dir DIR (default build/; `none` writes nothing), --mathjax DIR (a MathJax 3 es5 folder,
default site/node_modules/mathjax/es5 when present). COURSEKIT_LONG_CELL_SECONDS changes the limit.
"""
from __future__ import annotations

import base64
import copy
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LONG_CELL = 20.0


def run_track() -> str:
    """The track the notebooks run on in this test run: COURSEKIT_TRACK, or small (tests are offline)."""
    return os.environ.get("COURSEKIT_TRACK", "").strip().lower() or "small"


def notebook_budget_minutes(path, track: str | None = None) -> float | None:
    """The time budget a notebook's first markdown cell states for `track` (default: this run's)."""
    from coursekit.cli import notebook_budgets

    return notebook_budgets(path).get(track or run_track())


def long_cell_seconds() -> float:
    return float(os.environ.get("COURSEKIT_LONG_CELL_SECONDS", LONG_CELL))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


class Execution:
    """What one notebook's cells produced under nbval: the executed copy, its widget state and timings."""

    def __init__(self, path: Path, nb):
        self.path = path
        self.nb = copy.deepcopy(nb)
        for cell in self.nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
                cell.metadata.pop("execution", None)
        self.count = 0
        self.seconds = 0.0
        self.failures: list[str] = []
        self.widgets: dict[str, dict] = {}
        self.buffers: dict[str, dict] = {}

    def comm(self, msg: dict) -> None:
        """A widget's state as the kernel opened or updated it (as nbclient keeps it)."""
        data = msg["content"].get("data", {})
        if "state" not in data:
            return
        comm_id = msg["content"]["comm_id"]
        self.widgets.setdefault(comm_id, {}).update(data["state"])
        for path, buffer in zip(data.get("buffer_paths") or [], msg.get("buffers") or []):
            self.buffers.setdefault(comm_id, {})[tuple(path)] = {
                "data": base64.b64encode(bytes(buffer)).decode(), "encoding": "base64", "path": path}

    def cell(self, index: int, outputs: list, began: float, ended: float) -> None:
        cell = self.nb.cells[index]
        self.count += 1
        cell.execution_count = self.count
        cell.outputs = copy.deepcopy(outputs)
        for out in cell.outputs:
            if out.get("output_type") == "execute_result":
                out["execution_count"] = self.count
        cell.metadata["execution"] = {"iopub.execute_input": _iso(began), "shell.execute_reply": _iso(ended)}

    def notebook(self):
        if self.widgets:
            state = {k: {"model_name": s.get("_model_name"), "model_module": s.get("_model_module"),
                         "model_module_version": s.get("_model_module_version"), "state": s}
                     for k, s in self.widgets.items()}
            for k, model in state.items():
                if self.buffers.get(k):
                    model["buffers"] = list(self.buffers[k].values())
            self.nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
                "state": state, "version_major": 2, "version_minor": 0}}
        return self.nb


def cell_seconds(cell) -> float | None:
    timing = cell.get("metadata", {}).get("execution", {})
    try:
        began, ended = (datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                        for k in ("iopub.execute_input", "shell.execute_reply"))
    except (KeyError, ValueError):
        return None
    return (ended - began).total_seconds()


def silent_long_cells(nb, limit: float) -> list[str]:
    """The code cells of an executed notebook that ran longer than `limit` seconds without a progress bar."""
    from coursekit.publish import progress_bar

    found = []
    for i, cell in enumerate(nb.cells):
        took = cell_seconds(cell) if cell.cell_type == "code" else None
        if took is not None and took > limit and not any(progress_bar(o) for o in cell.get("outputs", [])):
            first = (cell.source.strip().splitlines() or [""])[0][:60]
            found.append(f"cell {i} ({took:.0f} s): {first}")
    return found


def _is_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell"


def pytest_addoption(parser):
    group = parser.getgroup("executed notebooks")
    group.addoption("--executed-dir", default=str(ROOT / "build"),
                    help="where nbval's executed notebooks, their pages and run.json go ('none': nowhere)")
    group.addoption("--mathjax", default=str(ROOT / "site" / "node_modules" / "mathjax" / "es5"),
                    help="MathJax 3 es5 folder copied next to the pages (the web's when it is missing)")


_runs: dict[str, Execution] = {}
_last: dict[str, object] = {}


def pytest_configure(config):
    config._executed_started = time.time()


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if _is_cell(item):
            _last[str(item.parent.path)] = item     # the item itself: xdist may rename node ids


def _execution(item) -> Execution:
    key = str(item.parent.path)
    if key not in _runs:
        run = _runs[key] = Execution(Path(key), item.parent.nb)
        receive = item.parent.get_kernel_message

        def recording(*args, **kwargs):
            msg = receive(*args, **kwargs)
            if msg.get("msg_type") in ("comm_open", "comm_msg"):
                run.comm(msg)
            return msg

        item.parent.get_kernel_message = recording
    return _runs[key]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not _is_cell(item):
        yield
        return
    run = _execution(item)
    began = time.time()
    try:
        yield
    finally:
        if not getattr(item, "options", {}).get("skip"):     # a cell nbval skips (NBVAL_SKIP) did not run
            index = next(i for i, c in enumerate(item.parent.nb.cells) if c is item.cell)
            run.cell(index, getattr(item, "test_outputs", None) or [], began, time.time())


def _fail(report, message: str) -> None:
    report.outcome = "failed"
    report.longrepr = message


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if not _is_cell(item) or call.when != "call":
        return
    report = outcome.get_result()
    run = _execution(item)
    run.seconds += call.duration
    if report.failed:
        run.failures.append(f"cell {item.cell_num}: {str(report.longrepr).strip().splitlines()[0][:200]}")
    if _last.get(str(item.parent.path)) is not item:
        return
    name, track = Path(run.path).name, run_track()
    problems = []
    budget = notebook_budget_minutes(run.path)
    if budget is None:
        problems.append(f"{run.path} states no 'Time budget ({track} track): N minutes' in its first markdown cell")
    elif run.seconds > budget * 60:
        problems.append(f"{name} took {run.seconds:.0f} s, over its {track}-track budget of {budget:g} minutes")
    else:
        report.sections.append(("budget", f"{name}: {run.seconds:.0f} s of {budget:g} min ({track} track)"))
    nb = run.notebook()
    if track == "small":
        silent = silent_long_cells(nb, long_cell_seconds())
        if silent:
            problems.append(f"{name}: cells ran over {long_cell_seconds():g} s without a progress bar (wrap the "
                            "loop in tqdm, one bar per sweep): " + "; ".join(silent))
    if problems:
        _fail(report, "\n".join(problems))
    print(f"\n[budget] {name}: {run.seconds:.0f} s of {budget} min ({track} track)", file=sys.stderr)
    _write(item.config, run, nb, "ok" if not (run.failures or problems) else
           "failed: " + "; ".join(run.failures + problems)[:400])


def _write(config, run: Execution, nb, status: str) -> None:
    folder = config.getoption("executed_dir")
    if folder == "none":
        return
    from coursekit import cli, publish

    out = Path(folder)
    try:
        rel = run.path.resolve().relative_to(ROOT)
    except ValueError:
        rel = Path(run.path.name)
    mathjax = None
    source = Path(config.getoption("mathjax"))
    if (source / "tex-chtml-full.js").is_file():
        mathjax = publish.copy_mathjax(source, out)
    page = cli.write_executed(nb, out / rel.parent, rel.name, mathjax)
    row = {"notebook": rel.as_posix(), "html": str(page), "seconds": round(run.seconds, 1), "status": status}
    rows = out / ".runs"
    rows.mkdir(parents=True, exist_ok=True)
    (rows / (rel.as_posix().replace("/", "__") + ".json")).write_text(json.dumps(row))


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput") or config.getoption("executed_dir") == "none":
        return
    out = Path(config.getoption("executed_dir"))
    rows = [json.loads(p.read_text()) for p in sorted((out / ".runs").glob("*.json"))
            if p.stat().st_mtime >= config._executed_started] if (out / ".runs").is_dir() else []
    if not rows:
        return
    from coursekit import cli

    before = out / "run.json"
    kept = json.loads(before.read_text()) if before.is_file() else {}
    merged = {r["notebook"]: r for r in kept.get("notebooks", []) if kept.get("track") == run_track()}
    merged.update({r["notebook"]: r for r in rows})
    workers = int(config.getoption("numprocesses", None) or 0) if config.pluginmanager.hasplugin("xdist") else 0
    cli.write_index(sorted(merged.values(), key=lambda r: r["notebook"]), out, run_track(),
                    threads=1 if workers > 1 else None, side_by_side=max(workers, 1))
