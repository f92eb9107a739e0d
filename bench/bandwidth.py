#!/usr/bin/env python3
"""Bandwidth limits with live pushes first: does a node catching up from A delay A's
live pushes, and does A keep to its upload limit?

Three `segsync run` processes on loopback:
  - A records: the bench writes a 2-second segment of ~300 KiB into A's archive every
    2 s, in real time, as a downloader does (temp name, then rename). A pushes to B.
    A runs with `--max-upload-rate LIMIT` (20 MB/s by default) and holds `--catch-up`
    GiB of older hours (written before it starts).
  - B is an archive node: it only receives A's pushes.
  - C starts empty after a while and catches up the older hours from A (its first
    backfill round starts at once).

Measured in the same run:
  - A's upload over time: bytes the receivers stored (B's received + C's pulled, from
    their /metrics) and A's limiter's own count per class (live, catch-up), every 0.5 s;
    a PNG of the curve with the limit.
  - B's push latency (rename on A -> file under its final name on B, seen by inotify
    in this process) before the catch-up (the baseline) and during it.
  - C's catch-up rate, against what the live traffic leaves of the limit.

Goals: A's upload within 5% of the limit during the catch-up; B's push p99 during the
catch-up <= 2x its p99 before and <= 100 ms; C gets >= 90% of what live leaves.
`--also-unlimited` runs the same scenario again without a limit, for comparison.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

import benchlib
from benchlib import Agent, print_table, summary_ms
from push_latency import Arrivals, watch

from protocol.hashing import encode_hash  # noqa: E402  (benchlib puts the repo on sys.path)
from protocol.names import format_hour  # noqa: E402

MB = 1_000_000
SEGMENT_SECONDS = 2.0
SAMPLE_EVERY = 0.5


# ---- the archive A holds ----

def segment(data: bytes, when: dt.datetime, channel: str, quality: str) -> str:
    digest = encode_hash(hashlib.sha256(data).digest())
    return f"{channel}/{quality}/{format_hour(when)}/{when:%M:%S.%f}-2.0-full-{digest}.ts"


def write_old_hours(root: Path, total: int, size: int) -> tuple[int, int]:
    """`total` bytes of 2-second segments starting 30 hours ago; (segments, bytes)."""
    base = bytearray(os.urandom(size))
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=30)).replace(
        minute=0, second=0, microsecond=0)
    count = max(1, total // size)
    made = set()
    for i in range(count):
        base[:8] = i.to_bytes(8, "big")
        data = bytes(base)
        rel = segment(data, start + dt.timedelta(seconds=SEGMENT_SECONDS * i), "bench",
                      "source")
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(data)
    return count, count * size


class Recorder(threading.Thread):
    """Writes a live segment into A every 2 s (temp name, then rename), and tells the
    arrivals watcher to expect it on B."""

    def __init__(self, root: Path, size: int, arrivals: Arrivals) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.size = size
        self.arrivals = arrivals
        self.fired: list[float] = []  # monotonic time of each rename
        self.stop = threading.Event()

    def run(self) -> None:
        base = bytearray(os.urandom(self.size))
        started = time.monotonic()
        i = 0
        while not self.stop.is_set():
            base[:8] = (10**9 + i).to_bytes(8, "big")
            data = bytes(base)
            rel = segment(data, dt.datetime.now(dt.timezone.utc), "bench", "live")
            final = self.root / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            temp = final.with_name(final.name.replace("-full-", "-temp-"))
            with open(temp, "wb") as f:
                f.write(data)
            self.arrivals.expect(i, rel)
            self.fired.append(time.monotonic())
            os.rename(temp, final)
            i += 1
            self.stop.wait(max(0.0, started + i * SEGMENT_SECONDS - time.monotonic()))


# ---- what the agents say ----

def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Sampler(threading.Thread):
    """Every 0.5 s: A's limiter counts per class, B's received and C's pulled bytes."""

    def __init__(self, a: Agent, b: Agent, c: Agent) -> None:
        super().__init__(daemon=True)
        self.agents = (a, b, c)
        self.points: list[dict] = []
        self.stop = threading.Event()
        self.c_running = False

    def run(self) -> None:
        a, b, c = self.agents
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                sa, sb = scrape(a.url), scrape(b.url)
                sc = scrape(c.url) if self.c_running else {}
            except httpx.HTTPError:
                sa = sb = sc = None
            if sa is not None:
                self.points.append({
                    "t": t,
                    "live": get(sa, "segsync_bandwidth_bytes_total", direction="upload",
                                **{"class": "live"}),
                    "catchup": get(sa, "segsync_bandwidth_bytes_total", direction="upload",
                                   **{"class": "catchup"}),
                    "live_waited": get(sa, "segsync_bandwidth_wait_seconds_total",
                                       direction="upload", **{"class": "live"}),
                    "catchup_waited": get(sa, "segsync_bandwidth_wait_seconds_total",
                                          direction="upload", **{"class": "catchup"}),
                    "b_received": get(sb, "segsync_bytes_total", direction="received"),
                    "c_pulled": get(sc, "segsync_bytes_total", direction="pulled"),
                })
            self.stop.wait(max(0.0, t + SAMPLE_EVERY - time.monotonic()))

    def latest(self, key: str) -> float:
        return self.points[-1][key] if self.points else 0.0


def rate_between(points: list[dict], key: str, t0: float, t1: float) -> float:
    """Bytes per second of counter `key` between the samples nearest t0 and t1."""
    inside = [p for p in points if t0 <= p["t"] <= t1]
    if len(inside) < 2:
        return float("nan")
    first, last = inside[0], inside[-1]
    return (last[key] - first[key]) / (last["t"] - first["t"])


def waited(points: list[dict], key: str, t0: float, t1: float) -> float:
    inside = [p for p in points if t0 <= p["t"] <= t1 + SAMPLE_EVERY]
    return inside[-1][key] - inside[0][key] if len(inside) >= 2 else float("nan")


def series(points: list[dict], keys: tuple[str, ...], span: int = 1
           ) -> list[tuple[float, float]]:
    """(time, bytes/s) of the sum of `keys` over the last `span` sample intervals (the
    receivers count a segment when it is stored: a longer span smooths that)."""
    out = []
    for p, q in zip(points, points[span:]):
        dt_ = q["t"] - p["t"]
        if dt_ > 0:
            out.append((q["t"], sum(q[k] - p[k] for k in keys) / dt_))
    return out


# ---- one scenario ----

def scenario(base: Path, a_root: Path, old: tuple[int, int], limit: float, size: int,
             before: float, log_level: str, timeout: float) -> dict:
    """A (holding the old hours, limit `limit` MB/s, 0: none) pushes live to B; C
    catches up after `before` seconds."""
    b_root, c_root = base / "B", base / "C"
    for root in (b_root, c_root):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    pa, pb, pc = benchlib.free_ports(3)
    conf = base / "bench.toml"  # the scrub would re-hash A's archive meanwhile: off
    conf.write_text("scrub = false\n")
    common = ["--log-level", log_level, "--backfill-interval", "3600",
              "--backfill-hours", "48", "--config", str(conf)]
    url = lambda p: f"http://127.0.0.1:{p}"  # noqa: E731
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    a = Agent("A", a_root, pa, [url(pb)], logs,
              [*common, "--max-upload-rate", str(limit)])
    b = Agent("B", b_root, pb, [], logs, common)
    c = Agent("C", c_root, pc, [url(pa)], logs, common)
    arrivals = Arrivals([b_root])
    observer = watch([b_root], arrivals)
    recorder = Recorder(a_root, size, arrivals)
    sampler = Sampler(a, b, c)
    loads = {}
    out: dict = {"limit_mb_s": limit}
    try:
        with benchlib.running([a, b]):
            sampler.start()
            recorder.start()
            time.sleep(before)
            loads["before"] = os.getloadavg()
            c_start = time.monotonic()
            c.start()
            c.wait_ready()
            sampler.c_running = True
            deadline = c_start + timeout
            while sampler.latest("c_pulled") < old[1] and time.monotonic() < deadline:
                time.sleep(0.2)
            c_end = time.monotonic()
            loads["during"] = os.getloadavg()
            time.sleep(6)  # a few live segments after the catch-up
            recorder.stop.set()
            recorder.join()
            deadline = time.monotonic() + 10
            while arrivals.outstanding() and time.monotonic() < deadline:
                time.sleep(0.05)
                arrivals.poll_outstanding()
            sampler.stop.set()
            sampler.join()
            c.stop()
    finally:
        recorder.stop.set()
        sampler.stop.set()
        c.stop()
        observer.stop()
        observer.join()
    points = sampler.points
    pulled = points[-1]["c_pulled"] if points else 0.0
    t0 = points[0]["t"] if points else 0.0
    # latencies by phase (the rename's time)
    before_lat, during_lat, missing = [], [], 0
    for i, fired in enumerate(recorder.fired):
        seen = arrivals.seen.get((i, 0))
        if seen is None:
            missing += 1
            continue
        if fired < c_start:
            before_lat.append(seen - fired)
        elif fired <= c_end:
            during_lat.append(seen - fired)
    # steady state of the catch-up: its first and last 2 s left out (start-up, tail)
    s0, s1 = c_start + 2, c_end - 2
    catch_up = rate_between(points, "c_pulled", c_start, c_end + SAMPLE_EVERY)
    stored_rate = rate_between(points, "c_pulled", s0, s1) + rate_between(
        points, "b_received", s0, s1)
    limiter_rate = rate_between(points, "live", s0, s1) + rate_between(
        points, "catchup", s0, s1)
    live_rate = rate_between(points, "live", s0, s1)
    leftover = limit * MB - live_rate if limit else float("nan")
    out.update({
        "catch_up_bytes": pulled,
        "catch_up_seconds": c_end - c_start,
        "catch_up_complete": pulled >= old[1],
        "catch_up_rate_mb_s": catch_up / MB,
        "a_upload_stored_mb_s": stored_rate / MB,
        "a_upload_limiter_mb_s": limiter_rate / MB,
        "a_live_mb_s": live_rate / MB,
        "left_by_live_mb_s": leftover / MB,
        "c_share_of_leftover": (rate_between(points, "c_pulled", s0, s1) / leftover
                                if limit else float("nan")),
        "push_before": summary_ms(before_lat),
        "push_during": summary_ms(during_lat),
        "pushes_missing": missing,
        # seconds transfers waited for A's limiter during the catch-up, per class: live
        # pushes should wait next to nothing (what they lose is CPU, not bandwidth)
        "live_waited_s": waited(points, "live_waited", c_start, c_end),
        "catchup_waited_s": waited(points, "catchup_waited", c_start, c_end),
        "live_pushes_during": len(during_lat),
        "pushes_polled": len(arrivals.polled),
        "load": loads,
        "series": {
            "t0": t0, "c_start": c_start - t0, "c_end": c_end - t0,
            "stored": [(t - t0, r / MB)
                       for t, r in series(points, ("c_pulled", "b_received"), span=4)],
            "live": [(t - t0, r / MB) for t, r in series(points, ("live",))],
            "catchup": [(t - t0, r / MB) for t, r in series(points, ("catchup",))],
        },
    })
    return out


def plot(results: list[dict], path: Path) -> None:
    plt = benchlib.pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 4 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        s = r["series"]
        for key, label in (("stored", "A's upload (stored by B and C, over 2 s)"),
                           ("catchup", "catch-up (A's limiter)"),
                           ("live", "live (A's limiter)")):
            if s[key]:
                ax.plot(*zip(*s[key]), label=label)
        if r["limit_mb_s"]:
            ax.axhline(r["limit_mb_s"], color="red", linestyle="--",
                       label=f"limit {r['limit_mb_s']:g} MB/s")
        ax.axvspan(s["c_start"], s["c_end"], color="grey", alpha=0.15, label="C catching up")
        ax.set_xlabel("seconds")
        ax.set_ylabel("MB/s (10^6 bytes)")
        ax.set_title(f"A --max-upload-rate {r['limit_mb_s'] or 'none'}: "
                     f"B push p99 before {r['push_before'].get('p99_ms', '-')} ms, "
                     f"during {r['push_during'].get('p99_ms', '-')} ms")
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    benchlib.add_common_arguments(p, "bandwidth", "0.1 GiB catch-up, 10 s before")
    p.add_argument("--limit", type=float, default=20.0, help="A's --max-upload-rate, MB/s")
    p.add_argument("--catch-up", type=float, default=1.0, help="GiB of older hours on A")
    p.add_argument("--segment-kib", type=int, default=300, help="live segment size")
    p.add_argument("--before", type=float, default=30.0,
                   help="seconds of live pushes before C starts (the baseline)")
    p.add_argument("--also-unlimited", action="store_true",
                   help="run the scenario again with no limit on A")
    args = p.parse_args()
    if args.quick:
        args.catch_up, args.before = 0.1, 10.0
    env = benchlib.environment()
    size = args.segment_kib * 1024
    limits = [args.limit] + ([0.0] if args.also_unlimited else [])
    results = []
    with benchlib.workdir(args.workdir, args.keep) as base:
        a_root = base / "A"
        a_root.mkdir(parents=True, exist_ok=True)
        print(f"writing {args.catch_up:g} GiB of older hours on A ...", flush=True)
        old = write_old_hours(a_root, int(args.catch_up * 2**30), size)
        for limit in limits:
            print(f"scenario: A --max-upload-rate {limit:g} ...", flush=True)
            # the live segments of a previous scenario go: A holds the old hours only
            shutil.rmtree(a_root / "bench" / "live", ignore_errors=True)
            results.append(scenario(base, a_root, old, limit, size, args.before,
                                    args.log_level, timeout=600))
    rows = []
    for r in results:
        pb, pd = r["push_before"], r["push_during"]
        rows.append([
            f"{r['limit_mb_s']:g}" if r["limit_mb_s"] else "none",
            r["a_upload_stored_mb_s"], r["a_upload_limiter_mb_s"], r["a_live_mb_s"],
            r["catch_up_rate_mb_s"], r["c_share_of_leftover"],
            pb.get("p50_ms", float("nan")), pb.get("p99_ms", float("nan")),
            pd.get("p50_ms", float("nan")), pd.get("p99_ms", float("nan")),
            pd.get("n", 0), r["live_waited_s"], r["pushes_missing"],
            "/".join(f"{x:.1f}" for x in r["load"].get("during", ())),
        ])
    print_table(["limit MB/s", "A up (stored)", "A up (limiter)", "live", "C catch-up",
                 "C/leftover", "push p50 before", "p99 before", "p50 during", "p99 during",
                 "n during", "live waited s", "missing", "load during"],
                rows, title="A's upload (MB/s, steady state of the catch-up); B's push "
                            "latency (ms)")
    limited = results[0]
    goals = {
        "upload_within_5pct": abs(limited["a_upload_stored_mb_s"] - args.limit)
        <= 0.05 * args.limit,
        "push_p99_during_le_2x_before": limited["push_during"].get("p99_ms", 1e9)
        <= 2 * limited["push_before"].get("p99_ms", 0),
        "push_p99_during_le_100ms": limited["push_during"].get("p99_ms", 1e9) <= 100,
        "catch_up_ge_90pct_of_leftover": limited["c_share_of_leftover"] >= 0.9,
    }
    for goal, ok in goals.items():
        print(f"{goal}: {'MET' if ok else 'MISSED'}")
    env["load_avg_at_end"] = os.getloadavg()
    print(f"load average at start {env['load_avg_at_start']}, at end {env['load_avg_at_end']}")
    png = benchlib.RESULTS / f"{args.output}.png"
    benchlib.RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, png)
    path = benchlib.write_json(f"{args.output}.json", {
        "environment": env, "catch_up_gib": args.catch_up, "old_segments": old[0],
        "segment_bytes": size, "goals": goals, "results": results})
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
