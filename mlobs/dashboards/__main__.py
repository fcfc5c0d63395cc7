"""`python -m mlobs.dashboards` writes grafana/dashboards/*.json; `--check` only reports drift."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlobs.dashboards import DASHBOARD_DIR, check, write_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlobs.dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard differs")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help=f"folder (default {DASHBOARD_DIR})")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `python -m mlobs.dashboards` and commit the result", file=sys.stderr)
            return 1
        print(f"dashboards in {args.out} are up to date")
        return 0
    for path in write_all(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
