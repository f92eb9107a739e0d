"""`segsync coverage`'s flags (Pillow is imported only when it runs)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

DEFAULT_HOURS = 336


def cmd_coverage(args: argparse.Namespace) -> int:
    from protocol.coverage import MAX_MAP_HOURS

    from .coverage_png import index_from_disk, write_maps

    root = Path(args.root)
    if not root.is_dir():
        print(f"segsync coverage: {root} is not a directory", file=sys.stderr)
        return 2
    if not 1 <= args.hours <= MAX_MAP_HOURS:
        print(f"segsync coverage: --hours must be 1..{MAX_MAP_HOURS}", file=sys.stderr)
        return 2
    written = write_maps(index_from_disk(root), Path(args.out),
                         dt.datetime.now(dt.timezone.utc), args.hours)
    print(f"{len(written)} files written; open {written[-1]}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("coverage", help="draw PNG coverage maps and an index.html")
    p.add_argument("--root", required=True, help="archive root directory")
    p.add_argument("--out", required=True, help="directory for the PNGs and index.html")
    p.add_argument("--hours", type=int, default=DEFAULT_HOURS,
                   help=f"how many hours back, up to now (default {DEFAULT_HOURS})")
    p.set_defaults(func=cmd_coverage)

