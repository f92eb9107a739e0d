#!/usr/bin/env python3
"""Coverage map cost: the dashboard's live map of 336 hours x 3 qualities, built from
the in-memory index (agent/coverage_maps.local_maps, then JSON as the dashboard
sends it), in this process: no agent, no disk.

The index holds `--hours` full hours of 2 s segments (1800 an hour) for each of
`--qualities` qualities, plus a hole and a tombstone per hour. Measured:

  - cold: the first map (every hour's names parsed into spans, then cached);
  - warm: the next maps, nothing changed (what each dashboard poll costs);
  - one new segment: a name added to the newest hour, then a map (one hour re-parsed);
  - directory reads during all of it: os.scandir / os.listdir / os.walk calls (goal 0).

Baseline, same index, same run: listing every hour of every quality from the index
(`ArchiveIndex.replicable`, what /files and /v1/listing do): the cheapest operation
that touches every name.

Goal: a warm map well under a second (<= 100 ms); the cold one is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time

import benchlib
from benchlib import print_table

from agent.serve.coverage_maps import local_maps  # noqa: E402
from agent.archive.index import ArchiveIndex  # noqa: E402
from protocol.names import format_hour, parse_path  # noqa: E402

WARM_GOAL_S = 0.100
HASH = "7IS92rssMzoSBQDIevHStbTNy-URRV3Vw-jzZ6pwOZM"


def build_index(hours: int, qualities: int, now: dt.datetime) -> tuple[ArchiveIndex, int]:
    index = ArchiveIndex()
    last = now.replace(minute=0, second=0, microsecond=0)
    scanned, count = [], 0
    for q in range(qualities):
        for h in range(hours):
            hour = format_hour(last - dt.timedelta(hours=h))
            names = [f"{s // 60:02d}:{s % 60:02d}.000000-2.0-full-{HASH}.ts"
                     for s in range(0, 3600, 2) if s != 600]          # a hole at 10:00
            names.append(f"40:00.000000-2.0-full-{HASH}.tombstone")  # a tombstone at 40:00
            count += len(names)
            scanned.append(("desertbus", f"q{q}", hour, names))
    index.replace_all(scanned)
    return index, count


class DirectoryReads:
    """Counts directory reads while active (the map must do none)."""

    def __init__(self) -> None:
        self.calls = 0
        self.saved = {}

    def __enter__(self):
        for name in ("scandir", "listdir", "walk"):
            original = self.saved[name] = getattr(os, name)

            def counting(*a, _original=original, **kw):
                self.calls += 1
                return _original(*a, **kw)
            setattr(os, name, counting)
        return self

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(os, name, original)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_common_arguments(p, "coverage_render", "48 hours x 3 qualities")
    p.add_argument("--hours", type=int, default=336)
    p.add_argument("--qualities", type=int, default=3)
    p.add_argument("--repeat", type=int, default=5, help="warm maps and baselines measured")
    args = p.parse_args()
    if args.quick:
        args.hours = 48
    env = benchlib.environment()
    now = dt.datetime.now(dt.timezone.utc)
    build_s, (index, names) = timed(lambda: build_index(args.hours, args.qualities, now))

    def dashboard_map() -> bytes:
        maps = local_maps(index, now, args.hours)
        return json.dumps({"maps": [m.as_json() for m in maps]}).encode()

    def baseline() -> int:
        return sum(len(index.replicable(*pair, hour))
                   for pair in index.pairs() for hour in index.hours(*pair))

    with DirectoryReads() as reads:
        cold_s, body = timed(dashboard_map)
        warm = [timed(dashboard_map)[0] for _ in range(args.repeat)]
        newest = format_hour(now)
        name, kind = parse_path(f"desertbus/q0/{newest}/10:00.000000-2.0-full-{HASH}.ts")
        index.add(name, kind)
        one_new_s, _ = timed(dashboard_map)
    base = [timed(baseline)[0] for _ in range(args.repeat)]

    warm_s, base_s = statistics.median(warm), statistics.median(base)
    rows = [
        ["baseline: list every hour from the index", base_s * 1000, "-"],
        ["map, cold (every hour parsed)", cold_s * 1000, f"{cold_s / base_s:.1f}x"],
        ["map, warm (median)", warm_s * 1000, f"{warm_s / base_s:.2f}x"],
        ["map after one new segment", one_new_s * 1000, f"{one_new_s / base_s:.2f}x"],
    ]
    print_table(["what", "ms", "vs baseline"], rows,
                title=f"{args.hours} hours x {args.qualities} qualities, {names} names "
                      f"(index built in {build_s:.1f} s); map JSON {len(body)} bytes")
    verdict = "MET" if warm_s <= WARM_GOAL_S and reads.calls == 0 else "MISSED"
    print(f"\ndirectory reads while mapping: {reads.calls}")
    print(f"goal: warm map <= {WARM_GOAL_S * 1000:.0f} ms with no directory read: {verdict}")
    path = benchlib.write_json(f"{args.output}.json", {
        "environment": env, "hours": args.hours, "qualities": args.qualities, "names": names,
        "baseline_ms": [b * 1000 for b in base], "cold_ms": cold_s * 1000,
        "warm_ms": [w * 1000 for w in warm], "one_new_segment_ms": one_new_s * 1000,
        "json_bytes": len(body), "directory_reads": reads.calls,
        "goal_warm_ms": WARM_GOAL_S * 1000, "verdict": verdict,
    })
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
