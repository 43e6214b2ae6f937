"""Write the notebooks the Colab and Kaggle badges open: each course notebook as it ran on the small track,
every figure, table and player in place (explorers as their first picture, progress bars as their last line:
`coursekit.publish.for_reading`), under the same paths as in units/.

    python scripts/publish_notebooks.py --executed build --out published

The site workflow pushes `--out` to the branch the badges name (scripts/badges.py: EXECUTED_BRANCH). A
notebook with no executed copy, or one whose run failed, stops the script: nothing half-run is published.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from badges import BRANCH, REPO  # noqa: E402

from coursekit.publish import for_reading  # noqa: E402

NOTE = ("*These outputs come from one run of this notebook on the small track (a 2-core CPU). "
        "Run the cells to make your own: on a GPU the settings cell picks the full track.*")


def published(nb: dict) -> dict:
    nb = for_reading(nb)
    nb["cells"].insert(1 if nb["cells"] and nb["cells"][0]["cell_type"] == "markdown" else 0,
                       {"cell_type": "markdown", "metadata": {}, "source": NOTE, "id": "executed-note"})
    return nb


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--executed", default=str(ROOT / "build"), help="folder of executed notebooks (make test, make course)")
    p.add_argument("--out", required=True, help="folder to write the published notebooks into")
    args = p.parse_args(argv)
    executed, out = Path(args.executed), Path(args.out)
    run = executed / "run.json"
    rows = {Path(r["notebook"]).as_posix().split("units/", 1)[-1]: r["status"]
            for r in json.loads(run.read_text())["notebooks"]} if run.is_file() else {}
    written = []
    for source in sorted((ROOT / "units").glob("unit*/*.ipynb")):
        rel = source.relative_to(ROOT)
        copy = executed / rel
        if not copy.is_file():
            raise SystemExit(f"no executed copy of {rel} in {executed}: run `make test` or `make course` first")
        status = rows.get(rel.relative_to("units").as_posix(), "ok")
        if status != "ok":
            raise SystemExit(f"{rel} did not run cleanly ({status}); nothing was published")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(published(json.loads(copy.read_text())), indent=1) + "\n")
        written.append(target)
    (out / "README.md").write_text(f"# Executed notebooks of coursekit\n\nThe course's notebooks with their outputs, as "
                                   f"they ran on the small track, for the Colab and Kaggle badges. The sources are on "
                                   f"[{BRANCH}](https://github.com/{REPO}/tree/{BRANCH}/units).\n")
    print(f"published {len(written)} notebooks to {out}")
    return written


if __name__ == "__main__":
    main()
