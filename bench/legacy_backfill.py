#!/usr/bin/env python3
"""Legacy backfill: an empty node catches up from a wubloader node vs from a segsync node.

The same archive (default 600 segments of 1 MiB, 2 hours x 300) is served twice: by a
`segsync run` process, and by the stand-in of wubloader's restreamer read API
(tests/legacy_standin.py: a threaded `http.server`, HTTP/1.1 keep-alive, files sent
with `sendfile`; it stands for wubloader's gevent/flask restreamer, or the web server
in front of its `/segments`). An empty root then catches up with the one-shot
`segsync backfill --root EMPTY --from URL` from each, alternating, `--repeat` times.
From the segsync node the copy uses batch fetches; from the legacy node it lists every
hour and GETs each segment. Both write through the same verified, fsynced store path.

Warm page cache (the archive is read once first); `sync` before each copy; each copy
is deleted before the next (memory freed a moment ago; see backfill_throughput.py).

Goal: from the legacy node at least 80% of the speed from the segsync node (median).
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import benchlib
from backfill_throughput import build_archive, timed, tree_files, warm
from benchlib import Agent, print_table

GOAL_RATIO = 0.8
STANDIN = benchlib.REPO / "tests" / "legacy_standin.py"


def start_standin(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(STANDIN), "--root", str(root)],
                            stdout=subprocess.PIPE, text=True, cwd=benchlib.REPO)
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def run(args, base: Path) -> dict:
    compileall.compile_dir(benchlib.REPO / "agent", quiet=1)
    compileall.compile_dir(benchlib.REPO / "protocol", quiet=1)
    src = base / "src"
    src.mkdir()
    archive = build_archive(src, args.hours, args.per_hour, args.size, 1)
    print(f"archive: {archive['segments']} segments, {archive['bytes'] / 1e6:.0f} MB, "
          f"built in {archive['build_s']:.1f}s")
    expected = tree_files(src)
    results: dict = {"archive": archive, "runs": []}
    server = Agent("segsync-source", src, benchlib.free_ports(1)[0], [], base,
                   ["--backfill-interval", "3600", "--log-level", args.log_level])
    legacy, legacy_url = start_standin(src)
    try:
        with benchlib.running([server]):
            results["warm_read_s"] = warm(src)
            sources = [("segsync", server.url, server.pid), ("legacy", legacy_url, legacy.pid)]
            for rep in range(args.repeat):
                for kind, url, pid in sources:
                    dst = base / f"dst-{kind}-{rep}"
                    dst.mkdir()
                    os.sync()
                    cmd = benchlib.segsync_command("backfill", "--root", str(dst), "--from", url,
                                                   "--log-level", args.log_level)
                    if args.max_concurrency:
                        cmd += ["--max-concurrency", str(args.max_concurrency)]
                    cpu0 = benchlib.process_cpu_seconds(pid)
                    r = timed(cmd, base / "backfill.log")
                    r["server_cpu_s"] = benchlib.process_cpu_seconds(pid) - cpu0
                    r.update(kind=kind, repeat=rep, complete=tree_files(dst) == expected,
                             mb_per_s=archive["bytes"] / 1e6 / r["wall_s"])
                    results["runs"].append(r)
                    print(f"  from {kind:8s} run {rep + 1}: {r['wall_s']:.2f}s "
                          f"{r['mb_per_s']:.0f} MB/s {'ok' if r['complete'] else 'INCOMPLETE'}")
                    shutil.rmtree(dst)
    finally:
        legacy.terminate()
        legacy.wait(10)
        legacy.stdout.close()
    return results


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["complete"] and r["returncode"] == 0]
    kinds = sorted({r["kind"] for r in ok})
    median = {k: statistics.median(r["mb_per_s"] for r in ok if r["kind"] == k) for k in kinds}
    best = {k: max(r["mb_per_s"] for r in ok if r["kind"] == k) for k in kinds}
    ratio = (median["legacy"] / median["segsync"]
             if {"legacy", "segsync"} <= median.keys() else float("nan"))
    return {"median_mb_per_s": median, "best_mb_per_s": best, "median_ratio": ratio,
            "met": ratio >= GOAL_RATIO}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=int, default=2, help="hours of archive (default 2)")
    p.add_argument("--per-hour", type=int, default=300, help="segments per hour (default 300)")
    p.add_argument("--size", type=int, default=2**20, help="segment bytes (default 1 MiB)")
    p.add_argument("--max-concurrency", type=int,
                   help="segsync backfill --max-concurrency (default: the agent's own, 5)")
    p.add_argument("--repeat", type=int, default=3,
                   help="copies from each source, alternating (default 3; median reported)")
    benchlib.add_common_arguments(p, "legacy_backfill", "1 x 50 segments, 1 repeat")
    args = p.parse_args()
    if args.quick:
        args.hours, args.per_hour, args.repeat = 1, 50, 1
    env = benchlib.environment()
    print(f"legacy backfill: {args.hours} h x {args.per_hour} segments x {args.size} bytes; "
          f"load average {env['load_avg_at_start']}")
    with benchlib.workdir(args.workdir, args.keep) as base:
        results = run(args, base)
    results["config"] = vars(args)
    results["environment"] = env
    print_table(["from", "run", "wall s", "MB/s", "CPU s", "server CPU s", "complete"],
                [[r["kind"], r["repeat"] + 1, r["wall_s"], round(r["mb_per_s"], 1), r["cpu_s"],
                  r["server_cpu_s"], "yes" if r["complete"] else "NO"]
                 for r in results["runs"]],
                title="segsync backfill of an empty node (warm source cache)")
    s = results["summary"] = summarize(results["runs"])
    print("\nmedian " + ", ".join(f"from {k} {v:.0f}" for k, v in s["median_mb_per_s"].items())
          + f" MB/s -> legacy/segsync {s['median_ratio']:.2f}; goal >= {GOAL_RATIO}: "
          + ("MET" if s["met"] else "MISSED"))
    results["goal"] = {"min_median_ratio": GOAL_RATIO, "met": s["met"]}
    path = benchlib.write_json(f"{args.output}.json", results)
    print(f"wrote {path}")
    return 0 if s["median_mb_per_s"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
