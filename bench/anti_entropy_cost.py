#!/usr/bin/env python3
"""Anti-entropy cost: what an in-sync backfill round costs, as the archive grows.

For each size (default 10k, 100k and 1M segments), two `segsync run` processes hold
the same archive: A serves, B pulls from A every `--interval` seconds through a tiny
TCP proxy in this process. Per round (one peer, so per peer) it reports:

  - bytes on the wire: every byte the proxy relays, both directions (HTTP request and
    response lines, headers and bodies; TCP/IP headers and the handshake are not
    counted: about 10 packets of 52-66 bytes per round on top);
  - CPU time of the puller (B) and of the served node (A): the growth of each
    process's utime + stime (/proc/PID/stat, all threads) over a window of several
    rounds, divided by the rounds in it, minus the idle rate the process had before
    the window (also measured, and shown);
  - wall time: from the round's first request byte to its last response byte.

And the agent's resident memory per indexed segment: RSS of A once its start-up scan
is done (it serves /healthz), minus the RSS of an agent with an empty archive,
divided by the segments A indexed.

The archive: tiny files (8 distinct bytes each, named by their real SHA-256) spread
over `--pairs` (channel, quality) pairs and as many hours of `--per-hour` segments as
needed, all within the backfill range. B's copy is a tree of hard links to A's files
(an in-sync round reads no file, so sharing inodes changes nothing it measures, and
linking is ~10x faster than writing). Building takes a while at 1M; its time is
reported. `--archive-cache DIR` keeps built archives for the next run.

Goals: an in-sync round at 1M segments <= 4 KiB on the wire per peer and <= 100 ms
CPU; <= 300 bytes of memory per indexed segment.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import benchlib
from benchlib import Agent, print_table

from protocol.names import format_hour  # noqa: E402

WIRE_GOAL = 4096
CPU_GOAL_S = 0.100
MEMORY_GOAL = 300
ROUND_GAP = 0.3  # seconds of silence that separate two rounds on the proxy


# ---- the archive ----

def layout(count: int, pairs: int, per_hour: int, now: dt.datetime) -> list[tuple[str, str, int]]:
    """(relative hour dir, hour, segments in it) for `count` segments."""
    hours = math.ceil(count / (pairs * per_hour))
    out = []
    left = count
    for h in range(hours):
        hour = format_hour(now - dt.timedelta(hours=2 + h))
        for p in range(pairs):
            n = min(per_hour, left)
            if n <= 0:
                break
            out.append((f"bench/q{p}/{hour}", hour, n))
            left -= n
    return out


def write_hours(root: str, jobs: list[tuple[str, str, int, int]], per_hour: int) -> int:
    """Write the segments of some hour directories (run in a worker process)."""
    spacing = 3600 / per_hour
    written = 0
    for rel, hour, n, first_id in jobs:
        d = os.path.join(root, rel)
        os.makedirs(d, exist_ok=True)
        hour_start = dt.datetime.strptime(hour, "%Y-%m-%dT%H")
        for k in range(n):
            data = (first_id + k).to_bytes(8, "big")
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
            when = hour_start + dt.timedelta(seconds=k * spacing)
            path = f"{d}/{when:%M:%S.%f}-{spacing:g}-full-{digest}.ts"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            written += 1
    return written


def link_tree(src: str, dst: str) -> int:
    linked = 0
    for dirpath, _, files in os.walk(src):
        target = os.path.join(dst, os.path.relpath(dirpath, src))
        os.makedirs(target, exist_ok=True)
        for f in files:
            os.link(os.path.join(dirpath, f), os.path.join(target, f))
            linked += 1
    return linked


def build(base: Path, count: int, args) -> dict:
    """A's archive (written by `--build-workers` processes) and B's hard-linked copy."""
    now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    hours = layout(count, args.pairs, args.per_hour, now)
    key = {"count": count, "pairs": args.pairs, "per_hour": args.per_hour,
           "newest_hour": hours[0][1], "oldest_hour": hours[-1][1]}
    a, b = base / "a", base / "b"
    marker = base / "archive.json"
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        info = json.loads(marker.read_text())
        info["reused"] = True
        return info
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
    a.mkdir(parents=True)
    started = time.monotonic()
    jobs, first_id = [], 0
    for rel, hour, n in hours:
        jobs.append((rel, hour, n, first_id))
        first_id += n
    workers = max(1, args.build_workers)
    shards = [jobs[i::workers] for i in range(workers)]
    if workers == 1:
        written = write_hours(str(a), jobs, args.per_hour)
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            written = sum(pool.starmap(write_hours, [(str(a), s, args.per_hour) for s in shards]))
    write_s = time.monotonic() - started
    started = time.monotonic()
    linked = link_tree(str(a), str(b))
    link_s = time.monotonic() - started
    started = time.monotonic()
    os.sync()
    sync_s = time.monotonic() - started
    assert written == linked == count, (written, linked, count)
    info = {"key": key, "segments": count, "hour_dirs": len(hours),
            "hours": len({h for _, h, _ in hours}), "write_s": write_s, "link_s": link_s,
            "sync_s": sync_s, "reused": False}
    marker.write_text(json.dumps(info))
    return info


# ---- a byte-counting TCP proxy ----

class CountingProxy:
    """Relays 127.0.0.1:port -> target, recording (time, direction, bytes) per chunk."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.log: list[tuple[float, str, int]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(src, dst, direction), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    self.log.append((time.monotonic(), direction, len(data)))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self) -> list[tuple[float, str, int]]:
        with self.lock:
            out, self.log = self.log, []
        return out

    def close(self) -> None:
        self.stopping = True
        self.listener.close()


def rounds_from(log: list[tuple[float, str, int]]) -> list[dict]:
    """Split relayed traffic into rounds separated by ROUND_GAP of silence."""
    rounds: list[dict] = []
    for t, direction, n in sorted(log):
        if not rounds or t - rounds[-1]["last"] > ROUND_GAP:
            rounds.append({"first": t, "last": t, "up": 0, "down": 0})
        r = rounds[-1]
        r["last"] = t
        r[direction] += n
    return rounds


# ---- one size ----

def settle(agent: Agent, limit: float = 60.0) -> float:
    """Wait until the agent's start-up work (watch set-up, first round) has died down:
    two half-seconds in a row under 5% of a CPU. Returns the seconds waited."""
    started = time.monotonic()
    quiet = 0
    while quiet < 2 and time.monotonic() - started < limit:
        c0 = agent.cpu_seconds()
        time.sleep(0.5)
        quiet = quiet + 1 if agent.cpu_seconds() - c0 < 0.025 else 0
    return time.monotonic() - started


def idle_rate(agent: Agent, seconds: float) -> float:
    c0, t0 = agent.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (agent.cpu_seconds() - c0) / (time.monotonic() - t0)


def measure(base: Path, count: int, args) -> dict:
    archive = build(base, count, args)
    print(f"  archive {count}: {archive['hour_dirs']} hour directories; "
          + ("reused" if archive["reused"] else
             f"written in {archive['write_s']:.1f}s, linked in {archive['link_s']:.1f}s, "
             f"synced in {archive['sync_s']:.1f}s"))
    port_a, port_b = benchlib.free_ports(2)
    common = ["--log-level", args.log_level, "--backfill-hours", str(args.backfill_hours)]
    a = Agent(f"a{count}", base / "a", port_a, [], base,
              common + ["--backfill-interval", "3600"])
    out: dict = {"segments": count, "archive": archive}
    started = time.monotonic()
    with benchlib.running([a], ready_timeout=args.ready_timeout):
        out["a_ready_s"] = time.monotonic() - started  # the start-up scan
        out["a_settle_s"] = settle(a)
        out["a_rss"] = a.rss_bytes()
        out["a_idle_cpu_per_s"] = idle_rate(a, args.idle_seconds)
        proxy = CountingProxy(port_a)
        b = Agent(f"b{count}", base / "b", port_b, [proxy.url], base,
                  common + ["--backfill-interval", str(args.interval)])
        try:
            started = time.monotonic()
            with benchlib.running([b], ready_timeout=args.ready_timeout):
                out["b_ready_s"] = time.monotonic() - started
                # past the round at start-up (finds nothing: the archives are equal)
                # and B's other start-up work; with rounds every second, "quiet"
                # means under 5% of a CPU
                out["b_settle_s"] = settle(b)
                proxy.take()
                cpu_a0, cpu_b0, t0 = a.cpu_seconds(), b.cpu_seconds(), time.monotonic()
                time.sleep(args.window)
                cpu_a1, cpu_b1, t1 = a.cpu_seconds(), b.cpu_seconds(), time.monotonic()
                time.sleep(ROUND_GAP * 2)  # the last round's tail
                log = proxy.take()
                out["b_rss"] = b.rss_bytes()
        finally:
            proxy.close()
        rounds = [r for r in rounds_from(log) if r["first"] <= t1]
        n = len(rounds)
        if n == 0:
            raise RuntimeError(f"no backfill round seen in {args.window}s; see {b.log_path}")
        window = t1 - t0
        out["rounds"] = n
        out["window_s"] = window
        out["wire_bytes_per_round"] = sum(r["up"] + r["down"] for r in rounds) / n
        out["wire_up_per_round"] = sum(r["up"] for r in rounds) / n
        out["wire_down_per_round"] = sum(r["down"] for r in rounds) / n
        out["wall_s_per_round"] = sorted(r["last"] - r["first"] for r in rounds)[n // 2]
        idle = out["a_idle_cpu_per_s"]
        out["cpu_a_raw_per_round"] = (cpu_a1 - cpu_a0) / n
        out["cpu_b_raw_per_round"] = (cpu_b1 - cpu_b0) / n
        # idle CPU of an agent with nothing to do (A's, measured before B existed)
        out["cpu_a_per_round"] = max(0.0, (cpu_a1 - cpu_a0 - idle * window) / n)
        out["cpu_b_per_round"] = max(0.0, (cpu_b1 - cpu_b0 - idle * window) / n)
        with open(b.log_path, errors="replace") as f:
            out["b_log_warnings"] = sum(1 for line in f if " WARNING " in line or " ERROR " in line)
    return out


def empty_agent_rss(base: Path, args) -> int:
    root = base / "empty"
    root.mkdir(exist_ok=True)
    agent = Agent("empty", root, benchlib.free_ports(1)[0], [], base,
                  ["--log-level", args.log_level, "--backfill-interval", "3600"])
    with benchlib.running([agent]):
        time.sleep(1.0)
        return agent.rss_bytes()


def plot(results: dict, path: Path) -> None:
    plt = benchlib.pyplot()
    sizes = [r["segments"] for r in results["sizes"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ax = axes[0]
    ax.plot(sizes, [r["wire_bytes_per_round"] for r in results["sizes"]], "o-", label="per round")
    ax.axhline(WIRE_GOAL, color="red", linestyle=":", label="goal at 1M")
    ax.set_ylabel("bytes on the wire per round (per peer)")
    ax = axes[1]
    ax.plot(sizes, [1000 * r["cpu_b_per_round"] for r in results["sizes"]], "o-", label="puller (B)")
    ax.plot(sizes, [1000 * r["cpu_a_per_round"] for r in results["sizes"]], "s-", label="served (A)")
    ax.plot(sizes, [1000 * r["wall_s_per_round"] for r in results["sizes"]], "^--", label="wall")
    ax.axhline(1000 * CPU_GOAL_S, color="red", linestyle=":", label="CPU goal at 1M")
    ax.set_ylabel("ms per in-sync round")
    ax = axes[2]
    ax.plot(sizes, [r["memory_per_segment"] for r in results["sizes"]], "o-", label="RSS per segment")
    ax.axhline(MEMORY_GOAL, color="red", linestyle=":", label="goal")
    ax.set_ylabel("bytes of agent RSS per indexed segment")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("segments in the archive")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    fig.suptitle("segsync anti-entropy cost, two nodes in sync")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000",
                   help="comma-separated archive sizes in segments (default 10k,100k,1M)")
    p.add_argument("--pairs", type=int, default=4, help="(channel, quality) pairs (default 4)")
    p.add_argument("--per-hour", type=int, default=1800,
                   help="segments per pair and hour (default 1800: 2-second segments)")
    p.add_argument("--backfill-hours", type=int, default=336)
    p.add_argument("--interval", type=float, default=1.0,
                   help="B's --backfill-interval during the measurement (default 1 s)")
    p.add_argument("--window", type=float, default=12.0,
                   help="seconds over which rounds are counted (default 12)")
    p.add_argument("--idle-seconds", type=float, default=3.0)
    p.add_argument("--build-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ready-timeout", type=float, default=900.0)
    p.add_argument("--archive-cache", help="keep built archives here and reuse them")
    benchlib.add_common_arguments(p, "anti_entropy_cost", "1k and 10k")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.window, args.idle_seconds = "1000,10000", 5.0, 1.0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    for n in sizes:
        hours = math.ceil(n / (args.pairs * args.per_hour))
        if hours + 2 > args.backfill_hours:
            p.error(f"{n} segments need {hours} hours: raise --pairs or --per-hour")

    env = benchlib.environment()
    print(f"anti-entropy cost: sizes {sizes}, {args.pairs} pairs x {args.per_hour}/hour; "
          f"B pulls from A every {args.interval:g}s through a counting proxy; load average "
          f"{env['load_avg_at_start']}")
    results: dict = {"config": vars(args), "environment": env, "sizes": []}
    with benchlib.workdir(args.workdir, args.keep) as base:
        results["empty_agent_rss"] = empty = empty_agent_rss(base, args)
        print(f"  empty agent RSS {empty / 2**20:.1f} MiB")
        for n in sizes:
            archive_base = Path(args.archive_cache) / str(n) if args.archive_cache else base / str(n)
            archive_base.mkdir(parents=True, exist_ok=True)
            r = measure(archive_base, n, args)
            r["memory_per_segment"] = (r["a_rss"] - empty) / n
            results["sizes"].append(r)
            print(f"  {n}: {r['rounds']} rounds, {r['wire_bytes_per_round']:.0f} B/round, "
                  f"CPU B {1000 * r['cpu_b_per_round']:.1f} ms A {1000 * r['cpu_a_per_round']:.1f}"
                  f" ms, {r['memory_per_segment']:.0f} B/segment, A ready in "
                  f"{r['a_ready_s']:.1f}s")
            if not args.archive_cache:
                shutil.rmtree(archive_base, ignore_errors=True)

    rows = []
    for r in results["sizes"]:
        rows.append([r["segments"], r["rounds"], round(r["wire_bytes_per_round"]),
                     round(r["wire_up_per_round"]), round(r["wire_down_per_round"]),
                     1000 * r["cpu_b_per_round"], 1000 * r["cpu_a_per_round"],
                     1000 * r["wall_s_per_round"], round(r["memory_per_segment"]),
                     r["a_rss"] / 2**20])
    print_table(["segments", "rounds", "wire B", "up B", "down B", "CPU puller ms",
                 "CPU served ms", "wall ms", "RSS B/seg", "RSS MiB"], rows,
                title="in-sync anti-entropy round, per peer (idle CPU subtracted)")
    ordered = sorted(results["sizes"], key=lambda r: r["segments"])
    for small, big in zip(ordered, ordered[1:]):
        big["marginal_memory_per_segment"] = (big["a_rss"] - small["a_rss"]) / (
            big["segments"] - small["segments"])
        print(f"  RSS growth from {small['segments']} to {big['segments']} segments: "
              f"{big['marginal_memory_per_segment']:.0f} B per added segment")
    for r in results["sizes"]:
        print(f"  {r['segments']}: raw CPU per round (idle not subtracted) puller "
              f"{1000 * r['cpu_b_raw_per_round']:.1f} ms, served {1000 * r['cpu_a_raw_per_round']:.1f}"
              f" ms; idle {1000 * r['a_idle_cpu_per_s']:.1f} ms/s; B ready after "
              f"{r['b_ready_s']:.1f}s; archive build " + (
                  "reused" if r["archive"]["reused"] else
                  f"{r['archive']['write_s'] + r['archive']['link_s'] + r['archive']['sync_s']:.0f}s"))
    largest = max(results["sizes"], key=lambda r: r["segments"])
    goals = {
        "at_segments": largest["segments"],
        "wire_bytes": largest["wire_bytes_per_round"], "wire_goal": WIRE_GOAL,
        "wire_met": largest["wire_bytes_per_round"] <= WIRE_GOAL,
        "cpu_s": max(largest["cpu_b_per_round"], largest["cpu_a_per_round"]),
        "cpu_goal_s": CPU_GOAL_S,
        "cpu_met": max(largest["cpu_b_per_round"], largest["cpu_a_per_round"]) <= CPU_GOAL_S,
        "memory_per_segment": largest["memory_per_segment"],
        "memory_goal": MEMORY_GOAL,
    }
    goals["memory_met"] = goals["memory_per_segment"] <= MEMORY_GOAL
    results["goals"] = goals
    print(f"\ngoals at {largest['segments']} segments: wire {goals['wire_bytes']:.0f} B "
          f"(<= {WIRE_GOAL}: {'MET' if goals['wire_met'] else 'MISSED'}), CPU "
          f"{1000 * goals['cpu_s']:.1f} ms (<= {1000 * CPU_GOAL_S:.0f}: "
          f"{'MET' if goals['cpu_met'] else 'MISSED'}); memory "
          f"{goals['memory_per_segment']:.0f} B/segment (<= {MEMORY_GOAL}: "
          f"{'MET' if goals['memory_met'] else 'MISSED'})")
    json_path = benchlib.write_json(f"{args.output}.json", results)
    png_path = json_path.with_suffix(".png")
    plot(results, png_path)
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
