"""The command-line plumbing every coursekit command shares: one style for all of them.

Each module with commands has `add_commands(subparsers)`, which registers its subcommands, each
with a `run(args)` handler; `coursekit` (the `cli` module) gathers them all, and `python -m
coursekit.<module>` runs the same subcommands through `run_commands`. A coursekit error becomes
a one-line message and exit status 1 (130 when training was interrupted and saved), never a
traceback.
"""
from __future__ import annotations

import argparse
import sys


def ours(error: BaseException) -> bool:
    """Whether `error` is one of coursekit's own (also when its module runs as `python -m`)."""
    return type(error).__module__.split(".")[0] in ("coursekit", "__main__")


def run_commands(prog: str, description: str, registrars, argv=None, default: str | None = None) -> int:
    """Parse `argv` for the subcommands the `registrars` add, run the one asked for, and return
    its exit status. `default` is the subcommand taken when the first argument names none (a
    module with one command). A coursekit error exits with its message."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in registrars:
        register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if default and (not argv or argv[0] not in sub.choices) and argv[:1] not in (["-h"], ["--help"]):
        argv = [default, *argv]
    args = parser.parse_args(argv)
    try:
        status = args.run(args)
    except (ValueError, RuntimeError, OSError, ArithmeticError) as e:
        if not ours(e):
            raise
        sys.exit(f"{prog} {args.command}: {e}")
    except KeyboardInterrupt as e:
        if not ours(e):
            raise
        print(f"{prog} {args.command}: {e}", file=sys.stderr)
        return 130
    return int(status or 0)
