"""The full track, rehearsed: every notebook's full-track code runs here, offline on the CPU, against
stand-ins of its Hub repos, at the sizes its metadata gives the rehearsal (a step or two, a sample or two:
the paths, not the sizes), as `coursekit run units --rehearse` runs it; and its checked cells print what
they print on the small track. One test per notebook, so that the workers share them."""
import json
from pathlib import Path

import nbformat
import pytest

from coursekit import cli

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "units").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    """The rehearsal's kernel environment: the stand-ins written once per worker into a Hugging Face cache."""
    return cli.rehearsal_env(tmp_path_factory.mktemp("rehearsal-hf-home"))


def _checked(nb) -> list[str]:
    return ["".join(o.get("text", "") for o in c.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout")
            for c in nb.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_full_track_code_runs_offline_on_stand_ins_and_checked_cells_print_the_same(standins, path, tmp_path):
    env = {**standins, **cli.rehearsal_sizes_env(path)}
    row = cli.run_notebook(path, tmp_path, timeout=900, env=env)
    print(f"\nrehearsal: {path.name} {row['seconds']:.0f} s")
    assert row["status"] == "ok", f"full-track cells failed in the rehearsal: {path.name}: {row['status']}"
    executed = nbformat.read(tmp_path / path.name, 4)
    first = next(c for c in executed.cells if c.cell_type == "code" and "tracks.Settings(" in c.source)
    assert "full (rehearsal)" in "".join(o.get("text", "") for o in first.outputs), "it ran the full track's code"
    committed = _checked(nbformat.read(path, 4))
    assert committed, "every notebook has a checked cell"
    assert _checked(executed) == committed


def test_the_rehearsal_command_runs_every_notebook_with_its_sizes(monkeypatch, tmp_path):
    """`coursekit run units --rehearse` hands each notebook's kernel the stand-ins and that notebook's sizes
    (what the tests above run, notebook by notebook)."""
    seen = []
    monkeypatch.setattr(cli, "rehearsal_env", lambda home: {"HF_HOME": str(home), "COURSEKIT_REHEARSE": "1"})
    monkeypatch.setattr(cli, "run_notebook", lambda nb, out, timeout, env, **kw: seen.append((nb, env)) or
                        {"notebook": str(nb), "html": None, "seconds": 0.0, "status": "ok"})
    args = type("A", (), {"paths": [str(ROOT / "units")], "track": None, "rehearse": True, "out": str(tmp_path),
                          "timeout": 900})()
    assert cli.cmd_run(args) == 0
    assert [nb for nb, _ in seen] == NOTEBOOKS
    for nb, env in seen:
        assert env["COURSEKIT_REHEARSE"] == "1"
        assert json.loads(env["COURSEKIT_REHEARSAL_SIZES"]) == cli.rehearsal_sizes(nb)
