#!/usr/bin/env python3
"""Chat batches and extras files beside the segments: what they add to an in-sync
round, and how fast a fresh node catches up on extras.

1. In sync. Two `segsync run` processes hold the same archive: `--segments` tiny
   segments (default 1M; see anti_entropy_cost.py for the layout), `--chat` chat
   batches (default 20k, one per minute, in CHANNEL/chat/HOUR) and `--extras-files`
   extras files (default 50k, half in emotes/ID/dark-1.0-style paths, half in
   media/HASH/...), B's copy hard-linked to A's. B pulls from A every
   `--interval` s through a byte-counting proxy. Measured twice in the same run:
   the baseline (agents without `--extras`, chat directories moved aside; with
   `--baseline-code DIR`, also the agents of a checkout from before chat and
   extras: today's segment-only round) and with chat and `--extras emotes,media`.
   Reported per round: bytes on the wire and CPU of each process (idle subtracted).
2. Catch-up. A fresh root pulls A's extras with the one-shot
   `segsync backfill --root NEW --from A --extras emotes,media` (the whole process);
   baseline in the same run: `cp -a` of the same two directories. Reported in
   files per second.

Goals: in-sync round with chat and extras <= 4 KiB and <= 10 ms CPU per process;
catch-up of small extras files >= 1000 files/s.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anti_entropy_cost as aec
import benchlib
from benchlib import Agent, print_table

WIRE_GOAL = 4096
CPU_GOAL_S = 0.010
CATCHUP_GOAL = 1000.0


def write_chat(root: Path, count: int, now: dt.datetime) -> int:
    """`count` chat batches (one a minute, newest hour 2 hours ago) of channel bench."""
    base = root / "bench" / "chat"
    start = now - dt.timedelta(hours=2, minutes=count)
    for i in range(count):
        when = start + dt.timedelta(minutes=i)
        data = (json.dumps({"command": "PRIVMSG", "time": when.timestamp(), "time_range": 0,
                            "params": ["#bench", f"message {i}"], "receivers": {"a": 1}},
                           separators=(",", ":"), sort_keys=True) + "\n").encode()
        h = base64.b64encode(hashlib.sha256(data).digest(), b"-_").decode().rstrip("=")
        d = base / f"{when:%Y-%m-%dT%H}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{when:%M:%S}-{h}.json").write_bytes(data)
    return count


def write_extras(root: Path, count: int) -> int:
    half = count // 2
    for i in range(half):
        d = root / "emotes" / f"emotesv2_{i:08x}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "dark-1.0").write_bytes(i.to_bytes(8, "big") * 40)  # 320 bytes
    for i in range(count - half):
        key = hashlib.sha256(str(i).encode()).hexdigest()
        d = root / "media" / key[:2]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{key}.metadata.json").write_text(json.dumps({"url": f"https://x/{i}",
                                                             "fetched_by": "a"}))
    return count


def build(base: Path, args) -> dict:
    info = aec.build(base, args.segments, args)  # a/ and b/ with the segments
    marker = base / "filesets.json"
    key = {"chat": args.chat, "extras": args.extras_files, "segments_key": info["key"]}
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return {**info, "filesets": "reused"}
    a, b = base / "a", base / "b"
    for d in ("emotes", "media"):
        for r in (a, b):
            shutil.rmtree(r / d, ignore_errors=True)
    for r in (a, b):
        shutil.rmtree(r / "bench" / "chat", ignore_errors=True)
    now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    started = time.monotonic()
    write_chat(a, args.chat, now)
    write_extras(a, args.extras_files)
    for d in ("emotes", "media"):
        aec.link_tree(str(a / d), str(b / d))
    aec.link_tree(str(a / "bench" / "chat"), str(b / "bench" / "chat"))
    os.sync()
    marker.write_text(json.dumps({"key": key}))
    return {**info, "filesets": f"written in {time.monotonic() - started:.1f}s"}


def hide_chat(base: Path, hide: bool) -> None:
    """The baseline has no chat: move the chat directories out of both roots and back."""
    for r in ("a", "b"):
        src, dst = base / r / "bench" / "chat", base / f"{r}-chat-aside"
        if hide and src.exists():
            src.rename(dst)
        elif not hide and dst.exists():
            dst.rename(src)


def in_sync(base: Path, args, with_filesets: bool, code: str | None = None) -> dict:
    """One in-sync measurement; `code`: a checkout whose agent runs instead (the
    baseline of today's segment-only code)."""
    hide_chat(base, not with_filesets)
    saved = os.environ.get("SEGSYNC_BENCH_WRAP")
    if code:
        os.environ["SEGSYNC_BENCH_WRAP"] = f"env PYTHONPATH={code} {sys.executable}"
    try:
        return _in_sync(base, args, with_filesets)
    finally:
        if saved is None:
            os.environ.pop("SEGSYNC_BENCH_WRAP", None)
        else:
            os.environ["SEGSYNC_BENCH_WRAP"] = saved


def _in_sync(base: Path, args, with_filesets: bool) -> dict:
    extra = ["--extras", "emotes,media"] if with_filesets else []
    common = ["--log-level", args.log_level, "--backfill-hours", str(args.backfill_hours)]
    port_a, port_b = benchlib.free_ports(2)
    tag = ("with" if with_filesets else "base") + ("-old" if os.environ.get(
        "SEGSYNC_BENCH_WRAP") else "")
    a = Agent(f"a-{tag}", base / "a", port_a, [], base,
              common + extra + ["--backfill-interval", "3600"])
    out: dict = {}
    with benchlib.running([a], ready_timeout=args.ready_timeout):
        aec.settle(a)
        out["a_idle_cpu_per_s"] = idle = aec.idle_rate(a, args.idle_seconds)
        proxy = aec.CountingProxy(port_a)
        b = Agent(f"b-{tag}", base / "b", port_b, [proxy.url], base,
                  common + extra + ["--backfill-interval", str(args.interval)])
        try:
            with benchlib.running([b], ready_timeout=args.ready_timeout):
                aec.settle(b)
                proxy.take()
                ca0, cb0, t0 = a.cpu_seconds(), b.cpu_seconds(), time.monotonic()
                time.sleep(args.window)
                ca1, cb1, t1 = a.cpu_seconds(), b.cpu_seconds(), time.monotonic()
                time.sleep(aec.ROUND_GAP * 2)
                log = proxy.take()
        finally:
            proxy.close()
    rounds = [r for r in aec.rounds_from(log) if r["first"] <= t1]
    n = len(rounds)
    if not n:
        raise RuntimeError(f"no round seen; see {b.log_path}")
    window = t1 - t0
    out.update(rounds=n, wire_bytes_per_round=sum(r["up"] + r["down"] for r in rounds) / n,
               cpu_a_per_round=max(0.0, (ca1 - ca0 - idle * window) / n),
               cpu_b_per_round=max(0.0, (cb1 - cb0 - idle * window) / n))
    return out


def catch_up(base: Path, args) -> dict:
    src = base / "a"
    port = benchlib.free_ports(1)[0]
    a = Agent("a-serve", src, port, [], base, ["--log-level", args.log_level,
                                               "--backfill-interval", "3600",
                                               "--extras", "emotes,media"])
    out: dict = {}
    with benchlib.running([a], ready_timeout=args.ready_timeout):
        aec.settle(a)
        for attempt in range(args.repeat):
            fresh = base / f"fresh{attempt}"
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir()
            os.sync()
            started = time.monotonic()
            proc = subprocess.run(benchlib.segsync_command(
                "backfill", "--root", str(fresh), "--from", a.url, "--extras", "emotes,media",
                "--backfill-hours", "1", "--log-level", args.log_level),
                capture_output=True, text=True)
            took = time.monotonic() - started
            if proc.returncode != 0:
                raise RuntimeError(f"backfill failed: {proc.stderr[-2000:]}")
            got = sum(len(f) for d in ("emotes", "media")
                      for _, _, f in os.walk(fresh / d))
            if got != args.extras_files:
                raise RuntimeError(f"caught up {got} of {args.extras_files} extras files")
            out.setdefault("segsync_s", []).append(took)
            shutil.rmtree(fresh)
            copy = base / f"copy{attempt}"
            copy.mkdir()
            os.sync()
            started = time.monotonic()
            for d in ("emotes", "media"):
                subprocess.run(["cp", "-a", str(src / d), str(copy / d)], check=True)
            out.setdefault("cp_s", []).append(time.monotonic() - started)
            shutil.rmtree(copy)
    best = min(out["segsync_s"])
    out["files_per_s"] = args.extras_files / best
    out["cp_files_per_s"] = args.extras_files / min(out["cp_s"])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--segments", type=int, default=1_000_000)
    p.add_argument("--chat", type=int, default=20_000)
    p.add_argument("--extras-files", type=int, default=50_000)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--per-hour", type=int, default=1800)
    p.add_argument("--backfill-hours", type=int, default=24 * 30)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--idle-seconds", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--build-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ready-timeout", type=float, default=900.0)
    p.add_argument("--archive-cache", help="keep the built archive here and reuse it")
    p.add_argument("--baseline-code", metavar="DIR",
                   help="a checkout of the code before chat and extras (e.g. `git archive` "
                        "of main before issue 19): its agents give a third row, today's "
                        "segment-only round")
    benchlib.add_common_arguments(p, "chat_extras", "10k segments, 500 chat, 2k extras")
    args = p.parse_args()
    if args.quick:
        args.segments, args.chat, args.extras_files = 10_000, 500, 2_000
        args.window, args.idle_seconds, args.repeat = 4.0, 1.0, 1
    env = benchlib.environment()
    print(f"chat and extras: {args.segments} segments, {args.chat} chat batches, "
          f"{args.extras_files} extras files; load average {env['load_avg_at_start']}")
    results: dict = {"config": vars(args), "environment": env}
    with benchlib.workdir(args.workdir, args.keep) as work:
        base = Path(args.archive_cache) if args.archive_cache else work / "archive"
        base.mkdir(parents=True, exist_ok=True)
        results["archive"] = build(base, args)
        print(f"  archive: {results['archive']}")
        if args.baseline_code:
            results["baseline_old_code"] = in_sync(base, args, with_filesets=False,
                                                   code=args.baseline_code)
        results["baseline"] = in_sync(base, args, with_filesets=False)
        results["with_filesets"] = in_sync(base, args, with_filesets=True)
        hide_chat(base, False)
        results["catch_up"] = catch_up(base, args)
    measured = [("segments only, code before chat/extras", results.get("baseline_old_code")),
                ("segments only (no chat, no --extras)", results["baseline"]),
                ("+ chat + extras", results["with_filesets"])]
    rows = [[name, r["rounds"], round(r["wire_bytes_per_round"]),
             1000 * r["cpu_b_per_round"], 1000 * r["cpu_a_per_round"]]
            for name, r in measured if r is not None]
    print_table(["in-sync round", "rounds", "wire B", "CPU puller ms", "CPU served ms"], rows,
                title="in-sync round, per peer (idle CPU subtracted)")
    c = results["catch_up"]
    print_table(["catch-up of extras", "best s", "files/s"], [
        ["segsync backfill (one-shot)", min(c["segsync_s"]), c["files_per_s"]],
        ["cp -a (baseline)", min(c["cp_s"]), c["cp_files_per_s"]]])
    w = results["with_filesets"]
    cpu = max(w["cpu_a_per_round"], w["cpu_b_per_round"])
    goals = {"wire_bytes": w["wire_bytes_per_round"], "wire_met": w["wire_bytes_per_round"] <= WIRE_GOAL,
             "cpu_s": cpu, "cpu_met": cpu <= CPU_GOAL_S, "catch_up_files_per_s": c["files_per_s"],
             "catch_up_met": c["files_per_s"] >= CATCHUP_GOAL}
    results["goals"] = goals
    print(f"\ngoals: wire {goals['wire_bytes']:.0f} B (<= {WIRE_GOAL}: "
          f"{'MET' if goals['wire_met'] else 'MISSED'}), CPU {1000 * cpu:.1f} ms (<= "
          f"{1000 * CPU_GOAL_S:.0f}: {'MET' if goals['cpu_met'] else 'MISSED'}), catch-up "
          f"{c['files_per_s']:.0f} files/s (>= {CATCHUP_GOAL:.0f}: "
          f"{'MET' if goals['catch_up_met'] else 'MISSED'})")
    print(f"wrote {benchlib.write_json(f'{args.output}.json', results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
