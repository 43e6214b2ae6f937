"""Re-execute notebooks on the small track and keep outputs only in NBVAL_CHECK_OUTPUT cells.

    python scripts/refresh_notebook_outputs.py units/unit1/01_ddpm_and_ddim.ipynb

Run it after editing a notebook: nbval compares those cells' outputs on every test run, and
skips a checked cell that has no stored outputs or execution count.
"""
import os
import sys

import nbformat
from nbclient import NotebookClient


def refresh(path: str) -> None:
    os.environ["COURSEKIT_TRACK"] = "small"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
    nb.metadata.pop("widgets", None)
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if "NBVAL_CHECK_OUTPUT" in cell.source:
            count += 1
            cell.execution_count = count
            if any(o.output_type != "stream" for o in cell.outputs):
                raise SystemExit(f"{path}: a checked cell shows more than text (a progress bar or a picture); "
                                 "print the checked values from a cell of their own")
        else:
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)
    print(f"{path}: kept outputs of {count} checked cell(s)")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        refresh(p)
