#!/usr/bin/env python3
"""Scrub: throughput at full speed against sha256sum, and what a default-rate scrub
costs the push latency of a recording node.

1. Throughput. An archive of `--files` segments of `--size` bytes (real names and
   hashes). `segsync scrub --root ROOT` (the one-shot, full speed, a separate
   process) and `sha256sum` over the same files alternate `--repeat` times, page
   cache warm for both (an untimed read first). Reported: MB/s (10^6 B/s) of the
   scrub pass (from its summary line) and of the whole process, CPU seconds per GB
   (the whole process, start-up included), and the same for sha256sum (and for
   `openssl dgst -sha256`, the SHA-256 Python's hashlib uses, when installed).
   Goal: scrub pass >= 0.8 x sha256sum.
2. Push latency under scrub. Two `segsync run` agents, A (recording) pushing to B,
   both holding the archive above (hard links). 2 MiB segments are renamed into A
   at `--rate`/s for `--duration` s; latency is the time until each is on B (seen
   with inotify, as bench/push_latency.py does). Waves alternate: agents with the
   scrub off (`scrub = false`), agents scrubbing at the default rate from their
   start (`scrub-start-delay = 0`). Goal: p99 with scrub <= 1.1 x p99 without.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

import httpx

import benchlib
from benchlib import Agent, print_table, segsync_command, summary_ms
from push_latency import Payloads, timed_wave

from protocol.hashing import encode_hash  # noqa: E402  (benchlib puts the repo on sys.path)
from protocol.names import format_hour  # noqa: E402

THROUGHPUT_GOAL = 0.8
LATENCY_GOAL = 1.1
SUMMARY = re.compile(r"checked (\d+) files, ([\d.]+) MiB in ([\d.]+)s")


def build_archive(root: Path, files: int, size: int) -> list[Path]:
    """`files` segments of `size` random bytes, one every 2 s from 6 hours ago."""
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=6)).replace(
        minute=0, second=0, microsecond=0)
    base = bytearray(os.urandom(size))
    paths = []
    for i in range(files):
        base[:8] = i.to_bytes(8, "big")
        data = bytes(base)
        when = start + dt.timedelta(seconds=2 * i)
        rel = (f"archive/source/{format_hour(when)}/{when:%M:%S.%f}-2.0-full-"
               f"{encode_hash(hashlib.sha256(data).digest())}.ts")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of one child process."""
    cpu0, t0 = children_cpu(), time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=benchlib.REPO)
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, cpu, done.stdout


def throughput(args, root: Path, paths: list[Path]) -> dict:
    total = sum(p.stat().st_size for p in paths)
    sha_cmd = ["sha256sum", *map(str, paths)]
    scrub_cmd = segsync_command("scrub", "--root", str(root), "--log-level", "WARNING")
    # a second baseline: OpenSSL's SHA-256 (which Python's hashlib uses too) where
    # coreutils' own may not use the CPU's SHA instructions
    openssl_cmd = ["openssl", "dgst", "-sha256", *map(str, paths)] if shutil.which(
        "openssl") else None
    timed(sha_cmd)  # warm the page cache, untimed
    runs: dict[str, list] = {"sha256sum": [], "scrub": [], "openssl": []}
    for _ in range(args.repeat):
        for label, cmd in (("sha256sum", sha_cmd), ("openssl", openssl_cmd)):
            if cmd is None:
                continue
            subprocess.run(["sync"])
            wall, cpu, _ = timed(cmd)
            runs[label].append({"wall_s": wall, "cpu_s": cpu, "mb_s": total / 1e6 / wall})
        subprocess.run(["sync"])
        wall, cpu, out = timed(scrub_cmd)
        m = SUMMARY.search(out)
        if not m or int(m.group(1)) != len(paths):
            raise RuntimeError(f"scrub did not check every file: {out}")
        pass_s = float(m.group(3))
        runs["scrub"].append({"wall_s": wall, "cpu_s": cpu, "pass_s": pass_s,
                              "mb_s": total / 1e6 / wall, "pass_mb_s": total / 1e6 / pass_s})
    best = {k: max(v, key=lambda r: r["mb_s"]) for k, v in runs.items() if v}
    best_pass = max(r["pass_mb_s"] for r in runs["scrub"])
    ratio = best_pass / best["sha256sum"]["mb_s"]
    return {"bytes": total, "files": len(paths), "runs": runs, "best_pass_mb_s": best_pass,
            "best_process_mb_s": best["scrub"]["mb_s"],
            "sha256sum_mb_s": best["sha256sum"]["mb_s"],
            "scrub_cpu_s_per_gb": min(r["cpu_s"] for r in runs["scrub"]) / (total / 1e9),
            "sha256sum_cpu_s_per_gb": min(r["cpu_s"] for r in runs["sha256sum"]) / (total / 1e9),
            "openssl_mb_s": best["openssl"]["mb_s"] if runs["openssl"] else None,
            "openssl_cpu_s_per_gb": min(r["cpu_s"] for r in runs["openssl"]) / (total / 1e9)
            if runs["openssl"] else None,
            "ratio_to_openssl": best_pass / best["openssl"]["mb_s"] if runs["openssl"] else None,
            "ratio": ratio, "goal_met": ratio >= THROUGHPUT_GOAL}


def link_tree(src: Path, dst: Path) -> None:
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        if rel.parts and rel.parts[0].startswith("."):
            continue
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            os.link(Path(dirpath) / f, dst / rel / f)


def scraped(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def latency_wave(args, base: Path, archive: Path, scrub: bool, payloads: Payloads, wave: int
                 ) -> dict:
    work = base / f"wave{wave}-{'scrub' if scrub else 'noscrub'}"
    roots = [work / "a", work / "b"]
    for r in roots:
        link_tree(archive, r)
    config = work / "agent.toml"
    config.write_text("scrub = true\nscrub-start-delay = 0\n" if scrub else "scrub = false\n")
    ports = benchlib.free_ports(2)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    agents = [Agent(name, root, port, [urls[1 - i]], work,
                    ["--recent-window", "120", "--backfill-interval", "3600",
                     "--log-level", args.log_level, "--config", str(config)])
              for i, (name, root, port) in enumerate(zip("ab", roots, ports))]
    items = payloads.items
    origin = roots[0]
    with benchlib.running(agents):
        time.sleep(0.5)  # the start-up backfill round (in sync: one request)
        scrubbed0, t0 = scraped(urls[0], "segsync_scrub_bytes_total"), time.monotonic()

        def prepare(i: int) -> None:
            (origin / items[i]["dir"]).mkdir(parents=True, exist_ok=True)
            with open(origin / items[i]["temp"], "wb") as f:
                f.write(items[i]["data"])

        def fire(i: int) -> float:
            t = time.monotonic()
            os.rename(origin / items[i]["temp"], origin / items[i]["final"])
            return t

        out = timed_wave(agents, roots, [it["final"] for it in items], args.rate,
                         args.timeout, prepare, fire)
        scrubbed = scraped(urls[0], "segsync_scrub_bytes_total") - scrubbed0
        out["scrub_mb_s_on_a"] = scrubbed / 1e6 / (time.monotonic() - t0)
    del out["items"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=400, help="segments in the archive (default 400)")
    p.add_argument("--size", type=int, default=2 * 2**20, help="segment bytes (default 2 MiB)")
    p.add_argument("--repeat", type=int, default=3, help="throughput runs of each (default 3)")
    p.add_argument("--rate", type=float, default=10.0, help="pushed segments/s (default 10)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per wave (default 20)")
    p.add_argument("--waves", type=int, default=2,
                   help="latency waves of each kind, alternating (default 2)")
    p.add_argument("--timeout", type=float, default=15.0)
    benchlib.add_common_arguments(p, "scrub", "100 files, 1 run, one 4 s wave of each")
    args = p.parse_args()
    if args.quick:
        args.files, args.repeat, args.duration, args.waves = 100, 1, 4.0, 1
    env = benchlib.environment()
    print(f"scrub: {args.files} segments of {args.size} bytes; push waves of "
          f"{args.duration:g} s at {args.rate:g}/s; load average {env['load_avg_at_start']}")
    results: dict = {"config": vars(args), "environment": env}
    with benchlib.workdir(args.workdir, args.keep) as base:
        archive = base / "archive"
        paths = build_archive(archive, args.files, args.size)
        tp = results["throughput"] = throughput(args, archive, paths)
        waves: dict[str, list] = {"no scrub": [], "scrub at default rate": []}
        count = max(1, round(args.rate * args.duration))
        for wave in range(args.waves):
            for scrub in (False, True):
                payloads = Payloads(count, 2 * 2**20, 2, channel=f"push{wave}{int(scrub)}")
                waves["scrub at default rate" if scrub else "no scrub"].append(
                    latency_wave(args, base, archive, scrub, payloads, wave))
        results["latency"] = waves

    print_table(["", "MB/s", "CPU s/GB"], [
        ["sha256sum", tp["sha256sum_mb_s"], tp["sha256sum_cpu_s_per_gb"]],
        ["openssl dgst -sha256", tp["openssl_mb_s"] or float("nan"),
         tp["openssl_cpu_s_per_gb"] or float("nan")],
        ["segsync scrub (pass)", tp["best_pass_mb_s"], float("nan")],
        ["segsync scrub (process)", tp["best_process_mb_s"], tp["scrub_cpu_s_per_gb"]],
    ], title=f"full-speed scrub over {tp['bytes'] / 1e6:.0f} MB, best of {args.repeat}")
    print(f"scrub pass / sha256sum = {tp['ratio']:.2f} (goal >= {THROUGHPUT_GOAL}): "
          f"{'MET' if tp['goal_met'] else 'MISSED'}"
          + (f"; / openssl = {tp['ratio_to_openssl']:.2f}" if tp["ratio_to_openssl"] else ""))

    rows = []
    p99 = {}
    for label, runs in waves.items():
        lat = [v for r in runs for v in r["latencies_s"]]
        s = summary_ms(lat)
        p99[label] = s.get("p99_ms", float("nan"))
        rows.append([label, s["n"], s.get("p50_ms"), s.get("p95_ms"), s.get("p99_ms"),
                     s.get("max_ms"), sum(r["missing"] for r in runs),
                     sum(r["scrub_mb_s_on_a"] for r in runs) / len(runs)])
    print_table(["push A -> B", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "missing",
                 "scrub MB/s on A"], rows, title="push latency of a recording node")
    ratio = p99["scrub at default rate"] / p99["no scrub"]
    met = ratio <= LATENCY_GOAL
    print(f"p99 with scrub / without = {ratio:.2f} (goal <= {LATENCY_GOAL}): "
          f"{'MET' if met else 'MISSED'}")
    results["goals"] = {"throughput_ratio": tp["ratio"], "throughput_met": tp["goal_met"],
                        "p99_ratio": ratio, "p99_met": met}
    path = benchlib.write_json(f"{args.output}.json", results)
    print(f"\nwrote {path}")
    missing = sum(r["missing"] for runs in waves.values() for r in runs)
    return 0 if not missing else 1


if __name__ == "__main__":
    raise SystemExit(main())
