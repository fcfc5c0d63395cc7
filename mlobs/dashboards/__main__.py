"""`python -m mlobs.dashboards` writes grafana/dashboards/*.json; `--check` only reports drift.

A thin wrapper of `mlobs.dashboards.render_all`, which `mlobs dashboards` calls.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlobs import config
from mlobs.dashboards import DASHBOARD_DIR, STACK_FILE, render_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlobs.dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard differs")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help=f"folder (default {DASHBOARD_DIR})")
    parser.add_argument("--stack", type=Path, default=STACK_FILE, help=f"stack.yaml to read (default {STACK_FILE})")
    args = parser.parse_args(argv)
    try:
        stack = config.load(args.stack)
    except config.StackError as e:
        print(e, file=sys.stderr)
        return 2
    problems = render_all(stack, check=args.check, out_dir=args.out)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("run `python -m mlobs.dashboards`, remove the files it does not generate, and commit", file=sys.stderr)
        return 1
    print(f"dashboards in {args.out} are up to date" if args.check else f"wrote the dashboards to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
