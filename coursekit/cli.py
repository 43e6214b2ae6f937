"""The `coursekit` command: every command of the course, in one style.

    coursekit run [NOTEBOOK_OR_FOLDER ...] [--track small|full] [--rehearse] [--out build]
    coursekit doctor [NOTEBOOK_OR_FOLDER ...]
    coursekit prefetch [--unit N]
    coursekit pin                                   (coursekit.hub)
    coursekit train NAME | --list                   (coursekit.zoo; also: coursekit evaluate NAME --folder DIR)
    coursekit distill NAME | --list                 (coursekit.distill)
    coursekit finetune --model M --dataset D --out RUN ...   (coursekit.finetune)

`run` executes notebooks headless, writes the executed copies and their HTML next to an index
page (build/index.html) with each notebook's wall time and status. A notebook that fails is
still written, up to the failing cell (named in its status); one that cannot be read is listed as
failed with the reason; the others still run, and the command exits non-zero.
`--track full --rehearse` runs the full track's code on this machine's CPU with no network:
stand-ins of every Hub repo (`coursekit.standins`) in a temporary Hugging Face cache, and the
full-track settings scaled down by `coursekit.tracks.rehearsal_value`.

`doctor` reports what this machine can run: device, track, package versions, Hub reachability,
free disk, which full-track repos are cached, and each notebook's track here, picked as its
settings cell picks it (`coursekit.tracks.pick_track`, so COURSEKIT_TRACK counts).

`prefetch` downloads every pinned full-track model and dataset (or one unit's) into the Hugging
Face cache ahead of a workshop, prints sizes, resumes interrupted downloads and verifies them.
"""
from __future__ import annotations

import contextlib
import html
import json
import os
import platform
import re
import sys
import time
from pathlib import Path


class CommandError(ValueError):
    """What a command was asked cannot be done; the message says why and what to do."""


class NoSettings(CommandError):
    """A notebook without a `tracks.Settings(...)` cell: it has no track values to read."""


def find_notebooks(paths: list[str]) -> list[Path]:
    """The notebooks at `paths` (notebooks, or folders searched recursively), in order."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.suffix == ".ipynb" and p.is_file():
            found.append(p)
        else:
            raise CommandError(f"{p} is neither a notebook nor a folder{'' if p.exists() else ' (nothing is there)'}; "
                               "pass notebooks (.ipynb) or folders that hold them")
    return found


def one_line(error: BaseException, line: int = -1, limit: int | None = None) -> str:
    """An exception as one line: its type and one line of its message (the last: where a cell's
    traceback ends), colour codes removed, cut at `limit` characters."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    text = lines[line].strip() if lines else ""
    return f"{type(error).__name__}: {text[:limit]}" if text else type(error).__name__


def write_executed(nb, out: Path, name: str, mathjax: Path | None = None) -> Path:
    """Write an executed notebook `name` (.ipynb, as it ran) and its page for reading (.html, see
    `coursekit.publish`) into `out`; MathJax from `mathjax` (a local copy under the build folder) or the
    web. Returns the page."""
    import nbformat

    from . import publish

    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / name)
    page = out / Path(name).with_suffix(".html").name
    url = os.path.relpath(mathjax, out).replace(os.sep, "/") if mathjax else publish.CDN_MATHJAX
    page.write_text(publish.to_html(nb, url), encoding="utf-8")
    return page


def run_notebook(path: Path, out: Path, timeout: int = 1800, env: dict | None = None,
                 mathjax: Path | None = None, progress: bool = False) -> dict:
    """Execute one notebook in its own folder, its kernel's environment this process's with `env`
    on top; write .ipynb and .html under `out` (`write_executed`), with a bar over its cells
    when `progress`."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError
    from tqdm.auto import tqdm

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # any unreadable file becomes a failed row; the other notebooks still run
        return {"notebook": str(path), "html": None, "seconds": 0.0,
                "status": f"failed: cannot read the notebook ({one_line(e, 0, 200)}); repair the file or restore it"}
    started: dict = {}
    bar = tqdm(total=sum(c.cell_type == "code" for c in nb.cells), desc=path.name, unit="cell", disable=not progress,
               leave=True, dynamic_ncols=True, mininterval=1.0)
    # the kernel's own log at ERROR: its notice about TCP without encryption (on loopback) is not for the log
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(path.parent.resolve())}},
                            on_cell_start=lambda cell, cell_index: started.update(cell=cell, index=cell_index),
                            on_cell_executed=lambda cell, **_: bar.update(cell.cell_type == "code"))
    began = time.perf_counter()
    status = "ok"
    try:
        client.execute(env={**os.environ, **(env or {})})
    except CellTimeoutError:
        first = (started["cell"].source.strip().splitlines() or [""])[0][:80]
        status = (f"failed: cell {started['index']}: timed out after {timeout} s running `{first}`; "
                  f"allow each cell longer with --timeout SECONDS (now {timeout})")
    except Exception as e:  # the partial notebook is still written, with the error in its cell
        failed = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
        where = f"cell {failed[0]}: " if failed else ""
        status = f"failed: {where}{one_line(e)}"
    finally:
        bar.close()
    seconds = time.perf_counter() - began
    page = write_executed(nb, out, path.name, mathjax)
    return {"notebook": str(path), "html": str(page), "seconds": round(seconds, 1), "status": status}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def write_index(results: list[dict], out: Path, track: str, threads: int | None = None,
                side_by_side: int = 1) -> Path:
    """The index page and run.json of executed notebooks; `threads` the torch threads each kernel had
    (this process's by default) and `side_by_side` how many notebooks ran at once."""
    def name(r: dict) -> str:
        if not r["html"]:
            return html.escape(r["notebook"])
        return f"<a href=\"{html.escape(os.path.relpath(r['html'], out))}\">{html.escape(r['notebook'])}</a>"

    rows = "\n".join(f"<tr><td>{name(r)}</td><td>{r['seconds']:.1f}</td><td>{html.escape(r['status'])}</td></tr>"
                      for r in results)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>coursekit: executed notebooks</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 12px;text-align:left}}</style></head>
<body><h1>Executed notebooks ({html.escape(track)} track)</h1>
<table><tr><th>notebook</th><th>seconds</th><th>status</th></tr>
{rows}
</table></body></html>
"""
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.html").write_text(page, encoding="utf-8")
    at_once = f", {side_by_side} notebooks at a time" if side_by_side > 1 else ""
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch threads {threads or _threads()}{at_once}, "
               f"{time.strftime('%Y-%m-%d')}")
    (out / "run.json").write_text(json.dumps({"track": track, "machine": machine, "notebooks": results}, indent=2) + "\n")
    return out / "index.html"


REHEARSAL_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "COURSEKIT_TRACK": "full", "COURSEKIT_REHEARSE": "1"}


def rehearsal_sizes(path) -> dict:
    """The sizes a notebook's rehearsal runs at where they differ from the scaling rule (a step or two, a
    sample or two): its metadata `coursekit.rehearsal`, or nothing for an unreadable notebook."""
    import nbformat

    try:
        return dict(nbformat.read(str(path), as_version=4).metadata.get("coursekit", {}).get("rehearsal", {}))
    except Exception:  # an unreadable notebook fails in run_notebook, with the reason
        return {}


def rehearsal_sizes_env(path) -> dict:
    """What a notebook's kernel gets in a rehearsal besides `rehearsal_env`: its sizes (COURSEKIT_REHEARSAL_SIZES,
    which `tracks.Settings` reads)."""
    from .tracks import REHEARSAL_SIZES_ENV

    return {REHEARSAL_SIZES_ENV: json.dumps(rehearsal_sizes(path))}


def rehearsal_env(home: Path) -> dict:
    """The environment of a rehearsal: stand-ins written into the Hugging Face cache at `home`,
    no network, the full track forced and scaled down."""
    from . import standins

    standins.write(home)
    return {**REHEARSAL_ENV, "HF_HOME": str(home.resolve())}


def executed_folder(out: Path, notebook: Path) -> Path:
    """Where `run` writes a notebook's executed copy: under `out`, at the notebook's relative folder, or for
    an absolute path or one that climbs out with '..', at its absolute folder (never outside `out`)."""
    folder = Path(os.path.normpath(notebook.parent))
    if folder.is_absolute() or folder.parts[:1] == ("..",):
        folder = notebook.resolve().parent
        folder = folder.relative_to(folder.anchor)
    return out / folder


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM ends the run as Ctrl-C does, through the kernel's shutdown, so no kernel is left running."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def cmd_run(args) -> int:
    """`coursekit run`: execute the notebooks (their kernels get the track, or the rehearsal's
    environment; this process's own environment is left alone)."""
    import tempfile

    rehearse = getattr(args, "rehearse", False)
    if rehearse and args.track not in (None, "full"):
        raise CommandError("--rehearse rehearses the full track; drop --track small")
    if isinstance(args.timeout, bool) or not isinstance(args.timeout, int) or args.timeout < 1:
        raise CommandError(f"--timeout is the seconds each cell may take, a whole number >= 1; got {args.timeout!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file; pass a folder for the executed notebooks and the index")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not ((out / "run.json").is_file() or (out / ".runs").is_dir()) and not getattr(args, "overwrite", False):
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise CommandError(f"--out {out} already holds files that `coursekit run` did not write ({shown}); pass a new "
                           "or empty folder (the default is build), or --overwrite to write the executed notebooks and "
                           "the index over them and keep the rest")
    paths = args.paths or ["units"]
    notebooks = find_notebooks(paths)
    if not notebooks:
        raise CommandError(f"no notebooks (.ipynb) in {', '.join(paths)}; pass notebooks or a folder that holds them, "
                           "such as `coursekit run units`")
    track = "full" if rehearse else args.track
    env = {"COURSEKIT_TRACK": track} if track else {}
    mathjax = None
    if getattr(args, "mathjax", None):
        from . import publish

        try:
            mathjax = publish.copy_mathjax(args.mathjax, out)
        except FileNotFoundError as e:
            raise CommandError(f"--mathjax: {e}") from None
    for nb in notebooks:
        if (executed_folder(out, nb) / nb.name).resolve() == nb.resolve():
            raise CommandError(f"--out {args.out} would write the executed copy of {nb} over the notebook itself; "
                               "pass another folder, such as --out build")
    results = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_terminate_as_exit())
        if rehearse:
            print("writing stand-ins of the full track's Hub repos ...", flush=True)
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="coursekit-rehearsal-"))
            env = rehearsal_env(Path(scratch))
        for i, nb in enumerate(notebooks, 1):
            target = executed_folder(out, nb)
            print(f"[{i}/{len(notebooks)}] {nb}", flush=True)
            sizes = rehearsal_sizes_env(nb) if rehearse else {}
            r = run_notebook(nb, target, timeout=args.timeout, env={**env, **sizes}, mathjax=mathjax,
                             progress=not getattr(args, "quiet", False))
            print(f"[{i}/{len(notebooks)}] {r['status']} in {r['seconds']:.1f} s -> {r['html']}", flush=True)
            results.append(r)
    index = write_index(results, out, "full (rehearsal)" if rehearse else track or "auto")
    print(f"index: {index}")
    for r in results:
        if r["status"] != "ok":
            print(f"FAILED {r['notebook']}: {r['status']}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in results) else 1


def notebook_settings(path: str | os.PathLike) -> dict[str, tuple]:
    """{key: (small, full)} from a notebook's `tracks.Settings(...)` cell, read without running it."""
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "tracks.Settings(" in cell.source:
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Settings":
                    return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    raise NoSettings(f"{path} has no tracks.Settings(...) cell")


BUDGET = re.compile(r"time budget \((small|full) track[^)]*\):\s*(\d+(?:\.\d+)?)\s*min", re.IGNORECASE)


def notebook_budgets(path: str | os.PathLike) -> dict[str, float]:
    """{'small': minutes, 'full': minutes} as the notebook's first markdown cell states them:
    "Time budget (small track): N minutes" and "Time budget (full track, ...): M minutes"."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    return {track.lower(): float(minutes) for track, minutes in BUDGET.findall(first)}


def notebook_needs(path) -> list[tuple[str, str]]:
    """The Hub repos (repo_id, 'model' or 'dataset') a notebook's full track loads."""
    from .tracks import hub_needs

    return hub_needs({k: v[1] for k, v in notebook_settings(path).items()})


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def notebook_report(path: Path, zoo_ok: bool, reachable: bool) -> dict:
    """One notebook's line of the doctor's report: whether each track can run it here, the track
    its settings cell picks here (None without one), and `stops`, the error it would stop with."""
    from . import tracks

    row = {"notebook": str(path), "settings": False, "track": None, "stops": None, "needs": []}
    try:
        needs = notebook_needs(path)
    except NoSettings:
        return {**row, "small": "no settings cell", "full": "no settings cell"}
    except Exception as e:  # an unreadable notebook is reported on its line, and the others still are
        why = f"cannot read it ({one_line(e, 0, 200)})"
        return {**row, "small": f"no: {why}", "full": f"no: {why}", "stops": f"{why}; repair the file or restore it"}
    row.update(settings=True, needs=[r for r, _ in needs])
    try:
        row["track"] = tracks.pick_track(needs)
    except tracks.TrackError as e:
        row["stops"] = str(e)
    missing = tracks.missing_for_full(needs, check_hub=reachable)
    return {**row, "small": "yes" if zoo_ok else "no: zoo checkpoints missing",
            "full": "yes" if not missing else "no: needs " + "; ".join(missing)}


def doctor(paths: list[str] | None = None) -> dict:
    """What this machine can run, as a dict; `cmd_doctor` prints it."""
    import importlib.metadata as md
    import shutil

    from huggingface_hub import constants

    from . import hub, tracks, zoo

    try:
        machine = tracks.pick_track()
    except tracks.TrackError as e:
        raise CommandError(str(e)) from None
    forced = os.environ.get("COURSEKIT_TRACK", "").strip() or None
    versions = {}
    for pkg in ("coursekit", "torch", "torchaudio", "diffusers", "transformers", "datasets", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "missing"
    dev, reachable = tracks.device(), hub.reachable()
    cache = Path(constants.HF_HUB_CACHE)
    probe = cache if cache.exists() else Path.home()
    cached = {repo: hub.is_cached(repo, "dataset" if repo in hub.DATASETS else "model")
              for repo in hub.MODELS + hub.DATASETS}
    zoo_ok = all(zoo.is_shipped(n) for n in zoo.recipe_names())
    notebooks = [notebook_report(nb, zoo_ok, reachable)
                 for nb in find_notebooks(paths or (["units"] if Path("units").is_dir() else []))]
    stops = [n for n in notebooks if n["stops"]]
    picked = [n["track"] for n in notebooks if n["track"]]
    track = machine if not picked else "full" if all(t == "full" for t in picked) else "small"
    if not zoo_ok:
        verdict = "broken install: zoo checkpoints are missing; reinstall coursekit"
    elif stops:
        more = f" (and {len(stops) - 1} more notebooks)" if len(stops) > 1 else ""
        verdict = f"not ready: {stops[0]['notebook']}{more} would stop here: {stops[0]['stops']}"
    elif track == "full":
        verdict = f"ready for the full track on {dev}"
    elif forced:
        verdict = f"ready for the small track, as COURSEKIT_TRACK={forced} asks (unset it to let each notebook pick)"
    elif dev == "cpu":
        verdict = "ready for the small track (no GPU, so the full track cannot run here)"
    elif dev == "mps":
        verdict = f"ready for the small track: {tracks.MPS_NOTE}"
    else:
        verdict = (f"ready for the small track; the full track needs its Hub repos: run `coursekit prefetch` "
                   f"on a network{' (the Hub is unreachable now)' if not reachable else ''}")
    return {"device": dev, "host": tracks.host(), "track_picked": track, "track_forced": forced, "versions": versions,
            "hub_reachable": reachable, "hub_offline_flag": hub.offline(),
            "hf_cache": str(cache), "free_disk": shutil.disk_usage(probe).free, "cached": cached,
            "zoo_complete": zoo_ok, "notebooks": notebooks, "ready": zoo_ok and not stops, "verdict": verdict}


def cmd_doctor(args) -> int:
    report = doctor(args.paths)
    print(f"device:        {report['device']} ({report['host']})")
    print("packages:      " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print(f"Hub:           {'reachable' if report['hub_reachable'] else 'unreachable'}"
          f"{' (HF_HUB_OFFLINE is set)' if report['hub_offline_flag'] else ''}")
    print(f"cache:         {report['hf_cache']}, {_gb(report['free_disk'])} free")
    print("cached repos:  " + (", ".join(r for r, ok in report["cached"].items() if ok) or "none"))
    print("not cached:    " + (", ".join(r for r, ok in report["cached"].items() if not ok) or "none"))
    print(f"zoo:           {'complete' if report['zoo_complete'] else 'MISSING checkpoints'}")
    forced = report["track_forced"]
    print(f"track:         {report['track_picked']} "
          + (f"(COURSEKIT_TRACK={forced})" if forced else "(picked automatically; COURSEKIT_TRACK=small or full forces it)"))
    for n in report["notebooks"]:
        here = n["track"] or (f"stops: {n['stops']}" if n["stops"] else "no settings cell, so it runs as written")
        print(f"  {n['notebook']}: small {n['small']}; full {n['full']}; here: {here}")
    print(f"verdict:       {report['verdict']}")
    return 0 if report["ready"] else 1


def prefetch_plan(unit: int | None = None, root: str = "units") -> list[tuple[str, str]]:
    """(repo_id, 'model' or 'dataset') for every pinned full-track repo, or one unit's."""
    from . import hub

    if unit is None:
        return [(r, "model") for r in hub.MODELS] + [(r, "dataset") for r in hub.DATASETS]
    folder = Path(root) / f"unit{unit}"
    if not folder.is_dir():
        raise CommandError(f"no {folder}; units are "
                         + ", ".join(sorted(p.name for p in Path(root).glob("unit*"))))
    plan = []
    for nb in find_notebooks([str(folder)]):
        with contextlib.suppress(NoSettings):  # no settings cell: no full-track repos to fetch
            plan += [n for n in notebook_needs(nb) if n not in plan]
    return plan


def prefetch(unit: int | None = None, root: str = "units") -> list[dict]:
    """Download the plan's repos at their pinned revisions (for models, the files the loaders
    read: `hub.model_files`), resuming partial downloads; then check each is complete from the
    cache alone."""
    from huggingface_hub import snapshot_download

    from . import hub

    plan = prefetch_plan(unit, root)
    if not hub.reachable():
        why = hub.why_unreachable()
        raise CommandError(f"{why}, so nothing was downloaded. Run it on a machine with "
                         "network access (the cache it fills can be copied: HF_HOME), or use the small track, "
                         "which needs no downloads.")
    done = []
    for repo, kind in plan:
        patterns = hub.model_files(repo) if kind == "model" else hub.dataset_files(repo)
        revision = hub.revision(repo)
        began = time.perf_counter()
        folder = snapshot_download(repo, repo_type=kind, revision=revision, **patterns)
        again = snapshot_download(repo, repo_type=kind, revision=revision, local_files_only=True, **patterns)
        if Path(again) != Path(folder):
            raise CommandError(f"{repo} did not verify from the cache; run prefetch again")
        size = _size(Path(folder))
        done.append({"repo": repo, "kind": kind, "revision": revision, "bytes": size,
                     "seconds": round(time.perf_counter() - began, 1)})
        print(f"{kind:8} {repo}: {_gb(size)} in {done[-1]['seconds']} s", flush=True)
    print(f"prefetched {len(done)} repos, {_gb(sum(d['bytes'] for d in done))} in all")
    return done


def add_commands(sub) -> None:
    """`run`, `doctor` and `prefetch`."""
    run = sub.add_parser("run", help="execute notebooks headless and write them with an HTML index")
    run.add_argument("paths", nargs="*", help="notebooks or folders (default: units)")
    run.add_argument("--track", choices=["small", "full"], help="force a track (default: picked automatically)")
    run.add_argument("--rehearse", action="store_true",
                     help="run the full track's code on this CPU, offline, with stand-ins of its Hub repos")
    run.add_argument("--out", default="build", help="output folder (default: build)")
    run.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    run.add_argument("--mathjax", help="a local MathJax 3 es5 folder to copy into --out, so the pages typeset "
                                       "maths offline (default: MathJax from the web)")
    run.add_argument("--quiet", action="store_true", help="no progress bar over each notebook's cells")
    run.add_argument("--overwrite", action="store_true",
                     help="write into an --out folder that holds files of another program (they are kept)")
    run.set_defaults(run=cmd_run)
    doc = sub.add_parser("doctor", help="what this machine can run, notebook by notebook")
    doc.add_argument("paths", nargs="*", help="notebooks or folders (default: units, when present)")
    doc.set_defaults(run=cmd_doctor)
    pre = sub.add_parser("prefetch", help="download the pinned full-track models and datasets ahead of time")
    pre.add_argument("--unit", type=int, help="only what this unit's notebooks load")
    pre.add_argument("--units-dir", default="units", help="where the notebooks are (for --unit)")
    pre.set_defaults(run=lambda args: prefetch(args.unit, args.units_dir) and None)


def main(argv=None) -> int:
    """The `coursekit` command; returns its exit status."""
    from . import distill, finetune, hub, zoo
    from .commands import run_commands

    return run_commands("coursekit", "coursekit: the course's command",
                        [add_commands, hub.add_commands, zoo.add_commands, distill.add_commands, finetune.add_commands],
                        argv)


if __name__ == "__main__":
    from coursekit import cli  # this module under its own name, so run_commands knows its errors as coursekit's

    sys.exit(cli.main())
