#!/usr/bin/env python3
"""TLS overhead: push latency and catch-up throughput over HTTPS, side by side with
plain HTTP in the same run.

Certificates come from `segsync tls init`'s own code (a cluster CA, EC P-256 node
keys). Both modes run with a token, as a deployment does.

- Push: three `segsync run` agents, each the peer of the other two (https:// peers
  with --tls-cert/--tls-key/--tls-ca, or http://); on A, segments (2 MiB, `--size`)
  are renamed into place at `--rate`/s for `--duration` s, and the time until each is
  on B and C is measured as in push_latency.py (inotify on B's and C's roots). A few
  untimed segments go first (`--warmup`): connections and their handshakes are made
  once per agent life, the comparison is of the steady state.
- Catch-up: one agent serving an archive (`--hours` x `--per-hour` x 1 MiB), over
  https and over http (two agent processes on the same files); an empty root catches
  up with the one-shot `segsync backfill` (the whole process), as in
  backfill_throughput.py.

Modes alternate (`--repeat` times, default 2) so drifting machine load hits both.
Goals: push p99 over TLS <= 1.2 x plain; catch-up over TLS >= 0.7 x plain (medians).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import ssl
import statistics
import time
from pathlib import Path

import benchlib
from backfill_throughput import build_archive, timed, tree_files, warm
from benchlib import Agent, print_table, summary_ms
from push_latency import Payloads, segment_wave

from agent.commands.tls_init import cert_pem, key_pem, make_ca, make_node_cert  # noqa: E402

PUSH_GOAL_RATIO = 1.2  # TLS p99 / plain p99, at most
CATCHUP_GOAL_RATIO = 0.7  # TLS MB/s / plain MB/s, at least
MODES = ("plain", "tls")


def make_certificates(directory: Path, names: list[str]) -> dict:
    """ca.crt and NAME.crt/NAME.key for each name (127.0.0.1 in every certificate)."""
    directory.mkdir(parents=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_cert, ca_key = make_ca("bench CA", 30, now)
    (directory / "ca.crt").write_bytes(cert_pem(ca_cert))
    for name in names:
        cert, key = make_node_cert(ca_cert, ca_key, name, [], ["127.0.0.1"], 30, now)
        (directory / f"{name}.crt").write_bytes(cert_pem(cert))
        (directory / f"{name}.key").write_bytes(key_pem(key))
        (directory / f"{name}.key").chmod(0o600)
    return {"ca": directory / "ca.crt", "dir": directory}


def agent_flags(mode: str, certs: dict, name: str, token: Path) -> tuple[list[str], str, object]:
    """(extra flags, scheme, httpx verify) of one agent in `mode`."""
    flags = ["--token-file", str(token)]
    if mode == "plain":
        return flags, "http", True
    d = certs["dir"]
    flags += ["--tls-cert", str(d / f"{name}.crt"), "--tls-key", str(d / f"{name}.key"),
              "--tls-ca", str(certs["ca"])]
    return flags, "https", ssl.create_default_context(cafile=str(certs["ca"]))


def push_run(args, base: Path, mode: str, payloads: Payloads, certs: dict, token: Path) -> dict:
    ports = benchlib.free_ports(3)
    scheme = "http" if mode == "plain" else "https"
    urls = [f"{scheme}://127.0.0.1:{p}" for p in ports]
    roots = [base / n for n in ("a", "b", "c")]
    agents = []
    for i, (name, root, port) in enumerate(zip("abc", roots, ports)):
        flags, scheme, verify = agent_flags(mode, certs, name, token)
        agents.append(Agent(name, root, port, [u for u in urls if u != urls[i]], base,
                            ["--recent-window", "120", "--backfill-interval", "3600",
                             "--log-level", args.log_level, *flags],
                            scheme=scheme, verify=verify))
    with benchlib.running(agents):
        time.sleep(0.5)  # the start-up backfill round (empty archives)
        # untimed: the connections to the peers (and their handshakes) are made once
        # per agent life, not per segment; steady state is what is compared
        segment_wave(agents, roots, payloads.items[:args.warmup], args.rate, args.timeout)
        result = segment_wave(agents, roots, payloads.items[args.warmup:], args.rate,
                              args.timeout)
    for root in roots:
        shutil.rmtree(root)
    result.pop("items")
    return result


def catchup_runs(args, base: Path, certs: dict, token: Path, results: dict) -> None:
    src = base / "src"
    src.mkdir()
    archive = build_archive(src, args.hours, args.per_hour, args.size, 1)
    results["archive"] = archive
    expected = tree_files(src)
    servers = {}
    for mode, port in zip(MODES, benchlib.free_ports(2)):
        flags, scheme, verify = agent_flags(mode, certs, "source", token)
        servers[mode] = Agent(f"source-{mode}", src, port, [], base,
                              ["--backfill-interval", "3600", "--log-level", args.log_level,
                               *flags], scheme=scheme, verify=verify)
    with benchlib.running(list(servers.values())):
        warm(src)
        for rep in range(args.repeat):
            for mode in MODES:
                dst = base / f"dst-{mode}-{rep}"
                dst.mkdir()
                os.sync()
                server = servers[mode]
                cmd = benchlib.segsync_command(
                    "backfill", "--root", str(dst), "--from", server.url, "--token-file",
                    str(token), "--log-level", args.log_level)
                if mode == "tls":
                    cmd += ["--tls-ca", str(certs["ca"])]
                cpu0 = server.cpu_seconds()
                r = timed(cmd, base / "backfill.log")
                r.update(mode=mode, repeat=rep, server_cpu_s=server.cpu_seconds() - cpu0,
                         complete=tree_files(dst) == expected,
                         mb_per_s=archive["bytes"] / 1e6 / r["wall_s"])
                results["catchup"].append(r)
                print(f"  catch-up {mode:5s} run {rep + 1}: {r['wall_s']:.2f}s "
                      f"{r['mb_per_s']:.0f} MB/s {'ok' if r['complete'] else 'INCOMPLETE'}")
                shutil.rmtree(dst)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2 * 2**20, help="pushed segment bytes (2 MiB)")
    p.add_argument("--rate", type=float, default=10.0, help="pushed segments per second (10)")
    p.add_argument("--duration", type=float, default=15.0,
                   help="seconds of pushed segments per run (default 15)")
    p.add_argument("--hours", type=int, default=1, help="catch-up archive hours (default 1)")
    p.add_argument("--per-hour", type=int, default=300,
                   help="catch-up segments per hour (default 300, 1 MiB each)")
    p.add_argument("--repeat", type=int, default=2,
                   help="runs of each mode, alternating (default 2)")
    p.add_argument("--timeout", type=float, default=15.0,
                   help="seconds to wait for pushed stragglers")
    p.add_argument("--warmup", type=int, default=8,
                   help="untimed segments pushed first in each run (connections, default 8)")
    benchlib.add_common_arguments(p, "tls_overhead", "3 s of pushes, 50 segments of catch-up")
    args = p.parse_args()
    if args.quick:
        args.duration, args.per_hour, args.repeat = 3.0, 50, 1
    count = max(1, round(args.rate * args.duration))

    env = benchlib.environment()
    print(f"TLS overhead: push {count} x {args.size} bytes at {args.rate:g}/s to 2 peers, "
          f"catch-up of {args.hours} h x {args.per_hour} x 1 MiB; plain http and TLS "
          f"alternating, {args.repeat} run(s) each; load average {env['load_avg_at_start']}")
    results: dict = {"config": vars(args), "environment": env, "push": [], "catchup": []}
    with benchlib.workdir(args.workdir, args.keep) as base:
        certs = make_certificates(base / "tls", ["a", "b", "c", "source"])
        token = base / "token"
        token.write_text("bench-token\n")
        payloads = Payloads(args.warmup + count, args.size, 4)
        for rep in range(args.repeat):
            for mode in MODES:
                r = push_run(args, base, mode, payloads, certs, token)
                r.update(mode=mode, repeat=rep)
                results["push"].append(r)
                print(f"  push {mode:5s} run {rep + 1}: p50 {r.get('p50_ms', float('nan')):.1f} "
                      f"p99 {r.get('p99_ms', float('nan')):.1f} ms, missing {r['missing']}")
        args_size, args.size = args.size, 2**20
        catchup_runs(args, base, certs, token, results)
        args.size = args_size

    push_rows, pooled = [], {}
    for mode in MODES:
        lat = [x for r in results["push"] if r["mode"] == mode for x in r["latencies_s"]]
        pooled[mode] = summary_ms(lat)
        s = pooled[mode]
        push_rows.append([f"push, {mode}", s["n"], s.get("p50_ms", float("nan")),
                          s.get("p95_ms", float("nan")), s.get("p99_ms", float("nan")),
                          s.get("max_ms", float("nan"))])
    print_table(["", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"], push_rows,
                title="push latency until present on both peers (all runs pooled)")
    speed = {}
    for mode in MODES:
        runs = [r for r in results["catchup"] if r["mode"] == mode and r["complete"]
                and r["returncode"] == 0]
        speed[mode] = statistics.median(r["mb_per_s"] for r in runs) if runs else float("nan")
    print_table(["", "median MB/s", "runs"],
                [[f"catch-up, {m}", round(speed[m], 1),
                  sum(r["mode"] == m for r in results["catchup"])] for m in MODES],
                title="catch-up of an empty node (one-shot backfill)")
    push_ratio = pooled["tls"].get("p99_ms", float("nan")) / pooled["plain"].get("p99_ms", float("nan"))
    catchup_ratio = speed["tls"] / speed["plain"]
    results["summary"] = {
        "push_p99_ms": {m: pooled[m].get("p99_ms") for m in MODES},
        "push_p99_ratio": push_ratio, "push_met": push_ratio <= PUSH_GOAL_RATIO,
        "catchup_mb_per_s": speed, "catchup_ratio": catchup_ratio,
        "catchup_met": catchup_ratio >= CATCHUP_GOAL_RATIO,
    }
    print(f"\npush p99 TLS / plain = {push_ratio:.2f} (goal <= {PUSH_GOAL_RATIO}: "
          f"{'MET' if push_ratio <= PUSH_GOAL_RATIO else 'MISSED'}); catch-up TLS / plain = "
          f"{catchup_ratio:.2f} (goal >= {CATCHUP_GOAL_RATIO}: "
          f"{'MET' if catchup_ratio >= CATCHUP_GOAL_RATIO else 'MISSED'})")
    for r in results["push"]:
        r.pop("latencies_s", None)
    path = benchlib.write_json(f"{args.output}.json", results)
    print(f"wrote {path}")
    ok = all(not r["missing"] for r in results["push"]) and all(
        r["complete"] for r in results["catchup"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
