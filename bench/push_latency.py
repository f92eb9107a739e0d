#!/usr/bin/env python3
"""Push latency: how long until a segment (or tombstone) written on one node is on every peer.

Three `segsync run` processes on loopback, each the peer of the other two. On node A
the bench renames 2 MiB segments into place at a steady rate (as a downloader does:
write under a temp-type name, then rename); for each it records the time from just
before the rename until the file exists under its final name on B and on C. Then it
syncs (the segment wave's unsynced files are not written back during the next one)
and touches tombstones on A and does the same.

How arrival is seen: inotify (watchdog) on B's and C's roots, in this process,
restricted to create/move events, so it costs nothing while idle and the timestamp is
taken when the kernel reports the rename, not at the next tick of a poll loop. (A
tight stat loop would burn a core of this 2-core machine and slow the agents it
measures.) A slow fallback poll catches anything inotify missed; the report counts
such cases, which then carry the poll's coarser time.

Baselines, measured in the same run with the same bytes, rate and durability (write,
fsync, rename, fsync the directory), after the agents have stopped:
  - local copy x2: copy the file into two other directories on this machine;
  - HTTP PUT x2: httpx PUT of the bytes to two trivial HTTP servers (stdlib
    http.server, one process each) that store them the same way, in parallel.

Goals (2-core machine): segment p99 <= 50 ms, tombstone p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import multiprocessing
import os
import threading
import time
import warnings
from pathlib import Path

import httpx
from watchdog.events import (
    DirCreatedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

import benchlib
from benchlib import Agent, print_table, summary_ms

from protocol.hashing import encode_hash  # noqa: E402  (benchlib puts the repo on sys.path)
from protocol.names import format_hour  # noqa: E402

SEGMENT_GOAL_MS = 50.0
TOMBSTONE_GOAL_MS = 20.0


# ---- arrival detection ----

# watchdog may hold a rename back 0.5 s while it pairs IN_MOVED_FROM with IN_MOVED_TO
# (a race in its delay queue; see agent/archive/watcher.py): that would be a stall of the
# measuring tool, not of the agents. Arrival needs only the IN_MOVED_TO: never wait.
InotifyMoveEventGrouper.delay = 0
# and it warns each time it re-registers the watch of a new hour directory: harmless
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)

class Arrivals(FileSystemEventHandler):
    """Records the first time each expected path appears under any watched root."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [str(r) for r in roots]
        self.lock = threading.Lock()
        self.expected: dict[str, tuple[int, int]] = {}  # abs path -> (item, peer)
        self.seen: dict[tuple[int, int], float] = {}
        self.polled: set[tuple[int, int]] = set()

    def expect(self, item: int, rel: str) -> None:
        with self.lock:
            for peer, root in enumerate(self.roots):
                self.expected[os.path.join(root, rel)] = (item, peer)

    def _hit(self, path: str, when: float, polled: bool = False) -> None:
        with self.lock:
            key = self.expected.pop(path, None)
            if key is not None and key not in self.seen:
                self.seen[key] = when
                if polled:
                    self.polled.add(key)

    def on_any_event(self, event) -> None:
        now = time.monotonic()
        if isinstance(event, FileMovedEvent):
            self._hit(os.fsdecode(event.dest_path), now)
        elif isinstance(event, FileCreatedEvent):
            self._hit(os.fsdecode(event.src_path), now)

    def poll_outstanding(self) -> None:
        """Fallback for lost events: stat what is still expected."""
        with self.lock:
            pending = list(self.expected.items())
        for path, _ in pending:
            if os.path.exists(path):
                self._hit(path, time.monotonic(), polled=True)

    def outstanding(self) -> int:
        with self.lock:
            return len(self.expected)


def watch(roots: list[Path], handler: Arrivals) -> Observer:
    observer = Observer()
    for root in roots:
        observer.schedule(handler, str(root), recursive=True,
                          event_filter=[FileCreatedEvent, FileMovedEvent, DirCreatedEvent])
    observer.start()
    return observer


# ---- the workload ----

class Payloads:
    """Distinct segments of `size` bytes, with real content-addressed names."""

    def __init__(self, count: int, size: int, pairs: int, channel: str = "bench") -> None:
        base = bytearray(os.urandom(size))
        self.items = []
        start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=1)
        for i in range(count):
            base[:8] = i.to_bytes(8, "big")
            data = bytes(base)
            digest = encode_hash(hashlib.sha256(data).digest())
            when = start + dt.timedelta(seconds=2 * (i // pairs), microseconds=i % 1000)
            quality = f"q{i % pairs}"
            hour = format_hour(when)
            stem = f"{when:%M:%S.%f}-2.0-{{}}-{digest}"
            rel_dir = f"{channel}/{quality}/{hour}"
            self.items.append({
                "data": data,
                "dir": rel_dir,
                "final": f"{rel_dir}/{stem.format('full')}.ts",
                "temp": f"{rel_dir}/{stem.format('temp')}.ts",
                "tombstone": f"{rel_dir}/{stem.format('full')}.tombstone",
            })


def pace(count: int, rate: float, prepare, fire) -> tuple[list[float], float]:
    """Call prepare(i) ahead of time, then fire(i) at start + i/rate; returns fire times."""
    started = time.monotonic() + 0.2
    fired = []
    for i in range(count):
        prepare(i)
        target = started + i / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fired.append(fire(i))
    elapsed = time.monotonic() - started
    return fired, count / elapsed if elapsed > 0 else float("nan")


def wait_all(arrivals: Arrivals, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while arrivals.outstanding() and time.monotonic() < deadline:
        time.sleep(0.05)
        arrivals.poll_outstanding()


def latencies(fired: list[float], arrivals: Arrivals, peers: int
              ) -> tuple[list[float], int, list[list]]:
    """Per item: time until present on every peer.

    Returns (latencies, items missing, per-item [fired, arrival per peer] on the
    monotonic clock, which is system-wide, for lining up with agent-side traces).
    """
    out, missing, raw = [], 0, []
    for i, t0 in enumerate(fired):
        times = [arrivals.seen.get((i, p)) for p in range(peers)]
        raw.append([t0, *times])
        if any(t is None for t in times):
            missing += 1
            continue
        out.append(max(times) - t0)
    return out, missing, raw


def timed_wave(agents: list[Agent], roots: list[Path], names: list[str], rate: float,
               timeout: float, prepare, fire) -> dict:
    """One kind of item on roots[0], paced at `rate`: `prepare(i)` off the clock, then
    the time from `fire(i)` until names[i] is on every other root; and the agents' CPU."""
    cpu_before = [a.cpu_seconds() for a in agents]
    arrivals = Arrivals(roots[1:])
    observer = watch(roots[1:], arrivals)
    try:
        def prepare_and_expect(i: int) -> None:
            prepare(i)
            arrivals.expect(i, names[i])

        fired, achieved = pace(len(names), rate, prepare_and_expect, fire)
        wait_all(arrivals, timeout)
    finally:
        observer.stop()
        observer.join()
    lat, missing, raw = latencies(fired, arrivals, len(roots) - 1)
    cpu_after = [a.cpu_seconds() for a in agents]
    return {"achieved_rate": achieved, "missing": missing,
            "fallback_polled": len(arrivals.polled), "latencies_s": lat, **summary_ms(lat),
            "items": [[name, *r] for name, r in zip(names, raw)],
            "agent_cpu_s": dict(zip("abc", (e - b for e, b in zip(cpu_after, cpu_before))))}


def segment_wave(agents: list[Agent], roots: list[Path], items: list[dict], rate: float,
                 timeout: float) -> dict:
    """timed_wave of Payloads items renamed into place on roots[0], as a downloader
    does: written under the temp name off the clock, the rename timed."""
    origin = roots[0]

    def prepare(i: int) -> None:
        item = items[i]
        (origin / item["dir"]).mkdir(parents=True, exist_ok=True)
        with open(origin / item["temp"], "wb") as f:
            f.write(item["data"])

    def fire(i: int) -> float:
        t0 = time.monotonic()
        os.rename(origin / items[i]["temp"], origin / items[i]["final"])
        return t0

    return timed_wave(agents, roots, [it["final"] for it in items], rate, timeout, prepare,
                      fire)


def run_agents(args, base: Path, payloads: Payloads) -> dict:
    ports = benchlib.free_ports(3)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    roots = [base / n for n in ("a", "b", "c")]
    agents = [
        Agent(name, root, port, [u for u in urls if u != urls[i]], base,
              ["--recent-window", "120", "--backfill-interval", "3600",
               "--log-level", args.log_level])
        for i, (name, root, port) in enumerate(zip("abc", roots, ports))
    ]
    origin = roots[0]
    out: dict = {"agents": [a.args for a in agents]}
    with benchlib.running(agents):
        # a round of backfill runs at start-up; give it a moment to finish (empty archives)
        time.sleep(0.5)
        items = payloads.items[: args.count]
        out["segments"] = segment_wave(agents, roots, items, args.rate, args.timeout)
        check_copies(roots, items, out["segments"])

        titems = items[: args.tombstones]
        # the segment wave's files on A are not synced (a downloader does not fsync): the
        # kernel writes them back 30 s later, in 5 s bursts whose journal commits hold up
        # file creation on this one file system, every agent's too (bench/README.md)
        os.sync()

        def tfire(i: int) -> float:
            t0 = time.monotonic()
            fd = os.open(origin / titems[i]["tombstone"], os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
            return t0

        out["tombstones"] = timed_wave(agents, roots, [it["tombstone"] for it in titems],
                                       args.tombstone_rate, args.timeout, lambda i: None, tfire)
    return out


def check_copies(roots: list[Path], items: list[dict], out: dict) -> None:
    """Every copy has the right size; a sample is compared byte for byte."""
    bad = 0
    for j, item in enumerate(items):
        for root in roots[1:]:
            path = root / item["final"]
            try:
                if path.stat().st_size != len(item["data"]):
                    bad += 1
                elif j % 25 == 0 and path.read_bytes() != item["data"]:
                    bad += 1
            except FileNotFoundError:
                bad += 1
    out["bad_copies"] = bad


# ---- baselines ----

def durable_store(directory: Path, name: str, data: bytes) -> None:
    """What a careful receiver does: temp file, fsync, rename, fsync the directory."""
    tmp = directory / f".tmp-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / name)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def serve_put(root: str, port: int) -> None:
    """A trivial HTTP/1.1 server: PUT /NAME stores the body durably, answers 200."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    directory = Path(root)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_PUT(self):
            length = int(self.headers["content-length"])
            data = self.rfile.read(length)
            durable_store(directory, os.path.basename(self.path), data)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def run_baselines(args, base: Path, payloads: Payloads) -> dict:
    items = payloads.items[: args.baseline_count]
    src = base / "baseline-src"
    src.mkdir()
    for item in items:  # the source file, in the page cache like A's was
        (src / os.path.basename(item["final"])).write_bytes(item["data"])
    out = {}

    # local copy into two directories
    dests = [base / "baseline-copy1", base / "baseline-copy2"]
    for d in dests:
        d.mkdir()

    def fire_copy(i: int) -> float:
        t0 = time.monotonic()
        fname = os.path.basename(items[i]["final"])
        with open(src / fname, "rb") as f:
            data = f.read()
        for d in dests:
            durable_store(d, fname, data)
        return time.monotonic() - t0

    took, _ = pace(len(items), args.rate, lambda i: None, fire_copy)
    out["local_copy_x2"] = {"latencies_s": took, **summary_ms(took)}

    # HTTP PUT to two trivial servers, in parallel
    ctx = multiprocessing.get_context("spawn")
    ports = benchlib.free_ports(2)
    procs, clients = [], []
    try:
        for k, port in enumerate(ports):
            d = base / f"baseline-http{k}"
            d.mkdir()
            p = ctx.Process(target=serve_put, args=(str(d), port), daemon=True)
            p.start()
            procs.append(p)
        for port in ports:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
            clients.append(client)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.put("/warmup", content=b"x")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        pool = concurrent.futures.ThreadPoolExecutor(2)

        def put(client: httpx.Client, fname: str, data: bytes) -> None:
            r = client.put(f"/{fname}", content=data)
            r.raise_for_status()

        def fire_put(i: int) -> float:
            t0 = time.monotonic()
            fname = os.path.basename(items[i]["final"])
            with open(src / fname, "rb") as f:
                data = f.read()
            futures = [pool.submit(put, c, fname, data) for c in clients]
            for fut in futures:
                fut.result()
            return time.monotonic() - t0

        took, _ = pace(len(items), args.rate, lambda i: None, fire_put)
        pool.shutdown()
        out["http_put_x2"] = {"latencies_s": took, **summary_ms(took)}
    finally:
        for c in clients:
            c.close()
        for p in procs:
            p.terminate()
            p.join(5)
    return out


# ---- report ----

def plot(results: dict, path: Path) -> None:
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    series = [
        ("segment push (to both peers)", results["segments"]["latencies_s"]),
        ("tombstone push (to both peers)", results["tombstones"]["latencies_s"]),
        ("baseline: local copy x2 (fsync)", results["baselines"]["local_copy_x2"]["latencies_s"]),
        ("baseline: HTTP PUT x2 (fsync)", results["baselines"]["http_put_x2"]["latencies_s"]),
    ]
    for label, values in series:
        ms = sorted(v * 1000 for v in values)
        if ms:
            ax.step(ms, [(k + 1) / len(ms) for k in range(len(ms))], where="post", label=label)
    ax.axvline(SEGMENT_GOAL_MS, color="C0", linestyle=":", label="segment goal (p99)")
    ax.axvline(TOMBSTONE_GOAL_MS, color="C1", linestyle=":", label="tombstone goal (p99)")
    ax.axhline(0.99, color="grey", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of items")
    ax.set_title(f"segsync push latency, 3 agents on loopback, "
                 f"{results['config']['size'] / 2**20:g} MiB segments at "
                 f"{results['config']['rate']:g}/s")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2 * 2**20, help="segment bytes (default 2 MiB)")
    p.add_argument("--rate", type=float, default=10.0, help="segments per second (default 10)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of segments (default 30)")
    p.add_argument("--tombstone-rate", type=float, help="tombstones per second (default: --rate)")
    p.add_argument("--tombstone-duration", type=float,
                   help="seconds of tombstones (default: --duration)")
    p.add_argument("--pairs", type=int, default=4,
                   help="(channel, quality) streams the segments are spread over (default 4)")
    p.add_argument("--baseline-count", type=int, help="items per baseline (default: all)")
    p.add_argument("--timeout", type=float, default=15.0,
                   help="seconds to wait for stragglers after the last item")
    benchlib.add_common_arguments(p, "push_latency", "3 s")
    args = p.parse_args()
    if args.quick:
        args.duration = min(args.duration, 3.0)
        args.tombstone_duration = min(args.tombstone_duration or 3.0, 3.0)
    args.tombstone_rate = args.tombstone_rate or args.rate
    args.tombstone_duration = args.tombstone_duration or args.duration
    args.count = max(1, round(args.rate * args.duration))
    args.tombstones = min(args.count, max(1, round(args.tombstone_rate * args.tombstone_duration)))
    args.baseline_count = min(args.count, args.baseline_count or args.count)

    env = benchlib.environment()
    print(f"push latency: 3 agents (separate processes) on loopback; {args.count} segments of "
          f"{args.size} bytes at {args.rate:g}/s, {args.tombstones} tombstones at "
          f"{args.tombstone_rate:g}/s; load average {env['load_avg_at_start']}")
    with benchlib.workdir(args.workdir, args.keep) as base:
        payloads = Payloads(args.count, args.size, args.pairs)
        results = {"config": {k: v for k, v in vars(args).items()}, "environment": env}
        results.update(run_agents(args, base, payloads))
        results["baselines"] = run_baselines(args, base, payloads)

    seg, tomb, bl = results["segments"], results["tombstones"], results["baselines"]
    rows = []
    for label, r, goal in (
        (f"segment push, {args.size / 2**20:g} MiB, to 2 peers", seg, SEGMENT_GOAL_MS),
        ("tombstone push, to 2 peers", tomb, TOMBSTONE_GOAL_MS),
        ("baseline: local copy x2 (fsync)", bl["local_copy_x2"], None),
        ("baseline: HTTP PUT x2 (fsync)", bl["http_put_x2"], None),
    ):
        verdict = "" if goal is None else (
            f"<= {goal:g}: " + ("MET" if r.get("p99_ms", 1e9) <= goal else "MISSED"))
        rows.append([label, r["n"], r.get("p50_ms", float("nan")), r.get("p95_ms", float("nan")),
                     r.get("p99_ms", float("nan")), r.get("max_ms", float("nan")), verdict])
    print_table(["", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "goal p99 ms"], rows,
                title="latency until present on every peer")
    print(f"\nsegments: achieved rate {seg['achieved_rate']:.2f}/s, missing {seg['missing']}, "
          f"bad copies {seg['bad_copies']}, found by fallback poll {seg['fallback_polled']}; "
          f"agent CPU s {  {k: round(v, 2) for k, v in seg['agent_cpu_s'].items()} }")
    print(f"tombstones: achieved rate {tomb['achieved_rate']:.2f}/s, missing {tomb['missing']}, "
          f"found by fallback poll {tomb['fallback_polled']}; agent CPU s "
          f"{ {k: round(v, 2) for k, v in tomb['agent_cpu_s'].items()} }")
    results["goals"] = {
        "segment_p99_ms": SEGMENT_GOAL_MS, "segment_met": seg.get("p99_ms", 1e9) <= SEGMENT_GOAL_MS,
        "tombstone_p99_ms": TOMBSTONE_GOAL_MS,
        "tombstone_met": tomb.get("p99_ms", 1e9) <= TOMBSTONE_GOAL_MS,
    }
    json_path = benchlib.write_json(f"{args.output}.json", results)
    png_path = json_path.with_suffix(".png")
    plot(results, png_path)
    print(f"\nwrote {json_path} and {png_path}")
    ok = not seg["missing"] and not tomb["missing"] and not seg["bad_copies"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
