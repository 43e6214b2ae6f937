import json

import nbformat
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
    assert status["bad.ipynb"].startswith("failed: CellExecutionError") and "broken on purpose" in status["bad.ipynb"]
    index = (out / "index.html").read_text()
    assert "good.ipynb" in index and "bad.ipynb" in index
    executed = list(out.rglob("good.ipynb"))[0]
    assert "42" in nbformat.read(executed, 4).cells[0].outputs[0]["text"]
    partial = nbformat.read(list(out.rglob("bad.ipynb"))[0], 4)
    assert partial.cells[1].outputs[0]["ename"] == "ValueError"
    assert list(out.rglob("good.html"))


def test_run_refuses_a_path_that_is_not_a_notebook(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="neither a notebook nor a folder"):
        cli.find_notebooks([str(tmp_path / "missing.txt")])
