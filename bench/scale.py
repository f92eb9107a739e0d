#!/usr/bin/env python3
"""Scale: start-up, memory and an in-sync round on a big archive, persistent index
against the in-memory design, on the same archive in the same run.

The archive: `--segments` tiny segments (8 bytes, named by their real SHA-256) in
`--pairs` (channel, quality) pairs of `--per-hour` segments an hour (the layout of
bench/anti_entropy_cost.py, which builds it: A's tree and B's hard-linked copy), all
inside the backfill range. For each design (this checkout; `--baseline DIR`, a
checkout of the code before the persistent index):

  - cold start: A from spawn to /healthz with no ROOT/.segsync/ (a full scan);
  - warm start: A stopped with SIGTERM and started again (the persistent index
    is read; the in-memory design scans again), the median of `--warm-repeats`
    (3) when under 5 s (the same for B's warm start); beside it, the process start-up
    (spawning the interpreter and importing the agent, which no archive size
    changes: the median of 5 runs in the same environment), the index's own phases
    and the time the watches took to set (both from A's /metrics, persistent design);
  - warm start, index uncached: A's warm start with the index's pages dropped from
    the page cache first (posix_fadvise), as on a node whose archive reads pushed
    them out: the start then reads its rows from disk;
  - an in-sync round: B (started cold, then warm) pulls from A every
    `--interval` s through a byte-counting proxy; bytes on the wire and CPU of A
    and B per round (idle CPU subtracted), and both RSS after the rounds;
  - time to list one cold hour: GET /files/CHANNEL/QUALITY/OLDEST_HOUR on A (the
    first request loads it from the index; the second is served from memory);
  - the persistent index's size on disk.

Goals at 2M segments: warm start <= 2 s, RSS <= 100 MB, in-sync round <= 4 KiB,
cold start no slower than the in-memory design's; at 5M, RSS and warm start within
20% of the 2M figures (run it twice and compare the JSON files).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

import benchlib
from anti_entropy_cost import CountingProxy, ROUND_GAP, build, rounds_from, settle
from benchlib import Agent, print_table

WARM_GOAL_S = 2.0
RSS_GOAL = 100 * 10**6
WIRE_GOAL = 4096
REPEAT_BELOW_S = 5.0  # warm starts quicker than this are repeated (`--warm-repeats`)


class CheckoutAgent(Agent):
    """An agent run from a given checkout (its own `agent` package first on the path)."""

    def __init__(self, checkout: Path | None, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.checkout = checkout
        if checkout is not None:
            run_args = self.args[self.args.index("run"):]
            self.args = [sys.executable, "-c",
                         "import sys; from agent.commands.cli import main; sys.exit(main())",
                         *run_args]

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cwd = self.checkout or benchlib.REPO
        env = dict(os.environ)
        if self.checkout is not None:
            env["PYTHONPATH"] = str(self.checkout)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=cwd, env=env)


def reuse(base: Path, args) -> dict | None:
    """A cached archive of this size and shape, even if built in an earlier hour (its
    hours then lie a little further back: the backfill range has room for that)."""
    marker = base / "archive.json"
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    key = info.get("key", {})
    if (key.get("count"), key.get("pairs"), key.get("per_hour")) != (
            args.segments, args.pairs, args.per_hour):
        return None
    info["reused"] = True
    return info


# what `segsync run` imports before it looks at the archive (hypercorn comes in when
# it starts serving): the part of a start that no archive size changes
IMPORTS = ("import agent.node, agent.commands.cli, hypercorn.config, "
           "agent.serve.httpserver")


def process_startup(checkout: Path | None, runs: int = 5) -> float:
    """Median seconds to spawn the interpreter and import the agent (same environment
    as the agents: PYTHONDONTWRITEBYTECODE, if set, makes every start compile)."""
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=env,
                       cwd=checkout or benchlib.REPO)
        times.append(time.monotonic() - t0)
    return sorted(times)[len(times) // 2]


def start_phases(agent: Agent, timeout: float = 60.0) -> tuple[float | None, float | None]:
    """From the agent's /metrics: its index start's phases (seconds, summed) and how
    long its watches took to set, once they are (None, None: not reported, e.g. by
    the in-memory design)."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(f"{agent.url}/metrics", timeout=10).text
        phases = {}
        for line in text.splitlines():
            if line.startswith('segsync_index_start_phase_seconds{phase="'):
                name = line.split('"')[1]
                phases[name] = float(line.rsplit(" ", 1)[1])
        if not phases:
            return None, None
        if "watch" in phases or time.monotonic() > deadline:
            watches = phases.pop("watch", None)
            return sum(phases.values()), watches
        time.sleep(0.05)


def warm_start(agent: Agent, args) -> tuple[float, float | None, float | None, list[float]]:
    """Warm starts of a stopped agent: the median of `--warm-repeats` when the first
    is quick (sub-second figures move by a tenth with the machine's load; a full scan
    is measured once). Returns it, the median index and watch times, and the samples;
    the agent is left running."""
    samples, index, watches = [], [], []
    while True:
        samples.append(timed_start(agent, args.ready_timeout))
        i, w = start_phases(agent)
        index += [i] if i is not None else []
        watches += [w] if w is not None else []
        if len(samples) >= args.warm_repeats or samples[0] > REPEAT_BELOW_S:
            break
        settle(agent)
        agent.stop(60)
    return _median(samples), _median(index), _median(watches), samples


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def drop_index(root: Path) -> None:
    shutil.rmtree(root / ".segsync", ignore_errors=True)


def index_bytes(root: Path) -> int:
    d = root / ".segsync"
    return sum(p.stat().st_size for p in d.glob("index.sqlite3*")) if d.exists() else 0


def timed_start(agent: Agent, timeout: float) -> float:
    started = time.monotonic()
    agent.start()
    agent.wait_ready(timeout)
    return time.monotonic() - started


def list_cold_hour(agent: Agent, channel: str, quality: str) -> tuple[float, float, int]:
    """(first, second) latency of GET /files for the pair's oldest hour, and its size."""
    hours = httpx.get(f"{agent.url}/files/{channel}/{quality}", timeout=60).json()
    url = f"{agent.url}/files/{channel}/{quality}/{hours[0]}?tombstones=true"
    t0 = time.monotonic()
    first = httpx.get(url, timeout=60)
    t1 = time.monotonic()
    second = httpx.get(url, timeout=60)
    t2 = time.monotonic()
    assert first.json() == second.json()
    return t1 - t0, t2 - t1, len(first.json())


def measure_design(name: str, checkout: Path | None, base: Path, archive: dict, args) -> dict:
    a_root, b_root = base / "a", base / "b"
    for root in (a_root, b_root):
        drop_index(root)
    port_a, port_b = benchlib.free_ports(2)
    hours_needed = archive["hours"] + 24  # room for an archive built hours ago
    logs = base / f"logs-{name}"
    logs.mkdir(exist_ok=True)
    config = logs / "agent.toml"
    config.write_text("scrub = false\n")  # a scrub pass would read every hour
    common = ["--log-level", args.log_level, "--backfill-hours", str(hours_needed),
              "--config", str(config)]
    out: dict = {"design": name}
    a = CheckoutAgent(checkout, f"a-{name}", a_root, port_a, [], logs,
                      common + ["--backfill-interval", "3600"])
    out["cold_start_s"] = timed_start(a, args.ready_timeout)
    settle(a)
    out["rss_a_after_cold_start"] = a.rss_bytes()
    a.stop(60)
    (out["warm_start_s"], out["warm_index_s"], out["warm_watches_s"],
     out["warm_start_samples"]) = warm_start(a, args)
    try:
        out["a_settle_s"] = settle(a)
        out["a_idle_cpu_per_s"] = idle = _idle_rate(a, args.idle_seconds)
        proxy = CountingProxy(port_a)
        b = CheckoutAgent(checkout, f"b-{name}", b_root, port_b, [proxy.url], logs,
                          common + ["--backfill-interval", str(args.interval)])
        try:
            out["b_cold_start_s"] = timed_start(b, args.ready_timeout)
            settle(b)
            b.stop(60)
            out["b_warm_start_s"], _, _, out["b_warm_start_samples"] = warm_start(b, args)
            settle(b)
            proxy.take()
            cpu_a0, cpu_b0, t0 = a.cpu_seconds(), b.cpu_seconds(), time.monotonic()
            time.sleep(args.window)
            cpu_a1, cpu_b1, t1 = a.cpu_seconds(), b.cpu_seconds(), time.monotonic()
            time.sleep(ROUND_GAP * 2)
            log = proxy.take()
            out["rss_a"] = a.rss_bytes()
            out["rss_b"] = b.rss_bytes()
        finally:
            b.stop(60)
            proxy.close()
        rounds = [r for r in rounds_from(log) if r["first"] <= t1]
        n = max(1, len(rounds))
        window = t1 - t0
        out["rounds"] = len(rounds)
        out["wire_bytes_per_round"] = sum(r["up"] + r["down"] for r in rounds) / n
        out["cpu_a_per_round"] = max(0.0, (cpu_a1 - cpu_a0 - idle * window) / n)
        out["cpu_b_per_round"] = max(0.0, (cpu_b1 - cpu_b0 - idle * window) / n)
        first, second, count = list_cold_hour(a, "bench", "q0")
        out["cold_hour_list_s"], out["hot_hour_list_s"], out["cold_hour_names"] = \
            first, second, count
        out["rss_a_after_listing"] = a.rss_bytes()
    finally:
        a.stop(60)
    out["index_bytes"] = index_bytes(a_root)
    out["warm_uncached_s"], out["warm_uncached_samples"] = uncached_warm_start(a, args)
    return out


def evict_index(root: Path) -> bool:
    """Drop the index's pages from the page cache (posix_fadvise DONTNEED, which
    needs no privilege): what a node sees when the archive's own reads pushed them
    out. False when there is no index (the in-memory design)."""
    files = sorted((root / ".segsync").glob("index.sqlite3*"))
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return bool(files)


def uncached_warm_start(agent: Agent, args) -> tuple[float | None, list[float]]:
    """Warm starts with the index evicted before each (the median of
    `--warm-repeats`); (None, []) without an index."""
    samples: list[float] = []
    for _ in range(args.warm_repeats):
        if not evict_index(agent.root):
            return None, []
        samples.append(timed_start(agent, args.ready_timeout))
        settle(agent)
        agent.stop(60)
    return _median(samples), samples


def _opt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


def _idle_rate(agent: Agent, seconds: float) -> float:
    c0, t0 = agent.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (agent.cpu_seconds() - c0) / (time.monotonic() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--segments", type=int, default=2_000_000)
    p.add_argument("--pairs", type=int, default=3, help="(channel, quality) pairs (default 3)")
    p.add_argument("--per-hour", type=int, default=1800)
    p.add_argument("--baseline", help="checkout of the in-memory design (e.g. a git "
                   "worktree of main before the persistent index); omitted: not measured")
    p.add_argument("--baseline-label", default="in-memory",
                   help="the baseline's name in the table (default in-memory)")
    p.add_argument("--warm-repeats", type=int, default=3,
                   help="warm starts under 5 s: the median of this many (default 3)")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--idle-seconds", type=float, default=3.0)
    p.add_argument("--build-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ready-timeout", type=float, default=1800.0)
    p.add_argument("--archive-cache", help="keep the built archive here and reuse it")
    benchlib.add_common_arguments(p, "scale", "20k segments")
    args = p.parse_args()
    if args.quick:
        args.segments, args.window, args.idle_seconds = 20_000, 5.0, 1.0
    env = benchlib.environment()
    hours = math.ceil(args.segments / (args.pairs * args.per_hour))
    print(f"scale: {args.segments} segments, {args.pairs} pairs x {args.per_hour}/hour "
          f"({hours} hours); load average {env['load_avg_at_start']}")
    results: dict = {"config": vars(args), "environment": env, "designs": []}
    with benchlib.workdir(args.workdir, args.keep) as work:
        base = Path(args.archive_cache) if args.archive_cache else work
        base.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        archive = reuse(base, args) or build(base, args.segments, args)
        archive["build_s"] = time.monotonic() - started
        results["archive"] = archive
        print(f"  archive: {archive['hour_dirs']} hour directories, "
              + ("reused" if archive["reused"] else f"built in {archive['build_s']:.0f}s"))
        designs = [("persistent", None)]
        if args.baseline:
            designs.append((args.baseline_label, Path(args.baseline).resolve()))
        for name, checkout in designs:
            r = measure_design(name, checkout, base, archive, args)
            r["process_startup_s"] = process_startup(checkout)
            results["designs"].append(r)
            print(f"  {name}: cold {r['cold_start_s']:.1f}s (B {r['b_cold_start_s']:.1f}s), "
                  f"warm {r['warm_start_s']:.2f}s (B {r['b_warm_start_s']:.2f}s; process "
                  f"start-up {r['process_startup_s']:.2f}s, index "
                  f"{_opt(r['warm_index_s'])}, watches {_opt(r['warm_watches_s'])} beside), "
                  f"RSS A {r['rss_a'] / 1e6:.0f} MB, B {r['rss_b'] / 1e6:.0f} MB, "
                  f"{r['wire_bytes_per_round']:.0f} B/round")
        results["environment"]["load_avg_at_end"] = os.getloadavg()
    rows = [[r["design"], r["cold_start_s"], r["b_cold_start_s"], r["warm_start_s"],
             r["b_warm_start_s"], _opt(r["warm_uncached_s"]), r["process_startup_s"],
             r["warm_start_s"] - r["process_startup_s"], _opt(r["warm_index_s"]),
             _opt(r["warm_watches_s"]), r["rss_a"] / 1e6, r["rss_b"] / 1e6,
             round(r["wire_bytes_per_round"]),
             1000 * r["cpu_a_per_round"], 1000 * r["cpu_b_per_round"],
             1000 * r["cold_hour_list_s"], 1000 * r["hot_hour_list_s"],
             r["index_bytes"] / 1e6] for r in results["designs"]]
    print_table(["design", "cold A s", "cold B s", "warm A s", "warm B s",
                 "warm A, index uncached", "process start-up s", "warm A - start-up s", "index s", "watches s",
                 "RSS A MB", "RSS B MB", "round B", "CPU A ms", "CPU B ms",
                 "cold hour ms", "hot hour ms", "index MB"], rows,
                title=f"{args.segments} segments ({archive['hour_dirs']} hour directories); "
                      "RSS after in-sync rounds; CPU per round, idle subtracted")
    new = results["designs"][0]
    goals = {"warm_start_s": (new["warm_start_s"], WARM_GOAL_S),
             "rss_a": (new["rss_a"], RSS_GOAL), "rss_b": (new["rss_b"], RSS_GOAL),
             "wire_bytes_per_round": (new["wire_bytes_per_round"], WIRE_GOAL)}
    if len(results["designs"]) > 1:
        goals["cold_start_s"] = (new["cold_start_s"], results["designs"][1]["cold_start_s"])
        goals["b_cold_start_s"] = (new["b_cold_start_s"],
                                   results["designs"][1]["b_cold_start_s"])
    results["goals"] = {k: {"value": v, "goal": g, "met": v <= g} for k, (v, g) in goals.items()}
    for k, (v, g) in goals.items():
        print(f"  goal {k}: {v:.3g} <= {g:.3g}: {'met' if v <= g else 'NOT met'}")
    path = benchlib.write_json(f"{args.output}-{args.segments}.json", results)
    print(f"  results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
