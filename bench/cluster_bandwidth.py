#!/usr/bin/env python3
"""Cluster bandwidth: what recording nodes receive from peers, with and without
downloader-aware push (issue 11).

A cluster of `segsync run` processes on loopback, every node the peer of every other
(default 5): 3 record the stream with independent synthetic downloaders, 2 only
archive. The stream: 2-second segments of ~300 KiB, one every 2 s in real time, for
60 s. Every downloader writes the same segments with the same bytes and names (temp
file with a UUID, then rename), each 0-1.5 s behind the stream at random, and each
misses 2% of the segments on its own.

Measured per node: segment bytes received from peers (push and pull) per byte of
stream; for recording nodes also beyond the segments their own downloader missed;
push latency to the archive-only nodes (from the first downloader's rename until
the file is there), and hole repair time (from the moment a downloader passed a
segment it missed, i.e. renamed its next one, until that segment is on its node).
Arrivals are seen with inotify in the bench process.

The same stream is played twice in the same run: deferral on (`defer-push = true`,
the default), then the baseline with `defer-push = false` (push as before).

Goals: recording nodes receive at most 5% of the stream beyond their own misses;
archive-only push p99 <= 50 ms; hole repair p99 <= 5 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx
from watchdog.events import FileCreatedEvent, FileMovedEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

import benchlib
from benchlib import Agent, percentile, print_table

from protocol.hashing import encode_hash, hash_bytes  # noqa: E402
from protocol.names import format_hour  # noqa: E402

EXCESS_GOAL = 0.05
PUSH_P99_GOAL_MS = 50.0
HOLE_P99_GOAL_S = 5.0
CHANNEL, QUALITY = "bench", "source"
DOWNLOAD_SECONDS = 0.2  # a temp file exists this long before its rename

InotifyMoveEventGrouper.delay = 0  # arrival needs only IN_MOVED_TO (see push_latency.py)
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)


@dataclass
class Segment:
    index: int
    rel: str        # CHANNEL/QUALITY/HOUR/NAME.ts
    temp_rel: str   # without the UUID: the downloader adds its own
    data: bytes
    available: float = 0.0  # stream offset (s) at which the segment is complete


@dataclass
class Plan:
    """The stream and what each downloader does with it (same for both runs)."""

    segments: list[Segment]
    lags: list[list[float]]    # [recorder][segment] seconds behind the stream
    missed: list[set[int]]     # [recorder] segment indexes it never writes


def make_plan(count: int, size: int, seg_seconds: float, recorders: int, max_lag: float,
              miss: float, seed: int, start: dt.datetime) -> Plan:
    rng = random.Random(seed)
    segments = []
    for i in range(count):
        data = rng.randbytes(int(size * rng.uniform(0.9, 1.1)))
        when = start + dt.timedelta(seconds=i * seg_seconds)
        stem = f"{when:%M:%S.%f}-{seg_seconds:g}"
        hour = f"{CHANNEL}/{QUALITY}/{format_hour(when)}"
        segments.append(Segment(i, f"{hour}/{stem}-full-{encode_hash(hash_bytes(data))}.ts",
                                f"{hour}/{stem}-temp-", data, (i + 1) * seg_seconds))
    lags = [[rng.uniform(0, max_lag) for _ in segments] for _ in range(recorders)]
    missed = [{i for i in range(count) if rng.random() < miss} for _ in range(recorders)]
    return Plan(segments, lags, missed)


class Arrivals(FileSystemEventHandler):
    """First time each final segment name appears under each watched root."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [str(r) + os.sep for r in roots]
        self.lock = threading.Lock()
        self.seen: dict[tuple[int, str], float] = {}

    def on_any_event(self, event) -> None:
        if isinstance(event, FileMovedEvent):
            path = os.fsdecode(event.dest_path)
        elif isinstance(event, FileCreatedEvent):
            path = os.fsdecode(event.src_path)
        else:
            return
        now = time.monotonic()
        if not path.endswith(".ts") or "-temp-" in path:
            return
        for node, root in enumerate(self.roots):
            if path.startswith(root):
                key = (node, path[len(root):])
                with self.lock:
                    self.seen.setdefault(key, now)
                return


def downloader(root: Path, plan: Plan, who: int, t0: float, renames: dict, stop: threading.Event
               ) -> None:
    """Writes the stream into `root` in real time: temp (UUID) file, then rename."""
    events = []
    for seg in plan.segments:
        if seg.index in plan.missed[who]:
            continue
        done = t0 + seg.available + plan.lags[who][seg.index]
        events.append((done - DOWNLOAD_SECONDS, "temp", seg))
        events.append((done, "rename", seg))
    events.sort(key=lambda e: e[0])
    temps: dict[int, Path] = {}
    for when, what, seg in events:
        wait = when - time.monotonic()
        if wait > 0 and stop.wait(wait):
            return
        if what == "temp":
            path = root / f"{seg.temp_rel}{uuid.uuid4()}.ts"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(seg.data)
            temps[seg.index] = path
        else:
            os.rename(temps.pop(seg.index), root / seg.rel)
            renames[(who, seg.index)] = time.monotonic()


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{{re.escape(labels)}\}})? (\S+)$", re.M)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def play(base: Path, plan: Plan, nodes: int, recorders: int, defer: bool, args) -> dict:
    """One run: start the cluster, play the stream, wait for it to settle, measure."""
    base.mkdir(parents=True, exist_ok=True)
    ports = benchlib.free_ports(nodes)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    agents = []
    for i in range(nodes):
        cfg = base / f"node{i}.toml"
        cfg.write_text(f"defer-push = {'true' if defer else 'false'}\n")
        agents.append(Agent(f"node{i}", base / f"node{i}", ports[i],
                            [u for u in urls if u != urls[i]], base,
                            ["--config", str(cfg), "--log-level", args.log_level]))
    arrivals = Arrivals([a.root for a in agents])
    renames: dict[tuple[int, int], float] = {}
    stop = threading.Event()
    with benchlib.running(agents):
        observer = Observer()
        for a in agents:
            observer.schedule(arrivals, str(a.root), recursive=True)
        observer.start()
        try:
            t0 = time.monotonic()
            threads = [threading.Thread(target=downloader, args=(agents[r].root, plan, r, t0,
                                                                 renames, stop), daemon=True)
                       for r in range(recorders)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            exists = {s.index for s in plan.segments
                      if any(s.index not in plan.missed[r] for r in range(recorders))}
            deadline = time.monotonic() + args.settle
            while time.monotonic() < deadline:
                with arrivals.lock:
                    if all((n, plan.segments[i].rel) in arrivals.seen
                           for n in range(nodes) for i in exists):
                        break
                time.sleep(0.2)
            received = [metric(u, "segsync_bytes_total", 'direction="received"')
                        + metric(u, "segsync_bytes_total", 'direction="pulled"') for u in urls]
            deferred = [metric(u, "segsync_push_deferred_total") for u in urls]
            saved = [metric(u, "segsync_push_deferral_saved_total") for u in urls]
        finally:
            stop.set()
            observer.stop()
            observer.join()
    stream_bytes = sum(len(plan.segments[i].data) for i in exists)
    first = {i: min(renames[(r, i)] for r in range(recorders) if (r, i) in renames)
             for i in exists}
    rows = []
    for n in range(nodes):
        row = {"node": f"node{n}", "role": "recording" if n < recorders else "archive",
               "received_bytes": received[n], "received_per_stream": received[n] / stream_bytes,
               "deferred_offers": deferred[n], "deferral_saved": saved[n],
               "missing_at_end": sum((n, plan.segments[i].rel) not in arrivals.seen
                                     for i in exists)}
        if n < recorders:
            own_missed = [i for i in plan.missed[n] if i in exists]
            missed_bytes = sum(len(plan.segments[i].data) for i in own_missed)
            row["missed_bytes"] = missed_bytes
            row["excess_per_stream"] = (received[n] - missed_bytes) / stream_bytes
            repairs = []
            for i in own_missed:
                got = arrivals.seen.get((n, plan.segments[i].rel))
                passed = next((renames[(n, j)] for j in range(i + 1, len(plan.segments))
                               if (n, j) in renames), None)
                if got is not None and passed is not None:
                    repairs.append(max(0.0, got - passed))
            row["hole_repairs_s"] = repairs
        else:
            row["push_latency_ms"] = [
                (arrivals.seen[(n, plan.segments[i].rel)] - first[i]) * 1000
                for i in exists if (n, plan.segments[i].rel) in arrivals.seen]
        rows.append(row)
    return {"defer_push": defer, "stream_bytes": stream_bytes, "segments": len(exists),
            "nodes": rows}


def summarize(run: dict) -> dict:
    rec = [r for r in run["nodes"] if r["role"] == "recording"]
    arc = [r for r in run["nodes"] if r["role"] == "archive"]
    latency = [v for r in arc for v in r["push_latency_ms"]]
    repairs = [v for r in rec for v in r["hole_repairs_s"]]
    return {
        "max_excess": max(r["excess_per_stream"] for r in rec),
        "push_p50_ms": percentile(latency, 50), "push_p99_ms": percentile(latency, 99),
        "holes": len(repairs),
        "hole_p50_s": percentile(repairs, 50), "hole_p99_s": percentile(repairs, 99),
        "missing_at_end": sum(r["missing_at_end"] for r in run["nodes"]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--recording", type=int, default=3, help="nodes with a downloader")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of stream")
    p.add_argument("--segment-seconds", type=float, default=2.0)
    p.add_argument("--size", type=int, default=300 * 1024, help="mean segment bytes")
    p.add_argument("--max-lag", type=float, default=1.5, help="downloader lag, 0..this s")
    p.add_argument("--miss", type=float, default=0.02, help="share each downloader misses")
    p.add_argument("--settle", type=float, default=15.0,
                   help="seconds to wait for the cluster to converge after the stream")
    p.add_argument("--seed", type=int, default=11)
    benchlib.add_common_arguments(p, "cluster_bandwidth", "12 s of stream, 10%% misses")
    args = p.parse_args()
    if args.quick:
        args.duration, args.miss = 12.0, 0.1
    if not 0 < args.recording <= args.nodes:
        p.error("--recording must be in 1..--nodes")
    count = int(args.duration / args.segment_seconds)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    plan = make_plan(count, args.size, args.segment_seconds, args.recording, args.max_lag,
                     args.miss, args.seed, start)
    runs = []
    with benchlib.workdir(args.workdir, args.keep) as base:
        for defer in (True, False):
            print(f"playing {count} segments with defer-push = {str(defer).lower()} ...",
                  flush=True)
            runs.append(play(base / ("on" if defer else "off"), plan, args.nodes,
                             args.recording, defer, args))
    for run in runs:
        print_table(
            ["node", "role", "received/stream", "beyond own misses", "deferred", "saved",
             "missing"],
            [[r["node"], r["role"], r["received_per_stream"], r.get("excess_per_stream", "-"),
              int(r["deferred_offers"]), int(r["deferral_saved"]), r["missing_at_end"]]
             for r in run["nodes"]],
            title=f"defer-push = {str(run['defer_push']).lower()}: "
                  f"{run['segments']} segments, {run['stream_bytes'] / 2**20:.1f} MiB of stream")
    on, off = (summarize(r) for r in runs)
    print_table(
        ["measure", "deferral on", "off (baseline)", "goal", "on: met?"],
        [["recording: received beyond own misses (max)", on["max_excess"], off["max_excess"],
          f"<= {EXCESS_GOAL}", "MET" if on["max_excess"] <= EXCESS_GOAL else "MISSED"],
         ["archive-only push p50 (ms)", on["push_p50_ms"], off["push_p50_ms"], "", ""],
         ["archive-only push p99 (ms)", on["push_p99_ms"], off["push_p99_ms"],
          f"<= {PUSH_P99_GOAL_MS:g}", "MET" if on["push_p99_ms"] <= PUSH_P99_GOAL_MS else "MISSED"],
         ["holes (own misses, all recorders)", on["holes"], off["holes"], "", ""],
         ["hole repair p50 (s)", on["hole_p50_s"], off["hole_p50_s"], "", ""],
         ["hole repair p99 (s)", on["hole_p99_s"], off["hole_p99_s"], f"<= {HOLE_P99_GOAL_S:g}",
          "MET" if on["hole_p99_s"] <= HOLE_P99_GOAL_S else "MISSED"],
         ["segments missing at the end", on["missing_at_end"], off["missing_at_end"], "0", ""]],
        title="summary (same stream, same run)")
    path = benchlib.write_json(f"{args.output}.json", {
        "environment": benchlib.environment(), "args": vars(args),
        "summary": {"deferral_on": on, "deferral_off": off}, "runs": runs})
    print(f"\nwrote {path}")
    return 1 if on["missing_at_end"] or off["missing_at_end"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
