"""`python -m bench [core|load] ...`: hubd's own benchmarks. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import sys

from bench.core import run_core


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="what")
    core = sub.add_parser("core", help="in-process fan-out through the core, no sockets")
    core.add_argument("--subscribers", type=int, default=500)
    core.add_argument("--events", type=int, default=2000)
    core.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.what in (None, "core"):
        result = run_core(
            getattr(args, "subscribers", 500), getattr(args, "events", 2000), reps=getattr(args, "reps", 5)
        )
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
