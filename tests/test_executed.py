"""The one execution of each notebook catches what the old pipeline caught: planted faults (a checked cell's
output changed, a cell that raises, a notebook over its budget, a long cell without a progress bar, a socket
opened outside loopback) each fail the run, and the executed copy it keeps is complete (outputs, widget
state, timings, a page for reading, run.json)."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tests.executed import cell_seconds, silent_long_cells

ROOT = Path(__file__).parent.parent


def notebook(path: Path, cells: list, minutes: float = 1) -> None:
    top = new_markdown_cell(f"# planted\n\nTime budget (small track): {minutes} minutes. "
                            "Time budget (full track, T4): 1 minutes.")
    nbformat.write(new_notebook(cells=[top, *cells], metadata={"kernelspec": {"name": "python3",
                                                                              "display_name": "Python 3"}}), path)


def checked(source: str, stored: str):
    cell = new_code_cell(f"# NBVAL_CHECK_OUTPUT\n{source}", execution_count=1)
    cell.outputs = [new_output("stream", name="stdout", text=stored)]
    return cell


BAR = "from tqdm.auto import tqdm\nimport time\nfor _ in tqdm(range(15), desc='working'):\n    time.sleep(0.1)"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    notebook(tmp / "good.ipynb", [checked("print('hello')", "hello\n"), new_code_cell(BAR),
                                  new_code_cell("import ipywidgets\nipywidgets.IntSlider(value=3)"),
                                  new_code_cell("display({'text/markdown': 'the maths: $\\\\bar\\\\alpha_t$'}, raw=True)"),
                                  new_code_cell("# NBVAL_SKIP\nprint('skipped')")])
    notebook(tmp / "changed.ipynb", [checked("print('world')", "hello\n")])
    notebook(tmp / "raises.ipynb", [new_code_cell("raise ValueError('planted fault')"), new_code_cell("print('after')")])
    notebook(tmp / "slow.ipynb", [new_code_cell(BAR)], minutes=0.01)
    notebook(tmp / "silent.ipynb", [new_code_cell("__import__('time').sleep(1.6)")])
    notebook(tmp / "network.ipynb", [new_code_cell(
        "import socket\ns = socket.socket()\ns.settimeout(0.2)\ntry:\n    s.connect(('192.0.2.1', 80))\n"
        "except OSError:\n    print('caught')")])
    (tmp / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "COURSEKIT_NETGUARD"))}
    env.update(PYTHONPATH=str(ROOT), COURSEKIT_LONG_CELL_SECONDS="1", COURSEKIT_TRACK="small",
               COURSEKIT_NETGUARD_LOG=str(tmp / "net.log"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-c", str(tmp / "pytest.ini"),
                          "--rootdir", str(tmp), "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
                          "--executed-dir", str(tmp / "build"), "--junitxml", str(tmp / "report.xml"),
                          *sorted(str(p) for p in tmp.glob("*.ipynb"))],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    failed = {}
    for case in ET.parse(tmp / "report.xml").iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            failed.setdefault(Path(case.get("file") or case.get("classname")).stem.split(".")[-1], []).append(
                (problem.get("message") or "") + (problem.text or ""))
    return run, failed, tmp / "build"


@pytest.mark.slow
def test_each_planted_fault_fails_the_run(planted):
    run, failed, _ = planted
    assert run.returncode != 0
    assert "good" not in failed, failed.get("good")
    assert any("Cell outputs differ" in m for m in failed["changed"])
    assert any("planted fault" in m for m in failed["raises"])
    assert any("over its small-track budget" in m for m in failed["slow"])
    assert any("without a progress bar" in m and "sleep(1.6)" in m for m in failed["silent"])
    assert "Network access outside loopback was attempted" in run.stderr and "192.0.2.1" in run.stderr


@pytest.mark.slow
def test_the_executed_copy_keeps_outputs_widget_state_timings_page_and_run_row(planted):
    _, _, build = planted
    nb = nbformat.read(build / "good.ipynb", 4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3, 4, None], "a skipped cell did not run"
    assert not code[4].outputs
    assert code[0].outputs[0]["text"] == "hello\n"
    assert all(cell_seconds(c) is not None for c in code[:4]) and cell_seconds(code[1]) >= 1.4
    assert not silent_long_cells(nb, 1.0), "the tqdm bar counts as a progress bar"
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert any(m["model_name"] == "IntSliderModel" and m["state"]["value"] == 3 for m in state.values())
    assert any(m["model_name"] == "FloatProgressModel" for m in state.values()), "tqdm's widget bar"
    page = (build / "good.html").read_text()
    assert "require.min.js" not in page and "widget-view" not in page
    assert "mathjax" in page.lower() and "inlineMath" in page
    rows = {Path(r["notebook"]).name: r for r in json.loads((build / "run.json").read_text())["notebooks"]}
    assert rows["good.ipynb"]["status"] == "ok"
    assert rows["raises.ipynb"]["status"].startswith("failed: cell 0")
    assert (build / "index.html").is_file()
    raised = nbformat.read(build / "raises.ipynb", 4)
    assert [o.output_type for o in raised.cells[1].outputs] == ["error"]
    assert raised.cells[2].outputs[0]["text"] == "after\n", "cells after a failure still run, once"
