"""Build the course website: Jupyter Book 1 (Sphinx, MyST-NB) from the notebooks executed on the small
track, offline, with every output, figure, table and audio player in place.

    python scripts/build_site.py --jupyter-book .venv-site/bin/jupyter-book [--executed build] [--out build/site]

Executed notebooks are reused from `--executed` (where `make test`, `make course` and `coursekit run units
--out build` put them) when they are newer than their source; the others are executed first with
`coursekit run` (never with --no-execute, which the site workflow uses on the CPU workflow's build/).
Each page gets Colab and Kaggle links; an explorer's panel becomes its first picture (taken from the
widget state the run saved) and a note to open the notebook to use it. MathJax comes from the npm
package installed under site/node_modules, so the pages load nothing from the network.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from badges import BRANCH, REPO, badges  # noqa: E402

from coursekit.publish import for_reading  # noqa: E402

BADGE = re.compile(r"\[!\[([^\]]*)\]\([^)]*\)\]\(([^)]*)\)")


def links(path: str) -> str:
    """Colab and Kaggle links for a notebook as plain text links (a badge image would need the network)."""
    return f"{plain_badges(badges(path))} · [View on GitHub](https://github.com/{REPO}/blob/{BRANCH}/{path})"


def plain_badges(markdown: str) -> str:
    return BADGE.sub(lambda m: f"[{m.group(1)}]({m.group(2)})", markdown)


def notebooks() -> list[Path]:
    return sorted((ROOT / "units").glob("unit*/*.ipynb"))


def executed(executed_dir: Path, coursekit: Path, execute: bool = True) -> dict[Path, Path]:
    """{source notebook: its executed copy}, running the stale ones on the small track first (with
    `execute`; without it every copy found is used, whatever its age, and a missing one stops the build)."""
    found = {nb: executed_dir / nb.relative_to(ROOT) for nb in notebooks()}
    stale = [nb for nb, run in found.items() if not run.exists() or run.stat().st_mtime < nb.stat().st_mtime]
    if stale and execute:
        print(f"executing {len(stale)} notebook(s) on the small track ...", flush=True)
        subprocess.run([str(coursekit), "run", *[str(nb.relative_to(ROOT)) for nb in stale], "--track", "small",
                        "--out", str(executed_dir)], cwd=ROOT, check=True)
    missing = [str(run) for run in found.values() if not run.exists()]
    if missing:
        raise SystemExit(f"no executed notebook at {', '.join(missing)}: run `make test` or `make course` first")
    return found


def prepare(nb: dict, source: str) -> dict:
    """The executed notebook as the site shows it: links first, then the notebook for reading
    (`coursekit.publish.for_reading`: explorers as their first picture and a note, no widget state)."""
    nb = for_reading(nb)
    nb["cells"].insert(0, {"cell_type": "markdown", "metadata": {}, "source": links(source), "id": "site-links"})
    return nb


def config(title: str) -> str:
    return f"""title: {json.dumps(title)}
author: coursekit
only_build_toc_files: true
execute:
  execute_notebooks: "off"
html:
  use_repository_button: true
  use_issues_button: false
repository:
  url: https://github.com/{REPO}
  branch: {BRANCH}
launch_buttons:
  notebook_interface: classic
  colab_url: https://colab.research.google.com
  thebe: false
sphinx:
  config:
    mathjax_path: mathjax/tex-chtml.js
    html_static_path: ["vendor"]
    nb_ipywidgets_js: {{}}
    html_context:
      default_mode: light
    suppress_warnings: ["myst.header", "myst.xref_missing", "misc.highlighting_failure"]
"""


def source_tree(src: Path, runs: dict[Path, Path]) -> None:
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    readme = (ROOT / "README.md").read_text()
    intro = readme.split("\n## Units", 1)[0]
    (src / "intro.md").write_text(plain_badges(intro) + "\n\nStart with [Unit 1](unit1/index.md); the "
                                  "[instructor guide](instructors.md) has timings and workshop checks.\n")
    (src / "instructors.md").write_text(plain_badges((ROOT / "units" / "README.md").read_text()))
    chapters = []
    for unit in sorted((ROOT / "units").glob("unit*/README.md")):
        name = unit.parent.name
        (src / name).mkdir()
        (src / name / "index.md").write_text(plain_badges(unit.read_text()))
        sections = []
        for nb, run in runs.items():
            if nb.parent.name == name:
                page = prepare(json.loads(run.read_text()), nb.relative_to(ROOT).as_posix())
                (src / name / nb.name).write_text(json.dumps(page, indent=1))
                sections.append(f"  - file: {name}/{nb.stem}")
        chapters.append(f"- file: {name}/index\n  sections:\n" + "\n".join(sections))
    (src / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n" + "\n".join(chapters)
                                  + "\n- file: instructors\n")
    (src / "_config.yml").write_text(config("coursekit: a hands-on course on diffusion models"))
    mathjax = ROOT / "site" / "node_modules" / "mathjax" / "es5"
    if not mathjax.is_dir():
        raise SystemExit("MathJax is missing: run `npm ci --prefix site` first (make site does)")
    shutil.copytree(mathjax, src / "vendor" / "mathjax")


def once_each_inline_script(html: str) -> str:
    """Drop repeats of an identical inline <script> line: sphinx-thebe adds its configuration script twice
    under Jupyter Book 1, and the second `const` declaration is a console error on every page."""
    seen, lines = set(), []
    for line in html.split("\n"):
        key = line.strip()
        if key.startswith("<script>") and key.endswith("</script>"):
            if key in seen:
                continue
            seen.add(key)
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jupyter-book", required=True, help="the jupyter-book command (make site installs it)")
    p.add_argument("--executed", default=str(ROOT / "build"), help="folder of executed notebooks (coursekit run --out)")
    p.add_argument("--out", default=str(ROOT / "build" / "site"))
    p.add_argument("--coursekit", default=str(Path(sys.executable).with_name("coursekit")))
    p.add_argument("--no-execute", action="store_true", help="use the executed notebooks found, execute none")
    args = p.parse_args(argv)
    out = Path(args.out)
    src = out.with_name(out.name + "-src")
    source_tree(src, executed(Path(args.executed), Path(args.coursekit), execute=not args.no_execute))
    if out.exists():
        shutil.rmtree(out)
    subprocess.run([args.jupyter_book, "build", str(src), "--path-output", str(out), "--quiet"],
                   check=True)
    html = out / "_build" / "html"
    for page in html.rglob("*.html"):
        page.write_text(once_each_inline_script(page.read_text()))
    print(f"site: {html / 'index.html'}")
    return html


if __name__ == "__main__":
    main()
