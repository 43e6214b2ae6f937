"""The `coursekit` command.

    coursekit run [NOTEBOOK_OR_FOLDER ...] [--track small|full] [--out build]

executes notebooks headless, writes the executed copies and their HTML next to an index page
(build/index.html) with each notebook's wall time and status. A notebook that fails is still
written, up to the failing cell, and the command exits non-zero.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from pathlib import Path


def find_notebooks(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.suffix == ".ipynb" and p.exists():
            found.append(p)
        else:
            raise SystemExit(f"coursekit run: {p} is neither a notebook nor a folder")
    return found


def run_notebook(path: Path, out: Path, timeout: int = 1800) -> dict:
    """Execute one notebook in its own folder; write .ipynb and .html under `out`."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    began = time.perf_counter()
    status = "ok"
    try:
        client.execute()
    except Exception as e:  # the partial notebook is still written, with the error in its cell
        last = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
        status = f"failed: {type(e).__name__}: {last[-1] if last else ''}"
    seconds = time.perf_counter() - began
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / path.name)
    body, _ = HTMLExporter().from_notebook_node(nb)
    (out / path.with_suffix(".html").name).write_text(body, encoding="utf-8")
    return {"notebook": str(path), "html": str((out / path.with_suffix(".html").name)),
            "seconds": round(seconds, 1), "status": status}


def write_index(results: list[dict], out: Path, track: str) -> Path:
    rows = "\n".join(
        f"<tr><td><a href=\"{html.escape(os.path.relpath(r['html'], out))}\">{html.escape(r['notebook'])}</a></td>"
        f"<td>{r['seconds']:.1f}</td><td>{html.escape(r['status'])}</td></tr>"
        for r in results
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>coursekit: executed notebooks</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 12px;text-align:left}}</style></head>
<body><h1>Executed notebooks ({html.escape(track)} track)</h1>
<table><tr><th>notebook</th><th>seconds</th><th>status</th></tr>
{rows}
</table></body></html>
"""
    (out / "index.html").write_text(page, encoding="utf-8")
    (out / "run.json").write_text(json.dumps({"track": track, "notebooks": results}, indent=2) + "\n")
    return out / "index.html"


def cmd_run(args) -> int:
    if args.track:
        os.environ["COURSEKIT_TRACK"] = args.track
    track = args.track or "auto"
    out = Path(args.out)
    results = []
    for nb in find_notebooks(args.paths or ["units"]):
        target = out / nb.parent.relative_to(nb.parent.anchor) if nb.is_absolute() else out / nb.parent
        print(f"running {nb} ...", flush=True)
        r = run_notebook(nb, target, timeout=args.timeout)
        print(f"  {r['status']} in {r['seconds']:.1f} s -> {r['html']}", flush=True)
        results.append(r)
    index = write_index(results, out, track)
    print(f"index: {index}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="coursekit", description="coursekit: the course's command")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks headless and write them with an HTML index")
    run.add_argument("paths", nargs="*", help="notebooks or folders (default: units)")
    run.add_argument("--track", choices=["small", "full"], help="force a track (default: picked automatically)")
    run.add_argument("--out", default="build", help="output folder (default: build)")
    run.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    sys.exit(cmd_run(args))


if __name__ == "__main__":
    main()
