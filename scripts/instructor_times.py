"""Write the per-notebook times table of units/README.md from `coursekit run` results.

    coursekit run units --track small --out build/small
    python scripts/instructor_times.py --small build/small/run.json [--full build/full/run.json]

The table sits between the markers <!-- times --> and <!-- /times -->; a track without a run.json
keeps the times already written for it.
"""
import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "units" / "README.md"


def load(path):
    if not path:
        return {}, ""
    run = json.loads(Path(path).read_text())
    times = {Path(r["notebook"]).as_posix().split("units/", 1)[-1]: (r["seconds"], r["status"]) for r in run["notebooks"]}
    return times, run.get("machine", "")


def fmt(entry) -> str:
    seconds, status = entry
    return f"{seconds / 60:.1f} min" if status == "ok" else f"failed ({status[:40]})"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--small")
    ap.add_argument("--full")
    ap.add_argument("--guide", default=str(GUIDE))
    args = ap.parse_args(argv)
    guide = Path(args.guide)
    text = guide.read_text()
    old = {m[0]: (m[1].strip(), m[2].strip()) for m in re.findall(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \|$", text, re.M)}
    small, small_machine = load(args.small)
    full, full_machine = load(args.full)
    names = sorted(set(old) | set(small) | set(full))
    rows = ["| notebook | small track | full track |", "| --- | --- | --- |"]
    for n in names:
        s = fmt(small[n]) if n in small else old.get(n, ("not run", ""))[0]
        f = fmt(full[n]) if n in full else old.get(n, ("", "not run yet"))[1]
        rows.append(f"| `{n}` | {s} | {f} |")
    before = re.search(r"^\| the whole course, run end to end \| ([^|]*) \| ([^|]*) \|$", text, re.M)
    kept = [g.strip() for g in before.groups()] if before else ["not run", "not run yet"]
    total = lambda times, i: f"{sum(v[0] for v in times.values()) / 60:.1f} min" if times else kept[i]
    rows.append(f"| the whole course, run end to end | {total(small, 0)} | {total(full, 1)} |")
    table = "\n".join(rows)
    note = text.split("<!-- times -->")[1].split("<!-- /times -->")[0]
    measured = re.search(r"_Small track measured on: (.*?)_", note)
    small_where = small_machine or (measured.group(1) if measured else "")
    block = f"\n{table}\n\n_Small track measured on: {small_where}_\n"
    marked = lambda _: f"<!-- times -->{block}<!-- /times -->"
    guide.write_text(re.sub(r"<!-- times -->.*<!-- /times -->", marked, text, flags=re.S))
    print(table)


if __name__ == "__main__":
    main()
