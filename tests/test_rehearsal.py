"""The full track, rehearsed: every notebook's full-track code runs here, offline on the CPU,
against stand-ins of its Hub repos (`coursekit run units --rehearse`), and its checked cells
print what they print on the small track."""
import json
from pathlib import Path

import nbformat
import pytest

from coursekit import cli

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "units").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("rehearsal")
    args = type("A", (), {"paths": [str(ROOT / "units")], "track": None, "rehearse": True, "out": str(out),
                          "timeout": 900})()
    code = cli.cmd_run(args)
    return code, json.loads((out / "run.json").read_text()), out


@pytest.mark.slow
def test_every_notebook_runs_its_full_track_code_offline_against_stand_ins(rehearsal):
    code, run, _ = rehearsal
    assert run["track"] == "full (rehearsal)"
    assert sorted(Path(r["notebook"]).name for r in run["notebooks"]) == sorted(p.name for p in NOTEBOOKS)
    failed = [f"{r['notebook']}: {r['status']}" for r in run["notebooks"] if r["status"] != "ok"]
    assert not failed and code == 0, "full-track cells failed in the rehearsal:\n" + "\n".join(failed)
    print("\nrehearsal: " + ", ".join(f"{Path(r['notebook']).name} {r['seconds']:.0f} s" for r in run["notebooks"])
          + f"; {sum(r['seconds'] for r in run['notebooks']) / 60:.1f} min in all")


def _checked(nb) -> list[str]:
    return ["".join(o.get("text", "") for o in c.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout")
            for c in nb.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_checked_cells_print_the_same_text_on_the_full_track(rehearsal, path):
    _, run, out = rehearsal
    executed = next(out.rglob(path.name))
    committed = _checked(nbformat.read(path, 4))
    assert committed, "every notebook has a checked cell"
    assert _checked(nbformat.read(executed, 4)) == committed
