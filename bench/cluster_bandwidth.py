#!/usr/bin/env python3
"""Cluster bandwidth: what recording nodes receive from peers, with and without
downloader-aware push (issue 11).

A cluster of `segsync run` processes on loopback, every node the peer of every other
(default 5): 3 record the stream with independent synthetic downloaders, 2 only
archive. The stream: 2-second segments of ~300 KiB, one every 2 s in real time, for
60 s. Every downloader writes the same segments with the same bytes and names (temp
file with a UUID, then rename), each 0-1.5 s behind the stream at random, and each
misses 2% of the segments on its own.

`--behind`: the downloaders behave as wubloader's does when it falls behind
(downloader/downloader/main.py): each polls its playlist once a segment, but now and
then stalls for 2-6 s (a busy machine); at the next poll it starts a getter for every
segment that became available, all at once; a getter skips a segment whose full copy
already exists, creates its temp file only once the response headers arrive (0.05-1 s)
and renames it after the body (0.1-1.5 s): segments land out of order, and one in
flight may have no temp file yet. `--hog`: a CPU hog runs beside the cluster.

Measured per node: segment bytes received from peers (push and pull) per byte of
stream; for recording nodes also beyond the segments their own downloader missed;
push latency to the archive-only nodes (from the first downloader's rename until
the file is there), and hole repair time, from the moment another node holds the
segment until it is on the node that missed it (and, for reference, from the moment
that node's downloader passed it, i.e. renamed a later one). Arrivals are seen with
inotify in the bench process.

The same stream is played twice in the same run: deferral on (`defer-push = true`,
the default), then the baseline with `defer-push = false` (push as before). The
recording nodes declare the pair their downloader records (`records =
["bench/source"]`), so they defer its offers from their start, before their
downloader's first file; `--no-declare` leaves that out (the pair then counts as
recorded only once its first local file appeared). A `--baseline` checkout's agents
get the key only with `--baseline-declares` (agents before it refuse it).

Goals (issue 25): recording nodes receive at most 5% of the stream beyond their own
misses (also `--behind`, also `--hog`); archive-only push p99 <= 50 ms; hole repair
from the moment another node holds the segment p50 <= 2.5 s, max <= 4 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import subprocess
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
HOLE_P50_GOAL_S = 2.5
HOLE_MAX_GOAL_S = 4.0
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


def full_copy_exists(root: Path, seg: Segment) -> bool:
    """wubloader's `SegmentGetter.exists`: a full copy of that start and duration."""
    hour, name = os.path.split(seg.rel)
    prefix = name.split("-full-")[0] + "-full"
    try:
        return any(n.startswith(prefix) and not n.endswith(".tombstone")
                   for n in os.listdir(root / hour))
    except FileNotFoundError:
        return False


def behind_downloader(root: Path, plan: Plan, who: int, t0: float, renames: dict,
                      stop: threading.Event, seg_seconds: float, seed: int) -> None:
    """wubloader's downloader when it falls behind: polls once a segment, stalls now
    and then, and starts every segment that became available at once (see --behind)."""
    rng = random.Random(seed * 1000 + who)
    lock = threading.Lock()
    started: set[int] = set()
    getters = []

    def getter(seg: Segment, headers: float, body: float) -> None:
        if full_copy_exists(root, seg):  # checked before the request, as the real one
            return
        if stop.wait(headers):
            return
        path = root / f"{seg.temp_rel}{uuid.uuid4()}.ts"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(seg.data)
        if stop.wait(body):
            return
        os.rename(path, root / seg.rel)
        with lock:
            renames[(who, seg.index)] = time.monotonic()

    poll = t0 + rng.uniform(0, seg_seconds)
    wanted = len(plan.segments) - len(plan.missed[who])
    while len(started) < wanted:
        if stop.wait(max(0.0, poll - time.monotonic())):
            break
        now = time.monotonic() - t0
        for seg in plan.segments:
            if seg.available <= now and seg.index not in started \
                    and seg.index not in plan.missed[who]:
                started.add(seg.index)
                t = threading.Thread(target=getter, args=(seg, rng.uniform(0.05, 1.0),
                                                          rng.uniform(0.1, 1.5)), daemon=True)
                t.start()
                getters.append(t)
        poll += seg_seconds
        if rng.random() < 0.15:
            poll += rng.uniform(2.0, 6.0)  # a stall: nothing fetched meanwhile
    for t in getters:
        t.join()


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{{re.escape(labels)}\}})? (\S+)$", re.M)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def play(base: Path, make: Callable[[dt.datetime], Plan], nodes: int, recorders: int,
         defer: bool, args, checkout: str | None = None) -> dict:
    """One run: start the cluster, play the stream, wait for it to settle, measure.
    `make(start)`: the stream with its times from `start`, taken once the cluster runs
    (a stream timed from before the agents' start-up would make every downloader look
    seconds late, and the agents time holes by how late their downloader is)."""
    base.mkdir(parents=True, exist_ok=True)
    ports = benchlib.free_ports(nodes)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    agents = []
    declare = args.declare and (not checkout or args.baseline_declares)
    for i in range(nodes):
        cfg = base / f"node{i}.toml"
        cfg.write_text(f"defer-push = {'true' if defer else 'false'}\n"
                       + (f'records = ["{CHANNEL}/{QUALITY}"]\n'
                          if declare and i < recorders else ""))
        agents.append(Agent(f"node{i}", base / f"node{i}", ports[i],
                            [u for u in urls if u != urls[i]], base,
                            ["--config", str(cfg), "--log-level", args.log_level]))
        if checkout:  # another checkout's agents (before/after in one run)
            agents[-1].args = ["env", f"PYTHONPATH={checkout}", *agents[-1].args]
    arrivals = Arrivals([a.root for a in agents])
    renames: dict[tuple[int, int], float] = {}
    stop = threading.Event()
    hog = (subprocess.Popen(["sh", "-c", "while :; do :; done"]) if args.hog else None)
    try:
        return dict(_play(base, make, nodes, recorders, defer, args, agents, urls, arrivals,
                          renames, stop), checkout=checkout, declared=declare)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def _play(base, make, nodes, recorders, defer, args, agents, urls, arrivals, renames,
          stop) -> dict:
    with benchlib.running(agents):
        observer = Observer()
        for a in agents:
            observer.schedule(arrivals, str(a.root), recursive=True)
        observer.start()
        try:
            # segment i ends 2 (i + 1) s after t0 by the wall clock and its names alike
            plan = make(dt.datetime.now(dt.timezone.utc))
            t0 = time.monotonic()
            if args.behind:
                threads = [threading.Thread(target=behind_downloader, args=(
                    agents[r].root, plan, r, t0, renames, stop, args.segment_seconds,
                    args.seed), daemon=True) for r in range(recorders)]
            else:
                threads = [threading.Thread(target=downloader, args=(
                    agents[r].root, plan, r, t0, renames, stop), daemon=True)
                    for r in range(recorders)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            exists = {i for (_, i) in renames}  # a getter that found a copy wrote none
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
            repairs, after_pass = [], []
            for i in own_missed:
                rel = plan.segments[i].rel
                got = arrivals.seen.get((n, rel))
                held = min((arrivals.seen[(m, rel)] for m in range(nodes)
                            if m != n and (m, rel) in arrivals.seen), default=None)
                passed = min((renames[(n, j)] for j in range(i + 1, len(plan.segments))
                              if (n, j) in renames), default=None)
                if got is not None and held is not None:
                    repairs.append(max(0.0, got - held))
                if got is not None and passed is not None:
                    after_pass.append(max(0.0, got - passed))
            row["hole_repairs_s"] = repairs
            row["hole_repairs_after_pass_s"] = after_pass
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
    after_pass = [v for r in rec for v in r["hole_repairs_after_pass_s"]]
    return {
        "hole_max_s": max(repairs, default=float("nan")),
        "hole_after_pass_p50_s": percentile(after_pass, 50),
        "hole_after_pass_max_s": max(after_pass, default=float("nan")),
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
    p.add_argument("--behind", action="store_true",
                   help="downloaders as wubloader's when it falls behind (stalls, then "
                        "several segments at once, temp files at headers)")
    p.add_argument("--hog", action="store_true", help="a CPU hog beside the cluster")
    p.add_argument("--baseline-declares", action="store_true",
                   help="the --baseline checkout's recorders declare their pair too (it "
                   "must know config `records`)")
    p.add_argument("--no-declare", dest="declare", action="store_false",
                   help="recording nodes do not declare their pair (config `records`)")
    p.add_argument("--baseline", help="another checkout: a third run of its agents "
                   "(deferral on), for before/after in one run")
    benchlib.add_common_arguments(p, "cluster_bandwidth", "12 s of stream, 10%% misses")
    args = p.parse_args()
    load_at_start = os.getloadavg()
    if args.quick:
        args.duration, args.miss = 12.0, 0.1
    if not 0 < args.recording <= args.nodes:
        p.error("--recording must be in 1..--nodes")
    count = int(args.duration / args.segment_seconds)

    def make(start: dt.datetime) -> Plan:
        """The same stream (bytes, lags, misses) every play, its times from `start`:
        a later play's segments would otherwise be older than the recent window."""
        return make_plan(count, args.size, args.segment_seconds, args.recording,
                         args.max_lag, args.miss, args.seed, start)

    runs = []
    with benchlib.workdir(args.workdir, args.keep) as base:
        plays = [(True, None), (False, None)] + ([(True, args.baseline)] if args.baseline else [])
        for defer, checkout in plays:
            print(f"playing {count} segments with defer-push = {str(defer).lower()}"
                  f"{' (baseline checkout)' if checkout else ''} ...", flush=True)
            runs.append(play(base / ("base" if checkout else "on" if defer else "off"), make,
                             args.nodes, args.recording, defer, args, checkout))
    for run in runs:
        print_table(
            ["node", "role", "received/stream", "beyond own misses", "deferred", "saved",
             "missing"],
            [[r["node"], r["role"], r["received_per_stream"], r.get("excess_per_stream", "-"),
              int(r["deferred_offers"]), int(r["deferral_saved"]), r["missing_at_end"]]
             for r in run["nodes"]],
            title=f"defer-push = {str(run['defer_push']).lower()}"
                  f"{' (baseline checkout)' if run['checkout'] else ''}"
                  f"{', pairs declared' if run['declared'] else ''}: "
                  f"{run['segments']} segments, {run['stream_bytes'] / 2**20:.1f} MiB of stream")
    on, off = (summarize(r) for r in runs[:2])
    base_s = summarize(runs[2]) if len(runs) > 2 else None
    print_table(
        ["measure", "deferral on", "off (baseline)", "goal", "on: met?"],
        [["recording: received beyond own misses (max)", on["max_excess"], off["max_excess"],
          f"<= {EXCESS_GOAL}", "MET" if on["max_excess"] <= EXCESS_GOAL else "MISSED"],
         ["archive-only push p50 (ms)", on["push_p50_ms"], off["push_p50_ms"], "", ""],
         ["archive-only push p99 (ms)", on["push_p99_ms"], off["push_p99_ms"],
          f"<= {PUSH_P99_GOAL_MS:g}", "MET" if on["push_p99_ms"] <= PUSH_P99_GOAL_MS else "MISSED"],
         ["holes (own misses, all recorders)", on["holes"], off["holes"], "", ""],
         ["hole repair p50 (s, from another node holding it)", on["hole_p50_s"],
          off["hole_p50_s"], f"<= {HOLE_P50_GOAL_S:g}",
          "MET" if on["hole_p50_s"] <= HOLE_P50_GOAL_S else "MISSED"],
         ["hole repair max (s, from another node holding it)", on["hole_max_s"],
          off["hole_max_s"], f"<= {HOLE_MAX_GOAL_S:g}",
          "MET" if on["hole_max_s"] <= HOLE_MAX_GOAL_S else "MISSED"],
         ["hole repair p50 / max (s, from its downloader passing it)",
          f"{on['hole_after_pass_p50_s']:.2f} / {on['hole_after_pass_max_s']:.2f}",
          f"{off['hole_after_pass_p50_s']:.2f} / {off['hole_after_pass_max_s']:.2f}", "", ""],
         ["segments missing at the end", on["missing_at_end"], off["missing_at_end"], "0", ""]],
        title="summary (same stream, same run)")
    if base_s is not None:
        keys = [("recording: received beyond own misses (max)", "max_excess"),
                ("archive-only push p99 (ms)", "push_p99_ms"),
                ("hole repair p50 (s, from another node holding it)", "hole_p50_s"),
                ("hole repair max (s, from another node holding it)", "hole_max_s"),
                ("segments missing at the end", "missing_at_end")]
        print_table(["measure (deferral on)", "this checkout", "baseline checkout"],
                    [[label, on[k], base_s[k]] for label, k in keys],
                    title="before/after (same stream, same run)")
    print(f"load average at start {load_at_start}, now "
          f"{os.getloadavg()}; behind={args.behind} hog={args.hog} declare={args.declare}")
    path = benchlib.write_json(f"{args.output}.json", {
        "environment": dict(benchlib.environment(), load_avg_at_start=load_at_start),
        "load_avg_at_end": os.getloadavg(), "args": vars(args),
        "summary": {"deferral_on": on, "deferral_off": off, "baseline": base_s},
        "runs": runs})
    print(f"\nwrote {path}")
    return 1 if on["missing_at_end"] or off["missing_at_end"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
