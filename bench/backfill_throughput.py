#!/usr/bin/env python3
"""Backfill throughput: an empty node catches up from one peer, against `rsync -a` and
wubloader's backfiller.

One `segsync run` process serves an archive of HOURS x PER_HOUR segments of SIZE
bytes (defaults 2 x 300 x 1 MiB). An empty root then catches up with the one-shot
`segsync backfill --root EMPTY --from URL` (a real process, the way a new node
bootstraps). In the same run, copies of the same tree into other empty directories,
alternating with it (`--variants`):
- `segsync-legacy`: segsync from the stand-in of wubloader's restreamer
  (tests/legacy_standin.py: listings, then one GET per segment);
- `segsync-nohash`: segsync from a second `segsync run` that does not hash what it
  serves (a bench-only patch put on its PYTHONPATH): what serving-side hashing costs;
- `wubloader`: wubloader's own backfiller (Python, requests, gevent, 5 downloads at a
  time; it verifies the hash, does not fsync) from the same segsync node. It runs
  from a scratch venv outside the repository, installed from a wubloader source tree
  (`--wubloader-src`, a checkout or a git directory; default `$WUBLOADER_SRC`);
  skipped with a message when there is none or it cannot be installed;
- `baseline`: segsync client and server from another checkout (`--baseline DIR`,
  e.g. a worktree of main), for before/after in one run;
- `floor`: bench/copy_floor.py, the least a verified, fsynced copy does here (two
  processes on a loopback socket, reused 1 MiB buffers, SHA-256 on both sides,
  overlapped fsyncs; no HTTP, no event loop): how far segsync is from what any
  implementation could do, and how far that is from `rsync -a`;
- `rsync -a` (and `rsync -a --fsync` when this rsync has it).
All report MB/s (10^6 bytes per second) of segment bytes over wall time.

Caches: dropping the page cache needs root and would disturb the other work on this
machine, so both copies read a warm cache: the source tree is read once before the
first timed copy. Between copies `sync` flushes the previous copy's dirty pages so
that one copy does not pay for another's writeback.

Memory: on this VM, writing into the page cache costs 2-6x more when the kernel hands
out memory that was given back to the host (virtio-balloon free page reporting) than
memory freed a moment ago. Both copies are measured in two phases (`--memory`), each
giving every copy the same state; see MEMORY.

Start-up counts (the whole process is timed). Our modules are byte-compiled first, as
an installed package is: this machine sets PYTHONDONTWRITEBYTECODE, which would
otherwise make every start compile them again (about 50 ms).

Durability differs and the table says so: segsync fsyncs every file and its
directory before the file becomes visible; plain `rsync -a` does not fsync at all.
When this rsync has `--fsync`, the same tree is also copied with it, for reference.

Goals (issue 25, medians of one run): segsync >= 0.9x `rsync -a` and >= 1.0x
wubloader's backfiller from the same node; from the restreamer stand-in >= 0.8x the
speed from a segsync node.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from benchlib import Agent, print_table

from protocol.hashing import encode_hash  # noqa: E402
from protocol.names import format_hour  # noqa: E402

GOAL_RATIO = 0.9            # segsync / rsync -a
WUBLOADER_GOAL_RATIO = 1.0  # segsync / wubloader's backfiller
LEGACY_GOAL_RATIO = 0.8     # segsync from the restreamer stand-in / from a segsync node
STANDIN = benchlib.REPO / "tests" / "legacy_standin.py"
FLOOR = benchlib.REPO / "bench" / "copy_floor.py"
WUBLOADER_VENV = Path.home() / ".cache" / "segsync-bench" / "wubloader-backfiller"
# put first on a serving agent's PYTHONPATH: it counts what it serves, hashes nothing
NOHASH_PATCH = (
    "import protocol.scrub as _scrub\n"
    "def _count_only(self, chunk):\n"
    "    self._seen += len(chunk)\n"
    "_scrub.ServedBytesCheck.update = _count_only\n"
)
LABELS = {
    "segsync": "segsync backfill (one-shot)",
    "segsync-legacy": "segsync from restreamer stand-in",
    "segsync-nohash": "segsync, server not hashing",
    "baseline": "segsync baseline checkout",
    "wubloader": "wubloader backfiller",
    "floor": "floor (bench/copy_floor.py)",
    "rsync": "rsync -a",
    "rsync-fsync": "rsync -a --fsync",
}
# This VM's free memory comes in two states (virtio-balloon free page reporting: freed
# memory is handed back to the host once about 1 GiB waits, and the next write into it
# faults on the host). Page-cache writes into memory freed a moment ago run 2-2.5x as
# fast as into handed-back memory, for rsync as for segsync; which one a copy gets
# depends on what ran before it. Each phase gives every copy the same state.
MEMORY = {
    "recycled": "each copy is deleted before the next one: it writes into memory "
                "freed a moment ago (a busy node's page cache recycling itself)",
    "fresh": "every copy is kept until the phase ends: it writes into memory nothing "
             "freed recently (an idle new node); an untimed copy goes first",
}


def ensure_rsync() -> str:
    """rsync's path; installs it with apt-get when it is missing."""
    path = shutil.which("rsync")
    if path:
        return path
    print("rsync is missing: installing it with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "-q", "rsync"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "rsync"], env=env, check=True)
    path = shutil.which("rsync")
    if not path:
        raise SystemExit("could not install rsync")
    return path


def wubloader_python(src: str | None) -> str | None:
    """The python of a scratch venv with wubloader's backfiller (and its `common`)
    installed from the source tree `src` (a checkout or a git directory); None, with
    a message, when there is none or it cannot be installed."""
    if not src:
        print("wubloader backfiller: skipped (no --wubloader-src / $WUBLOADER_SRC)")
        return None
    python = WUBLOADER_VENV / "bin" / "python"
    probe = [str(python), "-c", "import backfiller.main"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(python)
    try:
        tree = WUBLOADER_VENV.parent / "wubloader-src"
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        srcp = Path(src)
        if (srcp / "backfiller" / "setup.py").exists():
            for part in ("common", "backfiller"):
                shutil.copytree(srcp / part, tree / part)
        else:  # a git directory (e.g. a bare mirror)
            archive = subprocess.run(["git", "--git-dir", src, "archive", "HEAD", "common",
                                      "backfiller"], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(WUBLOADER_VENV)],
                       check=True)
        pip = [str(WUBLOADER_VENV / "bin" / "pip"), "install", "-q"]
        # psycopg2 (imported, unused here) as the binary wheel: no compiler needed
        subprocess.run(pip + ["argh==0.29.4", "gevent", "psycogreen", "psycopg2-binary",
                              "python-dateutil", "requests", "prometheus-client",
                              "monotonic"], check=True, capture_output=True)
        subprocess.run(pip + ["--no-deps", str(tree / "common"), str(tree / "backfiller")],
                       check=True, capture_output=True)
        subprocess.run(probe, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"wubloader backfiller: skipped, could not install it from {src}: {e}")
        return None
    return str(python)


def start_standin(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(STANDIN), "--root", str(root)],
                            stdout=subprocess.PIPE, text=True, cwd=benchlib.REPO)
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def with_pythonpath(agent: Agent, path: Path) -> Agent:
    agent.args = ["env", f"PYTHONPATH={path}", *agent.args]
    return agent


def rsync_has_fsync(rsync: str) -> bool:
    out = subprocess.run([rsync, "--help"], capture_output=True, text=True).stdout
    return "--fsync" in out


def build_archive(root: Path, hours: int, per_hour: int, size: int, pairs: int) -> dict:
    """HOURS x PER_HOUR segments per (channel, quality), hours old (outside the recent window)."""
    started = time.monotonic()
    base = bytearray(os.urandom(size))
    now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    count = total = 0
    spacing = 3600 / per_hour
    for p in range(pairs):
        for h in range(hours):
            hour_start = now - dt.timedelta(hours=2 + h)
            hour = format_hour(hour_start)
            d = root / "bench" / f"q{p}" / hour
            d.mkdir(parents=True, exist_ok=True)
            for k in range(per_hour):
                base[:8] = count.to_bytes(8, "big")
                data = bytes(base)
                when = hour_start + dt.timedelta(seconds=k * spacing)
                digest = encode_hash(hashlib.sha256(data).digest())
                (d / f"{when:%M:%S.%f}-{spacing:.3f}-full-{digest}.ts").write_bytes(data)
                count += 1
                total += size
    os.sync()
    return {"segments": count, "bytes": total, "build_s": time.monotonic() - started}


def tree_files(root: Path) -> dict[str, int]:
    """Every segment file's size (not the agents' own `.segsync` state, which the
    serving agent updates while copies run)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


def warm(root: Path) -> float:
    """Read every file once so every copy starts from a warm page cache."""
    started = time.monotonic()
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(1 << 20):
                    pass
    return time.monotonic() - started


def timed(cmd: list[str], log: Path) -> dict:
    """Run a command to completion: wall time and its CPU (user + system) seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cmd": cmd, "returncode": proc.returncode, "wall_s": wall, "cpu_s": cpu}


def timed_copy(kind: str, src: Path, dst: Path, servers: dict, rsync: str, args,
               base: Path) -> dict:
    """One copy of `src` into the empty `dst`, timed. `servers`: kind -> (url, pid)."""
    dst.mkdir()
    os.sync()
    if kind in servers:
        url, pid = servers[kind]
        cpu0 = benchlib.process_cpu_seconds(pid)
        if kind == "wubloader":
            cmd = [args.wubloader_python, "-m", "backfiller", "bench", "--base-dir", str(dst),
                   "--qualities", ",".join(f"q{p}" for p in range(args.pairs)),
                   "--static-nodes", url, "--run-once", "--localhost", "bench-client",
                   "--metrics-port", str(benchlib.free_ports(1)[0])]
        else:
            cmd = benchlib.segsync_command("backfill", "--root", str(dst), "--from", url,
                                           "--log-level", args.log_level)
            if args.max_concurrency:
                cmd += ["--max-concurrency", str(args.max_concurrency)]
            if kind == "baseline":
                cmd = ["env", f"PYTHONPATH={args.baseline}", *cmd]
        r = timed(cmd, base / f"{kind}.log")
        r["server_cpu_s"] = benchlib.process_cpu_seconds(pid) - cpu0
        return r
    if kind == "floor":
        return timed([sys.executable, str(FLOOR), str(src), str(dst)], base / "floor.log")
    cmd = [rsync, "-a"] + (["--fsync"] if kind == "rsync-fsync" else []) + [
        f"{src}/", f"{dst}/"]
    return timed(cmd, base / "rsync.log")


def run(args, base: Path) -> dict:
    rsync = ensure_rsync()
    compileall.compile_dir(benchlib.REPO / "agent", quiet=1)
    compileall.compile_dir(benchlib.REPO / "protocol", quiet=1)
    src = base / "src"
    src.mkdir()
    archive = build_archive(src, args.hours, args.per_hour, args.size, args.pairs)
    print(f"archive: {archive['segments']} segments, {archive['bytes'] / 1e6:.0f} MB, "
          f"built in {archive['build_s']:.1f}s")
    expected = tree_files(src)
    results: dict = {"archive": archive, "runs": []}
    kinds = [k for k in args.variants.split(",") if k]
    unknown = set(kinds) - LABELS.keys()
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    if "wubloader" in kinds:
        args.wubloader_python = wubloader_python(args.wubloader_src)
        if args.wubloader_python is None:
            kinds.remove("wubloader")
    if "baseline" in kinds and not args.baseline:
        print("baseline: skipped (no --baseline DIR)")
        kinds.remove("baseline")
    if "rsync-fsync" in kinds and not rsync_has_fsync(rsync):
        kinds.remove("rsync-fsync")
    serve = ["--backfill-interval", "3600", "--log-level", args.log_level]
    ports = benchlib.free_ports(3)
    server = Agent("source", src, ports[0], [], base, serve)
    agents = [server]
    servers = {k: (server.url, None) for k in ("segsync", "wubloader") if k in kinds}
    if "segsync-nohash" in kinds:
        patch = base / "nohash"
        patch.mkdir()
        (patch / "sitecustomize.py").write_text(NOHASH_PATCH)
        agents.append(with_pythonpath(Agent("source-nohash", src, ports[1], [], base, serve),
                                      patch))
        servers["segsync-nohash"] = (agents[-1].url, None)
    if "baseline" in kinds:
        agents.append(with_pythonpath(Agent("source-baseline", src, ports[2], [], base,
                                            serve), Path(args.baseline)))
        servers["baseline"] = (agents[-1].url, None)
    legacy = None
    if "segsync-legacy" in kinds:
        legacy, legacy_url = start_standin(src)
        servers["segsync-legacy"] = (legacy_url, legacy.pid)
    variants = [(LABELS[k], k) for k in kinds]
    memories = list(MEMORY) if args.memory == "both" else [args.memory]
    if "fresh" in memories:
        need = archive["bytes"] * (args.repeat * len(variants) + 1) * 1.1
        if shutil.disk_usage(base).free < need:
            print(f"not enough free disk for the fresh-memory copies ({need / 1e9:.1f} GB): "
                  "skipping them")
            memories.remove("fresh")
    try:
        with benchlib.running(agents):
            pids = {a.url: a.pid for a in agents}
            servers = {k: (url, pid or pids[url]) for k, (url, pid) in servers.items()}
            copy_all(args, base, src, archive, expected, servers, rsync, variants, memories,
                     results)
    finally:
        if legacy is not None:
            legacy.terminate()
            legacy.wait(10)
            legacy.stdout.close()
    return results


def copy_all(args, base, src, archive, expected, servers, rsync, variants, memories,
             results) -> None:
    results["warm_read_s"] = warm(src)
    for memory in memories:
        print(f"{memory} memory: {MEMORY[memory]}")
        kept = []
        if memory == "fresh":  # uses up what an earlier deletion left hot, untimed
            kept.append(base / "dst-warmup")
            timed_copy("rsync", src, kept[-1], servers, rsync, args, base)
        for rep in range(args.repeat):
            for label, kind in variants:
                dst = base / f"dst-{memory}-{kind}-{rep}"
                r = timed_copy(kind, src, dst, servers, rsync, args, base)
                got = tree_files(dst)
                r.update(label=label, kind=kind, repeat=rep, memory=memory,
                         complete=got == expected,
                         mb_per_s=archive["bytes"] / 1e6 / r["wall_s"])
                results["runs"].append(r)
                print(f"  {label:30s} run {rep + 1}: {r['wall_s']:.2f}s "
                      f"{r['mb_per_s']:.0f} MB/s {'ok' if r['complete'] else 'INCOMPLETE'}")
                if memory == "recycled":
                    shutil.rmtree(dst)
                else:
                    kept.append(dst)
        for dst in kept:
            shutil.rmtree(dst)


def summarize(runs: list[dict]) -> dict:
    """Best and median MB/s per kind of copy, and the goals' ratios of medians."""
    ok = [r for r in runs if r["complete"] and r["returncode"] == 0]
    kinds = sorted({r["kind"] for r in ok})
    best = {k: max(r["mb_per_s"] for r in ok if r["kind"] == k) for k in kinds}
    median = {k: statistics.median(r["mb_per_s"] for r in ok if r["kind"] == k) for k in kinds}
    ratios = {}
    for name, (a, b), goal in GOALS:
        if {a, b} <= median.keys():
            ratio = median[a] / median[b]
            ratios[name] = {"ratio": ratio, "goal": goal,
                            "met": None if goal is None else ratio >= goal}
    return {"best_mb_per_s": best, "median_mb_per_s": median, "ratios": ratios,
            "met": all(r["met"] for r in ratios.values() if r["goal"] is not None)}


GOALS = [
    ("segsync / rsync -a", ("segsync", "rsync"), GOAL_RATIO),
    ("segsync / wubloader backfiller", ("segsync", "wubloader"), WUBLOADER_GOAL_RATIO),
    ("from restreamer stand-in / from segsync", ("segsync-legacy", "segsync"),
     LEGACY_GOAL_RATIO),
    ("server not hashing / hashing", ("segsync-nohash", "segsync"), None),
    ("segsync / baseline checkout", ("segsync", "baseline"), None),
    ("segsync / rsync -a --fsync", ("segsync", "rsync-fsync"), None),
    ("segsync / floor", ("segsync", "floor"), None),
    ("floor / rsync -a", ("floor", "rsync"), None),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=int, default=2, help="hours of archive (default 2)")
    p.add_argument("--per-hour", type=int, default=300, help="segments per hour (default 300)")
    p.add_argument("--size", type=int, default=2**20, help="segment bytes (default 1 MiB)")
    p.add_argument("--pairs", type=int, default=1, help="(channel, quality) pairs (default 1)")
    p.add_argument("--variants", default="segsync,segsync-legacy,segsync-nohash,baseline,"
                   "wubloader,floor,rsync,rsync-fsync",
                   help="copies to make, comma-separated, of: " + ", ".join(LABELS))
    p.add_argument("--wubloader-src", default=os.environ.get("WUBLOADER_SRC"),
                   help="wubloader source (checkout or git directory) to install its "
                        "backfiller from into a scratch venv (default $WUBLOADER_SRC)")
    p.add_argument("--baseline", help="another checkout whose segsync (client and server) "
                   "is measured beside this one")
    p.add_argument("--max-concurrency", type=int,
                   help="segsync backfill --max-concurrency (default: the agent's own, 5)")
    p.add_argument("--memory", choices=["both", *MEMORY], default="both",
                   help="which state of the page cache's free memory to copy into "
                        "(default both, one after the other)")
    p.add_argument("--repeat", type=int, default=3,
                   help="copies of each kind, alternating (default 3; best and median "
                        "are reported)")
    benchlib.add_common_arguments(p, "backfill_throughput", "1 x 50 segments")
    args = p.parse_args()
    if args.quick:
        args.hours, args.per_hour, args.repeat = 1, 50, 1

    env = benchlib.environment()
    print(f"backfill throughput: {args.pairs} pair(s) x {args.hours} h x {args.per_hour} "
          f"segments x {args.size} bytes; warm page cache; load average "
          f"{env['load_avg_at_start']}")
    with benchlib.workdir(args.workdir, args.keep) as base:
        results = run(args, base)
    results["config"] = vars(args)
    results["environment"] = env

    rows = []
    for r in results["runs"]:
        rows.append([r["memory"], r["label"], r["repeat"] + 1, r["wall_s"],
                     round(r["mb_per_s"], 1), r["cpu_s"], r.get("server_cpu_s", float("nan")),
                     "yes" if r["complete"] else "NO",
                     "no" if r["kind"] in ("rsync", "wubloader") else "yes"])
    print_table(["memory", "copy", "run", "wall s", "MB/s", "CPU s", "server CPU s",
                 "complete", "fsync"], rows, title="catch-up of an empty node (warm source cache)")
    results["summary"] = {}
    print()
    for memory in MEMORY:
        runs = [r for r in results["runs"] if r["memory"] == memory]
        if not runs:
            continue
        s = results["summary"][memory] = summarize(runs)
        print(f"{memory} memory: median MB/s " + ", ".join(
            f"{k} {v:.0f}" for k, v in s["median_mb_per_s"].items()))
        print_table(["ratio of medians", "value", "goal", "met?"],
                    [[name, r["ratio"], "-" if r["goal"] is None else f">= {r['goal']}",
                      "-" if r["met"] is None else ("MET" if r["met"] else "MISSED")]
                     for name, r in s["ratios"].items()], title=f"{memory} memory: goals")
    results["goal"] = {"ratios": [(n, k, g) for n, k, g in GOALS],
                       "met": {m: s["met"] for m, s in results["summary"].items()}}
    path = benchlib.write_json(f"{args.output}.json", results)
    print(f"wrote {path}")
    return 0 if results["summary"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
